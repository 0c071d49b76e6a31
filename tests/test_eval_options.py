"""`ecmctl eval` options: distributed evaluation through torchrun, eval overrides, several runs side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ecmctl.cli import app
from ecmctl.core.config import compose
from ecmctl.pipeline.train import train

pytestmark = pytest.mark.slow


def test_torchrun_eval_and_overrides(overrides):
    job = [*overrides, "detector=atss_tiny", "loss=bce", "launcher=torchrun", "launcher.nproc_per_node=2",
           "train.max_iters=2"]
    run = train(compose(job), job, say=lambda m: None)
    res = CliRunner().invoke(app, ["eval", str(run.path), "--set", "eval.max_per_img=50"])
    assert res.exit_code == 0, res.output
    doc = json.loads((run.path / "metrics.json").read_text())
    assert doc["protocol"]["max_per_img"] == 50 and set(doc["bbox"]) >= {"AP", "APr", "APc"}
    assert len(doc["bbox_per_class"]) == 8
    # two runs side by side from their metrics.json, with deltas against the first
    res = CliRunner().invoke(app, ["eval", str(run.path), str(run.path), "--reuse"])
    assert res.exit_code == 0 and "(Δ)" in res.output and "bbox APr" in res.output
    res = CliRunner().invoke(app, ["eval", str(run.path), "--set", "detector=atss_r50"])
    assert res.exit_code == 2 and "eval takes only eval.*" in res.output


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """One tiny Mask R-CNN run, trained once for the evaluation tests below (boxes and masks)."""
    root = tmp_path_factory.mktemp("runs")
    job = [f"data_root={data_root}", f"run_root={root}", "dataset=synth_tiny",
           "dataset.train_scale=[96,96]", "dataset.test_scale=[96,96]",
           "schedule=smoke", "train.max_iters=6", "train.checkpoint_interval=6", "detector=mask_rcnn_tiny",
           "loss=bce", "name=masks"]
    return train(compose(job), job, say=lambda m: None)


def _metrics(run) -> dict:
    return json.loads((run.path / "metrics.json").read_text())


def test_two_gloo_ranks_score_exactly_as_one_process(trained):
    """Each rank matches its own images; only the compact records are gathered: the same numbers."""
    res = CliRunner().invoke(app, ["eval", str(trained.path)])
    assert res.exit_code == 0, res.output
    one = _metrics(trained)
    res = CliRunner().invoke(app, ["eval", str(trained.path), "--set", "launcher.name=torchrun",
                                   "--set", "launcher.nproc_per_node=2"])
    assert res.exit_code == 0, res.output
    two = _metrics(trained)
    for section in ("bbox", "bbox_per_class", "segm", "segm_per_class"):
        assert two[section] == one[section], section
    assert set(one["bbox"]) >= {"AP", "APr", "APc", "APf", "AR@300"}


def test_fixed_and_pooled_ap_and_rescoring_kept_detections(trained, tmp_path):
    res = CliRunner().invoke(app, ["eval", str(trained.path), "--set", "eval.protocol=fixed"])
    assert res.exit_code == 0, res.output
    fixed = _metrics(trained)
    assert fixed["protocol"]["protocol"] == "fixed" and {"AP", "APr", "APc", "APf"} <= set(fixed["bbox_fixed"])
    assert "segm_fixed" in fixed and "bbox fixed AP" in res.output
    info = json.loads((trained.path / "eval" / "detections" / "detections.json").read_text())
    assert info["protocol"]["protocol"] == "fixed" and info["checkpoint"] == "iter_6.pth"
    # the kept (uncapped) detections, scored again without inference: the same numbers, and Pooled AP
    res = CliRunner().invoke(app, ["eval", str(trained.path), "--reuse-detections", "--set", "eval.protocol=fixed"])
    assert res.exit_code == 0, res.output
    again = _metrics(trained)
    for section in ("bbox", "bbox_fixed", "segm", "segm_fixed", "bbox_per_class"):
        assert again[section] == fixed[section], section
    res = CliRunner().invoke(app, ["eval", str(trained.path), "--reuse-detections", "--set", "eval.protocol=pooled"])
    assert res.exit_code == 0, res.output
    assert {"AP", "APr", "APc", "APf"} <= set(_metrics(trained)["bbox_pooled"])


def test_any_results_file_and_its_bad_input(data_root, tmp_path):
    """--gt/--results: a results file written by lvis-api/mmdet/detectron2, no run directory needed."""
    gt_file = str(data_root / "synth_tiny" / "val.json")
    images = json.loads(Path(gt_file).read_text())["images"]
    results = [{"image_id": im["id"], "category_id": 1, "bbox": [1.0, 2.0, 30.0, 40.0], "score": 0.5}
               for im in images]
    rfile, out = tmp_path / "results.json", tmp_path / "metrics.json"
    rfile.write_text(json.dumps(results))
    res = CliRunner().invoke(app, ["eval", "--gt", gt_file, "--results", str(rfile), "-o", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["schema"] == "ecmctl/metrics@1" and set(doc["bbox"]) >= {"AP", "APr", "APc", "APf"}
    assert len(doc["bbox_per_class"]) == 8
    bad = tmp_path / "bad.json"
    for content, message in ((results[:1] + [{**results[0], "image_id": 987654}], "987654"),
                             ([{**results[0], "score": float("nan")}], "score"),
                             ("{not json", "JSON")):
        bad.write_text(content if isinstance(content, str) else json.dumps(content))
        out2 = tmp_path / "out2.json"
        res = CliRunner().invoke(app, ["eval", "--gt", gt_file, "--results", str(bad), "-o", str(out2)])
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output
        assert not out2.exists()
    res = CliRunner().invoke(app, ["eval", "--gt", gt_file, "--results", str(rfile), "-o", str(rfile)])
    assert res.exit_code == 2 and "is also this command's input" in " ".join(res.output.split())


def test_kept_detections_rescored_on_a_subset_of_the_val_set(trained, tmp_path):
    from omegaconf import OmegaConf

    res = CliRunner().invoke(app, ["eval", str(trained.path)])
    assert res.exit_code == 0, res.output
    full = (trained.path / "metrics.json").read_bytes()
    gt = json.loads(Path(OmegaConf.load(trained.path / "config.yaml").dataset.val_ann).read_text())
    keep = {im["id"] for im in gt["images"][: len(gt["images"]) // 2]}
    subset = {**gt, "images": [im for im in gt["images"] if im["id"] in keep],
              "annotations": [a for a in gt["annotations"] if a["image_id"] in keep]}
    sub_file, out = tmp_path / "subset.json", tmp_path / "subset_metrics.json"
    sub_file.write_text(json.dumps(subset))
    res = CliRunner().invoke(app, ["eval", str(trained.path), "--reuse-detections", "--gt", str(sub_file)])
    assert res.exit_code == 2 and "-o" in res.output  # the run's own metrics.json is for its val set
    res = CliRunner().invoke(app, ["eval", str(trained.path), "--reuse-detections", "--gt", str(sub_file),
                                   "-o", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["protocol"]["ann_file"] == str(sub_file) and doc["rescored_from"] == "eval/detections"
    assert set(doc["bbox"]) >= {"AP", "APr"} and (trained.path / "metrics.json").read_bytes() == full
