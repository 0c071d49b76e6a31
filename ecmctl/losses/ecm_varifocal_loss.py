"""ECM varifocal loss for VarifocalNet's IoU-aware classification (supplementary section 6).

VarifocalNet trains its scores towards the IoU of each positive location with its box (target q in [0, 1]
in the positive class's column, 0 elsewhere). The ECM form takes the varifocal loss of the surrogate score,
with the foreground-only weights of ECMFocalLoss (dense heads leave fg/bg to the focal weight):

    p = σ(z),  z = 2 s + log w⁺ − log w⁻,
    loss = m · w_vf · BCE(p, q),   w_vf = q (q > 0, iou_weighted)  or  α |p − q|^γ (q = 0).
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
from mmdet.models.losses.utils import weight_reduce_loss
from mmdet.models.losses.varifocal_loss import varifocal_loss
from mmdet.registry import MODELS
from torch import Tensor

from ecmctl.core.errors import UserError
from ecmctl.losses.ecm_loss import attach_class_weights, autocast_off, full_precision


def ecm_varifocal_loss(pred: Tensor, target: Tensor, bias: Tensor, det_weight: Tensor, alpha: float = 0.75,
                       gamma: float = 2.0, iou_weighted: bool = True) -> Tensor:
    """Element-wise (N × C) ECM varifocal loss of logits ``pred`` for IoU-aware targets ``target`` (N × C):
    mmdet's own varifocal loss of the surrogate logits z, times m."""
    z = torch.add(bias, pred, alpha=2.0)
    return varifocal_loss(z, target, alpha=alpha, gamma=gamma, iou_weighted=iou_weighted, reduction="none") * det_weight


@MODELS.register_module()
class ECMVarifocalLoss(nn.Module):
    """ECM varifocal loss for mmdet's VFNetHead; a drop-in for VarifocalLoss.

    Config: ``loss_cls=dict(type='ECMVarifocalLoss', use_sigmoid=True, weights_file='weights_fg.json',
    alpha=0.75, gamma=2.0, iou_weighted=True, loss_weight=1.0)``; the weights file has no background
    (``ecmctl weights COUNTS``). Test scores are the head's plain σ(s), as for ECMFocalLoss.
    """

    def __init__(self, weights_file: str | os.PathLike, alpha: float = 0.75, gamma: float = 2.0,
                 iou_weighted: bool = True, loss_weight: float = 1.0, reduction: str = "mean",
                 use_sigmoid: bool = True) -> None:
        super().__init__()
        if not use_sigmoid:
            raise UserError("ECMVarifocalLoss is a sigmoid loss: set use_sigmoid=True in loss_cls")
        if reduction not in ("none", "mean", "sum"):
            raise UserError(f"ECMVarifocalLoss: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        cw = attach_class_weights(self, weights_file)
        if cw.has_background:
            raise UserError(f"{self.weights_file}: this weights file has a background class, but "
                            "ECMVarifocalLoss (VarifocalNet) counts foreground classes only; regenerate it "
                            "without --bg-ratio (`ecmctl weights COUNTS -o weights_fg.json`)")
        self.use_sigmoid = True
        self.alpha, self.gamma, self.iou_weighted = float(alpha), float(gamma), bool(iou_weighted)
        self.loss_weight = float(loss_weight)
        self.reduction = reduction

    def extra_repr(self) -> str:
        return (f"weights_file={self.weights_file!r}, num_classes={self.num_classes}, alpha={self.alpha}, "
                f"gamma={self.gamma}, iou_weighted={self.iou_weighted}, loss_weight={self.loss_weight}")

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None, avg_factor: float | None = None,
                reduction_override: str | None = None) -> Tensor:
        assert reduction_override in (None, "none", "mean", "sum")
        reduction = reduction_override if reduction_override else self.reduction
        if pred.size(-1) != self.num_classes or pred.shape != target.shape:
            raise UserError(f"{self.weights_file}: the weights file has {self.num_classes} foreground classes, but "
                            f"the head predicts {pred.size(-1)} (targets {tuple(target.shape)}); regenerate the "
                            "weights file from this training set's counts (`ecmctl weights COUNTS`)")
        s = full_precision(pred)
        with autocast_off(s.device.type):
            loss = ecm_varifocal_loss(s, target.to(s.dtype), self.bias.to(s.dtype), self.det_weight.to(s.dtype),
                                      self.alpha, self.gamma, self.iou_weighted)
            if weight is not None:
                weight = weight.to(loss.dtype)
                if weight.dim() == 1:
                    weight = weight.view(-1, 1)
            loss = weight_reduce_loss(loss, weight, reduction, avg_factor)
        return self.loss_weight * loss
