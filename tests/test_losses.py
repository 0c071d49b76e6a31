"""ECMLoss / ECMFocalLoss: formulas (supplementary eq. 12, 16-20, 22-23), mmdet contracts, refusals."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from loss_weights import ref_arrays
from loss_weights import write_weights_file as write_file

from ecmctl.core.errors import UserError
from ecmctl.losses import ECMFocalLoss, ECMLoss

C = 5  # foreground classes of the synthetic dataset
COUNTS = [1000, 300, 40, 7, 2]
BG_RATIO = 3.0


def write_weights_file(path, counts=COUNTS, bg_ratio=BG_RATIO):
    return write_file(path, counts, bg_ratio)

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    return {
        "bg": write_weights_file(d / "bg.json"),
        "fg": write_weights_file(d / "fg.json", bg_ratio=None),
        "equal_bg": write_weights_file(d / "equal_bg.json", counts=[50], bg_ratio=1.0),
        "equal_fg": write_weights_file(d / "equal_fg.json", counts=[50, 50], bg_ratio=None),
    }


def ref_ecm_per_roi(s, labels, path):
    """Σ_c m_c BCE(σ(2s + log w+ − log w−), y_c), written with sigmoid/log only."""
    lwp, lwn, m = ref_arrays(path, s.dtype)
    p = torch.sigmoid(2 * s + lwp - lwn)
    y = F.one_hot(labels, s.shape[1]).to(s.dtype)
    bce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
    return (m * bce).sum(1)


def random_inputs(n=9, seed=0, dtype=torch.float64, num_out=C + 1):
    g = torch.Generator().manual_seed(seed)
    s = (2.0 * torch.randn(n, num_out, generator=g, dtype=dtype)).requires_grad_()
    labels = torch.randint(0, num_out, (n,), generator=g)
    labels[:3] = num_out - 1  # some background
    return s, labels


# ----------------------------------------------------------------------------------------- ECMLoss math


def test_value_and_gradient_match_formula_float64(files):
    loss_fn = ECMLoss(files["bg"])
    s, labels = random_inputs()
    lw = torch.rand(s.shape[0], dtype=torch.float64)
    avg = 4.0
    loss = loss_fn(s, labels, lw, avg_factor=avg)
    (g,) = torch.autograd.grad(loss, s)

    s2 = s.detach().clone().requires_grad_()
    # mmdet's weight_reduce_loss divides by avg_factor + float32 eps
    ref = (ref_ecm_per_roi(s2, labels, files["bg"]) * lw).sum() / (avg + torch.finfo(torch.float32).eps)
    (g_ref,) = torch.autograd.grad(ref, s2)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(g, g_ref, rtol=1e-6, atol=1e-9)


def test_gradient_is_eq_22_23(files):
    """∂ℓ/∂s = 2 m (p − y); positives −2m·w⁻e^{−s}/(w⁺e^{s}+w⁻e^{−s}) ∝ w⁻, negatives +2m·w⁺e^{s}/(…) ∝ w⁺."""
    loss_fn = ECMLoss(files["bg"], reduction="sum")
    s, labels = random_inputs(n=12, seed=1)
    (g,) = torch.autograd.grad(loss_fn(s, labels), s)
    lwp, lwn, m = ref_arrays(files["bg"])
    s = s.detach()
    y = F.one_hot(labels, C + 1).double()
    p = torch.sigmoid(2 * s + lwp - lwn)
    torch.testing.assert_close(g, 2 * m * (p - y), rtol=1e-6, atol=1e-9)
    pos, neg = torch.exp(lwp + s), torch.exp(lwn - s)  # w⁺e^{s}, w⁻e^{−s}
    closed = torch.where(y.bool(), -2 * m * neg / (pos + neg), 2 * m * pos / (pos + neg))
    torch.testing.assert_close(g, closed, rtol=1e-6, atol=1e-9)


def test_decision_boundary_eq_16_20(files):
    doc = json.loads(files["bg"].read_text())
    gamma_pos = torch.tensor([c["margin_pos"] for c in doc["classes"]], dtype=torch.float64)
    lwp, lwn, m = ref_arrays(files["bg"])
    s_star = 0.5 * (lwn - lwp)
    # surrogate score is exactly 1/2 there, and the plain sigmoid σ(2s) equals the margin γ⁺
    torch.testing.assert_close(torch.sigmoid(2 * s_star + lwp - lwn), torch.full_like(s_star, 0.5))
    torch.testing.assert_close(torch.sigmoid(2 * s_star), gamma_pos, rtol=1e-12, atol=1e-12)
    # the loss sees p = 1/2 there: gradient −m for a positive, +m for a negative
    loss_fn = ECMLoss(files["bg"], reduction="sum")
    s = s_star.repeat(C + 1, 1).requires_grad_()
    labels = torch.arange(C + 1)
    (g,) = torch.autograd.grad(loss_fn(s, labels), s)
    expected = m.repeat(C + 1, 1) * (1 - 2 * torch.eye(C + 1, dtype=torch.float64))
    torch.testing.assert_close(g, expected, rtol=1e-6, atol=1e-7)


def test_balanced_classes_margin_vanishes(files):
    """n⁺ = n⁻ for every class (1 class + background, r = 1): bias 0, loss = m·BCE(σ(2s))."""
    lwp, lwn, m = ref_arrays(files["equal_bg"])
    torch.testing.assert_close(lwp, lwn)
    torch.testing.assert_close(m, torch.full_like(m, np.log(2.0)))
    loss_fn = ECMLoss(files["equal_bg"], reduction="none")
    s, labels = random_inputs(n=8, seed=2, num_out=2)
    y = F.one_hot(labels, 2).double()
    expected = (m * F.binary_cross_entropy(torch.sigmoid(2 * s), y, reduction="none")).sum(1)
    torch.testing.assert_close(loss_fn(s, labels), expected, rtol=1e-6, atol=1e-9)


def test_label_weights_avg_factor_and_reductions(files):
    loss_fn = ECMLoss(files["bg"], loss_weight=2.0)
    s, labels = random_inputs(n=10, seed=3)
    s = s.detach()
    per = ref_ecm_per_roi(s, labels, files["bg"])
    torch.testing.assert_close(loss_fn(s, labels, reduction_override="none"), 2.0 * per, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(loss_fn(s, labels, reduction_override="sum"), 2.0 * per.sum(), rtol=1e-6,
                               atol=1e-9)
    # the original's mean over RoIs == all-ones label weights with avg_factor N (what BBoxHead passes)
    mean = loss_fn(s, labels)
    torch.testing.assert_close(mean, 2.0 * per.mean(), rtol=1e-6, atol=1e-9)
    ones = torch.ones(10)
    torch.testing.assert_close(loss_fn(s, labels, ones, avg_factor=10.0), mean, rtol=1e-6, atol=1e-9)
    # zero-weight RoIs drop out, avg_factor divides
    lw = torch.ones(10)
    lw[:4] = 0
    torch.testing.assert_close(loss_fn(s, labels, lw, avg_factor=6.0), 2.0 * per[4:].sum() / 6.0,
                               rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(loss_fn(s, labels, lw, avg_factor=6.0), 2.0 * loss_fn(s[4:], labels[4:]) / 2.0,
                               rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_and_cpu_autocast(files, dtype):
    loss_fn = ECMLoss(files["bg"])
    s, labels = random_inputs(n=64, seed=4, dtype=torch.float32)
    s = (s.detach() * 5).requires_grad_()  # large logits: no overflow allowed
    ref = loss_fn(s, labels)
    half = s.detach().to(dtype).requires_grad_()
    out = loss_fn(half, labels)
    out.backward()
    assert out.dtype == torch.float32 and torch.isfinite(out)
    assert half.grad.dtype == dtype and torch.isfinite(half.grad.float()).all()
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=1e-3)

    # CPU autocast (bf16): a linear classifier's bf16 logits
    fc = torch.nn.Linear(16, C + 1)
    x = torch.randn(64, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = fc(x)
        assert logits.dtype == torch.bfloat16
        amp = loss_fn(logits, labels)
    amp.backward()
    assert amp.dtype == torch.float32 and torch.isfinite(amp)
    assert torch.isfinite(fc.weight.grad).all()
    torch.testing.assert_close(amp, loss_fn(fc(x), labels), rtol=2e-2, atol=1e-3)


def test_constants_are_buffers(files):
    loss_fn = ECMLoss(files["bg"])
    lwp, lwn, m = ref_arrays(files["bg"], torch.float32)
    names = dict(loss_fn.named_buffers())
    torch.testing.assert_close(names["bias"], lwp - lwn)
    torch.testing.assert_close(names["det_weight"], m)
    assert loss_fn.state_dict() == {}  # not persistent: always taken from the weights file
    assert loss_fn.num_classes == C


# ------------------------------------------------------------------------------------- head contract


def test_activation_and_accuracy(files):
    loss_fn = ECMLoss(files["bg"])
    assert loss_fn.custom_cls_channels and loss_fn.custom_activation and loss_fn.custom_accuracy
    assert loss_fn.get_cls_channels(C) == C + 1
    s, labels = random_inputs(n=7, seed=5, dtype=torch.float32)
    s = s.detach()
    act = loss_fn.get_activation(s)
    assert act.shape == (7, C + 1)
    bg = torch.sigmoid(s[:, -1:])
    torch.testing.assert_close(act[:, :C], torch.sigmoid(s[:, :C]) * (1 - bg))
    torch.testing.assert_close(act[:, C:], bg)
    acc = loss_fn.get_accuracy(s, labels)
    assert set(acc) == {"acc_objectness", "acc_classes"}
    fg = labels < C
    expected_obj = 100.0 * ((s[:, -1] > 0) == ~fg).float().mean()
    torch.testing.assert_close(acc["acc_objectness"].reshape(()), expected_obj)
    expected_cls = 100.0 * (s[fg, :C].argmax(1) == labels[fg]).float().mean()
    torch.testing.assert_close(acc["acc_classes"].reshape(()), expected_cls)


def _sampling_result(n=12, num_pos=4, seed=0):
    from mmdet.models.task_modules.assigners import AssignResult
    from mmdet.models.task_modules.samplers import SamplingResult

    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 40
    priors = torch.cat([xy, xy + 8 + torch.rand(n, 2, generator=g) * 16], dim=1)
    gt = priors[:2] + 1.0
    gt_inds = torch.zeros(n, dtype=torch.long)
    gt_inds[:num_pos] = torch.tensor([1, 2, 1, 2])[:num_pos]
    labels = torch.full((n,), -1, dtype=torch.long)
    labels[:num_pos] = torch.tensor([0, 3, 0, 3])[:num_pos]
    assign = AssignResult(2, gt_inds, torch.ones(n), labels)
    return SamplingResult(torch.arange(num_pos), torch.arange(num_pos, n), priors, gt, assign,
                          torch.zeros(n, dtype=torch.uint8))


def _bbox_head(weights_file, num_classes=C):
    from mmdet.registry import MODELS

    return MODELS.build(dict(type="Shared2FCBBoxHead", in_channels=4, fc_out_channels=16, roi_feat_size=2,
                             num_classes=num_classes,
                             loss_cls=dict(type="ECMLoss", weights_file=str(weights_file), loss_weight=1.0)))


def test_bbox_head_train_and_predict(files):
    from mmdet.structures.bbox import bbox2roi
    from mmengine.config import ConfigDict

    torch.manual_seed(0)
    head = _bbox_head(files["bg"])
    assert head.fc_cls.out_features == C + 1
    head.init_weights()
    res = _sampling_result()
    rois = bbox2roi([res.priors])
    cls_score, bbox_pred = head(torch.randn(rois.shape[0], 4, 2, 2))
    assert cls_score.shape == (rois.shape[0], C + 1)

    out = head.loss_and_target(cls_score, bbox_pred, rois, [res], ConfigDict(pos_weight=-1))
    losses = out["loss_bbox"]
    assert {"loss_cls", "acc_objectness", "acc_classes", "loss_bbox"} <= set(losses)
    labels = out["bbox_targets"][0]
    assert labels.tolist() == [0, 3, 0, 3] + [C] * 8
    expected = ref_ecm_per_roi(cls_score.detach().double(), labels, files["bg"]).mean()
    torch.testing.assert_close(losses["loss_cls"].double(), expected, rtol=1e-5, atol=1e-6)
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    assert head.fc_cls.weight.grad is not None

    # Cascade refinement path: get_activation output (C + 1 columns) is accepted
    meta = dict(img_shape=(64, 64), scale_factor=(1.0, 1.0))
    refined = head.refine_bboxes([res], dict(bbox_targets=out["bbox_targets"], cls_score=cls_score.detach(),
                                            rois=rois, bbox_pred=bbox_pred.detach()), [meta])
    assert refined[0].bboxes.shape[1] == 4

    with torch.no_grad():
        cls_score, bbox_pred = head(torch.randn(rois.shape[0], 4, 2, 2))
        raw = head.predict_by_feat((rois,), (cls_score,), (bbox_pred,), [meta], rcnn_test_cfg=None)[0]
        bg = torch.sigmoid(cls_score[:, -1:])
        expected = torch.sigmoid(cls_score[:, :C]) * (1 - bg)
        torch.testing.assert_close(raw.scores[:, :C], expected)
        test_cfg = ConfigDict(score_thr=0.0, nms=dict(type="nms", iou_threshold=0.5), max_per_img=50)
        det = head.predict_by_feat((rois,), (cls_score,), (bbox_pred,), [meta], rcnn_test_cfg=test_cfg)[0]
    assert len(det) > 0
    for score, label in zip(det.scores, det.labels, strict=True):
        assert torch.isclose(expected[:, label], score).any()


def test_config_custom_imports_path(files, tmp_path, monkeypatch):
    """A plain mmdet config: custom_imports registers the losses, MODELS.build builds them."""
    from mmdet.registry import MODELS
    from mmengine.config import Config

    import ecmctl

    # forget the import done by this test module, so that custom_imports has to do it
    for name in [k for k in sys.modules if k == "ecmctl.losses" or k.startswith("ecmctl.losses.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delattr(ecmctl, "losses", raising=False)
    for name in [k for k in MODELS._module_dict if k.startswith("ECM")]:  # every ECM form ecmctl.losses registers
        monkeypatch.delitem(MODELS._module_dict, name)
    assert MODELS.get("ECMLoss") is None

    cfg_file = tmp_path / "ecm_cfg.py"
    cfg_file.write_text(
        "custom_imports = dict(imports=['ecmctl.losses'], allow_failed_imports=False)\n"
        f"bbox_head = dict(type='Shared2FCBBoxHead', in_channels=4, fc_out_channels=8, roi_feat_size=2,\n"
        f"                 num_classes={C},\n"
        f"                 loss_cls=dict(type='ECMLoss', weights_file={str(files['bg'])!r}))\n"
        f"dense_loss = dict(type='ECMFocalLoss', use_sigmoid=True, weights_file={str(files['fg'])!r})\n")
    cfg = Config.fromfile(str(cfg_file))
    assert MODELS.get("ECMLoss") is not None
    loss = MODELS.build(cfg.bbox_head.loss_cls)
    assert type(loss).__name__ == "ECMLoss" and loss.num_classes == C
    head = MODELS.build(cfg.bbox_head)
    assert head.fc_cls.out_features == C + 1
    assert type(MODELS.build(cfg.dense_loss)).__name__ == "ECMFocalLoss"


# ------------------------------------------------------------------------------------------ refusals


def test_refuses_file_without_background(files):
    with pytest.raises(UserError, match=r"fg\.json.*no background.*--bg-ratio"):
        ECMLoss(files["fg"])


def test_refuses_class_count_mismatch(files):
    with pytest.raises(UserError, match=r"bg\.json.*6 outputs.*num_classes=7.*has 8.*ecmctl weights"):
        _bbox_head(files["bg"], num_classes=7)
    loss_fn = ECMLoss(files["bg"])
    with pytest.raises(UserError, match=r"bg\.json.*cls_score has 4"):
        loss_fn(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))


def test_focal_refuses_background_and_mismatch(files):
    with pytest.raises(UserError, match=r"bg\.json.*has a background class.*without --bg-ratio"):
        ECMFocalLoss(files["bg"])
    loss_fn = ECMFocalLoss(files["fg"])
    with pytest.raises(UserError, match=r"fg\.json.*5 foreground classes.*predicts 3 classes"):
        loss_fn(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(UserError, match=r"use_sigmoid=True"):
        loss_fn(torch.zeros(4, C + 1), torch.zeros(4, dtype=torch.long))
    with pytest.raises(UserError, match=r"no such file"):
        ECMFocalLoss(files["fg"].parent / "missing.json")


# ------------------------------------------------------------------------------------------ focal


def ref_focal(s, y, path, gamma=2.0, alpha=0.25):
    lwp, lwn, m = ref_arrays(path, s.dtype)
    p = torch.sigmoid(2 * s + lwp - lwn)
    pos = -alpha * (1 - p) ** gamma * torch.log(p)
    neg = -(1 - alpha) * p**gamma * torch.log(1 - p)
    return m * (y * pos + (1 - y) * neg)


def test_focal_matches_formula(files):
    loss_fn = ECMFocalLoss(files["fg"], gamma=1.5, alpha=0.3, loss_weight=0.5)
    assert loss_fn.use_sigmoid is True
    assert not getattr(loss_fn, "custom_cls_channels", False)  # dense heads keep plain sigmoid at test
    g = torch.Generator().manual_seed(6)
    s = (2 * torch.randn(20, C, generator=g, dtype=torch.float64)).requires_grad_()
    target = torch.randint(0, C + 1, (20,), generator=g)  # C = background
    w = torch.rand(20, dtype=torch.float64)
    loss = loss_fn(s, target, w, avg_factor=7.0)
    (grad,) = torch.autograd.grad(loss, s)

    s2 = s.detach().clone().requires_grad_()
    y = F.one_hot(target, C + 1)[:, :C].double()
    ref = 0.5 * (ref_focal(s2, y, files["fg"], 1.5, 0.3) * w[:, None]).sum() / (
        7.0 + torch.finfo(torch.float32).eps)
    (grad_ref,) = torch.autograd.grad(ref, s2)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-6, atol=1e-9)
    # one-hot target and per-element weights give the same; no weight, no avg_factor = mean
    torch.testing.assert_close(loss_fn(s, y, w[:, None].expand(20, C).reshape(-1), avg_factor=7.0), loss)
    torch.testing.assert_close(loss_fn(s, target), 0.5 * ref_focal(s2, y, files["fg"], 1.5, 0.3).mean(),
                               rtol=1e-6, atol=1e-9)


def test_focal_balanced_and_low_precision(files):
    lwp, lwn, m = ref_arrays(files["equal_fg"])
    torch.testing.assert_close(lwp - lwn, torch.zeros(2, dtype=torch.float64))
    loss_fn = ECMFocalLoss(files["equal_fg"], reduction="none")
    s = torch.randn(6, 2, dtype=torch.float64)
    y = F.one_hot(torch.tensor([0, 1, 2, 2, 0, 1]), 3)[:, :2].double()
    p = torch.sigmoid(2 * s)
    plain = -(0.25 * y * (1 - p) ** 2 * torch.log(p) + 0.75 * (1 - y) * p**2 * torch.log(1 - p))
    torch.testing.assert_close(loss_fn(s, y), m * plain, rtol=1e-6, atol=1e-9)

    loss_fn = ECMFocalLoss(files["fg"])
    s = torch.randn(32, C) * 6
    target = torch.randint(0, C + 1, (32,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss_fn(s.bfloat16(), target)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    torch.testing.assert_close(out, loss_fn(s, target), rtol=3e-2, atol=1e-3)


def test_focal_in_retina_head(files):
    from mmdet.registry import MODELS
    from mmengine.structures import InstanceData

    torch.manual_seed(0)
    cfg = dict(
        type="RetinaHead", num_classes=C, in_channels=8, stacked_convs=1, feat_channels=8,
        anchor_generator=dict(type="AnchorGenerator", octave_base_scale=4, scales_per_octave=1,
                              ratios=[1.0], strides=[8, 16]),
        bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4),
        loss_cls=dict(type="ECMFocalLoss", use_sigmoid=True, weights_file=str(files["fg"])),
        loss_bbox=dict(type="L1Loss", loss_weight=1.0),
        train_cfg=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0,
                                     ignore_iof_thr=-1),
                       sampler=dict(type="PseudoSampler"), allowed_border=-1, pos_weight=-1, debug=False))
    head = MODELS.build(cfg)
    assert head.use_sigmoid_cls and head.cls_out_channels == C
    feats = (torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4))
    cls_scores, bbox_preds = head(feats)
    gt = InstanceData(bboxes=torch.tensor([[4.0, 4.0, 36.0, 36.0], [20.0, 8.0, 60.0, 40.0]]),
                      labels=torch.tensor([1, 4]))
    meta = dict(img_shape=(64, 64), pad_shape=(64, 64), batch_input_shape=(64, 64), scale_factor=(1.0, 1.0))
    losses = head.loss_by_feat(cls_scores, bbox_preds, [gt], [meta])
    total = sum(sum(v) for v in losses.values())
    assert torch.isfinite(total)
    total.backward()

    # without use_sigmoid in the config dict the head sizes C + 1 outputs: refused with the fix
    cfg["loss_cls"] = dict(type="ECMFocalLoss", weights_file=str(files["fg"]))
    head = MODELS.build(cfg)
    cls_scores, bbox_preds = head(feats)
    with pytest.raises(UserError, match="use_sigmoid=True"):
        head.loss_by_feat(cls_scores, bbox_preds, [gt], [meta])


# -- ECMVarifocalLoss (VarifocalNet) ---------------------------------------------------------------------------


def _iou_targets(n: int, seed: int = 0) -> torch.Tensor:
    """N x C targets as VFNetHead builds them: an IoU in (0, 1] in the positive class's column, else 0."""
    g = torch.Generator().manual_seed(seed)
    target = torch.zeros(n, C, dtype=torch.float64)
    pos = torch.rand(n, generator=g) < 0.4
    cls = torch.randint(0, C, (n,), generator=g)
    target[pos, cls[pos]] = torch.rand(int(pos.sum()), generator=g, dtype=torch.float64) * 0.9 + 0.1
    return target


@pytest.mark.parametrize("iou_weighted", [True, False])
def test_varifocal_form_is_mmdets_varifocal_loss_of_the_surrogate(files, iou_weighted):
    """loss = m · VFL(2s + log w+ − log w−, q): mmdet's varifocal_loss on the surrogate logits, times m."""
    from mmdet.models.losses.varifocal_loss import varifocal_loss

    from ecmctl.losses import ECMVarifocalLoss

    loss = ECMVarifocalLoss(files["fg"], iou_weighted=iou_weighted, reduction="none")
    s = torch.randn(64, C, dtype=torch.float64, requires_grad=True)
    q = _iou_targets(64)
    log_wp, log_wn, m = ref_arrays(files["fg"])
    expected = varifocal_loss(2 * s + log_wp - log_wn, q, alpha=0.75, gamma=2.0, iou_weighted=iou_weighted,
                              reduction="none") * m
    got = loss(s, q)
    assert torch.allclose(got, expected, atol=1e-12)
    g1, = torch.autograd.grad(got.sum(), s)
    s2 = s.detach().clone().requires_grad_(True)
    g2, = torch.autograd.grad((varifocal_loss(2 * s2 + log_wp - log_wn, q, iou_weighted=iou_weighted,
                                              reduction="none") * m).sum(), s2)
    assert torch.allclose(g1, g2, atol=1e-12)


def test_varifocal_reduces_like_mmdet_and_refuses_background_weights(files):
    from ecmctl.losses import ECMVarifocalLoss

    loss = ECMVarifocalLoss(files["fg"], loss_weight=2.0)
    s, q = torch.randn(32, C), _iou_targets(32).float()
    total = loss(s, q, avg_factor=7.0)
    assert torch.allclose(total, loss(s, q, reduction_override="sum") / 7.0)  # both carry loss_weight
    with pytest.raises(UserError, match="background class"):
        ECMVarifocalLoss(files["bg"])
    with pytest.raises(UserError, match="foreground classes"):
        loss(torch.randn(4, C + 1), torch.zeros(4, C + 1))
