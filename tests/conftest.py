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
