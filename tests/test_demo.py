"""A reduced `ecmctl demo` end to end (smoke schedule), and `ecmctl report` on its runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from ecmctl.cli import app

pytestmark = pytest.mark.slow


def test_reduced_demo_and_report(overrides, tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", *overrides, "schedule=smoke", "train.max_iters=4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    for stage in ("synth", "count", "calibrate", "train ecm", "eval ecm", "train bce", "eval bce", "report"):
        assert f"stage {stage}: " in res.output, stage
    for col in ("BCE", "ECM", "Δ (ECM − BCE)", "bbox APr", "bbox APc", "bbox APf", "measured r"):
        assert col in res.output, col
    summary = json.loads((out / "demo.json").read_text())
    assert summary["schema"] == "ecmctl/demo@1" and summary["r"] > 0
    assert set(summary["mean"]) == {"ecm", "bce"}
    # the test set is too small for a frequent group (> 100 images): APf is undefined there
    assert set(summary["mean"]["ecm"]["bbox"]) == {"AP", "APr", "APc"}
    runs = [Path(summary["runs"][k][0]) for k in ("ecm", "bce")]
    for run in runs:
        assert (run / "metrics.json").is_file() and (run / "run.json").is_file()
    assert (out / "calibration" / "calibration.json").is_file()
    assert Path(summary["report"]).is_file()
    # the report command on the finished runs
    rep = tmp_path / "report"
    res = CliRunner().invoke(app, ["report", *map(str, runs), "-o", str(rep)])
    assert res.exit_code == 0, res.output
    from ecmctl.pipeline.report import TITLES

    for name in ("weights", "margins", "ap_by_group", "ap_per_class", "loss"):
        with Image.open(rep / f"{name}.png") as im:
            assert im.size[0] > 100 and im.text["Title"] == TITLES[name]
    assert "ap_by_group.png" in (rep / "report.md").read_text()
