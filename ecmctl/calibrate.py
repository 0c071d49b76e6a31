"""Measure the background ratio r (supplementary eq. 24) in a short run of the real detector.

An mmengine hook counts, per iteration and per RoI stage, the foreground and background labels
that reach the classification loss (label_weights > 0), through forward pre-hooks on the loss
modules: the model computes exactly what it would without it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from ecmctl.compat import scope_registry

BG_FG = "bg_fg"


def ratio(trace: np.ndarray) -> float:
    """r = sum(background) / sum(foreground) over the observed iterations."""
    fg, bg = trace[:, 0].sum(), trace[:, 1].sum()
    return float(bg / fg) if fg > 0 else math.inf


def bootstrap_ci(trace: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of r, resampling iterations with replacement."""
    if len(trace) < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(trace), size=(n_boot, len(trace)))
    fg, bg = trace[idx, 0].sum(1), trace[idx, 1].sum(1)
    valid = fg > 0
    if not valid.any():
        return (math.nan, math.nan)
    rs = bg[valid] / fg[valid]
    lo, hi = np.percentile(rs, [2.5, 97.5])
    return float(lo), float(hi)


def converged(trace: np.ndarray, min_iters: int, rel_tol: float, n_boot: int) -> bool:
    if len(trace) < max(min_iters, 2):
        return False
    r = ratio(trace)
    lo, hi = bootstrap_ci(trace, n_boot)
    return math.isfinite(r) and r > 0 and (hi - lo) / 2 <= rel_tol * r


def roi_bbox_heads(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The built RoI box heads in stage order (one per Cascade stage); [] for dense heads."""
    model = getattr(model, "module", model)
    roi = getattr(model, "roi_head", None)
    if roi is None:
        return []
    return list(roi.bbox_head) if isinstance(roi.bbox_head, torch.nn.ModuleList) else [roi.bbox_head]


class LabelCounter:
    """Counts fg/bg labels passed to one classification loss since the last `pop()`."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fg = 0
        self.bg = 0

    def __call__(self, module, args, kwargs):
        labels = args[1] if len(args) > 1 else kwargs["label"]
        weights = args[2] if len(args) > 2 else kwargs.get("weight")
        labels = labels.detach()
        keep = weights.detach() > 0 if weights is not None else torch.ones_like(labels, dtype=torch.bool)
        if keep.dim() > 1:
            keep = keep.any(dim=-1)
        is_bg = labels == self.num_classes
        self.bg += int((is_bg & keep).sum())
        self.fg += int((~is_bg & keep).sum())
        return None

    def pop(self) -> tuple[int, int]:
        out = (self.fg, self.bg)
        self.fg = self.bg = 0
        return out


@scope_registry(HOOKS).register_module(name="CalibrationHook")
class CalibrationHook(Hook):
    """Records [fg, bg] per iteration for each RoI stage; stops training once r has converged."""

    priority = "VERY_LOW"

    def __init__(self, min_iters: int = 20, rel_tol: float = 0.02, bootstrap: int = 1000,
                 progress: bool = True) -> None:
        self.min_iters, self.rel_tol, self.bootstrap, self.progress = min_iters, rel_tol, bootstrap, progress
        self.counters: list[LabelCounter] = []
        self.handles: list = []
        self.traces: list[list[tuple[int, int]]] = []
        self._bar = None

    def before_train(self, runner) -> None:
        heads = roi_bbox_heads(runner.model)
        self.counters = [LabelCounter(h.num_classes) for h in heads]
        self.handles = [h.loss_cls.register_forward_pre_hook(c, with_kwargs=True)
                        for h, c in zip(heads, self.counters)]
        self.traces = [[] for _ in heads]
        if self.progress and runner.rank == 0:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("calibrating r"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(), transient=False)
            self._bar.start()
            self._task = self._bar.add_task("calibrate", total=runner.max_iters, status="")

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        from mmengine.dist import all_reduce

        counts = torch.tensor([c.pop() for c in self.counters], dtype=torch.float64).reshape(-1, 2)
        all_reduce(counts)  # global batch under torchrun; a no-op in one process
        for trace, (fg, bg) in zip(self.traces, counts.tolist()):
            trace.append((int(fg), int(bg)))
        arrays = self.arrays()
        if self._bar is not None and arrays:
            r = ratio(arrays[0])
            lo, hi = bootstrap_ci(arrays[0], 200)
            self._bar.update(self._task, advance=1, status=f"r={r:.3f} [{lo:.3f}, {hi:.3f}]")
        if arrays and all(converged(a, self.min_iters, self.rel_tol, self.bootstrap) for a in arrays):
            runner.train_loop.stop_training = True

    def after_train(self, runner) -> None:
        for h in self.handles:
            h.remove()
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def arrays(self) -> list[np.ndarray]:
        return [np.asarray(t, dtype=np.float64).reshape(-1, 2) for t in self.traces]


def summarize(traces: Sequence[np.ndarray], n_boot: int = 1000) -> list[dict]:
    """Per-stage r, 95% CI and totals."""
    out = []
    for i, t in enumerate(traces):
        lo, hi = bootstrap_ci(t, n_boot)
        out.append({"stage": i, "r": ratio(t), "ci95": [lo, hi], "fg": int(t[:, 0].sum()),
                    "bg": int(t[:, 1].sum()), "iters": len(t),
                    "trace": t.astype(int).tolist()})
    return out


def run_calibration(cfg, out_dir, say=print, counts=None) -> dict:
    """`ecmctl calibrate`: measure r per RoI stage, then write calibration.json and the weights file(s).

    The calibration run trains with the sigmoid baseline when the chosen loss is ECM (its weights
    are what is being measured); the fg:bg mix is set by the RoI sampler and the proposals.
    With launcher=torchrun it re-runs itself under torchrun and the ranks' counts are all-reduced;
    with launcher=slurm it runs in this process (a short run, before the job is submitted).
    `counts` is `ensure_counts`' (path, document) when the caller already has it (no second hash).
    """
    import os
    from pathlib import Path

    from omegaconf import OmegaConf

    from ecmctl.detector import base_config, build_mm_config, make_runner
    from ecmctl.errors import UserError
    from ecmctl.io import atomic_write_json
    from ecmctl.loss_config import detector_kind
    from ecmctl.schemas import CALIBRATION_SCHEMA
    from ecmctl.stages import class_names, ensure_counts
    from ecmctl.weights import write_weights

    c = cfg.calibrate
    if int(c.max_iters) <= 0:
        raise UserError(f"calibrate.max_iters must be > 0, got {c.max_iters}")
    kind = detector_kind(base_config(cfg).model)
    counts_file, counts = counts or ensure_counts(cfg, say)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {"schema": CALIBRATION_SCHEMA, "detector": cfg.detector.name, "dataset": cfg.dataset.name,
              "counts_file": str(counts_file), "kind": kind}
    if kind == "one_stage":
        say(f"{cfg.detector.name} is a one-stage detector: no background class to calibrate "
            "(foreground-only weights, supplementary section 6)")
        wf = out / "weights.json"
        write_weights(counts_file, wf)
        result.update(iters=0, r=None, ci95=None, per_stage=[], trace=[], weights_files=[str(wf)])
    elif cfg.launcher.name == "torchrun" and "LOCAL_RANK" not in os.environ:
        return _under_torchrun(cfg, out, say)
    else:
        cal = cfg.copy()
        OmegaConf.update(cal, "train.max_iters", int(c.max_iters))
        OmegaConf.update(cal, "train.checkpoint_interval", int(c.max_iters) + 1)
        loss = cal.loss if cal.loss.type != "ecm" else OmegaConf.create({"name": "bce", "type": "bce"})
        mm = build_mm_config(cal, class_names(counts), out / "mmengine", loss=loss)
        if mm.launcher == "slurm":
            mm.launcher = "none"
        mm.default_hooks.checkpoint = None
        mm.default_hooks.pop("visualization")
        mm.visualizer.vis_backends = [dict(type="LocalVisBackend")]
        mm.custom_hooks = [dict(type="ecmctl.CalibrationHook", min_iters=int(c.min_iters),
                                rel_tol=float(c.rel_tol), bootstrap=int(c.bootstrap))]
        mm.log_level = "WARNING"  # the calibration bar shows progress
        runner = make_runner(mm)
        runner.train()
        hook = next(h for h in runner.hooks if isinstance(h, CalibrationHook))
        traces = hook.arrays()
        stages = summarize(traces, int(c.bootstrap))
        if runner.rank != 0:
            return result
        files = []
        for st in stages:
            if not (math.isfinite(st["r"]) and st["r"] > 0):
                raise UserError(f"stage {st['stage']}: no foreground RoIs in {st['iters']} iterations; "
                                "raise calibrate.max_iters or check the dataset's annotations")
            name = "weights.json" if len(stages) == 1 else f"weights_stage{st['stage']}.json"
            write_weights(counts_file, out / name, bg_ratio=st["r"])
            files.append(str(out / name))
        result.update(iters=len(traces[0]), r=stages[0]["r"], ci95=stages[0]["ci95"], per_stage=stages,
                      trace=stages[0]["trace"],
                      weights_files=files, calibration_loss=loss.name)
    result["config"] = OmegaConf.to_container(cfg, resolve=True)
    atomic_write_json(out / "calibration.json", result)
    return result


CALIBRATE_CONFIG = "calibrate_config.yaml"


def _under_torchrun(cfg, out, say) -> dict:
    """Run the calibration on every rank of a torchrun job; rank 0 writes calibration.json."""
    import subprocess

    from omegaconf import OmegaConf

    from ecmctl.io import atomic_write_text, load_schema
    from ecmctl.launch import torchrun_command
    from ecmctl.schemas import CALIBRATION_SCHEMA

    atomic_write_text(out / CALIBRATE_CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
    cmd = torchrun_command(out, cfg.launcher, resume=False) + ["--calibrate"]
    say("calibrating under torchrun: " + " ".join(cmd))
    if subprocess.run(cmd).returncode != 0:
        raise RuntimeError("calibration under torchrun failed; see the ranks' output above")
    return load_schema(out / "calibration.json", CALIBRATION_SCHEMA)
