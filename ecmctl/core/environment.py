"""The environment a run records and `ecmctl info` shows: versions, mmcv's compiled ops, CUDA devices."""

from __future__ import annotations

import platform
from importlib import metadata

from ecmctl.core.errors import UserError

# key in collect_info()["versions"] -> distribution name
PACKAGES = {
    "torch": "torch",
    "mmcv": "mmcv",
    "mmdet": "mmdet",
    "mmengine": "mmengine",
    "lvis": "lvis",
    "numpy": "numpy",
    "hydra": "hydra-core",
    "typer": "typer",
}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """Python and the stack's versions from package metadata (nothing is imported), for run.json."""
    return {"python": platform.python_version(), **{k: _version(d) for k, d in PACKAGES.items()}}


def require_device(device: str) -> None:
    """`device=cuda` means CUDA: refuse (UserError) when no GPU is usable, naming what was found, so a broken
    CUDA setup never runs a full-size job on the CPU."""
    if device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise UserError(f"device=cuda, but CUDA is not usable here: torch {torch.__version__} is {build} and sees "
                        f"{torch.cuda.device_count()} GPU(s); fix the CUDA setup or use device=auto or device=cpu")


def device_name(device: str = "auto") -> str:
    """The GPU this process trains on, else the CPU."""
    import torch

    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or 'x86_64'})"


def _mmcv_ops() -> tuple[bool, str | None]:
    """Whether mmcv's compiled ops import and run: a tiny RoIAlign forward on the CPU."""
    try:
        import torch
        from mmcv.ops import RoIAlign

        feats = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
        rois = torch.tensor([[0.0, 0.0, 0.0, 3.0, 3.0]])
        out = RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=2)(feats, rois)
        if tuple(out.shape) != (1, 1, 2, 2) or not bool(torch.isfinite(out).all()):
            return False, f"RoIAlign gave {tuple(out.shape)} {out.flatten().tolist()}"
        return True, None
    except Exception as e:  # mmcv without ops ("No module named 'mmcv._ext'"), ABI mismatch, ...
        return False, f"{type(e).__name__}: {e}".strip()


def _cuda() -> dict:
    try:
        import torch
    except ImportError as e:
        return {"cuda_available": False, "cuda_device_count": 0, "cuda_devices": [], "cuda_error": str(e)}
    available = bool(torch.cuda.is_available())
    count = torch.cuda.device_count() if available else 0
    return {
        "cuda_available": available,
        "cuda_device_count": count,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(count)],
        "cuda_error": None,
        "torch_cuda": torch.version.cuda,  # CUDA version torch was built for (None for a CPU build)
    }


def collect_info() -> dict:
    """Versions (None when not installed), mmcv ops status and CUDA devices, as plain data."""
    ops_ok, ops_error = _mmcv_ops()
    return {
        "versions": versions(),
        "mmcv_ops": ops_ok,
        "mmcv_ops_error": ops_error,
        **_cuda(),
    }
