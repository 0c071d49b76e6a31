"""ECM quality focal loss for GFL-style heads: GFL, TOOD, RTMDet(-Ins), LD, DDQ's auxiliary head, DETR/DINO.

QualityFocalLoss trains the sigmoid score of the label class towards a quality y (IoU or alignment metric,
0 for every other class and for background). The ECM form takes QFL of the surrogate score, with the
foreground-only weights of ECMFocalLoss (dense heads leave fg/bg to the modulating factor):

    p = σ(z),  z = 2 s + log w⁺ − log w⁻,
    loss = m · |y − p|^β · BCE(p, y)       (per class; summed over classes per prediction, as QFL).

mmdet's quality_focal_loss functions sum over classes inside, so the per-class m cannot be applied to
their output: the formula is written here (BCE in its logits form, stable for any z). Heads that pass
probabilities (``activated=True``: TOOD) get s = logit(p), clamped to |s| ≤ 16.64 (`prob_to_logit`).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from mmdet.models.losses.gfocal_loss import QualityFocalLoss
from mmdet.models.losses.utils import weight_reduce_loss
from mmdet.registry import MODELS
from torch import Tensor

from ecmctl.core.errors import UserError
from ecmctl.losses.ecm_focal_loss import prob_to_logit
from ecmctl.losses.ecm_loss import attach_class_weights, autocast_off, full_precision


def ecm_quality_focal_loss(pred: Tensor, target: Tensor, bias: Tensor, det_weight: Tensor,
                           beta: float = 2.0) -> Tensor:
    """Element-wise ECM quality focal loss of logits ``pred`` (N × C or N × C × …, classes on dim 1) for a
    dense quality target ``target`` of the same shape: m · |y − σ(z)|^β · BCE(σ(z), y)."""
    shape = (-1,) + (1,) * (pred.dim() - 2)  # per-class constants along dim 1
    z = torch.add(bias.view(shape), pred, alpha=2.0)
    modulating = (target - torch.sigmoid(z)).abs().pow(beta)
    return F.binary_cross_entropy_with_logits(z, target, reduction="none") * modulating * det_weight.view(shape)


@MODELS.register_module()
class ECMQualityFocalLoss(QualityFocalLoss):
    """ECM quality focal loss for mmdet's GFLHead, TOODHead, RTMDetHead, LDHead, …; a drop-in for
    QualityFocalLoss (a subclass of it, so DETR/DINO heads build their (label, IoU) targets for it too).

    Config: ``loss_cls=dict(type='ECMQualityFocalLoss', use_sigmoid=True, weights_file='weights_fg.json',
    beta=2.0, loss_weight=1.0)`` (``activated=True`` kept for TOOD); the weights file has no background
    (``ecmctl weights COUNTS``). Test scores are the head's plain σ(s), as for ECMFocalLoss.

    ``forward`` takes QualityFocalLoss's signature and both of its target forms: a tuple (labels (N,) with
    C or anything outside 0..C-1 meaning background, quality scores (N,)), or a tensor of pred's shape
    (one-hot with soft weights). ``weight`` weighs each prediction; the loss per prediction is the sum over
    classes, so reduction 'none' returns shape (N,) and 'mean' without ``avg_factor`` averages over N.
    """

    def __init__(self, weights_file: str | os.PathLike, use_sigmoid: bool = True, beta: float = 2.0,
                 reduction: str = "mean", loss_weight: float = 1.0, activated: bool = False) -> None:
        if not use_sigmoid:
            raise UserError("ECMQualityFocalLoss is a sigmoid loss: set use_sigmoid=True in loss_cls")
        if reduction not in ("none", "mean", "sum"):
            raise UserError(f"ECMQualityFocalLoss: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        super().__init__(use_sigmoid=True, beta=float(beta), reduction=reduction, loss_weight=float(loss_weight),
                         activated=bool(activated))
        cw = attach_class_weights(self, weights_file)
        if cw.has_background:
            raise UserError(f"{self.weights_file}: this weights file has a background class, but "
                            "ECMQualityFocalLoss (one-stage heads) counts foreground classes only; regenerate it "
                            "without --bg-ratio (`ecmctl weights COUNTS -o weights_fg.json`)")

    def extra_repr(self) -> str:
        return (f"weights_file={self.weights_file!r}, num_classes={self.num_classes}, beta={self.beta}, "
                f"activated={self.activated}, loss_weight={self.loss_weight}, reduction={self.reduction!r}")

    def _refuse(self, found: str) -> None:
        raise UserError(f"{self.weights_file}: the weights file has {self.num_classes} foreground classes, but "
                        f"{found}; regenerate the weights file from this training set's counts "
                        f"(`ecmctl weights COUNTS`) or set the head's num_classes to {self.num_classes}")

    def forward(self, pred: Tensor, target: tuple[Tensor, Tensor] | Tensor, weight: Tensor | None = None,
                avg_factor: float | None = None, reduction_override: str | None = None) -> Tensor:
        assert reduction_override in (None, "none", "mean", "sum")
        reduction = reduction_override if reduction_override else self.reduction
        if pred.dim() < 2 or pred.size(1) != self.num_classes:
            self._refuse(f"the head predicts {tuple(pred.shape)} (classes on dim 1)")
        if isinstance(target, Tensor) and target.shape != pred.shape:
            self._refuse(f"the tensor target has shape {tuple(target.shape)}, not the prediction's "
                         f"{tuple(pred.shape)}")
        if not isinstance(target, Tensor) and pred.dim() != 2:
            raise UserError(f"ECMQualityFocalLoss: (labels, scores) targets need N × C predictions, as "
                            f"QualityFocalLoss; got {tuple(pred.shape)}")
        s = full_precision(pred)
        with autocast_off(s.device.type):
            if self.activated:
                s = prob_to_logit(s)
            if isinstance(target, Tensor):  # one-hot with soft weights, pred's shape
                y = target.to(s.dtype)
            else:  # (labels, scores): the score in the label's column, 0 elsewhere and for background
                labels, scores = target
                classes = torch.arange(self.num_classes, device=s.device)
                y = (labels.view(-1, 1) == classes).to(s.dtype) * scores.to(s.dtype).view(-1, 1)
            loss = ecm_quality_focal_loss(s, y, self.bias.to(s.dtype), self.det_weight.to(s.dtype),
                                          self.beta).sum(dim=1)
            if weight is not None:
                weight = weight.to(loss.dtype)
            loss = weight_reduce_loss(loss, weight, reduction, avg_factor)
        return self.loss_weight * loss
