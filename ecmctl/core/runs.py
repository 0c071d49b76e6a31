"""Run directories: runs/<name>/<timestamp>/ with run.json, the configs, inputs and mmengine's outputs.

A run directory refers to its own files by paths relative to itself (inputs/, checkpoints), so a copied or
moved run is self-contained and never reads another run's files.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import shutil
import subprocess
from pathlib import Path

from ecmctl.core.errors import UserError
from ecmctl.core.io import atomic_write_json, load_json, load_schema, sha256_file
from ecmctl.core.schemas import RUN_SCHEMA

RUN_JSON = "run.json"
HYDRA_CONFIG = "config.yaml"
MM_CONFIG = "mmdet_config.py"
PROGRESS_JSON = "progress.json"  # iteration, loss, time per iteration: written while training, read by `status`


def now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def new_run_dir(run_root: str | os.PathLike, name: str) -> Path:
    """A fresh, unique runs/<name>/<timestamp>/ directory."""
    base = Path(run_root) / name
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path, k = base / stamp, 1
    while True:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            path, k = base / f"{stamp}-{k}", k + 1
        except OSError as e:
            raise UserError(f"{path}: cannot create the run directory ({e.strerror}); choose another "
                            "run_root") from None


def git_commit() -> str | None:
    """The project's commit, so a run can be traced to the code that made it."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


class RunDir:
    """A run directory; `lock()` holds an exclusive flock for as long as this process trains in it."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunDir:
        run = cls(path)
        if not (run.path / RUN_JSON).is_file():
            raise UserError(f"{path}: not an ecmctl run directory (no {RUN_JSON}); pass runs/<name>/<timestamp>")
        load_schema(run.path / RUN_JSON, RUN_SCHEMA)
        return run

    @property
    def meta(self) -> dict:
        p = self.path / RUN_JSON
        return load_json(p) if p.is_file() else {"schema": RUN_SCHEMA}

    def update(self, **fields) -> dict:
        meta = {**self.meta, **fields}
        atomic_write_json(self.path / RUN_JSON, meta)
        return meta

    def lock(self) -> None:
        fd = os.open(self.path / ".lock", os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"{self.path}: locked, another process is training in it") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def held_elsewhere(self) -> bool:
        """True while another process holds this run's lock: flock is released by the kernel when its holder
        dies, so a `running` run nobody holds is dead (how `status` reconciles local and torchrun runs)."""
        try:
            fd = os.open(self.path / ".lock", os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing releases a lock taken here
        return False

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @staticmethod
    def check_new(path: str | os.PathLike) -> Path:
        """Refuse, before any work, a run_dir that already holds something (a finished or running run is
        never overwritten or mixed with another's checkpoints) or that cannot be created."""
        from ecmctl.core.io import check_writable

        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            if (path / RUN_JSON).is_file():
                raise UserError(f"run_dir={path}: already a run directory; continue it with `ecmctl train "
                                f"--resume {path}` or choose a new run_dir")
            what = "is not a directory" if not path.is_dir() else "is not empty"
            raise UserError(f"run_dir={path}: {what}; choose a new run_dir")
        check_writable(path, "run_dir")
        return path

    @classmethod
    def create(cls, path: str | os.PathLike) -> RunDir:
        """A new run in `path`, which must not hold anything yet: a finished or running run is never
        overwritten or mixed with another's checkpoints."""
        path = cls.check_new(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{path}: cannot create the run directory ({e.strerror}); choose another "
                            "run_root or run_dir") from None
        return cls(path)

    def relative(self, path: str | os.PathLike | None) -> str | None:
        """`path` relative to the run directory (how run.json refers to the run's own files)."""
        return None if path is None else os.path.relpath(Path(path).resolve(), self.path.resolve())

    def save_input(self, key: str, src: str | os.PathLike, name: str | None = None) -> Path:
        """Copy an input file (counts, calibration, weights) to inputs/<name> and record its sha256."""
        dst_dir = self.path / "inputs"
        dst_dir.mkdir(exist_ok=True)
        dst = dst_dir / (name or Path(src).name)
        if Path(src).resolve() != dst.resolve():
            shutil.copyfile(src, dst)
        inputs = {**self.meta.get("inputs", {}), key: {"path": self.relative(dst), "source": str(Path(src).resolve()),
                                                       "sha256": sha256_file(dst)}}
        self.update(inputs=inputs)
        return dst

    def input_path(self, key: str) -> Path | None:
        """The run's copy of input `key` (None when the run has none)."""
        entry = (self.meta.get("inputs") or {}).get(key)
        if not entry:
            return None
        given = Path(entry["path"] if isinstance(entry, dict) else entry)
        return self.path / (given if not given.is_absolute() else Path("inputs") / given.name)

    def last_checkpoint(self) -> Path | None:
        """This run's newest checkpoint, looked up inside this directory only (mmengine's last_checkpoint
        marker holds an absolute path, which in a copied run points at the original)."""
        marker = self.path / "last_checkpoint"
        if marker.is_file():
            ckpt = self.path / Path(marker.read_text().strip()).name
            if ckpt.is_file():
                return ckpt
        ckpts = sorted(self.path.glob("iter_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
        return ckpts[-1] if ckpts else None
