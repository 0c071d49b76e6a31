"""`ecmctl status [PATH]`: one row per run of a sweep, a run directory or a run_root: state, iteration of the
maximum, last loss, ETA, AP/APr, and the failure reason.

A run whose run.json says `running` or `submitted` is reconciled with what actually runs it: the SLURM job
(squeue, then sacct, or `scontrol show job` where SLURM keeps no accounting), or for local and torchrun runs
the holder of the run's lock. A dead one is recorded `failed` (with SLURM's reason) or `interrupted`, in
run.json and in the sweep's sweep.json, so that `ecmctl retry` finds it.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ecmctl.core.errors import UserError
from ecmctl.core.io import atomic_write_json, load_json
from ecmctl.core.runs import PROGRESS_JSON, RUN_JSON, RunDir, now
from ecmctl.pipeline.compare import METRICS_JSON, SWEEP_JSON

LIVE = ("running", "submitted")  # states a dead job can leave behind
DONE = ("finished", "failed", "interrupted", "not started")
# SLURM end states (sacct/scontrol): CANCELLED is a user's stop (resumable: interrupted), the rest are failures
SLURM_FAILED = ("FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED", "COMPLETED")
NO_SLURM = ("no SLURM commands (squeue, sacct) on this machine: SLURM jobs cannot be reconciled; their state is "
            "what run.json says")


@dataclass
class SlurmQuery:
    """What SLURM says of a job: alive (queued, running, requeued), or how it ended. None: cannot tell."""

    available: bool = field(default_factory=lambda: shutil.which("squeue") is not None)

    def end(self, job: str) -> tuple[str, str] | None:
        """None while the job is queued or running; else (STATE, detail) of how it ended."""
        if self._run("squeue", "-h", "-j", job, "-o", "%T"):
            return None
        acct = self._run("sacct", "-j", job, "-X", "-P", "-n", "--format=State,ExitCode,Reason")
        if acct:
            state, code, reason = (acct.splitlines()[0].split("|") + ["", ""])[:3]
            return state.split()[0], _detail(code, reason)
        ctl = self._run("scontrol", "-o", "show", "job", job)  # SLURM without accounting: until MinJobAge
        if ctl:
            kv = dict(item.split("=", 1) for item in ctl.split() if "=" in item)
            return kv.get("JobState", "UNKNOWN"), _detail(kv.get("ExitCode", ""), kv.get("Reason", ""))
        return "UNKNOWN", "not in the queue, and SLURM has no record of it"

    @staticmethod
    def _run(*cmd: str) -> str:
        if shutil.which(cmd[0]) is None:
            return ""
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return res.stdout.strip() if res.returncode == 0 else ""


def _detail(code: str, reason: str) -> str:
    parts = [f"exit {code}" if code and code != "0:0" else "", reason if reason and reason != "None" else ""]
    return ", ".join(p for p in parts if p)


def reconcile(run: RunDir, job: str | None, slurm: SlurmQuery) -> dict:
    """run.json, with a dead `running`/`submitted` run recorded as it ended (`failed` or `interrupted`)."""
    meta = run.meta
    if meta.get("status") not in LIVE:
        return meta
    job = meta.get("slurm_job") or job
    if meta.get("launcher") == "slurm" or job:
        if not slurm.available or not job:
            return meta  # unknown job id: submitted a moment ago
        end = slurm.end(str(job))
        if end is None:
            return meta
        state, detail = end
        # a job SLURM no longer knows (no accounting: `scontrol` forgets after MinJobAge, and a pending array task
        # cancelled leaves no record) that never started could not fail: resumable, like a cancelled one
        never_started = state == "UNKNOWN" and meta.get("status") == "submitted"
        status = "interrupted" if state.startswith("CANCELLED") or never_started else "failed"
        reason = f"SLURM job {job}: {state}" + (f" ({detail})" if detail else "")
        if state == "COMPLETED":
            reason += ", without recording the run's end"
    else:
        if run.held_elsewhere():
            return meta
        status, reason = "interrupted", "the process that trained it is gone (no one holds the run's lock)"
    if run.meta.get("status") not in LIVE:  # it ended on its own while we asked
        return run.meta
    return run.update(status=status, stopped=now(), reason=reason, reconciled=now())


def _progress(run: RunDir, meta: dict) -> dict:
    p = run.path / PROGRESS_JSON
    prog = load_json(p) if p.is_file() else {}
    it, total = prog.get("iter"), prog.get("max_iters")
    eta = None
    if meta.get("status") == "running" and it is not None and prog.get("iter_time_s") and total:
        eta = max(0.0, (total - it) * float(prog["iter_time_s"]))
    return {"iter": it, "max_iters": total or meta.get("max_iters"), "loss": prog.get("loss"), "eta_s": eta}


def _metrics(run: RunDir) -> dict:
    p = run.path / METRICS_JSON
    if not p.is_file():
        return {"AP": None, "APr": None, "metrics_checkpoint": None}
    doc = load_json(p)
    box = doc.get("bbox") or {}
    return {"AP": box.get("AP"), "APr": box.get("APr"), "metrics_checkpoint": doc.get("checkpoint")}


def run_row(run: RunDir, job: str | None, slurm: SlurmQuery) -> dict:
    meta = reconcile(run, job, slurm)
    ended = meta.get("status") in ("failed", "interrupted")  # a resumed run's earlier reason is not its own
    return {"run_dir": str(run.path), "name": meta.get("name"), "status": meta.get("status"),
            "reason": meta.get("reason") if ended else None, "slurm_job": meta.get("slurm_job") or job,
            "launcher": meta.get("launcher"), **_progress(run, meta), **_metrics(run)}


def sweep_state(jobs: list[dict]) -> str:
    """A sweep's own status from its jobs': running until every job has ended."""
    states = {j["status"] for j in jobs}
    if states - set(DONE):
        return "running"
    return "finished" if states <= {"finished"} else "failed" if "failed" in states else "interrupted"


def sync_sweep(root: Path, summary: dict, rows: list[dict | None]) -> dict:
    """sweep.json's jobs take their runs' states (a run records how it ended, the sweep learns it here)."""
    changed = False
    for entry, row in zip(summary["jobs"], rows):
        if row is None:
            continue
        new = {"status": row["status"], "reason": row["reason"], **({"slurm_job": row["slurm_job"]}
                                                                     if row["slurm_job"] else {})}
        if any(entry.get(k) != v for k, v in new.items()):
            entry.update(new)
            changed = True
    state = sweep_state(summary["jobs"])
    if state != summary.get("status"):
        summary.update(status=state, failed=sum(j["status"] == "failed" for j in summary["jobs"]),
                       **({"finished": now()} if state != "running" else {}))
        changed = True
    if changed:
        atomic_write_json(root / SWEEP_JSON, summary)
    return summary


def job_labels(jobs: list[dict]) -> list[str]:
    """Each sweep job by the overrides the sweep varies (`loss=bce seed=0`), not the ones all jobs share."""
    common = set.intersection(*(set(j["overrides"]) for j in jobs)) if len(jobs) > 1 else set()
    return [" ".join(o for o in j["overrides"] if o not in common) for j in jobs]


def collect_status(path: str | Path) -> dict:
    """The status document of a sweep directory, a run directory, or a run_root or runs/<name> directory (every
    run under it)."""
    path = Path(path)
    slurm = SlurmQuery()
    notes: list[str] = []
    if (path / SWEEP_JSON).is_file():
        kind, summary = "sweep", load_json(path / SWEEP_JSON)
        runs = [(RunDir(e["run_dir"]) if e.get("run_dir") and (Path(e["run_dir"]) / RUN_JSON).is_file() else None,
                 e.get("slurm_job")) for e in summary["jobs"]]
    elif (path / RUN_JSON).is_file():
        kind, summary, runs = "run", None, [(RunDir(path), None)]
    elif path.is_dir() and (found := sorted(p.parent for pattern in (f"*/{RUN_JSON}", f"*/*/{RUN_JSON}")
                                            for p in path.glob(pattern))):  # runs/<name>/ or a run_root
        kind, summary, runs = "run_root", None, [(RunDir(p), None) for p in found]
    else:
        raise UserError(f"{path}: not a sweep directory (sweep.json), a run directory (run.json) or a run_root "
                        "(runs/<name>/<timestamp>/run.json); pass e.g. runs/sweeps/sweep/<timestamp>")
    rows = [run_row(run, job, slurm) if run is not None else None for run, job in runs]
    if not slurm.available and any(r and r["status"] in LIVE and (r["launcher"] == "slurm" or r["slurm_job"])
                                   for r in rows):
        notes.append(NO_SLURM)
    if summary is not None:
        summary = sync_sweep(path, summary, rows)
        rows = [row if row is not None else {"run_dir": None, "name": " ".join(e["overrides"]),
                                             "status": e["status"], "reason": e.get("reason"),
                                             "slurm_job": e.get("slurm_job"), "launcher": None, "iter": None,
                                             "max_iters": None, "loss": None, "eta_s": None, "AP": None,
                                             "APr": None, "metrics_checkpoint": None}
                for e, row in zip(summary["jobs"], rows)]
        for e, row, label in zip(summary["jobs"], rows, job_labels(summary["jobs"])):
            row.update(overrides=e["overrides"], label=label, attempts=len(e.get("attempts", [])) + 1)
    else:
        for row in rows:
            row["label"] = str(Path(row["run_dir"]).relative_to(path)) if kind == "run_root" else row["name"]
    return {"path": str(path), "kind": kind, "status": summary["status"] if summary else None,
            "rows": rows, "notes": notes, "checked": now()}


def is_done(doc: dict) -> bool:
    """Whether every run has ended (`status --watch` stops then)."""
    return all(r["status"] not in LIVE and r["status"] not in ("preparing", "ready", "pending") for r in doc["rows"])
