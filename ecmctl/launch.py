"""Launchers: one process, torchrun (elastic agent), or SLURM through submitit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig

from ecmctl.errors import UserError


def launch(run_dir: Path, cfg: DictConfig, resume: bool, say) -> None:
    name = cfg.launcher.name
    if name == "local":
        from ecmctl.train import run_worker

        if cfg.device == "cpu":
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        run_worker(run_dir, resume)
    elif name == "torchrun":
        torchrun(run_dir, cfg.launcher, resume, say)
    elif name == "slurm":
        submit_slurm(run_dir, cfg.launcher, resume, say)
    else:
        raise UserError(f"unknown launcher {name!r}; valid: local, torchrun, slurm")


def torchrun_command(run_dir: Path, lc: DictConfig, resume: bool) -> list[str]:
    """torchrun over `python -m ecmctl.worker RUN_DIR`; a dead rank ends the whole job (no restarts)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={lc.nproc_per_node}",
           f"--max_restarts={lc.max_restarts}", "--monitor_interval=1"]
    if int(lc.nnodes) == 1:
        cmd.append("--standalone")
    else:
        cmd += [f"--nnodes={lc.nnodes}", f"--node_rank={lc.node_rank}", "--rdzv_backend=c10d",
                f"--rdzv_endpoint={lc.rdzv_endpoint}", f"--rdzv_id={lc.rdzv_id}"]
    cmd += ["-m", "ecmctl.worker", str(run_dir)]
    return cmd + (["--resume"] if resume else [])


def torchrun(run_dir: Path, lc: DictConfig, resume: bool, say) -> None:
    cmd = torchrun_command(run_dir, lc, resume)
    say("launching: " + " ".join(cmd))
    rc = subprocess.run(cmd).returncode
    if rc != 0:
        raise RuntimeError(f"torchrun exited with status {rc}; see {run_dir} for the ranks' logs")


class SlurmTrainJob:
    """A submitit callable: one task per GPU; on preemption or timeout it requeues itself with resume."""

    def __init__(self, run_dir: str, resume: bool = False) -> None:
        self.run_dir, self.resume = str(run_dir), resume

    def __call__(self) -> str:
        from ecmctl.runs import RunDir, now
        from ecmctl.train import run_worker

        run = RunDir(self.run_dir)
        rank0 = int(os.environ.get("SLURM_PROCID", "0")) == 0
        if rank0:
            run.update(status="running", started=now(), slurm_job=os.environ.get("SLURM_JOB_ID"))
        ntasks = int(os.environ.get("SLURM_NTASKS", "1"))
        run_worker(self.run_dir, self.resume or run.last_checkpoint() is not None,
                   launcher="slurm" if ntasks > 1 else "none")
        if rank0:
            run.update(status="finished", finished=now(), checkpoint=str(run.last_checkpoint()))
        return self.run_dir

    def checkpoint(self):  # submitit calls this on preemption/timeout, then requeues
        import submitit

        return submitit.helpers.DelayedSubmission(SlurmTrainJob(self.run_dir, resume=True))


def slurm_parameters(lc: DictConfig) -> dict:
    """sbatch parameters (submitit's SlurmExecutor names) from the launcher config: one task per GPU."""
    params = dict(nodes=int(lc.nodes), ntasks_per_node=int(lc.gpus_per_node), gpus_per_node=int(lc.gpus_per_node),
                  cpus_per_task=int(lc.cpus_per_task), time=int(lc.timeout_min), job_name="ecmctl")
    if lc.get("mem_gb"):
        params["mem"] = f"{int(lc.mem_gb)}GB"
    if lc.get("partition"):
        params["partition"] = str(lc.partition)
    extra = dict(lc.get("additional_parameters") or {})
    if lc.get("account"):
        extra["account"] = str(lc.account)
    if extra:
        params["additional_parameters"] = extra
    return params


def slurm_executor(lc: DictConfig, folder: str | Path, cluster: str | None = None):
    """submitit's executor: SLURM where `sbatch` exists, else its local executor (same job code)."""
    import submitit

    ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    if ex.cluster == "slurm":
        ex.update_parameters(**{f"slurm_{k}": v for k, v in slurm_parameters(lc).items()})
    else:  # the local executor: one task, no sbatch parameters
        ex.update_parameters(timeout_min=int(lc.timeout_min), name="ecmctl")
    return ex


def submit_slurm(run_dir: Path, lc: DictConfig, resume: bool, say, cluster: str | None = None):
    ex = slurm_executor(lc, lc.folder, cluster)
    job = ex.submit(SlurmTrainJob(str(run_dir), resume))
    say(f"submitted {ex.cluster} job {job.job_id}; logs in {lc.folder}")
    return job
