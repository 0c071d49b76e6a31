"""SIGTERM as Ctrl-C, and final states written whatever signal comes next.

A scheduler or `kill` sends SIGTERM, which by default ends Python with no cleanup at all: every record a stage
had marked `preparing` or `running` would stay so for good. `terminate_as_interrupt()` turns SIGTERM into
`Interrupted`, a KeyboardInterrupt, so that every stage's one `except BaseException` path (run.json,
calibration_status.json, sweep.json) records `interrupted` for both signals; `deferred()` holds SIGINT/SIGTERM
back while such a final record is written, so that a second signal cannot cut it off. The CLI exits 130 after
Ctrl-C and 143 (128 + 15) after SIGTERM.

SLURM jobs keep submitit's own handlers (SIGUSR2: requeue; SIGTERM: ignored, SLURM sends it before the
preemption signal): the job code never calls `terminate_as_interrupt`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

SIGTERM_EXIT = 128 + signal.SIGTERM
SIGINT_EXIT = 128 + signal.SIGINT


class Interrupted(KeyboardInterrupt):
    """SIGTERM (a scheduler or `kill`) handled like Ctrl-C: records end `interrupted`, runs stay resumable."""


def _raise(signum, frame) -> None:
    raise Interrupted(f"signal {signum}")


def exit_code(stop: BaseException) -> int:
    """143 for SIGTERM, 130 for Ctrl-C."""
    return SIGTERM_EXIT if isinstance(stop, Interrupted) else SIGINT_EXIT


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises `Interrupted` inside this block (main thread only: elsewhere Python cannot set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """SIGINT/SIGTERM held back while a final record is written, then delivered: the record is written whole.

    Python runs signal handlers in the main thread whichever thread the kernel picked (the lock's heartbeat, torch's
    own), so masking the main thread would not hold them back; swapping the handlers does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if caught:
            signal.raise_signal(caught[0])
