"""`ecmctl calibrate` on real tiny detectors: r, its trace, the weights file, and no effect on training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ecmctl.cli import app
from ecmctl.core.config import compose
from ecmctl.ecm.background import bootstrap_ci, converged, ratio
from ecmctl.ecm.weights import weights_document
from ecmctl.pipeline.calibrate import run_calibration

pytestmark = pytest.mark.slow


def test_ratio_and_bootstrap_ci_math():
    trace = np.array([[10, 50], [12, 60], [8, 40], [10, 52]], dtype=float)
    assert ratio(trace) == pytest.approx(202 / 40)
    lo, hi = bootstrap_ci(trace, 2000)
    assert lo <= ratio(trace) <= hi and hi - lo < 0.5
    assert converged(np.tile([[10.0, 50.0]], (30, 1)), min_iters=20, rel_tol=0.02, n_boot=200)
    assert not converged(np.tile([[10.0, 50.0]], (10, 1)), min_iters=20, rel_tol=0.02, n_boot=200)


def test_two_stage_r_trace_and_weights(overrides, tmp_path):
    cfg = compose([*overrides, "detector=faster_rcnn_tiny"])
    res = run_calibration(cfg, tmp_path / "cal")
    doc = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert doc["schema"] == "ecmctl/calibration@1" and doc["detector"] == "faster_rcnn_tiny"
    assert math.isfinite(doc["r"]) and doc["r"] > 0 and doc["iters"] == len(doc["trace"]) == 4
    fg, bg = np.array(doc["trace"]).sum(0)
    assert doc["r"] == pytest.approx(bg / fg)
    assert doc["per_stage"][0]["fg"] == fg and doc["per_stage"][0]["bg"] == bg
    lo, hi = doc["ci95"]
    assert lo <= doc["r"] <= hi
    # the weights file is exactly `ecmctl weights COUNTS --bg-ratio r`
    out = tmp_path / "w.json"
    cli = CliRunner().invoke(app, ["weights", doc["counts_file"], "--bg-ratio", repr(doc["r"]), "-o", str(out)])
    assert cli.exit_code == 0, cli.output
    assert json.loads(out.read_text()) == json.loads(Path(res.weights_files[0]).read_text())
    assert doc["config"]["detector"]["name"] == "faster_rcnn_tiny"


def test_cascade_gets_one_r_per_stage(overrides, tmp_path):
    cfg = compose([*overrides, "detector=cascade_mask_rcnn_tiny"])
    res = run_calibration(cfg, tmp_path / "cal")
    assert [s["stage"] for s in res.per_stage] == [0, 1, 2]
    assert all(s["r"] > 0 and s["iters"] == 4 for s in res.per_stage)
    assert [p.rsplit("/", 1)[1] for p in res.weights_files] == [f"weights_stage{i}.json" for i in range(3)]
    for st, path in zip(res.per_stage, res.weights_files):
        w = json.loads(Path(path).read_text())
        assert w["bg_ratio"] == st["r"] and w["classes"][-1]["name"] == "__background__"


def test_one_stage_gets_foreground_only_weights(overrides, tmp_path):
    cfg = compose([*overrides, "detector=atss_tiny"])
    res = run_calibration(cfg, tmp_path / "cal")
    assert res.r is None and res.iters == 0
    w = json.loads(Path(res.weights_files[0]).read_text())
    assert w["bg_ratio"] is None and all(c["name"] != "__background__" for c in w["classes"])
    counts = json.loads(Path(res.counts_file).read_text())
    assert w == weights_document(counts, w["counts_sha256"], None)


def _losses(overrides, tmp_path, observe: bool) -> list[float]:
    from ecmctl.engine.builder import build_mm_config
    from ecmctl.engine.runner import make_runner
    from ecmctl.pipeline.prepare import class_names, ensure_counts

    cfg = compose([*overrides, "detector=faster_rcnn_tiny", "loss=bce", "train.max_iters=3"])
    _, counts = ensure_counts(cfg)
    mm = build_mm_config(cfg, class_names(counts), tmp_path / ("obs" if observe else "plain"))
    mm.randomness = dict(seed=0, deterministic=True)
    if observe:
        mm.custom_hooks = [dict(type="ecmctl.CalibrationHook", min_iters=100, progress=False)]
    runner = make_runner(mm)
    runner.train()
    return [float(v) for v in runner.message_hub.get_scalar("train/loss").data[0]]


def test_observer_does_not_change_training(overrides, tmp_path):
    plain = _losses(overrides, tmp_path, observe=False)
    observed = _losses(overrides, tmp_path, observe=True)
    assert len(plain) == 3 and plain == observed


@pytest.mark.parametrize("extra, message", [
    (["detector=nope"], "unknown detector 'nope'"),
    (["dataset=lvis_v1", "data_root=/nonexistent"], "lvis_v1_train.json does not exist"),
    (["calibrate.max_iters=0"], "config key 'calibrate.max_iters' = 0: must be >= 1"),
])
def test_bad_input_exits_2_and_writes_nothing(overrides, tmp_path, extra, message):
    out = tmp_path / "cal"
    res = CliRunner().invoke(app, ["calibrate", *overrides, *extra, "-o", str(out)])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not (out / "calibration.json").exists()


def test_counts_file_of_another_dataset_is_refused(overrides, tmp_path):
    other = tmp_path / "other.json"
    counts = {"schema": "ecmctl/counts@1", "source": {"path": "x", "sha256": "0", "num_images": 1,
                                                       "num_annotations": 1},
              "categories": [{"id": 1, "name": "a", "frequency": "r", "instance_count": 1, "image_count": 1}]}
    other.write_text(json.dumps(counts))
    res = CliRunner().invoke(app, ["calibrate", *overrides, f"counts_file={other}", "-o", str(tmp_path / "c")])
    assert res.exit_code == 2 and "categories (ids or order) differ" in res.output


def test_stops_early_once_the_interval_is_tight(overrides, tmp_path):
    cfg = compose([*overrides, "detector=faster_rcnn_tiny", "calibrate.max_iters=40", "calibrate.min_iters=3",
                   "calibrate.rel_tol=0.5"])
    res = run_calibration(cfg, tmp_path / "cal")
    lo, hi = res.ci95
    assert 3 <= res.iters < 40 and (hi - lo) / 2 <= 0.5 * res.r


def test_torchrun_calibration_all_reduces_the_ranks_counts(overrides, tmp_path):
    """Two gloo ranks: every iteration counts both ranks' sampled RoIs (2 ranks x 2 images x 128)."""
    single = run_calibration(compose([*overrides, "detector=faster_rcnn_tiny"]), tmp_path / "one")
    assert {fg + bg for fg, bg in single.trace} == {2 * 128}
    res = CliRunner().invoke(app, ["calibrate", *overrides, "detector=faster_rcnn_tiny", "launcher=torchrun",
                                   "launcher.nproc_per_node=2", "calibrate.min_iters=4", "-o", str(tmp_path / "two")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "two" / "calibration.json").read_text())
    assert len(doc["trace"]) == 4 and {fg + bg for fg, bg in doc["trace"]} == {2 * 2 * 128}
