"""Equalized Focal Loss (Li et al., CVPR 2022) for one-stage (dense) heads with a sigmoid focal loss.

Each class j has its own focusing factor and a weighting factor from the accumulated gradient ratio g_j of its
positives to its negatives:

    γ_j = γ_b + s (1 − g_j),   EFL(p_t) = − Σ_j α_t (γ_j / γ_b) (1 − p_t)^γ_j log(p_t),

γ_b = 2 and α = 0.25 (the focal loss's), scale s = 8, g_j in [0, 1] (clamped), 1 at the start (plain focal
loss). As in the official code (ModelTC/United-Perception, up/tasks/det/plugins/efl/models/losses/efl.py),
g_j = Σ|∂L/∂s_j| over positive / over negative samples of class j, taken from the gradient the loss actually
sends to its logits (there by a backward hook on the classification layer, here a hook on the logits this loss
receives: the same gradient, every FPN level included), accumulated over all steps and summed over ranks.

The step's gradients are added when the next step's loss is called (the all-reduce then runs outside the
backward pass, in the same order on every rank); `sync_statistics()` adds them at once. A step whose gradients
are not finite (a mixed-precision overflow) adds nothing. The official code supports fp32 training only: under
a loss scaler the statistics carry its scale (the ratio of one step is unchanged).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmdet.models.losses.utils import weight_reduce_loss
from mmdet.registry import MODELS
from torch import Tensor

from ecmctl.core.errors import UserError
from ecmctl.losses.ecm_loss import autocast_off, full_precision
from ecmctl.losses.long_tail import all_reduce_sum


def equalized_focal_loss(pred: Tensor, target: Tensor, gamma_j: Tensor, gamma_b: float, alpha: float) -> Tensor:
    """Element-wise (N × C) EFL of logits ``pred`` for a float target (N × C), per-class focusing factors
    ``gamma_j`` (C, constants)."""
    p = torch.sigmoid(pred)
    pt = p + target - 2.0 * p * target  # 1 − p_t
    alpha_t = alpha * target + (1.0 - alpha) * (1.0 - target)
    gamma_j = gamma_j.to(pred.dtype).detach()
    bce = F.binary_cross_entropy_with_logits(pred, target, reduction="none")  # − log p_t
    return bce * alpha_t * pt.pow(gamma_j) * (gamma_j / gamma_b)


@MODELS.register_module(force=True)
class EqualizedFocalLoss(nn.Module):
    """EFL for mmdet dense heads whose loss is a sigmoid FocalLoss (RetinaHead, ATSSHead, FCOSHead, ...).

    Config: ``loss_cls=dict(type='EqualizedFocalLoss', use_sigmoid=True, num_classes=C, gamma=2.0, alpha=0.25,
    scale_factor=8.0)`` (keep ``use_sigmoid=True`` in the dict: dense heads read it there). ``forward`` takes
    FocalLoss's signature (labels (N,) with C = background, or an N × C target; ``weight`` (N,) or (N, C)).
    The statistics are buffers (``pos_grad``, ``neg_grad``, ``pos_neg``): checkpoints carry them.
    """

    def __init__(self, num_classes: int, gamma: float = 2.0, alpha: float = 0.25, scale_factor: float = 8.0,
                 loss_weight: float = 1.0, reduction: str = "mean", use_sigmoid: bool = True) -> None:
        super().__init__()
        if not use_sigmoid:
            raise UserError("EqualizedFocalLoss is a sigmoid focal loss: set use_sigmoid=True in loss_cls")
        if reduction not in ("none", "mean", "sum"):
            raise UserError(f"EqualizedFocalLoss: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        if float(gamma) <= 0:
            raise UserError(f"EqualizedFocalLoss: gamma (γ_b) must be > 0, got {gamma}")
        self.num_classes = int(num_classes)
        self.gamma = float(gamma)
        self.alpha = float(alpha)
        self.scale_factor = float(scale_factor)
        self.loss_weight = float(loss_weight)
        self.reduction = reduction
        self.use_sigmoid = True
        self.register_buffer("pos_grad", torch.zeros(self.num_classes))
        self.register_buffer("neg_grad", torch.zeros(self.num_classes))
        self.register_buffer("pos_neg", torch.ones(self.num_classes))  # g_j: 1 until statistics exist
        self._pending: Tensor | None = None  # this rank's [pos; neg] gradient sums of the last backward

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, gamma={self.gamma}, alpha={self.alpha}, "
                f"scale_factor={self.scale_factor}, loss_weight={self.loss_weight}")

    def focusing_factors(self) -> Tensor:
        """γ_j = γ_b + s (1 − g_j), from the statistics added so far."""
        return self.gamma + self.scale_factor * (1.0 - self.pos_neg)

    @torch.no_grad()
    def sync_statistics(self) -> None:
        """Add the gradient sums collected since the last call, summed over ranks, and update g_j."""
        if self._pending is None:
            return
        stats, self._pending = self._pending, None
        all_reduce_sum(stats)
        self.pos_grad += stats[0]
        self.neg_grad += stats[1]
        ratio = torch.clamp(self.pos_grad / (self.neg_grad + 1e-10), min=0.0, max=1.0)
        self.pos_neg.copy_(torch.where(stats.any(), ratio, self.pos_neg))  # a step skipped on every rank: unchanged

    def _collector(self, target: Tensor):
        def hook(grad: Tensor) -> None:
            g = grad.detach().abs().float().reshape(-1, self.num_classes)
            stats = torch.stack([(g * target).sum(0), (g * (1.0 - target)).sum(0)])
            stats = torch.where(torch.isfinite(stats).all(), stats, torch.zeros_like(stats))
            self._pending = stats if self._pending is None else self._pending + stats
        return hook

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None,
                avg_factor: float | None = None, reduction_override: str | None = None) -> Tensor:
        assert reduction_override in (None, "none", "mean", "sum")
        reduction = reduction_override if reduction_override else self.reduction
        if pred.size(-1) != self.num_classes:
            raise UserError(f"EqualizedFocalLoss was built for {self.num_classes} classes, but the head predicts "
                            f"{pred.size(-1)}" + ("; add use_sigmoid=True to loss_cls in the config"
                                                  if pred.size(-1) == self.num_classes + 1 else ""))
        self.sync_statistics()  # the last step's gradients (every rank calls the loss in the same order)
        s = full_precision(pred).view_as(pred)  # its own node: the gradient it receives is this loss's alone
        with autocast_off(s.device.type):
            if target.dim() == s.dim():  # already one-hot (or soft) N × C
                y = target.to(s.dtype)
            else:  # class indices, num_classes (or anything outside 0..C-1) = background
                classes = torch.arange(self.num_classes, device=s.device)
                y = (target.view(-1, 1) == classes).to(s.dtype)
            loss = equalized_focal_loss(s, y, self.focusing_factors(), self.gamma, self.alpha)
            if weight is not None:
                weight = weight.to(loss.dtype)
                if weight.shape != loss.shape:  # one weight per prior, or per prior and class flattened
                    weight = weight.view(-1, 1) if weight.size(0) == loss.size(0) else weight.view(loss.size(0), -1)
            loss = weight_reduce_loss(loss, weight, reduction, avg_factor)
        if s.requires_grad and torch.is_grad_enabled():
            s.register_hook(self._collector(y.detach().float()))
        return self.loss_weight * loss
