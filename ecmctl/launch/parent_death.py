"""Processes that die with their parent: the torchrun agent with `ecmctl`, each rank with the agent.

Without it, SIGKILL of `ecmctl train launcher=torchrun` released the run's lock but left the agent and its ranks
training, and `--resume` started a second trainer in the same directory. Linux's PR_SET_PDEATHSIG has the kernel
signal a process when its parent dies (it survives exec); elsewhere this does nothing (the ranks' shared lock,
`RunDir.training_rank`, still keeps a second trainer out).

`python -m ecmctl.launch.parent_death MODULE ARGS…` runs MODULE as `python -m MODULE ARGS…` would, after asking
for SIGTERM at the parent's death (the agent then stops its ranks as on Ctrl-C).
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel for `sig` when this process's parent dies; exit now if it already has."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(128 + int(sig))


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m ecmctl.launch.parent_death MODULE [ARGS...]")
    die_with_parent(signal.SIGTERM)
    sys.argv = sys.argv[1:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
