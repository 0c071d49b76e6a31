"""Adversarial inputs to every command: each user mistake is one `error:` line and exit 2 (no traceback), and
nothing is created, changed or left half-written (tests/adversarial.py hashes the directories involved).

None of these cases trains: every mistake is caught before any training starts. Issue 12's table rows are
named in the comments (row N).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from adversarial import assert_one_line, fails, invoke, read_only, snapshot, unchanged, write_json

from ecmctl.cli import app
from ecmctl.core.config import compose
from ecmctl.core.runs import MM_CONFIG, RunDir
from ecmctl.dataset.counting import load_counts, write_counts
from ecmctl.dataset.synth import make_dataset
from ecmctl.ecm.weights import weights_document, write_weights
from ecmctl.engine.builder import build_mm_config
from ecmctl.engine.checkpoints import build_model_cpu
from ecmctl.engine.runner import load_run_config
from ecmctl.pipeline.train import prepare


class World:
    """Shared, read-only inputs: the session's dataset (8 classes), a second synthetic set with the same
    classes and another seed, their counts and weights, and a trained-looking run (a checkpoint of the
    run's own model, a metrics.json)."""

    def __init__(self, root: Path, data_root: Path) -> None:
        self.root = root
        self.data_root = data_root
        self.ann = data_root / "synth_tiny" / "train.json"
        self.val = data_root / "synth_tiny" / "val.json"
        make_dataset(root / "other", num_classes=8, train_images=48, val_images=16, image_size=96, seed=1)
        self.other_ann = root / "other" / "train.json"
        self.counts = root / "counts.json"
        self.other_counts = root / "other_counts.json"
        write_counts(self.ann, self.counts, progress=False)
        write_counts(self.other_ann, self.other_counts, progress=False)
        self.weights = root / "weights.json"
        self.weights_fg = root / "weights_fg.json"
        self.other_weights = root / "other_weights.json"
        write_weights(self.counts, self.weights, bg_ratio=3.0)
        write_weights(self.counts, self.weights_fg)
        write_weights(self.other_counts, self.other_weights, bg_ratio=3.0)
        job = [*self.base(root / "runs"), "loss=bce", f"counts_file={self.counts}", f"run_dir={root / 'run'}"]
        run = prepare(compose(job), job, say=lambda m: None)
        run.unlock()
        self.run = run.path
        self.model_state = build_model_cpu(load_run_config(run.path, MM_CONFIG)).state_dict()
        torch.save({"state_dict": self.model_state, "meta": {"iter": 2}}, run.path / "iter_2.pth")
        (run.path / "last_checkpoint").write_text(str((run.path / "iter_2.pth").resolve()))
        write_json(run.path / "metrics.json", {"schema": "ecmctl/metrics@1", "run": str(run.path),
                                               "bbox": {"AP": 0.561}})
        run.update(status="finished", checkpoint="iter_2.pth")

    def base(self, run_root: Path) -> list[str]:
        return [f"data_root={self.data_root}", f"run_root={run_root}", "dataset=synth_tiny",
                "dataset.train_scale=[96,96]", "dataset.test_scale=[96,96]", "schedule=smoke", "train.max_iters=2",
                "calibrate.max_iters=2", "calibrate.min_iters=2"]

    def inputs(self) -> tuple[Path, ...]:
        """Everything a failing command must leave as it was."""
        return (self.root, self.data_root)


@pytest.fixture(scope="session")
def world(data_root, tmp_path_factory) -> World:
    return World(tmp_path_factory.mktemp("adversarial"), data_root)


@pytest.fixture()
def run_copy(world, tmp_path) -> Path:
    """A copy of the world's run (its last_checkpoint marker still names the original's file)."""
    dst = tmp_path / "run_copy"
    shutil.copytree(world.run, dst)
    return dst


def edited_weights(world: World, tmp_path: Path, edit, src: Path | None = None) -> Path:
    doc = json.loads((src or world.weights).read_text())
    edit(doc)
    path = tmp_path / "edited_weights.json"
    path.write_text(json.dumps(doc, indent=1))  # NaN stays NaN, as a hand edit could leave it
    return path


# ------------------------------------------------------------------------------------------------ count (row 7)


def test_count_output_equal_to_input_is_refused(world, tmp_path):
    ann = tmp_path / "A.json"
    shutil.copyfile(world.ann, ann)
    fails(["count", ann, "-o", ann], "input", roots=(tmp_path,))


def test_count_output_onto_another_annotation_file_is_refused(world, tmp_path):
    val = tmp_path / "val.json"
    shutil.copyfile(world.val, val)
    fails(["count", world.ann, "-o", val], "not a file this command wrote", roots=(tmp_path, *world.inputs()))


def test_count_output_onto_a_weights_file_is_refused(world, tmp_path):
    w = tmp_path / "w.json"
    shutil.copyfile(world.weights, w)
    fails(["count", world.ann, "-o", w], "ecmctl/weights@1", roots=(tmp_path, *world.inputs()))


def test_count_output_onto_a_directory_is_refused(world, tmp_path):
    (tmp_path / "d").mkdir()
    fails(["count", world.ann, "-o", tmp_path / "d"], "directory", roots=(tmp_path, *world.inputs()))


def test_count_into_a_read_only_directory(world, tmp_path):
    with read_only(tmp_path / "ro") as ro:
        fails(["count", world.ann, "-o", ro / "c.json"], "cannot write", roots=(tmp_path, *world.inputs()))


def test_count_truncated_annotation_file(world, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_bytes(world.ann.read_bytes()[:500])
    fails(["count", bad, "-o", tmp_path / "c.json"], str(bad), roots=(tmp_path,))


def test_count_replaces_its_own_earlier_output(world, tmp_path):
    out = tmp_path / "c.json"
    shutil.copyfile(world.other_counts, out)
    res = invoke(["count", world.ann, "-o", out])
    assert res.exit_code == 0, res.output
    assert load_counts(out)[0]["source"]["path"] == str(world.ann)


# ------------------------------------------------------------------------------------------------ weights (7, 9)


def test_weights_output_equal_to_counts_is_refused(world, tmp_path):
    c = tmp_path / "c.json"
    shutil.copyfile(world.counts, c)
    fails(["weights", c, "-o", c], "input", roots=(tmp_path,))


def test_weights_output_onto_annotations_is_refused(world, tmp_path):
    ann = tmp_path / "train.json"
    shutil.copyfile(world.ann, ann)
    fails(["weights", world.counts, "-o", ann], "not a file this command wrote", roots=(tmp_path, *world.inputs()))


@pytest.mark.parametrize("ratio", ["1e300", "1e7", "-0.5"])
def test_weights_absurd_background_ratio(world, tmp_path, ratio):  # row 9: JSON `inf` was a traceback
    fails(["weights", world.counts, f"--bg-ratio={ratio}", "-o", tmp_path / "w.json"], "--bg-ratio",
          roots=(tmp_path, *world.inputs()))


def test_weights_into_a_read_only_directory(world, tmp_path):
    with read_only(tmp_path / "ro") as ro:
        fails(["weights", world.counts, "-o", ro / "w.json"], "cannot write", roots=(tmp_path, *world.inputs()))


# ------------------------------------------------------------------------- weights values and provenance (3, 4)


def _set(i, key, value):
    def edit(doc):
        doc["classes"][i][key] = value
    return edit


def _swap_names(doc):
    a, b = doc["classes"][0], doc["classes"][1]
    a["name"], b["name"] = b["name"], a["name"]


def _background_first(doc):
    doc["classes"].insert(0, doc["classes"].pop())


def _forget_provenance(doc):
    doc["counts_sha256"] = "f" * 64
    doc.pop("annotations_sha256")


def _duplicate_id(doc):
    doc["classes"][1]["id"] = doc["classes"][0]["id"]


def _drop_field(doc):
    del doc["classes"][2]["log_w_pos"]


WEIGHT_EDITS = [
    ("det_weight negative", _set(0, "det_weight", -5.0), ["det_weight", "-5"]),
    ("log_w_neg huge", _set(3, "log_w_neg", 1e6), ["log_w_neg", "edited"]),
    ("NaN margin", _set(1, "margin_pos", math.nan), ["margin_pos", "finite"]),
    ("infinite n_neg", _set(1, "n_neg", math.inf), ["n_neg", "finite"]),
    ("swapped names", _swap_names, ["named"]),
    ("counts_sha256 of no counts file", _forget_provenance, ["counts", "regenerate"]),
    ("background first", _background_first, ["last"]),
    ("bg_ratio edited", lambda d: d.update(bg_ratio=9.0), ["n_pos", "edited"]),
    ("bg_ratio null with background", lambda d: d.update(bg_ratio=None), ["bg_ratio"]),
    ("string id", _set(0, "id", "1"), ["id"]),
    ("duplicate id", _duplicate_id, ["appears"]),
    ("missing field", _drop_field, ["log_w_pos"]),
    ("no classes", lambda d: d.update(classes=[]), ["classes"]),
]


@pytest.mark.parametrize("case, edit, needles", WEIGHT_EDITS, ids=[c[0] for c in WEIGHT_EDITS])
def test_train_refuses_an_edited_weights_file(world, tmp_path, case, edit, needles):
    """Row 3 and row 10: a weights file that is not internally consistent is refused before the run
    directory exists (no `preparing` run is left behind)."""
    w = edited_weights(world, tmp_path, edit)
    runs = tmp_path / "runs"
    fails(["train", *world.base(runs), "loss=ecm", f"counts_file={world.counts}", f"weights_file={w}"], *needles,
          roots=(runs, *world.inputs()))
    assert not runs.exists()


def test_train_refuses_weights_with_consistent_values_but_other_counts(world, tmp_path):
    """n_pos edited and every margin recomputed from it: consistent in itself, but not this dataset's counts."""
    counts = json.loads(world.counts.read_text())
    counts["categories"][0]["instance_count"] += 7
    w = write_json(tmp_path / "w.json", weights_document(counts, json.loads(world.weights.read_text())["counts_sha256"],
                                                         bg_ratio=3.0))
    fails(["train", *world.base(tmp_path / "runs"), "loss=ecm", f"counts_file={world.counts}", f"weights_file={w}"],
          "n_pos", "counts", roots=(tmp_path, *world.inputs()))


def test_train_refuses_weights_of_another_dataset_with_the_same_ids(world, tmp_path):  # row 4
    line = fails(["train", *world.base(tmp_path / "runs"), "loss=ecm", f"counts_file={world.counts}",
                  f"weights_file={world.other_weights}"], "allow_foreign_weights", roots=(tmp_path, *world.inputs()))
    assert str(world.other_ann) in line  # says which annotation file the weights came from


def test_train_refuses_counts_of_another_dataset_with_the_same_ids(world, tmp_path):  # row 4
    line = fails(["train", *world.base(tmp_path / "runs"), "loss=bce", f"counts_file={world.other_counts}"],
                 "allow_foreign_weights", roots=(tmp_path, *world.inputs()))
    assert str(world.other_ann) in line and str(world.ann) in line


def test_allow_foreign_weights_is_deliberate_and_recorded(world, tmp_path):
    job = [*world.base(tmp_path / "runs"), "loss=ecm", f"counts_file={world.other_counts}",
           f"weights_file={world.other_weights}", "allow_foreign_weights=true", f"run_dir={tmp_path / 'run'}"]
    run = prepare(compose(job), job, say=lambda m: None)
    run.unlock()
    meta = run.meta
    assert meta["status"] == "ready" and meta["allow_foreign_weights"] is True
    assert {f["input"] for f in meta["foreign_inputs"]} == {"counts", "weights"}
    assert all(f["annotations"] == str(world.other_ann) for f in meta["foreign_inputs"])


def test_calibrate_refuses_foreign_counts(world, tmp_path):
    fails(["calibrate", *world.base(tmp_path / "runs"), f"counts_file={world.other_counts}", "-o", tmp_path / "cal"],
          "allow_foreign_weights", roots=(tmp_path, *world.inputs()))


def test_missing_counts_file_is_not_created(world, tmp_path):  # row 8
    missing = tmp_path / "nonexistent.json"
    fails(["train", *world.base(tmp_path / "runs"), "loss=bce", f"counts_file={missing}"], "no such file",
          roots=(tmp_path, *world.inputs()))
    assert not missing.exists()


def test_missing_weights_file_leaves_no_run_directory(world, tmp_path):  # row 10
    fails(["train", *world.base(tmp_path / "runs"), "loss=ecm", f"counts_file={world.counts}",
           f"weights_file={tmp_path / 'nonexistent.json'}"], "no such file", roots=(tmp_path, *world.inputs()))


def test_counts_file_given_as_weights_file(world, tmp_path):
    fails(["train", *world.base(tmp_path / "runs"), "loss=ecm", f"counts_file={world.counts}",
           f"weights_file={world.counts}"], "ecmctl/weights@1", roots=(tmp_path, *world.inputs()))


def test_foreground_only_weights_for_a_two_stage_detector(world, tmp_path):
    fails(["train", *world.base(tmp_path / "runs"), "loss=ecm", f"counts_file={world.counts}",
           f"weights_file={world.weights_fg}"], "background", roots=(tmp_path, *world.inputs()))


def test_cascade_needs_one_weights_file_per_stage(world, tmp_path):
    fails(["train", *world.base(tmp_path / "runs"), "detector=cascade_mask_rcnn_tiny", "loss=ecm",
           f"counts_file={world.counts}", f"weights_file=[{world.weights},{world.weights}]"],
          "needs 3 (3 with background",
          roots=(tmp_path, *world.inputs()))


# ------------------------------------------------------------------------------------- config values (8, 9, 6)

BAD_OVERRIDES = [
    ("seed=abc", ["seed", "integer"]),
    ("train.max_iters=-5", ["train.max_iters", ">= 1"]),
    ("train.max_iters=abc", ["train.max_iters", "integer"]),
    ("train.batch_size=0", ["train.batch_size", ">= 1"]),
    ("detector.normed_head=maybe", ["normed_head", "boolean"]),
    ("detector=faster_rcnn_tiniest", ["detector", "did you mean"]),
    ("trian.max_iters=3", ["trian", "does not exist"]),
    ("calibrate.bg_ratio=1e9", ["calibrate.bg_ratio", "<="]),
    ("eval.score_thr=1.5", ["eval.score_thr", "< 1"]),
]


@pytest.mark.parametrize("override, needles", BAD_OVERRIDES, ids=[b[0] for b in BAD_OVERRIDES])
def test_train_bad_override_value(world, tmp_path, override, needles):
    fails(["train", *world.base(tmp_path / "runs"), override], *needles, roots=(tmp_path, *world.inputs()))


def test_torchrun_with_zero_processes(world, tmp_path):
    fails(["train", *world.base(tmp_path / "runs"), "launcher=torchrun", "launcher.nproc_per_node=0"],
          "launcher.nproc_per_node", roots=(tmp_path, *world.inputs()))


def test_device_cuda_without_a_gpu_refuses_train(world, tmp_path):  # row 6
    if torch.cuda.is_available():
        pytest.skip("a GPU is usable here")
    fails(["train", *world.base(tmp_path / "runs"), "loss=bce", f"counts_file={world.counts}", "device=cuda"],
          "device=cuda", roots=(tmp_path, *world.inputs()))


def test_device_cuda_without_a_gpu_refuses_calibrate(world, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is usable here")
    fails(["calibrate", *world.base(tmp_path / "runs"), f"counts_file={world.counts}", "device=cuda",
           "-o", tmp_path / "cal"], "device=cuda", roots=(tmp_path, *world.inputs()))


# --------------------------------------------------------------------------------------------- run_dir (row 5)


@pytest.mark.parametrize("form", ["run_dir", "+run_dir"])
def test_training_into_an_existing_run_is_refused(world, run_copy, tmp_path, form):
    fails(["train", *world.base(tmp_path / "runs"), "loss=bce", f"counts_file={world.counts}",
           f"{form}={run_copy}"], "already a run directory", "--resume", roots=(tmp_path, *world.inputs()))


def test_training_into_a_non_empty_directory_is_refused(world, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    fails(["train", *world.base(tmp_path / "runs"), "loss=bce", f"counts_file={world.counts}",
           f"run_dir={tmp_path / 'd'}"], "not empty", roots=(tmp_path, *world.inputs()))


def test_train_into_a_read_only_run_root(world, tmp_path):  # row 9
    with read_only(tmp_path / "ro") as ro:
        fails(["train", *world.base(ro / "runs"), "loss=bce", f"counts_file={world.counts}"], "cannot write",
              roots=(tmp_path, *world.inputs()))


# ------------------------------------------------------------------------------------ train --mmdet-config


def test_mmdet_config_never_replaces_another_file(world, tmp_path):
    target = tmp_path / "train.json"
    shutil.copyfile(world.ann, target)
    fails(["train", *world.base(tmp_path / "runs"), "--mmdet-config", target], "--mmdet-config",
          roots=(tmp_path, *world.inputs()))


def test_mmdet_config_into_a_read_only_directory(world, tmp_path):
    with read_only(tmp_path / "ro") as ro:
        fails(["train", *world.base(tmp_path / "runs"), "--mmdet-config", ro / "c.py"], "cannot write",
              roots=(tmp_path, *world.inputs()))


def test_mmdet_config_replaces_its_own_earlier_output(world, tmp_path):
    out = tmp_path / "c.py"
    for _ in range(2):
        res = invoke(["train", *world.base(tmp_path / "runs"), "loss=bce", "--mmdet-config", out])
        assert res.exit_code == 0, res.output
    from mmengine.config import Config

    assert Config.fromfile(str(out)).model.type == "FasterRCNN"


# ---------------------------------------------------------------------------------------- train, other forms


def test_resume_of_a_directory_that_is_not_a_run(tmp_path):
    fails(["train", "--resume", tmp_path], "not an ecmctl run directory", roots=(tmp_path,))


def test_resume_takes_no_overrides(run_copy):
    fails(["train", "--resume", run_copy, "seed=1"], "--resume takes no overrides", roots=(run_copy,))


def test_resume_of_a_finished_run(run_copy):
    fails(["train", "--resume", run_copy], "already finished", roots=(run_copy,))


def test_resume_from_a_truncated_checkpoint(run_copy):
    RunDir(run_copy).update(status="interrupted")
    ckpt = run_copy / "iter_2.pth"
    ckpt.write_bytes(ckpt.read_bytes()[:2048])
    fails(["train", "--resume", run_copy], "not a readable PyTorch checkpoint", "remove", roots=(run_copy,))


def test_sweep_with_a_bad_combination_runs_nothing(world, tmp_path):
    fails(["train", "-m", *world.base(tmp_path / "runs"), "loss=bce", "seed=0,abc"], "seed",
          roots=(tmp_path, *world.inputs()))


# --------------------------------------------------------------------------------------------------- calibrate


def test_calibrate_min_iters_above_max_iters(world, tmp_path):
    fails(["calibrate", *world.base(tmp_path / "runs"), "calibrate.min_iters=50", "calibrate.max_iters=10"],
          "calibrate.min_iters", roots=(tmp_path, *world.inputs()))


def test_calibrate_output_onto_a_file(world, tmp_path):
    f = tmp_path / "cal"
    f.write_text("not a directory")
    fails(["calibrate", *world.base(tmp_path / "runs"), f"counts_file={world.counts}", "-o", f],
          "not a directory", roots=(tmp_path, *world.inputs()))


def test_calibrate_never_replaces_a_foreign_weights_json(world, tmp_path):
    out = tmp_path / "cal"
    out.mkdir()
    (out / "weights.json").write_text('{"mine": true}')
    fails(["calibrate", *world.base(tmp_path / "runs"), f"counts_file={world.counts}", "-o", out],
          "weights.json", roots=(tmp_path, *world.inputs()))


def test_calibrate_into_a_read_only_directory(world, tmp_path):  # row 9
    with read_only(tmp_path / "ro") as ro:
        fails(["calibrate", *world.base(tmp_path / "runs"), f"counts_file={world.counts}", "-o", ro / "cal"],
              "cannot write", roots=(tmp_path, *world.inputs()))


# -------------------------------------------------------------------------------------------- eval (rows 1, 2)


def test_eval_checkpoint_of_a_model_with_another_class_count(world, run_copy, tmp_path):
    """Row 1: a checkpoint whose shapes do not fit the run's model is one line naming the tensor and both
    shapes, and metrics.json is untouched."""
    cfg = compose([*world.base(tmp_path / "runs"), "loss=bce"])
    mm = build_mm_config(cfg, [f"class{i}" for i in range(6)], tmp_path)
    other = tmp_path / "other.pth"
    torch.save({"state_dict": build_model_cpu(mm).state_dict(), "meta": {"iter": 8}}, other)
    line = fails(["eval", run_copy, "--checkpoint", other], "roi_head.bbox_head.fc_cls.weight", "(7, ",
                 "(9, ", roots=(run_copy, other))
    assert "shape" in line


def test_eval_checkpoint_without_a_tensor_of_the_model(world, run_copy, tmp_path):
    state = dict(world.model_state)
    state.pop("roi_head.bbox_head.fc_reg.weight")
    ckpt = tmp_path / "partial.pth"
    torch.save({"state_dict": state}, ckpt)
    fails(["eval", run_copy, "--checkpoint", ckpt], "lacks 1", "fc_reg.weight", roots=(run_copy, ckpt))


def test_eval_truncated_checkpoint(run_copy, tmp_path):  # row 9
    ckpt = tmp_path / "truncated.pth"
    ckpt.write_bytes((run_copy / "iter_2.pth").read_bytes()[:4096])
    fails(["eval", run_copy, "--checkpoint", ckpt], "not a readable PyTorch checkpoint", roots=(run_copy, ckpt))


def test_eval_weights_json_as_checkpoint(world, run_copy):  # row 9: 539 lines
    fails(["eval", run_copy, "--checkpoint", world.weights], "not a readable PyTorch checkpoint",
          roots=(run_copy, *world.inputs()))


def test_eval_pickle_without_weights(run_copy, tmp_path):
    ckpt = tmp_path / "meta_only.pth"
    torch.save({"meta": {"iter": 3}}, ckpt)
    fails(["eval", run_copy, "--checkpoint", ckpt], "without model weights", roots=(run_copy, ckpt))


def test_eval_of_a_copied_run_never_reads_the_original(world, run_copy):
    """Row 2: the copy's last_checkpoint names the original's file, which still exists; the copy has no
    checkpoint of its own, so it has nothing to evaluate."""
    for p in run_copy.glob("*.pth"):
        p.unlink()
    assert Path((run_copy / "last_checkpoint").read_text()).is_file()
    assert RunDir(run_copy).last_checkpoint() is None
    fails(["eval", run_copy], "no checkpoint", roots=(run_copy, world.run))


def test_eval_unknown_override_key_is_not_ignored(run_copy):  # row 8
    fails(["eval", run_copy, "--set", "eval.nope=1"], "eval.nope", "does not exist", roots=(run_copy,))


def test_eval_bad_override_value(run_copy):
    fails(["eval", run_copy, "--set", "eval.per_class=maybe"], "eval.per_class", "boolean", roots=(run_copy,))


def test_eval_override_outside_eval(run_copy):
    fails(["eval", run_copy, "--set", "detector=atss_r50"], "eval takes only", roots=(run_copy,))


def test_eval_device_cuda_without_a_gpu(run_copy):
    if torch.cuda.is_available():
        pytest.skip("a GPU is usable here")
    fails(["eval", run_copy, "--set", "device=cuda"], "device=cuda", roots=(run_copy,))


def test_eval_checkpoint_for_two_runs(run_copy):
    fails(["eval", run_copy, run_copy, "--checkpoint", run_copy / "iter_2.pth"], "single run",
          roots=(run_copy,))


def test_eval_not_a_run(tmp_path):
    fails(["eval", tmp_path], "not an ecmctl run directory", roots=(tmp_path,))


def test_eval_reuse_without_metrics(run_copy):
    (run_copy / "metrics.json").unlink()
    fails(["eval", run_copy, "--reuse"], "no metrics.json", roots=(run_copy,))


# ----------------------------------------------------------------------------------------------------- report


def test_report_into_one_of_its_runs_is_refused(run_copy):
    fails(["report", run_copy, "-o", run_copy], "one of the runs", roots=(run_copy,))


def test_report_never_replaces_a_foreign_report_md(run_copy, tmp_path):
    out = tmp_path / "rep"
    out.mkdir()
    (out / "report.md").write_text("# my notes\n")
    fails(["report", run_copy, "-o", out], "report.md", roots=(run_copy, out))


def test_report_into_a_read_only_directory(run_copy, tmp_path):
    with read_only(tmp_path / "ro") as ro:
        fails(["report", run_copy, "-o", ro / "rep"], "cannot write", roots=(run_copy, tmp_path))


def test_report_of_an_unevaluated_run(run_copy, tmp_path):
    (run_copy / "metrics.json").unlink()
    fails(["report", run_copy, "-o", tmp_path / "rep"], "no metrics.json", roots=(run_copy, tmp_path))


def test_report_output_onto_a_file(run_copy, tmp_path):
    f = tmp_path / "report"
    f.write_text("x")
    fails(["report", run_copy, "-o", f], "not a directory", roots=(run_copy, tmp_path))


# ------------------------------------------------------------------------------------------------------ synth


def test_synth_never_replaces_a_real_dataset(world, tmp_path):
    d = tmp_path / "real"
    d.mkdir()
    (d / "train.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    fails(["synth", d, "--classes", "4", "--train-images", "8", "--val-images", "4"], "ecmctl synth",
          roots=(tmp_path,))


def test_synth_into_a_read_only_directory(tmp_path):  # row 9
    with read_only(tmp_path / "ro") as ro:
        fails(["synth", ro / "d", "--classes", "4", "--train-images", "8", "--val-images", "4"], "cannot write",
              roots=(tmp_path,))


def test_synth_impossible_request(tmp_path):
    fails(["synth", tmp_path / "d", "--classes", "1000"], "--classes", roots=(tmp_path,))


def test_synth_output_onto_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    fails(["synth", tmp_path / "f"], "not a directory", roots=(tmp_path,))


def test_synth_rewrites_its_own_dataset(tmp_path):
    args = ["synth", tmp_path / "d", "--profile", "small", "--classes", "3", "--train-images", "4",
            "--val-images", "2", "--image-size", "32"]
    assert invoke(args).exit_code == 0
    before = snapshot(tmp_path)
    res = invoke(args)
    assert res.exit_code == 0, res.output
    assert snapshot(tmp_path) == before  # byte-identical


# ------------------------------------------------------------------------------------------ prefetch, demo, info


def test_prefetch_missing_local_checkpoint(tmp_path):
    fails(["prefetch", f"detector.pretrained={tmp_path / 'nope.pth'}"], "no such file", roots=(tmp_path,))


def test_prefetch_unknown_detector(tmp_path):
    fails(["prefetch", "detector=nope"], "unknown detector", roots=(tmp_path,))


def test_demo_with_no_seeds_fails_before_calibrating(world, tmp_path):  # row 9
    fails(["demo", f"data_root={world.data_root}", "demo.seeds=[]", "--out", tmp_path / "demo"], "demo.seeds",
          "at least 1", roots=(tmp_path, *world.inputs()))


def test_demo_into_a_read_only_directory(world, tmp_path):  # row 9
    with read_only(tmp_path / "ro") as ro:
        fails(["demo", f"data_root={world.data_root}", "dataset.train_scale=[96,96]", "--out", ro / "demo"],
              "cannot", roots=(tmp_path, *world.inputs()))


def test_recipes_takes_no_arguments():
    assert_one_line(invoke(["recipes", "extra"]), "extra")


# ----------------------------------------------------------------------------------------- the whole CLI, walked

WALK = {
    "info": [["info", "--bogus"]],
    "synth": [["synth"], ["synth", "OUT", "--classes", "abc"], ["synth", "OUT", "--seed", "-1"]],
    "count": [["count"], ["count", "MISSING"], ["count", "ANN", "-o", "ANN"]],
    "weights": [["weights"], ["weights", "MISSING"], ["weights", "COUNTS", "--bg-ratio", "x"],
                ["weights", "COUNTS", "--min-count", "0", "-o", "OUTW"]],
    "calibrate": [["calibrate", "loss=nope"], ["calibrate", "calibrate.rel_tol=-1"], ["calibrate", "--bogus"]],
    "train": [["train", "loss=nope"], ["train", "--resume", "MISSING"], ["train", "-m", "--mmdet-config", "x.py"],
              ["train", "seed=[1,2"], ["train", "tracking=nope"], ["train", "tracking.mode=sometimes"]],
    "recipes": [["recipes", "x"]],
    "prefetch": [["prefetch", "recipe=nope"], ["prefetch", "detector.pretrained=MISSING"]],
    "eval": [["eval"], ["eval", "MISSING"], ["eval", "RUN", "--checkpoint", "ANN"]],
    "demo": [["demo", "demo.seeds=[-1]"], ["demo", "schedule=nope"]],
    "report": [["report"], ["report", "MISSING"], ["report", "RUN", "-o", "RUN"]],
    "compare": [["compare"], ["compare", "MISSING"], ["compare", "RUN"], ["compare", "RUN", "--by", "nope"],
                ["compare", "RUN", "-o", "RUN"]],
    "status": [["status", "MISSING"], ["status", "ANN"], ["status", "RUN", "--json", "--watch"],
               ["status", "RUN", "--interval", "x"]],
    "retry": [["retry"], ["retry", "MISSING"], ["retry", "RUN"], ["retry", "RUN", "--bogus"]],
}


def test_every_command_is_walked():
    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert names == set(WALK), "add bad inputs for each new command to WALK"


@pytest.mark.parametrize("args", [a for cmds in WALK.values() for a in cmds], ids=lambda a: " ".join(a))
def test_walk_the_cli_with_bad_inputs(world, run_copy, tmp_path, monkeypatch, args):
    """Every command, given bad input: exit 2, one error line, no traceback, nothing written."""
    monkeypatch.chdir(tmp_path)
    subst = {"MISSING": str(tmp_path / "missing.json"), "ANN": str(world.ann), "COUNTS": str(world.counts),
             "OUT": str(tmp_path / "out"), "OUTW": str(tmp_path / "w.json"), "RUN": str(run_copy)}
    argv = [subst.get(a, a) for a in args]
    with unchanged(tmp_path, *world.inputs()):
        assert_one_line(invoke(argv))
