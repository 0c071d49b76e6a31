"""A sweep steered as a whole, with launcher=local (the SLURM cycle is in test_slurm_cluster.py): interrupted
by a signal, `status` shows it, `retry` brings every job to finished, `eval SWEEP` gives every run its
metrics.json, `compare SWEEP` works on the result. Also: a killed run reconciled, and the bad inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ecmctl.cli.app import app
from ecmctl.core.io import atomic_write_json
from ecmctl.core.runs import RunDir
from ecmctl.core.schemas import RUN_SCHEMA, SWEEP_SCHEMA
from ecmctl.pipeline.train import finished_iters

ROOT = Path(__file__).resolve().parents[1]
FAST = ["detector=atss_tiny", "train.checkpoint_interval=2"]


def _cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecmctl.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env=env)


def _wait_for(path_glob, root: Path, timeout: float = 300) -> Path:
    """The first file matching `path_glob` (a first checkpoint: CheckpointHook keeps only the last 2)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = sorted(root.glob(path_glob))
        if found:
            return found[0]
        time.sleep(0.05)
    pytest.fail(f"no {path_glob} under {root} after {timeout:.0f}s")


def _status(path: Path, env: dict | None = None) -> dict:
    res = _cli("status", str(path), "--json", env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout)


@pytest.mark.slow
def test_local_sweep_interrupted_by_a_signal_is_retried_evaluated_and_compared(overrides, tmp_path):
    runs = tmp_path / "runs"
    sweep = subprocess.Popen([sys.executable, "-m", "ecmctl.cli", "train", "-m", *overrides, *FAST,
                              "train.max_iters=16", "loss=bce,ecm", "name=steer-${loss.name}"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for("steer-bce/*/iter_*.pth", runs)
        sweep.send_signal(signal.SIGTERM)  # a scheduler's or the user's stop, while the first job trains
        out, _ = sweep.communicate(timeout=120)
    finally:
        sweep.kill()
    assert sweep.returncode == 143, out  # SIGTERM: 128 + 15 (Ctrl-C is 130)
    sweep_dir = next((runs / "sweeps" / "sweep").iterdir())

    doc = _status(sweep_dir)
    assert [r["status"] for r in doc["rows"]] == ["interrupted", "not started"], doc
    assert doc["status"] == "interrupted" and doc["rows"][0]["iter"] >= 1

    res = CliRunner().invoke(app, ["retry", str(sweep_dir), "--interrupted"])
    assert res.exit_code == 0, res.output
    summary = json.loads((sweep_dir / "sweep.json").read_text())
    assert [j["status"] for j in summary["jobs"]] == ["finished", "finished"] and summary["status"] == "finished"
    first = summary["jobs"][0]
    assert [a["status"] for a in first["attempts"]] == ["interrupted"]  # the record keeps every attempt
    assert finished_iters(first["run_dir"]) == 16
    assert "resumed epoch" in "".join(p.read_text() for p in Path(first["run_dir"]).glob("*/*.log"))
    assert "finished" in res.output and "steer" not in res.output.split("sweep")[0]  # the status table

    res = CliRunner().invoke(app, ["eval", str(sweep_dir)])
    assert res.exit_code == 0, res.output
    for job in summary["jobs"]:
        assert (Path(job["run_dir"]) / "metrics.json").is_file()
    doc = _status(sweep_dir)
    assert all(r["AP"] is not None and r["iter"] == r["max_iters"] == 16 for r in doc["rows"]), doc
    res = CliRunner().invoke(app, ["eval", str(sweep_dir)])  # every metrics.json is current: nothing to do
    assert res.exit_code == 0 and "nothing to evaluate" in res.output, res.output
    res = CliRunner().invoke(app, ["compare", str(sweep_dir)])
    assert res.exit_code == 0 and "bce" in res.output, res.output
    res = CliRunner().invoke(app, ["retry", str(sweep_dir)])
    assert res.exit_code == 0 and "nothing to retry: no failed or interrupted jobs" in res.output, res.output


@pytest.mark.slow
def test_status_records_a_killed_local_run_interrupted(overrides, tmp_path):
    """SIGKILL: nothing can record the end, run.json keeps `running`; status sees the lock free and records it."""
    proc = subprocess.Popen([sys.executable, "-m", "ecmctl.cli", "train", *overrides, *FAST, "loss=bce",
                             "train.max_iters=200", "name=killed"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        ckpt = _wait_for("killed/*/iter_*.pth", tmp_path / "runs")
        run = RunDir(ckpt.parent)
        doc = _status(run.path)  # alive: the process holds the run's lock
        row = doc["rows"][0]
        assert row["status"] == "running" and row["iter"] >= 1 and row["max_iters"] == 200 and row["eta_s"] > 0
        assert row["loss"] is not None
    finally:
        proc.kill()
        proc.wait()
    assert run.meta["status"] == "running"
    row = _status(tmp_path / "runs")["rows"][0]  # the run_root: every run under it
    assert row["status"] == "interrupted" and "the process that trained it is gone" in row["reason"]
    assert run.meta["status"] == "interrupted" and run.meta["reconciled"]


def _fake_slurm_run(path: Path, job: str) -> RunDir:
    """run.json as `ecmctl train launcher=slurm` leaves it once submitted (no training needed to read it)."""
    path.mkdir(parents=True)
    atomic_write_json(path / "run.json", {"schema": RUN_SCHEMA, "name": "slurmrun", "status": "submitted",
                                          "launcher": "slurm", "slurm_job": job, "max_iters": 4})
    return RunDir(path)


def test_status_without_slurm_says_it_cannot_reconcile_and_shows_run_json(tmp_path):
    run = _fake_slurm_run(tmp_path / "runs" / "slurmrun" / "20260101-000000", "4242")
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # no squeue, sacct or scontrol
    res = _cli("status", str(tmp_path / "runs"), env=env)
    assert res.returncode == 0, res.stderr
    assert "cannot be reconciled" in res.stdout and "submitted" in res.stdout and "4242" in res.stdout
    doc = _status(run.path, env=env)
    assert doc["rows"][0]["status"] == "submitted" and "no SLURM commands" in doc["notes"][0]
    assert run.meta["status"] == "submitted"  # nothing recorded from a guess


def test_bad_paths_and_nothing_to_retry(tmp_path):
    res = CliRunner().invoke(app, ["status", str(tmp_path)])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "not a sweep directory" in res.output, res.output
    res = CliRunner().invoke(app, ["retry", str(tmp_path)])
    assert res.exit_code == 2 and "not a sweep directory" in res.output, res.output
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    job = {"overrides": ["seed=0"], "run_dir": None, "status": "finished"}
    atomic_write_json(sweep / "sweep.json", {"schema": SWEEP_SCHEMA, "overrides": ["seed=0"], "status": "finished",
                                             "jobs": [job]})
    res = CliRunner().invoke(app, ["retry", str(sweep), "--failed"])
    assert res.exit_code == 0 and "nothing to retry: no failed jobs" in res.output, res.output
    res = CliRunner().invoke(app, ["status", str(sweep), "--json", "--watch"])
    assert res.exit_code == 2 and "--json" in res.output
