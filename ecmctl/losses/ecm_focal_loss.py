"""ECM focal loss for one-stage (dense) heads: RetinaNet, FCOS, ATSS (supplementary section 6).

Foreground classes only (the weights file has no background: dense heads leave the fg/bg imbalance to
the focal weight). The focal loss is taken of the surrogate score instead of the plain sigmoid:

    p = σ(z),  z = 2 s + log w⁺ − log w⁻,
    loss = m · α_t (1 − p_t)^γ · BCE(p, y).

Heads that pass probabilities instead of logits (TOOD's ``initial_loss_cls``, ``activated=True``) get
s = logit(p) first, with p clamped to [2⁻²⁴, 1 − 2⁻²⁴] (`prob_to_logit`): |s| ≤ 16.64, the largest logit a
float32 probability short of 1 can stand for, so z stays finite at p = 0 or 1 (the gradient there is 0,
as through a saturated sigmoid).
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

# smallest probability (and 1 − largest) that `prob_to_logit` keeps apart from 0 and 1: 2⁻²⁴, the spacing of
# float32 just below 1.0 (1 − 2⁻²⁴ is the largest float32 under 1), so |logit| ≤ log(2²⁴ − 1) ≈ 16.64
PROB_EPS = 2.0**-24


def prob_to_logit(prob: Tensor) -> Tensor:
    """Logit of a probability (``activated=True`` inputs), p clamped to [PROB_EPS, 1 − PROB_EPS]: finite
    for p = 0 or 1 (gradient 0 outside the clamp, as through a saturated sigmoid)."""
    return torch.logit(prob, eps=PROB_EPS)


def ecm_focal_loss(pred: Tensor, target: Tensor, bias: Tensor, det_weight: Tensor, gamma: float = 2.0,
                   alpha: float = 0.25) -> Tensor:
    """Element-wise (N × C) ECM focal loss of logits ``pred`` for a float target ``target`` (N × C)."""
    z = torch.add(bias, pred, alpha=2.0)
    p = torch.sigmoid(z)
    pt = p + target - 2.0 * p * target  # 1 − p_t: (1 − p) y + p (1 − y)
    focal_weight = ((1.0 - alpha) + (2.0 * alpha - 1.0) * target) * pt.pow(gamma)
    bce = F.binary_cross_entropy_with_logits(z, target, reduction="none")
    return bce * focal_weight * det_weight


def check_foreground_channels(loss: nn.Module, found: int) -> None:
    """A dense head's class outputs against a foreground-only weights file (ECMFocalLoss, ECMGHMC): one line
    saying whether use_sigmoid=True is missing or the weights file is another dataset's."""
    if found == loss.num_classes:
        return
    if found == loss.num_classes + 1:
        fix = ("the head has one output per class plus background, i.e. it was built without "
               "use_sigmoid=True: add use_sigmoid=True to loss_cls in the config")
    else:
        fix = ("regenerate the weights file from the counts of this model's training set "
               f"(`ecmctl weights COUNTS`) or set the head's num_classes to {loss.num_classes}")
    raise UserError(f"{loss.weights_file}: the weights file has {loss.num_classes} foreground classes, "
                    f"but the dense head predicts {found} classes; {fix}")


@MODELS.register_module()
class ECMFocalLoss(nn.Module):
    """ECM focal loss for mmdet dense heads (RetinaHead, FCOSHead, ATSSHead); a drop-in for FocalLoss.

    Config: ``loss_cls=dict(type='ECMFocalLoss', use_sigmoid=True, weights_file='weights_fg.json',
    gamma=2.0, alpha=0.25, loss_weight=1.0)``. Keep ``use_sigmoid=True`` in the config dict: dense heads
    read it from the dict (not from this module) to size their classifier to ``num_classes`` outputs.
    The weights file must be made without background (``ecmctl weights COUNTS``, no ``--bg-ratio``).

    Test-time scores: dense heads apply the plain sigmoid σ(s) to the logits. That is intended: the
    margins only shift the training decision boundary (σ(2s + log w⁺ − log w⁻) = ½ exactly where
    σ(2s) = γ⁺, supplementary eq. 16-20); ranking uses the unmodified logits, as in the two-stage case.
    For that reason this loss does *not* set ``custom_cls_channels``/``custom_activation``/
    ``custom_accuracy`` (with them, mmdet's dense heads would call ``get_activation``).

    ``forward`` takes FocalLoss's signature: ``pred`` N × C logits, ``target`` class indices (N,) with C
    meaning background or an N × C (one-hot or soft) target, ``weight`` (N,), (N, C) or (N·C,),
    ``avg_factor``, ``reduction_override``.

    ``activated=True`` (as FocalLoss's; TOOD's ``initial_loss_cls``): ``pred`` holds probabilities; the
    loss takes s = logit(p), clamped to |s| ≤ 16.64 (`prob_to_logit`), and goes on as above.
    """

    def __init__(self, weights_file: str | os.PathLike, gamma: float = 2.0, alpha: float = 0.25,
                 loss_weight: float = 1.0, reduction: str = "mean", use_sigmoid: bool = True,
                 activated: bool = False) -> None:
        super().__init__()
        if not use_sigmoid:
            raise UserError("ECMFocalLoss is a sigmoid focal loss: set use_sigmoid=True in loss_cls")
        if reduction not in ("none", "mean", "sum"):
            raise UserError(f"ECMFocalLoss: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        cw = attach_class_weights(self, weights_file)  # C entries, foreground only
        if cw.has_background:
            raise UserError(
                f"{self.weights_file}: this weights file has a background class ({cw.num_foreground} foreground + "
                "background), but ECMFocalLoss (one-stage heads) counts foreground classes only; "
                "regenerate it without --bg-ratio (`ecmctl weights COUNTS -o weights_fg.json`), or use "
                "ECMLoss for a two-stage RoI head")
        self.use_sigmoid = True
        self.gamma = float(gamma)
        self.alpha = float(alpha)
        self.loss_weight = float(loss_weight)
        self.reduction = reduction
        self.activated = bool(activated)

    def extra_repr(self) -> str:
        return (f"weights_file={self.weights_file!r}, num_classes={self.num_classes}, gamma={self.gamma}, "
                f"alpha={self.alpha}, loss_weight={self.loss_weight}, reduction={self.reduction!r}, "
                f"activated={self.activated}")

    def _check_channels(self, found: int) -> None:
        check_foreground_channels(self, found)

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None,
                avg_factor: float | None = None, reduction_override: str | None = None) -> Tensor:
        assert reduction_override in (None, "none", "mean", "sum")
        reduction = reduction_override if reduction_override else self.reduction
        self._check_channels(pred.size(-1))
        s = full_precision(pred)
        with autocast_off(s.device.type):
            if self.activated:
                s = prob_to_logit(s)
            if target.dim() == s.dim():  # already one-hot (or soft) N × C
                y = target.to(s.dtype)
            else:  # class indices, num_classes (or anything outside 0..C-1) = background
                classes = torch.arange(self.num_classes, device=s.device)
                y = (target.view(-1, 1) == classes).to(s.dtype)
            loss = ecm_focal_loss(s, y, self.bias.to(s.dtype), self.det_weight.to(s.dtype),
                                  self.gamma, self.alpha)
            if weight is not None:
                weight = weight.to(loss.dtype)
                if weight.shape != loss.shape:
                    if weight.size(0) == loss.size(0):
                        weight = weight.view(-1, 1)  # one weight per prior
                    else:  # per prior and class, flattened (e.g. FSAF)
                        assert weight.numel() == loss.numel()
                        weight = weight.view(loss.size(0), -1)
                assert weight.ndim == loss.ndim
            loss = weight_reduce_loss(loss, weight, reduction, avg_factor)
        return self.loss_weight * loss
