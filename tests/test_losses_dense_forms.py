"""ECM forms of mmdet's dense-head losses: ECMQualityFocalLoss, ECMFocalLoss(activated=True), ECMSigmoidBCELoss.

Each form against (a) mmdet's own base loss at the surrogate logits 2s when the margins vanish (balanced
counts), (b) a reference written here from the formula (sigmoid/log only, float64), values and gradients,
(c) extreme logits / saturated probabilities, (d) CPU bf16 autocast, (e) the mmdet heads that use it,
(f) refusals. Real mmdet functions throughout, no mocks.
"""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from loss_weights import ref_arrays
from loss_weights import write_weights_file as write_file

from ecmctl.core.errors import UserError
from ecmctl.losses import ECMFocalLoss, ECMQualityFocalLoss, ECMSigmoidBCELoss

C = 5  # foreground classes
COUNTS = [1000, 300, 40, 7, 2]
EPS32 = torch.finfo(torch.float32).eps  # mmdet's weight_reduce_loss divides by avg_factor + this


def write_weights_file(path, counts=COUNTS, bg_ratio=None):
    return write_file(path, counts, bg_ratio)

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    return {
        "fg": write_weights_file(d / "fg.json"),
        "bg": write_weights_file(d / "bg.json", bg_ratio=3.0),
        "equal_fg": write_weights_file(d / "equal_fg.json", counts=[50, 50]),
    }


def balanced_m(files) -> float:
    lwp, lwn, m = ref_arrays(files["equal_fg"])
    torch.testing.assert_close(lwp - lwn, torch.zeros(2, dtype=torch.float64))  # no margin
    assert float(m[0]) == pytest.approx(float(m[1]))  # uniform detection weight
    return float(m[0])


def surrogate_p(s, path):
    lwp, lwn, _ = ref_arrays(path, s.dtype)
    return torch.sigmoid(2 * s + lwp - lwn)


def bce(p, y):
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p))


def quality_targets(n, num_classes, seed, dtype=torch.float64):
    """(labels (N,) with num_classes = background, scores (N,) in (0.1, 1)) and the same as an N x C tensor."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes + 1, (n,), generator=g)
    labels[:2] = num_classes
    scores = torch.rand(n, generator=g, dtype=dtype) * 0.9 + 0.1
    dense = F.one_hot(labels, num_classes + 1)[:, :num_classes].to(dtype) * scores[:, None]
    return (labels, scores), dense


def randn(*shape, seed, scale=2.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=dtype)).requires_grad_()


def test_constructors_take_the_base_losses_kwargs_plus_weights_file():
    """A placement copies the original loss dict, changes type and adds weights_file."""
    from mmdet.models.losses import CrossEntropyLoss, FocalLoss, QualityFocalLoss

    for ecm, base in ((ECMQualityFocalLoss, QualityFocalLoss), (ECMFocalLoss, FocalLoss),
                      (ECMSigmoidBCELoss, CrossEntropyLoss)):
        params = set(inspect.signature(ecm.__init__).parameters) - {"self"}
        assert params == set(inspect.signature(base.__init__).parameters) - {"self"} | {"weights_file"}
    # DETR/DINO heads build (label, IoU) targets only for a QualityFocalLoss instance
    assert issubclass(ECMQualityFocalLoss, QualityFocalLoss)


# ------------------------------------------------------------------------------- ECMQualityFocalLoss


@pytest.mark.parametrize("activated", [False, True])
def test_qfl_balanced_is_mmdets_qfl_at_2s(files, activated):
    from mmdet.models.losses import QualityFocalLoss

    m = balanced_m(files)
    s = randn(12, 2, seed=1).detach()
    (labels, scores), dense = quality_targets(12, 2, seed=2)
    w = torch.rand(12, dtype=torch.float64)
    pred = torch.sigmoid(s) if activated else s
    z2 = 2 * torch.logit(pred) if activated else 2 * s
    base_pred = torch.sigmoid(z2) if activated else z2  # mmdet's loss gets what the head would pass
    kw = dict(beta=1.5, loss_weight=0.5, activated=activated)
    ecm = ECMQualityFocalLoss(files["equal_fg"], **kw)
    base = QualityFocalLoss(**kw)
    for target in ((labels, scores), dense):
        for call in (dict(), dict(weight=w, avg_factor=3.0), dict(reduction_override="none"),
                     dict(weight=w, reduction_override="sum")):
            got = ecm(pred, target, **call)
            torch.testing.assert_close(got, m * base(base_pred, target, **call), rtol=1e-6, atol=1e-9)
    assert ecm(pred, dense, reduction_override="none").shape == (12,)  # summed over classes, as QFL


def ref_qfl(s, y, path, beta):
    """Σ_c m_c |y_c − p_c|^β BCE(p_c, y_c), p = σ(2s + log w+ − log w−)."""
    _, _, m = ref_arrays(path, s.dtype)
    p = surrogate_p(s, path)
    return (m * (y - p).abs() ** beta * bce(p, y)).sum(1)


@pytest.mark.parametrize("activated", [False, True])
def test_qfl_matches_formula_values_and_gradients(files, activated):
    n = 20
    s = randn(n, C, seed=3)
    (labels, scores), dense = quality_targets(n, C, seed=4)
    w = torch.rand(n, dtype=torch.float64)
    loss_fn = ECMQualityFocalLoss(files["fg"], beta=1.5, loss_weight=0.5, activated=activated)
    x = torch.sigmoid(s).detach().requires_grad_() if activated else s  # what the head passes
    loss = loss_fn(x, (labels, scores), w, avg_factor=7.0)
    (grad,) = torch.autograd.grad(loss, x)

    x2 = x.detach().clone().requires_grad_()
    s2 = torch.logit(x2) if activated else x2
    ref = 0.5 * (ref_qfl(s2, dense, files["fg"], 1.5) * w).sum() / (7.0 + EPS32)
    (grad_ref,) = torch.autograd.grad(ref, x2)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-6, atol=1e-9)
    # the tensor target (one-hot × quality) gives the same
    torch.testing.assert_close(loss_fn(x, dense, w, avg_factor=7.0), loss, rtol=1e-12, atol=1e-12)


def test_qfl_extremes_are_finite(files):
    loss_fn = ECMQualityFocalLoss(files["fg"], reduction="sum")
    (labels, scores), dense = quality_targets(4 * C, C, seed=5, dtype=torch.float32)
    signs = torch.randint(0, 2, (4 * C, C), generator=torch.Generator().manual_seed(19)).float()
    s = (50.0 * (2 * signs - 1)).requires_grad_()  # |logit| = 50, both signs on positives and negatives
    for target in ((labels, scores), dense):
        out = loss_fn(s, target)
        (g,) = torch.autograd.grad(out, s)
        assert torch.isfinite(out) and torch.isfinite(g).all()
    act = ECMQualityFocalLoss(files["fg"], reduction="sum", activated=True)
    p = signs.clone().requires_grad_()  # probabilities exactly 0 and 1
    for target in ((labels, scores), dense):
        out = act(p, target)
        (g,) = torch.autograd.grad(out, p)
        assert torch.isfinite(out) and torch.isfinite(g).all()


def autocast_matches_float32(loss_fn, pred32, *args, activated=False):
    """bf16 inputs under CPU autocast: float32 result, equal to the float32 computation of the same inputs;
    gradients reach a bf16 linear layer's weights."""
    half = pred32.detach().bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss_fn(half, *args)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    torch.testing.assert_close(out, loss_fn(half.float(), *args), rtol=1e-3, atol=0)
    fc = torch.nn.Linear(8, pred32.shape[-1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = fc(torch.randn(*pred32.shape[:-1], 8))
        assert logits.dtype == torch.bfloat16
        amp = loss_fn(torch.sigmoid(logits) if activated else logits, *args)
    amp.backward()
    assert amp.dtype == torch.float32 and torch.isfinite(fc.weight.grad).all()


@pytest.mark.parametrize("activated", [False, True])
def test_qfl_bf16_autocast(files, activated):
    (labels, scores), dense = quality_targets(64, C, seed=6, dtype=torch.float32)
    s = randn(64, C, seed=7, scale=4.0, dtype=torch.float32)
    x = torch.sigmoid(s) if activated else s
    loss_fn = ECMQualityFocalLoss(files["fg"], activated=activated)
    autocast_matches_float32(loss_fn, x, (labels, scores), activated=activated)
    autocast_matches_float32(loss_fn, x, dense.bfloat16(), activated=activated)


# ------------------------------------------------------------------------- ECMFocalLoss(activated=True)


def test_focal_activated_balanced_is_mmdets_focal_at_2s(files):
    from mmdet.models.losses import FocalLoss

    m = balanced_m(files)
    s = randn(12, 2, seed=8).detach()
    labels = torch.randint(0, 3, (12,), generator=torch.Generator().manual_seed(9))  # 2 = background
    w = torch.rand(12, dtype=torch.float64)
    p = torch.sigmoid(s)
    kw = dict(gamma=1.5, alpha=0.3, loss_weight=0.5, activated=True)
    ecm, base = ECMFocalLoss(files["equal_fg"], **kw), FocalLoss(**kw)
    p2 = torch.sigmoid(2 * torch.logit(p))
    for target in (labels, F.one_hot(labels, 3)[:, :2].double()):
        for call in (dict(), dict(weight=w, avg_factor=3.0), dict(reduction_override="none")):
            torch.testing.assert_close(ecm(p, target, **call), m * base(p2, target, **call), rtol=1e-6, atol=1e-9)


def ref_focal(s, y, path, gamma, alpha):
    _, _, m = ref_arrays(path, s.dtype)
    p = surrogate_p(s, path)
    return m * (y * alpha * (1 - p) ** gamma * -torch.log(p) + (1 - y) * (1 - alpha) * p**gamma * -torch.log(1 - p))


def test_focal_activated_matches_formula_extremes_and_autocast(files):
    loss_fn = ECMFocalLoss(files["fg"], gamma=1.5, alpha=0.3, activated=True)
    assert loss_fn.activated and "activated=True" in repr(loss_fn)
    s = randn(20, C, seed=10).detach()
    p = torch.sigmoid(s).requires_grad_()
    labels = torch.randint(0, C + 1, (20,), generator=torch.Generator().manual_seed(11))
    w = torch.rand(20, dtype=torch.float64)
    loss = loss_fn(p, labels, w, avg_factor=6.0)
    (grad,) = torch.autograd.grad(loss, p)
    p2 = p.detach().clone().requires_grad_()
    y = F.one_hot(labels, C + 1)[:, :C].double()
    ref = (ref_focal(torch.logit(p2), y, files["fg"], 1.5, 0.3) * w[:, None]).sum() / (6.0 + EPS32)
    (grad_ref,) = torch.autograd.grad(ref, p2)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-6, atol=1e-9)

    # p = 0 and p = 1 exactly (a saturated sigmoid): finite loss and gradient; logits clamp at ±16.64
    ext = torch.randint(0, 2, (6, C), generator=torch.Generator().manual_seed(20)).float().requires_grad_()
    for dtype in (torch.float32, torch.float64):
        x = ext.to(dtype)
        out = loss_fn(x, torch.arange(6) % (C + 1))
        (g,) = torch.autograd.grad(out, ext)
        assert torch.isfinite(out) and torch.isfinite(g).all()
    from ecmctl.losses.ecm_focal_loss import prob_to_logit

    lim = prob_to_logit(torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(lim, torch.tensor([-16.6355, 16.6355]), rtol=0, atol=1e-4)
    # plain logits at |s| = 50 (activated=False, the unchanged path)
    big = (50.0 * torch.sign(torch.randn(8, C))).requires_grad_()
    out = ECMFocalLoss(files["fg"])(big, torch.arange(8) % (C + 1))
    assert torch.isfinite(out) and torch.isfinite(torch.autograd.grad(out, big)[0]).all()

    autocast_matches_float32(loss_fn, torch.sigmoid(randn(64, C, seed=12, dtype=torch.float32)),
                             torch.randint(0, C + 1, (64,)), activated=True)


# ---------------------------------------------------------------------------------- ECMSigmoidBCELoss


def test_bce_balanced_is_mmdets_sigmoid_ce_at_2s(files):
    """mmdet's CrossEntropyLoss(use_sigmoid=True) at 2s, times m: YOLOX (N, C) soft targets and YOLOv3
    (B, N, C) one-hot targets with a (B, N, 1) weight; ignore_index and avg_non_ignore too."""
    from mmdet.models.losses import CrossEntropyLoss

    m = balanced_m(files)
    g = torch.Generator().manual_seed(13)
    s2 = randn(10, 2, seed=14).detach()
    y2 = F.one_hot(torch.randint(0, 2, (10,), generator=g), 2).double() * torch.rand(10, 1, generator=g).double()
    s3 = randn(2, 6, 2, seed=15).detach()
    y3 = F.one_hot(torch.randint(0, 2, (2, 6), generator=g), 2).double()
    w3 = (torch.rand(2, 6, 1, generator=g) > 0.5).double()
    w2 = torch.rand(10, 2, generator=g).double()
    # mmdet's binary_cross_entropy casts labels and weights to float32: float32 precision here
    tol = dict(rtol=1e-5, atol=1e-6)
    for kw in (dict(reduction="sum"), dict(reduction="mean", loss_weight=0.5)):
        ecm = ECMSigmoidBCELoss(files["equal_fg"], use_sigmoid=True, **kw)
        base = CrossEntropyLoss(use_sigmoid=True, **kw)
        for args in ((s2, y2), (s2, y2, w2), (s3, y3, w3)):
            for call in (dict(), dict(reduction_override="none"), dict(reduction_override="mean", avg_factor=4.0)):
                got = ecm(*args, **call)
                expected = m * base(2 * args[0], *args[1:], **call)
                torch.testing.assert_close(got, expected.to(got.dtype), **tol)
    # ignored targets (< 0 or == ignore_index) drop out; avg_non_ignore averages over the rest
    y_ign = y2.clone()
    y_ign[:3, 0] = -1.0
    y_ign[3:5, 1] = 255.0
    for kw in (dict(avg_non_ignore=True), dict(ignore_index=255, avg_non_ignore=True), dict(ignore_index=255)):
        ecm = ECMSigmoidBCELoss(files["equal_fg"], **kw)
        base = CrossEntropyLoss(use_sigmoid=True, **kw)
        torch.testing.assert_close(ecm(s2, y_ign), (m * base(2 * s2, y_ign)).double(), **tol)


def test_bce_matches_formula_values_and_gradients(files):
    loss_fn = ECMSigmoidBCELoss(files["fg"], reduction="mean", loss_weight=0.5)
    n = 16
    s = randn(n, C, seed=16)
    g = torch.Generator().manual_seed(17)
    y = F.one_hot(torch.randint(0, C, (n,), generator=g), C).double() * torch.rand(n, 1, generator=g).double()
    w = torch.rand(n, dtype=torch.float64)  # one weight per prediction
    loss = loss_fn(s, y, w, avg_factor=5.0)
    (grad,) = torch.autograd.grad(loss, s)
    s2 = s.detach().clone().requires_grad_()
    _, _, m = ref_arrays(files["fg"])
    ref = 0.5 * (m * bce(surrogate_p(s2, files["fg"]), y) * w[:, None]).sum() / (5.0 + EPS32)
    (grad_ref,) = torch.autograd.grad(ref, s2)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-6, atol=1e-9)
    # (N, C) and (N, 1) weights mean the same; plain mean over all N·C elements without avg_factor
    torch.testing.assert_close(loss_fn(s, y, w[:, None].expand(n, C), avg_factor=5.0), loss)
    torch.testing.assert_close(loss_fn(s, y), 0.5 * (m * bce(surrogate_p(s2, files["fg"]), y)).mean(),
                               rtol=1e-6, atol=1e-9)


def test_bce_extremes_and_autocast(files):
    loss_fn = ECMSigmoidBCELoss(files["fg"], reduction="sum")
    s = (50.0 * torch.sign(torch.randn(2, 8, C))).requires_grad_()
    y = F.one_hot(torch.arange(16).view(2, 8) % C, C).float()
    out = loss_fn(s, y, torch.ones(2, 8, 1))
    (g,) = torch.autograd.grad(out, s)
    assert torch.isfinite(out) and torch.isfinite(g).all()
    autocast_matches_float32(loss_fn, randn(64, C, seed=18, scale=4.0, dtype=torch.float32),
                             F.one_hot(torch.arange(64) % C, C).float() * 0.7)


# ------------------------------------------------------------------------------------------- heads


META = dict(img_shape=(64, 64), pad_shape=(64, 64), batch_input_shape=(64, 64), scale_factor=(1.0, 1.0))


def _gt():
    from mmengine.structures import InstanceData

    return InstanceData(bboxes=torch.tensor([[4.0, 4.0, 36.0, 36.0], [20.0, 8.0, 60.0, 40.0]]),
                        labels=torch.tensor([1, 4]))


def _backward_reaches(losses: dict, cls_params) -> None:
    """The summed loss is finite and its backward pass gives the classifier finite, non-zero gradients."""
    total = sum(sum(v) if isinstance(v, (list, tuple)) else v for k, v in losses.items() if k.startswith("loss"))
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in cls_params]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_gfl_head_with_ecm_qfl(files):
    from mmdet.registry import MODELS

    torch.manual_seed(0)
    qfl = dict(type="QualityFocalLoss", use_sigmoid=True, beta=2.0, loss_weight=1.0)  # GFL's config
    head = MODELS.build(dict(
        type="GFLHead", num_classes=C, in_channels=16, feat_channels=16, stacked_convs=1,
        norm_cfg=dict(type="GN", num_groups=4, requires_grad=True),
        anchor_generator=dict(type="AnchorGenerator", ratios=[1.0], octave_base_scale=8, scales_per_octave=1,
                              strides=[8, 16]),
        loss_cls=dict(qfl, type="ECMQualityFocalLoss", weights_file=str(files["fg"])),
        loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
        train_cfg=dict(assigner=dict(type="ATSSAssigner", topk=9), allowed_border=-1, pos_weight=-1, debug=False)))
    assert type(head.loss_cls).__name__ == "ECMQualityFocalLoss" and head.cls_out_channels == C
    cls_scores, bbox_preds = head((torch.randn(1, 16, 8, 8), torch.randn(1, 16, 4, 4)))
    losses = head.loss_by_feat(cls_scores, bbox_preds, [_gt()], [META])
    _backward_reaches(losses, [head.gfl_cls.weight])


@pytest.mark.parametrize("epoch", [0, 4])
def test_tood_head_with_ecm_activated_forms(files, epoch):
    """TOOD passes probabilities: ECMFocalLoss(activated) before initial_epoch, ECMQualityFocalLoss after."""
    from mmdet.registry import MODELS
    from mmengine.logging import MessageHub

    torch.manual_seed(0)
    fg = str(files["fg"])
    head = MODELS.build(dict(
        type="TOODHead", num_classes=C, in_channels=16, feat_channels=16, stacked_convs=2,
        norm_cfg=dict(type="GN", num_groups=4, requires_grad=True), anchor_type="anchor_free",
        anchor_generator=dict(type="AnchorGenerator", ratios=[1.0], octave_base_scale=8, scales_per_octave=1,
                              strides=[8, 16]),
        bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2]),
        initial_loss_cls=dict(type="ECMFocalLoss", use_sigmoid=True, activated=True, gamma=2.0, alpha=0.25,
                              loss_weight=1.0, weights_file=fg),
        loss_cls=dict(type="ECMQualityFocalLoss", use_sigmoid=True, activated=True, beta=2.0, loss_weight=1.0,
                      weights_file=fg),
        loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
        train_cfg=dict(initial_epoch=4, initial_assigner=dict(type="ATSSAssigner", topk=9),
                       assigner=dict(type="TaskAlignedAssigner", topk=13), alpha=1, beta=6, allowed_border=-1,
                       pos_weight=-1, debug=False)))
    hub = MessageHub.get_current_instance()
    old = hub.get_info("epoch")
    hub.update_info("epoch", epoch)
    try:
        cls_scores, bbox_preds = head((torch.randn(1, 16, 8, 8), torch.randn(1, 16, 4, 4)))
        losses = head.loss_by_feat(cls_scores, bbox_preds, [_gt()], [META])
    finally:
        hub.update_info("epoch", old)
    _backward_reaches(losses, [head.tood_cls.weight])


def test_yolox_head_with_ecm_bce(files):
    import mmdet.models.dense_heads.yolox_head as yolox
    from mmdet.registry import MODELS

    torch.manual_seed(0)
    # the head's own default loss_cls (CrossEntropyLoss(use_sigmoid=True, reduction='sum')), type changed
    default = inspect.signature(yolox.YOLOXHead.__init__).parameters["loss_cls"].default
    head = MODELS.build(dict(
        type="YOLOXHead", num_classes=C, in_channels=16, feat_channels=16, stacked_convs=1, strides=(8, 16),
        loss_cls=dict(default, type="ECMSigmoidBCELoss", weights_file=str(files["fg"])),
        train_cfg=dict(assigner=dict(type="SimOTAAssigner", center_radius=2.5, candidate_topk=10, iou_weight=3.0,
                                     cls_weight=1.0))))
    assert type(head.loss_cls).__name__ == "ECMSigmoidBCELoss" and head.loss_cls.reduction == "sum"
    cls_scores, bbox_preds, objectnesses = head((torch.randn(1, 16, 8, 8), torch.randn(1, 16, 4, 4)))
    losses = head.loss_by_feat(cls_scores, bbox_preds, objectnesses, [_gt()], [META])
    assert losses["loss_cls"] > 0
    _backward_reaches(losses, [conv.weight for conv in head.multi_level_conv_cls])


def test_yolov3_head_with_ecm_bce(files):
    """YOLOv3 calls loss_cls(pred (B, N, C), one-hot (B, N, C), weight=(B, N, 1))."""
    from mmdet.registry import MODELS

    torch.manual_seed(0)
    head = MODELS.build(dict(
        type="YOLOV3Head", num_classes=C, in_channels=[16, 8], out_channels=[16, 8],
        anchor_generator=dict(type="YOLOAnchorGenerator", base_sizes=[[(30, 30), (40, 20)], [(10, 12), (16, 8)]],
                              strides=[16, 8]),
        featmap_strides=[16, 8],
        loss_cls=dict(type="ECMSigmoidBCELoss", use_sigmoid=True, loss_weight=1.0, weights_file=str(files["fg"])),
        train_cfg=dict(assigner=dict(type="GridAssigner", pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0))))
    (pred_maps,) = head((torch.randn(1, 16, 4, 4), torch.randn(1, 8, 8, 8)))
    losses = head.loss_by_feat(pred_maps, [_gt()], [META])
    assert sum(losses["loss_cls"]) > 0  # the 2 boxes got positive anchors
    _backward_reaches(losses, [conv.weight for conv in head.convs_pred])


# ----------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("cls", [ECMQualityFocalLoss, ECMSigmoidBCELoss])
def test_refuses_background_weights_file(files, cls):
    with pytest.raises(UserError, match=r"bg\.json.*has a background class.*without --bg-ratio") as e:
        cls(files["bg"])
    assert "\n" not in str(e.value)


def test_refuses_class_count_mismatch_and_unsupported_options(files):
    qfl = ECMQualityFocalLoss(files["fg"])
    with pytest.raises(UserError, match=r"fg\.json.*5 foreground classes.*\(4, 3\).*ecmctl weights"):
        qfl(torch.zeros(4, 3), (torch.zeros(4, dtype=torch.long), torch.zeros(4)))
    with pytest.raises(UserError, match=r"fg\.json.*tensor target has shape \(4, 6\)"):
        qfl(torch.zeros(4, C), torch.zeros(4, C + 1))
    bce_fn = ECMSigmoidBCELoss(files["fg"])
    with pytest.raises(UserError, match=r"fg\.json.*5 foreground classes.*\(4, 6\).*num_classes to 5"):
        bce_fn(torch.zeros(4, C + 1), torch.zeros(4, C + 1))
    with pytest.raises(UserError, match=r"one-hot or soft targets.*got \(4,\)"):
        bce_fn(torch.zeros(4, C), torch.zeros(4, dtype=torch.long))
    for kw, what in ((dict(class_weight=[1.0] * C), "class_weight"), (dict(use_sigmoid=False), "use_sigmoid"),
                     (dict(use_mask=True), "use_mask")):
        with pytest.raises(UserError, match=what) as e:
            ECMSigmoidBCELoss(files["fg"], **kw)
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="use_sigmoid=True"):
        ECMQualityFocalLoss(files["fg"], use_sigmoid=False)
    with pytest.raises(UserError, match="no such file"):
        ECMQualityFocalLoss(files["fg"].parent / "missing.json")
