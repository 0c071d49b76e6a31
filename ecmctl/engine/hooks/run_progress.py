"""progress.json in the run directory: how far a training run has got, for `ecmctl status` (which reads no
mmengine log and may run on another machine than the job)."""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from ecmctl.core.runs import PROGRESS_JSON
from ecmctl.engine.compat import scope_registry

WRITE_EVERY_S = 2.0  # at most this often (and at the end): a status poll needs no more


@scope_registry(HOOKS).register_module(name="RunProgressHook")
class RunProgressHook(Hook):
    """Rank 0 writes {iter, max_iters, loss, iter_time_s (mean of the last iterations), updated}; the time
    per iteration is measured here, not read from mmengine's log, whose interval may be 50 iterations."""

    priority = "VERY_LOW"

    def __init__(self, window: int = 20) -> None:
        self._times: deque[float] = deque(maxlen=window)
        self._last: float | None = None
        self._written = 0.0
        self._loss: float | None = None

    def before_train(self, runner) -> None:
        self._last = time.monotonic()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if runner.rank != 0:
            return
        t = time.monotonic()
        if self._last is not None:
            self._times.append(t - self._last)
        self._last = t
        loss = (outputs or {}).get("loss")
        if loss is not None:
            self._loss = float(loss.detach())
        if t - self._written >= WRITE_EVERY_S or runner.iter + 1 >= runner.max_iters:
            self._write(runner, runner.iter + 1)
            self._written = t

    def _write(self, runner, it: int) -> None:
        from ecmctl.core.io import atomic_write_json
        from ecmctl.core.runs import now

        mean = sum(self._times) / len(self._times) if self._times else None
        atomic_write_json(Path(runner.work_dir) / PROGRESS_JSON,
                          {"iter": it, "max_iters": runner.max_iters, "loss": self._loss, "iter_time_s": mean,
                           "updated": now()})
