"""launcher=slurm against a real single-node SLURM (scripts/slurm-localhost.sh: slurmctld, slurmd and munge
on this machine): sbatch through submitit, srun tasks, requeue on preemption with resume, job arrays.

CI starts the cluster before the tests (.ci/run); without `sinfo` on PATH the module is skipped."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ecmctl.core.runs import RunDir
from ecmctl.pipeline.sweep import run_sweep
from ecmctl.pipeline.train import finished_iters

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "slurm-localhost.sh"
CONF = Path("/etc/slurm/slurm.conf")


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster():
    """The cluster of scripts/slurm-localhost.sh, (re)started if need be; never another SLURM's config."""
    if shutil.which("sinfo") is None:
        pytest.skip("no SLURM on this machine: run scripts/slurm-localhost.sh")
    if CONF.is_file() and "written by scripts/slurm-localhost.sh" not in CONF.read_text().split("\n", 1)[0]:
        pytest.skip(f"{CONF} belongs to another SLURM cluster: these tests only use scripts/slurm-localhost.sh's")
    res = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        pytest.skip(f"scripts/slurm-localhost.sh exited {res.returncode}: {(res.stderr or res.stdout).strip()}")


def _slurm(tmp_path: Path, *extra: str) -> list[str]:
    return ["launcher=slurm", "launcher.gpus_per_node=0", "launcher.cpus_per_task=1", "launcher.partition=debug",
            "launcher.timeout_min=10", f"launcher.folder={tmp_path / 'slurm'}", "detector=atss_tiny", "loss=bce",
            *extra]


def _submit(overrides: list[str], tmp_path: Path, *extra: str, name: str) -> tuple[str, RunDir, float]:
    """`ecmctl train launcher=slurm …` in a subprocess: the job id, the run, and how long the command took."""
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "ecmctl.cli", "train", *overrides, *_slurm(tmp_path, *extra),
                          f"name={name}"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    took = time.time() - t0
    assert res.returncode == 0, res.stdout + res.stderr
    m = re.search(r"submitted slurm job (\d+)", res.stdout)
    assert m, f"not submitted to SLURM:\n{res.stdout}"
    (run_dir,) = list((tmp_path / "runs" / name).iterdir())
    return m.group(1), RunDir(run_dir), took


def _wait(run: RunDir, job_id: str, timeout: float = 300) -> dict:
    """The run's final run.json, once the SLURM job has also left the queue: the job records its status
    before submitit writes its last log lines and the process exits."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        meta = run.meta
        if meta.get("status") in ("finished", "failed") and not _in_queue(job_id):
            return meta
        time.sleep(1)
    state = subprocess.run(["scontrol", "show", "job", job_id.split("_")[0]], capture_output=True, text=True)
    pytest.fail(f"{run.path} not finished after {timeout:.0f}s: status {run.meta.get('status')!r}\n{state.stdout}")


def _in_queue(job_id: str) -> bool:
    res = subprocess.run(["squeue", "-h", "-j", job_id.split("_")[0]], capture_output=True, text=True)
    return bool(res.stdout.strip())


def _logs(run: RunDir) -> list[str]:
    """mmengine's logs of a run, one per start (first start first)."""
    return [p.read_text() for p in sorted(run.path.glob("*/*.log"))]


def _preempt_after_checkpoint(run: RunDir, job_id: str, checkpoint: str) -> None:
    """Once the job has written `checkpoint`: SIGTERM then SIGUSR2 to its tasks, SLURM's preemption as
    submitit handles it (SIGUSR2 alone is the time limit's warning)."""
    deadline = time.time() + 300
    while time.time() < deadline and not (run.path / checkpoint).is_file():
        time.sleep(0.2)
    assert (run.path / checkpoint).is_file(), f"no checkpoint after 300s: {run.meta}"
    for sig in ("TERM", "USR2"):
        subprocess.run(["scancel", f"--signal={sig}", job_id], check=True, timeout=30)


def test_train_submits_and_the_job_trains_under_slurm(overrides, tmp_path):
    job_id, run, took = _submit(overrides, tmp_path, name="slurm")
    assert took < 120, f"the command waited for the job ({took:.0f}s)"
    assert run.meta["status"] in ("submitted", "running", "finished")
    meta = _wait(run, job_id)
    assert meta["status"] == "finished" and finished_iters(run.path) == 4
    # the job, not the submitting command, trained: SLURM's environment reached it
    assert meta["slurm_job"] == job_id and meta["slurm_restarts"] == 0
    assert meta["slurm_node"] == socket.gethostname().split(".")[0]
    out = (tmp_path / "slurm" / f"{job_id}_0_log.out").read_text()
    assert "Job completed successfully" in out
    assert "Distributed training: False" in _logs(run)[0]


def test_preempted_job_requeues_and_resumes_from_its_checkpoint(overrides, tmp_path):
    """SIGTERM then SIGUSR2 to the job's tasks is SLURM preemption as submitit handles it (SIGUSR2 alone is the
    time limit's warning): checkpoint(), `scontrol requeue`, and the job starts again, resuming."""
    max_iters = 20
    job_id, run, _ = _submit(overrides, tmp_path, f"train.max_iters={max_iters}", "train.checkpoint_interval=2",
                             "launcher.timeout_min=60", name="preempted")
    _preempt_after_checkpoint(run, job_id, "iter_2.pth")
    meta = _wait(run, job_id, timeout=420)  # a requeued job waits AuthInfo=cred_expire (30 s) to start again
    assert meta["status"] == "finished" and finished_iters(run.path) == max_iters
    assert meta["slurm_job"] == job_id and meta["slurm_restarts"] == 1, "the same job ran a second time"
    out = (tmp_path / "slurm" / f"{job_id}_0_log.out").read_text()
    assert "this job is preempted" in out and f"Requeued job {job_id}" in out
    assert "triggered an exception" not in out, "the first start exited cleanly, between iterations"
    first, second = _logs(run)
    stopped = max(int(i) for i in re.findall(r"Iter\(train\) \[\s*(\d+)/", first))
    assert stopped < max_iters
    resumed = int(re.search(r"resumed epoch: \d+, iter: (\d+)", second).group(1))
    assert 2 <= resumed <= stopped and resumed % 2 == 0, (resumed, stopped)
    logged = [int(i) for i in re.findall(r"Iter\(train\) \[\s*(\d+)/", second)]
    assert logged and logged[0] > resumed and logged[-1] == max_iters, logged  # goes on from the checkpoint


def test_preempted_epoch_based_job_resumes_inside_its_epoch(overrides, tmp_path):
    """An epoch-based schedule (the paper's recipes count epochs): preempted inside the first epoch, the requeued
    job continues that epoch at the batch after its checkpoint and ends after exactly 2 epochs' iterations."""
    epoch = ["schedule=1x", "schedule.max_epochs=2", "schedule.milestones=[1]", "schedule.warmup_iters=2",
             "schedule.checkpoint_interval=2", "train.max_iters=null", "launcher.timeout_min=60"]
    job_id, run, _ = _submit(overrides, tmp_path, *epoch, name="preempted_epochs")
    _preempt_after_checkpoint(run, job_id, "iter_2.pth")
    meta = _wait(run, job_id, timeout=420)
    assert meta["status"] == "finished" and meta["slurm_restarts"] == 1
    _, second = _logs(run)  # the first start logged no line yet (mmengine logs every 50 iterations)
    per_epoch = int(re.search(r"Epoch\(train\)\s*\[1\]\[\s*\d+/(\d+)\]", second).group(1))
    resumed = int(re.search(r"resumed epoch: 0, iter: (\d+)", second).group(1))
    assert 2 <= resumed < per_epoch, (resumed, per_epoch)  # preempted inside the first epoch
    assert finished_iters(run.path) == 2 * per_epoch  # no replayed batches, no extra iterations


def test_two_tasks_per_node_train_one_ddp_run_with_mmengine_slurm_launcher(overrides, tmp_path):
    job_id, run, _ = _submit(overrides, tmp_path, "launcher.tasks_per_node=2", name="two_tasks")
    meta = _wait(run, job_id)
    assert meta["status"] == "finished" and finished_iters(run.path) == 4
    (log,) = _logs(run)  # rank 0's
    assert "Distributed launcher: slurm" in log and "Distributed training: True" in log
    assert "GPU number: 2" in log and "Iter(train) [4/4]" in log  # mmengine calls the world size so


def test_slurm_sweep_is_a_job_array(overrides, tmp_path):
    summary = run_sweep([*overrides, *_slurm(tmp_path, "seed=0,1", "train.max_iters=2")], say=lambda m: None)
    ids = [j["slurm_job"] for j in summary["jobs"]]
    arrays = [re.fullmatch(r"(\d+)_(\d+)", i) for i in ids]
    assert all(arrays) and len({m.group(1) for m in arrays}) == 1, ids
    assert sorted(m.group(2) for m in arrays) == ["0", "1"]
    for job in summary["jobs"]:
        run = RunDir(job["run_dir"])
        meta = _wait(run, job["slurm_job"])
        assert meta["status"] == "finished" and meta["slurm_job"] == job["slurm_job"]
        assert finished_iters(run.path) == 2
    (sweep_json,) = list((tmp_path / "runs" / "sweeps" / "sweep").glob("*/sweep.json"))
    assert json.loads(sweep_json.read_text())["jobs"] == summary["jobs"]


def _until(check, timeout: float, what: str, poll: float = 1.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (value := check()):
            return value
        time.sleep(poll)
    pytest.fail(f"{what}: not after {timeout:.0f}s")


def _kill_processes(job_id: str) -> None:
    """SIGKILL to every process of array task `job_id` (N_i), found by its SLURM environment, as the kernel's OOM
    killer would kill them (`scancel --signal=KILL` would make SLURM record the job CANCELLED)."""
    array, task = job_id.split("_")
    want = {f"SLURM_ARRAY_JOB_ID={array}".encode(), f"SLURM_ARRAY_TASK_ID={task}".encode()}
    killed = 0
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and want <= set((proc / "environ").read_bytes().split(b"\0")):
                os.kill(int(proc.name), signal.SIGKILL)
                killed += 1
    assert killed, f"no process of job {job_id}"


def test_sweep_jobs_killed_and_cancelled_are_shown_retried_and_evaluated(overrides, tmp_path, monkeypatch):
    """One job of the array is killed (SIGKILL: nothing records its end, run.json stays `running`), the other
    cancelled: `status` shows the first failed with SLURM's state and the second interrupted; `retry` brings
    both to finished from their checkpoints; `eval SWEEP` evaluates both as one job array."""
    from typer.testing import CliRunner

    from ecmctl.cli.app import app
    from ecmctl.pipeline.status import collect_status, is_done
    from ecmctl.pipeline.sweep import evaluate_sweep, retry_sweep

    summary = run_sweep([*overrides, *_slurm(tmp_path, "train.max_iters=30", "train.checkpoint_interval=3",
                                             "seed=0,1")], say=lambda m: None)
    sweep_dir = Path(summary["sweep_json"]).parent
    killed, cancelled = summary["jobs"]
    subprocess.run(["scancel", cancelled["slurm_job"]], check=True, timeout=30)
    # killed at its first checkpoint (CheckpointHook keeps 2: a later poll might not see iter_3.pth)
    _until(lambda: list(Path(killed["run_dir"]).glob("iter_*.pth")), 300, "the first job's checkpoint", poll=0.1)
    _kill_processes(killed["slurm_job"])
    _until(lambda: not _in_queue(killed["slurm_job"]) and not _in_queue(cancelled["slurm_job"]), 120, "jobs gone")
    assert RunDir(killed["run_dir"]).meta["status"] == "running"  # nothing could record the end

    doc = collect_status(sweep_dir)
    (k, c) = doc["rows"]
    assert k["status"] == "failed" and k["reason"].startswith(f"SLURM job {killed['slurm_job']}: FAILED"), k
    assert c["status"] == "interrupted", c
    assert RunDir(killed["run_dir"]).meta["status"] == "failed"  # recorded, in run.json and sweep.json
    assert [j["status"] for j in json.loads((sweep_dir / "sweep.json").read_text())["jobs"]] == ["failed",
                                                                                              "interrupted"]
    monkeypatch.setenv("COLUMNS", "160")
    print(CliRunner().invoke(app, ["status", str(sweep_dir)]).output)  # as the README shows it

    assert len(retry_sweep(sweep_dir, say=lambda m: None)) == 2
    doc = _until(lambda: d if is_done(d := collect_status(sweep_dir)) else None, 420, "retried jobs")
    assert [r["status"] for r in doc["rows"]] == ["finished", "finished"], doc
    jobs = json.loads((sweep_dir / "sweep.json").read_text())["jobs"]
    assert [[a["status"] for a in j["attempts"]] for j in jobs] == [["failed"], ["interrupted"]]
    assert all(finished_iters(j["run_dir"]) == 30 for j in jobs)
    assert "resumed epoch" in "".join(_logs(RunDir(killed["run_dir"])))  # from its own checkpoint

    res = evaluate_sweep(sweep_dir, say=lambda m: None)
    assert len(res["submitted"]) == 2 and len({j["slurm_job"].split("_")[0] for j in res["submitted"]}) == 1
    _until(lambda: all((Path(j["run_dir"]) / "metrics.json").is_file() for j in jobs), 300, "metrics.json")
    doc = collect_status(sweep_dir)
    assert all(r["AP"] is not None for r in doc["rows"])
    print(CliRunner().invoke(app, ["status", str(sweep_dir)]).output)
