"""ecmctl.core.environment and `ecmctl info`."""

from __future__ import annotations

import sys

import pytest
from rich.console import Console
from typer.testing import CliRunner

from ecmctl.cli.render import info_table
from ecmctl.core.environment import PACKAGES, _mmcv_ops, collect_info


@pytest.fixture(scope="module")
def info() -> dict:
    return collect_info()


def test_collect_info_keys(info):
    import mmcv
    import numpy
    import torch

    assert set(info) >= {"versions", "mmcv_ops", "mmcv_ops_error", "cuda_available", "cuda_device_count",
                         "cuda_devices"}
    assert set(info["versions"]) == {"python", *PACKAGES}
    assert info["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert info["versions"]["torch"] == torch.__version__
    assert info["versions"]["mmcv"] == mmcv.__version__
    assert info["versions"]["numpy"] == numpy.__version__
    assert info["mmcv_ops"] is True and info["mmcv_ops_error"] is None
    assert info["cuda_available"] == torch.cuda.is_available()
    assert info["cuda_device_count"] == len(info["cuda_devices"]) == (
        torch.cuda.device_count() if torch.cuda.is_available() else 0)


def test_mmcv_ops_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "mmcv.ops", None)  # as with an mmcv built without ops
    ok, error = _mmcv_ops()
    assert ok is False and "mmcv.ops" in error


def _render(table) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


def test_info_table_shows_problems():
    info = {"versions": {"python": "3.11.7", "torch": "2.13.0+cpu", "mmcv": None},
            "mmcv_ops": False, "mmcv_ops_error": "ModuleNotFoundError: No module named 'mmcv._ext' [x]",
            "cuda_available": True, "cuda_device_count": 1, "cuda_devices": ["NVIDIA H100 [80GB]"],
            "cuda_error": None, "torch_cuda": "12.8"}
    text = _render(info_table(info))
    assert "2.13.0+cpu" in text and "not installed" in text
    assert "no (ModuleNotFoundError: No module named 'mmcv._ext' [x])" in text
    assert "CUDA 12.8" in text and "cuda:0" in text and "NVIDIA H100 [80GB]" in text


def test_cli_info():
    import torch

    from ecmctl.cli import app

    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    out = result.output
    for name in ("torch", "mmcv", "mmdet", "mmengine", "lvis", "numpy", "hydra", "typer"):
        assert name in out
    assert torch.__version__ in out and "0.10.7" in out and "3.3.0" in out
    ops_line = next(line for line in out.splitlines() if "mmcv ops compiled" in line)
    assert "yes" in ops_line
