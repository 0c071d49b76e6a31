"""Run directories: runs/<name>/<timestamp>/ with run.json, the configs, inputs and mmengine's outputs.

A run directory refers to its own files by paths relative to itself (inputs/, checkpoints), so a copied or
moved run is self-contained and never reads another run's files.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ecmctl.core.errors import DiskFull, UserError
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


def _flock_held(path: Path, how: int) -> bool:
    """Whether another open file description holds a flock on `path` that conflicts with `how`."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock taken here
    return False


def git_commit() -> str | None:
    """The project's commit, so a run can be traced to the code that made it."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


LOCK = ".lock"  # flock-ed by the process that trains the run; holds the owner record
RANKS_LOCK = ".ranks.lock"  # shared flock of every training rank (torchrun, SLURM tasks)
RESERVE = ".space-reserve"  # freed when run.json cannot be written for lack of space, so the final state still is
RESERVE_BYTES = 64 * 1024
OWNER_BYTES = 512  # the owner record is padded to a fixed size: rewritten in place by one pwrite, never truncated
HEARTBEAT_S = 30.0
STALE_S = 180.0  # a heartbeat older than this is a dead owner's (a preempted node, a SIGKILLed job)
LOCK_WAIT_S = 60.0  # how long a SLURM job waits for its submitter to let go of the lock


def slurm_job_id() -> str | None:
    """This SLURM job's id as submitit and squeue write it: N, or N_i for a task of job array N."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def _host() -> str:
    return socket.gethostname()


def owner_record() -> dict:
    """Who trains a run: host, pid, SLURM job (its requeued self on another node is the same owner), heartbeat."""
    t = time.time()
    return {"host": _host(), "pid": os.getpid(), "slurm_job_id": slurm_job_id(), "started": t, "heartbeat": t}


def describe_owner(owner: dict) -> str:
    job = f", SLURM job {owner['slurm_job_id']}" if owner.get("slurm_job_id") else ""
    age = time.time() - float(owner.get("heartbeat") or 0)
    return f"host {owner.get('host')} pid {owner.get('pid')}{job}, heartbeat {age:.0f} s ago"


class RunDir:
    """A run directory; `lock()` makes this process the run's one writer until `unlock()`.

    Three things say a run is trained elsewhere, each covering what the others cannot see: the flock of `.lock`
    (this host, released by the kernel when its holder dies), the shared flock of `.ranks.lock` (training ranks,
    which outlive their launcher for as long as their own shutdown takes), and the owner record in `.lock` with a
    heartbeat refreshed every HEARTBEAT_S (other nodes: flock does not reach across NFS clients)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None
        self._beat: tuple[threading.Thread, threading.Event] | None = None

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
        """Merge `fields` into run.json. On a full disk the run's reserve is given up first, so that a run's last
        word (`failed: no space left`) is still written."""
        meta = {**self.meta, **fields}
        try:
            atomic_write_json(self.path / RUN_JSON, meta)
        except DiskFull:
            (self.path / RESERVE).unlink(missing_ok=True)
            atomic_write_json(self.path / RUN_JSON, meta)
        return meta

    def owner(self) -> dict | None:
        """The owner record in the lock file (None: none, or not readable)."""
        try:
            text = (self.path / LOCK).read_text().strip()
            owner = json.loads(text) if text.startswith("{") else None
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    def _foreign_live_owner(self) -> dict | None:
        """An owner on another host whose heartbeat is fresh (its own requeued SLURM job aside)."""
        owner = self.owner()
        if not owner or owner.get("host") == _host():
            return None
        job = owner.get("slurm_job_id")
        if job and job == owner_record()["slurm_job_id"]:
            return None  # this job's previous run, before SLURM requeued it here
        beat = owner.get("heartbeat")
        return owner if isinstance(beat, (int, float)) and time.time() - beat < STALE_S else None

    def _ranks_training(self) -> bool:
        return _flock_held(self.path / RANKS_LOCK, fcntl.LOCK_EX)

    def lock(self, wait_s: float = 0.0) -> None:
        """Become the run's one writer, or refuse (UserError) while a process here, a rank or a live owner on
        another host trains it; `wait_s`: keep trying that long (a SLURM job while its submitter lets go)."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return self._try_lock()
            except UserError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)

    def _try_lock(self) -> None:
        fd = os.open(self.path / LOCK, os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = self.owner()
            raise UserError(f"{self.path}: locked, another process is training it"
                            + (f" ({describe_owner(owner)})" if owner else "")) from None
        try:
            if (owner := self._foreign_live_owner()) is not None:
                raise UserError(f"{self.path}: locked, trained on another node ({describe_owner(owner)}); if that "
                                f"node is gone, the lock is free {STALE_S:.0f} s after its last heartbeat")
            if self._ranks_training():
                raise UserError(f"{self.path}: locked, ranks of an earlier launch still train it (their launcher "
                                "died); they stop within seconds, try again")
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd
        self._write_owner(owner_record())
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(stop,), name="ecmctl-lock-heartbeat", daemon=True)
        beat.start()
        self._beat = (beat, stop)
        try:  # room for the final run.json on a disk that fills up later
            if not (self.path / RESERVE).exists():
                with open(self.path / RESERVE, "wb") as f:
                    f.truncate(RESERVE_BYTES)
                    os.posix_fallocate(f.fileno(), 0, RESERVE_BYTES)
        except OSError:
            (self.path / RESERVE).unlink(missing_ok=True)

    def _write_owner(self, owner: dict | None) -> None:
        text = json.dumps(owner) if owner else ""
        os.pwrite(self._lock_fd, text.ljust(OWNER_BYTES).encode()[:OWNER_BYTES], 0)

    def _heartbeat(self, stop: threading.Event) -> None:
        owner = self.owner() or owner_record()
        while not stop.wait(HEARTBEAT_S):
            owner["heartbeat"] = time.time()
            with contextlib.suppress(OSError):  # the disk went away: the record stays, and goes stale
                self._write_owner(owner)

    def held_elsewhere(self) -> bool:
        """True while another live process trains this run: it holds the flock (released by the kernel when its
        holder dies, so a `running` run nobody holds is dead: how `status` reconciles local and torchrun runs),
        its ranks still train, or its owner on another host has a fresh heartbeat (SLURM on other nodes)."""
        return (_flock_held(self.path / LOCK, fcntl.LOCK_EX) or self._ranks_training()
                or self._foreign_live_owner() is not None)

    def unlock(self) -> None:
        if self._beat is not None:
            beat, stop = self._beat
            stop.set()
            beat.join()
            self._beat = None
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                self._write_owner(None)
            os.close(self._lock_fd)
            self._lock_fd = None

    @contextlib.contextmanager
    def training_rank(self) -> Iterator[None]:
        """Held by every rank while it trains (shared flock of `.ranks.lock`): `lock()` refuses until the last
        rank is gone, also when the launcher that held the run's lock was killed first."""
        fd = os.open(self.path / RANKS_LOCK, os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # blocks only while a `lock()` probes it, a moment
            yield
        finally:
            os.close(fd)

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
        marker holds an absolute path, which in a copied run points at the original). Only files named
        iter_N.pth count (a stray iter_60.bak.pth is ignored); in a run with a checkpoint record, only the
        recorded ones whose size matches (a file cut off while it was saved is never the last one)."""
        from ecmctl.core.checkpoint_record import checkpoint_iter, intact_size, load_record

        record = load_record(self.path)
        marker = self.path / "last_checkpoint"
        if marker.is_file():
            ckpt = self.path / Path(marker.read_text().strip()).name
            if ckpt.is_file() and checkpoint_iter(ckpt) is not None and intact_size(self.path, ckpt, record):
                return ckpt
        ckpts = [(n, p) for p in self.path.glob("iter_*.pth") if (n := checkpoint_iter(p)) is not None
                 and p.is_file() and intact_size(self.path, p, record)]
        return max(ckpts)[1] if ckpts else None
