"""Hydra multirun: `ecmctl train -m loss=ecm,bce seed=0,1,2` runs one job per combination.

Locally the jobs run one after another; with launcher=slurm they are submitted as one SLURM job array.
Every job runs (or is submitted) even when another fails; sweep.json records each job's status, run
directory and failure reason, and the sweep's own status (finished, failed, interrupted).

A sweep is then steered as a whole: `retry_sweep` resubmits its failed or interrupted jobs, each resuming
from its own last checkpoint (sweep.json keeps every earlier attempt), and `evaluate_sweep` evaluates its
finished runs (one SLURM job array, or locally one after another). `ecmctl status` (pipeline/status.py)
shows it.
"""

from __future__ import annotations

import traceback
from pathlib import Path

from ecmctl.core.config import compose, expand_sweep
from ecmctl.core.errors import UserError, as_interrupt, as_user_error, first_line
from ecmctl.core.io import atomic_write_json, load_json
from ecmctl.core.runs import HYDRA_CONFIG, MM_CONFIG, RunDir, new_run_dir, now
from ecmctl.core.schemas import SWEEP_SCHEMA
from ecmctl.core.signals import deferred
from ecmctl.launch import Task, train_task
from ecmctl.launch.slurm import SlurmJob, slurm_executor
from ecmctl.pipeline import train as training
from ecmctl.pipeline.status import SWEEP_JSON, SlurmQuery, collect_status, job_labels, sweep_state


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
        prepared.append((entry, run, training.eval_after_task(run.path) if cfg.train.eval_after else None))
    if prepared:
        ex = slurm_executor(cfgs[0].launcher, cfgs[0].launcher.folder)
        try:
            with ex.batch():
                futures = [ex.submit(SlurmJob(train_task(r.path), after)) for _, r, after in prepared]
        except Exception as e:
            for entry, run, _ in prepared:
                _failed(entry, e)
                run.update(status="failed", stopped=now(), reason=entry["reason"])
            futures = []
        for (entry, run, _), f in zip(prepared, futures):
            entry.update(run_dir=str(run.path), status="submitted", slurm_job=f.job_id)
            run.update(slurm_job=f.job_id)
        for _, run, _ in prepared:
            run.unlock()
    atomic_write_json(root / "sweep.json", summary)


def _open_sweep(sweep_dir: str | Path) -> tuple[Path, dict]:
    """The sweep's directory and sweep.json, after `status` has reconciled its jobs with what runs them."""
    root = Path(sweep_dir)
    if not (root / SWEEP_JSON).is_file():
        raise UserError(f"{root}: not a sweep directory (no {SWEEP_JSON}); pass runs/sweeps/sweep/<timestamp>")
    collect_status(root)  # dead jobs are recorded failed/interrupted first
    return root, load_json(root / SWEEP_JSON)


def _attempt(entry: dict) -> dict:
    """What an attempt left in the sweep's record (kept in `attempts` when the job is retried)."""
    meta = RunDir(entry["run_dir"]).meta if entry.get("run_dir") else {}
    return {k: v for k, v in {"status": entry["status"], "reason": entry.get("reason"), "run_dir": entry.get("run_dir"),
                              "slurm_job": entry.get("slurm_job"), "started": meta.get("started"),
                              "stopped": meta.get("stopped")}.items() if v is not None}


def _resumable(entry: dict) -> bool:
    run_dir = entry.get("run_dir")
    return bool(run_dir) and (Path(run_dir) / MM_CONFIG).is_file() and (Path(run_dir) / HYDRA_CONFIG).is_file()


def retry_sweep(sweep_dir: str | Path, failed: bool = True, interrupted: bool = True, say=print) -> list[dict]:
    """Resubmit the sweep's failed and/or interrupted jobs (interrupted: with the jobs an interrupted local sweep
    never started) with its launcher, each resuming from its own last checkpoint (`ecmctl train --resume`); a
    job stopped before its run directory was ready starts again in a new one. sweep.json keeps every earlier
    attempt. Returns the retried jobs' entries (empty: nothing to retry)."""
    root, summary = _open_sweep(sweep_dir)
    wanted = {"failed"} if failed else set()
    wanted |= {"interrupted", "not started"} if interrupted else set()
    picked = [e for e in summary["jobs"] if e["status"] in wanted]
    labels = dict(zip(map(id, summary["jobs"]), job_labels(summary["jobs"])))
    for i, entry in enumerate(picked):
        entry.setdefault("attempts", []).append(_attempt(entry))
        job = entry["overrides"]
        say(f"[{i + 1}/{len(picked)}] retrying {labels[id(entry)]} ({entry['status']})")
        resume = _resumable(entry)
        entry.update(status="running", reason=None, retried=now())
        entry.pop("traceback", None)
        atomic_write_json(root / SWEEP_JSON, summary)
        try:
            if resume:
                run = training.resume(entry["run_dir"], say)
            else:
                run = training.train(compose(job), job, say, on_run=lambda r, e=entry: e.update(run_dir=str(r.path)))
            entry.update(run_dir=str(run.path), status=run.meta["status"], slurm_job=run.meta.get("slurm_job"))
        except BaseException as e:
            if as_interrupt(e) is not None:
                entry["status"] = "interrupted"
                summary["status"] = sweep_state(summary["jobs"])
                atomic_write_json(root / SWEEP_JSON, summary)
                raise
            _failed(entry, e)
            say(f"[{i + 1}/{len(picked)}] failed: {entry['reason']}")
        atomic_write_json(root / SWEEP_JSON, summary)
    summary["status"] = sweep_state(summary["jobs"])
    atomic_write_json(root / SWEEP_JSON, summary)
    return picked


def evaluate_sweep(sweep_dir: str | Path, overrides: list[str] = (), say=print) -> dict:
    """`ecmctl eval SWEEP_DIR`: every finished run without a current metrics.json (one of its last
    checkpoint), evaluated with the sweep's launcher: SLURM as one job array (inference on the cluster's
    GPUs; returns once it is queued; a run whose evaluation job is still queued is left to it), else one run
    after another here. Runs that have not finished are named in `skipped`."""
    from ecmctl.pipeline.evaluate import eval_config, evaluate, has_current_metrics

    root, summary = _open_sweep(sweep_dir)
    runs = [e for e in summary["jobs"] if e.get("run_dir")]
    finished = [e for e in runs if RunDir(e["run_dir"]).meta.get("status") == "finished"]
    slurm = SlurmQuery()
    queued = [e for e in finished if (e.get("eval") or {}).get("slurm_job") and slurm.available
              and slurm.end(e["eval"]["slurm_job"]) is None]  # an evaluation job of an earlier call, still queued
    todo = [e for e in finished if e not in queued and not has_current_metrics(RunDir(e["run_dir"]))]
    result = {"sweep_json": str(root / SWEEP_JSON), "evaluated": [], "submitted": [], "failed": [],
              "current": len(finished) - len(todo) - len(queued), "queued": len(queued),
              "skipped": [{"overrides": e["overrides"], "status": e["status"]} for e in summary["jobs"]
                          if e not in finished]}
    if not todo:
        return result
    lc = eval_config(Path(todo[0]["run_dir"]), list(overrides)).launcher
    if lc.name == "slurm":
        tasks = [Task("ecmctl.pipeline.evaluate:evaluate", e["run_dir"], {"overrides": list(overrides)}) for e in todo]
        ex = slurm_executor(lc, lc.folder)
        with ex.batch():
            jobs = [ex.submit(t.run) for t in tasks]
        for e, job in zip(todo, jobs):
            e["eval"] = {"slurm_job": job.job_id, "submitted": now()}
            result["submitted"].append({"run_dir": e["run_dir"], "slurm_job": job.job_id})
        say(f"submitted {len(jobs)} evaluations as {ex.cluster} job array {jobs[0].job_id.split('_')[0]}; "
            f"logs in {lc.folder}")
        atomic_write_json(root / SWEEP_JSON, summary)
        return result
    for i, e in enumerate(todo):
        say(f"[{i + 1}/{len(todo)}] evaluating {e['run_dir']}")
        try:
            doc = evaluate(e["run_dir"], overrides=list(overrides), say=say)
        except Exception as err:  # the next run is still evaluated; an interrupt stops them all
            if as_interrupt(err) is not None:
                raise
            e["eval"] = {"status": "failed", "reason": first_line(err), "evaluated": now()}
            result["failed"].append({"run_dir": e["run_dir"], "reason": first_line(err)})
            say(f"[{i + 1}/{len(todo)}] failed: {first_line(err)}")
        else:
            e["eval"] = {"status": "finished", "evaluated": now()}
            result["evaluated"].append(doc)
        atomic_write_json(root / SWEEP_JSON, summary)
    return result
