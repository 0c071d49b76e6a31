"""tracking=mlflow|wandb: a real run logs to a real MLflow file store and to W&B offline, and the values are read
back: mmengine's scalars and config, the run's ECM inputs (r, weights sha256) and its final metrics
(train.eval_after=true evaluates at the end of the training job). A missing package is one line."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ecmctl.cli.app import app
from ecmctl.core.runs import RunDir

# faster_rcnn_tiny with ECM at the official fixed r: a background class, r and a weights file, no calibration run
ECM = ["detector=faster_rcnn_tiny", "loss=ecm", "calibrate.bg_ratio=6.3313", "train.eval_after=true"]


def _train(overrides: list[str], tmp_path: Path, *extra: str) -> tuple[RunDir, dict]:
    res = CliRunner().invoke(app, ["train", *overrides, *ECM, *extra])
    assert res.exit_code == 0, res.output
    (run_dir,) = [p.parent for p in (tmp_path / "runs").glob("*/*/run.json")]
    run = RunDir(run_dir)
    return run, json.loads((run.path / "metrics.json").read_text())


@pytest.mark.slow
def test_mlflow_file_store_gets_scalars_config_ecm_inputs_and_final_metrics(overrides, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    run, metrics = _train(overrides, tmp_path, "tracking=mlflow")
    meta = run.meta
    tracker = meta["tracker"]
    assert tracker["uri"] == (tmp_path / "runs" / "mlruns").resolve().as_uri()  # the default local file store
    logged = MlflowClient(tracking_uri=tracker["uri"]).get_run(tracker["run_id"]).data
    assert logged.params["ecm.r"] == "6.3313" and logged.params["ecm.r_source"] == "fixed"
    assert logged.params["ecm.weights.sha256"] == meta["inputs"]["weights"]["sha256"]
    assert logged.params["train_cfg.max_iters"] == "4"  # mmengine's config, flattened
    assert logged.tags["ecmctl.run_dir"] == str(run.path.resolve())
    assert "loss" in logged.metrics  # the training scalars
    assert logged.metrics["final/bbox_AP"] == pytest.approx(metrics["bbox"]["AP"])
    assert logged.metrics["final/bbox_APr"] == pytest.approx(metrics["bbox"]["APr"])


def _wandb_records(path: Path):
    """The records of a W&B offline run file (`run-<id>.wandb`: LevelDB-style log blocks of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf, block = path.read_bytes(), 7, b"", 32768  # header ':W&B', magic, version
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if n == 0 and kind == 0:
            pos += left - 7
            continue
        buf, pos = buf + data[pos:pos + n], pos + n
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


@pytest.mark.slow
def test_wandb_offline_gets_scalars_config_ecm_inputs_and_final_metrics(overrides, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    run, metrics = _train(overrides, tmp_path, "tracking=wandb")
    tracker = run.meta["tracker"]
    assert tracker["mode"] == "offline"
    files = sorted(run.path.glob(f"wandb/offline-run-*/run-{tracker['id']}.wandb"))
    assert len(files) == 2  # training, then the evaluation's metrics, in the same W&B run (its id)
    config, history, summary = {}, [], {}
    for f in files:
        for r in _wandb_records(f):
            kind = r.WhichOneof("record_type")
            if kind == "config" or kind == "run":
                items = r.config.update if kind == "config" else r.run.config.update
                config.update({_key(i): json.loads(i.value_json) for i in items})
            elif kind == "history":
                history.append({_key(i): json.loads(i.value_json) for i in r.history.item})
            elif kind == "summary":
                summary.update({_key(i): json.loads(i.value_json) for i in r.summary.update})
    assert config["ecm.r"] == "6.3313" and config["ecm.weights.sha256"] == run.meta["inputs"]["weights"]["sha256"]
    assert config["train_cfg"]["max_iters"] == 4
    assert any("loss" in h for h in history)
    assert summary["final/bbox_AP"] == pytest.approx(metrics["bbox"]["AP"])
    assert any(h.get("final/bbox_APr") == pytest.approx(metrics["bbox"]["APr"]) for h in history)


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_a_missing_tracker_package_is_one_line_naming_the_extra(overrides, tmp_path, monkeypatch, tracker):
    monkeypatch.setitem(sys.modules, tracker, None)  # `import wandb` raises ImportError, as where it is absent
    res = CliRunner().invoke(app, ["train", *overrides, f"tracking={tracker}"])
    assert res.exit_code == 2, res.output
    assert f"tracking={tracker} needs the {tracker} package: pip install 'ecmctl[{tracker}]'" in res.output
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*/*/run.json"))
