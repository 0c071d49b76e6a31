"""mmengine's file backend for the run's checkpoints, with every file written to a temporary name and renamed.

mmengine's LocalBackend opens `iter_N.pth` and writes into it: a full disk (ENOSPC mid-write) or a SIGKILL left a
truncated `iter_N.pth`, which `RunDir.last_checkpoint` then found. Written whole or not at all, the newest
`iter_*.pth` is always complete. CheckpointHook takes it as `backend_args=dict(backend="ecmctl_atomic")`
(engine/builder.py); importing this module registers it (it is among the config's custom_imports).
"""

from __future__ import annotations

import os
from pathlib import Path

from mmengine.fileio import LocalBackend, register_backend

from ecmctl.core.io import atomic_write

BACKEND = "ecmctl_atomic"


class AtomicLocalBackend(LocalBackend):
    """LocalBackend whose `put`/`put_text` write a temporary file in the same directory, then rename it."""

    def put(self, obj: bytes, filepath: str | os.PathLike) -> None:
        Path(filepath).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(filepath, lambda f: f.write(obj), binary=True)

    def put_text(self, obj: str, filepath: str | os.PathLike, encoding: str = "utf-8") -> None:
        Path(filepath).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(filepath, lambda f: f.write(obj.encode(encoding)), binary=True)


register_backend(BACKEND, AtomicLocalBackend, force=True)
