"""Small file helpers shared by every stage: atomic writes, hashing, JSON loading with clear errors."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from ecmctl.core.errors import DiskFull, UserError


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_output_dir(path: str | os.PathLike, option: str | None = None) -> Path:
    """Fail before any work if the output's directory is missing (nothing half-written later); `option`: the
    command-line option that named the path, if one did (no message mentions an option the user did not give)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"{path}: output directory {parent} does not exist; create it or choose another "
                        f"{option + ' ' if option else 'output '}path")
    return path


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file (links and relative spellings included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def file_schema(path: str | os.PathLike) -> str | None:
    """The `schema` tag of an ecmctl JSON file, read from its first bytes only (the tag is written first),
    so that checking a 1 GB annotation file costs nothing; None for any other file."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    m = re.match(rb'\s*\{\s*"schema"\s*:\s*"([^"\\]{1,100})"', head)
    return m.group(1).decode() if m else None


def check_writable(directory: str | os.PathLike, what: str = "output") -> Path:
    """Fail before any work when files cannot be created in `directory` (or, when it does not exist yet, in
    its nearest existing parent): a read-only or foreign directory is one line, not a traceback later."""
    d = Path(directory) if str(directory) else Path(".")
    probe = d
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{d}: {probe} is not a directory; choose another {what} path")
    try:
        with tempfile.TemporaryFile(dir=probe, prefix=".ecmctl-probe-"):
            pass
    except OSError as e:
        raise UserError(f"{d}: cannot write into {probe} ({e.strerror}); choose another {what} path") from None
    return d


def make_dirs(directory: str | os.PathLike, what: str = "output directory") -> Path:
    """mkdir -p, with a permission or read-only filesystem error as one line."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise UserError(f"{d}: exists and is not a directory; choose another {what}")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{d}: cannot create the {what} ({e.strerror}); choose another path") from None
    return d


def _starts_with(path: Path, marker: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(marker)) == marker
    except OSError:
        return False


def check_output(path: str | os.PathLike, schema: str | None = None, inputs: tuple = (), option: str = "-o",
                 marker: bytes | None = None, kind: str | None = None) -> Path:
    """Refuse, before any work, an output path that would destroy something the user did not ask to replace:
    one of the command's inputs, a directory, or an existing file that is not an earlier output of the same
    kind (`schema`: its ecmctl tag, or `marker`: how such a file starts; neither: no existing file is
    replaced). Also checks that the directory is writable."""
    path = check_output_dir(path, option)
    if path.is_dir():
        raise UserError(f"{path}: is a directory; pass a file path to {option}")
    for src in inputs:
        if src is not None and Path(src).exists() and same_file(path, src):
            raise UserError(f"{path}: is also this command's input; writing it would replace the input. "
                            f"Choose another {option} path")
    if path.exists() and not ((schema and file_schema(path) == schema) or (marker and _starts_with(path, marker))):
        got = file_schema(path)
        what = f"an ecmctl file of another kind ({got})" if got else "not a file this command wrote"
        want = f" (only an earlier {kind or schema} file is replaced)" if (kind or schema) else ""
        raise UserError(f"{path}: exists and is {what}{want}; choose another {option} path or remove it first")
    check_writable(path.parent if str(path.parent) else ".")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[IO], Any], binary: bool = False) -> Path:
    """Call write(file) on a temp file in the same directory, then rename it over `path`: readers never
    see a partial file. The file gets the mode a plain open() would (0666 less the umask), not mkstemp's
    0600, so colleagues on a shared filesystem can read results as the umask allows."""
    path = check_output_dir(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        kind = DiskFull if e.errno in (errno.ENOSPC, errno.EDQUOT) else UserError
        raise kind(f"{path}: cannot write into {path.parent} ({e.strerror}); choose another output path") \
            from None
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(f"{path}: {e.strerror}; free space in {path.parent} or choose another output path") \
                from e
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")


def load_json(path: str | os.PathLike, what: str = "JSON") -> Any:
    """Load a JSON file, turning every way it can be wrong into one clear UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid {what} ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text {what} file") from None


def load_schema(path: str | os.PathLike, schema: str) -> dict:
    """Load an ecmctl file and check its `schema` tag, so a counts file is never read as weights."""
    data = load_json(path)
    got = data.get("schema") if isinstance(data, dict) else None
    if got != schema:
        raise UserError(f"{path}: field 'schema' is {got!r}, expected {schema!r}; pass a file written by ecmctl")
    return data
