"""Helpers of the adversarial tests: run a command, check it failed with one line (no traceback), and check
that nothing was created, changed or left half-written (a hash of every file under the given roots)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

from typer.testing import CliRunner

from ecmctl.cli import app

runner = CliRunner()


def snapshot(*roots: Path) -> dict[str, str]:
    """relative path -> sha256 (a file), 'dir', or 'link -> target', for everything under `roots`, hidden
    files and temporary files included."""
    out: dict[str, str] = {}
    for root in roots:
        root = Path(root)
        if not root.exists():
            out[str(root)] = "absent"
            continue
        if root.is_file():
            out[str(root)] = hashlib.sha256(root.read_bytes()).hexdigest()
            continue
        for dirpath, _dirnames, filenames in os.walk(root):
            d = Path(dirpath)
            out[str(d)] = "dir"
            for name in filenames:
                p = d / name
                out[str(p)] = (f"link -> {os.readlink(p)}" if p.is_symlink()
                               else hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def diff(before: dict[str, str], after: dict[str, str]) -> list[str]:
    keys = sorted(set(before) | set(after))
    return [f"{k}: {before.get(k, 'absent')} -> {after.get(k, 'absent')}" for k in keys
            if before.get(k) != after.get(k)]


@contextmanager
def unchanged(*roots: Path):
    """Assert that nothing under `roots` is created, changed or removed inside the block."""
    before = snapshot(*roots)
    yield
    changes = diff(before, snapshot(*roots))
    assert not changes, "files changed:\n" + "\n".join(changes[:20])


def invoke(args: list[str]):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line(result, *needles: str, code: int = 2) -> str:
    """The command failed with exit `code`, printed exactly one `error:` line containing every needle (case
    insensitive), and no traceback; returns that line."""
    out = result.output
    assert result.exit_code == code, f"exit {result.exit_code}:\n{out}\n{result.exception!r}"
    assert "Traceback" not in out, out
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    for n in needles:
        assert n.lower() in errors[0].lower(), f"{n!r} not in {errors[0]!r}"
    return errors[0]


def fails(args: list[str], *needles: str, roots: tuple = (), code: int = 2) -> str:
    """Run `ecmctl ARGS`: one error line with `needles`, exit `code`, nothing changed under `roots`."""
    with unchanged(*roots):
        result = invoke(args)
        line = assert_one_line(result, *needles, code=code)
    return line


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))
    return path


@contextmanager
def read_only(path: Path):
    """A directory nobody can create files in, root included (chattr +i; chmod is ignored by root)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        import pytest

        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)],
                                                            capture_output=True).returncode:
            pytest.skip("cannot make a read-only directory as root here (chattr +i)")
        try:
            yield path
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
