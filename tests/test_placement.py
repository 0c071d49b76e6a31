"""The placement walks any mmdet model config: every classification site, its ECM form, every class count,
and one-line refusals before anything is written; `detector=mmdet` takes mmdet's configs and the user's own."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from mmengine.config import Config
from typer.testing import CliRunner

from ecmctl.cli import app
from ecmctl.core.config import compose
from ecmctl.core.errors import UserError
from ecmctl.ecm.weights import weights_file_names
from ecmctl.engine.builder import base_config, build_mm_config, mmdet_config_path
from ecmctl.engine.placement import (
    apply_loss,
    drop_semantic_branch,
    model_has_masks,
    node_at,
    plan_placement,
    walk_dicts,
)

ZOO = importlib.util.spec_from_file_location("detector_zoo", Path(__file__).parents[1] / "benchmarks/detector_zoo.py")
zoo = importlib.util.module_from_spec(ZOO)
ZOO.loader.exec_module(zoo)
REFUSED = {"autoassign": "AutoAssignHead computes its classification loss in code",
           "free_anchor": "FreeAnchorRetinaHead computes its classification loss in code",
           "ssd": "SSDHead computes its softmax classification loss"}


def model_of(rel: str) -> dict:
    model = Config.fromfile(str(mmdet_config_path(rel))).model.to_dict()
    drop_semantic_branch(model)
    return model


def files_for(placement) -> list[str]:
    return [f"w/{n}" for n in weights_file_names(placement.stages, placement.needs_fg)]


@pytest.mark.parametrize("family", sorted(zoo.FAMILIES))
def test_every_zoo_family_is_placed_or_refused_in_one_line(family):
    """ECM reaches every classification site of each family's config; nothing keeps 80 COCO classes."""
    model = model_of(zoo.FAMILIES[family])
    if family in REFUSED:
        with pytest.raises(UserError, match=REFUSED[family]) as err:
            plan_placement(model)
        assert "\n" not in str(err.value)
        return
    placement = apply_loss(model, {"type": "ecm"}, 7, files_for(placement := plan_placement(model)))
    assert placement.sites
    for site in placement.sites:
        loss = node_at(model, site.path)[site.loss_key]
        assert loss["type"] == site.form and loss["weights_file"].startswith("w/")
        assert loss["weights_file"].endswith(("weights.json", "weights_fg.json") if not site.background or
                                             placement.stages == 1 else ".json")
    for path, node in walk_dicts(model):
        if isinstance(node.get("num_classes"), int):
            assert node["num_classes"] == 7, (family, path)
        if "num_things_classes" in node:
            assert (node["num_things_classes"], node["num_stuff_classes"]) == (7, 0)


def test_forms_per_loss_family():
    """One line per detector: the sites found and the form each one gets."""
    def forms(rel):
        return [(s.where, s.loss_key, s.form, s.background) for s in plan_placement(model_of(rel)).sites]

    assert forms("tood/tood_r50_fpn_1x_coco.py") == [("bbox_head", "loss_cls", "ECMQualityFocalLoss", False),
                                                     ("bbox_head", "initial_loss_cls", "ECMFocalLoss", False)]
    assert forms("yolox/yolox_tiny_8xb8-300e_coco.py") == [("bbox_head", "loss_cls", "ECMSigmoidBCELoss", False)]
    assert forms("ghm/retinanet_r50_fpn_ghm-1x_coco.py") == [("bbox_head", "loss_cls", "ECMGHMC", False)]
    assert forms("cornernet/cornernet_hourglass104_8xb6-210e-mstest_coco.py") == [
        ("bbox_head", "loss_heatmap", "ECMGaussianFocalLoss", False)]
    assert forms("detr/detr_r50_8xb2-150e_coco.py") == [("bbox_head", "loss_cls", "ECMNoObjectLoss", True)]
    assert forms("mask2former/mask2former_r50_8xb2-lsj-50e_coco.py") == [
        ("panoptic_head", "loss_cls", "ECMNoObjectLoss", True)]
    assert forms("ddq/ddq-detr-4scale_r50_8xb2-12e_coco.py") == [
        ("bbox_head", "loss_cls", "ECMFocalLoss", False), ("bbox_head", "aux_loss_cls", "ECMQualityFocalLoss", False)]
    assert [f[:3] for f in forms("htc/htc_r50_fpn_1x_coco.py")] == [
        (f"roi_head.bbox_head.{i}", "loss_cls", "ECMLoss") for i in range(3)]
    sparse = plan_placement(model_of("sparse_rcnn/sparse-rcnn_r50_fpn_1x_coco.py"))
    assert len(sparse.sites) == 6 and sparse.stages == 0 and sparse.kind == "one_stage"
    # Grid R-CNN's box head inherits BBoxHead's loss: found and written out
    grid = model_of("grid_rcnn/grid-rcnn_r50_fpn_gn-head_2x_coco.py")
    assert [s.form for s in plan_placement(grid).sites] == ["ECMLoss"]
    assert grid["roi_head"]["bbox_head"]["loss_cls"]["type"] == "CrossEntropyLoss"


def test_ecm_form_keeps_the_sites_own_arguments():
    """FSAF's reduction='none' (it reduces itself), Mask2Former's loss weight 2.0 times loss.loss_weight."""
    fsaf = model_of("fsaf/fsaf_r50_fpn_1x_coco.py")
    apply_loss(fsaf, {"type": "ecm"}, 5, "w.json")
    assert fsaf["bbox_head"]["loss_cls"]["reduction"] == "none"
    m2f = model_of("mask2former/mask2former_r50_8xb2-lsj-50e_coco.py")
    apply_loss(m2f, {"type": "ecm", "loss_weight": 0.5}, 5, ["w.json"])
    assert m2f["panoptic_head"]["loss_cls"]["loss_weight"] == 1.0
    # no-object heads score with ECM: the head, the fusion head and the matcher's cost are ecmctl's
    assert m2f["panoptic_head"]["type"] == "ECMMask2FormerHead"
    assert m2f["panoptic_fusion_head"]["type"] == "ECMMaskFormerFusionHead"
    costs = m2f["train_cfg"]["assigner"]["match_costs"]
    assert costs[0]["type"] == "ECMClassificationCost"
    assert m2f["test_cfg"]["instance_on"] and not m2f["test_cfg"]["panoptic_on"]
    sabl = model_of("sabl/sabl-faster-rcnn_r50_fpn_1x_coco.py")
    apply_loss(sabl, {"type": "ecm"}, 5, ["w.json"])
    assert sabl["roi_head"]["bbox_head"]["type"] == "ECMSABLHead"


def test_no_object_class_weights_follow_the_class_count():
    """Mask2Former's own loss weighs 80 classes 1.0 and no-object 0.1: with 5 classes (the calibration run
    trains with the config's own loss) it weighs 5 classes 1.0 and no-object 0.1."""
    model = model_of("mask2former/mask2former_r50_8xb2-lsj-50e_coco.py")
    apply_loss(model, {"type": "native"}, 5)
    assert model["panoptic_head"]["loss_cls"]["class_weight"] == [1.0] * 5 + [0.1]
    odd = {"type": "X", "bbox_head": {"type": "DETRHead", "num_classes": 3, "loss_cls": {
        "type": "CrossEntropyLoss", "use_sigmoid": False, "class_weight": [1.0, 2.0, 1.0, 0.1]}}}
    with pytest.raises(UserError, match="weighs the config's 3 classes differently"):
        apply_loss(odd, {"type": "native"}, 5)


def test_weights_files_one_per_background_stage_then_foreground():
    assert weights_file_names(0, True) == ["weights.json"]
    assert weights_file_names(1) == ["weights.json"]
    assert weights_file_names(3) == ["weights_stage0.json", "weights_stage1.json", "weights_stage2.json"]
    assert weights_file_names(1, True) == ["weights.json", "weights_fg.json"]
    model = model_of("cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py")
    with pytest.raises(UserError, match="2 weights files for 3 background stage"):
        apply_loss(model, {"type": "ecm"}, 5, ["a.json", "b.json"])


def test_baselines_are_refused_where_they_do_not_apply():
    with pytest.raises(UserError, match="not defined for the head RTMDetSepBNHead"):
        apply_loss(model_of("rtmdet/rtmdet_tiny_8xb32-300e_coco.py"), {"type": "seesaw"}, 5)
    model = model_of("rtmdet/rtmdet_tiny_8xb32-300e_coco.py")
    apply_loss(model, {"type": "bce"}, 5)
    assert model["bbox_head"]["loss_cls"]["type"] == "QualityFocalLoss"  # bce keeps the detector's own loss


def test_masks_are_read_from_the_model():
    assert model_has_masks(model_of("mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py"))
    assert model_has_masks(model_of("rtmdet/rtmdet-ins_tiny_8xb32-300e_coco.py"))
    assert model_has_masks(model_of("solo/solo_r50_fpn_1x_coco.py"))
    assert model_has_masks(model_of("yolact/yolact_r50_1xb8-55e_coco.py"))
    assert not model_has_masks(model_of("faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py"))
    assert not model_has_masks(model_of("detr/detr_r50_8xb2-150e_coco.py"))


def test_random_init_covers_every_checkpoint_in_the_model():
    """detector.pretrained=null: TridentNet's shared head and LAD's teacher load nothing either."""
    for rel in ("tridentnet/tridentnet_r50-caffe_1x_coco.py", "lad/lad_r50-paa-r101_fpn_2xb8_coco_1x.py",
                "ld/ld_r18-gflv1-r101_fpn_1x_coco.py"):
        mm = base_config(compose(["detector=mmdet", f"detector.mmdet_config={rel}", "detector.pretrained=null"]))
        for path, node in walk_dicts(mm.model):
            init = node.get("init_cfg")
            assert not (isinstance(init, dict) and init.get("type") == "Pretrained"), (rel, path)
            assert node.get("teacher_ckpt") is None and not isinstance(node.get("pretrained"), str), (rel, path)
    ld = base_config(compose(["detector=mmdet", "detector.mmdet_config=ld/ld_r18-gflv1-r101_fpn_1x_coco.py"]))
    assert ld.model.teacher_config["model"]["type"] == "GFL"  # inlined, so its classes can be set


def test_mmdet_route_with_the_users_own_config(tmp_path, monkeypatch):
    """An absolute or cwd-relative .py with `_base_` inheritance; the run name is the file's name."""
    own = tmp_path / "cfgs" / "my_retina.py"
    own.parent.mkdir()
    base = mmdet_config_path("retinanet/retinanet_r50_fpn_1x_coco.py")
    own.write_text(f"_base_ = [{str(base)!r}]\nmodel = dict(bbox_head=dict(stacked_convs=1))\n")
    monkeypatch.chdir(tmp_path)
    cfg = compose(["detector=mmdet", "detector.mmdet_config=cfgs/my_retina.py"])
    assert cfg.detector.name == "my_retina" and cfg.name.startswith("my_retina-ecm-")
    assert cfg.detector.mmdet_config == str(own)  # recorded absolute: runs resume from anywhere
    mm = build_mm_config(cfg, [f"c{i}" for i in range(4)], tmp_path / "w", "w.json")
    assert mm.model.bbox_head.stacked_convs == 1 and mm.model.bbox_head.num_classes == 4
    assert mm.test_evaluator["metric"] == ["bbox"]
    named = compose(["detector=mmdet", f"detector.mmdet_config={own}", "detector.name=mine"])
    assert named.name.startswith("mine-")
    with pytest.raises(UserError, match="detector=mmdet needs detector.mmdet_config=PATH"):
        compose(["detector=mmdet"])
    with pytest.raises(UserError, match="neither a file"):
        base_config(compose(["detector=mmdet", "detector.mmdet_config=nope/nope.py"]))
    bad = tmp_path / "broken.py"
    bad.write_text("model = dict(type=\n")
    with pytest.raises(UserError, match="cannot be loaded as an mmdet config"):
        base_config(compose(["detector=mmdet", f"detector.mmdet_config={bad}"]))
    with pytest.raises(UserError, match="with_mask=true, but"):
        build_mm_config(compose(["detector=mmdet", f"detector.mmdet_config={own}", "detector.with_mask=true"]),
                        ["a", "b"], tmp_path / "w", "w.json")


@pytest.mark.parametrize("config, message", [
    ("autoassign/autoassign_r50-caffe_fpn_1x_coco.py", "AutoAssignHead computes its classification loss in code"),
    ("rpn/rpn_r50_fpn_1x_coco.py", "has no head that predicts classes"),
])
def test_refusal_comes_before_anything_is_written(config, message, tmp_path):
    res = CliRunner().invoke(app, ["train", "detector=mmdet", f"detector.mmdet_config={config}",
                                   "dataset=synth_tiny", f"data_root={tmp_path / 'data'}",
                                   f"run_root={tmp_path / 'runs'}"])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_mmdet_config_for_a_query_detector_names_its_weights(tmp_path):
    """`train --mmdet-config` for DETR: one weights file with background, an ECM head and cost."""
    out = tmp_path / "detr.py"
    res = CliRunner().invoke(app, ["train", "detector=mmdet", "detector.mmdet_config=detr/detr_r50_8xb2-150e_coco.py",
                                   "dataset=synth_tiny", "--mmdet-config", str(out)])
    assert res.exit_code == 0, res.output
    mm = Config.fromfile(str(out))
    assert mm.model.bbox_head.type == "ECMDETRHead"
    assert mm.model.bbox_head.loss_cls.weights_file == "inputs/weights.json"
    assert json.dumps(mm.model.train_cfg.to_dict()).count("ECMClassificationCost") == 1


def test_sabl_scores_with_its_loss_not_softmax(tmp_path):
    """SABLHead applies softmax whatever its loss; ecmctl's subclass scores with ECM's σ(s_c)·(1 − σ(s_bg))."""
    import torch
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    import ecmctl.engine.ecm_heads  # noqa: F401  (registers ECMSABLHead)
    import ecmctl.losses  # noqa: F401
    from ecmctl.ecm.weights import weights_document

    register_all_modules()
    counts = {"categories": [{"id": i + 1, "name": f"c{i}", "instance_count": 10 * (i + 1)} for i in range(5)]}
    wf = tmp_path / "w.json"
    wf.write_text(json.dumps(weights_document(counts, "x", 3.0)))
    model = model_of("sabl/sabl-faster-rcnn_r50_fpn_1x_coco.py")
    apply_loss(model, {"type": "ecm"}, 5, [str(wf)])
    head = MODELS.build(model["roi_head"]["bbox_head"]).eval()
    assert type(head).__name__ == "ECMSABLHead"
    torch.manual_seed(0)
    feats = torch.randn(4, 256, 7, 7)
    rois = torch.tensor([[0, 10, 10, 50, 60], [0, 0, 0, 30, 30], [0, 5, 20, 70, 90], [0, 40, 40, 90, 90]]).float()
    with torch.no_grad():
        cls_score, bbox_pred = head(feats)
        res = head._predict_by_feat_single(rois, cls_score, bbox_pred, {"img_shape": (100, 100)}, rcnn_test_cfg=None)
    torch.testing.assert_close(res.scores, head.loss_cls.get_activation(cls_score))
    assert not torch.allclose(res.scores, torch.softmax(cls_score, dim=1))


def test_checkpoint_check_accepts_a_module_saved_under_two_names():
    """DDQ-DETR registers its head's aux_reg_branches under the decoder too during training, so its checkpoint
    holds them twice; a tensor under another name with other values is still refused."""
    import torch

    from ecmctl.engine.checkpoints import _alias

    w = torch.randn(3, 2)
    model = {"bbox_head.aux.0.weight": w}
    assert _alias("decoder.aux.0.weight", {"bbox_head.aux.0.weight": w, "decoder.aux.0.weight": w.clone()}, model)
    assert not _alias("decoder.aux.0.weight", {"bbox_head.aux.0.weight": w, "decoder.aux.0.weight": w + 1}, model)
    assert not _alias("decoder.other.weight", {"bbox_head.aux.0.weight": w, "decoder.other.weight": w}, model)
