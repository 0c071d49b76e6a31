"""A rich progress bar for mmengine's train and test loops (rank 0, on stderr): what a quiet run shows while
mmengine's log lines go to the log file only (ecmctl.core.quiet). With --verbose the log lines show instead."""

from __future__ import annotations

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from ecmctl.engine.compat import scope_registry


@scope_registry(HOOKS).register_module(name="ProgressHook")
class ProgressHook(Hook):
    """Iterations done, the running loss and the time left, instead of mmengine's log lines."""

    priority = "VERY_LOW"

    def __init__(self) -> None:
        self._bar = None
        self._task = None

    def _start(self, runner, label: str, total: int) -> None:
        from ecmctl.core.quiet import verbose

        if runner.rank != 0 or verbose():
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
                             TimeRemainingColumn(), console=Console(stderr=True))
        self._bar.start()
        self._task = self._bar.add_task(label, total=total, completed=runner.iter if label == "train" else 0,
                                        loss="")

    def _stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def before_train(self, runner) -> None:
        self._start(runner, "train", runner.max_iters)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self._bar is not None:
            loss = (outputs or {}).get("loss")
            self._bar.update(self._task, completed=runner.iter + 1,
                             loss=f"loss {float(loss.detach()):.3f}" if loss is not None else "")

    def after_train(self, runner) -> None:
        self._stop()

    def before_test(self, runner) -> None:
        self._start(runner, "test", len(runner.test_dataloader))

    def after_test_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1)

    def after_test(self, runner) -> None:
        self._stop()
