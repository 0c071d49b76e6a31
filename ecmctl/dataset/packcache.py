"""Where packed datasets live: one file per (annotation sha256, options), built by one process per node.

`load()` returns a pack's memory-mapped arrays. The first process to need one takes an exclusive `flock` on
a lock file of the annotation file's path and the options, builds into a temp file and renames it into place;
the others block on the lock, then map the finished file (a node's ranks and their data-loader workers share
its pages). A file that fails its
checks (truncated, altered, another version, another source) is rebuilt, never read. A cache directory that
cannot be written means each process builds a private pack (an unlinked temp file), said once per process.

The annotation file's sha256 is itself cached in `sha256/`, keyed by the file's path, size, mtime, inode and
device: a changed file gets a new hash, and so a new pack. Without such a record the file is hashed while it
is packed (one read of the file): once the hash is known, a valid pack of that hash (made from a copy of the
file, say) stops the build and is used.
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


def _sidecar(stamp: dict, cache_dir: Path) -> Path:
    return cache_dir / "sha256" / (hashlib.sha256(stamp["path"].encode()).hexdigest()[:24] + ".json")


def known_sha256(path: Path, cache_dir: Path) -> str | None:
    """The sha256 recorded for the annotation file as it is now (path, size, mtime, inode, device), or None."""
    stamp = _stamp(path)
    try:
        rec = json.loads(_sidecar(stamp, cache_dir).read_text())
        if rec.get("stamp") == stamp and isinstance(rec.get("sha256"), str):
            return rec["sha256"]
    except (OSError, ValueError):
        pass
    return None


def _remember_sha256(stamp: dict, path: Path, digest: str, cache_dir: Path) -> None:
    """Record the sha256 computed while the file had `stamp`, unless it changed since."""
    side = _sidecar(stamp, cache_dir)
    try:
        if _stamp(path) != stamp:
            return
        side.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{side.name}.", dir=side.parent)
        with os.fdopen(fd, "w") as f:
            json.dump({"stamp": stamp, "sha256": digest}, f)
        os.replace(tmp, side)
    except OSError:
        pass


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
    if cache is None:  # a private pack in the temp directory, unlinked once mapped
        fd, tmp = tempfile.mkstemp(prefix=f"ecmctl-{src.name}.", suffix=".npk")
        os.close(fd)
        try:
            packed.build(src, tmp, variant, classes)
            arrays, header = packed.open_pack(tmp, verify=False)
        finally:
            os.unlink(tmp)
        return arrays, header, None
    opt = packed.options_hash(options)
    pack_path = lambda digest: cache / f"{digest}-{opt}.npk"  # noqa: E731
    sha = known_sha256(src, cache)
    if sha is not None:
        try:
            arrays, header = _open_checked(pack_path(sha), sha, options)
            return arrays, header, pack_path(sha)
        except (FileNotFoundError, packed.CorruptPack):
            pass
    stamp = _stamp(src)
    lock_name = f"{hashlib.sha256(stamp['path'].encode()).hexdigest()[:24]}-{opt}.lock"
    with open(cache / lock_name, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per file and options on a node; the others wait here,
        # then find its hash and map its pack
        found: list = []

        def check(digest: str) -> None:
            """The hash is known: use a valid pack of it if there is one (built by another process, or from a
            copy of the file), else say why it is rebuilt."""
            _remember_sha256(stamp, src, digest, cache)
            try:
                found.append(_open_checked(pack_path(digest), digest, options))
                raise packed.Found
            except FileNotFoundError:
                pass
            except packed.CorruptPack as e:
                _say_once(f"{e}; rebuilding it")

        sha = known_sha256(src, cache)
        if sha is not None:  # recorded by the process that held the lock before
            try:
                check(sha)
            except packed.Found:
                return (*found[0], pack_path(sha))
        fd, tmp = tempfile.mkstemp(prefix=f".{src.name}.", suffix=".tmp", dir=cache)
        os.close(fd)
        try:
            meta = packed.build(src, tmp, variant, classes, sha, on_digest=None if sha is not None else check)
            path = pack_path(meta["source"]["sha256"])
            os.replace(tmp, path)
        except packed.Found:
            Path(tmp).unlink(missing_ok=True)
            return (*found[0], pack_path(found[0][1]["source"]["sha256"]))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        arrays, header = _open_checked(path, meta["source"]["sha256"], options, verify=False)  # written just now
        return arrays, header, path
