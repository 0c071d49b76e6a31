"""The processes of a torchrun-launched run, found by their command line (tests that kill launchers or ranks)."""

from __future__ import annotations

import contextlib
from pathlib import Path


def worker_pids(marker: str) -> list[int]:
    """The pids of the ecmctl ranks (not torchrun's agent) whose command line names `marker` (a run path)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
                if "ecmctl.launch.worker" in cmd and marker in cmd and "torch.distributed.run" not in cmd:
                    pids.append(int(proc.name))
    return pids
