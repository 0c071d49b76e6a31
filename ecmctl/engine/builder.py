"""The one place where ecmctl's Hydra config becomes an mmengine/mmdet config (no model is built).

Detector configs start from mmdet's own shipped configs (inside the installed package);
ecmctl changes only what the user chose: model overrides, classes, loss, data, schedule, launcher.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ecmctl.core.errors import UserError, first_line
from ecmctl.core.mmdet_configs import mmdet_config_path, mmdet_configs_dir
from ecmctl.engine.atomic_backend import BACKEND as ATOMIC_BACKEND  # importing registers it, for any Runner
from ecmctl.engine.placement import (
    apply_loss,
    apply_normed_head,
    drop_semantic_branch,
    model_has_masks,
    walk_dicts,
)

# ecmctl's launcher -> mmengine's `launcher` (how each rank initialises torch.distributed)
MM_LAUNCHERS = {"local": "none", "torchrun": "pytorch", "slurm": "slurm"}
CUSTOM_IMPORTS = ["ecmctl.losses", "ecmctl.engine.atomic_backend", "ecmctl.engine.compat",
                  "ecmctl.engine.lvis_stream_metric", "ecmctl.engine.hooks", "ecmctl.engine.loops",
                  "ecmctl.engine.ecm_heads", "ecmctl.engine.packed_dataset"]


def _plain(node) -> dict | list:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def base_config(cfg: DictConfig):
    """mmdet's config for the chosen detector with the detector group's `model` overrides merged in,
    its backbone initialised from `detector.pretrained` (null: random init) and, with
    `detector.normed_head`, the paper's normalised classifiers."""
    from mmengine.config import Config

    path = mmdet_config_path(cfg.detector.mmdet_config)
    try:
        mm = Config.fromfile(str(path))
    except UserError:
        raise
    except Exception as e:  # a syntax error, a missing _base_ file, an unknown scope in the user's config
        raise UserError(f"{path}: cannot be loaded as an mmdet config: {first_line(e)}") from None
    if not isinstance(mm.get("model"), dict) or "type" not in mm.model:
        raise UserError(f"{path}: has no `model` dict with a `type`; it is not a detector config")
    overrides = _plain(cfg.detector.model) or {}
    if overrides:
        mm.merge_from_dict({"model": overrides}, allow_list_keys=True)
    _inline_teacher(mm.model)
    pretrained = cfg.detector.pretrained
    if pretrained is None:
        _random_init(mm.model)
    elif pretrained != KEEP_INIT:
        if "://" not in str(pretrained):
            pretrained = str(Path(pretrained).expanduser().resolve())  # a local file, wherever the run starts
        mm.model.backbone.init_cfg = dict(type="Pretrained", checkpoint=pretrained)
    if cfg.detector.normed_head:
        apply_normed_head(mm.model)
    return mm


KEEP_INIT = "config"  # detector.pretrained: keep the config's own initialisation


def _random_init(model) -> None:
    """detector.pretrained=null: no checkpoint anywhere in the model (backbone, TridentNet's shared head, a
    distillation teacher's weights), so nothing is downloaded."""
    for _, node in walk_dicts(model):
        init = node.get("init_cfg")
        if isinstance(init, dict) and init.get("type") == "Pretrained":
            node["init_cfg"] = None
        for key in ("pretrained", "teacher_ckpt"):
            if isinstance(node.get(key), str):
                node[key] = None


def _inline_teacher(model) -> None:
    """A distillation teacher given as a config path (LD: 'configs/gfl/...py', relative to an mmdet checkout)
    becomes its model dict inline, so its class count can be set like the student's."""
    from mmengine.config import Config

    path = model.get("teacher_config")
    if not isinstance(path, str):
        return
    rel = path[len("configs/"):] if path.startswith("configs/") else path
    file = Path(path) if Path(path).is_file() else mmdet_configs_dir() / rel
    if not file.is_file():
        raise UserError(f"model.teacher_config={path}: no such file (here or among mmdet's shipped configs)")
    model["teacher_config"] = dict(model=Config.fromfile(str(file)).model.to_dict())


def pretrained_checkpoint(mm) -> str | None:
    """The checkpoint the backbone initialises from (a name such as torchvision://resnet50, a URL or a file)."""
    init = mm.model.backbone.get("init_cfg") or {}
    return init.get("checkpoint") if init.get("type") == "Pretrained" else None


def _pipelines(ds: DictConfig, with_mask: bool) -> tuple[list, list]:
    load_ann = dict(type="LoadAnnotations", with_bbox=True, with_mask=with_mask)
    if ds.multiscale:
        resize = dict(type="RandomChoiceResize", scales=[tuple(s) for s in ds.multiscale], keep_ratio=True)
    else:
        resize = dict(type="Resize", scale=tuple(ds.train_scale), keep_ratio=True)
    train = [dict(type="LoadImageFromFile"), load_ann, resize,
             dict(type="RandomFlip", prob=float(ds.flip)), dict(type="PackDetInputs")]
    test = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=tuple(ds.test_scale), keep_ratio=True),
            load_ann, dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape",
                                                            "scale_factor"))]
    return train, test


def dataset_cache_dir(cfg: DictConfig) -> str:
    """Where the packed datasets live (dataset.cache_dir, else <run_root>/cache/datasets), absolute."""
    return str(Path(cfg.dataset.get("cache_dir") or Path(cfg.run_root) / "cache" / "datasets").resolve())


def _dataset(ds: DictConfig, ann: str, classes: Sequence[str], pipeline: list, test_mode: bool,
             cache_dir: str) -> dict:
    d = dict(type="LVISV1Dataset", data_root=str(Path(ds.root).resolve()), ann_file=str(Path(ann).resolve()),
             data_prefix=dict(img=ds.img_prefix), metainfo=dict(classes=tuple(classes)),
             pipeline=pipeline, test_mode=test_mode)
    if ds.get("packed", True):  # the same data list, from one memory-mapped file per node (engine/packed_dataset.py)
        d.update(type="ecmctl.PackedLVISV1Dataset", cache_dir=cache_dir)
    if not test_mode:
        d["filter_cfg"] = dict(filter_empty_gt=True, min_size=2)
    return d


def detector_masks(cfg: DictConfig, model) -> bool:
    """Whether the detector predicts masks: read from the model; detector.with_mask, when given, must agree."""
    found = model_has_masks(model)
    given = cfg.detector.get("with_mask")
    if given is not None and bool(given) != found:
        raise UserError(f"detector.with_mask={str(given).lower()}, but {cfg.detector.mmdet_config} "
                        f"{'predicts' if found else 'does not predict'} masks; leave with_mask unset (it is read "
                        "from the model)")
    return found


def build_mm_config(cfg: DictConfig, classes: Sequence[str], work_dir: str | Path,
                    weights_files: Sequence[str | None] | str | None = None, loss: DictConfig | None = None,
                    lr: float | None = None, accumulation: int = 1, counts_file: str | None = None):
    """The full mmengine Config for train/calibrate/eval of `cfg` (loss defaults to cfg.loss, the learning
    rate to schedule.lr: the caller passes it scaled to the run's effective batch; `accumulation`: micro-steps
    per update, recipes.BatchPlan's, every iteration-counted quantity of cfg being in updates)."""
    mm = base_config(cfg)
    own = None
    if cfg.schedule.get("native"):  # the config's own training recipe (engine/native.py), before it is replaced
        from ecmctl.engine.native import apply_recipe, own_recipe

        own = own_recipe(mm)
    loss = loss if loss is not None else cfg.loss
    drop_semantic_branch(mm.model)
    apply_loss(mm.model, _plain(loss), len(classes), weights_files, counts_file)  # counts: eql/fed frequencies
    ds, sch, tr = cfg.dataset, cfg.schedule, cfg.train
    with_mask = detector_masks(cfg, mm.model)
    train_pipe, test_pipe = _pipelines(ds, with_mask)
    cache_dir = dataset_cache_dir(cfg)
    train_ds = _dataset(ds, ds.train_ann, classes, train_pipe, False, cache_dir)
    if ds.rfs_thr:  # ecmctl's: mmengine's, with the factors read from the packed labels in one pass
        rfs = "ecmctl.ClassBalancedDataset" if ds.get("packed", True) else "ClassBalancedDataset"
        train_ds = dict(type=rfs, oversample_thr=float(ds.rfs_thr), dataset=train_ds)
    mm.train_dataloader = dict(
        batch_size=int(tr.batch_size), num_workers=int(tr.num_workers), persistent_workers=False,
        sampler=dict(type="DefaultSampler" if sch.by_epoch else "InfiniteSampler", shuffle=True),
        batch_sampler=dict(type="ecmctl.AspectRatioBatchSampler"), dataset=train_ds)
    mm.test_dataloader = dict(
        batch_size=1, num_workers=int(tr.num_workers), persistent_workers=False, drop_last=False,
        sampler=dict(type="DefaultSampler", shuffle=False),
        dataset=_dataset(ds, ds.val_ann, classes, test_pipe, True, cache_dir))
    mm.test_cfg = dict(type="TestLoop")
    apply_eval_protocol(mm, cfg.eval, ds.val_ann, with_mask)
    k = int(accumulation)
    _schedule(mm, sch, tr, float(sch.lr if lr is None else lr), k)
    mm.default_hooks = dict(
        timer=dict(type="IterTimerHook"),
        logger=dict(type="LoggerHook", interval=k * (min(50, max(1, int(tr.max_iters) // 10)) if tr.max_iters else 50)),
        param_scheduler=dict(type="ParamSchedulerHook"),
        checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=k * int(tr.checkpoint_interval),
                        max_keep_ckpts=2, save_last=True, backend_args=dict(backend=ATOMIC_BACKEND)),
        sampler_seed=dict(type="DistSamplerSeedHook"),
        visualization=dict(type="DetVisualizationHook"))
    mm.log_processor = dict(type="LogProcessor", window_size=20, by_epoch=bool(sch.by_epoch))
    mm.log_level = str(tr.log_level)
    from ecmctl.engine.tracking import vis_backends

    mm.custom_hooks = ([dict(type="ecmctl.ProgressHook")] if tr.progress else []) + [
        dict(type="ecmctl.RunProgressHook"), *([dict(type="ecmctl.TrackerHook")] if cfg.tracking.name != "tensorboard"
                                              else [])]
    mm.visualizer = dict(type="DetLocalVisualizer", vis_backends=vis_backends(cfg, work_dir))
    mm.randomness = dict(seed=int(cfg.seed), deterministic=False)
    mm.env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
                      dist_cfg=dict(backend="nccl"))  # gloo is chosen at run time on CPU hosts
    mm.launcher = MM_LAUNCHERS[cfg.launcher.name]
    mm.custom_imports = dict(imports=CUSTOM_IMPORTS, allow_failed_imports=False)
    mm.work_dir = str(work_dir)
    mm.load_from, mm.resume = None, False
    mm.auto_scale_lr = dict(enable=False, base_batch_size=int(sch.base_batch_size))  # ecmctl scales lr itself
    for key in ("train_pipeline", "test_pipeline", "backend_args", "dataset_type", "data_root", "max_epochs"):
        mm.pop(key, None)
    if own is not None:
        apply_recipe(mm, own, cfg, with_mask, float(sch.lr if lr is None else lr))
    return mm


def _schedule(mm, sch: DictConfig, tr: DictConfig, lr: float, k: int = 1) -> None:
    """Train loop, optimizer and lr schedule: epochs of the (RFS-resampled) set, or iterations.

    With gradient accumulation (k micro-steps per update, `optim_wrapper.accumulative_counts`) mmengine still
    counts micro-steps: its loops, CheckpointHook/LoggerHook intervals and every `by_epoch=False` scheduler
    (ParamSchedulerHook.after_train_iter steps them once per train iteration). The config's iteration counts
    are updates, so each becomes k x as many micro-steps; epochs stay epochs."""
    val = int(tr.val_interval)
    if sch.by_epoch:
        epochs = int(tr.max_epochs)
        mm.train_cfg = dict(type="ecmctl.EpochBasedTrainLoop", max_epochs=epochs,
                            val_interval=val if val > 0 else epochs + 1)
        if tr.max_iters is not None:  # a cap, for smoke tests of epoch-based recipes
            mm.train_cfg["max_iters"] = k * int(tr.max_iters)
        steps = dict(type="MultiStepLR", by_epoch=True, begin=0, end=epochs, gamma=0.1,
                     milestones=[int(m) for m in sch.milestones])
        warmup_end = k * int(sch.warmup_iters)
    else:
        updates = int(tr.max_iters)
        iters = k * updates
        mm.train_cfg = dict(type="IterBasedTrainLoop", max_iters=iters,
                            val_interval=k * val if val > 0 else iters + 1)
        steps = dict(type="MultiStepLR", by_epoch=False, begin=0, end=iters, gamma=0.1,
                     milestones=[k * max(1, int(f * updates)) for f in sch.milestones])
        warmup_end = k * min(int(sch.warmup_iters), updates)
    mm.param_scheduler = [dict(type="LinearLR", start_factor=float(sch.warmup_ratio), by_epoch=False, begin=0,
                               end=max(warmup_end, 1)), steps]
    if val > 0:
        mm.val_dataloader, mm.val_evaluator, mm.val_cfg = mm.test_dataloader, mm.test_evaluator, dict(type="ValLoop")
    else:
        mm.val_dataloader = mm.val_evaluator = mm.val_cfg = None
    if sch.mmdet_optimizer:  # the detector's own settings (e.g. FCOS: bias lr x2, no bias decay, clip 35)
        wrapper = mm.optim_wrapper.to_dict() if hasattr(mm.optim_wrapper, "to_dict") else dict(mm.optim_wrapper)
        wrapper["optimizer"] = {**wrapper["optimizer"], "lr": lr}
    else:
        wrapper = dict(optimizer=dict(type="SGD", lr=lr, momentum=float(sch.momentum),
                                      weight_decay=float(sch.weight_decay)),
                       clip_grad=dict(max_norm=float(sch.grad_clip), norm_type=2) if sch.grad_clip else None)
    wrapper["type"] = "AmpOptimWrapper" if tr.amp else "OptimWrapper"
    if tr.amp and tr.get("amp_dtype", "auto") != "auto":  # auto: each rank picks (engine/runner.py amp_dtype)
        wrapper["dtype"] = str(tr.amp_dtype)
    if k > 1:
        wrapper["accumulative_counts"] = k
    mm.optim_wrapper = wrapper


# "no per-image cap" for the Fixed/Pooled AP inference: mmdet's heads treat -1 differently (RoI heads keep
# everything, dense heads slice [:-1]), so a cap no image reaches stands in for it
UNCAPPED = 100_000


def apply_eval_protocol(mm, ev: DictConfig, ann_file: str, with_mask: bool, shard_dir: str | None = None) -> None:
    """The LVIS protocol at test time and the streaming evaluator that scores it.

    standard: score_thr 1e-4 and 300 detections per image; fixed/pooled (Dave et al. 2021): no per-image cap
    at inference (or `max_per_img_fixed`), the evaluator keeping each class's top K over the dataset; the
    standard numbers are computed too (its 300-per-image cap is applied by the evaluator, as lvis-api does).
    """
    fixed = ev.protocol != "standard"
    per_img = (int(ev.max_per_img_fixed) if ev.max_per_img_fixed else UNCAPPED) if fixed else int(ev.max_per_img)
    set_test_protocol(mm.model, float(ev.score_thr), per_img)
    mm.test_evaluator = dict(type="ecmctl.StreamingLVISMetric", ann_file=str(Path(ann_file).resolve()),
                             metric=["bbox", "segm"] if with_mask else ["bbox"],
                             protocols=["standard", ev.protocol] if fixed else ["standard"],
                             max_dets=int(ev.max_per_img), topk=int(ev.topk), classwise=True, shard_dir=shard_dir)


def set_test_protocol(model, score_thr: float, max_per_img: int) -> None:
    """LVIS protocol at test time: keep low-score boxes (1e-4) and up to 300 per image."""
    test_cfg = model.get("test_cfg")
    if test_cfg is None:
        return
    target = test_cfg.get("rcnn", test_cfg)
    target["score_thr"] = score_thr
    target["max_per_img"] = max_per_img
    if "max_per_image" in target:  # MaskFormer / Mask2Former spell it so
        target["max_per_image"] = max_per_img
