"""torchrun (the elastic agent): every rank runs the task through `ecmctl.launch.worker`."""

from __future__ import annotations

import subprocess
import sys

from omegaconf import DictConfig

from ecmctl.launch.task import Task


def torchrun_command(task: Task, lc: DictConfig) -> list[str]:
    """torchrun over `python -m ecmctl.launch.worker TASK`; a dead rank ends the whole job (no restarts), and the
    agent dies with this process (launch/parent_death.py), its ranks with the agent."""
    cmd = [sys.executable, "-m", "ecmctl.launch.parent_death", "torch.distributed.run",
           f"--nproc_per_node={lc.nproc_per_node}",
           f"--max_restarts={lc.max_restarts}", "--monitor_interval=1"]
    if int(lc.nnodes) == 1:
        cmd.append("--standalone")
    else:
        cmd += [f"--nnodes={lc.nnodes}", f"--node_rank={lc.node_rank}", "--rdzv_backend=c10d",
                f"--rdzv_endpoint={lc.rdzv_endpoint}", f"--rdzv_id={lc.rdzv_id}"]
    return [*cmd, "-m", "ecmctl.launch.worker", task.to_json()]


STOP_TIMEOUT_S = 60  # torchrun's own grace for its ranks is 30 s


def run_under_torchrun(task: Task, lc: DictConfig, say) -> None:
    """Run `task` on every rank of a torchrun job and wait; non-zero exit of any rank is an error."""
    cmd = torchrun_command(task, lc)
    say(f"launching {lc.nproc_per_node} process(es) per node with torchrun: {task.target} {task.run_dir}")
    agent = subprocess.Popen(cmd)
    try:
        rc = agent.wait()
    except BaseException:  # Ctrl-C, SIGTERM: the agent stops its ranks (SIGTERM, then SIGKILL) before we go on
        agent.terminate()
        try:
            agent.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        raise
    if rc != 0:
        raise RuntimeError(f"torchrun exited with status {rc}; see {task.run_dir} and the ranks' output above")
