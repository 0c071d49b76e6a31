"""Faults and concurrency (issue #20, part B): one writer per run (local, torchrun ranks, other nodes, SLURM jobs),
final states whatever signal lands when, a full disk (a small tmpfs; skipped where mounting is not allowed),
atomic checkpoints, and the calibration hook's flat cost. The tests that train are `slow`."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from ranks import worker_pids
from typer.testing import CliRunner

from ecmctl.cli import app
from ecmctl.core.config import compose
from ecmctl.core.errors import DiskFull
from ecmctl.core.runs import LOCK, RANKS_LOCK, RESERVE, STALE_S, RunDir
from ecmctl.core.signals import Interrupted, deferred, terminate_as_interrupt
from ecmctl.ecm import background
from ecmctl.ecm.background import CHECK_GROWTH, StoppingRule, bootstrap_ci, converged, summarize
from ecmctl.pipeline.train import finished_iters, prepare, train

FINAL = {"finished", "failed", "interrupted"}
FAST = ["detector=atss_tiny", "loss=bce"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _run_root(overrides) -> Path:
    return Path(next(o for o in overrides if o.startswith("run_root=")).split("=", 1)[1])


def _one_line_error(res, code: int = 2) -> str:
    assert res.exit_code == code, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error:") and "Traceback" not in res.output, res.output
    return lines[-1]


@pytest.fixture()
def ready_run(overrides) -> RunDir:
    """A prepared (`ready`) run that nobody holds: counts and configs written, no training."""
    cfg = compose([*overrides, *FAST, "name=ready"])
    run = prepare(cfg, [], say=lambda m: None)
    run.unlock()
    return run


def _foreign_owner(run: RunDir, age_s: float, job: str | None = None) -> None:
    t = time.time() - age_s
    owner = {"host": "node-elsewhere", "pid": 4242, "slurm_job_id": job, "started": t - 100, "heartbeat": t}
    (run.path / LOCK).write_text(json.dumps(owner).ljust(512))


# --- one writer per run -------------------------------------------------------------------------------------------

def test_lock_records_its_owner_and_refreshes_the_heartbeat(ready_run, monkeypatch):
    from ecmctl.core import runs

    monkeypatch.setattr(runs, "HEARTBEAT_S", 0.2)
    ready_run.lock()
    try:
        first = ready_run.owner()
        assert first["host"] == socket.gethostname() and first["pid"] == os.getpid() and first["started"]
        time.sleep(1.0)
        assert ready_run.owner()["heartbeat"] > first["heartbeat"], "the heartbeat thread refreshes it"
        assert (ready_run.path / RESERVE).stat().st_size > 0, "room for the final run.json"
    finally:
        ready_run.unlock()
    assert ready_run.owner() is None, "unlock clears the record"


def test_resume_is_refused_while_another_node_trains_with_a_fresh_heartbeat(ready_run):
    _foreign_owner(ready_run, age_s=5, job="777")
    before = (ready_run.path / "run.json").read_bytes()
    line = _one_line_error(CliRunner().invoke(app, ["train", "--resume", str(ready_run.path)]))
    assert "another node" in line and "node-elsewhere" in line and "SLURM job 777" in line
    assert (ready_run.path / "run.json").read_bytes() == before, "the refused resume wrote nothing"
    assert RunDir(ready_run.path).held_elsewhere(), "`status` sees the other node's trainer"


def test_a_stale_heartbeat_of_another_node_frees_the_run(ready_run):
    _foreign_owner(ready_run, age_s=STALE_S + 5)
    assert not ready_run.held_elsewhere()
    ready_run.lock()
    assert ready_run.owner()["host"] == socket.gethostname()
    ready_run.unlock()


def test_a_requeued_slurm_job_takes_over_its_own_previous_lock(ready_run, monkeypatch):
    """SLURM requeues a preempted job elsewhere before its old heartbeat goes stale: the same job id is no rival."""
    _foreign_owner(ready_run, age_s=1, job="991")
    monkeypatch.setenv("SLURM_JOB_ID", "991")
    ready_run.lock()
    assert ready_run.owner()["slurm_job_id"] == "991"
    ready_run.unlock()


HOLD = textwrap.dedent("""
    import sys, time
    from ecmctl.core.runs import RunDir
    run = RunDir(sys.argv[1])
    {hold}
    print("held", flush=True)
    time.sleep(120)
""")


@contextlib.contextmanager
def _holder(run: RunDir, hold: str, env: dict | None = None):
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(hold=hold), str(run.path)], stdout=subprocess.PIPE,
                            text=True, env={**ENV, **(env or {})})
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_slurm_job_training_the_run_refuses_a_local_resume(ready_run):
    """The job's rank 0 holds the lock as `SlurmJob` takes it (here on this node, as the local SLURM's `vm`)."""
    with _holder(ready_run, "run.lock()", {"SLURM_JOB_ID": "4321"}):
        line = _one_line_error(CliRunner().invoke(app, ["train", "--resume", str(ready_run.path)]))
        assert "locked" in line and "SLURM job 4321" in line
        assert RunDir(ready_run.path).held_elsewhere()
    ready_run.lock()  # the job gone (its flock with it): free
    ready_run.unlock()


def test_ranks_that_outlive_their_launcher_keep_the_run(ready_run):
    with _holder(ready_run, "rank = run.training_rank(); rank.__enter__()"):
        assert (ready_run.path / RANKS_LOCK).exists()
        line = _one_line_error(CliRunner().invoke(app, ["train", "--resume", str(ready_run.path)]))
        assert "ranks" in line
        assert RunDir(ready_run.path).held_elsewhere()
    assert not ready_run.held_elsewhere()




@pytest.mark.slow
def test_ranks_die_with_a_sigkilled_ecmctl_then_resume_works(overrides):
    """SIGKILL of `ecmctl train launcher=torchrun` kills its agent (PDEATHSIG), which stops its ranks (before, they
    trained on, and `--resume` started a second trainer beside them); then `--resume` finishes the run."""
    job = [*overrides, *FAST, "launcher=torchrun", "launcher.nproc_per_node=2", "train.max_iters=12",
           "name=orphans"]
    proc = subprocess.Popen([sys.executable, "-m", "ecmctl.cli", "train", *job], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=ENV)
    marker = str(_run_root(overrides) / "orphans")
    try:
        deadline = time.time() + 180
        while time.time() < deadline and len(worker_pids(marker)) < 2:
            time.sleep(0.3)
        assert len(worker_pids(marker)) == 2, "two ranks started"
        (run_dir,) = list((_run_root(overrides) / "orphans").iterdir())
        while time.time() < deadline and not RunDir(run_dir).held_elsewhere():
            time.sleep(0.3)
        time.sleep(1)  # into the training loop
        assert proc.poll() is None and not any(run_dir.glob("iter_12.pth")), "still training"
        proc.kill()  # the ecmctl process only, as the OOM killer would
        proc.wait()
        deadline = time.time() + 60
        while time.time() < deadline and worker_pids(marker):
            time.sleep(0.3)
        assert not worker_pids(marker), "the ranks died with their launcher"
    finally:
        for pid in worker_pids(marker):
            os.kill(pid, signal.SIGKILL)
    run = RunDir(run_dir)
    assert not run.held_elsewhere() and run.meta["status"] == "running"  # SIGKILLed: nobody marked it
    res = CliRunner().invoke(app, ["train", "--resume", str(run_dir)])
    assert res.exit_code == 0, res.output
    assert RunDir(run_dir).meta["status"] == "finished" and finished_iters(run_dir) == 12


# --- final states from the first second ---------------------------------------------------------------------------

def test_a_signal_inside_deferred_arrives_after_the_record(tmp_path):
    out = tmp_path / "record.json"
    with pytest.raises(Interrupted), terminate_as_interrupt():
        with deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            out.write_text("final")  # not cut off
        pytest.fail("the held signal is raised as the block ends")
    assert out.read_text() == "final"


def _records(root: Path) -> list[tuple[Path, str]]:
    """Every status record under `root`: run.json, calibration_status.json, sweep.json."""
    found = []
    for name in ("run.json", "calibration_status.json", "sweep.json"):
        for p in root.rglob(name):
            found.append((p, json.loads(p.read_text())["status"]))
    return found


def _seen(root: Path, phase: str) -> bool:
    """Whether the command got to `phase` (the first record that phase writes)."""
    if phase == "start":
        return True
    if phase == "calibration":
        return any(root.rglob("calibration_status.json"))
    if phase == "sweep":
        return any(root.rglob("sweep.json"))
    runs = [json.loads(p.read_text()).get("status") for p in root.rglob("run.json")]
    return any(runs) if phase == "preparing" else "running" in runs


SIGNAL_CASES = [  # (phase the signal waits for, then a random delay up to, signal, seed)
    ("start", 4.0, signal.SIGTERM, 0),  # interpreter start, compose, counting
    ("preparing", 0.5, signal.SIGTERM, 1),
    ("calibration", 3.0, signal.SIGTERM, 2),
    ("calibration", 3.0, signal.SIGINT, 3),
    ("running", 4.0, signal.SIGTERM, 4),
    ("sweep", 10.0, signal.SIGTERM, 5),
]


@pytest.mark.slow
@pytest.mark.parametrize("phase, spread, sig, seed", SIGNAL_CASES,
                         ids=[f"{p}-{signal.Signals(g).name}-{s}" for p, _, g, s in SIGNAL_CASES])
def test_a_signal_at_a_random_point_leaves_only_final_states(overrides, phase, spread, sig, seed):
    """SIGTERM/SIGINT at a random moment (a seeded delay after the phase began) in counting, preparation,
    calibration, training or a `-m` sweep: every record written (run.json, calibration_status.json, sweep.json)
    ends final, and the command exits 143 (SIGTERM) or 130 (SIGINT) without a traceback."""
    root = _run_root(overrides)
    job = [*overrides, "detector=faster_rcnn_tiny", "loss=ecm", "train.max_iters=40", f"name=sig{seed}",
           "calibrate.max_iters=8", *(["-m", "seed=0,1"] if phase == "sweep" else [])]
    proc = subprocess.Popen([sys.executable, "-m", "ecmctl.cli", "train", *job], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.time() + 120
        while not _seen(root, phase) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert _seen(root, phase), f"never got to {phase}"
        time.sleep(random.Random(seed).uniform(0, spread))
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    records = _records(root)
    assert all(status in FINAL for _, status in records), (records, err[-2000:])
    assert "Traceback" not in err, err[-3000:]
    if proc.returncode != 0:  # 0: it finished before the signal
        assert proc.returncode == (143 if sig == signal.SIGTERM else 130), (proc.returncode, err[-2000:])
    if phase != "start":
        assert records and any(status == "interrupted" for _, status in records), records


# --- a full disk --------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs is not allowed here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(directory: Path) -> None:
    """Fill the filesystem of `directory` to the last byte."""
    for name, chunk in (("filler", 1 << 16), ("filler-small", 1)):
        with contextlib.suppress(OSError), open(directory / name, "wb", buffering=0) as f:
            while True:
                f.write(b"\0" * chunk)


def test_run_json_gets_its_final_state_on_a_full_disk(ready_run, tmp_path):
    with _tmpfs(tmp_path / "disk", "1m") as disk:
        run = RunDir(disk / "run")
        run.path.mkdir()
        run.update(schema="ecmctl/run@1", status="running", note="x" * 2000)
        run.lock()
        _fill(disk)
        run.update(status="failed", reason="no space left on device")
        run.unlock()
        assert RunDir(run.path).meta["status"] == "failed"
        with pytest.raises(DiskFull):
            run.update(status="failed", more="y" * 100_000)  # nothing left to give up: one line, not a traceback


@pytest.mark.slow
def test_train_on_a_full_disk_fails_in_one_line_without_a_truncated_checkpoint(overrides, tmp_path):
    """The disk fills while a checkpoint is written: one line, exit 2, run.json `failed`, the last whole
    checkpoint still the run's last (resumable once there is room)."""
    import torch

    with _tmpfs(tmp_path / "disk", "10m") as disk:
        job = [*[o for o in overrides if not o.startswith("run_root=")], f"run_root={disk}", *FAST,
               "train.max_iters=8", "name=full", "train.progress=false"]
        res = CliRunner().invoke(app, ["train", *job])
        line = _one_line_error(res)
        assert "No space left" in line or "no space" in line.lower(), line
        (run_dir,) = list((disk / "full").iterdir())
        run = RunDir(run_dir)
        assert run.meta["status"] == "failed" and "space" in run.meta["reason"].lower()
        assert not list(run_dir.glob(".*.tmp")), "no temporary file is left behind"
        for ckpt in run_dir.glob("iter_*.pth"):  # every checkpoint there is whole
            torch.load(ckpt, map_location="cpu", weights_only=False)
        # 10 MB: iter_2.pth (6.5 MB) fits, iter_4.pth does not; mmengine's LocalBackend left a truncated iter_4.pth
        assert "iter_4.pth" in run.meta["reason"] and not (run_dir / "iter_4.pth").exists()
        assert torch.load(run.last_checkpoint(), map_location="cpu", weights_only=False)["meta"]["iter"] == 2


def _synth_ann(data_root: Path, split: str) -> Path:
    (ann,) = list(data_root.rglob(f"{split}.json"))
    return ann


def test_eval_gt_results_on_a_full_disk_is_one_line(data_root, tmp_path):
    gt = _synth_ann(data_root, "val")
    doc = json.loads(gt.read_text())
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
               for a in doc["annotations"]]
    res_file = tmp_path / "results.json"
    res_file.write_text(json.dumps(results))
    with _tmpfs(tmp_path / "disk", "64k") as disk:
        _fill(disk)
        res = CliRunner().invoke(app, ["eval", "--gt", str(gt), "--results", str(res_file), "-o",
                                       str(disk / "metrics.json")])
        _one_line_error(res)
        assert not (disk / "metrics.json").exists()


def test_count_on_a_full_disk_is_one_line_and_leaves_nothing(data_root, tmp_path):
    with _tmpfs(tmp_path / "disk", "64k") as disk:
        _fill(disk)
        res = CliRunner().invoke(app, ["count", str(_synth_ann(data_root, "train")), "-o", str(disk / "counts.json")])
        assert "counts.json" in _one_line_error(res)
        assert not (disk / "counts.json").exists() and not list(disk.glob(".counts.json.*"))


@pytest.mark.slow
def test_eval_of_a_run_on_a_full_disk_is_one_line(overrides, tmp_path):
    with _tmpfs(tmp_path / "disk", "16m") as disk:
        job = [*[o for o in overrides if not o.startswith("run_root=")], f"run_root={disk}", *FAST, "name=ev"]
        assert CliRunner().invoke(app, ["train", *job]).exit_code == 0
        (run_dir,) = list((disk / "ev").iterdir())
        _fill(disk)
        _one_line_error(CliRunner().invoke(app, ["eval", str(run_dir)]))
        assert not (run_dir / "metrics.json").exists()
        assert RunDir(run_dir).meta["status"] == "finished", "a failed evaluation leaves the run as it was"


def test_a_checkpoint_killed_while_written_never_appears(tmp_path):
    """SIGKILL in the middle of a checkpoint's write (200 MB) leaves no `iter_N.pth` (only the temporary file,
    which RunDir.last_checkpoint never considers), and a whole one where the write ended."""
    script = textwrap.dedent("""
        import sys
        from ecmctl.engine.atomic_backend import AtomicLocalBackend
        print("start", flush=True)
        AtomicLocalBackend().put(b"x" * (200 << 20), sys.argv[1])
        print("done", flush=True)
    """)
    target = tmp_path / "iter_4.pth"
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "start"
    time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert not target.exists() or target.stat().st_size == 200 << 20
    assert RunDir(tmp_path).last_checkpoint() in (None, target) and not (
        target.exists() and target.stat().st_size != 200 << 20)


def test_checkpoints_are_saved_through_the_atomic_backend(overrides, tmp_path):
    out = tmp_path / "mm.py"
    res = CliRunner().invoke(app, ["train", *overrides, *FAST, "--mmdet-config", str(out)])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert "backend='ecmctl_atomic'" in text and "'ecmctl.engine.atomic_backend'" in text


# --- the calibration hook's cost -----------------------------------------------------------------------------------

def _trace(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    fg = rng.poisson(32, n)
    return np.stack([fg, rng.poisson(6.3 * fg)], axis=1).astype(np.float64)


def test_the_stopping_rules_work_per_iteration_is_flat_in_the_run_length():
    per_iter = {}
    for n in (2_000, 20_000):
        rule = StoppingRule(1, min_iters=20, rel_tol=0.0, n_boot=8)  # never stops: the whole run's work
        for row in _trace(n):
            rule.add([row])
        per_iter[n] = rule.resampled / n
    bound = 8 * (2 + 1 / CHECK_GROWTH)
    assert per_iter[20_000] <= bound and per_iter[2_000] <= bound, per_iter
    assert per_iter[20_000] <= 1.1 * per_iter[2_000], per_iter  # the previous rule: 10x more per iteration


def test_the_summary_keeps_the_previous_definition(monkeypatch):
    """bootstrap_ci draws its resamples in blocks: the same numbers as the previous single (n_boot, n) draw."""
    def previous(trace, n_boot=1000, seed=0):
        idx = np.random.default_rng(seed).integers(0, len(trace), size=(n_boot, len(trace)))
        rs = trace[idx, 1].sum(1) / trace[idx, 0].sum(1)
        return tuple(float(x) for x in np.percentile(rs, [2.5, 97.5]))

    monkeypatch.setattr(background, "BOOT_CHUNK_ELEMENTS", 1000)  # many blocks, with a ragged last one
    for n in (2, 7, 333, 3000):
        t = _trace(n, seed=n)
        assert bootstrap_ci(t, 200) == previous(t, 200)
        assert summarize([t], 200)[0]["ci95"] == list(previous(t, 200))


def test_the_run_stops_where_the_rule_first_holds_on_its_schedule():
    """The rule is the previous `precise_enough`, evaluated at min_iters and then every CHECK_GROWTH of growth:
    it never stops before the every-iteration rule would, and at most CHECK_GROWTH x n iterations after."""
    t = _trace(3000, seed=5)
    rel_tol, n_boot = 0.01, 200
    every = next(n for n in range(20, len(t) + 1) if converged(t[:n], 20, rel_tol, n_boot))
    rule = StoppingRule(1, min_iters=20, rel_tol=rel_tol, n_boot=n_boot)
    stop = next(i + 1 for i, row in enumerate(t) if rule.add([row]))
    assert converged(t[:stop], 20, rel_tol, n_boot)
    assert every <= stop <= every * (1 + CHECK_GROWTH) + 1, (every, stop)
    assert rule.r() == pytest.approx(t[:stop, 1].sum() / t[:stop, 0].sum())


# --- messages -----------------------------------------------------------------------------------------------------

def test_a_torchrun_key_with_the_local_launcher_names_launcher_torchrun():
    line = _one_line_error(CliRunner().invoke(app, ["train", "launcher.nproc_per_node=8"]))
    assert "launcher=torchrun" in line


def test_prepare_interrupted_by_sigterm_ends_interrupted(overrides, monkeypatch):
    """SIGTERM (as `Interrupted`) in the middle of preparation: run.json `interrupted` and the lock released."""
    import ecmctl.pipeline.train as training

    def stop(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)

    monkeypatch.setattr(training, "foreign_inputs", stop)
    runs: list[RunDir] = []
    with pytest.raises(Interrupted), terminate_as_interrupt():
        train(compose([*overrides, *FAST, "name=cut"]), [], say=lambda m: None, on_run=runs.append)
    meta = runs[0].meta
    assert meta["status"] == "interrupted" and not runs[0].held_elsewhere()


def _slurm_cluster_up() -> bool:
    """The local one-node SLURM of scripts/slurm-localhost.sh answers (tests/test_slurm_cluster.py starts it)."""
    import shutil

    conf = Path("/etc/slurm/slurm.conf")
    if shutil.which("sinfo") is None or not conf.is_file():
        return False
    if "written by scripts/slurm-localhost.sh" not in conf.read_text().split("\n", 1)[0]:
        return False
    return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.slow
def test_a_real_slurm_job_training_the_run_refuses_a_local_resume(overrides, tmp_path):
    """`ecmctl train launcher=slurm`: the job's rank 0 takes the lock its submitter let go of; while it trains, a
    local `--resume` is one line naming the job, and `status` sees it held."""
    import re

    if not _slurm_cluster_up():
        pytest.skip("no local SLURM (scripts/slurm-localhost.sh)")
    slurm = ["launcher=slurm", "launcher.gpus_per_node=0", "launcher.cpus_per_task=1", "launcher.partition=debug",
             "launcher.timeout_min=10", f"launcher.folder={tmp_path / 'slurm'}", *FAST, "train.max_iters=100000",
             "name=slurmlock"]
    res = subprocess.run([sys.executable, "-m", "ecmctl.cli", "train", *overrides, *slurm], capture_output=True,
                         text=True, timeout=300, env=ENV)
    assert res.returncode == 0, res.stdout + res.stderr
    job_id = re.search(r"submitted slurm job (\d+)", res.stdout).group(1)
    try:
        (run_dir,) = list((_run_root(overrides) / "slurmlock").iterdir())
        run = RunDir(run_dir)
        deadline = time.time() + 240
        while time.time() < deadline and not (run.meta.get("status") == "running" and run.held_elsewhere()):
            time.sleep(0.5)
        assert run.meta.get("status") == "running" and run.held_elsewhere(), run.meta
        assert run.owner()["slurm_job_id"] == job_id
        line = _one_line_error(CliRunner().invoke(app, ["train", "--resume", str(run_dir)]))
        assert f"SLURM job {job_id}" in line
    finally:
        subprocess.run(["scancel", job_id], timeout=30)
