"""`ecmctl calibrate`: measure the background ratio r (supplementary eq. 24) in a short run of the real
detector, per RoI stage, then write calibration.json and the weights file(s).

The run itself is an ordinary training task with `ecmctl.CalibrationHook` (engine/hooks/calibration.py),
launched like any other (in this process or under torchrun, where the ranks' counts are all-reduced);
the statistics are `ecm.background`'s.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ecmctl.core.environment import require_device
from ecmctl.core.errors import UserError, as_interrupt, first_line
from ecmctl.core.io import atomic_write_json, atomic_write_text, check_output, check_writable, make_dirs
from ecmctl.core.runs import new_run_dir, now
from ecmctl.core.schemas import CALIBRATION_SCHEMA, WEIGHTS_SCHEMA
from ecmctl.core.signals import deferred
from ecmctl.ecm.background import summarize
from ecmctl.ecm.weights import EVERY_WEIGHTS_FILE, weights_file_names, write_weights
from ecmctl.engine.builder import base_config, build_mm_config
from ecmctl.engine.placement import NATIVE, Placement, drop_semantic_branch, plan_placement, sampler_ratio
from ecmctl.launch import launch, train_task
from ecmctl.pipeline.prepare import Say, class_names, ensure_counts
from ecmctl.pipeline.recipes import accumulation_steps

CALIBRATION_JSON = "calibration.json"
TRACE_JSON = "bg_fg_trace.json"  # the calibration hook's per-iteration fg/bg counts (its out_file)
CALIBRATION_MM_CONFIG = "calibration_mmdet_config.py"


@dataclass
class CalibrationResult:
    """What calibration measured and wrote; `to_json()` is calibration.json (schema ecmctl/calibration@1)."""

    detector: str
    dataset: str
    counts_file: str
    kind: str
    iters: int = 0
    r: float | None = None
    ci95: list[float] | None = None
    per_stage: list[dict] = field(default_factory=list)
    trace: list[list[int]] = field(default_factory=list)
    weights_files: list[str] = field(default_factory=list)
    calibration_loss: str | None = None
    bg_ratio_source: str = "measured"  # or "fixed": calibrate.bg_ratio given, nothing measured
    config: dict = field(default_factory=dict)
    out_dir: str = ""

    def to_json(self) -> dict:
        return {"schema": CALIBRATION_SCHEMA, **asdict(self)}


STATUS_JSON = "calibration_status.json"  # running, then finished / failed (with the reason) / interrupted


def check_out_dir(out: Path) -> None:
    """Before any work: the output directory is a directory (or can be made), writable, and holds no file
    calibrate would replace other than an earlier calibration's."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory; choose another -o directory")
    if out.is_dir():
        check_output(out / CALIBRATION_JSON, CALIBRATION_SCHEMA)
        for name in EVERY_WEIGHTS_FILE:
            check_output(out / name, WEIGHTS_SCHEMA)
    check_writable(out, "-o")


def run_calibration(cfg: DictConfig, out_dir: str | Path | None, say: Say = print,
                    counts: tuple[Path, dict] | None = None) -> CalibrationResult:
    """Measure r per background stage (RoI stages, no-object heads), then write the weights files (only
    foreground-only weights for a detector without a background class).

    The calibration run trains with the detector's own classification losses when the chosen loss is ECM (its
    weights are what is being measured; the config's own loss is the one known to work with every head, PISA's
    and OHEM's loss-aware samplers included); the fg:bg mix is set by the sampler, the proposals or the
    matcher. launcher=slurm
    calibrates in this process (a short run, before the job is submitted). `counts` is `ensure_counts`'
    (path, document) when the caller already has it (no second hash). `out_dir` None: a new
    <run_root>/calibrate/<detector>-<dataset>/<timestamp>/, made once every input checked out. The
    directory's calibration_status.json says how the calibration ended.
    """
    require_device(cfg.device)
    model = base_config(cfg).model
    drop_semantic_branch(model)
    placement = plan_placement(model)
    if out_dir is not None:
        check_out_dir(Path(out_dir))
    else:
        check_writable(cfg.run_root, "run_root")
    counts_file, counts_doc = counts or ensure_counts(cfg, say)
    if out_dir is None:
        out = new_run_dir(Path(cfg.run_root) / "calibrate", f"{cfg.detector.name}-{cfg.dataset.name}")
    else:
        out = make_dirs(out_dir, "calibration output directory")
    status = out / STATUS_JSON
    try:
        atomic_write_json(status, {"status": "running", "started": now()})
        fixed = {i: r for i, s in enumerate(placement.bg_sites) if (r := sampler_ratio(model, s)) is not None}
        result = _calibrate(cfg, out, placement, counts_file, counts_doc, say, fixed)
    except BaseException as e:
        with deferred():
            if (stop := as_interrupt(e)) is None:
                atomic_write_json(status, {"status": "failed", "stopped": now(), "reason": first_line(e)})
                raise
            atomic_write_json(status, {"status": "interrupted", "stopped": now()})
        raise stop from stop.__cause__  # the library error that hid it, if any
    atomic_write_json(status, {"status": "finished", "finished": now()})
    return result


def _calibrate(cfg: DictConfig, out: Path, placement: Placement, counts_file: Path, counts_doc: dict,
               say: Say, fixed: dict[int, float] | None = None) -> CalibrationResult:
    """Weights for every background stage (r measured, or calibrate.bg_ratio, or the ratio the head's own
    hard-negative sampler fixes: `fixed`, by stage), then the foreground-only weights."""
    c = cfg.calibrate
    result = CalibrationResult(detector=cfg.detector.name, dataset=cfg.dataset.name, counts_file=str(counts_file),
                               kind=placement.kind, config=OmegaConf.to_container(cfg, resolve=True),
                               out_dir=str(out))
    bg = placement.bg_sites
    names = weights_file_names(len(bg), placement.needs_fg)
    if not bg:
        say(f"{cfg.detector.name} has no background class in its classifiers: nothing to calibrate "
            "(foreground-only weights, supplementary section 6)")
    elif c.bg_ratio is not None:
        r = float(c.bg_ratio)
        say(f"calibrate.bg_ratio={r:g}: the fixed background ratio for every background stage (nothing measured)")
        for name in names[: len(bg)]:
            write_weights(counts_file, out / name, bg_ratio=r)
            result.weights_files.append(str(out / name))
        result.r, result.bg_ratio_source = r, "fixed"
        result.per_stage = [{"stage": i, "site": s.where, "r": r, "ci95": None, "fg": None, "bg": None, "iters": 0,
                             "trace": []} for i, s in enumerate(bg)]
    else:
        fixed = fixed or {}
        measured = [s for i, s in enumerate(bg) if i not in fixed]
        loss = cfg.loss if cfg.loss.type != "ecm" else OmegaConf.create({"name": NATIVE, "type": NATIVE})
        traces = iter(_measure(cfg, out, class_names(counts_doc), loss, measured, say) if measured else [])
        stages = []
        for i, site in enumerate(bg):
            if i in fixed:
                say(f"{site.head_type} ({site.where}) trains {fixed[i]:g} mined negatives per positive: r = "
                    f"{fixed[i]:g} from its sampler, not counted at its loss (which sees every anchor)")
                stages.append({"stage": i, "site": site.where, "r": fixed[i], "ci95": None, "fg": None, "bg": None,
                               "iters": 0, "trace": [], "source": "sampler"})
            else:
                st = summarize([next(traces)], int(c.bootstrap))[0]
                stages.append({**st, "stage": i, "site": site.where, "source": "measured"})
        for st, name in zip(stages, names):
            if not (math.isfinite(st["r"]) and st["r"] > 0):
                raise UserError(f"stage {st['stage']} ({st['site']}): no foreground labels in {st['iters']} "
                                "iterations; raise calibrate.max_iters or check the dataset's annotations")
            write_weights(counts_file, out / name, bg_ratio=st["r"])
            result.weights_files.append(str(out / name))
        first = next((st for st in stages if st["source"] == "measured"), stages[0])
        result.iters, result.r, result.ci95 = first["iters"], stages[0]["r"], stages[0]["ci95"]
        result.per_stage, result.trace, result.calibration_loss = stages, first["trace"], loss.name
        if not measured:
            result.bg_ratio_source = "sampler"
    if placement.needs_fg:
        wf = out / names[-1]
        write_weights(counts_file, wf)
        result.weights_files.append(str(wf))
    atomic_write_json(out / CALIBRATION_JSON, result.to_json())
    return result


def _measure(cfg: DictConfig, out: Path, classes: list[str], loss: DictConfig, sites: list,
             say: Say) -> list[np.ndarray]:
    """Train for at most calibrate.max_iters iterations with the calibration hook on the background `sites`;
    their per-stage traces."""
    c = cfg.calibrate
    cal = cfg.copy()
    # a short run on this node only: under torchrun its processes (a multi-node job's other nodes join later)
    launcher = (OmegaConf.merge(cfg.launcher, {"nnodes": 1, "node_rank": 0}) if cfg.launcher.name == "torchrun"
                else OmegaConf.create({"name": "local"}))
    # under recipe.batch_policy=accumulate, max_iters/min_iters are updates of the recipe's batch (the hook counts
    # micro-steps, so min_iters is scaled here; build_mm_config scales max_iters)
    steps = accumulation_steps(cfg, launcher)
    OmegaConf.update(cal, "train.max_iters", int(c.max_iters))
    OmegaConf.update(cal, "train.checkpoint_interval", int(c.max_iters) + 1)
    mm = build_mm_config(cal, classes, out.resolve(), loss=loss, accumulation=steps)
    if mm.launcher == "slurm":
        mm.launcher = "none"
    mm.default_hooks.checkpoint = None
    mm.default_hooks.pop("visualization")
    mm.visualizer.vis_backends = [dict(type="LocalVisBackend")]
    trace_file = out / TRACE_JSON
    trace_file.unlink(missing_ok=True)
    mm.custom_hooks = [dict(type="ecmctl.CalibrationHook", min_iters=steps * int(c.min_iters), rel_tol=float(c.rel_tol),
                            bootstrap=int(c.bootstrap), out_file=str(trace_file.resolve()),
                            sites=[[*s.path, s.loss_key] for s in sites])]
    atomic_write_text(out / CALIBRATION_MM_CONFIG, mm.pretty_text)
    launch(train_task(out, config=CALIBRATION_MM_CONFIG), launcher, say, device=cfg.device)
    traces = json.loads(trace_file.read_text())["traces"]
    return [np.asarray(t, dtype=np.float64).reshape(-1, 2) for t in traces]
