"""mmengine Runners for ecmctl's run directories: the per-rank functions that launchers call.

`train_run` and `test_run` are `Task` targets (see ecmctl.launch): they read everything from the run
directory, so a torchrun or SLURM rank needs nothing but the path.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from ecmctl.core.runs import MM_CONFIG, RUN_JSON, RunDir


def quiet_console(logger) -> None:
    """mmengine's logger writes `log_level` to the console and to the log file alike; unless verbose, raise its
    console handler to WARNING and drop the stack's known deprecation notices there. The file keeps
    everything (the iteration lines, the environment and config dump)."""
    import logging

    from ecmctl.core.quiet import is_known_noise, verbose

    if verbose():
        return
    for handler in logger.handlers:
        if type(handler) is logging.StreamHandler:  # the console (FileHandler is a subclass: left alone)
            handler.setLevel(max(handler.level, logging.WARNING))
            if not any(getattr(f, "ecmctl_quiet", False) for f in handler.filters):
                def keep(record) -> bool:
                    return not is_known_noise(record.getMessage())

                keep.ecmctl_quiet = True
                handler.addFilter(keep)


def make_runner(mm):
    """An mmengine Runner with its own logger and visualizer, quiet on the console (see `quiet_console`).

    mmengine keys both singletons by experiment name (a timestamp to the second by default), so a
    second Runner in the same process (calibrate, then train, then eval) would log into the first's files.
    The console is made quiet as the logger is built, before the Runner logs its environment and config.
    """
    import uuid

    from mmengine.runner import Runner

    from ecmctl import losses  # noqa: F401  (registries, for in-memory configs too)
    from ecmctl.engine import atomic_backend, compat, hooks, loops, lvis_stream_metric, tracking  # noqa: F401

    class QuietRunner(Runner):
        def build_logger(self, *args, **kwargs):
            logger = super().build_logger(*args, **kwargs)
            quiet_console(logger)
            return logger

    compat.apply()
    mm.experiment_name = f"ecmctl-{uuid.uuid4().hex[:12]}"
    if mm.launcher != "none":
        _distributed_on_this_host(mm)
    return QuietRunner.from_cfg(mm)


class _LogWriter:
    """A stdout stand-in that sends printed lines to the logger (the log file; the console only with
    --verbose): lvis-api prints its summary table with print()."""

    def __init__(self, logger) -> None:
        self.logger, self.buf = logger, ""

    def write(self, text: str) -> int:
        self.buf += text
        *lines, self.buf = self.buf.split("\n")
        for line in lines:
            if line.strip():
                self.logger.info(line)
        return len(text)

    def flush(self) -> None:
        if self.buf.strip():
            self.logger.info(self.buf)
        self.buf = ""


@contextlib.contextmanager
def _running(runner):
    """Around runner.train()/test(): prints go to the log unless verbose, and progress bars are stopped
    however the loop ends (an exception, Ctrl-C)."""
    from ecmctl.core.quiet import verbose

    writer = None if verbose() else _LogWriter(runner.logger)
    try:
        with contextlib.redirect_stdout(writer) if writer else contextlib.nullcontext():
            yield
        if runner.distributed:
            leave_process_group(runner)
    finally:
        if writer:
            writer.flush()
        for hook in runner.hooks:
            stop = getattr(hook, "_stop", None)
            if callable(stop):
                stop()


def leave_process_group(runner) -> None:
    """Once every rank is done, tear the process group down while the interpreter is whole. Left to interpreter
    shutdown, a gloo worker thread that still needs the GIL is cancelled mid-C++ and aborts the rank
    (std::terminate, SIGABRT), and torchrun reports a finished run as failed: about one run in ten here. The DDP
    wrapper goes first: freed during shutdown it still aborted ranks with the group destroyed (2 of 60 runs of
    a minimal gloo+DDP script; 0 of 80 with the wrapper freed first). One task per process (torchrun worker,
    SLURM task), so nothing needs either afterwards."""
    import gc

    import torch.distributed as dist

    runner.model = None
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


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
    """An mmdet config from the run directory, its run-relative paths (the ECM weights files, the counts file of
    eql/fed, under inputs/) anchored at this directory, wherever the run was created or moved to."""
    from mmengine.config import Config

    run_dir = Path(run_dir).resolve()
    # unformatted: mmengine embeds `pretty_text` in every checkpoint, and yapf takes seconds per save on a busy CPU
    mm = Config.fromfile(str(run_dir / name), format_python_code=False)

    def anchor(node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("weights_file", "counts_file") and isinstance(value, str) and not Path(value).is_absolute():
                    node[key] = str(run_dir / value)
                else:
                    anchor(value)
        elif isinstance(node, list):
            for item in node:
                anchor(item)

    anchor(mm.model)
    return mm


def resume_from(run_dir: str | Path) -> str | None:
    """The checkpoint a resumed run continues from: this run's own newest one (None: from the start), never
    what mmengine's `last_checkpoint` marker names, an absolute path that in a copied or moved run
    directory is the original run's file."""
    last = RunDir(run_dir).last_checkpoint()
    return str(last.resolve()) if last is not None else None


def _runner_with(mm, launcher: str | None, hooks):
    """The Runner of `mm` under `launcher` (None: the config's), with extra hook objects registered."""
    if launcher is not None:
        mm.launcher = launcher
    runner = make_runner(mm)
    for hook in hooks:
        runner.register_hook(hook)
    return runner


def train_run(run_dir: str | Path, resume: bool = False, config: str = MM_CONFIG, launcher: str | None = None,
              hooks=()) -> None:
    """Train in this process from the mmdet config `config` in `run_dir` (one rank under torchrun/SLURM),
    with extra mmengine hook objects (the SLURM job's requeue hook)."""
    run_dir = Path(run_dir)
    mm = load_run_config(run_dir, config)
    mm.work_dir = str(run_dir.resolve())
    mm.resume = bool(resume)
    if resume:
        mm.load_from = resume_from(run_dir)
        mm.resume = mm.load_from is not None
    dtype = amp_dtype(mm)
    from ecmctl.engine.hooks import CheckpointRecordHook

    runner = _runner_with(mm, launcher, [*hooks, CheckpointRecordHook()])
    if dtype is not None and runner.rank == 0 and (run_dir / RUN_JSON).is_file():
        RunDir(run_dir).update(amp_dtype=dtype)  # what `auto` became on this machine
    # every rank of a run holds its shared rank lock (not a calibration's directory, which has no run.json)
    rank_lock = RunDir(run_dir).training_rank() if (run_dir / RUN_JSON).is_file() else contextlib.nullcontext()
    with rank_lock, _running(runner):
        runner.train()


def amp_dtype(mm) -> str | None:
    """train.amp=true: the autocast dtype, decided here on the rank's own device (not when the config was written,
    perhaps on a login node without a GPU): the config's `dtype` when train.amp_dtype named one, else bfloat16
    where the GPU supports it natively (torch.cuda.is_bf16_supported(): Ampere and newer), else float16.
    Written into the config's optim_wrapper; None without AMP. mmengine's AmpOptimWrapper needs CUDA."""
    wrapper = mm.get("optim_wrapper") or {}
    if wrapper.get("type") != "AmpOptimWrapper":
        return None
    import torch

    from ecmctl.core.errors import UserError

    if not torch.cuda.is_available():
        raise UserError("train.amp=true needs a GPU (mmengine's AmpOptimWrapper trains on CUDA only) and this "
                        "process sees none; set train.amp=false")
    if wrapper.get("dtype") is None:
        try:  # native bf16 only: emulated on a V100 it would be slower than float16
            bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.3 has no emulation to exclude
            bf16 = torch.cuda.is_bf16_supported()
        wrapper["dtype"] = "bfloat16" if bf16 else "float16"
    return str(wrapper["dtype"])


def test_run(run_dir: str | Path, config: str, out: str, launcher: str | None = None, hooks=()) -> None:
    """Test with the mmdet config `config` in `run_dir` (one rank); rank 0 writes the metrics dict to `out`."""
    import json

    from ecmctl.core.io import atomic_write_text

    run_dir = Path(run_dir)
    mm = load_run_config(run_dir, config)
    runner = _runner_with(mm, launcher, hooks)
    with _running(runner):
        metrics = runner.test()
    if runner.rank == 0:
        atomic_write_text(run_dir / out, json.dumps(metrics))
