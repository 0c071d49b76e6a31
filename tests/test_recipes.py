"""The paper's recipes resolve to the published configs' values (official janghyuncho/ECM-Loss configs and the
supplementary), built through `ecmctl train --mmdet-config` without any data; the batch they assume is
enforced; a shrunk recipe really trains and resumes through the epoch-based loop with RFS."""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import pytest
from mmengine.config import Config
from typer.testing import CliRunner

from ecmctl.cli import app
from ecmctl.core.config import choices, compose
from ecmctl.pipeline.recipes import list_recipes, plan_batch

runner = CliRunner()
EIGHT_GPUS = ["launcher=torchrun", "launcher.nproc_per_node=8"]
PAPER = {"ecm_r50_1x": (26.9, 26.4), "ecm_r50_2x": (27.9, 27.5), "ecm_r101_2x": (29.4, 28.7),
         "ecm_cascade_r101_2x": (33.4, 30.6),
         # the compared losses' own papers (see each YAML): EQLv2 repo README / paper, EQL's v1 row there, EFL paper
         "eqlv2_r50_1x": (24.2, 23.7), "eql_r50_1x": (None, 18.6), "fed_r50_1x": (None, None),
         "efl_atss_r50_2x": (27.5, None)}
TWO_STAGE = {"ecm_r50_1x": ("mask_rcnn_r50", 50, "1x"), "ecm_r50_2x": ("mask_rcnn_r50", 50, "2x"),
             "ecm_r101_2x": ("mask_rcnn_r101", 101, "2x"), "ecm_cascade_r101_2x": ("cascade_mask_rcnn_r101", 101, "2x"),
             "bce_r50_1x": ("mask_rcnn_r50", 50, "1x"), "seesaw_r50_2x": ("mask_rcnn_r50", 50, "2x_baseline"),
             "eqlv2_r50_1x": ("mask_rcnn_r50", 50, "1x"), "eql_r50_1x": ("mask_rcnn_r50", 50, "1x"),
             "fed_r50_1x": ("mask_rcnn_r50", 50, "1x")}
ONE_STAGE = {"ecm_fcos_r50_1x": "fcos_r50", "ecm_atss_r50_1x": "atss_r50", "ecm_vfnet_r50_1x": "vfnet_r50",
             "efl_atss_r50_2x": "atss_r50"}
# recipes that follow another paper's official config instead of the ECM paper's (supplementary §B): RFS threshold
# (None: off), warmup (iterations, start factor), gradient clip, NormedLinear/NormedConv2d heads
OWN_SETTINGS = {"eqlv2_r50_1x": dict(rfs=None, warmup=(500, 1e-3), clip=None, normed=False),  # official mmdet 2.3
                "eql_r50_1x": dict(rfs=None, warmup=(500, 1e-3), clip=None, normed=False),
                "efl_atss_r50_2x": dict(rfs=1e-3, warmup=(7800, 1e-3), clip=35.0)}  # United-Perception
ROI_LOSS_TYPES = {"ecm": "ECMLoss", "bce": "CrossEntropyLoss", "seesaw": "SeesawLoss", "eqlv2": "SyncEQLv2Loss",
                  "eql": "EQLLoss", "fed": "FederatedLoss"}
RECIPES = [r for r in choices("recipe") if r != "none"]


def mmdet_config(tmp_path: Path, recipe: str, *extra: str) -> tuple[Config, str]:
    out = tmp_path / f"{recipe}.py"
    res = runner.invoke(app, ["train", f"recipe={recipe}", f"data_root={tmp_path / 'nowhere'}", *extra,
                              "--mmdet-config", str(out)])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "nowhere").exists()  # nothing read, nothing written but the config
    return Config.fromfile(str(out)), res.output


@functools.cache
def on_eight_gpus(recipe: str) -> tuple[Config, str]:
    """Each recipe's config at the paper's world size (8 x 2), built once for all the tests below."""
    return mmdet_config(Path(tempfile.mkdtemp(prefix="recipe-")), recipe, *EIGHT_GPUS)


def test_the_papers_rows_and_their_baselines_exist():
    assert {"ecm_r50_1x", "ecm_r50_2x", "ecm_r101_2x", "ecm_cascade_r101_2x", "ecm_fcos_r50_1x", "ecm_atss_r50_1x",
            "ecm_vfnet_r50_1x", "bce_r50_1x", "bce_r50_2x", "seesaw_r50_1x", "seesaw_r50_2x", "eqlv2_r50_1x",
            "eql_r50_1x", "fed_r50_1x", "efl_atss_r50_2x"} <= set(RECIPES)
    listed = {r.name: r for r in list_recipes()}
    assert set(listed) == set(RECIPES)
    for name, (box, mask) in PAPER.items():
        assert (listed[name].paper_bbox, listed[name].paper_segm) == (box, mask)
    assert listed["ecm_fcos_r50_1x"].paper_bbox is None  # no released number


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_builds_without_data(recipe):
    mm, out = on_eight_gpus(recipe)
    own = OWN_SETTINGS.get(recipe, {})
    assert "16 per iteration: the paper's setting" in out and "scaled" not in out
    assert "accumulative_counts" not in mm.optim_wrapper  # 8 x 2: nothing to accumulate
    # LVIS v1: 1203 classes, RFS 1e-3 (EQL/EQLv2's official configs: none), multi-scale 640..800 step 32 at random,
    # flip 0.5, test (1333, 800)
    train_ds = mm.train_dataloader.dataset
    if own.get("rfs", 1e-3):
        assert train_ds.type == "ecmctl.ClassBalancedDataset" and train_ds.oversample_thr == own.get("rfs", 1e-3)
        train_ds = train_ds.dataset
    else:
        assert train_ds.type == "ecmctl.PackedLVISV1Dataset"
    assert len(train_ds.metainfo["classes"]) == 1203
    resize = next(t for t in train_ds.pipeline if "Resize" in t.type)
    assert resize.type == "RandomChoiceResize" and resize.keep_ratio
    assert [tuple(s) for s in resize.scales] == [(1333, h) for h in range(640, 801, 32)]
    assert next(t for t in train_ds.pipeline if t.type == "RandomFlip").prob == 0.5
    test_resize = next(t for t in mm.test_dataloader.dataset.pipeline if t.type == "Resize")
    assert tuple(test_resize.scale) == (1333, 800)
    # 2 images and 2 workers per GPU; epochs of the RFS-resampled set, resumable inside an epoch
    assert mm.train_dataloader.batch_size == 2 and mm.train_dataloader.num_workers == 2
    assert mm.train_dataloader.sampler.type == "DefaultSampler"
    assert mm.train_dataloader.batch_sampler.type == "ecmctl.AspectRatioBatchSampler"
    assert mm.train_cfg.type == "ecmctl.EpochBasedTrainLoop" and "max_iters" not in mm.train_cfg
    warmup, steps = mm.param_scheduler
    warmup_iters, start = own.get("warmup", (10000, 1e-4))
    assert (warmup.type, warmup.by_epoch, warmup.start_factor, warmup.begin, warmup.end) == (
        "LinearLR", False, start, 0, warmup_iters)
    assert steps.type == "MultiStepLR" and steps.by_epoch and steps.gamma == 0.1
    two_x = "2x" in recipe
    assert mm.train_cfg.max_epochs == (24 if two_x else 12) and steps.end == mm.train_cfg.max_epochs
    baseline_2x = two_x and not recipe.startswith("ecm_")
    assert steps.milestones == ([16, 22] if baseline_2x else [20, 22] if two_x else [8, 11])
    assert mm.default_hooks.checkpoint.by_epoch is False and mm.default_hooks.checkpoint.interval == 5000
    model = mm.model
    test_cfg = model.test_cfg.get("rcnn", model.test_cfg)
    assert test_cfg.score_thr == 1e-4 and test_cfg.max_per_img == 300


@pytest.mark.parametrize("recipe", list(TWO_STAGE))
def test_two_stage_recipe_values(recipe):
    detector, depth, schedule = TWO_STAGE[recipe]
    own = OWN_SETTINGS.get(recipe, {})
    mm, _ = on_eight_gpus(recipe)
    model = mm.model
    assert model.backbone.depth == depth
    assert model.backbone.init_cfg == {"type": "Pretrained", "checkpoint": f"torchvision://resnet{depth}"}
    ow = mm.optim_wrapper
    assert ow.optimizer == {"type": "SGD", "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4}
    clip = own.get("clip", 5.0)
    assert ow.clip_grad == ({"max_norm": clip, "norm_type": 2} if clip else None)
    normed = own.get("normed", True)
    heads = model.roi_head.bbox_head if isinstance(model.roi_head.bbox_head, list) else [model.roi_head.bbox_head]
    assert len(heads) == (3 if "cascade" in recipe else 1)
    for head in heads:
        assert head.num_classes == 1203
        assert head.get("cls_predictor_cfg") == ({"type": "NormedLinear", "tempearture": 20.0} if normed  # sic
                                                 else None)
    loss = heads[0].loss_cls.type
    assert loss == ROI_LOSS_TYPES[recipe.split("_")[0]]
    if loss == "ECMLoss":  # what calibration writes into the run's inputs/
        names = [h.loss_cls.weights_file for h in heads]
        assert names == (["inputs/weights.json"] if len(heads) == 1 else
                         [f"inputs/weights_stage{i}.json" for i in range(3)])
    lc = heads[0].loss_cls
    if loss == "SyncEQLv2Loss":  # the official EQLv2 defaults
        assert (lc.num_classes, lc.gamma, lc.mu, lc.alpha, lc.loss_weight) == (1203, 12.0, 0.8, 4.0, 1.0)
    if loss == "EQLLoss":  # official LVIS v1 config: lambda_=0.0011; frequencies from the run's counts
        assert (lc.lambda_, lc.counts_file) == (0.0011, "inputs/counts.json")
    if loss == "FederatedLoss":  # detectron2's FED_LOSS_NUM_CLASSES, FED_LOSS_FREQ_WEIGHT_POWER; the run's seed
        assert (lc.num_sampled_classes, lc.freq_weight_power, lc.counts_file) == (50, 0.5, "inputs/counts.json")
        assert "seed" not in lc
    assert model.roi_head.mask_head.get("predictor_cfg") == ({"type": "NormedConv2d", "tempearture": 20.0} if normed
                                                             else None)
    assert model.roi_head.mask_head.num_classes == 1203
    rcnn = model.train_cfg.rcnn if not isinstance(model.train_cfg.rcnn, list) else model.train_cfg.rcnn[0]
    assert (rcnn.sampler.num, rcnn.sampler.pos_fraction) == (512, 0.25)
    assert (model.train_cfg.rpn.sampler.num, model.train_cfg.rpn.sampler.pos_fraction) == (256, 0.5)
    rcnn_test = model.test_cfg.rcnn
    assert rcnn_test.nms.iou_threshold == 0.5 and rcnn_test.mask_thr_binary == 0.5


@pytest.mark.parametrize("recipe", list(ONE_STAGE))
def test_one_stage_recipe_values(recipe):
    mm, _ = on_eight_gpus(recipe)
    model = mm.model
    loss = model.bbox_head.loss_cls
    if recipe == "efl_atss_r50_2x":  # United-Perception's efl_improved_baseline_r50_2x_rfs.yaml
        assert mm.optim_wrapper.optimizer == {"type": "SGD", "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4}
        assert mm.optim_wrapper.clip_grad == {"max_norm": 35.0, "norm_type": 2}
        assert (loss.type, loss.use_sigmoid, loss.num_classes, loss.gamma, loss.alpha, loss.scale_factor) == (
            "EqualizedFocalLoss", True, 1203, 2.0, 0.25, 8.0)
        assert model.bbox_head.init_cfg.override.bias_prob == 0.001 and model.train_cfg.assigner.topk == 18
        return
    assert mm.optim_wrapper.optimizer.lr == 0.01
    if recipe == "ecm_vfnet_r50_1x":
        assert (loss.type, loss.gamma, loss.alpha) == ("ECMVarifocalLoss", 2.0, 0.75)
    else:
        assert (loss.type, loss.gamma, loss.alpha) == ("ECMFocalLoss", 2.0, 0.25)
    assert loss.weights_file == "inputs/weights.json"
    if recipe == "ecm_fcos_r50_1x":  # mmdet's own FCOS optimizer settings are kept
        assert mm.optim_wrapper.paramwise_cfg == {"bias_lr_mult": 2.0, "bias_decay_mult": 0.0}
        assert mm.optim_wrapper.clip_grad == {"max_norm": 35, "norm_type": 2}
    else:
        assert model.train_cfg.assigner.topk == 18
    assert model.test_cfg.score_thr == 1e-4 and model.test_cfg.max_per_img == 300


def test_scale_lr_policy_scales_the_lr_and_says_so(tmp_path):
    """recipe.batch_policy=scale_lr: the behaviour before accumulation, the lr scaled linearly."""
    mm, out = mmdet_config(tmp_path, "ecm_r50_1x", "launcher=torchrun", "launcher.nproc_per_node=4",
                           "recipe.batch_policy=scale_lr")
    assert mm.optim_wrapper.optimizer.lr == pytest.approx(0.01) and "accumulative_counts" not in mm.optim_wrapper
    assert mm.param_scheduler[0].end == 10000 and mm.default_hooks.checkpoint.interval == 5000
    line = " ".join(out.split())
    assert "4 processes x 2 images = 8 per iteration" in line and "NOT the paper's setting" in line
    assert "lr scaled linearly 0.02 -> 0.01" in line
    slurm, out = mmdet_config(tmp_path, "ecm_r50_1x", "launcher=slurm", "launcher.nodes=2", "launcher.gpus_per_node=8",
                              "recipe.batch_policy=scale_lr")
    assert slurm.optim_wrapper.optimizer.lr == pytest.approx(0.04) and "16 processes" in out


def test_four_gpus_accumulate_two_steps_to_the_papers_batch(tmp_path):
    """The issue's example: `ecmctl train recipe=ecm_r50_1x launcher=torchrun launcher.nproc_per_node=4
    --mmdet-config out.py` is 2 accumulation steps, lr 0.02 and a 20,000-micro-step (10,000-update) warmup; the
    lr steps stay at epochs 8 and 11, checkpoints every 5,000 updates; recipe.strict accepts it."""
    for strict in ([], ["recipe.strict=true"]):
        mm, out = mmdet_config(tmp_path, "ecm_r50_1x", "launcher=torchrun", "launcher.nproc_per_node=4", *strict)
        assert "16 images per update (4 × 2 × 2 accumulation steps): the paper's setting" in " ".join(out.split())
        assert mm.optim_wrapper.accumulative_counts == 2 and mm.optim_wrapper.optimizer.lr == 0.02
        warmup, steps = mm.param_scheduler
        assert (warmup.type, warmup.by_epoch, warmup.begin, warmup.end) == ("LinearLR", False, 0, 20000)
        assert steps.by_epoch and steps.milestones == [8, 11] and mm.train_cfg.max_epochs == 12
        assert mm.default_hooks.checkpoint.interval == 10000 and mm.train_dataloader.batch_size == 2


def test_a_batch_that_does_not_divide_the_recipes_is_one_line_with_the_nearest_settings(tmp_path):
    out = tmp_path / "x.py"
    res = runner.invoke(app, ["train", "recipe=ecm_r50_1x", "launcher=torchrun", "launcher.nproc_per_node=3",
                              "--mmdet-config", str(out)])
    line = " ".join(res.output.split())
    assert res.exit_code == 2 and "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1, line
    assert "16 images per update" in line and "6-image iterations (3 x 2)" in line
    assert "launcher.nproc_per_node=2 (2 × 2 × 4 accumulation steps)" in line
    assert "launcher.nproc_per_node=4 (4 × 2 × 2 accumulation steps)" in line
    assert "recipe.batch_policy=scale_lr" in line and not out.exists()
    res = runner.invoke(app, ["train", "recipe=ecm_r50_1x", "launcher=slurm", "launcher.nodes=2",
                              "launcher.gpus_per_node=8", "--mmdet-config", str(out)])
    line = " ".join(res.output.split())  # 32 images per iteration: more than the recipe's batch
    assert res.exit_code == 2 and "8 processes (8 × 2, no accumulation)" in line
    assert "train.batch_size=1 (16 × 1, no accumulation)" in line and not out.exists()


def test_strict_recipe_refuses_another_batch(tmp_path):
    """recipe.strict=true with batch_policy=scale_lr refuses any other batch; with accumulate (the default) one
    process accumulating 8 steps makes the recipe's batch, and is accepted."""
    res = runner.invoke(app, ["train", "recipe=ecm_r50_1x", "recipe.strict=true", "recipe.batch_policy=scale_lr",
                              "--mmdet-config", str(tmp_path / "x.py")])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "assumes 16 images per iteration" in " ".join(res.output.split())
    assert not (tmp_path / "x.py").exists()
    for extra in (EIGHT_GPUS, []):
        ok = runner.invoke(app, ["train", "recipe=ecm_r50_1x", "recipe.strict=true", *extra, "--mmdet-config",
                                 str(tmp_path / "x.py")])
        assert ok.exit_code == 0, ok.output
    assert "(1 × 2 × 8 accumulation steps)" in " ".join(ok.output.split())


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_accumulates_to_its_batch_on_1_2_4_8_gpus(recipe, tmp_path):
    """World sizes 1, 2, 4, 8 x 2 images: 8, 4, 2, 1 accumulation steps to 16 images per update, the recipe's lr
    and optimizer, every iteration-counted quantity in updates (mmengine counts micro-steps: x steps: warmup,
    checkpoint and log intervals, a max_iters cap); epochs (lr steps, loop length) stay epochs."""
    from omegaconf import OmegaConf

    from ecmctl.engine.builder import build_mm_config
    from ecmctl.pipeline.prepare import class_names_without_data
    from ecmctl.pipeline.train import RUN_COUNTS, plan_run

    ref, _ = on_eight_gpus(recipe)  # the CLI's config at the paper's 8 x 2
    ref_warmup, ref_steps = ref.param_scheduler
    cfg = compose([f"recipe={recipe}", f"data_root={tmp_path / 'nowhere'}", "launcher=torchrun", "train.max_iters=300"])
    names = plan_run(cfg).weights_names(cfg.loss.type)
    classes = class_names_without_data(cfg)
    lr = ref.optim_wrapper.optimizer.lr
    for world in (1, 2, 4, 8):
        OmegaConf.update(cfg, "launcher.nproc_per_node", world)
        plan = plan_batch(cfg)
        k = 8 // world
        assert (plan.policy, plan.accumulation, plan.effective_batch, plan.lr) == ("accumulate", k, 16, lr)
        mm = build_mm_config(cfg, classes, "RUN_DIR", names, lr=plan.lr, accumulation=plan.accumulation,
                             counts_file=RUN_COUNTS)
        ow = mm.optim_wrapper
        assert ow.get("accumulative_counts", 1) == k and ow.optimizer.lr == lr
        assert {key: v for key, v in ow.items() if key != "accumulative_counts"} == ref.optim_wrapper.to_dict()
        warmup, steps = mm.param_scheduler
        assert (warmup.by_epoch, warmup.begin, warmup.start_factor) == (False, 0, ref_warmup.start_factor)
        assert warmup.end == k * ref_warmup.end  # e.g. 10,000 updates = 80,000 micro-steps on one GPU
        assert steps.by_epoch and (steps.milestones, steps.end) == (ref_steps.milestones, ref_steps.end)
        assert mm.train_cfg.max_epochs == ref.train_cfg.max_epochs and mm.train_cfg.max_iters == 300 * k  # the cap
        assert mm.default_hooks.checkpoint.interval == k * ref.default_hooks.checkpoint.interval
        assert mm.default_hooks.logger.interval == 30 * k and mm.train_dataloader.batch_size == 2


def test_iteration_based_schedules_count_updates(tmp_path):
    """An iteration-based schedule under accumulation: max_iters, milestones, warmup, validation, checkpoint and
    log intervals, all given in updates, become k x as many micro-steps."""
    from ecmctl.engine.builder import build_mm_config

    cfg = compose(["schedule=demo", f"data_root={tmp_path / 'nowhere'}", "loss=bce", "train.val_interval=100"])
    one = build_mm_config(cfg, ["a", "b"], tmp_path, accumulation=1)
    three = build_mm_config(cfg, ["a", "b"], tmp_path, accumulation=3)
    assert (one.train_cfg.max_iters, three.train_cfg.max_iters) == (300, 900)
    assert (one.train_cfg.val_interval, three.train_cfg.val_interval) == (100, 300)
    assert [3 * m for m in one.param_scheduler[1].milestones] == three.param_scheduler[1].milestones == [675, 828]
    assert (one.param_scheduler[0].end, three.param_scheduler[0].end) == (50, 150)
    assert three.param_scheduler[1].end == 900 and three.optim_wrapper.accumulative_counts == 3
    assert three.default_hooks.checkpoint.interval == 3 * one.default_hooks.checkpoint.interval == 900
    assert three.default_hooks.logger.interval == 3 * one.default_hooks.logger.interval


def test_run_json_records_the_policy_steps_batch_and_amp(data_root, tmp_path, monkeypatch):
    """prepare() (no training) of a recipe on one process: run.json has the policy, 8 accumulation steps, 16 images
    per update, 2 per iteration, and train.amp=true with its dtype `auto` (decided on each rank; the mmdet
    config has no dtype). A GPU is faked for the check that amp has one."""
    import torch

    from ecmctl.pipeline.train import prepare

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "a faked GPU")
    cfg = compose([f"data_root={data_root}", f"run_root={tmp_path / 'runs'}", "recipe=ecm_r50_1x",
                   "detector=mask_rcnn_tiny", "dataset=synth_tiny", "dataset.rfs_thr=0.001",
                   "dataset.multiscale=[[96,96]]", "calibrate.bg_ratio=6.3313", "train.amp=true"])
    said: list[str] = []
    run = prepare(cfg, [], say=said.append)
    run.unlock()
    meta = json.loads((run.path / "run.json").read_text())
    assert (meta["batch_policy"], meta["accumulation_steps"], meta["effective_batch"]) == ("accumulate", 8, 16)
    assert (meta["images_per_iteration"], meta["world_size"], meta["lr"]) == (2, 1, 0.02)
    assert (meta["amp"], meta["amp_dtype"]) == (True, "auto")
    mm = Config.fromfile(str(run.path / "mmdet_config.py"))
    assert mm.optim_wrapper.type == "AmpOptimWrapper" and "dtype" not in mm.optim_wrapper
    assert mm.optim_wrapper.accumulative_counts == 8 and mm.param_scheduler[0].end == 80000
    assert "16 images per update (1 × 2 × 8 accumulation steps): the paper's setting" in said[0]


def test_recipes_command_lists_every_recipe_with_its_command():
    res = CliRunner().invoke(app, ["recipes"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    for name in RECIPES:
        assert f"recipe={name} " in res.output
    assert "26.9 / 26.4" in res.output and "calibrate.bg_ratio=6.3313" in res.output
    assert "24.2 / 23.7" in res.output and "- / 18.6" in res.output and "27.5 / -" in res.output  # EQLv2, EQL, EFL


def test_official_background_ratio_override(tmp_path):
    cfg = compose(["recipe=ecm_cascade_r101_2x", "calibrate.bg_ratio=6.3313"])
    assert cfg.calibrate.bg_ratio == 6.3313


def test_run_name_says_the_recipe_and_depth():
    assert compose(["recipe=ecm_r101_2x"]).name == "ecm_r101_2x-lvis_v1"
    assert compose(["recipe=ecm_r101_2x"]).detector.name == "mask_rcnn_r101"


def test_offline_node_gets_one_line_with_the_remedies(tmp_path, monkeypatch):
    """The default backbone checkpoint is not cached and cannot be downloaded (a proxy that refuses)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("https_proxy", "http_proxy", "HTTPS_PROXY", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    res = runner.invoke(app, ["train", "detector=mask_rcnn_r50", f"run_root={tmp_path / 'runs'}"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    line = " ".join(res.output.split())
    assert "https://download.pytorch.org/models/resnet50" in line
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in line
    assert "ecmctl prefetch" in line and "detector.pretrained=PATH" in line and "detector.pretrained=null" in line
    assert not (tmp_path / "runs").exists()  # refused before any run directory exists


def test_prefetch_and_local_pretrained_file(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    ckpt = tmp_path / "r18.pth"
    torch.save({"state_dict": {}}, ckpt)
    res = runner.invoke(app, ["prefetch", "detector=faster_rcnn_tiny", f"detector.pretrained={ckpt}"])
    assert res.exit_code == 0 and f"{ckpt}: {ckpt}" in " ".join(res.output.split())
    res = runner.invoke(app, ["prefetch", "detector=faster_rcnn_tiny", "detector.pretrained=/nonexistent.pth"])
    assert res.exit_code == 2 and "no such file" in res.output
    res = runner.invoke(app, ["prefetch", "detector=faster_rcnn_tiny"])
    assert res.exit_code == 0 and "nothing to fetch" in res.output


@pytest.mark.slow
def test_full_size_mask_rcnn_trains_offline_from_random_init(overrides, tmp_path):
    """detector=mask_rcnn_r50 detector.pretrained=null: one iteration of the full-size model, small images."""
    job = [*overrides, "detector=mask_rcnn_r50", "detector.pretrained=null", "loss=bce", "train.max_iters=1",
           "train.checkpoint_interval=1", "dataset.train_scale=[64,64]", "dataset.test_scale=[64,64]", "name=full"]
    res = runner.invoke(app, ["train", *job])
    assert res.exit_code == 0, res.output
    (run_dir,) = list(Path(next(o for o in overrides if o.startswith("run_root=")).split("=", 1)[1], "full").iterdir())
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "finished" and meta["pretrained"] is None


SHRUNK = ["detector=mask_rcnn_tiny", "dataset=synth", "dataset.rfs_thr=0.001", "dataset.multiscale=[[96,80],[96,96]]",
          "dataset.test_scale=[96,96]", "schedule.checkpoint_interval=1", "schedule.warmup_iters=2",
          "recipe.batch_policy=scale_lr"]  # one process, 2 images per update: the iteration counts below


class RecordBatches:
    """An mmengine hook object recording the image ids of every training batch."""

    priority = "LOWEST"

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __getattr__(self, name):  # every other hook stage: nothing to do
        if name.startswith(("before_", "after_")):
            return lambda *a, **k: None
        raise AttributeError(name)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.batches.append(sorted(s.metainfo["img_id"] for s in data_batch["data_samples"]))


@pytest.mark.slow
def test_shrunk_recipe_trains_and_resumes_inside_an_epoch(overrides, tmp_path):
    """recipe=ecm_r50_1x with the tiny model on the synthetic set: the epoch-based loop with RFS, capped at 2
    iterations, then resumed to 4 inside the same epoch; iterations 3-4 see exactly the batches that an
    uninterrupted 4-iteration run sees (mmengine's own loop would replay the epoch from its start)."""
    import torch
    from mmengine.hooks import Hook

    from ecmctl.engine.runner import train_run
    from ecmctl.pipeline.train import finished_iters, prepare

    class Recorder(RecordBatches, Hook):
        pass

    roots = [o for o in overrides if o.startswith(("data_root=", "run_root="))]  # not the fixture's schedule

    def run(cap: int, name: str):
        cfg = compose([*roots, "recipe=ecm_r50_1x", *SHRUNK, f"train.max_iters={cap}", f"name={name}",
                       "calibrate.bg_ratio=6.3313", "train.num_workers=0"])
        assert cfg.schedule.name == "1x" and cfg.schedule.by_epoch and cfg.dataset.rfs_thr == 0.001
        r = prepare(cfg, [], say=lambda m: None)
        r.unlock()
        return r

    full, rec_full = run(4, "full"), Recorder()
    train_run(full.path, hooks=[rec_full])
    part, rec_part = run(2, "part"), Recorder()
    train_run(part.path, hooks=[rec_part])
    assert finished_iters(part.path) == 2
    mm = (part.path / "mmdet_config.py").read_text()
    assert "max_iters=2" in mm and "ClassBalancedDataset" in mm and "ecmctl.EpochBasedTrainLoop" in mm
    (part.path / "mmdet_config.py").write_text(mm.replace("max_iters=2", "max_iters=4"))
    train_run(part.path, resume=True, hooks=[rec_part])
    assert finished_iters(part.path) == 4
    assert len(rec_full.batches) == 4 and rec_part.batches == rec_full.batches
    meta = torch.load(part.path / "iter_4.pth", map_location="cpu", weights_only=False)["meta"]
    assert meta["epoch"] == 0 and meta["iter"] == 4  # still inside the first (RFS-resampled) epoch
    assert "Epoch(train)" in next(full.path.glob("*/*.log")).read_text()


def test_eval_table_shows_the_papers_numbers_next_to_the_measured_ones():
    from rich.console import Console

    from ecmctl.cli.render import metrics_table

    doc = {"run": "runs/ecm_r50_1x-lvis_v1/20261128-000000", "recipe": {"name": "ecm_r50_1x",
           "paper": {"bbox": 26.9, "segm": 26.4}}, "bbox": {"AP": 0.25, "APr": 0.1}, "segm": {"AP": 0.27}}
    console = Console(width=200, record=True)
    console.print(metrics_table([doc]))
    text = console.export_text()
    assert "paper (ecm_r50_1x; measured Δ)" in text
    assert "26.9 (-1.9)" in text and "26.4 (+0.6)" in text
    plain = {k: v for k, v in doc.items() if k != "recipe"}
    console = Console(width=200, record=True)
    console.print(metrics_table([plain]))
    assert "paper" not in console.export_text()
