"""Runs end in a final state, sweeps run every job, nothing good is overwritten, and the default output is
short. Issue 12's rows in the comments (row N). Only the tests marked slow train or evaluate a detector."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from adversarial import assert_one_line, invoke, unchanged, write_json

from ecmctl.core.config import compose
from ecmctl.core.errors import UserError
from ecmctl.core.io import atomic_write_json
from ecmctl.core.runs import MM_CONFIG, RunDir
from ecmctl.dataset.counting import write_counts
from ecmctl.engine.checkpoints import build_model_cpu
from ecmctl.engine.runner import load_run_config, resume_from
from ecmctl.launch import Task
from ecmctl.launch.slurm import SlurmJob
from ecmctl.pipeline import calibrate as calibration
from ecmctl.pipeline import train as training
from ecmctl.pipeline.report import _fmt_r, calibration_markdown


@pytest.fixture()
def counts(overrides, data_root, tmp_path) -> Path:
    path = tmp_path / "counts.json"
    write_counts(data_root / "synth_tiny" / "train.json", path, progress=False)
    return path


def _run_root(overrides) -> Path:
    return Path(next(o for o in overrides if o.startswith("run_root=")).split("=", 1)[1])


def _only_run(root: Path) -> RunDir:
    (run_json,) = list(root.glob("*/*/run.json"))
    return RunDir(run_json.parent)


# ------------------------------------------------------------------------------------- final states (row 10)


def test_a_failing_launch_marks_the_run_failed_with_the_reason(overrides, counts, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("rank 0 died: CUDA error\nmore lines")

    monkeypatch.setattr(training, "launch", boom)
    job = [*overrides, "loss=bce", f"counts_file={counts}"]
    with pytest.raises(RuntimeError):
        training.train(compose(job), job, say=lambda m: None)
    meta = _only_run(_run_root(overrides)).meta
    assert meta["status"] == "failed" and meta["reason"] == "rank 0 died: CUDA error"


def test_ctrl_c_while_preparing_marks_the_run_interrupted(overrides, counts, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "run_calibration", interrupted)
    said = []
    job = [*overrides, "loss=ecm", f"counts_file={counts}"]
    with pytest.raises(KeyboardInterrupt):
        training.train(compose(job), job, say=said.append)
    meta = _only_run(_run_root(overrides)).meta
    assert meta["status"] == "interrupted" and "preparing" in meta["reason"]
    assert any("interrupted before training started" in m for m in said)


def test_sigterm_during_training_marks_the_run_interrupted_and_says_how_to_resume(overrides, counts, monkeypatch):
    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # what a scheduler sends
        time.sleep(5)

    monkeypatch.setattr(training, "launch", killed)
    said = []
    job = [*overrides, "loss=bce", f"counts_file={counts}"]
    with pytest.raises(KeyboardInterrupt):
        training.train(compose(job), job, say=said.append)
    run = _only_run(_run_root(overrides))
    assert run.meta["status"] == "interrupted"
    assert any(f"ecmctl train --resume {run.path}" in m for m in said)


def test_an_interrupt_a_library_rewraps_still_ends_interrupted(overrides, counts, monkeypatch):
    """mmengine turns a Ctrl-C that lands in yapf (while a checkpoint is saved) into SyntaxError: still resumable."""
    def saving_a_checkpoint(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except:  # noqa: E722 -- what mmengine's Config.pretty_text does
            raise SyntaxError("Failed to format the config file") from None

    monkeypatch.setattr(training, "launch", saving_a_checkpoint)
    said = []
    job = [*overrides, "loss=bce", f"counts_file={counts}"]
    with pytest.raises(KeyboardInterrupt) as stop:
        training.train(compose(job), job, say=said.append)
    assert isinstance(stop.value.__cause__, SyntaxError)
    run = _only_run(_run_root(overrides))
    assert run.meta["status"] == "interrupted" and "reason" not in run.meta
    assert any(f"ecmctl train --resume {run.path}" in m for m in said)
    # a failure with no interrupt in its chain stays a failure
    monkeypatch.setattr(training, "launch", lambda *a, **k: (_ for _ in ()).throw(SyntaxError("bad config")))
    with pytest.raises(SyntaxError):
        training.train(compose(job), job, say=said.append)
    statuses = sorted(RunDir(p.parent).meta["status"] for p in _run_root(overrides).glob("*/*/run.json"))
    assert statuses == ["failed", "interrupted"]


def test_a_failed_calibration_says_so_in_its_directory(overrides, counts, tmp_path, monkeypatch):
    def fails(*args, **kwargs):
        raise RuntimeError("loss is nan")

    monkeypatch.setattr(calibration, "_measure", fails)
    with pytest.raises(RuntimeError):
        calibration.run_calibration(compose([*overrides, f"counts_file={counts}"]), tmp_path / "cal",
                                    say=lambda m: None)
    status = json.loads((tmp_path / "cal" / calibration.STATUS_JSON).read_text())
    assert status["status"] == "failed" and status["reason"] == "loss is nan"
    assert not (tmp_path / "cal" / "calibration.json").exists()


def test_a_failing_slurm_job_marks_its_run_failed(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.update(status="submitted")  # no mmdet_config.py: train_run fails on the node
    with pytest.raises(FileNotFoundError):
        SlurmJob(Task("ecmctl.engine.runner:train_run", str(run.path)))()
    assert run.meta["status"] == "failed" and "mmdet_config.py" in run.meta["reason"]


# ---------------------------------------------------------------------------------------------- sweeps (9, 10)


def _fake_launch(fail_seed: int, error: type[Exception]):
    def launch(task, launcher, say, device="auto", after=None):
        cfg = (Path(task.run_dir) / "config.yaml").read_text()
        if f"seed: {fail_seed}\n" in cfg:
            raise error(f"job with seed {fail_seed} failed")
    return launch


@pytest.mark.parametrize("error, code", [(UserError, 2), (RuntimeError, 1)])
def test_a_sweep_runs_every_job_and_fails_at_the_end(overrides, counts, monkeypatch, error, code):
    """One failing job: the others still run, sweep.json records each status, run_dir and reason, and the
    command exits 2 (a user error, one line) or 1 (a bug, with its traceback) at the end."""
    monkeypatch.setattr(training, "launch", _fake_launch(1, error))
    res = invoke(["train", "-m", *overrides, "loss=bce", f"counts_file={counts}", "seed=0,1,2"])
    if code == 2:
        assert_one_line(res, "1 of 3 sweep jobs failed", "seed=1")
    else:
        assert res.exit_code == 1 and "Traceback" in res.output and "1 of 3 sweep jobs failed" in res.output
    (sweep_json,) = list((_run_root(overrides) / "sweeps" / "sweep").glob("*/sweep.json"))
    doc = json.loads(sweep_json.read_text())
    assert doc["status"] == "failed" and doc["failed"] == 1
    assert [j["status"] for j in doc["jobs"]] == ["finished", "failed", "finished"]
    bad = doc["jobs"][1]
    assert bad["run_dir"] and bad["reason"] == "job with seed 1 failed"
    assert RunDir(bad["run_dir"]).meta["status"] == "failed"


def test_a_sweep_job_that_fails_before_its_run_exists(overrides, counts, tmp_path, monkeypatch):
    monkeypatch.setattr(training, "launch", _fake_launch(-1, RuntimeError))
    res = invoke(["train", "-m", *overrides, f"counts_file={counts}", "loss=ecm,bce",
                  f"weights_file={tmp_path / 'missing.json'}"])
    assert_one_line(res, "1 of 2 sweep jobs failed", "missing.json")
    (sweep_json,) = list((_run_root(overrides) / "sweeps" / "sweep").glob("*/sweep.json"))
    jobs = json.loads(sweep_json.read_text())["jobs"]
    assert [j["status"] for j in jobs] == ["failed", "finished"] and jobs[0]["run_dir"] is None


# ------------------------------------------------------------------------------------------ resume (row 2)


def test_resume_of_a_copied_run_uses_its_own_checkpoint(tmp_path):
    orig = tmp_path / "orig"
    orig.mkdir()
    for it in (4, 8):
        (orig / f"iter_{it}.pth").write_bytes(b"x")
    (orig / "last_checkpoint").write_text(str((orig / "iter_8.pth").resolve()))
    copy = tmp_path / "copy"
    shutil.copytree(orig, copy)
    assert resume_from(copy) == str((copy / "iter_8.pth").resolve())
    (copy / "iter_8.pth").unlink()
    assert resume_from(copy) == str((copy / "iter_4.pth").resolve())  # never the original's iter_8
    for p in copy.glob("*.pth"):
        p.unlink()
    assert resume_from(copy) is None


# --------------------------------------------------------------------------------------------- file modes (11)


def test_outputs_get_the_umask_mode(tmp_path, data_root):
    old = os.umask(0o022)
    try:
        write_counts(data_root / "synth_tiny" / "train.json", tmp_path / "c.json", progress=False)
        atomic_write_json(tmp_path / "x.json", {"a": 1})
        run = RunDir(tmp_path / "run")
        run.path.mkdir()
        run.lock()
        run.unlock()
    finally:
        os.umask(old)
    for name in ("c.json", "x.json", "run/.lock"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


# ------------------------------------------------------------------------------------------ report.md r (12)


def test_report_rounds_r_with_its_interval():
    assert _fmt_r(3.63474246401738) == "3.635" and _fmt_r(12.5) == "12.50" and _fmt_r(None) == "n/a"
    from ecmctl.pipeline.report import ReportRun

    run = ReportRun(path=Path("r"), label="ecm", meta={}, metrics={},
                    calibration={"r": 3.63474246401738, "ci95": [3.5012345, 3.7698765], "iters": 200})
    (line,) = calibration_markdown([run])
    assert "r = 3.635, 95% CI [3.501, 3.770] over 200 iterations" in line


# -------------------------------------------------------------------------------------- the one error path


def test_an_unwritable_path_anywhere_is_one_line(monkeypatch, tmp_path, data_root):
    """A permission error raised deep in the stack (not turned into a UserError where it happened) is still
    one line, exit 2; a bug keeps its traceback, exit 1."""
    import ecmctl.dataset.counting as counting

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "c.json"))

    monkeypatch.setattr(counting, "atomic_write_json", denied)
    assert_one_line(invoke(["count", data_root / "synth_tiny" / "train.json", "-o", tmp_path / "c.json"]),
                    "Permission denied")

    def bug(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(counting, "atomic_write_json", bug)
    res = invoke(["count", data_root / "synth_tiny" / "train.json", "-o", tmp_path / "c.json"])
    assert res.exit_code == 1 and isinstance(res.exception, ZeroDivisionError)


def test_the_verbose_flag_reaches_the_ranks(monkeypatch):
    from ecmctl.core import quiet

    monkeypatch.delenv(quiet.VERBOSE_ENV, raising=False)
    quiet.set_verbose(True)
    assert os.environ[quiet.VERBOSE_ENV] == "1" and quiet.verbose()
    quiet.set_verbose(False)
    assert not quiet.verbose()


# ---------------------------------------------------------------------------------------- slow: real runs


@pytest.mark.slow
def test_train_is_quiet_by_default_and_the_log_keeps_everything(overrides, counts):
    """Row 12: a short default output (the run directory, device, batch/lr, a progress bar), mmengine's
    iteration lines in the run's log file; --verbose shows them."""
    res = invoke(["train", *overrides, "loss=bce", f"counts_file={counts}", "name=quiet"])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) < 30, res.output
    assert "Iter(train)" not in res.output and "System environment" not in res.output
    assert any("run directory:" in s for s in lines) and any("device:" in s for s in lines)
    assert any("per iteration; lr" in s for s in lines) and lines[-1].startswith("finished:")
    (log,) = list((_run_root(overrides) / "quiet").glob("*/*/*.log"))
    text = log.read_text()
    assert "Iter(train) [4/4]" in text and "System environment" in text
    res = invoke(["eval", _only_run(_run_root(overrides)).path])
    assert res.exit_code == 0, res.output
    assert len(res.output.strip().splitlines()) < 30 and "Average Precision" not in res.output
    loud = invoke(["train", *overrides, "loss=bce", f"counts_file={counts}", "name=loud", "--verbose"])
    assert loud.exit_code == 0 and "Iter(train) [4/4]" in loud.output


@pytest.mark.slow
def test_eval_replaces_metrics_only_after_success_and_keeps_the_previous(overrides, counts, tmp_path):
    """Row 1: a good metrics.json survives a wrong checkpoint; a successful evaluation keeps the previous
    metrics as metrics.prev.json."""
    job = [*overrides, "loss=bce", f"counts_file={counts}", f"run_dir={tmp_path / 'run'}"]
    run = training.prepare(compose(job), job, say=lambda m: None)
    run.unlock()
    state = build_model_cpu(load_run_config(run.path, MM_CONFIG)).state_dict()
    torch.save({"state_dict": state, "meta": {"iter": 1}}, run.path / "iter_1.pth")
    good = write_json(run.path / "metrics.json", {"schema": "ecmctl/metrics@1", "bbox": {"AP": 0.561}})
    good_text = good.read_text()
    wrong = tmp_path / "wrong.pth"
    state = dict(state)
    state["roi_head.bbox_head.fc_cls.weight"] = torch.zeros(31, 128)
    torch.save({"state_dict": state}, wrong)
    with unchanged(run.path):
        assert_one_line(invoke(["eval", run.path, "--checkpoint", wrong]), "(31, 128)", "(9, 128)")
    res = invoke(["eval", run.path])
    assert res.exit_code == 0, res.output
    assert (run.path / "metrics.prev.json").read_text() == good_text
    assert json.loads((run.path / "metrics.json").read_text())["checkpoint"].endswith("iter_1.pth")


@pytest.mark.slow
def test_ctrl_c_during_training_ends_interrupted_with_a_resume_line(overrides, counts):
    """Row 12: SIGINT prints how to resume, exits 130 and marks the run interrupted (not failed)."""
    job = [*overrides, "loss=bce", f"counts_file={counts}", "train.max_iters=400", "name=sigint"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ecmctl", "train", *job], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    root = _run_root(overrides) / "sigint"
    deadline = time.time() + 240
    while time.time() < deadline and not any('"running"' in p.read_text() for p in root.glob("*/run.json")):
        time.sleep(0.5)
    time.sleep(3)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground process group
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "Traceback" not in out and "ecmctl train --resume" in out
    assert _only_run(_run_root(overrides)).meta["status"] == "interrupted"
