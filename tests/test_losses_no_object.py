"""ECMNoObjectLoss and the ECM heads (DETR, MaskFormer/Mask2Former, YOLACT): formula, mmdet conventions,
test scores and the Hungarian matching cost, on real mmdet modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from loss_weights import ref_arrays
from loss_weights import write_weights_file as write_file

from ecmctl.core.errors import UserError
from ecmctl.engine import ecm_heads
from ecmctl.losses import ECMLoss, ECMNoObjectLoss, no_object_scores

C = 5  # foreground classes
COUNTS = [1000, 300, 40, 7, 2]
BG_RATIO = 4.0  # unmatched / matched queries


def write_weights_file(path, counts=COUNTS, bg_ratio=BG_RATIO):
    return write_file(path, counts, bg_ratio)

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    return {
        "bg": write_weights_file(d / "bg.json"),
        "fg": write_weights_file(d / "fg.json", bg_ratio=None),
        "equal_bg": write_weights_file(d / "equal_bg.json", counts=[50], bg_ratio=1.0),
    }


def ref_per_query(s, labels, path):
    """Σ_c m_c BCE(σ(2s + log w+ − log w−), y_c) over the C + 1 columns, with sigmoid/log only."""
    lwp, lwn, m = ref_arrays(path, s.dtype)
    p = torch.sigmoid(2 * s + lwp - lwn)
    y = F.one_hot(labels, s.shape[1]).to(s.dtype)
    return (m * -(y * torch.log(p) + (1 - y) * torch.log(1 - p))).sum(1)


def ecm_score(s):
    """The test score, written out: σ(s_c)(1 − σ(s_bg)) for the C foreground columns."""
    return torch.sigmoid(s[..., :-1]) * (1 - torch.sigmoid(s[..., -1:]))


def random_queries(n=12, seed=0, dtype=torch.float64, num_out=C + 1):
    g = torch.Generator().manual_seed(seed)
    s = (2.0 * torch.randn(n, num_out, generator=g, dtype=dtype)).requires_grad_()
    labels = torch.randint(0, num_out, (n,), generator=g)
    labels[: n // 2] = num_out - 1  # most queries are unmatched (no object)
    return s, labels


# ------------------------------------------------------------------------------------------ the loss


@pytest.mark.parametrize("convention", ["DETRHead", "Mask2FormerHead"])
def test_value_and_gradient_match_reference_with_head_conventions(files, convention):
    """(a) float64 value and gradient against the reference, with the label_weights / avg_factor that
    ECMDETRHead (float ones, num_pos + 1·num_neg = queries) and Mask2FormerHead (long ones,
    class_weight[labels].sum() from the loss's all-ones class_weight) pass."""
    loss_fn = ECMNoObjectLoss(files["bg"], use_sigmoid=False, loss_weight=2.0, reduction="mean",
                              class_weight=[1.0] * C + [0.1])
    s, labels = random_queries()
    n = s.shape[0]
    if convention == "DETRHead":
        label_weights = torch.ones(n, dtype=torch.float64)
        num_pos = int((labels < C).sum())
        avg = max(num_pos * 1.0 + (n - num_pos) * 1.0, 1)  # ECMDETRHead sets bg_cls_weight = 1
    else:
        label_weights = torch.ones(n, dtype=torch.long)  # Mask2FormerHead: gt_labels.new_ones
        avg = s.new_tensor(loss_fn.class_weight)[labels].sum()
    loss = loss_fn(s, labels, label_weights, avg_factor=avg)
    (g,) = torch.autograd.grad(loss, s)

    s2 = s.detach().clone().requires_grad_()
    ref = 2.0 * ref_per_query(s2, labels, files["bg"]).sum() / (n + torch.finfo(torch.float32).eps)
    (g_ref,) = torch.autograd.grad(ref, s2)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(g, g_ref, rtol=1e-6, atol=1e-9)


def test_module_contract(files):
    loss_fn = ECMNoObjectLoss(files["bg"], class_weight=1.0, bg_cls_weight=0.1)
    assert isinstance(loss_fn, ECMLoss)
    assert loss_fn.use_sigmoid is False  # DETRHead: cls_out_channels = C + 1
    assert loss_fn.class_weight == [1.0] * (C + 1)
    assert loss_fn.replaced_bg_cls_weight == 0.1 and loss_fn.replaced_class_weight == 1.0
    assert loss_fn.get_cls_channels(C) == C + 1
    s, _ = random_queries(dtype=torch.float32)
    s = s.detach()
    act = loss_fn.get_activation(s)
    torch.testing.assert_close(act[:, :C], ecm_score(s))
    torch.testing.assert_close(no_object_scores(s), act)  # the loss-free form used by cost / fusion head
    assert loss_fn.state_dict() == {}


def test_ignore_index_and_avg_non_ignore(files):
    """CrossEntropyLoss's conventions: ignored labels weigh 0; avg_non_ignore divides by the others."""
    s, labels = random_queries(n=10, seed=3)
    s = s.detach()
    per = ref_per_query(s, labels, files["bg"])
    ignored = labels.clone()
    ignored[[1, 7]] = -100
    keep = torch.ones(10, dtype=torch.bool)
    keep[[1, 7]] = False
    plain = ECMNoObjectLoss(files["bg"])
    torch.testing.assert_close(plain(s, ignored), per[keep].sum() / 10, rtol=1e-6, atol=1e-9)
    non_ignore = ECMNoObjectLoss(files["bg"], avg_non_ignore=True)
    torch.testing.assert_close(non_ignore(s, ignored), per[keep].mean(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ECMNoObjectLoss(files["bg"], reduction="none")(s, labels), per, rtol=1e-6,
                               atol=1e-9)


def test_balanced_weights_file_is_m_times_sigmoid_bce_at_2s(files):
    """(b) One class + background with r = 1: n⁺ = n⁻ for both, so bias 0 and the loss is m·BCE(σ(2s), y).

    It is not the softmax cross-entropy these heads trained with, and cannot be: that is a different
    activation. Softmax CE over the C + 1 outputs, −log softmax(s)_y, depends on the logits only through
    their differences (adding a constant to every logit changes nothing), whereas ECM's base is the
    paper's C + 1 independent sigmoids, each output trained as its own binary problem (the two-stage form
    of supplementary eq. 12). The test shows both facts.
    """
    lwp, lwn, m = ref_arrays(files["equal_bg"])
    torch.testing.assert_close(lwp, lwn)
    torch.testing.assert_close(m, torch.full_like(m, np.log(2.0)))
    loss_fn = ECMNoObjectLoss(files["equal_bg"], reduction="none")
    s, labels = random_queries(n=8, seed=2, num_out=2)
    s = s.detach()
    y = F.one_hot(labels, 2).double()
    expected = (m * F.binary_cross_entropy(torch.sigmoid(2 * s), y, reduction="none")).sum(1)
    torch.testing.assert_close(loss_fn(s, labels), expected, rtol=1e-6, atol=1e-9)

    shifted = s + 1.5
    ce = F.cross_entropy(s, labels, reduction="none")
    torch.testing.assert_close(F.cross_entropy(shifted, labels, reduction="none"), ce)  # softmax: shift-free
    assert not torch.allclose(loss_fn(shifted, labels), loss_fn(s, labels))  # sigmoid: every logit counts
    assert not torch.allclose(loss_fn(s, labels), m[0] * ce)


def test_extreme_logits_and_bf16_autocast(files):
    """(c) finite gradients at |s| = 50; under CPU bf16 autocast the loss is computed in float32."""
    loss_fn = ECMNoObjectLoss(files["bg"])
    s = torch.full((4, C + 1), 50.0)
    s[1] = -50.0
    s[2, ::2] = -50.0
    s.requires_grad_()
    labels = torch.tensor([C, 0, 3, C])
    out = loss_fn(s, labels)
    (g,) = torch.autograd.grad(out, s)
    assert torch.isfinite(out) and torch.isfinite(g).all()

    torch.manual_seed(0)
    fc = torch.nn.Linear(16, C + 1)
    x = torch.randn(32, 16)
    labels = torch.randint(0, C + 1, (32,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = fc(x)
        assert logits.dtype == torch.bfloat16
        amp = loss_fn(logits, labels)
    assert amp.dtype == torch.float32 and torch.isfinite(amp)
    amp.backward()
    assert torch.isfinite(fc.weight.grad).all()
    torch.testing.assert_close(amp, loss_fn(fc(x), labels), rtol=2e-2, atol=1e-3)


def test_refusals(files):
    with pytest.raises(UserError, match=r"use_sigmoid=False"):
        ECMNoObjectLoss(files["bg"], use_sigmoid=True)
    with pytest.raises(UserError, match=r"fg\.json.*no background.*--bg-ratio"):
        ECMNoObjectLoss(files["fg"])
    with pytest.raises(UserError, match=r"class_weight has 4 entries.*5 classes \+ background = 6"):
        ECMNoObjectLoss(files["bg"], class_weight=[1.0, 1.0, 1.0, 0.1])
    with pytest.raises(UserError, match=r"use_mask"):
        ECMNoObjectLoss(files["bg"], use_mask=True)


# -------------------------------------------------------------------------------- types and the cost


def test_type_maps_name_registered_subclasses():
    from mmdet.registry import MODELS, TASK_UTILS

    for base, ecm in ecm_heads.ECM_HEAD_TYPES.items():
        assert issubclass(MODELS.get(ecm), MODELS.get(base)), (base, ecm)
    for base, ecm in ecm_heads.ECM_COST_TYPES.items():
        assert issubclass(TASK_UTILS.get(ecm), TASK_UTILS.get(base))
    assert MODELS.get(ecm_heads.NO_OBJECT_LOSS_TYPE) is ECMNoObjectLoss
    # the SSD refusal's premise: the head has no loss_cls module to swap
    ssd = MODELS.build(dict(type="SSDHead", num_classes=C, in_channels=(8, 8, 8), anchor_generator=dict(
        type="SSDAnchorGenerator", scale_major=False, input_size=64, strides=[8, 16, 32],
        ratios=([2], [2], [2]), min_sizes=[8, 16, 32], max_sizes=[16, 32, 64])))
    assert not hasattr(ssd, "loss_cls") and "SSDHead" in ecm_heads.ECM_REFUSED_HEADS
    assert "\n" not in ecm_heads.SSD_REFUSAL


def test_classification_cost():
    from mmdet.registry import TASK_UTILS
    from mmengine.structures import InstanceData

    cost = TASK_UTILS.build(dict(type="ECMClassificationCost", weight=2.0))
    s = torch.randn(7, C + 1)
    gt = torch.tensor([0, 4, 4, 2])
    out = cost(InstanceData(scores=s), InstanceData(labels=gt))
    torch.testing.assert_close(out, -ecm_score(s)[:, gt] * 2.0)


# ------------------------------------------------------------------------------------------ heads


def _detr_head(weights_file):
    from mmdet.registry import MODELS

    return MODELS.build(dict(
        type="ECMDETRHead", num_classes=C, embed_dims=16,
        loss_cls=dict(type="ECMNoObjectLoss", bg_cls_weight=0.1, use_sigmoid=False, loss_weight=1.0,
                      class_weight=1.0, weights_file=str(weights_file)),
        train_cfg=dict(assigner=dict(type="HungarianAssigner", match_costs=[
            dict(type="ECMClassificationCost", weight=1.0),
            dict(type="BBoxL1Cost", weight=5.0, box_format="xywh"),
            dict(type="IoUCost", iou_mode="giou", weight=2.0)])),
        test_cfg=dict(max_per_img=100)))


def _det_samples(boxes_labels, shape=(64, 64)):
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    out = []
    for boxes, labels in boxes_labels:
        ds = DetDataSample(metainfo=dict(img_shape=shape, ori_shape=shape, scale_factor=(1.0, 1.0),
                                         batch_input_shape=shape, pad_shape=shape))
        ds.gt_instances = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32),
                                       labels=torch.tensor(labels, dtype=torch.long))
        out.append(ds)
    return out


def test_detr_head_train_and_predict(files):
    """(d) ECMDETRHead: C + 1 outputs; per-layer loss_cls = reference over the matched labels / queries;
    backward finite; predict scores = σ(s_c)(1 − σ(s_bg)) of the raw logits."""
    torch.manual_seed(0)
    head = _detr_head(files["bg"])
    head.init_weights()
    assert head.cls_out_channels == C + 1 and head.fc_cls.out_features == C + 1
    assert type(head.assigner.match_costs[0]).__name__ == "ECMClassificationCost"
    samples = _det_samples([([[4, 4, 30, 40], [20, 10, 60, 50]], [1, 4]), ([[0, 0, 20, 20]], [0])])
    hidden = torch.randn(2, 2, 10, 16)  # (decoder layers, batch, queries, dims)
    losses = head.loss(hidden, samples)
    assert {"loss_cls", "d0.loss_cls", "loss_bbox", "loss_iou"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert torch.isfinite(head.fc_cls.weight.grad).all()

    with torch.no_grad():
        cls_scores, bbox_preds = head(hidden)
        metas = [s.metainfo for s in samples]
        gts = [s.gt_instances for s in samples]
        for layer, key in ((0, "d0.loss_cls"), (1, "loss_cls")):
            labels, *_ = head.get_targets(list(cls_scores[layer]), list(bbox_preds[layer]), gts, metas)
            labels = torch.cat(labels)
            assert (labels < C).sum() == 3  # every gt matched once, the other 17 queries no-object
            expected = ref_per_query(cls_scores[layer].reshape(-1, C + 1).double(), labels, files["bg"]).mean()
            torch.testing.assert_close(losses[key].double(), expected, rtol=1e-5, atol=1e-6)

        head.test_cfg = dict(max_per_img=10 * C)  # every (query, class) pair
        (res,) = head.predict(hidden[:, :1], samples[:1], rescale=True)
        expected = ecm_score(cls_scores[-1, 0])
        torch.testing.assert_close(res.scores, expected.reshape(-1).sort(descending=True).values)
        q = torch.stack([torch.nonzero(expected[:, lab] == sc)[0, 0] for sc, lab in zip(res.scores, res.labels,
                                                                                        strict=True)])
        torch.testing.assert_close(res.scores, expected[q, res.labels])
        assert res.bboxes.shape == (10 * C, 4)


def test_detr_head_refuses_plain_cross_entropy(files):
    from mmdet.registry import MODELS

    with pytest.raises(UserError, match=r"ECMDETRHead.*ECMNoObjectLoss.*CrossEntropyLoss"):
        MODELS.build(dict(type="ECMDETRHead", num_classes=C, embed_dims=16,
                          loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, class_weight=1.0)))
    with pytest.raises(UserError, match=r"bg\.json.*num_classes=7"):
        MODELS.build(dict(type="ECMDETRHead", num_classes=7, embed_dims=16,
                          loss_cls=dict(type="ECMNoObjectLoss", weights_file=str(files["bg"]))))


def _mask2former_head(weights_file, num_things=3, num_stuff=2):
    from mmdet.registry import MODELS
    from mmengine.config import ConfigDict

    d = 16
    return MODELS.build(ConfigDict(
        type="ECMMask2FormerHead", in_channels=[8, 16, 32, 64], strides=[4, 8, 16, 32], feat_channels=d,
        out_channels=d, num_things_classes=num_things, num_stuff_classes=num_stuff, num_queries=6,
        num_transformer_feat_level=3,
        pixel_decoder=dict(
            type="MSDeformAttnPixelDecoder", num_outs=3, norm_cfg=dict(type="GN", num_groups=4),
            act_cfg=dict(type="ReLU"),
            encoder=dict(num_layers=1, layer_cfg=dict(
                self_attn_cfg=dict(embed_dims=d, num_heads=2, num_levels=3, num_points=2, dropout=0.0,
                                   batch_first=True),
                ffn_cfg=dict(embed_dims=d, feedforward_channels=2 * d, num_fcs=2, ffn_drop=0.0,
                             act_cfg=dict(type="ReLU", inplace=True)))),
            positional_encoding=dict(num_feats=d // 2, normalize=True)),
        enforce_decoder_input_project=False,
        positional_encoding=dict(num_feats=d // 2, normalize=True),
        transformer_decoder=dict(return_intermediate=True, num_layers=2, layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=d, num_heads=2, dropout=0.0, batch_first=True),
            cross_attn_cfg=dict(embed_dims=d, num_heads=2, dropout=0.0, batch_first=True),
            ffn_cfg=dict(embed_dims=d, feedforward_channels=2 * d, num_fcs=2, ffn_drop=0.0,
                         act_cfg=dict(type="ReLU", inplace=True))), init_cfg=None),
        loss_cls=dict(type="ECMNoObjectLoss", use_sigmoid=False, loss_weight=2.0, reduction="mean",
                      class_weight=[1.0] * (num_things + num_stuff) + [0.1], weights_file=str(weights_file)),
        loss_mask=dict(type="CrossEntropyLoss", use_sigmoid=True, reduction="mean", loss_weight=5.0),
        loss_dice=dict(type="DiceLoss", use_sigmoid=True, activate=True, reduction="mean", naive_dice=True,
                       eps=1.0, loss_weight=5.0),
        train_cfg=dict(num_points=16, oversample_ratio=3.0, importance_sample_ratio=0.75,
                       assigner=dict(type="HungarianAssigner", match_costs=[
                           dict(type="ECMClassificationCost", weight=2.0),
                           dict(type="CrossEntropyLossCost", weight=5.0, use_sigmoid=True),
                           dict(type="DiceCost", weight=5.0, pred_act=True, eps=1.0)]),
                       sampler=dict(type="MaskPseudoSampler")),
        test_cfg=dict(panoptic_on=True, semantic_on=False, instance_on=True, max_per_image=8,
                      object_mask_thr=0.0, iou_thr=0.0, filter_low_score=False)))


def test_mask2former_head_and_fusion_head(files):
    """(d) ECMMask2FormerHead (tiny) + ECMMaskFormerFusionHead: loss_cls = reference / queries on the
    matched labels, backward finite; panoptic and instance results scored with σ(s_c)(1 − σ(s_bg))."""
    from mmdet.evaluation.functional import INSTANCE_OFFSET
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    torch.manual_seed(0)
    head = _mask2former_head(files["bg"])
    head.init_weights()
    assert head.cls_embed.out_features == C + 1
    assert head.class_weight == [1.0] * (C + 1)  # the config's 0.1 for no-object is replaced
    h = w = 32
    feats = [torch.randn(2, 8 * 2**i, h // 4 // 2**i, w // 4 // 2**i) for i in range(4)]
    samples = []
    for labels in ([0, 2], [1]):
        masks = np.zeros((len(labels), h, w), dtype=np.uint8)
        for k in range(len(labels)):
            masks[k, 4 * k: 4 * k + 12, 3 + 5 * k: 20 + 5 * k] = 1
        ds = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), batch_input_shape=(h, w),
                                         pad_shape=(h, w), scale_factor=(1.0, 1.0)))
        ds.gt_instances = InstanceData(labels=torch.tensor(labels), masks=BitmapMasks(masks, h, w),
                                       bboxes=torch.zeros(len(labels), 4))
        samples.append(ds)
    losses = head.loss(feats, samples)
    assert {"loss_cls", "d0.loss_cls", "d1.loss_cls", "loss_mask", "loss_dice"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert torch.isfinite(head.cls_embed.weight.grad).all()

    # the last layer's loss_cls against the reference: same point samples (seeded) -> same matching
    with torch.no_grad():
        cls_scores, mask_preds = head(feats, samples)
        gts = head.preprocess_gt([s.gt_instances for s in samples], [None, None])
        metas = [s.metainfo for s in samples]
        torch.manual_seed(1)
        loss_cls, _, _ = head._loss_by_feat_single(cls_scores[-1], mask_preds[-1], gts, metas)
        torch.manual_seed(1)
        labels, *_ = head.get_targets(list(cls_scores[-1]), list(mask_preds[-1]), gts, metas)
        labels = torch.cat(labels)
        assert (labels < C).sum() == 3
        expected = 2.0 * ref_per_query(cls_scores[-1].reshape(-1, C + 1).double(), labels, files["bg"]).mean()
        torch.testing.assert_close(loss_cls.double(), expected, rtol=1e-5, atol=1e-6)

        head.cls_embed.bias[-1] = -3.0  # an untrained head: make most queries objects, for the panoptic check
        mask_cls, mask_pred = head.predict(feats, samples)
    fusion = MODELS.build(dict(type="ECMMaskFormerFusionHead", num_things_classes=3, num_stuff_classes=2,
                               test_cfg=head.test_cfg))
    results = fusion.predict(mask_cls, mask_pred, samples, rescale=False)
    for res, logits, mp in zip(results, mask_cls, mask_pred, strict=True):
        ins = res["ins_results"]
        scores = ecm_score(logits)  # (queries, C)
        # instance scores = class score × mean mask probability; the class score is the ECM one
        top = scores.reshape(-1).topk(8).values
        binary = (mp > 0).float()
        mask_score = (mp.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
        candidates = scores * mask_score[:, None]
        assert (ins.labels < 3).all() and 0 < len(ins) <= 8
        for sc, lab in zip(ins.scores, ins.labels, strict=True):
            assert torch.isclose(candidates[:, lab], sc).any()
            assert (scores[:, lab] >= top.min() - 1e-7).any()
        # panoptic: a query is kept when its best class score beats σ(s_bg) (thresholds 0 here)
        pan = res["pan_results"].sem_seg[0]
        act = no_object_scores(logits)
        kept = act.argmax(-1) != C
        seg_classes = {int(v) % INSTANCE_OFFSET for v in pan.unique() if int(v) != C}
        assert seg_classes and seg_classes <= {int(c) for c in act[kept].argmax(-1)}


def test_maskformer_head_class_weight_without_config_entry(files):
    """ECMMaskFormerHead reads class_weight from the loss (all ones), even when the config has none."""
    from mmdet.registry import MODELS
    from mmengine.config import ConfigDict

    d = 16
    head = MODELS.build(ConfigDict(
        type="ECMMaskFormerHead", in_channels=[8, 16, 32, 64], feat_channels=d, out_channels=d,
        num_things_classes=3, num_stuff_classes=2, num_queries=4,
        pixel_decoder=dict(type="PixelDecoder", norm_cfg=dict(type="GN", num_groups=4),
                           act_cfg=dict(type="ReLU")),
        enforce_decoder_input_project=False,
        positional_encoding=dict(num_feats=d // 2, normalize=True),
        transformer_decoder=dict(return_intermediate=True, num_layers=1, layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=d, num_heads=2, dropout=0.0, batch_first=True),
            cross_attn_cfg=dict(embed_dims=d, num_heads=2, dropout=0.0, batch_first=True),
            ffn_cfg=dict(embed_dims=d, feedforward_channels=2 * d, num_fcs=2, ffn_drop=0.0,
                         act_cfg=dict(type="ReLU", inplace=True))), init_cfg=None),
        loss_cls=dict(type="ECMNoObjectLoss", weights_file=str(files["bg"]))))
    assert head.class_weight == [1.0] * (C + 1) and head.cls_embed.out_features == C + 1


def test_yolact_head_train_and_predict(files):
    """(d) ECMYOLACTHead: OHEM loss through ECMNoObjectLoss (reduction 'none'), backward finite; test
    scores σ(s_c)(1 − σ(s_bg)) through fast NMS."""
    from mmdet.registry import MODELS
    from mmengine.config import ConfigDict

    torch.manual_seed(0)
    head = MODELS.build(dict(
        type="ECMYOLACTHead", num_classes=C, in_channels=8, feat_channels=8, num_protos=4,
        anchor_generator=dict(type="AnchorGenerator", octave_base_scale=3, scales_per_octave=1,
                              base_sizes=[8, 16], ratios=[0.5, 1.0, 2.0], strides=[8, 16]),
        bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2]),
        loss_cls=dict(type="ECMNoObjectLoss", use_sigmoid=False, reduction="none", loss_weight=1.0,
                      weights_file=str(files["bg"])),
        loss_bbox=dict(type="SmoothL1Loss", beta=1.0, loss_weight=1.5), use_ohem=True,
        train_cfg=ConfigDict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4,
                                           min_pos_iou=0.0, ignore_iof_thr=-1, gt_max_assign_all=False),
                             sampler=dict(type="PseudoSampler"), allowed_border=-1, pos_weight=-1,
                             neg_pos_ratio=3, debug=False),
        test_cfg=ConfigDict(nms_pre=1000, min_bbox_size=0, score_thr=0.0, iou_thr=0.5, top_k=50,
                            max_per_img=20)))
    head.init_weights()
    assert head.cls_out_channels == C + 1
    feats = (torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4))
    cls_scores, bbox_preds, coeffs = head(feats)
    samples = _det_samples([([[4, 4, 30, 36], [30, 20, 60, 50]], [1, 4])])
    losses = head.loss_by_feat(cls_scores, bbox_preds, coeffs, [s.gt_instances for s in samples],
                               [s.metainfo for s in samples])
    total = sum(losses["loss_cls"]) + sum(losses["loss_bbox"])
    assert torch.isfinite(total) and total > 0
    total.backward()
    assert torch.isfinite(head.conv_cls.weight.grad).all()

    with torch.no_grad():
        cls_scores, bbox_preds, coeffs = head(feats)
        (res,) = head.predict_by_feat(cls_scores, bbox_preds, coeffs, [samples[0].metainfo], rescale=True)
    logits = torch.cat([c[0].permute(1, 2, 0).reshape(-1, C + 1) for c in cls_scores])
    expected = ecm_score(logits)
    assert len(res) > 0
    for sc, lab in zip(res.scores, res.labels, strict=True):
        assert torch.isclose(expected[:, lab], sc, rtol=1e-6, atol=1e-7).any()
    assert torch.isclose(res.scores.max(), expected.max())  # the best pair always survives fast NMS
