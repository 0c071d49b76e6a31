"""`schedule=native`: the detector config's own training recipe, on ecmctl's dataset, with its classes and loss.

ecmctl's schedules (1x, 2x, smoke, ...) replace the config's optimizer, lr schedule, loop, hooks and pipelines
with the paper's. With `schedule=native` (conf/schedule/native.yaml) the config keeps its recipe: optimizer and
paramwise settings, `param_scheduler`, `train_cfg` (loop, epochs, dynamic intervals), `custom_hooks` (EMA,
YOLOX's mode switch and sync-norm, RTMDet's pipeline switch) and its train and test pipelines, dataset wrappers
included (YOLOX's MultiImageMixDataset for Mosaic/MixUp). ecmctl swaps the innermost dataset for the
LVIS-format one of `dataset=` (RFS around it with dataset.rfs_thr), loads masks exactly when the model predicts
them, and keeps its own batch/lr plan, checkpoints, logging, progress and evaluation protocol.

The recipe's numbers (lr, the batch it is for, the loop's length) come into the Hydra config at composition
(ecmctl.core.mmdet_configs.recipe_value); `plan_batch` scales the config's lr linearly from the config's own batch
to world size x train.batch_size, and build_mm_config passes it here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig

from ecmctl.core.errors import UserError
from ecmctl.core.mmdet_configs import loop_by_epoch
from ecmctl.core.mmdet_configs import type_name as _name
from ecmctl.engine.placement import walk_dicts

RECIPE_KEYS = ("train_dataloader", "val_dataloader", "test_dataloader", "train_cfg", "optim_wrapper",
               "param_scheduler", "custom_hooks")
EVAL_META_KEYS = ("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")  # what ecmctl's evaluator reads


def _copy(node: Any) -> Any:
    """Plain dicts/lists (tuples stay tuples) of a ConfigDict subtree, deep."""
    if isinstance(node, Mapping):
        return {k: _copy(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(_copy(v) for v in node)
    return node


def _innermost(dataset: Mapping) -> Mapping:
    while isinstance(dataset.get("dataset"), Mapping):
        dataset = dataset["dataset"]
    return dataset


# --- the config: its recipe kept, ecmctl's data, classes and loss -------------------------------------------------

def own_recipe(mm) -> dict:
    """What schedule=native keeps of the config, copied before ecmctl replaces its data and schedule."""
    own = {k: _copy(mm.get(k)) for k in RECIPE_KEYS}
    missing = [k for k in ("train_dataloader", "train_cfg", "optim_wrapper") if not own[k]]
    if missing:
        raise UserError(f"schedule=native: the detector config has no {', '.join(missing)}; use one of ecmctl's "
                        "schedules (e.g. schedule=1x)")
    return own


def apply_recipe(mm, own: dict, cfg: DictConfig, with_mask: bool, lr: float) -> None:
    """`mm` (built by build_mm_config with ecmctl's data, loss, hooks and eval protocol) with the config's own
    recipe `own` put back: its loop, optimizer (lr: the run's, scaled to its batch), lr schedule, recipe hooks
    and pipelines, on ecmctl's LVIS-format datasets (as build_mm_config made them, RFS included)."""
    tr = cfg.train
    by_epoch = loop_by_epoch(own["train_cfg"], cfg.detector.mmdet_config)
    hooks = list(own["custom_hooks"] or [])

    loader = own["train_dataloader"]
    ecm_train = _copy(mm.train_dataloader.dataset)  # ecmctl's LVIS-format set (in ClassBalancedDataset with RFS)

    def with_pipeline_of(leaf: Mapping) -> dict:
        d = _copy(ecm_train)
        _innermost(d)["pipeline"] = _copy(list(leaf.get("pipeline") or []))
        return d

    train_ds = _swap_innermost(loader["dataset"], with_pipeline_of)
    if _load_annotations(train_ds, with_mask) == 0:
        raise UserError(f"schedule=native: {cfg.detector.mmdet_config}: its train pipeline has no LoadAnnotations")
    _load_annotations(hooks, with_mask)  # pipelines that hooks switch to (RTMDet's stage 2)
    if _name(train_ds) == "ClassBalancedDataset":  # RFS on top: mmdet's hook would set a pipeline nobody reads
        hooks = [{**h, "type": "ecmctl.PipelineSwitchHook"} if _name(h) == "PipelineSwitchHook" else h
                 for h in hooks]
    kept = {k: v for k, v in loader.items()
            if k not in ("batch_size", "num_workers", "persistent_workers", "batch_sampler", "dataset")}
    mm.train_dataloader = dict(
        kept, batch_size=int(tr.batch_size), num_workers=int(tr.num_workers), persistent_workers=False,
        sampler=kept.get("sampler") or dict(type="DefaultSampler" if by_epoch else "InfiniteSampler", shuffle=True),
        # ecmctl's (mmdet's aspect-ratio grouping): its epoch loop resumes mid-epoch through it
        batch_sampler=dict(type="ecmctl.AspectRatioBatchSampler"), dataset=train_ds)
    mm.test_dataloader.dataset.pipeline = _test_pipeline(own, with_mask, mm.test_dataloader.dataset.pipeline)

    loop = {k: v for k, v in own["train_cfg"].items() if k != "by_epoch"}
    if by_epoch:
        end = int(tr.max_epochs) if tr.max_epochs is not None else int(loop["max_epochs"])
        loop.update(type="ecmctl.EpochBasedTrainLoop", max_epochs=end)
        loop.pop("max_iters", None)
        if tr.max_iters is not None:  # a cap, e.g. a smoke test of a 300-epoch recipe
            loop["max_iters"] = int(tr.max_iters)
    else:
        end = int(tr.max_iters) if tr.max_iters is not None else int(loop["max_iters"])
        loop.update(type="IterBasedTrainLoop", max_iters=end)
    val = int(tr.val_interval)
    if val > 0:
        loop["val_interval"] = val
        mm.val_dataloader, mm.val_evaluator, mm.val_cfg = mm.test_dataloader, mm.test_evaluator, dict(type="ValLoop")
    else:
        loop["val_interval"] = end + 1
        loop.pop("dynamic_intervals", None)
        mm.val_dataloader = mm.val_evaluator = mm.val_cfg = None
    mm.train_cfg = loop
    mm.log_processor.by_epoch = by_epoch

    # the config's optimizer, paramwise settings and clipping; the run's lr and ecmctl's run-level wrapper settings
    # (train.amp: AmpOptimWrapper and its dtype; accumulative_counts), as build_mm_config made them
    ecm, wrapper = _copy(mm.optim_wrapper), own["optim_wrapper"]
    wrapper.update({k: v for k, v in ecm.items() if k not in ("type", "optimizer", "clip_grad", "paramwise_cfg",
                                                                 "constructor")})
    wrapper["optimizer"] = {**wrapper["optimizer"], "lr": lr}
    wrapper["type"] = ecm["type"] if tr.amp else wrapper.get("type", "OptimWrapper")
    mm.optim_wrapper = wrapper
    mm.param_scheduler = own["param_scheduler"]
    mm.custom_hooks = [*hooks, *(mm.get("custom_hooks") or [])]


def _swap_innermost(node: Mapping, make: Callable[[Mapping], dict]) -> dict:
    """The config's train dataset with its innermost dataset replaced by `make(innermost)`; wrappers
    (MultiImageMixDataset, RepeatDataset) stay, except the config's ClassBalancedDataset: RFS is dataset.rfs_thr's."""
    if "datasets" in node:
        raise UserError(f"schedule=native: the config trains on {_name(node)} of several datasets; ecmctl trains "
                        "on the one `dataset=` names")
    inner = node.get("dataset")
    if not isinstance(inner, Mapping):
        return make(node)
    if _name(node) == "ClassBalancedDataset":
        return _swap_innermost(inner, make)
    return {**node, "dataset": _swap_innermost(inner, make)}


def _load_annotations(node: Any, with_mask: bool) -> int:
    """Every LoadAnnotations under `node` loads masks exactly when the model predicts them; how many."""
    n = 0
    for _, d in walk_dicts(node):
        if _name(d) == "LoadAnnotations":
            d["with_mask"] = with_mask
            n += 1
    return n


def _test_pipeline(own: dict, with_mask: bool, fallback: list) -> list:
    """The config's test pipeline (else ecmctl's `fallback`), with LoadAnnotations and the meta keys ecmctl's
    evaluator reads (img_id, img_path, ori_shape, img_shape, scale_factor)."""
    loader = own["test_dataloader"] or own["val_dataloader"]
    pipeline = list(_innermost((loader or {}).get("dataset") or {}).get("pipeline") or [])
    if not pipeline:
        return fallback
    packs = [d for _, d in walk_dicts(pipeline) if _name(d) == "PackDetInputs"]
    if not packs:
        raise UserError("schedule=native: the config's test pipeline has no PackDetInputs")
    for pack in packs:
        if "meta_keys" in pack:  # mmdet's default meta keys include them all
            pack["meta_keys"] = (*pack["meta_keys"], *(k for k in EVAL_META_KEYS if k not in pack["meta_keys"]))
    if _load_annotations(pipeline, with_mask) == 0:
        at = next((i for i, t in enumerate(pipeline) if _name(t) == "PackDetInputs"), 1)
        pipeline.insert(at, dict(type="LoadAnnotations", with_bbox=True, with_mask=with_mask))
    return pipeline
