"""The main job end to end: synth -> count -> calibrate -> train (each loss of `demo.losses`, each seed) -> eval
-> compare -> report.

Every stage is the library function behind its CLI command; only the wiring lives here. The statistics over
seeds and the table come from `ecmctl compare` (ecmctl.pipeline.compare), run on the demo's own runs.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

from omegaconf import OmegaConf

from ecmctl.core.config import compose
from ecmctl.core.errors import UserError
from ecmctl.core.io import atomic_write_json, check_writable
from ecmctl.core.runs import now
from ecmctl.core.schemas import DEMO_SCHEMA
from ecmctl.pipeline import compare as comparing
from ecmctl.pipeline import seeds as stats
from ecmctl.pipeline.calibrate import run_calibration
from ecmctl.pipeline.evaluate import evaluate
from ecmctl.pipeline.prepare import ensure_counts, ensure_dataset
from ecmctl.pipeline.report import group_table, write_report
from ecmctl.pipeline.train import train

DEMO_DEFAULTS = ["detector=faster_rcnn_tiny", "schedule=demo", "train.log_level=WARNING", "train.progress=true"]
BASELINE = "bce"  # every loss is compared with it (with the first of demo.losses when bce is not among them)
COMPARE_JSON = "compare.json"


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


def _unique(key: str, values: list) -> list:
    dup = sorted({str(v) for v in values if values.count(v) > 1})
    if dup:
        raise UserError(f"config key {key!r} = {values}: lists {', '.join(dup)} more than once")
    return values


def run_demo(overrides: list[str] = (), say=print) -> dict:
    """Run the whole pipeline for every loss of `demo.losses` over `demo.seeds`, compare them by seed with bce
    (`ecmctl compare`), and write the report; returns demo.json's content."""
    base = compose([*DEMO_DEFAULTS, *overrides])
    out = Path(base.demo.out)
    common = [*DEMO_DEFAULTS, *overrides, f"run_root={out}", f"demo.out={out}"]  # every job's runs go under out
    cfg = compose(common)
    losses = _unique("demo.losses", [str(x) for x in base.demo.losses])
    seeds = _unique("demo.seeds", list(base.demo.seeds))
    baseline = BASELINE if BASELINE in losses else losses[0]
    # before minutes of work, not after: every loss composes (an unknown one is one line) and the outputs can be written
    loss_type = {loss: compose([*common, f"loss={loss}"]).loss.type for loss in losses}
    check_writable(out, "demo.out")
    if out.is_dir():  # an earlier demo's compare.json is replaced, nothing else
        comparing.check_outputs(out / COMPARE_JSON)
    clock = StageClock(say)
    with clock.stage("synth"):
        ensure_dataset(cfg, say)
    with clock.stage("count"):
        counts_file, counts = ensure_counts(cfg, say)
    cal = None
    if "ecm" in loss_type.values():  # the ECM weights: r measured once, for every seed
        with clock.stage("calibrate"):
            cal = run_calibration(cfg, out / "calibration", say, counts=(counts_file, counts))
    runs: dict[str, list[str]] = {loss: [] for loss in losses}
    metrics: dict[str, list[dict]] = {loss: [] for loss in losses}
    for seed in seeds:
        for loss in losses:
            job = [*common, f"loss={loss}", f"seed={seed}", f"name=demo-{loss}-seed{seed}"]
            if loss_type[loss] == "ecm":
                job.append(f"weights_file={cal.weights_files[0]}")
            with clock.stage(f"train {loss}"):
                run = train(compose(job), job, say)
            with clock.stage(f"eval {loss}"):
                metrics[loss].append(evaluate(run.path, overrides=["eval.protocol=fixed"], say=say))
            runs[loss].append(str(run.path))
    with clock.stage("compare"):
        doc = comparing.compare_runs([r for loss in losses for r in runs[loss]], by="loss.name",
                                     baseline=f"loss.name={baseline}", out=out / COMPARE_JSON)
    with clock.stage("report"):
        rep = write_report([Path(runs[loss][0]) for loss in losses], out / "report", comparison=doc)
    freq = {c["name"]: c["frequency"] for c in counts["categories"]}
    summary = {"schema": DEMO_SCHEMA, "finished": now(), "r": cal.r if cal else None,
               "ci95": cal.ci95 if cal else None, "calibration_iters": cal.iters if cal else None,
               "seeds": list(doc["seeds"]), "losses": losses, "baseline": baseline, "runs": runs,
               "dataset": {"name": cfg.dataset.name, "classes": len(freq),
                           "groups": {g: sum(f == g for f in freq.values()) for g in ("r", "c", "f")}},
               "metrics": list(comparing.METRICS), "interval": stats.INTERVAL,
               "stats": comparing.by_name(doc), "mean": comparing.means_by_name(doc),
               "per_seed": metrics_by_seed(metrics),
               "groups": {loss: [group_table(d, freq) for d in ms] for loss, ms in metrics.items()},
               "compare": doc, "stage_seconds": clock.times,
               "report": str(rep["markdown"]), "counts_file": str(counts_file),
               "config": OmegaConf.to_container(cfg, resolve=True)}
    atomic_write_json(out / "demo.json", summary)
    return summary


def metrics_by_seed(metrics: dict[str, list[dict]], keys: tuple[str, ...] = comparing.METRICS) -> dict:
    """Each loss's metrics per seed, as metrics.json has them ({loss: [{section: {metric: value}}]})."""
    return {loss: [{iou: {k: d[iou].get(k) for k in keys} for iou in comparing.SECTIONS if iou in d}
                   for d in docs] for loss, docs in metrics.items()}
