"""mmengine Runners for ecmctl's run directories: the per-rank functions that launchers call.

`train_run` and `test_run` are `Task` targets (see ecmctl.launch): they read everything from the run
directory, so a torchrun or SLURM rank needs nothing but the path.
"""

from __future__ import annotations

from pathlib import Path

from ecmctl.core.runs import MM_CONFIG


def make_runner(mm):
    """An mmengine Runner with its own logger and visualizer.

    mmengine keys both singletons by experiment name (a timestamp to the second by default), so a
    second Runner in the same process (calibrate, then train, then eval) would log into the first's files.
    """
    import uuid

    from mmengine.runner import Runner

    from ecmctl import losses  # noqa: F401  (registries, for in-memory configs too)
    from ecmctl.engine import compat, hooks, loops, lvis_stream_metric  # noqa: F401

    compat.apply()
    mm.experiment_name = f"ecmctl-{uuid.uuid4().hex[:12]}"
    if mm.launcher != "none":
        _distributed_on_this_host(mm)
    return Runner.from_cfg(mm)


def _distributed_on_this_host(mm) -> None:
    """NCCL on GPUs; on a CPU host gloo, a DDP without device_ids, and our own process-group init
    (mmengine's pytorch and slurm launchers call torch.cuda.set_device, which fails without CUDA)."""
    import os
    import subprocess

    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        return
    mm.env_cfg.dist_cfg = dict(backend="gloo")
    mm.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False)
    if mm.launcher == "slurm" and not dist.is_initialized():  # the environment mmengine's slurm launcher sets
        env = os.environ
        if "MASTER_ADDR" not in env:
            hosts = subprocess.run(["scontrol", "show", "hostnames", env["SLURM_JOB_NODELIST"]],
                                   capture_output=True, text=True, check=True).stdout.split()
            env["MASTER_ADDR"] = hosts[0]
        env.setdefault("MASTER_PORT", "29500")
        env.update(WORLD_SIZE=env["SLURM_NTASKS"], RANK=env["SLURM_PROCID"], LOCAL_RANK=env["SLURM_LOCALID"])
    if mm.launcher in ("pytorch", "slurm") and not dist.is_initialized():
        dist.init_process_group(backend="gloo")


def load_run_config(run_dir: str | Path, name: str):
    """An mmdet config from the run directory, its run-relative paths (the ECM weights files under inputs/)
    anchored at this directory, wherever the run was created or moved to."""
    from mmengine.config import Config

    run_dir = Path(run_dir).resolve()
    mm = Config.fromfile(str(run_dir / name))

    def anchor(node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "weights_file" and isinstance(value, str) and not Path(value).is_absolute():
                    node[key] = str(run_dir / value)
                else:
                    anchor(value)
        elif isinstance(node, list):
            for item in node:
                anchor(item)

    anchor(mm.model)
    return mm


def train_run(run_dir: str | Path, resume: bool = False, config: str = MM_CONFIG, launcher: str | None = None,
              hooks=()) -> None:
    """Train in this process from the mmdet config `config` in `run_dir` (one rank under torchrun/SLURM),
    with extra mmengine hook objects (the SLURM job's requeue hook)."""
    run_dir = Path(run_dir)
    mm = load_run_config(run_dir, config)
    mm.work_dir = str(run_dir.resolve())
    mm.resume = bool(resume)
    if launcher is not None:
        mm.launcher = launcher
    runner = make_runner(mm)
    for hook in hooks:
        runner.register_hook(hook)
    runner.train()


def test_run(run_dir: str | Path, config: str, out: str, launcher: str | None = None, hooks=()) -> None:
    """Test with the mmdet config `config` in `run_dir` (one rank); rank 0 writes the metrics dict to `out`."""
    import json

    from ecmctl.core.io import atomic_write_text

    run_dir = Path(run_dir)
    mm = load_run_config(run_dir, config)
    if launcher is not None:
        mm.launcher = launcher
    runner = make_runner(mm)
    for hook in hooks:
        runner.register_hook(hook)
    metrics = runner.test()
    if runner.rank == 0:
        atomic_write_text(run_dir / out, json.dumps(metrics))
