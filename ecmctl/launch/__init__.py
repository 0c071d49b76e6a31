"""Launchers: run a `Task` in this process, on every rank of a torchrun job, or as a SLURM job.

task (what to run) · torchrun (elastic agent) · slurm (submitit, requeue) · worker (one rank's entry point) ·
parent_death (the agent and its ranks die with their parent).
"""

from __future__ import annotations

import os

from omegaconf import DictConfig

from ecmctl.core.errors import UserError
from ecmctl.launch.task import Task, eval_task, train_task

__all__ = ["Task", "launch", "eval_task", "train_task", "world_size"]


def launch(task: Task, launcher: DictConfig, say, device: str = "auto", after: Task | None = None):
    """Run `task` with the configured launcher: `local` in this process, `torchrun` on every rank of
    a torchrun job (waits for it), `slurm` as a submitted job (returns the submitit job once it is queued).
    `after` (slurm): what the job runs on rank 0 once the task finished; local and torchrun callers run it
    themselves, after recording the run."""
    name = launcher.name
    if name == "local":
        if device == "cpu":
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        task.run()
    elif name == "torchrun":
        from ecmctl.launch.torchrun import run_under_torchrun

        run_under_torchrun(task, launcher, say)
    elif name == "slurm":
        from ecmctl.launch.slurm import submit_slurm

        return submit_slurm(task, launcher, say, after)
    else:
        raise UserError(f"unknown launcher {name!r}; valid: local, torchrun, slurm")


def world_size(launcher: DictConfig) -> int:
    """How many processes train together under this launcher (known before launching): the divisor of
    every per-process batch, so the effective batch and the learning rate can be checked up front."""
    if launcher.name == "torchrun":
        return int(launcher.nnodes) * int(launcher.nproc_per_node)
    if launcher.name == "slurm":
        from ecmctl.launch.slurm import slurm_tasks_per_node

        return int(launcher.nodes) * slurm_tasks_per_node(launcher)
    return 1
