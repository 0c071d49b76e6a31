"""Hydra multirun: `ecmctl train -m loss=ecm,bce seed=0,1,2` runs one job per combination.

Locally the jobs run one after another; with launcher=slurm they are submitted as one SLURM job array.
Every job runs (or is submitted) even when another fails; sweep.json records each job's status, run
directory and failure reason, and the sweep's own status (finished, failed, interrupted).
"""

from __future__ import annotations

import traceback
from pathlib import Path

from ecmctl.core.config import compose, expand_sweep
from ecmctl.core.errors import as_user_error, first_line
from ecmctl.core.io import atomic_write_json
from ecmctl.core.runs import new_run_dir, now
from ecmctl.core.schemas import SWEEP_SCHEMA
from ecmctl.core.signals import deferred
from ecmctl.launch import train_task
from ecmctl.launch.slurm import SlurmJob, slurm_executor
from ecmctl.pipeline import train as training


def _failed(entry: dict, e: BaseException) -> None:
    """Record a job's failure: the one-line reason, and for a bug (not a user error) its traceback."""
    user = as_user_error(e)
    entry.update(status="failed", reason=first_line(user if user is not None else e))
    if user is None:
        entry["traceback"] = "".join(traceback.format_exception(type(e), e, e.__traceback__))


def failed_jobs(summary: dict) -> list[dict]:
    return [j for j in summary["jobs"] if j["status"] == "failed"]


def run_sweep(overrides: list[str], say=print) -> dict:
    jobs = expand_sweep(overrides)
    cfgs = [compose(job) for job in jobs]  # every combination must compose before anything runs
    root = new_run_dir(Path(cfgs[0].run_root) / "sweeps", "sweep")
    summary = {"schema": SWEEP_SCHEMA, "overrides": overrides, "started": now(), "status": "running", "jobs": []}
    say(f"sweep of {len(jobs)} jobs; summary in {root / 'sweep.json'}")
    entries = [{"overrides": job, "run_dir": None, "status": "pending"} for job in jobs]
    summary["jobs"] = entries
    try:  # sweep.json exists, `running`, from the start: whatever stops the sweep leaves it final
        atomic_write_json(root / "sweep.json", summary)
        if cfgs[0].launcher.name == "slurm":
            _submit_array(cfgs, jobs, entries, root, summary, say)
        else:
            for i, (cfg, job, entry) in enumerate(zip(cfgs, jobs, entries)):
                say(f"[{i + 1}/{len(jobs)}] {' '.join(job)}")
                entry["status"] = "running"
                atomic_write_json(root / "sweep.json", summary)
                try:
                    run = training.train(cfg, job, say, on_run=lambda r, e=entry: e.update(run_dir=str(r.path)))
                    entry.update(run_dir=str(run.path), status=run.meta["status"])
                except Exception as e:  # the next job still runs; KeyboardInterrupt stops the sweep
                    _failed(entry, e)
                    say(f"[{i + 1}/{len(jobs)}] failed: {entry['reason']}")
                atomic_write_json(root / "sweep.json", summary)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (core/signals.py)
        with deferred():
            for entry in entries:
                if entry["status"] in ("pending", "running"):
                    entry["status"] = "interrupted" if entry["status"] == "running" else "not started"
            summary.update(status="interrupted", stopped=now())
            atomic_write_json(root / "sweep.json", summary)
        raise
    failed = failed_jobs(summary)
    summary.update(status="failed" if failed else "finished", finished=now(), failed=len(failed))
    atomic_write_json(root / "sweep.json", summary)
    summary["sweep_json"] = str(root / "sweep.json")
    return summary


def _submit_array(cfgs, jobs, entries, root: Path, summary: dict, say) -> None:
    """Prepare every job (a failing one is recorded, the others go on), then submit the prepared ones as
    one SLURM job array."""
    prepared = []
    for cfg, job, entry in zip(cfgs, jobs, entries):
        try:
            run = training.prepare(cfg, job, say, on_run=lambda r, e=entry: e.update(run_dir=str(r.path)))
        except Exception as e:
            _failed(entry, e)
            say(f"{' '.join(job)}: failed: {entry['reason']}")
            continue
        run.update(status="submitted")  # before submission: each job marks itself running, then finished
        prepared.append((entry, run))
    if prepared:
        ex = slurm_executor(cfgs[0].launcher, cfgs[0].launcher.folder)
        try:
            with ex.batch():
                futures = [ex.submit(SlurmJob(train_task(r.path))) for _, r in prepared]
        except Exception as e:
            for entry, run in prepared:
                _failed(entry, e)
                run.update(status="failed", stopped=now(), reason=entry["reason"])
            futures = []
        for (entry, run), f in zip(prepared, futures):
            entry.update(run_dir=str(run.path), status="submitted", slurm_job=f.job_id)
        for _, run in prepared:
            run.unlock()
    atomic_write_json(root / "sweep.json", summary)
