"""Where packed datasets live: one file per (annotation sha256, options), built by one process per node.

`load()` returns a pack's memory-mapped arrays. The first process to need one takes an exclusive `flock` on
`<key>.lock` beside it, builds into a temp file and renames it into place; the others block on the lock, then
map the finished file (a node's ranks and their data-loader workers share its pages). A file that fails its
checks (truncated, altered, another version, another source) is rebuilt, never read. A cache directory that
cannot be written means each process builds a private pack (an unlinked temp file), said once per process.

The annotation file's sha256 (seconds for a GB) is itself cached in `sha256/`, keyed by the file's path, size,
mtime, inode and device: a changed file gets a new hash, and so a new pack.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ecmctl.core.io import sha256_file
from ecmctl.dataset import packed

_told: set[str] = set()


def _say_once(message: str) -> None:
    if message not in _told:
        _told.add(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino,
            "dev": st.st_dev}


def source_sha256(path: Path, cache_dir: Path | None) -> str:
    """sha256 of the annotation file, remembered per (path, size, mtime, inode, device) under cache_dir."""
    stamp = _stamp(path)
    side = None
    if cache_dir is not None:
        side = cache_dir / "sha256" / (hashlib.sha256(stamp["path"].encode()).hexdigest()[:24] + ".json")
        try:
            rec = json.loads(side.read_text())
            if rec.get("stamp") == stamp and isinstance(rec.get("sha256"), str):
                return rec["sha256"]
        except (OSError, ValueError):
            pass
    digest = sha256_file(path, 8 << 20)
    if side is not None and _stamp(path) == stamp:
        try:
            side.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{side.name}.", dir=side.parent)
            with os.fdopen(fd, "w") as f:
                json.dump({"stamp": stamp, "sha256": digest}, f)
            os.replace(tmp, side)
        except OSError:
            pass
    return digest


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory, prefix=".ecmctl-probe-"):
            return True
    except OSError:
        return False


def _open_checked(path: Path, sha: str, options: dict, verify: bool = True):
    arrays, header = packed.open_pack(path, verify=verify)
    if header.get("source", {}).get("sha256") != sha or header.get("options") != options:
        raise packed.CorruptPack(f"{path}: built from another file or with other options")
    return arrays, header


def load(ann_file: str | os.PathLike, variant: str, classes: Sequence[str] | None,
         cache_dir: str | os.PathLike | None) -> tuple[dict[str, np.ndarray], dict, Path | None]:
    """(arrays, header, pack path or None for a private pack) for an annotation file."""
    src = Path(ann_file)
    options = packed.options_key(variant, classes)
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None and not _writable(cache):
        _say_once(f"dataset cache {cache} cannot be written; building {src.name} for this process only "
                  "(in a private temp file; every process builds its own)")
        cache = None
    sha = source_sha256(src, cache)
    if cache is None:  # a private pack in the temp directory, unlinked once mapped
        fd, tmp = tempfile.mkstemp(prefix=f"ecmctl-{src.name}.", suffix=".npk")
        os.close(fd)
        try:
            packed.build(src, tmp, variant, classes, sha)
            arrays, header = packed.open_pack(tmp, verify=False)
        finally:
            os.unlink(tmp)
        return arrays, header, None
    path = cache / f"{sha}-{packed.options_hash(options)}.npk"
    try:
        arrays, header = _open_checked(path, sha, options)
        return arrays, header, path
    except (FileNotFoundError, packed.CorruptPack):
        pass
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per node; the others wait here, then map its file
        try:
            arrays, header = _open_checked(path, sha, options)
            return arrays, header, path
        except FileNotFoundError:
            pass
        except packed.CorruptPack as e:
            _say_once(f"{e}; rebuilding it")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=cache)
        os.close(fd)
        try:
            packed.build(src, tmp, variant, classes, sha)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        arrays, header = _open_checked(path, sha, options, verify=False)  # written by this process just now
        return arrays, header, path
