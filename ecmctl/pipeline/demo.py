"""The main job end to end: synth -> count -> calibrate -> train (ECM and BCE) -> eval -> report.

Every stage is the library function behind its CLI command; only the wiring lives here.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

from omegaconf import OmegaConf

from ecmctl.core.config import compose
from ecmctl.core.io import atomic_write_json, check_writable
from ecmctl.core.runs import now
from ecmctl.core.schemas import DEMO_SCHEMA, GROUP_KEYS
from ecmctl.pipeline import seeds as stats
from ecmctl.pipeline.calibrate import run_calibration
from ecmctl.pipeline.evaluate import evaluate
from ecmctl.pipeline.prepare import ensure_counts, ensure_dataset
from ecmctl.pipeline.report import group_table, write_report
from ecmctl.pipeline.train import train

DEMO_DEFAULTS = ["detector=faster_rcnn_tiny", "schedule=demo", "train.log_level=WARNING", "train.progress=true"]
# The metrics the demo compares, in table order: one entry per metric of metrics.json's bbox/segm sections.
DEMO_METRICS: tuple[str, ...] = GROUP_KEYS
# metrics.json sections the demo compares: standard AP and Fixed AP (Dave et al. 2021), box (and mask)
DEMO_SECTIONS: tuple[str, ...] = ("bbox", "bbox_fixed", "segm", "segm_fixed")


class StageClock:
    """Wall time per stage, printed as each ends."""

    def __init__(self, say) -> None:
        self.say, self.times = say, {}

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        yield
        dt = time.perf_counter() - t0
        self.times[name] = self.times.get(name, 0.0) + dt
        self.say(f"stage {name}: {dt:.1f} s")


def run_demo(overrides: list[str] = (), say=print) -> dict:
    """Run the whole pipeline for ECM and the BCE baseline over `demo.seeds`; returns demo.json's content."""
    base = compose([*DEMO_DEFAULTS, *overrides])
    out = Path(base.demo.out)
    common = [*DEMO_DEFAULTS, *overrides, f"run_root={out}", f"demo.out={out}"]  # every job's runs go under out
    cfg = compose(common)
    check_writable(out, "demo.out")  # before minutes of work, not after
    clock = StageClock(say)
    with clock.stage("synth"):
        ensure_dataset(cfg, say)
    with clock.stage("count"):
        counts_file, counts = ensure_counts(cfg, say)
    with clock.stage("calibrate"):
        cal = run_calibration(cfg, out / "calibration", say, counts=(counts_file, counts))
    runs: dict[str, list[str]] = {"ecm": [], "bce": []}
    metrics: dict[str, list[dict]] = {"ecm": [], "bce": []}
    for seed in list(base.demo.seeds):
        for loss in ("ecm", "bce"):
            job = [*common, f"loss={loss}", f"seed={seed}", f"name=demo-{loss}-seed{seed}"]
            if loss == "ecm":
                job.append(f"weights_file={cal.weights_files[0]}")
            with clock.stage(f"train {loss}"):
                run = train(compose(job), job, say)
            with clock.stage(f"eval {loss}"):
                metrics[loss].append(evaluate(run.path, overrides=["eval.protocol=fixed"], say=say))
            runs[loss].append(str(run.path))
    with clock.stage("report"):
        rep = write_report([Path(runs["ecm"][0]), Path(runs["bce"][0])], out / "report")
    freq = {c["name"]: c["frequency"] for c in counts["categories"]}
    summary = {"schema": DEMO_SCHEMA, "finished": now(), "r": cal.r, "ci95": cal.ci95,
               "calibration_iters": cal.iters, "seeds": list(base.demo.seeds), "runs": runs,
               "dataset": {"name": cfg.dataset.name, "classes": len(freq),
                           "groups": {g: sum(f == g for f in freq.values()) for g in ("r", "c", "f")}},
               "metrics": list(DEMO_METRICS), "interval": stats.INTERVAL,
               "stats": seed_stats(metrics["bce"], metrics["ecm"]),
               "mean": {loss: mean_metrics(ms) for loss, ms in metrics.items()},
               "per_seed": metrics_by_seed(metrics),
               "groups": {loss: [group_table(d, freq) for d in ms] for loss, ms in metrics.items()},
               "stage_seconds": clock.times,
               "report": str(rep["markdown"]), "counts_file": str(counts_file),
               "config": OmegaConf.to_container(cfg, resolve=True)}
    atomic_write_json(out / "demo.json", summary)
    return summary


def seed_stats(bce: list[dict], ecm: list[dict], keys: tuple[str, ...] = DEMO_METRICS) -> dict:
    """{iou: {metric: {"bce": summary, "ecm": summary, "diff": ECM − BCE paired by seed}}} (seeds.compare);
    an IoU type or metric that no run reports is left out."""
    out: dict = {}
    for iou in DEMO_SECTIONS:
        for key in keys:
            b = [stats.metric_value(d, iou, key) for d in bce]
            e = [stats.metric_value(d, iou, key) for d in ecm]
            if all(v is None for v in b + e):
                continue
            c = stats.compare(b, e)
            out.setdefault(iou, {})[key] = {"bce": c["base"], "ecm": c["other"], "diff": c["diff"]}
    return out


def mean_metrics(docs: list[dict], keys: tuple[str, ...] = DEMO_METRICS) -> dict:
    """Mean over seeds of each box/mask metric (undefined values, -1, are left out)."""
    out: dict = {}
    for iou in DEMO_SECTIONS:
        for key in keys:
            vals = [v for v in (stats.metric_value(d, iou, key) for d in docs) if v is not None]
            if vals:
                out.setdefault(iou, {})[key] = sum(vals) / len(vals)
    return out


def metrics_by_seed(metrics: dict[str, list[dict]], keys: tuple[str, ...] = DEMO_METRICS) -> dict:
    return {loss: [{iou: {k: d[iou].get(k) for k in keys} for iou in DEMO_SECTIONS if iou in d}
                   for d in docs] for loss, docs in metrics.items()}
