"""Small file helpers shared by every stage: atomic writes, hashing, JSON loading with clear errors."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from ecmctl.core.errors import UserError


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_output_dir(path: str | os.PathLike) -> Path:
    """Fail before any work if the output's directory is missing (nothing half-written later)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"{path}: output directory {parent} does not exist; create it or choose another -o path")
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
        raise UserError(f"{path}: cannot write into {path.parent} ({e.strerror}); choose another output path") \
            from None
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
