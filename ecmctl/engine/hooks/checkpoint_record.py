"""Rank 0 records each checkpoint's size and sha256 in the run's checkpoints.json right after mmengine saved it
(ecmctl.core.checkpoint_record), so that eval and resume can tell a damaged file from the one training wrote."""

from __future__ import annotations

from pathlib import Path

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from ecmctl.engine.compat import scope_registry


@scope_registry(HOOKS).register_module(name="CheckpointRecordHook")
class CheckpointRecordHook(Hook):
    """After CheckpointHook (priority VERY_LOW) in every iteration: the file it may just have written."""

    priority = "LOWEST"

    def __init__(self) -> None:
        self._recorded: dict[str, int] = {}  # file name -> mtime_ns when it was recorded

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        from ecmctl.core.checkpoint_record import record_checkpoint

        if runner.rank != 0:
            return
        ckpt = Path(runner.work_dir) / f"iter_{runner.iter + 1}.pth"
        if ckpt.is_file() and self._recorded.get(ckpt.name) != (mtime := ckpt.stat().st_mtime_ns):
            record_checkpoint(runner.work_dir, ckpt)
            self._recorded[ckpt.name] = mtime
