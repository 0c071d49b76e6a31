"""torchrun (the elastic agent): every rank runs the task through `ecmctl.launch.worker`."""

from __future__ import annotations

import subprocess
import sys

from omegaconf import DictConfig

from ecmctl.launch.task import Task


def torchrun_command(task: Task, lc: DictConfig) -> list[str]:
    """torchrun over `python -m ecmctl.launch.worker TASK`; a dead rank ends the whole job (no restarts)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={lc.nproc_per_node}",
           f"--max_restarts={lc.max_restarts}", "--monitor_interval=1"]
    if int(lc.nnodes) == 1:
        cmd.append("--standalone")
    else:
        cmd += [f"--nnodes={lc.nnodes}", f"--node_rank={lc.node_rank}", "--rdzv_backend=c10d",
                f"--rdzv_endpoint={lc.rdzv_endpoint}", f"--rdzv_id={lc.rdzv_id}"]
    return [*cmd, "-m", "ecmctl.launch.worker", task.to_json()]


def run_under_torchrun(task: Task, lc: DictConfig, say) -> None:
    """Run `task` on every rank of a torchrun job and wait; non-zero exit of any rank is an error."""
    cmd = torchrun_command(task, lc)
    say(f"launching {lc.nproc_per_node} process(es) per node with torchrun: {task.target} {task.run_dir}")
    rc = subprocess.run(cmd).returncode
    if rc != 0:
        raise RuntimeError(f"torchrun exited with status {rc}; see {task.run_dir} and the ranks' output above")
