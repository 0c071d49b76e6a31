"""Issue 20, part A: records a run can trust. Two evaluations of one run at once, damaged checkpoints,
foreign numbers under a run's name, inputs that disagree with each other, a shared counts cache, unbounded
integers and run names that leave run_root. Each test is a defect found as a hostile user; one small trained
run (module fixture) serves the tests that need checkpoints, copied per test (those are marked slow: they train)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from adversarial import assert_one_line, fails, invoke, read_only, unchanged, write_json

from ecmctl.core.checkpoint_record import CHECKPOINTS_JSON, load_record, record_checkpoint
from ecmctl.core.config import compose
from ecmctl.core.errors import UserError
from ecmctl.core.io import check_output_dir, sha256_file
from ecmctl.core.metrics_identity import val_set_note
from ecmctl.core.runs import RunDir
from ecmctl.pipeline import train as training
from ecmctl.pipeline.evaluate import evaluate
from ecmctl.pipeline.prepare import ensure_counts

MENTIONS_O = re.compile(r"(^|[\s`(])-o\b")


def _base(data_root: Path, run_root: Path) -> list[str]:
    return [f"data_root={data_root}", f"run_root={run_root}", "dataset=synth_tiny", "dataset.train_scale=[96,96]",
            "dataset.test_scale=[96,96]", "schedule=smoke", "train.checkpoint_interval=1", "calibrate.max_iters=4",
            "calibrate.min_iters=2"]


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory) -> Path:
    """A real 2-iteration bce run (checkpoints iter_1 and iter_2, recorded), evaluated once (metrics.json and
    kept detections)."""
    root = tmp_path_factory.mktemp("faults")
    job = [*_base(data_root, root / "runs"), "loss=bce", "train.max_iters=2", f"run_dir={root / 'run'}"]
    run = training.train(compose(job), job, say=lambda m: None)
    evaluate(run.path, say=lambda m: None)
    return run.path


@pytest.fixture()
def run(trained, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(trained, dst)
    return dst


def _val(data_root: Path) -> Path:
    return data_root / "synth_tiny" / "val.json"


def _point_val_at(run: Path, val: Path) -> None:
    """Make the run's config evaluate against `val` (what a user editing config.yaml, or a moved dataset, does)."""
    import yaml

    cfg = run / "config.yaml"
    old = yaml.safe_load(cfg.read_text())["dataset"]["val_ann"]
    cfg.write_text(cfg.read_text().replace(old, str(val)))


def _edited(src: Path, dst: Path, edit) -> Path:
    doc = json.loads(src.read_text())
    edit(doc)
    return write_json(dst, doc)


# ------------------------------------------------------------------------------- principle 7: values, names


@pytest.mark.parametrize("override", ["calibrate.max_iters=99999999999999999999", "train.max_iters=4294967296",
                                      "seed=99999999999999999999", "launcher.timeout_min=-99999999999",
                                      "dataset.multiscale=[[96,96],[99999999999,96]]"])
def test_an_integer_beyond_a_c_int_is_one_line_before_any_work(data_root, tmp_path, override):
    key = override.split("=")[0]
    fails(["train", *_base(data_root, tmp_path / "runs"), "loss=bce", override] if key != "launcher.timeout_min"
          else ["train", *_base(data_root, tmp_path / "runs"), "launcher=slurm", override],
          key, "between", roots=(tmp_path,))


@pytest.mark.parametrize("name", ["${oc.env:HOME}", "../../x", "a/../../b", "/tmp/elsewhere"])
def test_a_run_name_that_leaves_run_root_is_one_line(data_root, tmp_path, name):
    fails(["train", *_base(data_root, tmp_path / "runs"), "loss=bce", f"name={name}"], "'name'", "run_dir",
          roots=(tmp_path,))


def test_a_run_elsewhere_given_as_run_dir_is_allowed(data_root, tmp_path):
    cfg = compose([*_base(data_root, tmp_path / "runs"), "loss=bce", f"run_dir={tmp_path / 'elsewhere'}"])
    assert cfg.run_dir == str(tmp_path / "elsewhere")


# ------------------------------------------------------------------------ principle 4: checkpoint integrity


@pytest.mark.slow
def test_training_records_each_checkpoint_sha256(trained):
    record = load_record(trained)
    for name in ("iter_1.pth", "iter_2.pth"):
        assert record[name] == {"bytes": (trained / name).stat().st_size, "sha256": sha256_file(trained / name)}


def test_without_marker_the_newest_valid_checkpoint_is_used_and_stray_files_ignored(tmp_path):
    for name in ("iter_8.pth", "iter_60.bak.pth", "iter_x.pth", "iter_9.pth.tmp", "iter_10.pth"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "iter_99.pth").mkdir()
    assert RunDir(tmp_path).last_checkpoint() == tmp_path / "iter_10.pth"


def test_a_checkpoint_cut_short_after_recording_is_never_the_last(tmp_path):
    for name in ("iter_2.pth", "iter_4.pth"):
        (tmp_path / name).write_bytes(b"0123456789")
        record_checkpoint(tmp_path, tmp_path / name)
    (tmp_path / "iter_4.pth").write_bytes(b"01234")
    (tmp_path / "iter_6.pth").write_bytes(b"never recorded: cut off while saved")
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_6.pth"))
    assert RunDir(tmp_path).last_checkpoint() == tmp_path / "iter_2.pth"


def _damage(ckpt: Path) -> None:
    data = bytearray(ckpt.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 4096] = os.urandom(4096)
    ckpt.write_bytes(bytes(data))


@pytest.mark.slow
def test_random_bytes_in_a_checkpoint_are_refused_by_eval_and_good_metrics_stay(run):
    _damage(run / "iter_2.pth")
    fails(["eval", run], "iter_2.pth", "sha256", "damaged", roots=(run,))


@pytest.mark.slow
def test_random_bytes_in_a_checkpoint_are_refused_by_resume(run):
    RunDir(run).update(status="interrupted")
    _damage(run / "iter_2.pth")
    fails(["train", "--resume", run], "iter_2.pth", "sha256", roots=(run,))


@pytest.mark.slow
def test_a_non_finite_tensor_is_refused_naming_it(run):
    (run / CHECKPOINTS_JSON).unlink()  # a run from before the record: only the weights themselves can tell
    ckpt = torch.load(run / "iter_2.pth", map_location="cpu", weights_only=False)
    key = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point() and v.numel() > 4)
    ckpt["state_dict"][key].view(-1)[3] = float("nan")
    torch.save(ckpt, run / "iter_2.pth")
    fails(["eval", run], key, "non-finite", roots=(run,))


@pytest.mark.slow
def test_a_checkpoint_the_run_did_not_record_is_refused(run):
    shutil.copyfile(run / "iter_2.pth", run / "iter_3.pth")
    fails(["eval", run, "--checkpoint", run / "iter_3.pth"], "iter_3.pth", "not a checkpoint this run recorded",
          roots=(run,))


# ------------------------------------------------------------------ principle 2: a run's metrics are its own


@pytest.mark.slow
def test_eval_with_another_runs_checkpoint_is_refused(run, trained, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(trained, other)
    fails(["eval", run, "--checkpoint", other / "iter_2.pth"], "not a checkpoint of", roots=(run, other))


def _results(tmp_path: Path, data_root: Path, box=(1.0, 2.0, 10.0, 12.0)) -> Path:
    """A one-detection results file on the val set's first image and category."""
    val = json.loads(_val(data_root).read_text())
    return write_json(tmp_path / "results.json", [{"image_id": val["images"][0]["id"],
                                                   "category_id": val["categories"][0]["id"], "bbox": list(box),
                                                   "score": 0.9}])


@pytest.mark.slow
def test_a_results_file_never_becomes_a_runs_metrics(run, data_root, tmp_path):
    results = _results(tmp_path, data_root)
    fails(["eval", "--gt", _val(data_root), "--results", results, "-o", run / "metrics.json"], "metrics.json",
          "outside the run", roots=(run,))


@pytest.mark.slow
def test_another_runs_detections_never_become_a_runs_metrics(run, trained, data_root, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(trained, other)
    fails(["eval", run, "--reuse-detections", "--gt", _val(data_root), "-o", other / "metrics.json"],
          "metrics.json", "outside the run", roots=(run, other))


@pytest.mark.slow
def test_rescoring_a_subset_beside_the_run_metrics_is_allowed(run, data_root):
    with unchanged(run / "metrics.json"):
        res = invoke(["eval", run, "--reuse-detections", "--gt", _val(data_root), "-o", run / "subset_metrics.json"])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "subset_metrics.json").read_text())["gt_sha256"] == sha256_file(_val(data_root))


@pytest.mark.slow
def test_eval_reuse_of_a_results_document_is_one_line(run, data_root, tmp_path):
    doc = json.loads(invoke_results_doc(data_root, tmp_path).read_text())
    write_json(run / "metrics.json", doc)
    fails(["eval", run, "--reuse"], "scores a results file", roots=(run,))


def invoke_results_doc(data_root: Path, tmp_path: Path) -> Path:
    out = tmp_path / "results_metrics.json"
    res = invoke(["eval", "--gt", _val(data_root), "--results", _results(tmp_path, data_root), "-o", out])
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.slow
def test_report_never_shows_a_results_document_under_a_runs_name(run, data_root, tmp_path):
    shutil.copyfile(invoke_results_doc(data_root, tmp_path), run / "metrics.json")
    fails(["report", run, "-o", tmp_path / "report"], "scores a results file", roots=(run, tmp_path / "report"))


@pytest.mark.slow
def test_compare_never_shows_another_models_numbers_under_a_runs_name(run, trained, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(trained, other)
    doc = json.loads((run / "metrics.json").read_text())
    doc["checkpoint_sha256"] = "0" * 64  # numbers of a model this run never wrote
    write_json(run / "metrics.json", doc)
    fails(["compare", run, other], "did not record", roots=(run, other))


@pytest.mark.slow
def test_side_by_side_evals_on_different_val_sets_say_so(run, trained):
    doc = json.loads((run / "metrics.json").read_text())
    doc["gt_sha256"] = "f" * 64
    write_json(run / "metrics.json", doc)
    res = invoke(["eval", trained, run, "--reuse"])
    assert res.exit_code == 0, res.output
    assert "different val sets" in res.output
    assert val_set_note([("a", {"gt_sha256": "1"}), ("b", {"gt_sha256": "1"})]) is None


@pytest.mark.slow
def test_a_report_of_runs_on_different_val_sets_says_so(run, trained, tmp_path):
    from ecmctl.pipeline.report import write_report

    doc = json.loads((run / "metrics.json").read_text())
    doc["gt_sha256"] = "f" * 64
    write_json(run / "metrics.json", doc)
    result = write_report([trained, run], tmp_path / "report")
    assert any("different val sets" in n for n in result["notes"])


# ----------------------------------------------------------------- principle 3: inputs checked together


@pytest.mark.slow
def test_val_categories_in_another_order_are_refused_before_inference(run, data_root, tmp_path):
    val = _edited(_val(data_root), tmp_path / "val_reordered.json", lambda d: d["categories"].reverse())
    _point_val_at(run, val)
    fails(["eval", run], "val_reordered.json", "another order", roots=(run,))


@pytest.mark.slow
def test_val_with_one_category_fewer_is_refused_before_inference(run, data_root, tmp_path):
    def drop_last(d):
        gone = d["categories"].pop()["id"]
        d["annotations"] = [a for a in d["annotations"] if a["category_id"] != gone]

    val = _edited(_val(data_root), tmp_path / "val_fewer.json", drop_last)
    _point_val_at(run, val)
    fails(["eval", run], "val_fewer.json", "categories, but the run", roots=(run,))


def test_training_with_val_categories_in_another_order_is_refused_before_any_work(data_root, tmp_path):
    val = _edited(_val(data_root), tmp_path / "val_reordered.json", lambda d: d["categories"].reverse())
    with unchanged(val):
        assert_one_line(invoke(["train", *_base(data_root, tmp_path / "runs"), "loss=bce", f"dataset.val_ann={val}"]),
                        "another order")
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["counts"]  # the shared counts cache, no run


def _dup_ann_id(d):
    d["annotations"][1]["id"] = d["annotations"][0]["id"]


def _dup_image_id(d):
    d["images"].append(dict(d["images"][0]))


def _dup_cat_id(d):
    d["categories"][1]["id"] = d["categories"][0]["id"]


def _dup_cat_name(d):
    d["categories"][1]["name"] = d["categories"][0]["name"]


DUPLICATES = [(_dup_ann_id, "annotation id"), (_dup_image_id, "image id"), (_dup_cat_id, "category id"),
              (_dup_cat_name, "category name")]


@pytest.mark.parametrize(("edit", "what"), DUPLICATES, ids=[w for _, w in DUPLICATES])
def test_count_refuses_duplicates(data_root, tmp_path, edit, what):
    ann = _edited(data_root / "synth_tiny" / "train.json", tmp_path / "ann.json", edit)
    fails(["count", ann, "-o", tmp_path / "counts.json"], what, "appears", roots=(tmp_path,))


@pytest.mark.parametrize(("edit", "what"), DUPLICATES, ids=[w for _, w in DUPLICATES])
def test_eval_gt_refuses_duplicates(data_root, tmp_path, edit, what):
    gt = _edited(_val(data_root), tmp_path / "gt.json", edit)
    results = _results(tmp_path, data_root)
    fails(["eval", "--gt", gt, "--results", results, "-o", tmp_path / "m.json"], what, "appears", roots=(tmp_path,))


@pytest.mark.parametrize("box", [(1.0, 2.0, -3.0, 4.0), (1.0, 2.0, 3.0, -0.5)])
def test_a_results_box_with_negative_width_or_height_is_refused(data_root, tmp_path, box):
    fails(["eval", "--gt", _val(data_root), "--results", _results(tmp_path, data_root, box)], "element #0", "negative",
          roots=(tmp_path,))


# ------------------------------------------------------------------ principle 5: content-addressed caches


def test_the_counts_cache_is_keyed_by_the_annotations_sha256(data_root, tmp_path):
    runs = tmp_path / "runs"
    first, _ = ensure_counts(compose([*_base(data_root, runs), "loss=bce"]))
    second, doc = ensure_counts(compose([*_base(tmp_path / "d2", runs), "loss=bce", "dataset.synth.seed=1"]))
    assert first != second and first.is_file() and second.is_file()
    assert doc["source"]["sha256"][:16] in second.name and first.parent == second.parent == runs / "counts"


def test_a_run_uses_its_own_copy_of_counts_and_refuses_one_changed_meanwhile(data_root, tmp_path):
    cfg = compose([*_base(data_root, tmp_path / "runs"), "loss=bce"])
    counts_file, counts = ensure_counts(cfg)
    run = RunDir.create(tmp_path / "r")
    copy, doc = training.run_counts(run, counts_file, counts)
    assert copy == run.path / "inputs" / "counts.json" and doc == counts
    other = dict(counts, categories=counts["categories"][::-1])  # what another job wrote into the shared file
    with pytest.raises(UserError, match="changed while this run was being prepared"):
        training.run_counts(RunDir.create(tmp_path / "r2"), counts_file, other)


# ------------------------------------------------------ principles 1 and 9: evaluations of one run at once


@pytest.mark.slow
def test_two_evaluations_of_one_run_at_once_never_mix(run):
    """Two real `ecmctl eval` processes of one run, one of each checkpoint: both succeed, neither mentions -o,
    and the kept detections, their label and metrics.json all come from one and the same evaluation."""
    env = {**os.environ, "COLUMNS": "200"}
    procs = [subprocess.Popen([sys.executable, "-m", "ecmctl.cli", "eval", str(run), "--checkpoint",
                               str(run / name)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env) for name in ("iter_1.pth", "iter_2.pth")]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out
        assert not MENTIONS_O.search(out) and "Traceback" not in out, out
    metrics = json.loads((run / "metrics.json").read_text())
    kept = json.loads((run / "eval" / "detections" / "detections.json").read_text())
    assert kept["checkpoint_sha256"] == metrics["checkpoint_sha256"] == sha256_file(run / metrics["checkpoint"])
    assert not list((run / "eval").glob(".eval-*")) and not list((run / "eval").glob("*.partial"))
    res = invoke(["eval", run, "--reuse-detections"])  # the kept detections re-score to the same numbers
    assert res.exit_code == 0, res.output
    assert json.loads((run / "metrics.json").read_text())["bbox"] == metrics["bbox"]


@pytest.mark.slow
def test_a_read_only_run_is_refused_before_rescoring(run):
    with read_only(run), unchanged(run):
        line = assert_one_line(invoke(["eval", run, "--reuse-detections"]), "cannot write", "run directory")
    assert not MENTIONS_O.search(line)


def test_no_message_mentions_o_when_none_was_given(tmp_path):
    with pytest.raises(UserError) as e:
        check_output_dir(tmp_path / "missing" / "x.json")
    assert not MENTIONS_O.search(str(e.value))
    with pytest.raises(UserError, match="choose another -o path"):
        check_output_dir(tmp_path / "missing" / "x.json", "-o")
