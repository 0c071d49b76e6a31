"""Backbone checkpoints (torchvision://, open-mmlab://, URLs, files): the cache mmengine reads them from,
fetching them ahead of time on a login node (`ecmctl prefetch`), and one clear line on an offline
compute node instead of the ranks' URLError tracebacks.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from ecmctl.core.errors import UserError, first_line

DOWNLOAD_TIMEOUT_S = 20


def checkpoint_url(name: str) -> str | None:
    """The URL mmengine downloads `name` from; None for a local file."""
    from mmengine.runner import checkpoint as ckpt

    from ecmctl.engine import compat

    compat.apply()  # torchvision:// names resolve without torchvision
    scheme, _, rest = name.partition("://")
    if scheme in ("torchvision", "modelzoo"):
        table = ckpt.get_torchvision_models()
    elif scheme in ("open-mmlab", "openmmlab"):
        table = ckpt.get_external_models()
        rest = ckpt.get_deprecated_model_names().get(rest, rest)
    elif scheme in ("http", "https"):
        return name
    else:
        return None
    if rest not in table:
        raise UserError(f"detector.pretrained={name!r}: mmengine knows no checkpoint {rest!r}; give a URL or a file")
    url = table[rest]
    if not url.startswith(("http://", "https://")):
        raise UserError(f"detector.pretrained={name!r} maps to {url!r}, not a URL; download it and pass "
                        "detector.pretrained=PATH")
    return url


def cache_path(url: str) -> Path:
    """Where torch's hub (and so mmengine's load_url) keeps the download of `url`."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _offline(name: str, url: str, path: Path, why: str) -> UserError:
    return UserError(f"detector.pretrained={name}: not in the cache ({path}) and {url} cannot be downloaded "
                     f"({why}); on a machine with internet run `ecmctl prefetch` with the same overrides (the "
                     "cache is $TORCH_HOME/hub), or pass detector.pretrained=PATH to a local file, or "
                     "detector.pretrained=null to train from random init")


def ensure_checkpoint(name: str, say=print, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """The local file of checkpoint `name`, downloaded into the cache first when missing (UserError when
    that fails: an offline node), so that training never starts without its initial weights."""
    url = checkpoint_url(name)
    if url is None:
        path = Path(name).expanduser()
        if not path.is_file():
            raise UserError(f"detector.pretrained={name}: no such file; pass a checkpoint file, a "
                            "torchvision:// or open-mmlab:// name, or null")
        return path
    path = cache_path(url)
    if path.is_file():
        return path
    say(f"downloading {url} -> {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
            while block := r.read(1 << 20):
                f.write(block)
        os.replace(tmp, path)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        tmp.unlink(missing_ok=True)
        raise _offline(name, url, path, getattr(e, "reason", None) or str(e) or type(e).__name__) from None
    return path


def read_state_dict(path: str | os.PathLike) -> dict:
    """The model tensors of a checkpoint file (mmengine's `state_dict`, or a bare state dict), with the
    `module.` prefix of DDP-wrapped models removed as mmengine does. A missing, truncated or foreign file, and
    one with a non-finite tensor (named), is one UserError line."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, a JSON or text file, an empty file, ...
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({first_line(e)}); pass an iter_*.pth "
                        "or epoch_*.pth that training wrote") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: a PyTorch file without model weights (no 'state_dict' of tensors); pass a "
                        "checkpoint that training wrote")
    for key, v in state.items():  # bytes damaged on disk can still load: NaN/inf weights give AP 0, no error
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise UserError(f"{path}: tensor {key} holds non-finite values (NaN or inf): the file is damaged, or "
                            "training diverged; pass another checkpoint")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def build_model_cpu(mm):
    """The detector of mmdet config `mm`, built on the CPU without loading any weights (for shape checks)."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from ecmctl import losses  # noqa: F401  (ECMLoss and friends in mmdet's registry)
    from ecmctl.engine import compat

    register_all_modules()
    compat.apply()
    return MODELS.build(mm.model)


def _alias(key: str, state: dict, model: dict) -> bool:
    """Whether checkpoint tensor `key` is a second name of one the model has: a module a detector registers
    again under another parent during training (DDQ-DETR's `decoder.aux_reg_branches` is its head's
    `aux_reg_branches`), saved twice with the same values."""
    parts = key.split(".")
    for i in range(1, len(parts) - 1):  # a module path and the parameter's name, at least
        suffix = ".".join(parts[i:])
        for other in model:
            if other != key and other.endswith("." + suffix) and other in state and \
                    state[other].shape == state[key].shape and bool((state[other] == state[key]).all()):
                return True
    return False


def check_checkpoint(mm, path: str | os.PathLike) -> None:
    """Refuse, before evaluation starts, a checkpoint that does not fit the run's model: every tensor of the
    model must be in the checkpoint with the same shape, and nothing else (strict), so that another model's
    checkpoint (another class count, another head) is one line naming the tensor and both shapes instead of
    size-mismatch warnings and an AP of 0."""
    path = Path(path)
    state = read_state_dict(path)
    model = build_model_cpu(mm).state_dict()
    for key, tensor in model.items():
        got = state.get(key)
        if got is not None and tuple(got.shape) != tuple(tensor.shape):
            raise UserError(f"{path}: does not fit this run's model: {key} has shape {tuple(got.shape)} in the "
                            f"checkpoint but {tuple(tensor.shape)} in the model (another class count or "
                            "detector?); pass a checkpoint of this run")
    missing = [k for k in model if k not in state]
    extra = [k for k in state if k not in model and not _alias(k, state, model)]
    if missing or extra:
        what = (f"lacks {len(missing)} of the model's tensors (e.g. {missing[0]})" if missing else
                f"has {len(extra)} tensors this run's model does not (e.g. {extra[0]})")
        raise UserError(f"{path}: does not fit this run's model: it {what}; pass a checkpoint of this run")
