"""Launchers for real: 2-process gloo DDP under torchrun, a dying rank, submitit jobs, Hydra sweeps."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ranks import worker_pids
from typer.testing import CliRunner

from ecmctl.cli import app
from ecmctl.core.config import compose
from ecmctl.core.runs import RunDir
from ecmctl.launch import Task, train_task
from ecmctl.launch.slurm import SlurmJob, slurm_executor, slurm_parameters
from ecmctl.launch.torchrun import torchrun_command
from ecmctl.pipeline.sweep import run_sweep
from ecmctl.pipeline.train import finished_iters, prepare

pytestmark = pytest.mark.slow


def _run_root(overrides) -> Path:
    return Path(next(o for o in overrides if o.startswith("run_root=")).split("=", 1)[1])


def test_torchrun_command_forms():
    single = compose(["launcher=torchrun", "launcher.nproc_per_node=4"]).launcher
    cmd = torchrun_command(train_task("R", resume=True), single)
    assert "--standalone" in cmd and "--nproc_per_node=4" in cmd and cmd[-2] == "ecmctl.launch.worker"
    assert Task.from_json(cmd[-1]) == train_task("R", resume=True)
    multi = compose(["launcher=torchrun", "launcher.nnodes=2", "launcher.node_rank=1",
                     "launcher.rdzv_endpoint=host0:29400"]).launcher
    cmd = torchrun_command(train_task("R"), multi)
    assert {"--nnodes=2", "--node_rank=1", "--rdzv_endpoint=host0:29400", "--rdzv_backend=c10d"} <= set(cmd)


def test_torchrun_two_gloo_processes_write_one_run(overrides):
    res = CliRunner().invoke(app, ["train", *overrides, "launcher=torchrun", "launcher.nproc_per_node=2",
                                   "detector=atss_tiny", "loss=ecm", "name=ddp"])
    assert res.exit_code == 0, res.output
    (run_dir,) = list((_run_root(overrides) / "ddp").iterdir())
    run = RunDir(run_dir)
    assert run.meta["status"] == "finished" and run.meta["launcher"] == "torchrun"
    assert finished_iters(run_dir) == 4
    logs = list(run_dir.glob("*/*.log"))
    assert len(logs) == 1, "rank 0 alone writes the run's log"
    text = logs[0].read_text()
    assert "Distributed training: True" in text and "Iter(train) [4/4]" in text


LEAVE = """
import gc, types, weakref
import torch, torch.distributed as dist
from ecmctl.engine.runner import leave_process_group

dist.init_process_group("gloo")
runner = types.SimpleNamespace(model=torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 4)))
runner.model(torch.randn(2, 4)).sum().backward()
ddp = weakref.ref(runner.model)
leave_process_group(runner)
assert ddp() is None and not dist.is_initialized()
print("left")
"""


def test_ranks_leave_their_process_group_before_exit(tmp_path):
    """A gloo group left to interpreter shutdown aborted a finished rank about one run in ten (SIGABRT, torchrun
    exit 1): each rank drops its DDP wrapper (which holds the group) and destroys the group first."""
    script = tmp_path / "leave.py"
    script.write_text(LEAVE)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={port}", str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("left") == 2




def test_dead_rank_ends_the_job_nonzero_within_a_minute(overrides):
    job = [*overrides, "launcher=torchrun", "launcher.nproc_per_node=2", "detector=atss_tiny", "loss=bce",
           "train.max_iters=100000", "name=dying"]
    proc = subprocess.Popen([sys.executable, "-m", "ecmctl.cli", "train", *job], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    marker = str(_run_root(overrides) / "dying")
    try:
        deadline = time.time() + 180
        while time.time() < deadline and len(worker_pids(marker)) < 2:
            time.sleep(0.5)
        pids = worker_pids(marker)
        assert len(pids) == 2, "two ranks started"
        time.sleep(5)  # let them reach the training loop
        os.kill(pids[1], signal.SIGKILL)
        t0 = time.time()
        rc = proc.wait(timeout=60)
        assert rc != 0 and time.time() - t0 < 60
        assert not worker_pids(marker), "the surviving rank was stopped too"
        (run_dir,) = list((_run_root(overrides) / "dying").iterdir())
        assert RunDir(run_dir).meta["status"] == "failed"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_slurm_job_runs_through_submitit_and_requeues_with_resume(overrides, tmp_path):
    """No SLURM controller here: submitit's local executor runs the same job callable."""
    cfg = compose([*overrides, "launcher=slurm", f"launcher.folder={tmp_path / 'slurm'}", "detector=atss_tiny",
                   "loss=bce", "name=slurm"])
    run = prepare(cfg, [], say=lambda m: None)
    run.unlock()
    ex = slurm_executor(cfg.launcher, cfg.launcher.folder, cluster="local")
    job = ex.submit(SlurmJob(train_task(run.path)))
    assert job.result() == str(run.path)
    assert run.meta["status"] == "finished" and finished_iters(run.path) == 4
    # on preemption/timeout submitit calls checkpoint(): the requeued job resumes
    requeued = SlurmJob(train_task(run.path)).checkpoint()
    assert requeued.function.task.resume is True and requeued.function.task.run_dir == str(run.path)


def test_slurm_parameters_reach_sbatch(tmp_path):
    from submitit.slurm.slurm import _make_sbatch_string

    lc = compose(["launcher=slurm", "launcher.partition=gpu", "launcher.account=lab", "launcher.nodes=2",
                  "launcher.gpus_per_node=4", "launcher.mem_gb=64",
                  "+launcher.additional_parameters.qos=high"]).launcher
    params = slurm_parameters(lc)
    script = _make_sbatch_string(command="python -m x", folder=str(tmp_path), **params)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4",
                 "#SBATCH --gpus-per-node=4", "#SBATCH --account=lab", "#SBATCH --qos=high", "#SBATCH --mem=64GB",
                 "#SBATCH --time=4320", "#SBATCH --signal=USR2@90"):
        assert line in script, line
    # a CPU-only node: no --gpus-per-node, one task per node unless tasks_per_node says otherwise
    cpu = compose(["launcher=slurm", "launcher.gpus_per_node=0", "launcher.cpus_per_task=1"]).launcher
    script = _make_sbatch_string(command="python -m x", folder=str(tmp_path), **slurm_parameters(cpu))
    assert "#SBATCH --ntasks-per-node=1" in script and "#SBATCH --cpus-per-task=1" in script
    assert "--gpus-per-node" not in script and "--gres" not in script
    two = compose(["launcher=slurm", "launcher.gpus_per_node=0", "launcher.tasks_per_node=2"]).launcher
    assert slurm_parameters(two)["ntasks_per_node"] == 2


def test_local_sweep_runs_every_combination(overrides):
    summary = run_sweep([*overrides, "detector=atss_tiny", "loss=ecm,bce", "train.max_iters=2"], say=lambda m: None)
    assert [j["status"] for j in summary["jobs"]] == ["finished", "finished"]
    dirs = {j["run_dir"] for j in summary["jobs"]}
    assert len(dirs) == 2 and all(Path(d, "run.json").is_file() for d in dirs)
    (sweep_json,) = list((_run_root(overrides) / "sweeps" / "sweep").glob("*/sweep.json"))
    assert json.loads(sweep_json.read_text())["jobs"] == summary["jobs"]


def test_sweep_with_slurm_launcher_submits_a_job_array(overrides, tmp_path):
    """submitit's local executor (tests/test_slurm_cluster.py submits the same to a real SLURM)."""
    summary = run_sweep([*overrides, "launcher=slurm", "launcher.cluster=local",
                         f"launcher.folder={tmp_path / 'slurm'}", "detector=atss_tiny", "loss=bce", "seed=0,1",
                         "train.max_iters=2"], say=lambda m: None)
    assert [j["status"] for j in summary["jobs"]] == ["submitted", "submitted"]
    deadline = time.time() + 300
    runs = [RunDir(j["run_dir"]) for j in summary["jobs"]]
    while time.time() < deadline and any(r.meta.get("status") != "finished" for r in runs):
        time.sleep(1)
    assert all(finished_iters(r.path) == 2 for r in runs)


def test_two_nodes_train_one_run(overrides, tmp_path):
    """A multi-node torchrun job, both "nodes" on this machine: node 0 prepares the shared run_dir (counts,
    configs), node 1 waits for it and joins; one run with a world size of 2."""
    run_dir = tmp_path / "shared" / "run"
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    common = [*overrides, "detector=atss_tiny", "loss=bce", "train.max_iters=2", "launcher=torchrun",
              "launcher.nnodes=2", "launcher.nproc_per_node=1", f"launcher.rdzv_endpoint=localhost:{port}",
              f"run_dir={run_dir}"]
    cmd = [sys.executable, "-m", "ecmctl", "train", *common]
    log1 = tmp_path / "node1.log"  # a file, not a pipe nobody reads while node 0 runs
    with open(log1, "w") as f:
        node1 = subprocess.Popen([*cmd, "launcher.node_rank=1"], stdout=f, stderr=subprocess.STDOUT)
    try:
        node0 = subprocess.run([*cmd, "launcher.node_rank=0"], capture_output=True, text=True, timeout=600)
        node1.wait(timeout=120)
    finally:
        if node1.poll() is None:
            node1.kill()
    out1 = log1.read_text()
    assert node0.returncode == 0, node0.stdout + node0.stderr
    assert node1.returncode == 0 and "waiting for node 0" in out1, out1
    run = RunDir(run_dir)
    assert run.meta["status"] == "finished" and finished_iters(run_dir) == 2
    (log,) = list(run_dir.glob("*/*.log"))  # the global rank 0 alone writes the run's log
    assert "GPU number: 2" in log.read_text()  # mmengine's name for the world size


def test_node_k_without_a_shared_run_dir_is_refused(overrides):
    res = CliRunner().invoke(app, ["train", *overrides, "launcher=torchrun", "launcher.nnodes=2",
                                   "launcher.node_rank=1"])
    assert res.exit_code == 2 and "same run_dir=/shared/path on every node" in " ".join(res.output.split())
