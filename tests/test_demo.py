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
    res = CliRunner().invoke(app, ["demo", *overrides, "schedule=smoke", "train.max_iters=4", "demo.seeds=[0,1]",
                                   "--out", str(out)], terminal_width=120)
    assert res.exit_code == 0, res.output
    for stage in ("synth", "count", "calibrate", "train ecm", "eval ecm", "train bce", "eval bce", "report"):
        assert f"stage {stage}: " in res.output, stage
    assert res.output.count("stage train ecm: ") == 2  # one per seed; calibrate once
    for col in ("BCE", "ECM", "Δ ECM−BCE [95% CI]", "Δ per seed", "bbox APr", "bbox APc", "bbox APf",
                "measured r", "synth_tiny (8 classes", "df = n − 1 = 1"):
        assert col in res.output, col
    summary = json.loads((out / "demo.json").read_text())
    assert summary["schema"] == "ecmctl/demo@1" and summary["r"] > 0 and summary["seeds"] == [0, 1]
    assert set(summary["mean"]) == {"ecm", "bce"}
    assert summary["metrics"] == ["AP", "APr", "APc", "APf"] and "paired t-interval" in summary["interval"]
    # the test set is too small for a frequent group (> 100 images): APf is undefined there
    assert set(summary["mean"]["ecm"]["bbox"]) == {"AP", "APr", "APc"}
    assert set(summary["stats"]["bbox"]) == {"AP", "APr", "APc"}
    assert set(summary["stats"]["bbox_fixed"]) == {"AP", "APr", "APc"} and "bbox fixed APr" in res.output  # Fixed AP
    for key, st in summary["stats"]["bbox"].items():
        d = st["diff"]
        assert st["bce"]["n"] == st["ecm"]["n"] == 2 and d["n"] == 2 and d["df"] == 1, key
        assert d["ci"][0] <= d["mean"] <= d["ci"][1]
        assert d["values"] == [pytest.approx(e - b) for b, e in zip(st["bce"]["values"], st["ecm"]["values"],
                                                                      strict=True)]
        assert st["bce"]["mean"] == pytest.approx(summary["mean"]["bce"]["bbox"][key])
    assert summary["dataset"]["name"] == "synth_tiny" and summary["dataset"]["classes"] == 8
    groups = summary["groups"]["ecm"][0]  # per-group recall at the cap from the new metrics.json sections
    assert set(groups) <= {"r", "c", "f"} and groups and all(0 <= g["recall"] <= 1 for g in groups.values())
    runs = [Path(summary["runs"][k][0]) for k in ("ecm", "bce")]
    for run in runs:
        assert (run / "metrics.json").is_file() and (run / "run.json").is_file()
        m = json.loads((run / "metrics.json").read_text())
        assert set(m["bbox_recall_per_class"]) == set(m["bbox_per_class"]) and len(m["bbox_per_class"]) == 8
        assert set(m["bbox_tp_score_per_class"]) == set(m["bbox_per_class"])
    assert (out / "calibration" / "calibration.json").is_file()
    assert Path(summary["report"]).is_file()
    # the report command on the finished runs
    rep = tmp_path / "report"
    res = CliRunner().invoke(app, ["report", *map(str, runs), "-o", str(rep)])
    assert res.exit_code == 0, res.output
    from ecmctl.pipeline.report import TITLES

    for name in ("weights", "margins", "ap_by_group", "ap_per_class", "loss", "mechanism"):
        with Image.open(rep / f"{name}.png") as im:
            assert im.size[0] > 100 and im.text["Title"] == TITLES[name]
    assert "ap_by_group.png" in (rep / "report.md").read_text()


def test_demo_with_a_list_of_losses(overrides, tmp_path):
    """demo.losses: each loss x each seed trained and evaluated, every loss compared with bce by seed, by the
    same `ecmctl compare` the demo's table and demo.json come from."""
    from ecmctl.pipeline.compare import compare_runs

    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", *overrides, "schedule=smoke", "train.max_iters=4", "demo.seeds=[0,1]",
                                   "demo.losses=[seesaw,ecm,bce]", "--out", str(out)], terminal_width=120)
    assert res.exit_code == 0, res.output
    for stage in ("train seesaw", "eval seesaw", "train ecm", "train bce", "compare", "report"):
        assert res.output.count(f"stage {stage}: ") == (2 if stage.startswith(("train", "eval")) else 1), stage
    text = " ".join(res.output.split())  # the title and caption may wrap
    for col in ("ECM, SEESAW vs BCE", "Δ vs BCE [95% CI]", "(baseline)", "df = n − 1 = 1"):
        assert col in text, col
    assert "also differ in" not in text  # loss.type etc. follow from loss.name
    summary = json.loads((out / "demo.json").read_text())
    assert summary["losses"] == ["seesaw", "ecm", "bce"] and summary["baseline"] == "bce"
    assert {k: len(v) for k, v in summary["runs"].items()} == {"seesaw": 2, "ecm": 2, "bce": 2}
    st = summary["stats"]["bbox"]["AP"]
    assert set(st["diffs"]) == {"seesaw", "ecm"} and "diff" not in st  # "diff": only for a pair of losses
    for loss in ("seesaw", "ecm"):
        assert st["diffs"][loss]["values"] == [pytest.approx(o - b) for b, o in
                                               zip(st["bce"]["values"], st[loss]["values"], strict=True)]
        assert st[loss]["mean"] == pytest.approx(summary["mean"][loss]["bbox"]["AP"])
    assert (out / "compare.json").is_file() and (out / "compare.png").is_file()
    again = compare_runs([out], by="loss", baseline="loss=bce")  # `ecmctl compare runs/demo`: the same numbers
    assert again["sections"] == summary["compare"]["sections"]
    md = Path(summary["report"]).read_text()
    assert "## Over seeds" in md and "ap_by_group_seeds.png" in md and "3 run(s)" in md
