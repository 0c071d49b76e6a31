"""`ecmctl report`: PNG figures and a Markdown summary (report.md) comparing evaluated runs.

Figures (each written only when its data exists in the runs):
  weights.png       per-class w+ and w- sorted ascending (supplementary Fig. 3), first run with weights
  margins.png       gamma+ and gamma- against the sample ratio a = n-/n+ (Fig. 2), same run
  ap_by_group.png   AP, APr, APc, APf per run, box (and mask when evaluated)
  ap_per_class.png  per-class box AP against training instances, one colour per run
  loss.png          training loss (and loss_cls) against iteration, one line per run
  mechanism.png     per frequency group: recall at the 300-detection cap and the mean score of true
                    positives, per run (metrics.json's optional bbox_recall_per_class / bbox_tp_score_per_class)
  ap_by_group_seeds.png  AP by group over seeds, a point per seed, when some configuration has several seeds
                    (the comparison of ecmctl.pipeline.compare; `ecmctl demo` passes its own)

Matplotlib is used through `matplotlib.figure.Figure` only (no pyplot, no GUI backend, no global state; the
helpers are in ecmctl.pipeline.figures): headless by construction. Every file is written to a temp name in the
output directory, then renamed.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ecmctl.core.errors import UserError
from ecmctl.core.io import (
    atomic_write_text,
    check_output,
    check_writable,
    load_schema,
    make_dirs,
    same_file,
)
from ecmctl.core.metrics_identity import val_set_note
from ecmctl.core.runs import RunDir
from ecmctl.core.schemas import (
    BACKGROUND,
    CALIBRATION_SCHEMA,
    COUNTS_SCHEMA,
    GROUP_KEYS,
    WEIGHTS_SCHEMA,
)
from ecmctl.pipeline import compare as comparing
from ecmctl.pipeline.figures import AP_PANELS, ap_by_group_figure, new_figure, save_figure
from ecmctl.pipeline.seeds import metric_value

REPORT_MD = "report.md"

TITLES = {
    "weights": "ECM per-class weights w+ and w- (sorted ascending)",
    "margins": "ECM margins against the sample ratio a = n-/n+",
    "ap_by_group": "AP by frequency group",
    "ap_per_class": "Per-class box AP against training instances",
    "loss": "Training loss",
    "mechanism": "Recall at the 300-detection cap and true-positive scores by frequency group",
}
FREQ_COLORS = {"r": "tab:red", "c": "tab:orange", "f": "tab:blue"}
FREQ_NAMES = {"r": "rare", "c": "common", "f": "frequent"}


@dataclass
class ReportRun:
    """Everything the report reads from one run directory, loaded and checked up front."""

    path: Path
    label: str
    meta: dict
    metrics: dict
    counts: dict | None = None
    weights: dict | None = None
    weights_key: str | None = None
    calibration: dict | None = None
    log: list[dict] = field(default_factory=list)  # training log lines with a "loss", by step
    index: int = 0  # position in the report: the run's colour in every figure

    @property
    def color(self) -> str:
        return f"C{self.index % 10}"


# ----------------------------------------------------------------------------------------------- loading


def _input_path(run: RunDir, key: str) -> Path | None:
    """The run's own copy of input `key` (None when the run has none); a recorded input that is gone is an error."""
    path = run.input_path(key)
    if path is not None and not path.is_file():
        raise UserError(f"{run.path}: input {key!r} not found at {path}; restore the file or re-run `ecmctl train`")
    return path


def _weights_key(meta: dict) -> str | None:
    """'weights' (one RoI stage or dense head), else the first 'weights_stageN' (Cascade: stage 0)."""
    keys = list(meta.get("inputs") or {})
    if "weights" in keys:
        return "weights"
    stages = sorted((k for k in keys if k.startswith("weights_stage") and k[13:].isdigit()),
                    key=lambda k: int(k[13:]))
    return stages[0] if stages else None


def load_train_log(run_dir: str | os.PathLike) -> list[dict]:
    """mmengine's training scalars (RUN/<timestamp>/vis_data/scalars.json, eval/ excluded), merged.

    Several timestamp directories come from resumes; they are read oldest first and a later line
    replaces an earlier one at the same step. Lines without "loss" (evaluation) and unreadable lines
    (a log cut off mid-write) are skipped. Returns the lines sorted by step, each with "step" set.
    """
    run_dir = Path(run_dir)
    files = sorted((p for p in run_dir.glob("*/vis_data/scalars.json")
                    if p.parent.parent.name not in ("eval", "calibration")),
                   key=lambda p: p.parent.parent.name)
    by_step: dict[int, dict] = {}
    for f in files:
        with open(f, errors="replace") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if not isinstance(rec, dict) or not isinstance(rec.get("loss"), (int, float)):
                    continue
                step = rec.get("step", rec.get("iter"))  # "step" is global; "iter" is per epoch by epoch
                if not isinstance(step, (int, float)):
                    continue
                by_step[int(step)] = {**rec, "step": int(step)}
    return [by_step[k] for k in sorted(by_step)]


def load_run(run_dir: str | os.PathLike, index: int = 0) -> ReportRun:
    """Open a run directory and every file the report needs from it (UserError on anything missing)."""
    from ecmctl.pipeline.evaluate import load_metrics

    rundir = RunDir.open(run_dir)  # checks run.json's schema
    path, meta = rundir.path, rundir.meta
    metrics = load_metrics(path)  # "no metrics.json; run `ecmctl eval RUN` first"
    run = ReportRun(path=path, label=str(meta.get("name") or path.parent.name), meta=meta, metrics=metrics,
                    index=index)
    counts = _input_path(rundir, "counts")
    if counts is not None:
        run.counts = load_schema(counts, COUNTS_SCHEMA)
    run.weights_key = _weights_key(meta)
    if run.weights_key:
        run.weights = load_schema(_input_path(rundir, run.weights_key), WEIGHTS_SCHEMA)
        if not isinstance(run.weights.get("classes"), list) or not run.weights["classes"]:
            raise UserError(f"{path}: weights input has no 'classes'; regenerate it with `ecmctl weights`")
    cal = _input_path(rundir, "calibration")
    if cal is not None:
        run.calibration = load_schema(cal, CALIBRATION_SCHEMA)
    run.log = load_train_log(path)
    return run


def _unique_labels(runs: list[ReportRun]) -> None:
    """Runs of the same config share a name: tell them apart by their timestamp directory."""
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.label] = seen.get(r.label, 0) + 1
    for r in runs:
        if seen[r.label] > 1:
            r.label = f"{r.label}/{r.path.name}"
    taken: set[str] = set()
    for r in runs:
        base, k = r.label, 2
        while r.label in taken:
            r.label, k = f"{base} ({k})", k + 1
        taken.add(r.label)


# ----------------------------------------------------------------------------------------------- writing


def _save_figure(fig, path: Path) -> str:
    """Save as PNG (the title also goes into the PNG's Title text chunk); returns the title read back."""
    return save_figure(fig, path, software="ecmctl report")


def _new_figure(name: str, ncols: int = 1, width: float = 6.4, height: float = 4.4):
    return new_figure(TITLES[name], ncols=ncols, width=width, height=height)


# ----------------------------------------------------------------------------------------------- figures


def _freq_by_name_of(counts: dict | None) -> dict[str, str]:
    return {c.get("name"): c.get("frequency") for c in (counts or {}).get("categories", [])}


def _freq_by_name(run: ReportRun) -> dict[str, str]:
    return _freq_by_name_of(run.counts)


def figure_weights(run: ReportRun):
    """Supplementary Fig. 3: w+ (left) and w- (right) per class, sorted ascending; background apart."""
    import numpy as np

    classes = run.weights["classes"]
    fg = [c for c in classes if c.get("name") != BACKGROUND]
    bg = next((c for c in classes if c.get("name") == BACKGROUND), None)
    freq = _freq_by_name(run)
    fig, axes = _new_figure("weights", ncols=2, width=5.2)
    for ax, key, sym in ((axes[0], "log_w_pos", "w^+"), (axes[1], "log_w_neg", "w^-")):
        w = np.exp(np.array([c[key] for c in fg], dtype=np.float64))
        order = np.argsort(w, kind="stable")
        x = np.arange(len(fg))
        ax.plot(x, w[order], color="0.55", lw=1.0, zorder=1)
        if freq:
            f = np.array([freq.get(fg[i]["name"], "?") for i in order])
            for code, color in FREQ_COLORS.items():
                sel = f == code
                if sel.any():
                    ax.scatter(x[sel], w[order][sel], s=14, color=color, zorder=2,
                               label=f"{FREQ_NAMES[code]} ({int(sel.sum())})")
            if (f == "?").any():
                ax.scatter(x[f == "?"], w[order][f == "?"], s=14, color="0.3", zorder=2, label="no frequency")
        else:
            ax.scatter(x, w[order], s=14, color="tab:blue", zorder=2, label="classes")
        if bg is not None:
            wb = math.exp(bg[key])
            ax.scatter([len(fg)], [wb], marker="*", s=160, color="black", zorder=3,
                       label=f"background ({wb:.3g})")
        ax.set_title(f"${sym} = \\exp(\\log {sym})$")
        ax.set_xlabel(f"class index (sorted by ${sym}$)")
        ax.set_ylabel(f"${sym}$")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    bg_ratio = run.weights.get("bg_ratio")
    fig.supxlabel(f"weights of {run.label} ({run.weights_key}); {len(fg)} classes; "
                  f"bg_ratio = {bg_ratio if bg_ratio is not None else 'none (foreground only)'}",
                  fontsize=8, color="0.3")
    return fig


def figure_margins(run: ReportRun):
    """Fig. 2: gamma+ and gamma- against a = n-/n+ (log x); they cross at a = 1 (gamma+ + gamma- = 1)."""
    import numpy as np

    classes = run.weights["classes"]
    fg = [c for c in classes if c.get("name") != BACKGROUND]
    bg = next((c for c in classes if c.get("name") == BACKGROUND), None)
    fig, (ax,) = _new_figure("margins")
    a = np.array([c["n_neg"] / c["n_pos"] for c in fg], dtype=np.float64)
    order = np.argsort(a, kind="stable")
    for key, sym, color, marker in (("margin_pos", "\\gamma^+", "tab:blue", "o"),
                                    ("margin_neg", "\\gamma^-", "tab:orange", "s")):
        y = np.array([c[key] for c in fg], dtype=np.float64)
        ax.plot(a[order], y[order], color=color, lw=1.0, marker=marker, ms=4, label=f"${sym}$ (classes)")
        if bg is not None:
            ax.scatter([bg["n_neg"] / bg["n_pos"]], [bg[key]], marker="*", s=160, color=color,
                       edgecolor="black", zorder=3, label=f"${sym}$ (background)")
    ax.axvline(1.0, color="0.5", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_ylim(0, 1)
    ax.set_xlabel("sample ratio $a = n^- / n^+$")
    ax.set_ylabel("margin")
    ax.grid(alpha=0.3)
    ax.grid(alpha=0.1, which="minor")
    ax.legend(fontsize=8)
    ax.set_title(f"from {run.label}", fontsize=9, color="0.3")
    return fig


def figure_ap_by_group(runs: list[ReportRun]):
    """Grouped bars: AP, APr, APc, APf (in %) per run; a mask panel when any run has segm metrics, and a Fixed AP
    panel (Dave et al. 2021: per-class top 10,000 over the dataset, no per-image cap) when evaluated."""
    series = [{"label": r.label, "color": r.color,
               "values": {iou: {k: [metric_value(r.metrics, iou, k)] for k in GROUP_KEYS}
                          for iou, _ in AP_PANELS if iou in r.metrics}} for r in runs]
    return ap_by_group_figure(series, TITLES["ap_by_group"])


def per_class_points(run: ReportRun, counts: dict | None) -> tuple[list[float], list[float], int]:
    """(instance counts, AP in %, classes not matched) of a run's defined per-class box AP."""
    per_class = run.metrics.get("bbox_per_class") or {}
    n_by_name = {c.get("name"): c.get("instance_count") for c in (counts or {}).get("categories", [])}
    xs, ys, unmatched = [], [], 0
    for name, ap in per_class.items():
        if not isinstance(ap, (int, float)) or not math.isfinite(ap) or ap < 0:
            continue
        n = n_by_name.get(name)
        if not isinstance(n, (int, float)) or n <= 0:
            unmatched += 1
            continue
        xs.append(float(n))
        ys.append(100.0 * float(ap))
    return xs, ys, unmatched


def figure_ap_per_class(runs: list[ReportRun], points: dict[str, tuple]):
    """Scatter of per-class box AP against training instances (log x), and each run's binned mean."""
    import numpy as np

    fig, (ax,) = _new_figure("ap_per_class", width=7.0)
    all_x = np.concatenate([np.asarray(p[0]) for p in points.values() if p[0]])
    edges = np.geomspace(all_x.min(), all_x.max() * 1.0001, 9) if all_x.max() > all_x.min() else None
    for r in runs:
        if r.label not in points or not points[r.label][0]:
            continue
        xs, ys = np.asarray(points[r.label][0]), np.asarray(points[r.label][1])
        ax.scatter(xs, ys, s=16, alpha=0.55, color=r.color, label=f"{r.label} ({len(xs)} classes)")
        if edges is not None:
            idx = np.clip(np.digitize(xs, edges) - 1, 0, len(edges) - 2)
            # each bin's mean AP at the geometric mean count of its classes (a lone class: on its point)
            bins = [b for b in range(len(edges) - 1) if (idx == b).any()]
            cx = [float(np.exp(np.log(xs[idx == b]).mean())) for b in bins]
            cy = [float(ys[idx == b].mean()) for b in bins]
            ax.plot(cx, cy, color=r.color, lw=1.8)
    ax.set_xscale("log")
    ax.set_xlabel("training instances of the class (log)")
    ax.set_ylabel("box AP (%)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.grid(alpha=0.1, which="minor")
    ax.legend(fontsize=8)
    ax.set_title("points: classes; lines: mean over log-spaced count bins", fontsize=9, color="0.3")
    return fig


# per-class sections of metrics.json that the mechanism figure reads, and their name in the group table
MECHANISM_SECTIONS = (("recall_per_class", "recall"), ("tp_score_per_class", "tp_score"))


def group_table(metrics: dict, freq: dict[str, str], iou: str = "bbox") -> dict:
    """Per frequency group, the mean over its classes of recall at the detection cap and of the mean
    true-positive score, with how many classes had a value: {"r": {"recall", "recall_classes",
    "tp_score", "tp_score_classes"}, ...}. Classes without a value (no val ground truth; no true positive)
    are left out; groups without any class are left out; {} when metrics.json has neither section.

    Why: the ECM margins raise rare classes' scores, so more of their detections stay in the 300 kept per
    image; these per-group numbers show it from lvis-api's own evaluation (per-class values only).
    """
    out: dict = {}
    for g in ("r", "c", "f"):
        row: dict = {}
        for section, key in MECHANISM_SECTIONS:
            per_class = metrics.get(f"{iou}_{section}")
            if not isinstance(per_class, dict):
                continue
            vals = [float(v) for name, v in per_class.items()
                    if freq.get(name) == g and isinstance(v, (int, float)) and math.isfinite(v) and v >= 0]
            if vals:
                row[key], row[f"{key}_classes"] = sum(vals) / len(vals), len(vals)
        if row:
            out[g] = row
    return out


def figure_mechanism(runs: list[ReportRun], tables: dict[str, dict]):
    """Grouped bars per frequency group: recall at the cap (left, %) and mean true-positive score (right)."""
    import numpy as np

    fig, axes = _new_figure("mechanism", ncols=2, width=max(4.6, 2.6 + 0.5 * len(runs)))
    groups = [g for g in ("r", "c", "f") if any(g in t for t in tables.values())]
    x = np.arange(len(groups))
    shown = [r for r in runs if tables.get(r.label)]
    width = 0.8 / max(1, len(shown))
    # scores span orders of magnitude between groups (a rare class's true positives can score ~1e-3): log
    # axis from the LVIS protocol's score threshold 1e-4, so each group's lift reads as a ratio
    floor = 1e-4
    panels = (("recall", 100.0, "recall at 300 detections (%)", "{:.1f}", 0.0),
              ("tp_score", 1.0, "mean score of true positives (IoU 0.5, log)", "{:.3g}", floor))
    for ax, (key, scale, ylabel, fmt, bottom) in zip(axes, panels, strict=True):
        top = 0.0
        for i, r in enumerate(shown):
            t = tables[r.label]
            h = np.array([scale * t[g][key] if key in t.get(g, {}) else np.nan for g in groups])
            pos = x - 0.4 + width * (i + 0.5)
            bars = np.maximum(np.nan_to_num(h, nan=bottom), bottom)
            ax.bar(pos, bars - bottom, width * 0.95, bottom=bottom, color=r.color, label=r.label)
            for p, v, b in zip(pos, h, bars, strict=True):
                ax.text(p, b, "n/a" if np.isnan(v) else fmt.format(v), ha="center",
                        va="bottom", fontsize=7, rotation=90 if len(shown) > 3 else 0)
            if np.isfinite(h).any():
                top = max(top, float(np.nanmax(h)))
        ax.set_xticks(x, [f"{FREQ_NAMES[g]} ({g})" for g in groups])
        if bottom > 0:
            ax.set_yscale("log")
            ax.set_ylim(bottom, max(top * 3, bottom * 10))
        else:
            ax.set_ylim(0, max(top * 1.2, scale * 0.05))
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.supxlabel("means over the group's classes on val (recall: classes with ground truth; score: classes with "
                  ">= 1 true positive); groups by training image counts", fontsize=8, color="0.3")
    return fig


def mechanism_markdown(runs: list[ReportRun], tables: dict[str, dict]) -> list[str]:
    """Recall at the cap (%) and mean true-positive score per frequency group, one row per run."""
    lines = ["| run | recall r | recall c | recall f | TP score r | TP score c | TP score f |",
             "|---|" + "---:|" * 6]
    for r in runs:
        t = tables.get(r.label)
        if not t:
            continue
        cells = [f"{100 * t[g]['recall']:.1f}" if "recall" in t.get(g, {}) else "–" for g in ("r", "c", "f")]
        cells += [f"{t[g]['tp_score']:.3f}" if "tp_score" in t.get(g, {}) else "–" for g in ("r", "c", "f")]
        lines.append(f"| {_md(r.label)} | " + " | ".join(cells) + " |")
    return lines


def figure_loss(runs: list[ReportRun]):
    """Total loss (solid) and loss_cls (dashed, when logged) against iteration, one colour per run."""
    fig, (ax,) = _new_figure("loss", width=7.0)
    for r in runs:
        if not r.log:
            continue
        steps = [rec["step"] for rec in r.log]
        ax.plot(steps, [rec["loss"] for rec in r.log], color=r.color, lw=1.4, label=f"{r.label} loss")
        cls = [(rec["step"], rec["loss_cls"]) for rec in r.log
               if isinstance(rec.get("loss_cls"), (int, float))]
        if cls:
            ax.plot(*zip(*cls, strict=True), color=r.color, lw=1.2, ls="--", label=f"{r.label} loss_cls")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


# ----------------------------------------------------------------------------------------------- markdown


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _cell(v: float | None, first: float | None, is_first: bool) -> str:
    if v is None:
        return "–"
    if is_first or first is None:
        return f"{100 * v:.1f}"
    return f"{100 * v:.1f} ({100 * (v - first):+.1f})"


def metrics_markdown(runs: list[ReportRun]) -> list[str]:
    """The metrics table: box AP/APr/APc/APf (+ mask when any run has it), deltas vs the first run."""
    ious = [("bbox", "box")] + ([("segm", "mask")] if any("segm" in r.metrics for r in runs) else [])
    cols = [(iou, k, f"{label} {k}" if k == "AP" else k) for iou, label in ious for k in GROUP_KEYS]
    lines = ["| run | " + " | ".join(c[2] for c in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    first = runs[0]
    for r in runs:
        cells = [_cell(metric_value(r.metrics, iou, k), metric_value(first.metrics, iou, k), r is first)
                 for iou, k, _ in cols]
        lines.append(f"| {_md(r.label)} | " + " | ".join(cells) + " |")
    paper = (first.metrics.get("recipe") or {}).get("paper") or {}
    if any(paper.get(iou) is not None for iou, _ in ious):
        cells = [f"{paper[iou]:.1f}" if k == "AP" and paper.get(iou) is not None else "" for iou, k, _ in cols]
        lines.append(f"| paper ({_md(first.metrics['recipe']['name'])}) | " + " | ".join(cells) + " |")
    return lines


def _fmt_r(r) -> str:
    """r to 4 significant digits (3.635, 12.50), 'n/a' when unknown."""
    if not isinstance(r, (int, float)) or isinstance(r, bool) or not math.isfinite(r):
        return "n/a"
    digits = max(0, 3 - math.floor(math.log10(abs(r)))) if r else 3
    return f"{r:.{digits}f}"


def _weights_cell(r: ReportRun) -> str:
    """The runs table's ECM weights column: which file, and r rounded with its 95% CI when measured."""
    if not r.weights:
        return "– (baseline)"
    bg = r.weights.get("bg_ratio")
    if bg is None:
        return f"{r.weights_key} (foreground only)"
    ci = (r.calibration or {}).get("ci95") if (r.calibration or {}).get("r") == bg else None
    ci_txt = f", 95% CI [{_fmt_r(ci[0])}, {_fmt_r(ci[1])}]" if isinstance(ci, list) and len(ci) == 2 else ""
    return f"{r.weights_key} (r = {_fmt_r(bg)}{ci_txt})"


def calibration_markdown(runs: list[ReportRun]) -> list[str]:
    lines = []
    for r in runs:
        cal = r.calibration
        if cal is None:
            bg = (r.weights or {}).get("bg_ratio")
            if bg is not None:
                lines.append(f"- **{_md(r.label)}**: no calibration recorded; "
                             f"weights use bg_ratio = {_fmt_r(bg)}")
            continue
        if cal.get("r") is None:
            lines.append(f"- **{_md(r.label)}**: r not measured "
                         "(one-stage detector: foreground-only weights)")
            continue
        ci = cal.get("ci95")
        ci_txt = (f", 95% CI [{_fmt_r(ci[0])}, {_fmt_r(ci[1])}]"
                  if isinstance(ci, list) and len(ci) == 2 else "")
        lines.append(f"- **{_md(r.label)}**: measured r = {_fmt_r(cal['r'])}{ci_txt} "
                     f"over {cal.get('iters', '?')} iterations")
        stages = cal.get("per_stage") or []
        if len(stages) > 1:
            lines.append("  - per RoI stage: " + ", ".join(
                f"stage {s.get('stage', i)}: r = {_fmt_r(s.get('r'))}" for i, s in enumerate(stages)))
    return lines


FIGURE_HEADINGS = {
    "weights": "Class weights",
    "margins": "Class margins",
    "ap_by_group": "AP by frequency group",
    "ap_per_class": "Per-class AP",
    "loss": "Training loss",
    "mechanism": "Recall at the cap and true-positive scores",
    "ap_by_group_seeds": "AP by frequency group over seeds",
}
SEEDS_FIGURE = "ap_by_group_seeds"  # the comparison over seeds (ecmctl.pipeline.compare), when there is one


def report_markdown(runs: list[ReportRun], figures: dict[str, Path], titles: dict[str, str],
                    notes: list[str], mechanism: dict[str, dict] | None = None,
                    comparison: dict | None = None) -> str:
    stamp = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    out = [REPORT_HEADER, "", f"{len(runs)} run(s), generated {stamp}.", "",
           "## Runs", "", "| run | directory | status | ECM weights | training log |",
           "|---|---|---|---|---|"]
    for r in runs:
        w = _weights_cell(r)
        log = f"{len(r.log)} lines, last iter {r.log[-1]['step']}" if r.log else "–"
        status = _md(r.meta.get("status", "?"))
        out.append(f"| {_md(r.label)} | `{_md(r.path)}` | {status} | {_md(w)} | {log} |")
    out += ["", "## Metrics", "", "AP in %; in brackets, the difference from the first run.", ""]
    out += metrics_markdown(runs)
    if comparison:
        out += ["", "## Over seeds", "", comparing.summary_line(comparison) + ".", ""]
        out += comparing.markdown(comparison)
    if mechanism:
        out += ["", "## Recall at the cap by frequency group", "",
                "Recall at 300 detections per image (%, mean over IoU 0.50:0.95) and the mean score of true "
                "positives (IoU 0.5), averaged over each group's classes (for the score, the classes with at "
                "least one true positive).", ""]
        out += mechanism_markdown(runs, mechanism)
    cal = calibration_markdown(runs)
    if cal:
        out += ["", "## Background ratio r", ""] + cal
    out += ["", "## Figures"]
    for name, path in figures.items():
        out += ["", f"### {FIGURE_HEADINGS[name]}", "", f"![{_md(titles[name])}]({path.name})"]
    if notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------- entry


REPORT_HEADER = "# ecmctl report"


def _check_out_dir(out_dir: Path, run_dirs: list[Path]) -> None:
    """Before reading any run: the output directory is not one of the runs, holds no report.md but an
    earlier report, and can be written."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a directory; choose another output directory")
    for run in run_dirs:
        if out_dir.exists() and Path(run).exists() and same_file(out_dir, run):
            raise UserError(f"{out_dir}: is one of the runs being reported; choose another -o directory")
    if out_dir.is_dir():
        check_output(out_dir / REPORT_MD, marker=REPORT_HEADER.encode(), kind="report.md")
    check_writable(out_dir, "-o")


def _prepare_out_dir(out_dir: Path) -> Path:
    return make_dirs(out_dir, "report directory")


def write_report(run_dirs: list[Path], out_dir: Path, comparison: dict | None = None) -> dict:
    """Write report.md and the figures into out_dir (created); all runs are checked before any write.

    Over seeds: `comparison` (ecmctl.pipeline.compare's document, e.g. of all the demo's runs) adds a section
    with its table and the AP-by-group figure with a point per seed; without it, the runs themselves are
    compared when some configuration among them was run with several seeds.

    Returns {"markdown": Path, "figures": {name: Path}, "titles": {name: title read back from the
    figure}, "runs": [labels], "notes": [why a figure was left out, ...]}.
    """
    if not run_dirs:
        raise UserError("report needs at least one run directory")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, list(run_dirs))  # fail before reading every run
    runs = [load_run(p, i) for i, p in enumerate(run_dirs)]
    _unique_labels(runs)
    notes: list[str] = []
    if note := val_set_note([(r.label, r.metrics) for r in runs]):
        notes.append(note)
    if comparison is None:
        comparison, why_not = comparing.for_report(list(run_dirs))
        if why_not:
            notes.append(why_not)
    _prepare_out_dir(out_dir)

    figures: dict[str, Path] = {}
    titles: dict[str, str] = {}

    def save(name: str, fig) -> None:
        figures[name] = out_dir / f"{name}.png"
        titles[name] = _save_figure(fig, figures[name])

    src = next((r for r in runs if r.weights), None)
    if src is not None:
        save("weights", figure_weights(src))
        save("margins", figure_margins(src))
    else:
        notes.append("no run has ECM weights (all baselines): weights and margins figures left out")
    save("ap_by_group", figure_ap_by_group(runs))
    if comparison:
        figures[SEEDS_FIGURE] = comparing.write_figure(comparison, out_dir / f"{SEEDS_FIGURE}.png",
                                                       software="ecmctl report")
        titles[SEEDS_FIGURE] = comparing.FIGURE_TITLE

    fallback_counts = next((r.counts for r in runs if r.counts), None)
    points = {}
    for r in runs:
        if not r.metrics.get("bbox_per_class"):
            notes.append(f"{r.label}: no per-class AP in metrics.json (evaluate with `eval.per_class=true`)")
            continue
        xs, ys, unmatched = per_class_points(r, r.counts or fallback_counts)
        points[r.label] = (xs, ys)
        if unmatched:
            notes.append(f"{r.label}: {unmatched} classes with AP have no training count (name not in counts "
                         "or zero instances); left out of the per-class figure")
    if any(p[0] for p in points.values()):
        save("ap_per_class", figure_ap_per_class(runs, points))
    elif points:
        notes.append("per-class AP could not be matched to training counts: per-class figure left out")

    mechanism = {}
    for r in runs:
        freq = _freq_by_name(r) or _freq_by_name_of(fallback_counts)
        table = group_table(r.metrics, freq)
        if table:
            mechanism[r.label] = table
    if mechanism:
        save("mechanism", figure_mechanism(runs, mechanism))
        missing = [r.label for r in runs if r.label not in mechanism]
        if missing:
            notes.append("no per-class recall in metrics.json (re-run `ecmctl eval`) for " + ", ".join(missing))
    else:
        notes.append("no run has per-class recall in metrics.json (evaluated before it was recorded; re-run "
                     "`ecmctl eval`): recall-at-the-cap figure left out")

    missing_logs = [r.label for r in runs if not r.log]
    if missing_logs:
        notes.append("no training log (RUN/<timestamp>/vis_data/scalars.json) for " + ", ".join(missing_logs))
    if len(missing_logs) < len(runs):
        save("loss", figure_loss(runs))

    md = out_dir / REPORT_MD
    text = report_markdown(runs, figures, titles, notes, mechanism, comparison)
    atomic_write_text(md, text)
    return {"markdown": md, "figures": figures, "titles": titles, "runs": [r.label for r in runs],
            "notes": notes}


def report_summary(result: dict) -> str:
    """One line for the CLI: where the report is and which figures it has."""
    figs = ", ".join(p.name for p in result["figures"].values()) or "no figures"
    return f"wrote {result['markdown']} ({len(result.get('runs', []))} runs; {figs})"
