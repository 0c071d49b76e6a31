"""ECM sigmoid binary cross-entropy for the classification branch of YOLOX and YOLOv3.

Those heads train their class scores with CrossEntropyLoss(use_sigmoid=True) on (…, C) targets: one-hot
(YOLOv3, possibly label-smoothed) or one-hot × IoU (YOLOX, positives only). The ECM form takes the binary
cross-entropy of the surrogate score, with foreground-only weights (objectness is a separate branch):

    p = σ(z),  z = 2 s + log w⁺ − log w⁻,
    loss = m · BCE(p, y)   element-wise,

then weight, avg_factor, reduction and loss_weight as mmdet's ``binary_cross_entropy`` applies them
(targets below 0 or equal to ``ignore_index`` are masked out, ``avg_non_ignore`` averages over the rest).
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmdet.models.losses.utils import weight_reduce_loss
from mmdet.registry import MODELS
from torch import Tensor

from ecmctl.core.errors import UserError
from ecmctl.losses.ecm_loss import attach_class_weights, autocast_off, full_precision


def ecm_sigmoid_bce_loss(pred: Tensor, target: Tensor, bias: Tensor, det_weight: Tensor) -> Tensor:
    """Element-wise ECM binary cross-entropy of logits ``pred`` (…, C) for targets ``target`` (…, C) in
    [0, 1]: m · BCE(σ(2s + b), y), in the logits form (stable for any z)."""
    z = torch.add(bias, pred, alpha=2.0)
    return F.binary_cross_entropy_with_logits(z, target, reduction="none") * det_weight


@MODELS.register_module()
class ECMSigmoidBCELoss(nn.Module):
    """ECM sigmoid BCE for mmdet's YOLOXHead and YOLOV3Head; a drop-in for CrossEntropyLoss(use_sigmoid=True)
    as their ``loss_cls``.

    Config: ``loss_cls=dict(type='ECMSigmoidBCELoss', use_sigmoid=True, weights_file='weights_fg.json',
    reduction='sum', loss_weight=1.0)``; the weights file has no background (``ecmctl weights COUNTS``).
    Test scores are the head's plain σ(s) (times objectness), as for ECMFocalLoss.

    ``forward(cls_score, label, weight=None, avg_factor=None, reduction_override=None, ignore_index=None)``:
    ``cls_score`` (…, C) logits and ``label`` of the same shape (one-hot or soft). ``weight`` broadcasts
    against the loss as in mmdet ((B, N, 1) in YOLOv3); a weight of ``cls_score``'s leading shape ((N,) for
    (N, C)) is one weight per prediction. Class-index labels, ``class_weight`` (mmdet's BCE applies it as
    ``pos_weight``: ECM's m and margins take its place) and ``use_mask`` are refused.
    """

    def __init__(self, weights_file: str | os.PathLike, use_sigmoid: bool = True, use_mask: bool = False,
                 reduction: str = "mean", class_weight: list[float] | None = None, ignore_index: int | None = None,
                 loss_weight: float = 1.0, avg_non_ignore: bool = False) -> None:
        super().__init__()
        if not use_sigmoid or use_mask:
            raise UserError("ECMSigmoidBCELoss replaces CrossEntropyLoss(use_sigmoid=True) only: set "
                            "use_sigmoid=True and drop use_mask in loss_cls")
        if class_weight is not None:
            raise UserError("ECMSigmoidBCELoss: drop class_weight from loss_cls (the ECM weights file's margins "
                            "and detection weights replace per-class weights)")
        if reduction not in ("none", "mean", "sum"):
            raise UserError(f"ECMSigmoidBCELoss: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        cw = attach_class_weights(self, weights_file)
        if cw.has_background:
            raise UserError(f"{self.weights_file}: this weights file has a background class, but "
                            "ECMSigmoidBCELoss (YOLOX, YOLOv3 class branch) counts foreground classes only; "
                            "regenerate it without --bg-ratio (`ecmctl weights COUNTS -o weights_fg.json`)")
        self.use_sigmoid = True
        self.use_mask = False
        self.class_weight = None
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.loss_weight = float(loss_weight)
        self.avg_non_ignore = bool(avg_non_ignore)

    def extra_repr(self) -> str:
        return (f"weights_file={self.weights_file!r}, num_classes={self.num_classes}, loss_weight={self.loss_weight}, "
                f"reduction={self.reduction!r}, ignore_index={self.ignore_index}, avg_non_ignore={self.avg_non_ignore}")

    def forward(self, cls_score: Tensor, label: Tensor, weight: Tensor | None = None, avg_factor: float | None = None,
                reduction_override: str | None = None, ignore_index: int | None = None) -> Tensor:
        assert reduction_override in (None, "none", "mean", "sum")
        reduction = reduction_override if reduction_override else self.reduction
        if cls_score.dim() < 2 or cls_score.size(-1) != self.num_classes:
            raise UserError(f"{self.weights_file}: the weights file has {self.num_classes} foreground classes, but "
                            f"the head predicts {tuple(cls_score.shape)} (classes last); regenerate the weights file "
                            f"from this training set's counts (`ecmctl weights COUNTS`) or set the head's "
                            f"num_classes to {self.num_classes}")
        if label.shape != cls_score.shape:
            raise UserError(f"ECMSigmoidBCELoss: labels must be one-hot or soft targets of the prediction's shape "
                            f"{tuple(cls_score.shape)} (as YOLOX and YOLOv3 pass), got {tuple(label.shape)}")
        ignore_index = self.ignore_index if ignore_index is None else ignore_index
        ignore_index = -100 if ignore_index is None else ignore_index  # mmdet's (and F.cross_entropy's) default
        s = full_precision(cls_score)
        with autocast_off(s.device.type):
            valid_mask = ((label >= 0) & (label != ignore_index)).to(s.dtype)
            loss = ecm_sigmoid_bce_loss(s, label.to(s.dtype), self.bias.to(s.dtype), self.det_weight.to(s.dtype))
            if weight is None:
                weight = valid_mask
            else:
                weight = weight.to(s.dtype)
                if weight.dim() == loss.dim() - 1 and weight.shape == loss.shape[:-1]:
                    weight = weight.unsqueeze(-1)  # one weight per prediction
                weight = weight * valid_mask
            if avg_factor is None and self.avg_non_ignore and reduction == "mean":
                avg_factor = valid_mask.sum().item()
            loss = weight_reduce_loss(loss, weight, reduction, avg_factor)
        return self.loss_weight * loss
