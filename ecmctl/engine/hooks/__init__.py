"""mmengine hooks registered under the `ecmctl` scope (importing this package registers them).

calibration (fg/bg label counts for r) · checkpoint_record (each checkpoint's sha256) ·
progress (a rich progress bar for quiet runs) · pipeline_switch (RTMDet's pipeline switch under RFS,
schedule=native) · run_progress (progress.json, for `ecmctl status`).
"""

from ecmctl.engine.hooks.calibration import CalibrationHook
from ecmctl.engine.hooks.checkpoint_record import CheckpointRecordHook
from ecmctl.engine.hooks.pipeline_switch import PipelineSwitchHook
from ecmctl.engine.hooks.progress import ProgressHook
from ecmctl.engine.hooks.run_progress import RunProgressHook

__all__ = ["CalibrationHook", "CheckpointRecordHook", "PipelineSwitchHook", "ProgressHook", "RunProgressHook"]
