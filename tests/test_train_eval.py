"""train -> eval end to end on CPU, resume after SIGKILL, run-directory rules, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ecmctl.cli import app
from ecmctl.core.config import compose
from ecmctl.core.runs import RunDir
from ecmctl.core.schemas import METRIC_KEYS
from ecmctl.pipeline.evaluate import evaluate
from ecmctl.pipeline.train import finished_iters, train

pytestmark = pytest.mark.slow


def _train(overrides, *extra):
    job = [*overrides, *extra]
    return train(compose(job), job, say=lambda m: None)


@pytest.mark.parametrize("detector, ious", [("faster_rcnn_tiny", ["bbox"]), ("atss_tiny", ["bbox"]),
                                            ("cascade_mask_rcnn_tiny", ["bbox", "segm"])])
def test_train_then_eval_with_ecm(overrides, detector, ious):
    run = _train(overrides, f"detector={detector}", "loss=ecm")
    meta = run.meta
    assert meta["status"] == "finished" and meta["max_iters"] == 4
    weights = {f"weights_stage{i}" for i in range(3)} if "cascade" in detector else {"weights"}
    assert {"counts", *weights} <= set(meta["inputs"]) and meta["versions"]["mmdet"] == "3.3.0"
    for f in ("config.yaml", "mmdet_config.py", "run.json", "last_checkpoint"):
        assert (run.path / f).is_file(), f
    assert finished_iters(run.path) == 4
    assert list(run.path.glob("*/vis_data/events.out.tfevents.*")), "TensorBoard scalars"
    mm_cfg = (run.path / "mmdet_config.py").read_text()
    assert mm_cfg.count("type='ecmctl.PackedLVISV1Dataset'") == 2  # train and val, from the node's packs
    expected_loss = "type='ECMFocalLoss'" if detector == "atss_tiny" else "type='ECMLoss'"
    assert mm_cfg.count(expected_loss) == (3 if "cascade" in detector else 1)
    doc = evaluate(run.path, say=lambda m: None)
    on_disk = json.loads((run.path / "metrics.json").read_text())
    assert on_disk == doc and doc["schema"] == "ecmctl/metrics@1"
    assert len(list((run.path.parents[1] / "cache" / "datasets").glob("*.npk"))) == 2  # train, val
    for iou in ious:
        assert set(METRIC_KEYS) <= set(doc[iou]), iou
        assert len(doc[f"{iou}_per_class"]) == 8
    assert doc["protocol"] == {"protocol": "standard", "score_thr": 1e-4, "max_per_img": 300, "topk": 10000,
                               "ann_file": doc["protocol"]["ann_file"]}


def test_roi_test_scores_follow_ecm_activation(overrides):
    """At test time the RoI head scores are sigma(s_c) * (1 - sigma(s_bg)), background dropped."""
    import torch
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    register_all_modules()
    run = _train(overrides, "detector=faster_rcnn_tiny", "loss=ecm", "train.max_iters=2")
    mm = Config.fromfile(str(run.path / "mmdet_config.py"))
    head = MODELS.build(mm.model.roi_head.bbox_head)
    s = torch.randn(5, 9)
    act = head.loss_cls.get_activation(s)
    expected = torch.sigmoid(s[:, :8]) * (1 - torch.sigmoid(s[:, 8:]))
    assert torch.allclose(act[:, :8], expected)


def test_resume_after_sigkill_finishes_same_iterations(overrides, tmp_path):
    """A run killed with SIGKILL resumes from its last checkpoint and ends at max_iters."""
    job = [*overrides, "detector=atss_tiny", "loss=bce", "train.max_iters=40", "train.checkpoint_interval=2",
           "name=killed"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ecmctl.cli", "train", *job], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    runs_root = Path(overrides[1].split("=", 1)[1]) / "killed"
    # kill once a checkpoint is complete (mmengine writes `last_checkpoint` after it); it keeps only the last
    # two checkpoints, so a fixed name like iter_4.pth can be gone before a poll sees it
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not list(runs_root.glob("*/last_checkpoint")):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before its first checkpoint was seen"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (run_dir,) = list(runs_root.iterdir())
    assert RunDir(run_dir).meta["status"] == "running"  # killed: nobody marked it finished
    killed_at = finished_iters(run_dir)
    assert killed_at is not None and killed_at < 40
    res = CliRunner().invoke(app, ["train", "--resume", str(run_dir)])
    assert res.exit_code == 0, res.output
    assert finished_iters(run_dir) == 40 and RunDir(run_dir).meta["status"] == "finished"
    again = CliRunner().invoke(app, ["train", "--resume", str(run_dir)])
    assert again.exit_code == 2 and "already finished" in again.output


def test_run_directory_rules(overrides, tmp_path):
    run = _train(overrides, "detector=atss_tiny", "loss=bce", "train.max_iters=2")
    before = sorted(p.name for p in run.path.iterdir())
    cli = CliRunner()
    # a locked run directory
    other = RunDir(run.path)
    other.update(status="running")
    other.lock()
    try:
        res = cli.invoke(app, ["train", "--resume", str(run.path)])
        assert res.exit_code == 2 and "locked" in res.output
    finally:
        other.unlock()
    # not a run directory, a missing checkpoint
    res = cli.invoke(app, ["eval", str(tmp_path)])
    assert res.exit_code == 2 and "not an ecmctl run directory" in res.output
    res = cli.invoke(app, ["eval", str(run.path), "--checkpoint", str(tmp_path / "nope.pth")])
    assert res.exit_code == 2 and "no such checkpoint" in res.output
    assert sorted(p.name for p in run.path.iterdir()) == before  # nothing lost or added


def test_weights_file_of_another_dataset_fails_fast(overrides, tmp_path):
    counts = {"schema": "ecmctl/counts@1", "source": {"path": "x", "sha256": "0", "num_images": 1,
                                                       "num_annotations": 3},
              "categories": [{"id": i, "name": f"x{i}", "frequency": "r", "instance_count": i, "image_count": 1}
                             for i in (1, 2, 3)]}
    (tmp_path / "c.json").write_text(json.dumps(counts))
    w = tmp_path / "w.json"
    assert CliRunner().invoke(app, ["weights", str(tmp_path / "c.json"), "-o", str(w)]).exit_code == 0
    t0 = time.time()
    res = CliRunner().invoke(app, ["train", *overrides, "detector=atss_tiny", "loss=ecm", f"weights_file={w}"])
    assert res.exit_code == 2 and "differ from the dataset's 8 classes" in res.output
    assert time.time() - t0 < 30


def test_repeat_factor_sampling_oversamples_rare_images(overrides, tmp_path):
    """dataset.rfs_thr wraps the train set in ClassBalancedDataset (the paper's RFS, 1e-3 on LVIS)."""
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules

    import ecmctl.engine.packed_dataset  # noqa: F401  (registers ecmctl.ClassBalancedDataset)
    from ecmctl.engine.builder import build_mm_config
    from ecmctl.pipeline.prepare import class_names, ensure_counts

    register_all_modules()
    cfg = compose([*overrides, "dataset.rfs_thr=0.3", "loss=bce"])
    _, counts = ensure_counts(cfg)
    mm = build_mm_config(cfg, class_names(counts), tmp_path)
    ds_cfg = mm.train_dataloader.dataset
    assert ds_cfg.type == "ecmctl.ClassBalancedDataset" and ds_cfg.oversample_thr == 0.3
    balanced = DATASETS.build(ds_cfg)
    plain = DATASETS.build(ds_cfg.dataset)
    assert len(balanced) > len(plain)
