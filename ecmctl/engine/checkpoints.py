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

from ecmctl.core.errors import UserError

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
