"""`ecmctl eval` options: distributed evaluation through torchrun, eval overrides, several runs side by side."""

from __future__ import annotations

import json

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
