"""Quiet by default: what a command prints is the lines that matter; the stack's full log stays in the run
directory's log file, and `--verbose` shows everything.

Two sources of noise are handled here, before the stack is imported:
- Python warnings the old stack (mmengine, mmdet, mmcv, torch, pycocotools) raises about its own
  deprecations: filtered by message, at the source (`install_warning_filters`).
- mmengine's logger, which writes INFO to the console and to `<work_dir>/<timestamp>/<timestamp>.log`:
  `ecmctl.engine.runner` raises its console handler to WARNING and drops the known deprecation notices
  (`is_known_noise`), while the file keeps every line.

The verbosity travels to torchrun ranks and SLURM jobs through the environment (ECMCTL_VERBOSE).
"""

from __future__ import annotations

import os
import re
import warnings

VERBOSE_ENV = "ECMCTL_VERBOSE"

# (category, message regex) of known third-party warnings about the stack's own deprecations
KNOWN_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (DeprecationWarning, ""),
    (PendingDeprecationWarning, ""),
    (FutureWarning, ""),
    (UserWarning, r"torch\.meshgrid: in an upcoming release, it will be required to pass the indexing"),
    (UserWarning, r"On January 1, 2023, MMCV will release v2\.0\.0"),
    (UserWarning, r".*is deprecated.*"),
    (UserWarning, r"The `clip_grad` .* is deprecated"),
    (UserWarning, r"Failed to search registry with scope"),
    (UserWarning, r"The torch\.cuda\.\*DtypeTensor constructors are no longer recommended"),
    (UserWarning, r"To copy construct from a tensor, it is recommended"),
    (UserWarning, r"__floordiv__ is deprecated"),
    (UserWarning, r"The given NumPy array is not writable"),
    (UserWarning, r"os\.fork\(\) was called"),
    (UserWarning, r"This DataLoader will create .* worker processes in total"),
    (UserWarning, r"No TensorBoard|TensorboardX"),
    (UserWarning, r"Setting (OMP|MKL)_NUM_THREADS environment variable for each process"),
)

# mmengine log records (logger "mmengine") that are deprecation notices, kept out of the console only
KNOWN_LOG_NOISE = re.compile(
    r'"FileClient" will be deprecated|"HardDiskBackend" is the alias of "LocalBackend"|'
    r"is deprecated|will be deprecated|"
    r"Please make sure that the mlflow server is running")  # said for every tracking URI, a file store too


_installed: list = []


def set_verbose(on: bool) -> None:
    """--verbose: everything shows (the filters installed at start-up are taken out again)."""
    os.environ[VERBOSE_ENV] = "1" if on else "0"
    if on:
        for entry in _installed:
            if entry in warnings.filters:
                warnings.filters.remove(entry)
        _installed.clear()
        warnings._filters_mutated()  # type: ignore[attr-defined]  (what warnings.filterwarnings calls)
    else:
        install_warning_filters()


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "0") not in ("", "0", "false", "False")


def install_warning_filters() -> None:
    """Silence the known deprecation warnings of the stack (not in verbose mode). Idempotent; call it
    before the stack is imported (the CLI and every rank's entry point do)."""
    if verbose() or _installed:
        return
    for category, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
        _installed.append(warnings.filters[0])


def is_known_noise(message: str) -> bool:
    return bool(KNOWN_LOG_NOISE.search(message))
