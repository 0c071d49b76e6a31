"""Hydra multirun: `ecmctl train -m loss=ecm,bce seed=0,1,2` runs one job per combination.

Locally the jobs run one after another; with launcher=slurm they are submitted as one SLURM job array.
"""

from __future__ import annotations

from pathlib import Path

from ecmctl.core.config import compose, expand_sweep
from ecmctl.core.io import atomic_write_json
from ecmctl.core.runs import new_run_dir, now
from ecmctl.core.schemas import SWEEP_SCHEMA
from ecmctl.launch import train_task
from ecmctl.launch.slurm import SlurmJob, slurm_executor
from ecmctl.pipeline import train as training


def run_sweep(overrides: list[str], say=print) -> dict:
    jobs = expand_sweep(overrides)
    cfgs = [compose(job) for job in jobs]  # every combination must compose before anything runs
    root = new_run_dir(Path(cfgs[0].run_root) / "sweeps", "sweep")
    summary = {"schema": SWEEP_SCHEMA, "overrides": overrides, "started": now(), "jobs": []}
    say(f"sweep of {len(jobs)} jobs; summary in {root / 'sweep.json'}")
    if cfgs[0].launcher.name == "slurm":
        runs = [training.prepare(c, j, say) for c, j in zip(cfgs, jobs)]
        for r in runs:  # before submission: each job marks itself running, then finished
            r.update(status="submitted")
        ex = slurm_executor(cfgs[0].launcher, cfgs[0].launcher.folder)
        with ex.batch():
            futures = [ex.submit(SlurmJob(train_task(r.path))) for r in runs]
        for j, r, f in zip(jobs, runs, futures):
            r.unlock()
            summary["jobs"].append({"overrides": j, "run_dir": str(r.path), "status": "submitted",
                                    "slurm_job": f.job_id})
    else:
        for i, (cfg, job) in enumerate(zip(cfgs, jobs)):
            say(f"[{i + 1}/{len(jobs)}] {' '.join(job)}")
            entry = {"overrides": job, "run_dir": None, "status": "failed"}
            summary["jobs"].append(entry)
            try:
                run = training.train(cfg, job, say)
                entry.update(run_dir=str(run.path), status=run.meta["status"])
            finally:
                atomic_write_json(root / "sweep.json", summary)
    summary["finished"] = now()
    atomic_write_json(root / "sweep.json", summary)
    return summary
