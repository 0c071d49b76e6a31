"""Shared fixtures: one small synthetic LVIS-format dataset per session, and config overrides using it."""

from __future__ import annotations

import pytest

# the session's dataset: `dataset=synth_small` with these sizes (the config must describe the set on disk)
SYNTH = {"classes": 8, "train_images": 48, "val_images": 16, "image_size": 96, "seed": 0}


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    from ecmctl.dataset.synth import make_dataset

    root = tmp_path_factory.mktemp("data")
    make_dataset(root / "synth_small", num_classes=SYNTH["classes"], train_images=SYNTH["train_images"],
                 val_images=SYNTH["val_images"], image_size=SYNTH["image_size"], seed=SYNTH["seed"],
                 profile="small")
    return root


@pytest.fixture()
def overrides(data_root, tmp_path) -> list[str]:
    """Tiny, fast settings: the session's dataset, a private run_root, a 4-iteration schedule."""
    return [f"data_root={data_root}", f"run_root={tmp_path / 'runs'}", "dataset=synth_small",
            *(f"dataset.synth.{k}={v}" for k, v in SYNTH.items()), "dataset.train_scale=[96,96]",
            "dataset.test_scale=[96,96]", "schedule=smoke", "train.max_iters=4", "train.checkpoint_interval=2",
            "calibrate.max_iters=4", "calibrate.min_iters=2"]
