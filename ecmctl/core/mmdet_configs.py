"""mmdet config files: where `detector.mmdet_config` points, and the numbers of its own training recipe.

The recipe's numbers (`recipe_value`) fill conf/schedule/native.yaml through the `${ecmctl_native:CONFIG,KEY}`
resolver at composition, so the batch/lr plan, run.json and the run's config.yaml see them like any schedule's.
Reading a config needs mmengine (imported when called), not mmdet: nothing here builds a model.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from ecmctl.core.errors import UserError, first_line

# mmdet names its configs after the batch they were trained with: `8xb32` = 8 GPUs x 32 images
BATCH_IN_NAME = re.compile(r"(?<!\d)(\d+)xb(\d+)(?!\d)")


def mmdet_configs_dir() -> Path:
    """mmdet's shipped configs inside the installed package (mmdet/.mim/configs)."""
    spec = importlib.util.find_spec("mmdet")  # no import: mmdet pulls in torch
    if spec is None or spec.origin is None:
        raise UserError("mmdet is not installed; run `make install`")
    return Path(spec.origin).parent / ".mim" / "configs"


def mmdet_config_path(rel: str) -> Path:
    """detector.mmdet_config: the user's own config file (absolute, or relative to the current directory) or one
    of mmdet's shipped configs (relative to mmdet/.mim/configs, e.g. rtmdet/rtmdet_s_8xb32-300e_coco.py)."""
    own = Path(rel).expanduser()
    if own.is_file():
        return own.resolve()
    shipped = mmdet_configs_dir() / rel
    if shipped.is_file() and not own.is_absolute():
        return shipped
    if own.is_absolute() or rel.startswith((".", "~")):
        raise UserError(f"detector.mmdet_config={rel}: no such file")
    raise UserError(f"detector.mmdet_config={rel}: neither a file (relative to {Path.cwd()}) nor one of mmdet's "
                    f"shipped configs ({mmdet_configs_dir()})")


def type_name(node: Any) -> str:
    """A config dict's type without its scope ('mmdet.LoadAnnotations' -> 'LoadAnnotations')."""
    return str(node.get("type", "")).rsplit(".", 1)[-1] if isinstance(node, Mapping) else ""


def recipe_value(config: str, key: str) -> Any:
    """One number of the config's training recipe (schedule=native): by_epoch, max_epochs, max_iters,
    val_interval, batch_size (images per GPU), lr and base_batch_size (the images per iteration lr is for)."""
    path = mmdet_config_path(config)
    facts = _recipe(str(path), path.stat().st_mtime_ns)
    if key not in facts:
        raise UserError(f"ecmctl_native: unknown key {key!r}; one of {', '.join(facts)}")
    return facts[key]


@lru_cache(maxsize=16)
def _recipe(path: str, _mtime: int) -> dict:
    from mmengine.config import Config

    try:
        mm = Config.fromfile(path)
    except Exception as e:
        raise UserError(f"{path}: cannot be loaded as an mmdet config: {first_line(e)}") from None
    loader, loop = mm.get("train_dataloader"), mm.get("train_cfg")
    optimizer = (mm.get("optim_wrapper") or {}).get("optimizer")
    missing = [k for k, v in (("train_dataloader", loader), ("train_cfg", loop), ("optim_wrapper.optimizer",
                                                                                   optimizer)) if not v]
    if not missing and not isinstance(optimizer.get("lr"), (int, float)):
        missing = ["optim_wrapper.optimizer.lr"]
    if not missing and not loader.get("batch_size"):
        missing = ["train_dataloader.batch_size"]
    if missing:
        raise UserError(f"schedule=native: {path} has no training recipe (no {', '.join(missing)}); use one of "
                        "ecmctl's schedules (e.g. schedule=1x)")
    by_epoch = loop_by_epoch(loop, path)
    batch = int(loader["batch_size"])
    validates = bool(mm.get("val_cfg")) and bool(mm.get("val_dataloader"))
    return dict(by_epoch=by_epoch,
                max_epochs=int(loop["max_epochs"]) if by_epoch else None,
                max_iters=None if by_epoch else int(loop["max_iters"]),
                val_interval=int(loop.get("val_interval", 1 if by_epoch else 1000)) if validates else 0,
                batch_size=batch, lr=float(optimizer["lr"]), base_batch_size=base_batch_size(path, mm, batch))


def base_batch_size(path: str | Path, mm, batch_size: int) -> int:
    """The images per iteration the config's lr is for: N x M from an `NxbM` file name (mmdet names its configs
    after the batch they were trained with); else auto_scale_lr.base_batch_size; else one process's batch.
    The name comes first: RTMDet's configs (8xb32, lr 0.004 for 256 images) inherit auto_scale_lr's 16 from
    mmdet's 1x schedule, and retinanet_r18_fpn_1xb8 (lr 0.005 for 8) too."""
    m = BATCH_IN_NAME.search(Path(path).name)
    if m:
        return int(m[1]) * int(m[2])
    auto = (mm.get("auto_scale_lr") or {}).get("base_batch_size")
    return int(auto) if auto else int(batch_size)


def loop_by_epoch(loop: Mapping, where: Any = "the config") -> bool:
    """Whether the config's train loop counts epochs (EpochBasedTrainLoop) or iterations (IterBasedTrainLoop)."""
    kind = type_name(loop)
    if kind == "EpochBasedTrainLoop" or (not kind and loop.get("by_epoch", "max_epochs" in loop)):
        key, by_epoch = "max_epochs", True
    elif kind == "IterBasedTrainLoop" or not kind:
        key, by_epoch = "max_iters", False
    else:
        raise UserError(f"schedule=native: {where} trains with {loop['type']}; ecmctl runs epoch- or "
                        "iteration-based loops (EpochBasedTrainLoop, IterBasedTrainLoop)")
    if not isinstance(loop.get(key), int):
        raise UserError(f"schedule=native: {where}: train_cfg has no {key}")
    return by_epoch
