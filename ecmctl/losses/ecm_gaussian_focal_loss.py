"""ECM gaussian focal loss for heatmap heads: CornerNet, CentripetalNet, CenterNet, CenterNet-update.

These heads pass *probabilities* p = σ(s) (the head applies the sigmoid; CenterNet-update also clamps to
[1e-4, 1 − 1e-4]) and a gaussian heatmap target. Every class and pixel is a binary decision (an object
centre or corner of class c, or not), so the ECM form applies the focal term to the surrogate score of
that decision, with the foreground-only weights of ECMFocalLoss (no background class):

    p̂ = σ(2 logit(p) + log w⁺ − log w⁻) = w p² / (w p² + (1 − p)²),  w = w⁺ / w⁻,
    loss = m · GFL(p̂, t),  GFL = −[t = 1] (1 − p̂)^α log p̂ − (1 − t)^γ p̂^α log(1 − p̂)

(with mmdet's pos_weight / neg_weight on the two terms). The rational form is the same function as the
logit one on 0 < p < 1 and needs no clamping: it is exact at p = 0 and p = 1 (p̂ = 0 and 1, as the
heads' own sigmoid saturates in float32), with a finite gradient everywhere; w is split as
e^{min(b, 0)} and e^{min(−b, 0)} so that it never overflows. The class axis is dim 1: (B, C, H, W)
heatmaps and (N, C) flattened scores alike. The math runs in float32 (float64 when given).

The heatmap form uses mmdet's own ``gaussian_focal_loss`` on p̂, element-wise, times m. The
CenterNet-update form (``pos_inds``/``pos_labels``) writes out the two terms of mmdet's
``gaussian_focal_loss_with_pos_inds``: that function reduces each term before m could weigh its classes
(and reusing the element-wise function would compute its positive term on the whole N × C map).
"""

from __future__ import annotations

import os

import torch
from mmdet.models.losses.gaussian_focal_loss import GaussianFocalLoss, gaussian_focal_loss
from mmdet.models.losses.utils import weight_reduce_loss
from mmdet.registry import MODELS
from torch import Tensor

from ecmctl.core.errors import UserError
from ecmctl.losses.ecm_loss import attach_class_weights, autocast_off, full_precision

_EPS = 1e-12  # mmdet's gaussian focal loss: log(p + eps), log(1 − p + eps)


def ecm_heatmap_surrogate(prob: Tensor, bias: Tensor, class_dim: int = 1) -> Tensor:
    """The surrogate probability σ(2 logit(p) + b) of probabilities ``prob``, b = log w⁺ − log w⁻ along
    ``class_dim``, as w p² / (w p² + (1 − p)²): finite, with a finite gradient, for p in [0, 1]."""
    shape = [1] * prob.dim()
    shape[class_dim] = -1
    b = bias.view(shape)
    pos = prob.square() * torch.exp(b.clamp(max=0.0))  # e^{min(b,0)} p²
    neg = (1.0 - prob).square() * torch.exp(b.neg().clamp(max=0.0))  # e^{min(−b,0)} (1 − p)²
    return pos / (pos + neg)


def ecm_gaussian_focal_loss(prob: Tensor, target: Tensor, bias: Tensor, det_weight: Tensor, alpha: float = 2.0,
                            gamma: float = 4.0, pos_weight: float = 1.0, neg_weight: float = 1.0) -> Tensor:
    """Element-wise ECM gaussian focal loss of probabilities ``prob`` (class axis dim 1) for a gaussian
    heatmap ``target`` of the same shape: mmdet's gaussian_focal_loss of the surrogate p̂, times m."""
    p_hat = ecm_heatmap_surrogate(prob, bias)
    shape = [1] * prob.dim()
    shape[1] = -1
    loss = gaussian_focal_loss(p_hat, target, reduction="none", alpha=alpha, gamma=gamma, pos_weight=pos_weight,
                               neg_weight=neg_weight)
    return loss * det_weight.view(shape)


@MODELS.register_module()
class ECMGaussianFocalLoss(GaussianFocalLoss):
    """ECM form of mmdet's GaussianFocalLoss (CornerHead, CentripetalHead, CenterNetHead, CenterNetUpdateHead).

    Config: ``loss_heatmap=dict(type='ECMGaussianFocalLoss', alpha=2.0, gamma=4.0, loss_weight=1,
    weights_file='weights_fg.json')`` (CornerNet) or ``loss_cls=dict(type='ECMGaussianFocalLoss',
    pos_weight=0.25, neg_weight=0.75, loss_weight=1.0, weights_file=...)`` (CenterNet-update):
    GaussianFocalLoss's arguments plus ``weights_file``, made without background (``ecmctl weights
    COUNTS``, no ``--bg-ratio``).

    ``forward`` takes GaussianFocalLoss's signature and both its call forms:

    - ``(pred, target, weight=None, avg_factor=...)``: ``pred`` probabilities (B, C, H, W) or (N, C),
      ``target`` the gaussian heatmap of the same shape (1 at positives), ``weight`` element-wise;
    - ``(pred, target, pos_inds=..., pos_labels=..., avg_factor=...)`` (CenterNet-update): ``pred`` (N, C)
      probabilities, positives at rows ``pos_inds`` and columns ``pos_labels``; as in mmdet, each term is
      reduced on its own (divided by ``avg_factor``) and ``weight`` is not used. Reduction 'none' returns
      the (N, C) map with the positive terms added at their places (mmdet's function cannot).

    Test-time scores are the heads' plain σ(s) (CornerNet and CenterNet decode the sigmoid heatmap),
    as for ECMFocalLoss: the margins only move the training decision boundary.
    """

    def __init__(self, weights_file: str | os.PathLike, alpha: float = 2.0, gamma: float = 4.0,
                 reduction: str = "mean", loss_weight: float = 1.0, pos_weight: float = 1.0,
                 neg_weight: float = 1.0) -> None:
        if reduction not in ("none", "mean", "sum"):
            raise UserError(f"ECMGaussianFocalLoss: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        super().__init__(alpha=float(alpha), gamma=float(gamma), reduction=reduction,
                         loss_weight=float(loss_weight), pos_weight=float(pos_weight), neg_weight=float(neg_weight))
        cw = attach_class_weights(self, weights_file)  # C entries, foreground only
        if cw.has_background:
            raise UserError(
                f"{self.weights_file}: this weights file has a background class ({cw.num_foreground} foreground + "
                "background), but ECMGaussianFocalLoss (heatmap heads) counts foreground classes only; "
                "regenerate it without --bg-ratio (`ecmctl weights COUNTS -o weights_fg.json`)")

    def extra_repr(self) -> str:
        return (f"weights_file={self.weights_file!r}, num_classes={self.num_classes}, alpha={self.alpha}, "
                f"gamma={self.gamma}, pos_weight={self.pos_weight}, neg_weight={self.neg_weight}, "
                f"loss_weight={self.loss_weight}, reduction={self.reduction!r}")

    def forward(self, pred: Tensor, target: Tensor, pos_inds: Tensor | None = None, pos_labels: Tensor | None = None,
                weight: Tensor | None = None, avg_factor: float | None = None,
                reduction_override: str | None = None) -> Tensor:
        assert reduction_override in (None, "none", "mean", "sum")
        reduction = reduction_override if reduction_override else self.reduction
        if pred.dim() < 2 or pred.size(1) != self.num_classes:
            raise UserError(f"{self.weights_file}: the weights file has {self.num_classes} foreground classes, "
                            f"but the heatmap head predicts shape {tuple(pred.shape)} (classes on dim 1); "
                            "regenerate the weights file from the counts of this model's training set "
                            f"(`ecmctl weights COUNTS`) or set the head's num_classes to {self.num_classes}")
        p = full_precision(pred)
        with autocast_off(p.device.type):
            t = target.to(p.dtype)
            bias, m = self.bias.to(p.dtype), self.det_weight.to(p.dtype)
            if pos_inds is None:
                loss = ecm_gaussian_focal_loss(p, t, bias, m, self.alpha, self.gamma, self.pos_weight,
                                               self.neg_weight)
                if weight is not None:
                    weight = weight.to(loss.dtype)
                loss = weight_reduce_loss(loss, weight, reduction, avg_factor)
            else:
                assert pos_labels is not None
                if p.dim() != 2:
                    raise ValueError(f"ECMGaussianFocalLoss: with pos_inds, pred must be (N, C) scores, got "
                                     f"{tuple(p.shape)}")
                pos_labels = pos_labels.long()
                p_hat = ecm_heatmap_surrogate(p, bias)
                # the two terms of mmdet's gaussian_focal_loss_with_pos_inds, each class's weighed by m
                pos_p = p_hat[pos_inds].gather(1, pos_labels.unsqueeze(1))
                pos_loss = -(pos_p + _EPS).log() * (1 - pos_p).pow(self.alpha) * m[pos_labels].unsqueeze(1)
                neg_loss = -(1 - p_hat + _EPS).log() * p_hat.pow(self.alpha) * (1 - t).pow(self.gamma) * m
                if reduction == "none":
                    loss = (self.neg_weight * neg_loss).index_put(
                        (pos_inds, pos_labels), self.pos_weight * pos_loss.squeeze(1), accumulate=True)
                else:
                    loss = (self.pos_weight * weight_reduce_loss(pos_loss, None, reduction, avg_factor)
                            + self.neg_weight * weight_reduce_loss(neg_loss, None, reduction, avg_factor))
        return self.loss_weight * loss
