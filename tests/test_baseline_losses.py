"""The long-tail losses ECM is compared against (loss=eqlv2|eql|fed|efl), and Seesaw: each checked numerically
against mmdet's implementation where one exists (EQLv2, Seesaw, and EFL's first step, which is the focal loss)
and against a reference written here from the paper's equations (EQLv2, EQL, Fed, EFL), stateful parts included
(EQLv2's and EFL's gradient statistics over two steps and their sum over two gloo ranks; Fed's class sampling
for a seed); each placed into a small built head trains one step; refusals are one line, before any file."""

from __future__ import annotations

import json
import time

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from ecmctl.cli import app
from ecmctl.core.errors import UserError
from ecmctl.engine.placement import apply_loss, check_loss, node_at, plan_placement
from ecmctl.losses import EQLLoss, EqualizedFocalLoss, FederatedLoss, SyncEQLv2Loss

C = 5
IMAGE_COUNTS = [900, 120, 30, 2, 0]  # of 1000 images: frequencies 0.9 .. 0
NUM_IMAGES = 1000


def counts_doc(image_counts, num_images=NUM_IMAGES) -> dict:
    return {"schema": "ecmctl/counts@1",
            "source": {"path": "synthetic", "sha256": "0" * 64, "num_images": num_images,
                       "num_annotations": int(sum(image_counts)) * 2},
            "categories": [{"id": i + 1, "name": f"cls{i}", "frequency": "f", "instance_count": 2 * int(n),
                            "image_count": int(n)} for i, n in enumerate(image_counts)]}


@pytest.fixture(scope="module")
def counts(tmp_path_factory):
    d = tmp_path_factory.mktemp("counts")
    files = {}
    for name, ic in {"c5": IMAGE_COUNTS, "c120": [10_000] * 60 + [1] * 55 + [0] * 5}.items():
        files[name] = d / f"{name}.json"
        files[name].write_text(json.dumps(counts_doc(ic)))
    return files


def logits(n: int, num_out: int, seed: int, dtype=torch.float32, bg: int = 3):
    g = torch.Generator().manual_seed(seed)
    s = (2.0 * torch.randn(n, num_out, generator=g)).to(dtype)
    labels = torch.randint(0, C, (n,), generator=g)
    labels[:bg] = C  # background RoIs
    return s, labels


def bce(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """−[y log p + (1 − y) log(1 − p)], p = σ(s), written with logs of the sigmoid."""
    p = torch.sigmoid(s.double())
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p))


# ------------------------------------------------------------------------------------------------- EQLv2

def ref_eqlv2_step(s, labels, state, gamma=12.0, mu=0.8, alpha=4.0):
    """EQLv2 (Tan et al. 2021, section 3): the step's loss and the statistics after it. q_j = 1 + α(1 − f(g_j)) on
    positives, r_j = f(g_j) on negatives, f(x) = 1/(1 + e^(−γ(x − μ))), g_j = accumulated positive / negative
    reweighted gradient |σ(s) − y|·w of class j; weights 1 before any statistics; objectness column weight 1."""
    n, c1 = s.shape
    y = F.one_hot(labels, c1).double()
    pos, neg = state if state is not None else (torch.zeros(c1 - 1, dtype=torch.float64),) * 2
    if state is None:
        r = torch.ones(c1 - 1, dtype=torch.float64)
    else:
        r = 1.0 / (1.0 + torch.exp(-gamma * (pos / (neg + 1e-10) - mu)))
    one = torch.ones(1, dtype=torch.float64)
    w = y * torch.cat([1.0 + alpha * (1.0 - r), one]) + (1 - y) * torch.cat([r, one])
    loss = (w * bce(s, y)).sum() / n
    grad = (torch.sigmoid(s.double()) - y).abs() * w
    return loss, (pos + (grad * y).sum(0)[:-1], neg + (grad * (1 - y)).sum(0)[:-1])


def test_eqlv2_is_mmdets_and_the_papers_over_two_steps():
    from mmdet.models.losses import EQLV2Loss

    ours, theirs = SyncEQLv2Loss(num_classes=C), EQLV2Loss(num_classes=C)
    # the official defaults (tztztztztz/eqlv2 EQLv2.__init__): gamma 12, mu 0.8, alpha 4; test with objectness
    assert (ours.gamma, ours.mu, ours.alpha, ours.test_with_obj) == (12, 0.8, 4.0, True)
    assert (theirs.gamma, theirs.mu, theirs.alpha) == (12, 0.8, 4.0)
    state = None
    for step in range(2):
        s, labels = logits(16, C + 1, seed=step)
        ref, state = ref_eqlv2_step(s, labels, state)
        a, b = ours(s.clone().requires_grad_(), labels), theirs(s.clone(), labels)
        assert torch.equal(a.detach(), b.detach())  # the same computation as mmdet's
        torch.testing.assert_close(a.double(), ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours.pos_grad.double(), state[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours.neg_grad.double(), state[1], rtol=1e-5, atol=1e-6)
        assert torch.equal(ours.pos_grad, theirs.pos_grad) and torch.equal(ours.neg_grad, theirs.neg_grad)
    assert not torch.equal(ours.pos_neg, torch.full_like(ours.pos_neg, 100.0))  # statistics moved off the start
    # the gradient is the reweighted BCE's, with the weights of the statistics before the step
    s, labels = logits(16, C + 1, seed=7)
    s64 = s.double().requires_grad_()
    ref, _ = ref_eqlv2_step(s64, labels, state)
    (expected,) = torch.autograd.grad(ref, s64)
    s.requires_grad_()
    ours(s, labels).backward()
    torch.testing.assert_close(s.grad.double(), expected, rtol=1e-5, atol=1e-7)


def test_eqlv2_contract_and_test_scores():
    loss = SyncEQLv2Loss(num_classes=C)
    assert loss.custom_cls_channels and loss.custom_activation and loss.custom_accuracy
    assert loss.get_cls_channels(C) == C + 1
    with pytest.raises(UserError, match="set loss_cls.num_classes"):
        loss.get_cls_channels(C + 2)
    s, labels = logits(8, C + 1, seed=3)
    act = loss.get_activation(s)
    bg = torch.sigmoid(s[:, -1:])
    torch.testing.assert_close(act[:, :C], torch.sigmoid(s[:, :C]) * (1 - bg))  # σ(s_c)(1 − σ(s_bg))
    torch.testing.assert_close(act[:, C:], bg)
    acc = loss.get_accuracy(s, labels)
    assert set(acc) == {"acc_objectness", "acc_classes"}


def _dist_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """One gloo rank: two EQLv2 steps and one EFL step on rank-specific inputs; saves its statistics."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        eqlv2, out = SyncEQLv2Loss(num_classes=C), {}
        for step in range(2):
            s, labels = logits(16, C + 1, seed=10 * rank + step)
            eqlv2(s, labels)
            out[f"eqlv2_{step}"] = (eqlv2.pos_grad.clone(), eqlv2.neg_grad.clone())
        efl = EqualizedFocalLoss(num_classes=C)
        x, t = logits(32, C, seed=100 + rank)
        x.requires_grad_()
        efl(x, t, avg_factor=4.0).backward()
        efl.sync_statistics()
        out["efl"] = (efl.pos_grad.clone(), efl.neg_grad.clone())
        torch.save(out, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_statistics_are_summed_over_ranks(tmp_path):
    """2 gloo processes: after each step both ranks hold the statistics of both ranks' samples."""
    import torch.multiprocessing as mp

    ctx = mp.spawn(_dist_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 240
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the gloo ranks did not finish in 240 s")
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    state = None  # every rank weighs its samples with the summed statistics of the steps before
    for step in range(2):
        parts = [ref_eqlv2_step(*logits(16, C + 1, seed=10 * r + step), state)[1] for r in range(2)]
        base = state if state is not None else (0.0, 0.0)
        state = tuple(base[k] + sum(p[k] - base[k] for p in parts) for k in range(2))
        for r in range(2):
            torch.testing.assert_close(got[r][f"eqlv2_{step}"][0].double(), state[0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got[r][f"eqlv2_{step}"][1].double(), state[1], rtol=1e-5, atol=1e-6)
    expected = [0.0, 0.0]
    for r in range(2):  # each rank's own EFL statistics, single process, summed
        efl = EqualizedFocalLoss(num_classes=C)
        x, t = logits(32, C, seed=100 + r)
        x.requires_grad_()
        efl(x, t, avg_factor=4.0).backward()
        efl.sync_statistics()
        expected = [expected[0] + efl.pos_grad, expected[1] + efl.neg_grad]
    for r in range(2):
        torch.testing.assert_close(got[r]["efl"][0], expected[0])
        torch.testing.assert_close(got[r]["efl"][1], expected[1])


# --------------------------------------------------------------------------------------------------- EQL

def test_eql_is_the_papers_equation(counts):
    loss = EQLLoss(counts["c5"], lambda_=0.05)
    freq = torch.tensor(IMAGE_COUNTS, dtype=torch.float64) / NUM_IMAGES
    tail = (freq < 0.05).double()  # T_λ(f_j): classes 2, 3, 4
    assert loss.tail.tolist() == tail.tolist() == [0, 0, 1, 1, 1]
    s, labels = logits(12, C, seed=1)
    s.requires_grad_()
    y = F.one_hot(labels, C + 1)[:, :C].double()  # background: all-zero target
    exclude = (labels < C).double().unsqueeze(1)  # E(r): 1 for foreground RoIs
    w = 1 - exclude * tail * (1 - y)
    ref = (w * bce(s.detach(), y)).sum() / len(labels)
    out = loss(s, labels)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    out.backward()
    # the negatives of tail classes get no gradient from foreground RoIs, every other term does
    blocked = (w == 0)
    assert blocked.any() and (s.grad[blocked] == 0).all() and (s.grad[~blocked] != 0).all()
    # label weights and avg_factor as mmdet's BBoxHead passes them (the official Σ/N when all weights are 1)
    torch.testing.assert_close(loss(s.detach(), labels, torch.ones(12), avg_factor=12.0), out.detach())
    # LVIS v1 (built-in statistics) at the official v1 threshold 1.1e-3: 815 tail classes with the official
    # code's denominator (the 99,388 train images with annotations), 817 with all 100,170 train images
    assert int(EQLLoss("lvis_v1", lambda_=0.0011, num_images=99_388).tail.sum()) == 815
    assert int(EQLLoss("lvis_v1", lambda_=0.0011, num_images=100_170).tail.sum()) == 817


def test_eql_contract_and_refusals(counts, tmp_path):
    loss = EQLLoss(counts["c5"])
    assert loss.get_cls_channels(C) == C  # no background output
    s, labels = logits(6, C, seed=2)
    act = loss.get_activation(s)
    assert act.shape == (6, C + 1) and (act[:, C] == 0).all()
    torch.testing.assert_close(act[:, :C], torch.sigmoid(s))
    with pytest.raises(UserError, match="counts file has 5 classes, but the RoI head has 6"):
        loss.get_cls_channels(6)
    with pytest.raises(UserError, match="needs the dataset's class counts"):
        EQLLoss(None)
    no_total = tmp_path / "no_total.json"
    no_total.write_text(json.dumps(counts_doc(IMAGE_COUNTS, num_images=None)))
    with pytest.raises(UserError, match="no number of images"):
        EQLLoss(no_total)
    assert EQLLoss(no_total, num_images=1000).tail.tolist() == EQLLoss(counts["c5"]).tail.tolist()


# --------------------------------------------------------------------------------------------------- Fed

def test_fed_sampling_for_a_seed(counts):
    labels = torch.tensor([3, 7, 50, 50, 120, 120])  # 120 = background of the 120-class head

    def draws(seed, n=3, lab=labels):
        loss = FederatedLoss(counts["c120"], seed=seed)
        return [loss.sample_classes(lab).tolist() for _ in range(n)]

    assert draws(123) == draws(123)  # same seed: the same classes, step after step
    assert draws(123) != draws(124)
    for classes in draws(5, n=20):
        assert {3, 7, 50, 120} <= set(classes)  # positives (and background) always in
        assert len(classes) == len(set(classes)) == 50  # detectron2's FED_LOSS_NUM_CLASSES, background counted
        assert not set(classes) & set(range(115, 120))  # classes with no training image are never drawn
    fg_only = draws(5, n=1, lab=torch.tensor([3, 7]))[0]
    assert len(fg_only) == 50 and {3, 7} <= set(fg_only) and 120 not in fg_only
    # draws ∝ image_count^0.5: classes 0-59 (10,000 images, weight 100) against 60-114 (1 image, weight 1)
    loss = FederatedLoss(counts["c120"], seed=0)
    heavy = light = 0
    for _ in range(50):
        drawn = set(loss.sample_classes(torch.tensor([120])).tolist()) - {120}
        heavy += len(drawn & set(range(60)))
        light += len(drawn & set(range(60, 115)))
    assert heavy > 10 * light
    # fewer classes than 50: every class that can be drawn is (class 4 has no image)
    small = FederatedLoss(counts["c5"], seed=0)
    assert sorted(small.sample_classes(torch.tensor([0, 5])).tolist()) == [0, 1, 2, 3, 5]
    # no seed: mmengine's (torch.initial_seed(), which mmengine's randomness.seed sets)
    torch.manual_seed(123)
    assert FederatedLoss(counts["c120"]).sample_classes(labels).tolist() == draws(123, n=1)[0]


def test_fed_is_bce_on_the_sampled_classes(counts):
    loss = FederatedLoss(counts["c120"], seed=1)
    assert loss.get_cls_channels(120) == 121 and loss.num_sampled_classes == 50 and loss.freq_weight_power == 0.5
    g = torch.Generator().manual_seed(0)
    s = torch.randn(20, 121, generator=g, requires_grad=True)
    labels = torch.randint(0, 121, (20,), generator=g)
    labels[:5] = 120
    out = loss(s, labels)
    classes = set(loss.last_classes.tolist()) - {120}
    y = F.one_hot(labels, 121)[:, :120].double()
    mask = torch.zeros(120, dtype=torch.float64)
    mask[sorted(classes)] = 1
    ref = (bce(s.detach()[:, :120], y) * mask).sum() / 20  # Σ_i Σ_{j∈S} BCE / N (detectron2)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    out.backward()
    unused = [j for j in range(121) if j not in classes]  # the background output is never trained
    assert (s.grad[:, unused] == 0).all() and (s.grad[:, sorted(classes)] != 0).all()
    torch.testing.assert_close(loss.get_activation(s.detach()), torch.sigmoid(s.detach()))


# --------------------------------------------------------------------------------------------------- EFL

def ref_efl(x, t, gamma_j, avg_factor, weight=None, gamma_b=2.0, alpha=0.25):
    """EFL (Li et al. 2022, section 3): −Σ w α_t (γ_j/γ_b)(1 − p_t)^γ_j log p_t / avg_factor (w: anchor weights)."""
    y = F.one_hot(t, C + 1)[:, :C].double()
    p = torch.sigmoid(x.double())
    p_t = y * p + (1 - y) * (1 - p)
    alpha_t = y * alpha + (1 - y) * (1 - alpha)
    per = -alpha_t * (gamma_j / gamma_b) * (1 - p_t) ** gamma_j * torch.log(p_t)
    w = torch.ones(len(t), dtype=torch.float64) if weight is None else weight.double()
    return (per * w.unsqueeze(1)).sum() / avg_factor


def test_efl_first_step_is_mmdets_focal_loss_then_the_papers_equation():
    from mmdet.models.losses import FocalLoss

    efl = EqualizedFocalLoss(num_classes=C)
    assert (efl.gamma, efl.alpha, efl.scale_factor) == (2.0, 0.25, 8.0)  # United-Perception's defaults
    x, t = logits(40, C, seed=4)
    weight = torch.ones(40)
    weight[-4:] = 0  # ignored anchors: no loss, no gradient, no statistics
    first = efl(x.clone().requires_grad_(), t, weight, avg_factor=6.0)
    focal = FocalLoss(use_sigmoid=True, gamma=2.0, alpha=0.25)(x.clone(), t, weight, avg_factor=6.0)
    torch.testing.assert_close(first, focal)  # g_j = 1 at the start: γ_j = γ_b, weight 1
    first.backward()
    efl.sync_statistics()
    # the statistics are the gradient this loss sent to its logits: positive / negative parts per class
    x64 = x.double().requires_grad_()
    (grad,) = torch.autograd.grad(ref_efl(x64, t, torch.full((C,), 2.0, dtype=torch.float64), 6.0, weight), x64)
    y = F.one_hot(t, C + 1)[:, :C].double()
    pos, neg = (grad.abs() * y).sum(0), (grad.abs() * (1 - y)).sum(0)
    torch.testing.assert_close(efl.pos_grad.double(), pos, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(efl.neg_grad.double(), neg, rtol=1e-5, atol=1e-8)
    g = torch.clamp(pos / (neg + 1e-10), 0, 1)
    torch.testing.assert_close(efl.pos_neg.double(), g, rtol=1e-5, atol=1e-8)
    # second step: γ_j = γ_b + s (1 − g_j), weight γ_j / γ_b
    x2, t2 = logits(40, C, seed=5)
    second = efl(x2.clone().requires_grad_(), t2, avg_factor=6.0)
    torch.testing.assert_close(second.double(), ref_efl(x2, t2, 2.0 + 8.0 * (1 - g), 6.0), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(second.double(), ref_efl(x2, t2, torch.full((C,), 2.0, dtype=torch.float64), 6.0))


def test_efl_skips_non_finite_steps_and_refuses_background_outputs():
    efl = EqualizedFocalLoss(num_classes=C)
    x, t = logits(10, C, seed=6)
    x.requires_grad_()
    (efl(x, t) * float("inf")).backward()  # an overflowing (mixed-precision) step
    efl.sync_statistics()
    assert (efl.pos_grad == 0).all() and (efl.pos_neg == 1).all()
    with pytest.raises(UserError, match="use_sigmoid=True"):
        efl(torch.zeros(3, C + 1), torch.zeros(3, dtype=torch.long))


# --------------------------------------------------------------------------------------------------- Seesaw

def test_placed_seesaw_is_mmdets():
    from mmdet.models.losses import SeesawLoss
    from mmdet.registry import MODELS

    model = _roi_model()
    apply_loss(model, {"type": "seesaw", "p": 0.8, "q": 2.0}, C)
    cfg = model["roi_head"]["bbox_head"]["loss_cls"]
    assert cfg == dict(type="SeesawLoss", p=0.8, q=2.0, num_classes=C, loss_weight=1.0)
    placed, direct = MODELS.build(cfg), SeesawLoss(p=0.8, q=2.0, num_classes=C)
    s, labels = logits(12, C + 2, seed=8)
    for _ in range(2):  # its cumulative class counts too
        torch.testing.assert_close(placed(s, labels)["loss_cls_classes"], direct(s, labels)["loss_cls_classes"])
    assert torch.equal(placed.cum_samples, direct.cum_samples)


# ------------------------------------------------------------------------------- placed into built heads

def _roi_model() -> dict:
    return dict(type="FasterRCNN", roi_head=dict(type="StandardRoIHead", bbox_head=dict(
        type="Shared2FCBBoxHead", in_channels=4, fc_out_channels=16, roi_feat_size=2, num_classes=80,
        bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2]),
        loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
        loss_bbox=dict(type="L1Loss", loss_weight=1.0))))


def _sampling_result(n=12, num_pos=4, seed=0):
    from mmdet.models.task_modules.assigners import AssignResult
    from mmdet.models.task_modules.samplers import SamplingResult

    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 40
    priors = torch.cat([xy, xy + 8 + torch.rand(n, 2, generator=g) * 16], dim=1)
    gt_inds = torch.zeros(n, dtype=torch.long)
    gt_inds[:num_pos] = torch.tensor([1, 2, 1, 2])
    labels = torch.full((n,), -1, dtype=torch.long)
    labels[:num_pos] = torch.tensor([0, 3, 0, 3])
    return SamplingResult(torch.arange(num_pos), torch.arange(num_pos, n), priors, priors[:2] + 1.0,
                          AssignResult(2, gt_inds, torch.ones(n), labels), torch.zeros(n, dtype=torch.uint8))


@pytest.mark.parametrize("kind, loss_type, channels", [("eqlv2", "SyncEQLv2Loss", C + 1), ("eql", "EQLLoss", C),
                                                        ("fed", "FederatedLoss", C + 1)])
def test_roi_losses_train_a_built_box_head(counts, kind, loss_type, channels):
    from mmdet.registry import MODELS
    from mmdet.structures.bbox import bbox2roi
    from mmengine.config import ConfigDict

    model = _roi_model()
    placement = apply_loss(model, {"type": kind}, C, counts_file=str(counts["c5"]))
    assert placement.kind == "two_stage"
    cfg = node_at(model, placement.sites[0].path)
    assert cfg["loss_cls"]["type"] == loss_type
    torch.manual_seed(0)
    head = MODELS.build(cfg)
    head.init_weights()
    assert type(head.loss_cls).__name__ == loss_type and head.fc_cls.out_features == channels
    res = _sampling_result()
    rois = bbox2roi([res.priors])
    cls_score, bbox_pred = head(torch.randn(rois.shape[0], 4, 2, 2))
    losses = head.loss_and_target(cls_score, bbox_pred, rois, [res], ConfigDict(pos_weight=-1))["loss_bbox"]
    assert torch.isfinite(losses["loss_cls"]) and "acc_classes" in losses
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    assert head.fc_cls.weight.grad is not None and head.fc_cls.weight.grad.abs().sum() > 0
    meta = dict(img_shape=(64, 64), scale_factor=(1.0, 1.0))
    test_cfg = ConfigDict(score_thr=0.0, nms=dict(type="nms", iou_threshold=0.5), max_per_img=20)
    with torch.no_grad():
        det = head.predict_by_feat((rois,), (cls_score.detach(),), (bbox_pred.detach(),), [meta],
                                   rcnn_test_cfg=test_cfg)[0]
    assert len(det) > 0 and det.scores.max() <= 1 and det.labels.max() < C  # sigmoid scores, never background


def test_efl_trains_a_built_retina_head():
    from mmdet.registry import MODELS
    from mmengine.structures import InstanceData

    model = dict(type="RetinaNet", bbox_head=dict(
        type="RetinaHead", num_classes=80, in_channels=8, stacked_convs=1, feat_channels=8,
        anchor_generator=dict(type="AnchorGenerator", octave_base_scale=4, scales_per_octave=1, ratios=[1.0],
                              strides=[8, 16]),
        bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4),
        loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type="L1Loss", loss_weight=1.0),
        train_cfg=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0,
                                     ignore_iof_thr=-1),
                       sampler=dict(type="PseudoSampler"), allowed_border=-1, pos_weight=-1, debug=False)))
    apply_loss(model, {"type": "efl", "focal": {"gamma": 2.0, "alpha": 0.25}, "efl": {"scale": 8.0}}, C)
    assert model["bbox_head"]["loss_cls"] == dict(type="EqualizedFocalLoss", use_sigmoid=True, num_classes=C,
                                                  gamma=2.0, alpha=0.25, scale_factor=8.0, loss_weight=1.0)
    torch.manual_seed(0)
    head = MODELS.build(model["bbox_head"])
    assert head.use_sigmoid_cls and head.cls_out_channels == C
    feats = (torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4))
    gt = InstanceData(bboxes=torch.tensor([[4.0, 4.0, 36.0, 36.0], [20.0, 8.0, 60.0, 40.0]]),
                      labels=torch.tensor([1, 4]))
    meta = dict(img_shape=(64, 64), pad_shape=(64, 64), batch_input_shape=(64, 64), scale_factor=(1.0, 1.0))
    for _ in range(2):  # the second step adds the first one's gradient statistics (both FPN levels)
        cls_scores, bbox_preds = head(feats)
        losses = head.loss_by_feat(cls_scores, bbox_preds, [gt], [meta])
        total = sum(sum(v) for v in losses.values())
        assert torch.isfinite(total)
        total.backward()
    assert head.loss_cls.pos_grad[[1, 4]].gt(0).all() and head.loss_cls.neg_grad.gt(0).all()
    assert (head.loss_cls.pos_neg < 1).all()  # rare positives: γ_j above γ_b
    assert (head.loss_cls.focusing_factors() > 2.0).all()


# ------------------------------------------------------------------------------------------------ refusals

def _model_of(rel: str) -> dict:
    from mmengine.config import Config

    from ecmctl.engine.builder import mmdet_config_path

    return Config.fromfile(str(mmdet_config_path(rel))).model.to_dict()


@pytest.mark.parametrize("rel, loss, message", [
    ("faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py", "efl",
     r"loss 'efl' is not defined for the head Shared2FCBBoxHead \(roi_head.bbox_head\), which classifies with RoI "
     r"classifier; valid there: ecm, bce, ce, seesaw, eqlv2, eql, fed"),
    ("retinanet/retinanet_r50_fpn_1x_coco.py", "eqlv2",
     r"loss 'eqlv2' is not defined for the head RetinaHead \(bbox_head\), which classifies with FocalLoss; "
     r"valid there: ecm, bce, efl"),
    ("rtmdet/rtmdet_tiny_8xb32-300e_coco.py", "efl", "RTMDetSepBNHead .* QualityFocalLoss; valid there: ecm, bce$"),
])
def test_refusals_are_one_line_from_the_placement(rel, loss, message):
    model = _model_of(rel)
    for refuse in (lambda: check_loss(plan_placement(model), loss), lambda: apply_loss(model, {"type": loss}, 5)):
        with pytest.raises(UserError, match=message) as err:
            refuse()
        assert "\n" not in str(err.value)


def test_a_refused_loss_writes_nothing(tmp_path):
    out = tmp_path / "x.py"
    res = CliRunner().invoke(app, ["train", "detector=retinanet_tiny", "loss=fed", f"run_root={tmp_path / 'runs'}",
                                   "--mmdet-config", str(out)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "loss 'fed' is not defined for the head RetinaHead" in " ".join(res.output.split())
    assert not out.exists() and not (tmp_path / "runs").exists()
    with pytest.raises(UserError, match="loss=eql needs the dataset's class counts"):
        apply_loss(_roi_model(), {"type": "eql"}, C)
