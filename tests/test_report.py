"""ecmctl.pipeline.report: figures and report.md from fake-but-schema-true run directories (no training)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from ecmctl.core.errors import UserError
from ecmctl.ecm.weights import weights_document
from ecmctl.pipeline.report import TITLES, group_table, load_train_log, report_summary, write_report

# 12 classes with a long tail: (name, frequency, instance_count, image_count)
CLASSES = [("unicorn", "r", 2, 2), ("yak", "r", 4, 3), ("zebu", "r", 7, 6), ("axe", "c", 15, 12),
           ("bell", "c", 32, 25), ("cart", "c", 70, 60), ("drum", "c", 120, 95), ("egg", "f", 300, 150),
           ("fork", "f", 800, 400), ("glass", "f", 2100, 900), ("hat", "f", 5200, 2300),
           ("person", "f", 14000, 5000)]
R = 3.1416


def _dump(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))
    return path


def _counts() -> dict:
    return {"schema": "ecmctl/counts@1", "source": {"path": "train.json", "sha256": "0" * 64},
            "categories": [{"id": i + 1, "name": n, "frequency": f, "instance_count": k, "image_count": im}
                           for i, (n, f, k, im) in enumerate(CLASSES)]}


def _box(ap, apr, apc, apf) -> dict:
    return {"AP": ap, "AP50": ap + 0.15, "AP75": ap - 0.02, "APs": -1.0, "APm": ap * 0.8, "APl": ap * 1.1,
            "APr": apr, "APc": apc, "APf": apf}


def _per_class(boost: float) -> dict:
    # AP grows with the class's count; the ECM run lifts the tail; one class undefined (no val instances)
    out = {}
    for i, (name, _, _, _) in enumerate(CLASSES):
        out[name] = None if name == "yak" else round(min(0.05 * i + boost * (12 - i) / 12, 0.95), 4)
    return out


def _recall(lift: float) -> dict:
    # recall at the cap grows with the class's count; the ECM run lifts the rare classes; yak has no val gt
    return {name: None if name == "yak" else round(min(0.3 + 0.05 * i + (lift if f == "r" else 0.0), 1.0), 4)
            for i, (name, f, _, _) in enumerate(CLASSES)}


def _tp_score(lift: float) -> dict:
    # ECM raises the rare classes' scores; zebu has no true positive in the baseline
    return {name: (None if name == "yak" or (name == "zebu" and not lift)
                   else round(0.2 + 0.05 * i + (lift if f == "r" else 0.0), 4))
            for i, (name, f, _, _) in enumerate(CLASSES)}


def _log_lines(start: int, stop: int, loss0: float, with_cls: bool = True) -> list[dict]:
    lines = []
    for it in range(start, stop + 1, 20):
        loss = loss0 * (0.35 + 0.65 * 200 / (200 + it))
        rec = {"lr": 0.02, "grad_norm": 3.1, "loss": round(loss, 4), "loss_rpn_cls": 0.2,
               "acc": 82.0, "loss_bbox": 0.5, "time": 0.26, "data_time": 0.05, "memory": 0,
               "iter": it, "step": it}
        if with_cls:
            rec["loss_cls"] = round(0.7 * loss, 4)
        lines.append(rec)
    return lines


def _write_log(run: Path, stamp: str, lines: list[dict], extra: list[str] = ()) -> None:
    path = run / stamp / "vis_data" / "scalars.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(rec) + "\n" for rec in lines) + "".join(x + "\n" for x in extra))


def make_ecm_run(root: Path) -> Path:
    """A Mask R-CNN ECM run: counts, weights (bg_ratio = r), calibration, box+mask metrics, per-class AP,
    and a training log over two timestamp directories (a resume) plus eval/."""
    run = root / "runs" / "mask_rcnn_tiny-ecm-synth" / "20240501-120000"
    counts = _dump(run / "inputs" / "synth.json", _counts())
    weights = _dump(run / "inputs" / "weights.json", weights_document(_counts(), "0" * 64, bg_ratio=R))
    cal = _dump(run / "inputs" / "calibration.json", {
        "schema": "ecmctl/calibration@1", "detector": "mask_rcnn_tiny", "dataset": "synth",
        "kind": "two_stage",
        "r": R, "ci95": [3.01, 3.29], "iters": 200,
        "per_stage": [{"stage": 0, "r": R, "ci95": [3.01, 3.29], "fg": 1000, "bg": 3142, "iters": 200}]})
    _dump(run / "run.json", {
        "schema": "ecmctl/run@1", "name": "mask_rcnn_tiny-ecm-synth", "status": "finished", "max_iters": 600,
        "inputs": {k: {"path": str(p.resolve()), "source": str(p), "sha256": "0" * 64}
                   for k, p in (("counts", counts), ("calibration", cal), ("weights", weights))}})
    _dump(run / "metrics.json", {
        "schema": "ecmctl/metrics@1", "run": str(run), "checkpoint": str(run / "iter_600.pth"),
        "bbox": _box(0.262, 0.181, 0.243, 0.301), "segm": _box(0.251, 0.175, 0.236, 0.282),
        "bbox_per_class": _per_class(0.2), "segm_per_class": _per_class(0.18),
        "bbox_recall_per_class": _recall(0.25), "bbox_tp_score_per_class": _tp_score(0.3)})
    _write_log(run, "20240501_120001", _log_lines(20, 340, 6.0))
    _write_log(run, "20240501_130000", _log_lines(320, 600, 6.0),  # resumed at 300: 320, 340 logged again
               extra=['{"coco/bbox_mAP": 0.2, "step": 600}', '{"loss": 1.0, "st'])  # eval line, cut-off line
    _write_log(run / "eval", "20240501_140000", [{"loss": 99.0, "step": 1}])  # never a training curve
    (run / "iter_600.pth").write_bytes(b"")
    return run


def make_baseline_run(root: Path) -> Path:
    """A sigmoid-BCE baseline: no weights, box metrics only; its inputs' recorded path no longer exists
    (the run was copied from elsewhere), so the report must fall back to RUN/inputs/<basename>."""
    run = root / "runs" / "mask_rcnn_tiny-bce-synth" / "20240430-090000"
    _dump(run / "inputs" / "synth.json", _counts())
    _dump(run / "run.json", {
        "schema": "ecmctl/run@1", "name": "mask_rcnn_tiny-bce-synth", "status": "finished", "max_iters": 600,
        "inputs": {"counts": {"path": "/elsewhere/runs/x/inputs/synth.json", "sha256": "0" * 64}}})
    _dump(run / "metrics.json", {
        "schema": "ecmctl/metrics@1", "run": str(run), "checkpoint": str(run / "iter_600.pth"),
        "bbox": _box(0.248, 0.102, 0.228, 0.305), "bbox_per_class": _per_class(0.0),
        "bbox_recall_per_class": _recall(0.0), "bbox_tp_score_per_class": _tp_score(0.0)})
    _write_log(run, "20240430_090001", _log_lines(20, 600, 6.4, with_cls=False))
    return run


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    ecm, base = make_ecm_run(root), make_baseline_run(root)
    out = root / "out" / "report"
    return ecm, base, out, write_report([ecm, base], out)


def test_figures_are_pngs_with_titles(rendered):
    _, _, out, result = rendered
    assert set(result["figures"]) == set(TITLES) == {"weights", "margins", "ap_by_group", "ap_per_class",
                                                     "loss", "mechanism"}
    for name, path in result["figures"].items():
        assert path == out / f"{name}.png"
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
            assert im.text["Title"] == TITLES[name]  # the suptitle, also stored in the PNG
        assert result["titles"][name] == TITLES[name]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left behind
    assert sorted(p.name for p in out.iterdir()) == sorted([*(f"{n}.png" for n in TITLES), "report.md"])


def test_markdown(rendered):
    ecm, base, out, result = rendered
    md = result["markdown"].read_text()
    assert result["markdown"] == out / "report.md"
    assert md.startswith("# ecmctl report")
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| mask_rcnn")}
    header = next(line for line in md.splitlines() if line.startswith("| run | box AP"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "run", "box AP", "APr", "APc", "APf", "mask AP", "APr", "APc", "APf"]
    cells = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    metric_rows = [line for line in md.splitlines() if line.startswith("| mask_rcnn") and "%" not in line
                   and line.count("|") == 10]
    assert [cells(r)[1:] for r in metric_rows] == [
        ["26.2", "18.1", "24.3", "30.1", "25.1", "17.5", "23.6", "28.2"],
        ["24.8 (-1.4)", "10.2 (-7.9)", "22.8 (-1.5)", "30.5 (+0.4)", "–", "–", "–", "–"]]
    assert set(rows) == {"mask_rcnn_tiny-ecm-synth", "mask_rcnn_tiny-bce-synth"}
    assert "measured r = 3.142, 95% CI [3.010, 3.290] over 200 iterations" in md
    assert f"`{ecm}`" in md and f"`{base}`" in md
    links = re.findall(r"!\[([^\]]*)\]\(([^)]+)\)", md)
    assert [t for t, _ in links] == [TITLES[n] for n in result["figures"]]
    for _, link in links:
        assert not Path(link).is_absolute() and (out / link).is_file()
    assert "– (baseline)" in md and "weights (r = 3.142, 95% CI [3.010, 3.290])" in md
    assert "## Notes" not in md  # everything was available
    assert report_summary(result) == f"wrote {out / 'report.md'} (2 runs; " + ", ".join(
        f"{n}.png" for n in result["figures"]) + ")"


def test_train_log_merges_resumes_and_skips_eval(rendered):
    ecm = rendered[0]
    log = load_train_log(ecm)
    steps = [r["step"] for r in log]
    assert steps == list(range(20, 601, 20))  # 320 and 340 once; eval/ and the eval line left out
    assert all(r["loss"] < 99 for r in log)
    assert all("loss_cls" in r for r in log)


def test_baseline_only_and_no_per_class(tmp_path):
    base = make_baseline_run(tmp_path)
    metrics = json.loads((base / "metrics.json").read_text())
    for key in ("bbox_per_class", "bbox_recall_per_class", "bbox_tp_score_per_class"):
        del metrics[key]
    (base / "metrics.json").write_text(json.dumps(metrics))
    for f in base.glob("*/vis_data/scalars.json"):
        f.unlink()
    result = write_report([base], tmp_path / "out")
    assert set(result["figures"]) == {"ap_by_group"}
    md = result["markdown"].read_text()
    assert "## Notes" in md and "eval.per_class=true" in md and "no run has ECM weights" in md
    assert "recall-at-the-cap figure left out" in md and "## Recall at the cap" not in md
    assert "mask AP" not in md and "measured r" not in md
    with Image.open(result["figures"]["ap_by_group"]) as im:
        assert im.text["Title"] == TITLES["ap_by_group"]


def test_same_name_runs_get_distinct_labels(tmp_path):
    a = make_baseline_run(tmp_path / "a")
    b = make_baseline_run(tmp_path / "b")
    b = b.rename(b.parent / "20240430-100000")
    result = write_report([a, b], tmp_path / "out")
    assert result["runs"] == ["mask_rcnn_tiny-bce-synth/20240430-090000",
                              "mask_rcnn_tiny-bce-synth/20240430-100000"]


def test_not_a_run_dir(tmp_path):
    with pytest.raises(UserError, match="not an ecmctl run directory"):
        write_report([tmp_path], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_run_without_metrics(tmp_path):
    run = make_baseline_run(tmp_path)
    (run / "metrics.json").unlink()
    with pytest.raises(UserError, match=re.escape(f"run `ecmctl eval {run}` first")):
        write_report([run], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written before every run checks out


def test_output_is_a_file(tmp_path):
    run = make_baseline_run(tmp_path)
    (tmp_path / "out").write_text("x")
    with pytest.raises(UserError, match="exists and is not a directory"):
        write_report([run], tmp_path / "out")


def test_missing_input_and_no_runs(tmp_path):
    run = make_baseline_run(tmp_path)
    (run / "inputs" / "synth.json").unlink()
    with pytest.raises(UserError, match="input 'counts'"):
        write_report([run], tmp_path / "out")
    with pytest.raises(UserError, match="at least one run"):
        write_report([], tmp_path / "out")


def test_group_table_means_per_frequency_group():
    freq = {name: f for name, f, _, _ in CLASSES}
    metrics = {"bbox_recall_per_class": _recall(0.25), "bbox_tp_score_per_class": _tp_score(0.0)}
    t = group_table(metrics, freq)
    # rare: unicorn (i=0) and zebu (i=2); yak undefined. recall 0.3 + 0.05 i + 0.25
    assert t["r"]["recall"] == pytest.approx((0.55 + 0.65) / 2) and t["r"]["recall_classes"] == 2
    assert t["r"]["tp_score"] == pytest.approx(0.2) and t["r"]["tp_score_classes"] == 1  # zebu: no TP
    assert t["c"]["recall"] == pytest.approx(sum(0.3 + 0.05 * i for i in range(3, 7)) / 4)
    assert t["f"]["tp_score_classes"] == 5
    assert group_table({"bbox_recall_per_class": {"unicorn": 0.5}}, freq) == {
        "r": {"recall": 0.5, "recall_classes": 1}}
    assert group_table({"bbox": {"AP": 0.3}}, freq) == {}  # the sections are optional
    assert group_table(metrics, {}) == {}  # no frequency known for any class


def test_mechanism_figure_and_table(rendered):
    _, _, out, result = rendered
    md = result["markdown"].read_text()
    assert "![" + TITLES["mechanism"] + "](mechanism.png)" in md
    rows = [line for line in md.splitlines() if line.startswith("| mask_rcnn") and line.count("|") == 8]
    cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
    # ECM: rare recall (0.55 + 0.65) / 2 = 60.0 %; baseline 35.0 %; baseline rare TP score from unicorn only
    assert cells[0][:2] == ["mask_rcnn_tiny-ecm-synth", "60.0"] and cells[1][:2] == ["mask_rcnn_tiny-bce-synth", "35.0"]
    assert cells[0][4] == "0.550" and cells[1][4] == "0.200"
