"""SLURM through submitit: one task per GPU, requeued with resume on preemption or timeout."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from omegaconf import DictConfig

from ecmctl.core.errors import as_interrupt, first_line
from ecmctl.core.runs import LOCK_WAIT_S, RunDir, now, slurm_job_id
from ecmctl.launch.task import Task


class SlurmJob:
    """A submitit callable running a `Task` on every SLURM task (one per GPU); it marks the run directory
    running, then finished, and on preemption or timeout requeues itself with the task resumed; then runs
    `after` on rank 0."""

    def __init__(self, task: Task, after: Task | None = None) -> None:
        self.task = task
        self.after = after  # run on rank 0 once the run finished (train.eval_after: its evaluation)

    def __call__(self) -> str:
        from ecmctl.core.quiet import install_warning_filters

        install_warning_filters()
        run = RunDir(self.task.run_dir)
        rank0 = int(os.environ.get("SLURM_PROCID", "0")) == 0
        if rank0:  # the run's one writer while the job trains: other nodes see its heartbeat (core/runs.py)
            run.lock(wait_s=LOCK_WAIT_S)  # refused: another trainer has it; run.json is left as that one keeps it
        try:
            return self._train(run, rank0)
        finally:
            run.unlock()

    def _train(self, run: RunDir, rank0: bool) -> str:
        if rank0:
            run.update(status="running", started=now(), slurm_job=slurm_job_id(),
                       slurm_restarts=int(os.environ.get("SLURM_RESTART_COUNT", "0")),
                       slurm_node=os.environ.get("SLURMD_NODENAME"))
        ntasks = int(os.environ.get("SLURM_NTASKS", "1"))
        if ntasks > 1 and "MASTER_PORT" not in os.environ and os.environ.get("SLURM_JOB_ID", "").isdigit():
            # a port per job, so that jobs sharing a node do not collide on mmengine's default 29500
            os.environ["MASTER_PORT"] = str(20000 + int(os.environ["SLURM_JOB_ID"]) % 20000)
        hook = _requeue_between_iterations()
        task = self.task.resumed() if run.last_checkpoint() is not None else self.task
        try:
            task.function()(task.run_dir, **task.kwargs, launcher="slurm" if ntasks > 1 else "none",
                            hooks=[hook] if hook else [])
        except SystemExit:  # submitit's requeue on preemption or timeout: the requeued job goes on
            raise
        except BaseException as e:  # failed (submitit records the traceback), or SIGINT/SIGTERM without requeue
            if (stop := as_interrupt(e)) is None:
                if rank0:
                    run.update(status="failed", stopped=now(), slurm_job=slurm_job_id(), reason=first_line(e))
                raise
            if rank0:  # scancel: resumable
                run.update(status="interrupted", stopped=now())
            raise stop from stop.__cause__  # the library error that hid it, if any
        finally:
            signal.alarm(0)
        if rank0:
            run.update(status="finished", finished=now(), checkpoint=run.relative(run.last_checkpoint()))
            if self.after is not None:
                self.after.run()
        return task.run_dir

    def checkpoint(self):  # submitit calls this on preemption/timeout (SIGUSR2), then requeues the job
        import submitit

        return submitit.helpers.DelayedSubmission(SlurmJob(self.task.resumed(), self.after))


PREEMPTION_GRACE_S = 30


def _requeue_between_iterations():
    """Defer submitit's preemption/timeout handler (checkpoint(), `scontrol requeue`, exit) to the end of a
    training iteration, after that iteration's checkpoint is written, and return the mmengine hook that runs it.

    Run as is, the handler raises SystemExit wherever the signal lands: in a checkpoint being written, or in
    mmengine's bare `except:` around config formatting, which turned it into a SyntaxError and made submitit
    record the requeued job as failed. If no iteration ends within PREEMPTION_GRACE_S (the signal came
    during setup or validation), SIGALRM runs the handler there and then (SLURM's --signal=USR2@90 leaves 90 s).
    None when this process has no submitit handler (not a submitit job)."""
    import submitit
    from mmengine.hooks import Hook

    sig = submitit.JobEnvironment._usr_sig()
    handler = signal.getsignal(sig)
    if not callable(handler):
        return None
    caught: list = []

    def defer(signum, frame):
        if not caught:
            caught.append((signum, frame))
            signal.signal(signal.SIGALRM, lambda *_: caught and handler(*caught.pop()))
            signal.alarm(PREEMPTION_GRACE_S)

    class RequeueBetweenIterations(Hook):
        priority = "LOWEST"  # after CheckpointHook

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            if caught:
                signal.alarm(0)
                handler(*caught.pop())  # exits on rank 0; other ranks go on until SLURM stops the job

    signal.signal(sig, defer)
    return RequeueBetweenIterations()


def slurm_tasks_per_node(lc: DictConfig) -> int:
    """tasks_per_node, or when null one task per GPU (gpus_per_node; 1 on a CPU-only node)."""
    tasks = lc.get("tasks_per_node")
    return (int(lc.gpus_per_node) or 1) if tasks is None else int(tasks)


def slurm_parameters(lc: DictConfig) -> dict:
    """sbatch parameters (submitit's SlurmExecutor names) from the launcher config: one task per GPU."""
    params = dict(nodes=int(lc.nodes), ntasks_per_node=slurm_tasks_per_node(lc), cpus_per_task=int(lc.cpus_per_task),
                  time=int(lc.timeout_min), job_name="ecmctl")
    if int(lc.gpus_per_node) > 0:
        params["gpus_per_node"] = int(lc.gpus_per_node)
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
    """submitit's executor: `cluster` (else launcher.cluster; null: SLURM where `sbatch` exists, else
    submitit's local executor, which runs the same job code)."""
    import submitit

    ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster or lc.get("cluster"))
    if ex.cluster == "slurm":
        ex.update_parameters(**{f"slurm_{k}": v for k, v in slurm_parameters(lc).items()})
    else:  # the local executor: one task, no sbatch parameters
        ex.update_parameters(timeout_min=int(lc.timeout_min), name="ecmctl")
    return ex


def submit_slurm(task: Task, lc: DictConfig, say, after: Task | None = None):
    ex = slurm_executor(lc, lc.folder)
    job = ex.submit(SlurmJob(task, after))
    say(f"submitted {ex.cluster} job {job.job_id}; logs in {lc.folder}")
    return job
