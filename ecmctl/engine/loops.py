"""An epoch-based training loop that resumes mid-epoch exactly (config types `ecmctl.EpochBasedTrainLoop`
and `ecmctl.AspectRatioBatchSampler`).

mmengine's EpochBasedTrainLoop, resumed from a checkpoint saved inside an epoch, replays that epoch from
its first batch: the run trains more iterations than planned, on repeated data, and its lr steps shift.
Here the batches of the current epoch that the checkpoint already trained on are skipped in the batch
sampler (index lists only, no image is loaded). The sampler's order is a function of (seed, epoch), so
the resumed run sees exactly the batches it would have seen, and a preemption loses at most the
iterations since the last checkpoint (schedule.checkpoint_interval).
"""

from __future__ import annotations

from mmdet.datasets.samplers import AspectRatioBatchSampler as MMDetAspectRatioBatchSampler
from mmengine.registry import DATA_SAMPLERS, LOOPS
from mmengine.runner import EpochBasedTrainLoop as MMEngineEpochBasedTrainLoop

from ecmctl.engine.compat import scope_registry


@scope_registry(DATA_SAMPLERS).register_module(name="AspectRatioBatchSampler")
class AspectRatioBatchSampler(MMDetAspectRatioBatchSampler):
    """mmdet's aspect-ratio grouping; `skip` batches are dropped from the start of the next epoch."""

    skip = 0

    def __iter__(self):
        skip, self.skip = self.skip, 0
        for i, batch in enumerate(super().__iter__()):
            if i >= skip:
                yield batch


@scope_registry(LOOPS).register_module(name="EpochBasedTrainLoop")
class EpochBasedTrainLoop(MMEngineEpochBasedTrainLoop):
    """mmengine's loop, continuing a resumed epoch at the batch after the checkpoint's; `max_iters` optionally
    caps the run (a smoke test of a full epoch-based recipe: `train.max_iters=2`); the cap is then the loop's
    `max_iters`, so the checkpoint hook's save_last, the progress bar and the ETA end there too."""

    def __init__(self, runner, dataloader, max_epochs: int, max_iters: int | None = None, **kwargs) -> None:
        super().__init__(runner, dataloader, max_epochs, **kwargs)
        self.iter_cap = max_iters
        if max_iters is not None:
            self._max_iters = min(self._max_iters, int(max_iters))

    def run_iter(self, idx, data_batch) -> None:
        super().run_iter(idx, data_batch)
        if self.iter_cap is not None and self._iter >= self.iter_cap:
            self.stop_training = True

    def run_epoch(self) -> None:
        done = self._iter - self._epoch * len(self.dataloader)
        if done > 0:
            sampler = self.dataloader.batch_sampler
            if not isinstance(sampler, AspectRatioBatchSampler):
                raise RuntimeError(f"resuming inside an epoch needs ecmctl.AspectRatioBatchSampler, got "
                                   f"{type(sampler).__name__}")
            sampler.skip = done
        self.runner.call_hook("before_train_epoch")
        self.runner.model.train()
        for idx, data_batch in enumerate(self.dataloader, start=max(done, 0)):
            self.run_iter(idx, data_batch)
            if self.stop_training:
                break
        self.runner.call_hook("after_train_epoch")
        self._epoch += 1
