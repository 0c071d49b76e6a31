"""ECMGHMC / ECMGaussianFocalLoss: mmdet's own base losses of the surrogate, independent references,
saturated inputs, CPU autocast, the mmdet heads that use them (RetinaHead-GHM, CenterNet-update, CornerNet)
and refusals."""

from __future__ import annotations

import pytest
import torch
from loss_weights import ref_arrays
from loss_weights import write_weights_file as write_file

from ecmctl.core.errors import UserError
from ecmctl.losses import ECMGHMC, ECMGaussianFocalLoss

C = 5  # foreground classes
COUNTS = [1000, 300, 40, 7, 2]
F32_EPS = torch.finfo(torch.float32).eps  # mmdet's weight_reduce_loss divides by avg_factor + this


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


def uniform_m(path):
    lwp, lwn, m = ref_arrays(path)
    torch.testing.assert_close(lwp - lwn, torch.zeros_like(m))  # balanced: no margin
    assert torch.allclose(m, m[0].expand_as(m))
    return float(m[0])


# ------------------------------------------------------------------------------------------------ GHM-C


def ghm_inputs(n=60, num_classes=C, seed=0, scale=2.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    s = (scale * torch.randn(n, num_classes, generator=g, dtype=dtype)).requires_grad_()
    labels = torch.randint(0, num_classes + 1, (n,), generator=g)  # num_classes = background
    label_weight = (torch.rand(n, generator=g) > 0.2).float()  # some ignored priors
    return s, labels, label_weight


def ref_ghmc(s, labels, label_weight, path, bins, mmt, acc, loss_weight=1.0):
    """GHM-C of the surrogate from the formula: sigmoid/log and a histogram. Returns (mean loss, new acc)."""
    lwp, lwn, m = ref_arrays(path, s.dtype)
    num_classes = s.shape[1]
    y = (labels[:, None] == torch.arange(num_classes)).to(s.dtype)
    valid = (label_weight[:, None] > 0).expand_as(s)
    p = torch.sigmoid(2 * s + lwp - lwn)
    g = (p.detach() - y).abs()
    idx = (g * bins).floor().long().clamp(max=bins - 1)
    counts = torch.bincount(idx[valid], minlength=bins).to(s.dtype)
    nonempty = counts > 0
    acc = torch.where(nonempty, mmt * acc + (1 - mmt) * counts, acc) if mmt > 0 else acc
    density = acc if mmt > 0 else counts
    tot = max(float(valid.sum()), 1.0)
    w = torch.where(valid, tot / density.clamp(min=1e-30)[idx], torch.zeros_like(g)) / nonempty.sum()
    bce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
    return loss_weight * (m * w * bce).sum() / (tot + F32_EPS), acc


@pytest.mark.parametrize("momentum", [0.0, 0.75])
def test_ghmc_balanced_is_mmdets_ghmc_of_2s(files, momentum):
    """bias 0: ECMGHMC(s) = m · GHMC(2s), running bin counts included, over successive calls."""
    from mmdet.models.losses import GHMC

    m = uniform_m(files["equal_fg"])
    ecm = ECMGHMC(files["equal_fg"], bins=10, momentum=momentum, loss_weight=0.7)
    base = GHMC(bins=10, momentum=momentum, loss_weight=0.7)
    for seed in (1, 2):
        s, labels, lw = ghm_inputs(n=50, num_classes=2, seed=seed)
        torch.testing.assert_close(ecm(s, labels, lw), m * base(2 * s, labels, lw), rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(ecm(s, labels, lw, reduction_override="none"),
                                   m * base(2 * s, labels, lw, reduction_override="none"), rtol=1e-6, atol=1e-9)
        if momentum:
            torch.testing.assert_close(ecm.acc_sum, base.acc_sum)


def test_ghmc_skewed_matches_reference_with_momentum_state(files):
    bins, mmt = 30, 0.75
    loss_fn = ECMGHMC(files["fg"], bins=bins, momentum=mmt, loss_weight=1.5)
    acc = torch.zeros(bins, dtype=torch.float64)
    for seed in (3, 4):  # two successive calls: acc_sum carries over
        s, labels, lw = ghm_inputs(seed=seed)
        loss = loss_fn(s, labels, lw, avg_factor=123.0)  # AnchorHead passes avg_factor; GHMC ignores it
        (grad,) = torch.autograd.grad(loss, s)
        s2 = s.detach().clone().requires_grad_()
        ref, acc = ref_ghmc(s2, labels, lw, files["fg"], bins, mmt, acc, loss_weight=1.5)
        (grad_ref,) = torch.autograd.grad(ref, s2)
        assert loss.dtype == torch.float64
        torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(grad, grad_ref, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(loss_fn.acc_sum.double(), acc, rtol=1e-6, atol=1e-6)
    # a one-hot target with per-element label weights is the same loss (fresh state on both sides)
    a, b = ECMGHMC(files["fg"], bins=bins), ECMGHMC(files["fg"], bins=bins)
    s, labels, lw = ghm_inputs(seed=5)
    y = (labels[:, None] == torch.arange(C)).float()
    torch.testing.assert_close(a(s, labels, lw), b(s, y, lw[:, None].expand(-1, C)))
    # 'sum' is the plain sum of 'none'
    torch.testing.assert_close(a(s, labels, lw, reduction_override="sum"),
                               a(s, labels, lw, reduction_override="none").sum())


def test_ghmc_saturated_logits_have_finite_gradients(files):
    loss_fn = ECMGHMC(files["fg"], bins=30, momentum=0.75)
    s = torch.tensor([[50.0, -50.0, 50.0, -50.0, 0.0]] * 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, C, 4])
    loss = loss_fn(s, labels, torch.ones(4))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_ghmc_bf16_under_cpu_autocast(files):
    s, labels, lw = ghm_inputs(n=64, seed=6, dtype=torch.float32)
    s16 = s.detach().bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ECMGHMC(files["fg"], bins=30, momentum=0.75)(s16, labels, lw)
    out.backward()
    assert out.dtype == torch.float32 and torch.isfinite(out)
    assert s16.grad.dtype == torch.bfloat16 and torch.isfinite(s16.grad.float()).all()
    ref = ECMGHMC(files["fg"], bins=30, momentum=0.75)(s16.detach().float(), labels, lw)
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=0.0)


def test_ghmc_in_retina_head(files):
    from mmdet.registry import MODELS
    from mmengine.structures import InstanceData

    torch.manual_seed(0)
    head = MODELS.build(dict(
        type="RetinaHead", num_classes=C, in_channels=8, stacked_convs=1, feat_channels=8,
        anchor_generator=dict(type="AnchorGenerator", octave_base_scale=4, scales_per_octave=1, ratios=[1.0],
                              strides=[8, 16]),
        bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4),
        loss_cls=dict(type="ECMGHMC", bins=30, momentum=0.75, use_sigmoid=True, loss_weight=1.0,
                      weights_file=str(files["fg"])),
        loss_bbox=dict(type="GHMR", mu=0.02, bins=10, momentum=0.7, loss_weight=10.0),
        train_cfg=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0,
                                     ignore_iof_thr=-1),
                       sampler=dict(type="PseudoSampler"), allowed_border=-1, pos_weight=-1, debug=False)))
    assert type(head.loss_cls).__name__ == "ECMGHMC" and head.cls_out_channels == C
    assert {"loss_cls.edges", "loss_cls.acc_sum"} <= set(head.state_dict())  # GHMC's checkpoint keys
    feats = (torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4))
    gt = InstanceData(bboxes=torch.tensor([[4.0, 4.0, 36.0, 36.0], [20.0, 8.0, 60.0, 40.0]]),
                      labels=torch.tensor([1, 4]))
    meta = dict(img_shape=(64, 64), pad_shape=(64, 64), batch_input_shape=(64, 64), scale_factor=(1.0, 1.0))
    losses = head.loss_by_feat(*head(feats), [gt], [meta])
    total = sum(sum(v) for v in losses.values())
    assert torch.isfinite(total)
    total.backward()
    grad = head.retina_cls.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert head.loss_cls.acc_sum.sum() > 0


def test_ghmc_refusals(files):
    with pytest.raises(UserError, match=r"bg\.json.*has a background class.*without --bg-ratio") as e:
        ECMGHMC(files["bg"])
    assert "\n" not in str(e.value)
    loss_fn = ECMGHMC(files["fg"])
    with pytest.raises(UserError, match=r"fg\.json.*5 foreground classes.*predicts 3 classes.*ecmctl weights"):
        loss_fn(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), torch.ones(4))
    with pytest.raises(UserError, match=r"use_sigmoid=True"):
        loss_fn(torch.zeros(4, C + 1), torch.zeros(4, dtype=torch.long), torch.ones(4))
    with pytest.raises(UserError, match=r"use_sigmoid=True"):
        ECMGHMC(files["fg"], use_sigmoid=False)


# ------------------------------------------------------------------------------------ gaussian focal


def heatmap_inputs(shape=(2, C, 6, 5), seed=0, dtype=torch.float64):
    """Probabilities in (0.02, 0.98) and a gaussian-like target in [0, 1) with some exact 1s (positives)."""
    g = torch.Generator().manual_seed(seed)
    p = (0.02 + 0.96 * torch.rand(shape, generator=g, dtype=dtype)).requires_grad_()
    t = torch.rand(shape, generator=g, dtype=dtype) ** 3
    t[torch.rand(shape, generator=g) < 0.1] = 1.0
    return p, t


def pos_inds_inputs(n=40, num_classes=C, seed=0, dtype=torch.float64):
    """CenterNet-update's call: (N, C) probabilities and targets, positives (pos_inds, pos_labels)."""
    p, t = heatmap_inputs((n, num_classes), seed=seed, dtype=dtype)
    g = torch.Generator().manual_seed(seed + 100)
    pos_inds = torch.randint(0, n, (9,), generator=g)
    pos_inds[-1] = pos_inds[0]  # the 3x3 centre regions of two boxes may overlap
    pos_labels = torch.randint(0, num_classes, (9,), generator=g)
    return p, t, pos_inds, pos_labels


def plain_surrogate(p):
    return torch.sigmoid(2 * torch.logit(p))


def ref_gfl_terms(p, t, path, alpha=2.0, gamma=4.0):
    """Element-wise positive and negative terms (class axis 1), weighed by m, from the formula."""
    lwp, lwn, m = ref_arrays(path, p.dtype)
    shape = [1] * p.dim()
    shape[1] = -1
    b, m = (lwp - lwn).view(shape), m.view(shape)
    q = torch.sigmoid(2 * torch.log(p / (1 - p)) + b)
    pos = -torch.log(q) * (1 - q) ** alpha
    neg = -torch.log(1 - q) * q**alpha * (1 - t) ** gamma
    return m * pos, m * neg


def test_gfl_balanced_is_mmdets_gaussian_focal_loss_of_the_surrogate(files):
    from mmdet.models.losses import GaussianFocalLoss

    m = uniform_m(files["equal_fg"])
    kw = dict(alpha=2.0, gamma=4.0, loss_weight=0.5, pos_weight=0.25, neg_weight=0.75)
    ecm, base = ECMGaussianFocalLoss(files["equal_fg"], **kw), GaussianFocalLoss(**kw)
    # CornerNet / CenterNet: (B, C, H, W) probability heatmaps, optional element-wise weight
    p, t = heatmap_inputs((2, 2, 6, 5), seed=1)
    w = torch.rand(p.shape, dtype=torch.float64)
    torch.testing.assert_close(ecm(p, t, avg_factor=3.0), m * base(plain_surrogate(p), t, avg_factor=3.0),
                               rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ecm(p, t, weight=w, reduction_override="none"),
                               m * base(plain_surrogate(p), t, weight=w, reduction_override="none"),
                               rtol=1e-6, atol=1e-9)
    # CenterNet-update: (N, C) scores with pos_inds / pos_labels
    p, t, inds, labels = pos_inds_inputs(num_classes=2, seed=2)
    for kwargs in (dict(avg_factor=4.0), dict(reduction_override="sum"), dict()):
        torch.testing.assert_close(ecm(p, t, pos_inds=inds, pos_labels=labels, **kwargs),
                                   m * base(plain_surrogate(p), t, pos_inds=inds, pos_labels=labels, **kwargs),
                                   rtol=1e-6, atol=1e-9)


def test_gfl_heatmap_skewed_matches_reference(files):
    loss_fn = ECMGaussianFocalLoss(files["fg"], alpha=2.0, gamma=4.0, loss_weight=0.5, pos_weight=0.3, neg_weight=0.9)
    p, t = heatmap_inputs(seed=3)
    w = torch.rand(p.shape, dtype=torch.float64)
    loss = loss_fn(p, t, weight=w, avg_factor=6.0)
    (grad,) = torch.autograd.grad(loss, p)
    p2 = p.detach().clone().requires_grad_()
    pos, neg = ref_gfl_terms(p2, t, files["fg"])
    ref = 0.5 * ((0.3 * pos * (t == 1) + 0.9 * neg) * w).sum() / (6.0 + F32_EPS)
    (grad_ref,) = torch.autograd.grad(ref, p2)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-6, atol=1e-7)  # b, m are float32 buffers
    # the class axis is dim 1 for flattened (N, C) scores too
    flat = p.detach().permute(0, 2, 3, 1).reshape(-1, C)
    flat_t = t.permute(0, 2, 3, 1).reshape(-1, C)
    torch.testing.assert_close(loss_fn(flat, flat_t, reduction_override="sum"),
                               loss_fn(p.detach(), t, reduction_override="sum"))


def test_gfl_pos_inds_skewed_matches_reference(files):
    loss_fn = ECMGaussianFocalLoss(files["fg"], loss_weight=2.0, pos_weight=0.25, neg_weight=0.75)
    p, t, inds, labels = pos_inds_inputs(seed=4)
    loss = loss_fn(p, t, pos_inds=inds, pos_labels=labels, avg_factor=7.0)
    (grad,) = torch.autograd.grad(loss, p)
    p2 = p.detach().clone().requires_grad_()
    pos, neg = ref_gfl_terms(p2, t, files["fg"])
    pos_sum = pos[inds, labels].sum()
    ref = 2.0 * (0.25 * pos_sum + 0.75 * neg.sum()) / (7.0 + F32_EPS)
    (grad_ref,) = torch.autograd.grad(ref, p2)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-6, atol=1e-7)  # b, m are float32 buffers
    # 'none': the (N, C) map with the positive terms added at (pos_inds, pos_labels); it sums to 'sum'
    pos, neg = (x.detach() for x in (pos, neg))
    expected = 0.75 * neg
    expected.index_put_((inds, labels), 0.25 * pos[inds, labels], accumulate=True)
    none = loss_fn(p, t, pos_inds=inds, pos_labels=labels, reduction_override="none")
    torch.testing.assert_close(none, 2.0 * expected, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(none.sum(), loss_fn(p, t, pos_inds=inds, pos_labels=labels, reduction_override="sum"))


def test_gfl_saturated_probabilities_and_logits(files):
    loss_fn = ECMGaussianFocalLoss(files["fg"])
    # probabilities exactly 0 and 1, at positives and negatives: the surrogate is exactly 0 / 1
    p = torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.5]] * 2, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[1.0, 1.0, 0.0, 0.3, 0.0], [0.0, 0.0, 1.0, 0.0, 1.0]], dtype=torch.float64)
    loss = loss_fn(p, t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(p.grad).all()
    from ecmctl.losses.ecm_gaussian_focal_loss import ecm_heatmap_surrogate

    q = ecm_heatmap_surrogate(p.detach(), loss_fn.bias.double())
    assert q[:, :4].tolist() == [[0.0, 1.0, 0.0, 1.0]] * 2
    # logits ±50 through the heads' sigmoid (saturates to exactly 1.0), both call forms, float32 and 64
    for dtype in (torch.float32, torch.float64):
        s = torch.tensor([[50.0, -50.0, 50.0, -50.0, 0.0]] * 4, dtype=dtype, requires_grad=True)
        tt = torch.zeros(4, C, dtype=dtype)
        tt[0, 0] = tt[1, 1] = 1.0
        for kwargs in (dict(avg_factor=2.0), dict(pos_inds=torch.tensor([0, 1]), pos_labels=torch.tensor([0, 1]))):
            (g,) = torch.autograd.grad(loss_fn(s.sigmoid(), tt, **kwargs), s)
            assert torch.isfinite(g).all()
        heat = s.detach().view(1, 4, C, 1).transpose(1, 2).contiguous().requires_grad_()  # (1, C, 4, 1)
        (g,) = torch.autograd.grad(loss_fn(heat.sigmoid(), tt.view(1, 4, C, 1).transpose(1, 2)), heat)
        assert torch.isfinite(g).all()


def test_gfl_bf16_under_cpu_autocast(files):
    loss_fn = ECMGaussianFocalLoss(files["fg"], pos_weight=0.25, neg_weight=0.75)
    g = torch.Generator().manual_seed(5)
    s = 3 * torch.randn(2, C, 8, 8, generator=g)
    t = torch.rand(2, C, 8, 8, generator=g) ** 3
    t[:, :, 2, 3] = 1.0
    s16 = s.bfloat16().requires_grad_()
    flat_t = t.permute(0, 2, 3, 1).reshape(-1, C)
    inds, labels = torch.tensor([3, 17, 60]), torch.tensor([0, 2, 4])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        p16 = s16.sigmoid()
        assert p16.dtype == torch.bfloat16
        heat = loss_fn(p16, t, avg_factor=4.0)
        flat16 = p16.permute(0, 2, 3, 1).reshape(-1, C)
        upd = loss_fn(flat16, flat_t, pos_inds=inds, pos_labels=labels, avg_factor=3.0)
    (heat + upd).backward()
    assert heat.dtype == upd.dtype == torch.float32
    assert s16.grad.dtype == torch.bfloat16 and torch.isfinite(s16.grad.float()).all()
    p32 = p16.detach().float()
    torch.testing.assert_close(heat, loss_fn(p32, t, avg_factor=4.0), rtol=1e-3, atol=0.0)
    flat32 = p32.permute(0, 2, 3, 1).reshape(-1, C)
    torch.testing.assert_close(upd, loss_fn(flat32, flat_t, pos_inds=inds, pos_labels=labels, avg_factor=3.0),
                               rtol=1e-3, atol=0.0)


def test_gfl_in_centernet_update_head(files):
    from mmdet.registry import MODELS
    from mmengine.structures import InstanceData

    torch.manual_seed(0)
    head = MODELS.build(dict(
        type="CenterNetUpdateHead", num_classes=C, in_channels=4, feat_channels=4, stacked_convs=1, norm_cfg=None,
        loss_cls=dict(type="ECMGaussianFocalLoss", pos_weight=0.25, neg_weight=0.75, loss_weight=1.0,
                      weights_file=str(files["fg"]))))
    s = 128
    meta = dict(img_shape=(s, s, 3), pad_shape=(s, s, 3), scale_factor=1)
    feats = tuple(torch.rand(1, 4, s // st[1], s // st[0]) for st in head.prior_generator.strides)
    cls_scores, bbox_preds = head(feats)
    gt = InstanceData(bboxes=torch.tensor([[11.7, 11.9, 119.3, 75.9], [60.0, 62.0, 70.0, 126.0]]),
                      labels=torch.tensor([2, 4]))
    empty = InstanceData(bboxes=torch.empty((0, 4)), labels=torch.LongTensor([]))
    for gts in ([gt], [empty]):  # with positives (pos_inds form) and without (plain (N, C) form)
        head.zero_grad()
        losses = head.loss_by_feat(cls_scores, bbox_preds, gts, [meta])
        assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"] > 0
        (losses["loss_cls"] + losses["loss_bbox"]).backward(retain_graph=True)
        grad = head.conv_cls.weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_gfl_in_corner_head(files):
    from mmdet.registry import MODELS
    from mmengine.structures import InstanceData

    torch.manual_seed(0)
    head = MODELS.build(dict(
        type="CornerHead", num_classes=C, in_channels=16, num_feat_levels=1,
        loss_heatmap=dict(type="ECMGaussianFocalLoss", alpha=2.0, gamma=4.0, loss_weight=1,
                          weights_file=str(files["fg"]))))
    s = 64
    meta = dict(img_shape=(s, s, 3), scale_factor=1, batch_input_shape=(s, s, 3))
    outs = head([torch.rand(1, 16, s // 4, s // 4)])
    gt = InstanceData(bboxes=torch.tensor([[6.0, 6.0, 59.6, 38.0], [30.9, 31.0, 34.7, 62.9]]),
                      labels=torch.tensor([2, 4]))
    losses = head.loss_by_feat(*outs, [gt], [meta])
    det = sum(losses["det_loss"])
    assert torch.isfinite(det) and det > 0
    total = sum(sum(v) for v in losses.values())
    assert torch.isfinite(total)
    total.backward()
    for branch in (head.tl_heat[0], head.br_heat[0]):
        grad = branch[1].conv.weight.grad  # the C-channel heatmap (classification) conv
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_gfl_refusals(files):
    with pytest.raises(UserError, match=r"bg\.json.*has a background class.*without --bg-ratio") as e:
        ECMGaussianFocalLoss(files["bg"])
    assert "\n" not in str(e.value)
    loss_fn = ECMGaussianFocalLoss(files["fg"])
    with pytest.raises(UserError, match=r"fg\.json.*5 foreground classes.*\(1, 3, 4, 4\).*ecmctl weights") as e:
        loss_fn(torch.rand(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match=r"fg\.json.*5 foreground classes"):
        loss_fn(torch.rand(7, C + 1), torch.zeros(7, C + 1), pos_inds=torch.tensor([0]), pos_labels=torch.tensor([0]))
    with pytest.raises(UserError, match=r"reduction"):
        ECMGaussianFocalLoss(files["fg"], reduction="avg")
