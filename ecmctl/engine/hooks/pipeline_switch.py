"""RTMDet's PipelineSwitchHook for a train set under RFS (`ecmctl.PipelineSwitchHook`, schedule=native).

mmdet's hook sets `train_dataloader.dataset.pipeline`. Under repeat-factor sampling that dataset is a
ClassBalancedDataset, which has no pipeline of its own: the switch would be silently lost. This one switches
the pipeline of the first dataset down the wrappers that has one, which is the same dataset when there is no
wrapper.
"""

from __future__ import annotations

from mmcv.transforms import Compose
from mmdet.engine.hooks import PipelineSwitchHook as MMDetPipelineSwitchHook
from mmengine.registry import HOOKS

from ecmctl.engine.compat import scope_registry


@scope_registry(HOOKS).register_module(name="PipelineSwitchHook")
class PipelineSwitchHook(MMDetPipelineSwitchHook):
    """mmdet's PipelineSwitchHook, reaching through dataset wrappers that have no pipeline."""

    def before_train_epoch(self, runner) -> None:
        loader = runner.train_dataloader
        if runner.epoch >= self.switch_epoch and not self._has_switched:
            target = loader.dataset
            while not hasattr(target, "pipeline") and hasattr(target, "dataset"):
                target = target.dataset
            runner.logger.info("Switch pipeline now!")
            target.pipeline = Compose(self.switch_pipeline)
            if getattr(loader, "persistent_workers", False) is True:  # as mmdet's: restart the workers
                loader._DataLoader__initialized = False
                loader._iterator = None
                self._restart_dataloader = True
            self._has_switched = True
        elif self._restart_dataloader:
            loader._DataLoader__initialized = True
