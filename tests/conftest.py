"""Shared fixtures: one small synthetic LVIS-format dataset per session, and config overrides using it."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """`dataset=synth_tiny` (8 classes, 48 train / 16 val images of 96 px), generated from its config."""
    from ecmctl.core.config import compose
    from ecmctl.pipeline.prepare import ensure_dataset

    root = tmp_path_factory.mktemp("data")
    ensure_dataset(compose([f"data_root={root}", "dataset=synth_tiny"]))
    return root


@pytest.fixture()
def overrides(data_root, tmp_path) -> list[str]:
    """Tiny, fast settings: the session's dataset, a private run_root, a 4-iteration schedule."""
    return [f"data_root={data_root}", f"run_root={tmp_path / 'runs'}", "dataset=synth_tiny",
            "dataset.train_scale=[96,96]", "dataset.test_scale=[96,96]", "schedule=smoke", "train.max_iters=4",
            "train.checkpoint_interval=2", "calibrate.max_iters=4", "calibrate.min_iters=2"]


@pytest.fixture(autouse=True)
def _no_closed_log_files():
    """A Runner built in this process closes its log file at the end but leaves the handler on mmengine's
    current logger, and a module built by a later test writes its init info there: drop such handlers."""
    yield
    import logging
    import sys

    mmlogging = sys.modules.get("mmengine.logging")
    if mmlogging is None:
        return
    for logger in list(mmlogging.MMLogger._instance_dict.values()):
        for h in list(logger.handlers):
            if isinstance(h, logging.FileHandler) and (h.stream is None or h.stream.closed):
                logger.removeHandler(h)
