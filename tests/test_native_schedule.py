"""`schedule=native`: the detector config's own recipe (optimizer, lr schedule, loop, hooks, pipelines and dataset
wrappers) on ecmctl's LVIS-format dataset, with its classes and loss; the lr scaled from the config's own batch."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mmengine.config import Config
from typer.testing import CliRunner

from ecmctl.cli import app
from ecmctl.core.config import compose
from ecmctl.core.errors import UserError
from ecmctl.core.mmdet_configs import base_batch_size
from ecmctl.engine.builder import build_mm_config, mmdet_config_path
from ecmctl.engine.native import EVAL_META_KEYS
from ecmctl.engine.placement import walk_dicts
from ecmctl.pipeline.prepare import class_names_without_data
from ecmctl.pipeline.recipes import plan_batch

RTMDET = "rtmdet/rtmdet_tiny_8xb32-300e_coco.py"
YOLOX = "yolox/yolox_tiny_8xb8-300e_coco.py"
DINO = "dino/dino-4scale_r50_8xb2-12e_coco.py"


def native(data_root, config: str, *extra: str):
    return compose(["detector=mmdet", f"detector.mmdet_config={config}", "detector.pretrained=null",
                    "schedule=native", "loss=bce", "dataset=synth_tiny", f"data_root={data_root}", *extra])


def built(data_root, tmp_path, config: str, *extra: str):
    cfg = native(data_root, config, *extra)
    classes = class_names_without_data(cfg)
    return cfg, classes, build_mm_config(cfg, classes, tmp_path / "work")


def own(config: str) -> Config:
    """The mmdet config as mmdet reads it, independently of ecmctl."""
    return Config.fromfile(str(mmdet_config_path(config)))


def innermost(dataset: dict) -> dict:
    while isinstance(dataset.get("dataset"), dict):
        dataset = dataset["dataset"]
    return dataset


def types(pipeline) -> list[str]:
    return [t["type"] for t in pipeline]


def load_annotations(node) -> list[dict]:
    return [d for _, d in walk_dicts(node) if d.get("type") == "LoadAnnotations"]


def num_classes(model) -> set[int]:
    return {d["num_classes"] for _, d in walk_dicts(model) if "num_classes" in d}


@pytest.mark.parametrize("config", [RTMDET, YOLOX, DINO])
def test_native_keeps_the_configs_recipe_and_swaps_data_classes_loss(data_root, tmp_path, config):
    cfg, classes, mm = built(data_root, tmp_path, config)
    ref = own(config)
    mm = Config(mm.to_dict())  # as the run's mmdet_config.py is read back
    # optimizer, lr (world size 1 x the config's batch per GPU: build_mm_config gets schedule.lr), schedule
    opt, ref_opt = mm.optim_wrapper.optimizer, ref.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.weight_decay) == (ref_opt.type, ref_opt.lr, ref_opt.weight_decay)
    assert mm.optim_wrapper.get("paramwise_cfg") == ref.optim_wrapper.get("paramwise_cfg")
    assert mm.optim_wrapper.get("clip_grad") == ref.optim_wrapper.get("clip_grad")
    assert mm.param_scheduler == ref.param_scheduler
    # its loop (ecmctl's epoch loop: resumes mid-epoch, takes a max_iters cap), epochs, validation interval
    assert mm.train_cfg.type == "ecmctl.EpochBasedTrainLoop" and ref.train_cfg.type == "EpochBasedTrainLoop"
    assert mm.train_cfg.max_epochs == ref.train_cfg.max_epochs and "max_iters" not in mm.train_cfg
    assert mm.train_cfg.val_interval == ref.train_cfg.val_interval
    assert mm.train_cfg.get("dynamic_intervals") == ref.train_cfg.get("dynamic_intervals")
    # the recipe's hooks, then ecmctl's; ecmctl's checkpoints and logging
    recipe_hooks = [h.type for h in ref.get("custom_hooks") or []]
    assert [h.type for h in mm.custom_hooks] == [*recipe_hooks, "ecmctl.ProgressHook", "ecmctl.RunProgressHook"]
    ckpt = mm.default_hooks.checkpoint  # iterations (train.checkpoint_interval), not the config's epochs
    assert (ckpt.by_epoch, ckpt.interval, ckpt.save_last) == (False, 5000, True)
    # data: the config's pipelines and wrappers around ecmctl's LVIS-format dataset, with its classes
    loader, ref_loader = mm.train_dataloader, ref.train_dataloader
    assert loader.batch_size == ref_loader.batch_size and loader.num_workers == 0
    assert loader.batch_sampler.type == "ecmctl.AspectRatioBatchSampler"
    inner, ref_inner = innermost(loader.dataset), innermost(ref_loader.dataset)
    assert inner.type == "ecmctl.PackedLVISV1Dataset" and inner.metainfo.classes == tuple(classes) and len(classes) == 8
    assert inner.ann_file == str(Path(cfg.dataset.train_ann).resolve())
    assert types(inner.pipeline) == types(ref_inner.pipeline)
    assert all(d["with_mask"] is False for d in load_annotations(mm.train_dataloader) + load_annotations(
        mm.custom_hooks))
    assert num_classes(mm.model) == {8}
    # test: the config's pipeline, ecmctl's val set, LoadAnnotations and the meta keys the evaluator reads
    test = mm.test_dataloader.dataset
    assert test.type == "ecmctl.PackedLVISV1Dataset" and test.ann_file == str(Path(cfg.dataset.val_ann).resolve())
    assert types(test.pipeline) == types(ref.test_dataloader.dataset.pipeline)
    assert set(EVAL_META_KEYS) <= set(test.pipeline[-1].meta_keys) and load_annotations(test.pipeline)
    assert mm.val_dataloader == mm.test_dataloader and mm.val_evaluator.type == "ecmctl.StreamingLVISMetric"


def test_yolox_keeps_its_multi_image_mix_wrapper(data_root, tmp_path):
    cfg, classes, mm = built(data_root, tmp_path, YOLOX)
    ref = own(YOLOX)
    mix = mm.train_dataloader.dataset
    assert mix.type == "MultiImageMixDataset" and mix.pipeline == ref.train_dataloader.dataset.pipeline
    assert "Mosaic" in types(mix.pipeline)  # yolox_tiny drops MixUp from yolox_s's pipeline; yolox_s keeps it
    assert mix.dataset.type == "ecmctl.PackedLVISV1Dataset" and mix.dataset.metainfo.classes == tuple(classes)
    assert mix.dataset.ann_file == str(Path(cfg.dataset.train_ann).resolve())
    assert mix.dataset.data_root == str(Path(cfg.dataset.root).resolve())
    s = build_mm_config(native(data_root, "yolox/yolox_s_8xb8-300e_coco.py"), classes, tmp_path / "s")
    assert {"Mosaic", "MixUp"} <= set(types(s.train_dataloader.dataset.pipeline))
    # repeat-factor sampling wraps the LVIS set inside the mix wrapper (YOLOX's mode switch talks to the wrapper)
    rfs = build_mm_config(native(data_root, YOLOX, "dataset.rfs_thr=0.001"), classes, tmp_path / "rfs")
    mix = rfs.train_dataloader.dataset
    assert (mix.type, mix.dataset.type, mix.dataset.dataset.type) == (
        "MultiImageMixDataset", "ecmctl.ClassBalancedDataset", "ecmctl.PackedLVISV1Dataset")
    assert mix.dataset.oversample_thr == 0.001


def test_rtmdet_pipeline_switch_and_masks(data_root, tmp_path):
    """RTMDet-Ins predicts masks: every LoadAnnotations (train, stage-2 switch, test) loads them; under RFS
    ecmctl's PipelineSwitchHook reaches through the ClassBalancedDataset."""
    _, _, mm = built(data_root, tmp_path, "rtmdet/rtmdet-ins_tiny_8xb32-300e_coco.py", "dataset.rfs_thr=0.001")
    assert mm.train_dataloader.dataset.type == "ecmctl.ClassBalancedDataset"
    switch = [h for h in mm.custom_hooks if "PipelineSwitchHook" in h["type"]]
    assert [h["type"] for h in switch] == ["ecmctl.PipelineSwitchHook"]
    found = load_annotations(mm.train_dataloader) + load_annotations(switch) + load_annotations(mm.test_dataloader)
    assert len(found) == 3 and all(d["with_mask"] is True for d in found)
    assert mm.test_evaluator.metric == ["bbox", "segm"]
    _, _, plain = built(data_root, tmp_path, RTMDET)
    assert [h["type"] for h in plain.custom_hooks if "Switch" in h["type"]] == ["PipelineSwitchHook"]  # mmdet's


def test_pipeline_switch_reaches_through_the_rfs_wrapper():
    from types import SimpleNamespace

    from mmdet.utils import register_all_modules

    from ecmctl.engine.hooks.pipeline_switch import PipelineSwitchHook

    register_all_modules()
    lvis = SimpleNamespace(pipeline="stage 1")
    rfs = SimpleNamespace(dataset=lvis)  # ClassBalancedDataset: no pipeline of its own
    runner = SimpleNamespace(epoch=2, logger=SimpleNamespace(info=lambda msg: None),
                             train_dataloader=SimpleNamespace(dataset=rfs, persistent_workers=False))
    hook = PipelineSwitchHook(switch_epoch=3, switch_pipeline=[dict(type="PackDetInputs")])
    hook.before_train_epoch(runner)
    assert lvis.pipeline == "stage 1"
    runner.epoch = 3
    hook.before_train_epoch(runner)
    assert type(lvis.pipeline).__name__ == "Compose" and not hasattr(rfs, "pipeline")


def test_lr_is_for_the_configs_own_batch(data_root):
    """The lr is the config's for N x M images (its `NxbM` name), scaled linearly to this run's batch."""
    rtm = native(data_root, RTMDET)
    assert (rtm.schedule.lr, rtm.schedule.base_batch_size, rtm.train.batch_size) == (0.004, 256, 32)
    plan = plan_batch(rtm)
    assert plan.effective_batch == 32 and plan.lr == pytest.approx(0.004 * 32 / 256)
    torchrun = plan_batch(native(data_root, RTMDET, "launcher=torchrun", "launcher.nproc_per_node=8"))
    assert torchrun.lr == pytest.approx(0.004)  # the config's own batch: its own lr
    small = plan_batch(native(data_root, YOLOX, "train.batch_size=2"))
    assert small.base_batch == 64 and small.lr == pytest.approx(0.01 * 2 / 64)
    assert native(data_root, YOLOX, "schedule.lr=0.02").schedule.lr == 0.02  # still overridable


def test_base_batch_rule():
    rtm = own(RTMDET)
    assert rtm.auto_scale_lr.base_batch_size == 16  # inherited from mmdet's 1x schedule: not RTMDet's batch
    assert base_batch_size(RTMDET, rtm, 32) == 256
    assert base_batch_size("my_detector.py", rtm, 32) == 16  # no NxbM in the name: auto_scale_lr
    assert base_batch_size("my_detector.py", Config(dict(model=dict(type="X"))), 4) == 4  # else one process


def test_caps_and_validation_switches(data_root, tmp_path):
    _, _, mm = built(data_root, tmp_path, RTMDET, "train.max_iters=2", "train.val_interval=0")
    assert mm.train_cfg.max_iters == 2 and mm.train_cfg.max_epochs == 300
    assert mm.train_cfg.val_interval == 301 and "dynamic_intervals" not in mm.train_cfg
    assert mm.val_dataloader is None and mm.val_cfg is None
    _, _, amp = built(data_root, tmp_path, DINO, "train.amp=true")
    assert amp.optim_wrapper.type == "AmpOptimWrapper"  # ecmctl's mixed precision around the config's optimizer
    assert amp.optim_wrapper.optimizer.type == "AdamW" and amp.optim_wrapper.clip_grad.max_norm == 0.1


def test_ecmctl_schedules_are_unchanged(data_root, tmp_path):
    cfg = compose(["detector=mmdet", f"detector.mmdet_config={YOLOX}", "detector.pretrained=null", "loss=bce",
                   "dataset=synth_tiny", f"data_root={data_root}"])
    assert cfg.schedule.name == "smoke" and cfg.schedule.native is False
    mm = build_mm_config(cfg, class_names_without_data(cfg), tmp_path)
    assert mm.optim_wrapper.optimizer.type == "SGD" and mm.train_cfg.type == "IterBasedTrainLoop"
    assert mm.train_dataloader.dataset.type == "ecmctl.PackedLVISV1Dataset"
    assert mm.custom_hooks == [dict(type="ecmctl.ProgressHook"), dict(type="ecmctl.RunProgressHook")]


def test_a_config_without_a_training_recipe_is_refused(tmp_path):
    own_cfg = tmp_path / "model_only.py"
    own_cfg.write_text("model = dict(type='RetinaNet')\n")
    with pytest.raises(UserError, match="has no training recipe"):
        compose(["detector=mmdet", f"detector.mmdet_config={own_cfg}", "schedule=native"])


def test_the_yolox_train_dataloader_builds_and_yields_a_batch(data_root, tmp_path):
    """mmengine builds the resolved loader (Mosaic over the LVIS-format set) and it yields one batch."""
    from mmdet.utils import register_all_modules
    from mmengine.runner import Runner

    import ecmctl.engine.compat  # noqa: F401  (registers ecmctl's scope)
    import ecmctl.engine.loops  # noqa: F401  (ecmctl.AspectRatioBatchSampler)
    import ecmctl.engine.packed_dataset  # noqa: F401  (ecmctl.PackedLVISV1Dataset)

    register_all_modules()
    _, _, mm = built(data_root, tmp_path, YOLOX, "train.batch_size=2")
    mm = Config(mm.to_dict())
    start = time.monotonic()
    batch = next(iter(Runner.build_dataloader(mm.train_dataloader, seed=0)))
    assert len(batch["inputs"]) == 2 and batch["inputs"][0].shape[-2:] == (640, 640)
    assert all(s.gt_instances.labels.max() < 8 for s in batch["data_samples"])
    assert time.monotonic() - start < 20


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["bce", "ecm"])
def test_train_yolox_with_its_own_recipe(data_root, tmp_path, loss):
    if loss == "ecm":
        import ecmctl.losses

        if not hasattr(ecmctl.losses, "ECMSigmoidBCELoss"):
            pytest.skip("the ECM sigmoid-BCE form is not in ecmctl.losses")
    run_dir = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "detector=mmdet", f"detector.mmdet_config={YOLOX}", "schedule=native",
                                   f"loss={loss}", "dataset=synth_tiny", "detector.pretrained=null",
                                   "train.max_iters=2", f"data_root={data_root}", f"run_root={tmp_path / 'runs'}",
                                   f"run_dir={run_dir}"])
    assert res.exit_code == 0, res.output
    assert "lr scaled linearly 0.01 -> 0.00125" in res.output
    assert (run_dir / "last_checkpoint").is_file()
    ckpt = Path((run_dir / "last_checkpoint").read_text().strip())
    assert ckpt.is_file() and ckpt.name == "iter_2.pth"
    mm = Config.fromfile(str(run_dir / "mmdet_config.py"))
    assert mm.train_dataloader.dataset.type == "MultiImageMixDataset" and mm.train_cfg.max_iters == 2
    assert mm.model.bbox_head.loss_cls.type == ("ECMSigmoidBCELoss" if loss == "ecm" else "CrossEntropyLoss")
