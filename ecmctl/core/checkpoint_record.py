"""A run's record of the checkpoints it wrote: `checkpoints.json`, each iter_N.pth's size and sha256, written by
rank 0 right after mmengine saved the file (engine/hooks/checkpoint_record.py).

Why: a checkpoint damaged on disk (bytes overwritten, a copy cut short) can still load and evaluate to AP 0 over
the run's good metrics; and a metrics document can only be trusted to describe the run's own model when its
checkpoint's sha256 is one the run recorded. Runs made before the record existed have no checkpoints.json and
are trusted as before.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ecmctl.core.errors import UserError
from ecmctl.core.io import atomic_write_json, load_schema, sha256_file
from ecmctl.core.schemas import CHECKPOINTS_SCHEMA

CHECKPOINTS_JSON = "checkpoints.json"
CHECKPOINT_RE = re.compile(r"iter_(\d+)\.pth")  # what mmengine's CheckpointHook writes (by_epoch=False)


def checkpoint_iter(path: str | os.PathLike) -> int | None:
    """N of a file named exactly iter_N.pth; None for anything else (iter_60.bak.pth, notes.pth, ...)."""
    m = CHECKPOINT_RE.fullmatch(Path(path).name)
    return int(m.group(1)) if m else None


def load_record(run_dir: str | os.PathLike) -> dict[str, dict] | None:
    """file name -> {"bytes", "sha256"} of the run's checkpoints; None for a run without a record."""
    path = Path(run_dir) / CHECKPOINTS_JSON
    if not path.is_file():
        return None
    entries = load_schema(path, CHECKPOINTS_SCHEMA).get("checkpoints")
    if not isinstance(entries, dict):
        raise UserError(f"{path}: field 'checkpoints' is not a mapping; remove the file to trust the checkpoints "
                        "as they are")
    return entries


def record_checkpoint(run_dir: str | os.PathLike, ckpt: str | os.PathLike) -> None:
    """Add `ckpt` (a file of the run) to the record. Entries of files removed since (max_keep_ckpts) stay: a
    metrics.json of such a checkpoint is still the run's own."""
    run_dir, ckpt = Path(run_dir), Path(ckpt)
    entries = dict(load_record(run_dir) or {})
    entries[ckpt.name] = {"bytes": ckpt.stat().st_size, "sha256": sha256_file(ckpt)}
    atomic_write_json(run_dir / CHECKPOINTS_JSON, {"schema": CHECKPOINTS_SCHEMA, "checkpoints": entries})


def intact_size(run_dir: str | os.PathLike, ckpt: Path, record: dict | None) -> bool:
    """A cheap check (no hashing) for choosing the last checkpoint: recorded with this size, or no record."""
    if record is None:
        return True
    entry = record.get(ckpt.name)
    return entry is not None and Path(ckpt).stat().st_size == entry.get("bytes")


def verify_checkpoint(run_dir: str | os.PathLike, ckpt: str | os.PathLike) -> str:
    """The sha256 of `ckpt`, a checkpoint of the run, after checking it against the record (UserError, naming
    the file, for a checkpoint changed since it was written, or one the run did not record)."""
    ckpt = Path(ckpt)
    sha = sha256_file(ckpt)
    record = load_record(run_dir)
    if record is None:
        return sha
    entry = record.get(ckpt.name)
    if entry is None:
        raise UserError(f"{ckpt}: not a checkpoint this run recorded in {CHECKPOINTS_JSON} (written by hand, or cut "
                        "off while it was saved); pass one of " + (", ".join(sorted(record)) or "its checkpoints"))
    if entry.get("sha256") != sha:
        raise UserError(f"{ckpt}: its sha256 {sha[:12]} differs from {str(entry.get('sha256'))[:12]}, recorded when "
                        f"training wrote it ({CHECKPOINTS_JSON}): the file was changed or damaged on disk; restore "
                        "it, or evaluate or resume from another checkpoint")
    return sha
