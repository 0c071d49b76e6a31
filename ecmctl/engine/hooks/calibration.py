"""The calibration hook: counts, per iteration and per background stage (a RoI stage, a no-object query head),
the foreground and background labels that reach the classification loss (label_weights > 0), through forward
pre-hooks on the loss modules, so the model computes exactly what it would without it. A head with deep
supervision (DETR's decoder layers) calls its loss once per layer: the totals are multiplied, the ratio is not.
Rank 0 writes the traces; `ecm.background` reads them."""

from __future__ import annotations

import json
import math

import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from ecmctl.core.io import atomic_write_text
from ecmctl.ecm.background import StoppingRule
from ecmctl.engine.compat import scope_registry
from ecmctl.engine.placement import node_at


def built_sites(model: torch.nn.Module, sites: list[list]) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
    """(head, loss module) of each site, a config path ending with the loss key (placement.Site)."""
    model = getattr(model, "module", model)
    out = []
    for *path, key in sites:
        head = node_at(model, path)
        out.append((head, getattr(head, key)))
    return out


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
    """Records [fg, bg] per iteration for each background stage (`sites`); stops training once r has converged and,
    with `out_file`, rank 0 writes {"traces": [[[fg, bg], ...] per stage]} there after training."""

    priority = "VERY_LOW"

    def __init__(self, min_iters: int = 20, rel_tol: float = 0.02, bootstrap: int = 1000,
                 progress: bool = True, out_file: str | None = None, sites: list[list] | None = None) -> None:
        self.min_iters, self.rel_tol, self.bootstrap, self.progress = min_iters, rel_tol, bootstrap, progress
        self.out_file = out_file
        self.sites = [list(s) for s in sites or []]
        self.counters: list[LabelCounter] = []
        self.handles: list = []
        self.rule = StoppingRule(0, min_iters, rel_tol, bootstrap)
        self._bar = None

    def before_train(self, runner) -> None:
        heads = built_sites(runner.model, self.sites)
        self.counters = [LabelCounter(h.num_classes) for h, _ in heads]
        self.rule = StoppingRule(len(heads), self.min_iters, self.rel_tol, self.bootstrap)
        self.handles = [loss.register_forward_pre_hook(c, with_kwargs=True)
                        for (_, loss), c in zip(heads, self.counters)]
        if self.progress and runner.rank == 0:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("calibrating r"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(), transient=False,
                                 console=Console(stderr=True))
            self._bar.start()
            self._task = self._bar.add_task("calibrate", total=runner.max_iters, status="")

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        from mmengine.dist import all_reduce

        counts = torch.tensor([c.pop() for c in self.counters], dtype=torch.float64).reshape(-1, 2)
        all_reduce(counts)  # global batch under torchrun; a no-op in one process
        if not self.counters:
            return
        if self.rule.add(counts.tolist()):  # its cost per iteration is flat in the run's length (ecm.background)
            runner.train_loop.stop_training = True
        if self._bar is not None:
            lo, hi = self.rule.interval
            ci = f" [{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) else ""
            self._bar.update(self._task, advance=1, status=f"r={self.rule.r():.3f}{ci}")

    def _stop(self) -> None:
        """Remove the counting hooks and stop the bar; also called by engine.runner when training fails."""
        for h in self.handles:
            h.remove()
        self.handles = []
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def after_train(self, runner) -> None:
        self._stop()
        if self.out_file and runner.rank == 0:
            atomic_write_text(self.out_file, json.dumps({"traces": [list(map(list, t)) for t in self.rule.traces]}))
