"""Whose numbers a run's metrics.json holds: only the run's own model, at a checkpoint the run wrote.

`eval --gt --results` documents (no model), another run's detections or checkpoint never land in a run's
metrics.json (`check_not_run_metrics` refuses such an `-o`), and `report`, `compare` and `eval --reuse` show a
run's metrics.json only after `check_own_metrics` (light: no torch, no mmdet).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath

from ecmctl.core.checkpoint_record import load_record
from ecmctl.core.errors import UserError
from ecmctl.core.runs import RUN_JSON

METRICS_JSON = "metrics.json"
METRICS_PREV_JSON = "metrics.prev.json"  # the metrics.json an evaluation replaced


def check_not_run_metrics(out: str | os.PathLike, what: str) -> None:
    """Refuse an output that is a run's metrics.json (or its .prev): `what` (a results file, another run's
    detections) is not that run's own model, and `report` would show it under the run's name."""
    out = Path(out)
    if out.name in (METRICS_JSON, METRICS_PREV_JSON) and (out.parent / RUN_JSON).is_file():
        raise UserError(f"{out}: is the {out.name} of run {out.parent}, which describes only that run's own model, "
                        f"not {what}; write it outside the run directory")


def check_own_metrics(run_dir: str | os.PathLike, doc: dict, path: str | os.PathLike) -> dict:
    """`doc` (read from `path`, the run's metrics.json) if it scores the run's own model at a checkpoint the run
    wrote, else UserError: never foreign numbers under a run's name."""
    redo = f"re-evaluate the run with `ecmctl eval {run_dir}`"
    if "run" not in doc or not isinstance(doc.get("checkpoint"), str):
        src = f" (results {doc['results']})" if doc.get("results") else ""
        raise UserError(f"{path}: scores a results file{src}, not this run's model; {redo}")
    ckpt = PurePath(doc["checkpoint"])
    # relative to the run (older documents: an absolute path in the directory the run had then)
    own_dirs = (PurePath(str(doc["run"])), PurePath(run_dir))
    inside = ckpt.parent in own_dirs if ckpt.is_absolute() else ".." not in ckpt.parts
    if not inside:
        raise UserError(f"{path}: scores the checkpoint {ckpt}, which is not this run's; {redo}")
    record = load_record(run_dir)
    if record is not None:
        entry = record.get(ckpt.name)
        if entry is None or entry.get("sha256") != doc.get("checkpoint_sha256"):
            raise UserError(f"{path}: scores a checkpoint {ckpt} whose sha256 this run did not record (another "
                            f"model's file); {redo}")
    return doc


def val_set_note(named: list[tuple[str, dict]]) -> str | None:
    """A line saying that metrics documents shown side by side (name, document) were scored on different val
    sets (gt_sha256), whose numbers do not compare; None when they were all scored on the same one."""
    by_gt: dict[str | None, list[str]] = {}
    for name, doc in named:
        by_gt.setdefault(doc.get("gt_sha256"), []).append(name)
    if len(by_gt) <= 1:
        return None
    return "evaluated on different val sets, not comparable side by side: " + " vs ".join(
        f"{', '.join(names)} (sha256 {sha[:12] if sha else 'unrecorded'})" for sha, names in by_gt.items())
