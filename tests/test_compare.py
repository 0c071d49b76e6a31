"""`ecmctl compare`: groups, seed pairing, statistics and refusals, on run directories written by hand (no
training): every number checked here is computed by hand in the test."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from ecmctl.cli import app
from ecmctl.core.errors import UserError
from ecmctl.pipeline.compare import FIGURE_TITLE, compare_runs

T = 4.302653  # t(0.975, 2): 3 seeds
GT = "a" * 64
KEYS = ("AP", "APr", "APc", "APf")
# per loss, per seed 0, 1, 2: (AP, APr, APc, APf); ECM's APf is undefined (-1) on seed 2
BOX = {
    "bce": [(0.20, 0.10, 0.25, 0.45), (0.50, 0.12, 0.26, 0.44), (0.80, 0.09, 0.27, 0.46)],
    "ecm": [(0.22, 0.15, 0.25, 0.44), (0.53, 0.14, 0.27, 0.45), (0.84, 0.13, 0.26, -1.0)],
    "seesaw": [(0.21, 0.11, 0.25, 0.45), (0.49, 0.13, 0.26, 0.44), (0.80, 0.10, 0.28, 0.46)],
}


def _dump(path: Path, obj, as_yaml: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(obj) if as_yaml else json.dumps(obj, indent=1))


def make_run(root: Path, loss: str, seed: int, box=None, *, gt: str | None = GT, protocol: str = "fixed",
             checkpoint: str = "iter_300.pth", max_iters: int = 300, lr: float = 0.04) -> Path:
    """A run directory as `ecmctl train` + `ecmctl eval` leave it, reduced to what compare reads."""
    run = root / f"demo-{loss}-seed{seed}" / "20240501-120000"
    ap, apr, apc, apf = box or BOX[loss][seed]
    section = {"AP": ap, "AP50": ap + 0.1, "APr": apr, "APc": apc, "APf": apf}
    _dump(run / "run.json", {"schema": "ecmctl/run@1", "name": f"demo-{loss}-seed{seed}", "status": "finished"})
    _dump(run / "config.yaml", {
        "name": f"demo-{loss}-seed{seed}", "seed": seed, "run_dir": None, "run_root": str(root),
        "loss": {"name": loss, "type": loss, "loss_weight": 1.0}, "detector": {"name": "faster_rcnn_tiny"},
        "schedule": {"name": "demo", "max_iters": max_iters, "lr": lr},
        "train": {"max_iters": max_iters, "max_epochs": None, "progress": True},
        "weights_file": f"{root}/calibration/weights.json" if loss == "ecm" else None,
        "eval": {"protocol": protocol}, "demo": {"seeds": [0, 1, 2]}}, as_yaml=True)
    metrics = {"schema": "ecmctl/metrics@1", "run": str(run), "checkpoint": checkpoint,
               "protocol": {"protocol": protocol, "score_thr": 1e-4, "max_per_img": 300, "topk": 10000,
                            "ann_file": "data/synth/val.json"},
               "bbox": section, "bbox_fixed": {k: v + 0.01 if v >= 0 else v for k, v in section.items()}}
    if gt is not None:
        metrics["gt_sha256"] = gt
    _dump(run / "metrics.json", metrics)
    return run


def make_runs(root: Path, losses=("ecm", "bce"), seeds=(0, 1, 2)) -> dict[str, list[Path]]:
    return {loss: [make_run(root, loss, s) for s in seeds] for loss in losses}


def invoke(*args):
    return CliRunner().invoke(app, ["compare", *map(str, args)], terminal_width=200)


def one_error_line(res, *needles):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and res.output.count("error:") == 1, res.output
    line = " ".join(res.output.split())  # rich may wrap the line
    for n in needles:
        assert n in line, (n, res.output)
    return line


def test_two_groups_three_seeds_against_hand_computed_statistics(tmp_path):
    runs = make_runs(tmp_path / "runs")
    out = tmp_path / "out" / "compare.json"
    out.parent.mkdir()
    # ECM's runs are given in another seed order: pairing follows the seed, not the position
    res = invoke(*(runs["ecm"][i] for i in (2, 0, 1)), *runs["bce"], "-o", out)
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["schema"] == "ecmctl/compare@1" and doc["group_keys"] == ["loss.name"]  # loss.type follows from it
    assert [g["label"] for g in doc["groups"]] == ["loss=bce", "loss=ecm"] and doc["seeds"] == [0, 1, 2]
    assert doc["baseline"] == "loss=bce" and "first group in sorted order" in doc["baseline_source"]
    assert [g["runs"] for g in doc["groups"]] == [[str(p) for p in runs["bce"]], [str(p) for p in runs["ecm"]]]

    ap = doc["sections"]["bbox"]["AP"]
    bce, ecm, d = ap["groups"]["loss=bce"], ap["groups"]["loss=ecm"], ap["diffs"]["loss=ecm"]
    assert bce["values"] == pytest.approx([0.20, 0.50, 0.80]) and bce["n"] == 3
    assert bce["mean"] == pytest.approx(0.50) and bce["sd"] == pytest.approx(0.30)  # sqrt((.09 + 0 + .09) / 2)
    assert ecm["mean"] == pytest.approx(0.53) and ecm["sd"] == pytest.approx(0.31)  # sqrt((.0961 + 0 + .0961) / 2)
    assert d["values"] == pytest.approx([0.02, 0.03, 0.04]) and d["n"] == 3 and d["df"] == 2
    assert d["mean"] == pytest.approx(0.03) and d["sd"] == pytest.approx(0.01) and d["t"] == pytest.approx(T, abs=1e-3)
    half = T * 0.01 / math.sqrt(3)
    assert d["ci"] == pytest.approx([0.03 - half, 0.03 + half], abs=1e-5)
    # APr: differences +5, +2, +4 points: mean 3.667, sd 1.528, half-width 4.303 * 1.528 / sqrt(3) = 3.795
    apr = doc["sections"]["bbox"]["APr"]["diffs"]["loss=ecm"]
    sd = math.sqrt(((5 - 11 / 3) ** 2 + (2 - 11 / 3) ** 2 + (4 - 11 / 3) ** 2) / 2) / 100
    assert apr["mean"] == pytest.approx(0.11 / 3) and apr["sd"] == pytest.approx(sd)
    assert apr["ci"] == pytest.approx([0.11 / 3 - T * sd / math.sqrt(3), 0.11 / 3 + T * sd / math.sqrt(3)], abs=1e-5)
    # APf undefined on ECM's seed 2: that seed has no difference, the means use the defined values
    apf = doc["sections"]["bbox"]["APf"]
    assert apf["groups"]["loss=ecm"]["values"][2] is None and apf["groups"]["loss=ecm"]["mean"] == pytest.approx(0.445)
    assert apf["diffs"]["loss=ecm"]["values"] == [pytest.approx(-0.01), pytest.approx(0.01), None]
    assert apf["diffs"]["loss=ecm"]["df"] == 1
    assert doc["sections"]["bbox_fixed"]["AP"]["groups"]["loss=bce"]["mean"] == pytest.approx(0.51)  # Fixed AP
    assert set(doc["sections"]) == {"bbox", "bbox_fixed"}
    assert {r["iteration"] for r in doc["runs"]} == {"iter 300"} and doc["protocol"]["protocol"] == "fixed"

    text = " ".join(res.output.split())
    for cell in ("bbox AP", "bbox fixed APr", "50.0 ± 30.0", "53.0 ± 31.0", "+3.0 [+0.5, +5.5]", "+2.0 +3.0 +4.0",
                 "+3.7 [-0.1, +7.5]", "+5.0 +2.0 +4.0", "-1.0 +1.0 -", "df = n − 1 = 2", "baseline bce",
                 "Δ ecm−bce [95% CI]", f"wrote {out} and {out.with_suffix('.png')}"):
        assert cell in text, cell
    with Image.open(out.with_suffix(".png")) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.text["Title"] == FIGURE_TITLE


def test_sweep_and_demo_directories_expand_to_their_runs(tmp_path):
    runs = make_runs(tmp_path / "runs")
    sweep = tmp_path / "runs" / "sweeps" / "sweep" / "20240501-130000"
    _dump(sweep / "sweep.json", {"schema": "ecmctl/sweep@1", "overrides": ["loss=ecm", "seed=0,1,2"],
                                 "status": "finished", "jobs": [{"overrides": ["loss=ecm", f"seed={s}"],
                                                                 "run_dir": str(p), "status": "finished"}
                                                                for s, p in enumerate(runs["ecm"])]})
    doc = compare_runs([sweep, *runs["bce"], runs["ecm"][0]])  # a run given twice counts once
    assert len(doc["runs"]) == 6
    assert doc["sections"]["bbox"]["AP"]["diffs"]["loss=ecm"]["mean"] == pytest.approx(0.03)
    demo = tmp_path / "demo"
    _dump(demo / "demo.json", {"schema": "ecmctl/demo@1", "runs": {k: [str(p) for p in v] for k, v in runs.items()}})
    assert compare_runs([demo])["sections"] == doc["sections"]
    # a failed sweep job has no run, so no metrics: named
    failed = json.loads((sweep / "sweep.json").read_text())
    failed["jobs"][1].update(run_dir=None, status="failed")
    _dump(sweep / "sweep.json", failed)
    one_error_line(invoke(sweep), "sweep jobs without a run directory", "job 1 (loss=ecm seed=1: failed)")


def test_three_groups_baseline_choice_and_long_table(tmp_path):
    runs = make_runs(tmp_path / "runs", losses=("ecm", "bce", "seesaw"))
    every = [p for v in runs.values() for p in v]
    res = invoke(*every, "--baseline", "loss.name=bce")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "mean ± sd" in text and "Δ vs bce [95% CI]" in text and "(baseline)" in text
    assert "+1.0 -1.0 +0.0" in text  # seesaw − bce per seed (never "-0.0")
    doc = compare_runs(every, baseline="loss=seesaw")
    assert doc["baseline"] == "loss=seesaw" and doc["baseline_source"] == "--baseline loss=seesaw"
    d = doc["sections"]["bbox"]["AP"]["diffs"]
    assert set(d) == {"loss=bce", "loss=ecm"}
    assert d["loss=bce"]["values"] == pytest.approx([-0.01, 0.01, 0.0])  # bce − seesaw, per seed
    one_error_line(invoke(*every, "--baseline", "loss=focal"), "--baseline loss=focal matches no group",
                   "loss=bce; loss=ecm; loss=seesaw")
    one_error_line(invoke(*every, "--baseline", "detector=x"), "the groups differ in loss.name", "loss=bce")


def test_by_key_and_its_errors(tmp_path):
    runs = make_runs(tmp_path / "runs")
    other_lr = make_run(tmp_path / "lr", "ecm", 0, lr=0.02)  # also differs in schedule.lr
    every = [*runs["ecm"], *runs["bce"]]
    assert compare_runs(every, by="loss")["group_keys"] == ["loss.name"]  # a config group's name
    assert compare_runs(every, by="loss.type")["group_keys"] == ["loss.type"]
    doc = compare_runs([*every[1:], other_lr], by="loss.name")
    assert "schedule.lr" in " ".join(doc["notes"])  # what --by does not separate is said
    auto = compare_runs([*every, make_run(tmp_path / "lr", "bce", 0, lr=0.02)])
    assert auto["group_keys"] == ["loss.name", "schedule.lr"]
    assert [g["label"] for g in auto["groups"]] == ["loss=bce, schedule.lr=0.02", "loss=bce, schedule.lr=0.04",
                                                   "loss=ecm, schedule.lr=0.04"]
    one_error_line(invoke(*every, "--by", "nope"), "--by nope: no such config key", "differ between them: loss.name")
    one_error_line(invoke(*every, "--by", "seed"), "paired by seed")
    line = one_error_line(invoke(*every, other_lr, "--by", "loss"), "loss=ecm: 2 runs with seed 0")
    assert "schedule.lr" in line  # and how to tell them apart


def test_single_seed_gives_means_and_says_so(tmp_path):
    runs = make_runs(tmp_path / "runs", seeds=(0,))
    res = invoke(runs["ecm"][0], runs["bce"][0])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "no interval (one seed)" in text and "one seed per group" in text
    assert "20.0" in text and "22.0" in text and "± " not in text.split("bbox AP")[1].split("bbox APr")[0]
    doc = compare_runs([runs["ecm"][0], runs["bce"][0]])
    d = doc["sections"]["bbox"]["AP"]["diffs"]["loss=ecm"]
    assert d["values"] == pytest.approx([0.02]) and d["ci"] is None and d["sd"] is None


def test_missing_seed_in_a_group_is_noted(tmp_path):
    runs = make_runs(tmp_path / "runs")
    doc = compare_runs([*runs["ecm"][:2], *runs["bce"]])
    assert doc["groups"][1]["runs"][2] is None
    assert any("loss=ecm has no run with seed 2" in n for n in doc["notes"])
    assert doc["sections"]["bbox"]["AP"]["diffs"]["loss=ecm"]["values"] == [pytest.approx(0.02),
                                                                             pytest.approx(0.03), None]


def test_refuses_different_ground_truth(tmp_path):
    runs = make_runs(tmp_path / "runs")
    other = make_run(tmp_path / "other", "ecm", 1, gt="b" * 64)
    line = one_error_line(invoke(runs["ecm"][0], other, *runs["bce"]), "different ground truth", "sha256 bbbbbbbbbbbb")
    assert str(other) in line and str(runs["bce"][0]) in line


def test_refuses_unrecorded_ground_truth(tmp_path):
    runs = make_runs(tmp_path / "runs")
    old = make_run(tmp_path / "old", "ecm", 1, gt=None)
    line = one_error_line(invoke(runs["ecm"][0], old, *runs["bce"]), "cannot tell which ground truth", "gt_sha256",
                          "--reuse-detections")
    assert str(old) in line and str(runs["bce"][0]) not in line


def test_refuses_different_protocols(tmp_path):
    runs = make_runs(tmp_path / "runs")
    std = make_run(tmp_path / "std", "ecm", 1, protocol="standard")
    line = one_error_line(invoke(runs["ecm"][0], std, *runs["bce"]), "different protocols", "protocol=standard",
                          "protocol=fixed")
    assert str(std) in line


def test_refuses_different_checkpoint_iterations_of_one_schedule(tmp_path):
    runs = make_runs(tmp_path / "runs")
    early = make_run(tmp_path / "early", "ecm", 1, checkpoint="iter_150.pth")
    line = one_error_line(invoke(runs["ecm"][0], early, *runs["bce"]), "different checkpoint iterations",
                          "(iter 150)", "(iter 300)")
    assert str(early) in line
    # a longer schedule ends at another iteration: that is what is compared, not a mistake
    longer = [make_run(tmp_path / "long", "bce", s, max_iters=600, checkpoint="iter_600.pth") for s in (0, 1, 2)]
    doc = compare_runs([*runs["bce"], *longer])
    assert doc["group_keys"] == ["schedule.max_iters"] and len(doc["groups"]) == 2


def test_directories_without_metrics_are_named_in_one_line(tmp_path):
    runs = make_runs(tmp_path / "runs")
    for p in (runs["ecm"][1], runs["bce"][2]):
        (p / "metrics.json").unlink()
    line = one_error_line(invoke(*runs["ecm"], *runs["bce"]), "no metrics.json in 2 of 6 runs", "ecmctl eval")
    assert str(runs["ecm"][1]) in line and str(runs["bce"][2]) in line and str(runs["ecm"][0]) not in line
    one_error_line(invoke(tmp_path / "nope", tmp_path), "not a run, sweep or demo directory", "(no such directory)")


def test_output_is_checked_before_any_work(tmp_path):
    runs = make_runs(tmp_path / "runs")
    (tmp_path / "notes.json").write_text("{}")
    one_error_line(invoke(*runs["ecm"], *runs["bce"], "-o", tmp_path / "notes.json"), "not a file this command wrote")
    one_error_line(invoke(*runs["ecm"], *runs["bce"], "-o", tmp_path / "c.png"), "pass a .json path")
    assert not (tmp_path / "c.png").exists() and (tmp_path / "notes.json").read_text() == "{}"
    out = tmp_path / "c.json"
    assert invoke(*runs["ecm"], *runs["bce"], "-o", out).exit_code == 0
    assert invoke(*runs["ecm"], *runs["bce"], "-o", out).exit_code == 0  # its own earlier output is replaced
    with pytest.raises(UserError, match="no runs to compare"):
        (tmp_path / "empty").mkdir()
        _dump(tmp_path / "empty" / "sweep.json", {"schema": "ecmctl/sweep@1", "jobs": []})
        compare_runs([tmp_path / "empty"])


def test_report_shows_the_comparison_over_seeds(tmp_path):
    from ecmctl.pipeline.report import write_report

    runs = make_runs(tmp_path / "runs")
    result = write_report([*runs["ecm"], *runs["bce"]], tmp_path / "report")
    md = result["markdown"].read_text()
    assert "## Over seeds" in md
    assert "| bbox AP | 50.0 ± 30.0 | 53.0 ± 31.0 | +3.0 [+0.5, +5.5] | +2.0 +3.0 +4.0 |" in md
    assert "ap_by_group_seeds.png" in md and result["figures"]["ap_by_group_seeds"].is_file()
    # runs that cannot be paired: the report is still written, and says why there are no statistics
    other = make_run(tmp_path / "other", "ecm", 1, gt="b" * 64)
    result = write_report([runs["ecm"][0], other, *runs["bce"]], tmp_path / "report2")
    md = result["markdown"].read_text()
    assert "## Over seeds" not in md and "no statistics over seeds: runs evaluated on different ground truth" in md
