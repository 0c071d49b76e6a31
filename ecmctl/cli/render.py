"""Rich renderings of the library's results: the CLI prints these, the library returns plain data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from ecmctl.core.schemas import BACKGROUND, GROUP_KEYS, METRIC_KEYS


def _yes_no(flag: bool) -> str:
    return "[green]yes[/]" if flag else "[red]no[/]"


def info_table(info: dict) -> Table:
    """The `collect_info()` result as a two-column rich table."""
    table = Table(title="ecmctl environment", show_header=True, header_style="bold")
    table.add_column("component")
    table.add_column("value", overflow="fold")
    for name, version in info["versions"].items():
        table.add_row(name, escape(version) if version is not None else "[red]not installed[/]")
    ops = _yes_no(info["mmcv_ops"])
    if info.get("mmcv_ops_error"):
        ops += f" ({escape(info['mmcv_ops_error'])})"
    table.add_row("mmcv ops compiled", ops)
    cuda = _yes_no(info["cuda_available"])
    if info.get("torch_cuda"):
        cuda += f" (torch built for CUDA {info['torch_cuda']})"
    if info.get("cuda_error"):
        cuda += f" ({escape(info['cuda_error'])})"
    table.add_row("CUDA available", cuda)
    table.add_row("CUDA devices", str(info["cuda_device_count"]))
    for i, name in enumerate(info["cuda_devices"]):
        table.add_row(f"  cuda:{i}", escape(name))
    return table


def _design_line(design: dict | None) -> str:
    if not design:
        return ""
    line = f"\nprofile {design['profile']}: {design['categories_per_image']} categories per train image"
    if "frequent_alpha" in design:
        line += (f"; LVIS v1's frequent counts compressed as 101 * (n / 101) ** {design['frequent_alpha']}"
                 " (1 = as in LVIS)")
    return line


def synth_table(summary: dict[str, Any]) -> Table:
    """One row per LVIS frequency group: how long the tail is and how well val covers it."""
    sp = summary["splits"]
    table = Table(
        title=f"synthetic LVIS v1 dataset in {summary['out_dir']}",
        caption=(f"train: {sp['train']['images']} images, {sp['train']['annotations']} annotations "
                 f"-> {summary['train_json']}\n"
                 f"val: {sp['val']['images']} images, {sp['val']['annotations']} annotations "
                 f"-> {summary['val_json']}" + _design_line(summary.get("design"))),
    )
    for col in ("group", "classes", "train imgs/class", "train inst", "val imgs/class", "val inst"):
        table.add_column(col, justify="left" if col == "group" else "right")
    names = {"r": "r (1-10)", "c": "c (11-100)", "f": "f (>100)"}
    for g in ("r", "c", "f"):
        rows = [c for c in summary["classes"] if c["frequency"] == g]
        if not rows:
            table.add_row(names[g], "0", "-", "0", "-", "0")
            continue
        ti = [c["train_images"] for c in rows]
        vi = [c["val_images"] for c in rows]
        table.add_row(names[g], str(len(rows)),
                      f"{min(ti)}-{max(ti)}", str(sum(c["train_instances"] for c in rows)),
                      f"{min(vi)}-{max(vi)}", str(sum(c["val_instances"] for c in rows)))
    return table


def _table(title: str):

    return Table(title=title)


def counts_tables(doc: dict, rows: int = 5) -> list:
    """Rich renderables: totals, classes per frequency group, rarest/most frequent, zero-instance classes."""
    cats = doc["categories"]
    src = doc["source"]
    totals = _table("annotation file")
    totals.show_header = False
    totals.add_column("field")
    totals.add_column("value", justify="right")
    totals.add_row("path", str(src["path"]))
    totals.add_row("sha256", str(src["sha256"]))
    totals.add_row("images", f"{src['num_images']:,}" if src.get("num_images") is not None else "-")
    totals.add_row("annotations", f"{src['num_annotations']:,}")
    totals.add_row("categories", f"{len(cats):,}")
    if doc.get("frequency_disagreements"):
        totals.add_row("frequency field disagrees", f"[yellow]{doc['frequency_disagreements']} categories[/]")

    groups = _table("classes per frequency group")
    for col in ("group", "classes", "instances", "images (sum)"):
        groups.add_column(col, justify="left" if col == "group" else "right")
    for g, rule in (("r", "<= 10 images"), ("c", "11-100 images"), ("f", "> 100 images")):
        members = [c for c in cats if c["frequency"] == g]
        groups.add_row(f"{g} ({rule})", str(len(members)), f"{sum(c['instance_count'] for c in members):,}",
                       f"{sum(c['image_count'] for c in members):,}")

    order = sorted(cats, key=lambda c: (c["instance_count"], c["image_count"]))
    extremes = _table(f"{rows} rarest, {rows} most frequent")
    for col in ("", "id", "name", "freq", "instances", "images"):
        extremes.add_column(col, justify="right" if col in ("id", "instances", "images") else "left")
    shown = [("rarest", c) for c in order[:rows]]
    shown += [("most frequent", c) for c in order[max(rows, len(order) - rows):][::-1]]
    for label, c in shown:
        extremes.add_row(label, str(c["id"]), escape(c["name"]), c["frequency"], f"{c['instance_count']:,}",
                         f"{c['image_count']:,}")

    zero = [c for c in cats if c["instance_count"] == 0]
    if zero:
        empty = _table(f"{len(zero)} classes with zero instances")
        empty.min_width = 40
        empty.add_column("id", justify="right")
        empty.add_column("name")
        for c in zero[:20]:
            empty.add_row(str(c["id"]), escape(c["name"]))
        if len(zero) > 20:
            empty.add_row("…", f"and {len(zero) - 20} more")
        empty.caption = "(`ecmctl weights` needs --min-count)"
    else:
        from rich.text import Text

        empty = Text("classes with zero instances: none")
    return [totals, groups, extremes, empty]


def weights_table(doc: dict, rows: int = 5):
    """A rich table of the rarest and most frequent classes' weights (and background)."""

    classes = doc["classes"]
    fg = [c for c in classes if c["name"] != BACKGROUND]
    order = sorted(fg, key=lambda c: c["n_pos"])
    shown = order[:rows] + (order[-rows:] if len(order) > 2 * rows else order[rows:])
    shown += [c for c in classes if c["name"] == BACKGROUND]
    title = f"ECM weights, {len(fg)} classes, bg_ratio={doc['bg_ratio']}"
    table = Table(title=title)
    for col in ("name", "n_pos", "n_neg", "margin_pos", "log_w_pos", "log_w_neg", "det_weight"):
        table.add_column(col, justify="left" if col == "name" else "right")
    for c in shown:
        table.add_row(c["name"], f"{c['n_pos']:.0f}", f"{c['n_neg']:.0f}", f"{c['margin_pos']:.4f}",
                      f"{c['log_w_pos']:.4f}", f"{c['log_w_neg']:.4f}", f"{c['det_weight']:.4f}")
    return table


# metrics.json sections shown, in order: standard AP, then Fixed AP and Pooled AP (Dave et al. 2021) if evaluated
SECTIONS = ("bbox", "bbox_fixed", "bbox_pooled", "segm", "segm_fixed", "segm_pooled")


def paper_ap(doc: dict, iou: str) -> float | None:
    """The AP (%) the paper reports for the recipe this run followed, if any."""
    return (((doc.get("recipe") or {}).get("paper") or {}).get(iou))


def metrics_table(docs: list[dict], names: list[str] | None = None):
    """Runs side by side (box, then mask); columns after the first show deltas against the first, and a
    "paper" column gives the published AP of the first run's recipe with the measured difference."""
    names = names or [Path(d["run"]).parent.name + "/" + Path(d["run"]).name for d in docs]
    table = Table(title="LVIS evaluation (AP in %)")
    table.add_column("metric")
    for i, n in enumerate(names):
        table.add_column(n if i == 0 else f"{n} (Δ)", justify="right")
    with_paper = any(paper_ap(docs[0], iou) is not None for iou in ("bbox", "segm"))
    if with_paper:
        table.add_column(f"paper ({docs[0]['recipe']['name']}; measured Δ)", justify="right")
    for section in SECTIONS:
        if not any(section in d for d in docs):
            continue
        iou, _, protocol = section.partition("_")
        for key in GROUP_KEYS if protocol else METRIC_KEYS:
            vals = [d.get(section, {}).get(key) for d in docs]
            cells = []
            for i, v in enumerate(vals):
                if v is None or v < 0:
                    cells.append("-")
                elif i == 0 or vals[0] is None or vals[0] < 0:
                    cells.append(f"{100 * v:.1f}")
                else:
                    cells.append(f"{100 * v:.1f} ({100 * (v - vals[0]):+.1f})")
            if with_paper:
                paper = paper_ap(docs[0], iou) if key == "AP" and not protocol else None
                measured = vals[0] if vals[0] is not None and vals[0] >= 0 else None
                cells.append("" if paper is None else f"{paper:.1f}" + (
                    f" ({100 * measured - paper:+.1f})" if measured is not None else ""))
            table.add_row(f"{iou} {protocol + ' ' if protocol else ''}{key}", *cells)
    return table


def sweep_table(summary: dict):

    table = Table(title=f"sweep: {' '.join(summary['overrides'])}")
    reasons = any(job.get("reason") for job in summary["jobs"])
    for col in ("#", "overrides", "status", "run directory", *(["reason"] if reasons else [])):
        table.add_column(col)
    from ecmctl.pipeline.status import job_labels

    for i, (job, label) in enumerate(zip(summary["jobs"], job_labels(summary["jobs"]))):
        table.add_row(str(i), escape(label), job["status"], escape(job["run_dir"] or "-"),
                      *([escape(job.get("reason") or "")] if reasons else []))
    return table


def compare_table(doc: dict, names: dict[str, str] | None = None, title: str | None = None,
                  more_caption: str = "") -> Table:
    """`ecmctl compare`'s document (ecmctl.pipeline.compare) as a rich table: each group's mean ± sd and its
    paired difference with the baseline, its 95% t-interval and the per-seed differences."""
    from rich import box

    from ecmctl.pipeline.compare import summary_line
    from ecmctl.pipeline.compare import table as compare_rows

    t = compare_rows(doc, names)
    text = 2 if len(doc["groups"]) != 2 else 1  # one row per metric and group: the group column is text too
    table = Table(title=escape(title or summary_line(doc)), box=box.SIMPLE_HEAD, pad_edge=False)
    for i, col in enumerate(t["columns"]):
        table.add_column(escape(col), justify="left" if i < text else "right", no_wrap=i < len(t["columns"]) - 1)
    for i, row in enumerate(t["rows"]):
        table.add_row(*map(escape, row), end_section=i in t["ends"] and i != len(t["rows"]) - 1)
    table.caption = escape(t["caption"] + more_caption)
    return table


def demo_table(summary: dict):
    """Every loss of the demo against the baseline over seeds (ecmctl.pipeline.compare's table: mean ± sd, the
    mean paired difference with its t-interval and the per-seed differences, one row per metric of
    summary["metrics"]); the measured r and the stage times."""
    doc = summary["compare"]
    names = {g["label"]: g["name"].upper() for g in doc["groups"]}
    base = names[doc["baseline"]]
    others = [n for label, n in names.items() if label != doc["baseline"]]
    seeds = summary["seeds"]
    ds = summary.get("dataset") or {}
    groups = ds.get("groups") or {}
    what = (f"{ds['name']} ({ds['classes']} classes: " + ", ".join(f"{groups.get(g, 0)} {g}" for g in "rcf") + ")"
            if ds else "the synthetic long-tailed set")
    if summary.get("r") is not None:
        lo, hi = summary["ci95"] or (float("nan"), float("nan"))
        measured = f"measured r = {summary['r']:.3f} [{lo:.3f}, {hi:.3f}]"
    else:
        measured = "r not measured (no ECM loss)"
    vs = f"{', '.join(others)} vs {base}" if others else base
    times = summary["stage_seconds"]
    notes = "".join(f"\n{n}" for n in doc.get("notes") or [])
    return compare_table(doc, names, title=f"{vs} on {what}, {len(seeds)} seed(s); {measured}",
                         more_caption=f"{notes}\nstage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in times.items())
                         + f"; total {sum(times.values()):.0f}")


def recipes_table(recipes) -> Table:
    """`ecmctl recipes`: one row per paper recipe, with the published numbers (the commands are printed below
    it, one per line, so that they stay whole and copyable in a narrow terminal)."""
    table = Table(title="paper recipes (LVIS v1; box / mask AP as published, %)")
    for col in ("recipe", "detector", "loss", "schedule", "GPUs x images", "paper box / mask"):
        table.add_column(col, overflow="fold")
    for r in recipes:
        box, mask = ("-" if v is None else f"{v:.1f}" for v in (r.paper_bbox, r.paper_segm))
        paper = "-" if r.paper_bbox is None and r.paper_segm is None else f"{box} / {mask}"  # one may be unpublished
        table.add_row(r.name, r.detector, r.loss, r.schedule, f"{r.gpus} x {r.images_per_gpu}", paper)
    return table


STATE_STYLE = {"finished": "green", "running": "cyan", "submitted": "blue", "failed": "red", "interrupted": "yellow"}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def status_table(doc: dict) -> Table:
    """`ecmctl status`: one row per run (ecmctl.pipeline.status), the reason of a failure in one line (the
    notes are printed below it, whole)."""
    sweep = doc["kind"] == "sweep"
    title = f"{doc['kind']} {doc['path']}" + (f": {doc['status']}" if doc.get("status") else "")
    table = Table(title=escape(title))
    jobs, reasons = (any(r[k] for r in doc["rows"]) for k in ("slurm_job", "reason"))
    for col in ("#" if sweep else None, "overrides" if sweep else "run", "state", "iter", "loss", "ETA", "AP",
                "APr", "job" if jobs else None, "reason" if reasons else None):
        if col is not None:
            table.add_column(col, justify="right" if col in ("#", "iter", "loss", "ETA", "AP", "APr") else "left",
                             overflow="fold" if col == "reason" else "ellipsis", no_wrap=col != "reason")
    for i, r in enumerate(doc["rows"]):
        state = r["status"] or "-"
        if r.get("attempts", 1) > 1:
            state += f" (try {r['attempts']})"
        it = "-" if r["iter"] is None else f"{r['iter']}/{r['max_iters'] or '?'}"
        pct = ["-" if v is None else f"{100 * v:.1f}" for v in (r["AP"], r["APr"])]
        table.add_row(*([str(i)] if sweep else []), escape(r["label"] or "-"),
                      f"[{STATE_STYLE.get(r['status'], 'white')}]{escape(state)}[/]", it,
                      "-" if r["loss"] is None else f"{r['loss']:.3f}", _duration(r["eta_s"]), *pct,
                      *([escape(str(r["slurm_job"] or "-"))] if jobs else []),
                      *([escape(r["reason"].splitlines()[0] if r["reason"] else "")] if reasons else []))
    return table
