"""Hydra composition, the loss surgery on mmdet configs, and that every detector config builds."""

from __future__ import annotations

import pytest
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from typer.testing import CliRunner

from ecmctl.cli import app
from ecmctl.core.config import choices, compose, expand_sweep
from ecmctl.core.errors import UserError
from ecmctl.engine.builder import base_config, build_mm_config
from ecmctl.engine.placement import apply_loss, detector_kind, roi_bbox_heads

CLASSES = [f"class{i}" for i in range(6)]
DETECTORS = [d for d in choices("detector") if d != "mmdet"]  # mmdet: any config, tested in test_placement.py


def test_groups_offer_the_documented_choices():
    assert {"faster_rcnn_r50", "mask_rcnn_r50", "cascade_mask_rcnn_r50", "retinanet_r50", "fcos_r50",
            "atss_r50", "faster_rcnn_tiny", "mask_rcnn_tiny", "cascade_mask_rcnn_tiny", "atss_tiny"} <= set(DETECTORS)
    assert {"ecm", "bce", "ce", "seesaw", "eqlv2", "eql", "fed", "efl"} <= set(choices("loss"))
    assert {"smoke", "1x", "2x"} <= set(choices("schedule"))
    assert {"local", "torchrun", "slurm"} <= set(choices("launcher"))
    assert {"synth", "lvis_v1"} <= set(choices("dataset"))


def test_overrides_pass_through_unchanged():
    cfg = compose(["detector=atss_r50", "loss=ecm", "schedule=1x", "train.max_iters=100"])
    assert cfg.detector.name == "atss_r50" and cfg.schedule.name == "1x"
    assert cfg.train.max_iters == 100 and cfg.schedule.max_epochs == 12  # the paper's 1x: 12 epochs
    assert cfg.name == "atss_r50-ecm-synth"


def test_tiny_variant_inherits_mmdet_config_and_overrides_model():
    cfg = compose(["detector=cascade_mask_rcnn_tiny"])
    mm = base_config(cfg)
    heads = roi_bbox_heads(mm.model)
    assert len(heads) == 3 and all(h["in_channels"] == 32 for h in heads)
    assert mm.model.backbone.depth == 18 and mm.model.backbone.init_cfg is None
    # untouched fields still come from mmdet's shipped config
    assert [h["bbox_coder"]["target_stds"][0] for h in heads] == [0.1, 0.05, 0.033]


@pytest.mark.parametrize("overrides, message", [
    (["detector=nope"], "unknown detector 'nope'; valid: atss_r50"),
    (["loss=focal"], "unknown loss 'focal'; valid: bce, ce, ecm, efl, eql, eqlv2, fed, seesaw"),
    (["loss=eqlv"], "unknown loss 'eqlv'; valid: .*; did you mean 'eqlv2'"),
    (["no.such.key=1"], "config key 'no' does not exist"),
])
def test_bad_overrides_are_user_errors(overrides, message):
    with pytest.raises(UserError, match=message):
        compose(overrides)


def test_cli_bad_override_exits_2_without_traceback():
    res = CliRunner().invoke(app, ["train", "detector=nope"])
    assert res.exit_code == 2
    assert "valid: atss_r50" in res.output and "Traceback" not in res.output


def test_cli_cfg_prints_resolved_config():
    res = CliRunner().invoke(app, ["train", "--cfg", "detector=atss_tiny", "train.max_iters=7"])
    assert res.exit_code == 0, res.output
    assert "name: atss_tiny" in res.output and "max_iters: 7" in res.output


def test_sweep_expansion_is_hydras_basic_sweeper():
    jobs = expand_sweep(["loss=ecm,bce", "seed=0,1,2"])
    assert len(jobs) == 6 and ["loss=ecm", "seed=0"] in jobs and ["loss=bce", "seed=2"] in jobs


def _ecm_files(n: int) -> list[str]:
    return [f"w{i}.json" for i in range(n)]


def test_apply_loss_replaces_every_cascade_stage():
    mm = base_config(compose(["detector=cascade_mask_rcnn_r50"]))
    assert apply_loss(mm.model, {"type": "ecm"}, 6, _ecm_files(3)).kind == "cascade"
    assert [h["loss_cls"]["weights_file"] for h in roi_bbox_heads(mm.model)] == _ecm_files(3)
    assert all(h["num_classes"] == 6 for h in roi_bbox_heads(mm.model))
    assert mm.model.roi_head.mask_head["num_classes"] == 6
    assert mm.model.rpn_head.loss_cls["type"] == "CrossEntropyLoss"  # objectness untouched


def test_apply_loss_dense_and_refusals():
    mm = base_config(compose(["detector=retinanet_r50"]))
    apply_loss(mm.model, {"type": "ecm"}, 6, "w.json")
    assert mm.model.bbox_head.loss_cls["type"] == "ECMFocalLoss"
    with pytest.raises(UserError, match="not defined for the head RetinaHead"):
        apply_loss(mm.model, {"type": "seesaw"}, 6)
    odd = dict(type="GFL", bbox_head=dict(type="GFLHead", loss_cls=dict(type="MysteryLoss")))
    with pytest.raises(UserError, match=r"GFLHead \(bbox_head\) classifies with MysteryLoss, which has no ECM form"):
        apply_loss(odd, {"type": "ecm"}, 6, "w.json")
    with pytest.raises(UserError, match="has no head that predicts classes"):
        detector_kind({"type": "Mystery"})


def test_normed_head_recipe():
    mm = base_config(compose(["detector=mask_rcnn_r50", "detector.normed_head=true"]))
    assert mm.model.roi_head.bbox_head.cls_predictor_cfg == dict(type="NormedLinear", tempearture=20.0)
    assert mm.model.roi_head.mask_head.predictor_cfg == dict(type="NormedConv2d", tempearture=20.0)


@pytest.mark.parametrize("detector", DETECTORS)
def test_every_detector_builds_with_ecm(detector, tmp_path):
    """Each config in conf/detector/ with loss=ecm builds into a real mmdet model."""
    from ecmctl.ecm.weights import weights_document

    register_all_modules()
    import ecmctl.losses  # noqa: F401  (registers ECMLoss/ECMFocalLoss)

    counts = {"categories": [{"id": i + 1, "name": n, "instance_count": 10 * (i + 1)} for i, n in enumerate(CLASSES)]}
    cfg = compose([f"detector={detector}", "loss=ecm"])
    kind = detector_kind(base_config(cfg).model)
    path = tmp_path / "w.json"
    import json

    path.write_text(json.dumps(weights_document(counts, "x", None if kind == "one_stage" else 3.0)))
    files = [str(path)] * (3 if kind == "cascade" else 1) if kind != "one_stage" else str(path)
    mm = build_mm_config(cfg, CLASSES, tmp_path, files)
    model = MODELS.build(mm.model)
    if kind == "one_stage":
        expected = "ECMVarifocalLoss" if detector.startswith("vfnet") else "ECMFocalLoss"
        assert type(model.bbox_head.loss_cls).__name__ == expected
    else:
        heads = model.roi_head.bbox_head
        heads = list(heads) if kind == "cascade" else [heads]
        assert all(type(h.loss_cls).__name__ == "ECMLoss" for h in heads)
        assert all(h.fc_cls.out_features == len(CLASSES) + 1 for h in heads)


@pytest.mark.parametrize("key", ["data_root", "run_root"])
def test_an_empty_root_is_refused(key):
    """data_root= would put the dataset at /synth (a path from the filesystem's root)."""
    with pytest.raises(UserError, match=f"config key '{key}' is empty"):
        compose([f"{key}="])
