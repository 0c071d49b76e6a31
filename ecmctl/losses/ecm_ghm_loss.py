"""ECM gradient-harmonised classification loss for RetinaNet-GHM (a drop-in for mmdet's GHMC).

GHM-C (Li et al., AAAI 2019) weighs each (prior, class) element by the inverse density of its gradient
norm g = |p − y| over ``bins`` equal bins of [0, 1], with a running (``momentum``) count per bin. The ECM
form takes everything of the surrogate score, with the foreground-only weights of ECMFocalLoss (dense
heads have no background class):

    p = σ(z),  z = 2 s + log w⁺ − log w⁻,
    g = |p − y|,  w_GHM = tot / (n · acc[bin(g)]),
    loss = m · w_GHM · BCE(p, y),  reduced as GHMC: Σ / tot  (tot = valid elements, label_weight > 0).

Implementation: ECMGHMC *is* mmdet's GHMC (subclass: same ``edges``/``acc_sum`` buffers and state dict
keys, the running bin counts updated by mmdet's own code), called on the surrogate logits z with reduction
'none' and multiplied by m before the reduction. The math runs in float32 (float64 when given).
"""

from __future__ import annotations

import os

import torch
from mmdet.models.losses.ghm_loss import GHMC
from mmdet.models.losses.utils import weight_reduce_loss
from mmdet.registry import MODELS
from torch import Tensor

from ecmctl.core.errors import UserError
from ecmctl.losses.ecm_focal_loss import check_foreground_channels
from ecmctl.losses.ecm_loss import attach_class_weights, autocast_off, full_precision


@MODELS.register_module()
class ECMGHMC(GHMC):
    """ECM form of mmdet's GHMC for RetinaHead-GHM (``configs/ghm/``); a drop-in for GHMC.

    Config: ``loss_cls=dict(type='ECMGHMC', bins=30, momentum=0.75, use_sigmoid=True, loss_weight=1.0,
    weights_file='weights_fg.json')``: GHMC's arguments plus ``weights_file``, made without background
    (``ecmctl weights COUNTS``, no ``--bg-ratio``). Keep ``use_sigmoid=True`` in the config dict: the head
    reads it from the dict to size its classifier to ``num_classes`` outputs.

    ``forward`` takes GHMC's signature: ``pred`` N × C logits, ``target`` class indices (N,) (C or any
    value outside 0..C-1 = background, expanded by mmdet's ``_expand_onehot_labels``) or an N × C binary
    target, ``label_weight`` (N,) or N × C (only its sign is used: > 0 is valid), ``reduction_override``;
    other keyword arguments (AnchorHead passes ``avg_factor``) are ignored, as by GHMC, which normalises by
    the number of valid elements instead. Reduction 'sum' returns the plain sum (mmdet's GHMC refuses it).

    Test-time scores are the head's plain σ(s), as for ECMFocalLoss: the margins only move the training
    decision boundary.
    """

    def __init__(self, weights_file: str | os.PathLike, bins: int = 10, momentum: float = 0,
                 use_sigmoid: bool = True, loss_weight: float = 1.0, reduction: str = "mean") -> None:
        if not use_sigmoid:
            raise UserError("ECMGHMC is a sigmoid loss (as GHMC): set use_sigmoid=True in loss_cls")
        if reduction not in ("none", "mean", "sum"):
            raise UserError(f"ECMGHMC: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        super().__init__(bins=bins, momentum=momentum, use_sigmoid=True, loss_weight=loss_weight,
                         reduction=reduction)
        cw = attach_class_weights(self, weights_file)  # C entries, foreground only
        if cw.has_background:
            raise UserError(
                f"{self.weights_file}: this weights file has a background class ({cw.num_foreground} foreground + "
                "background), but ECMGHMC (RetinaNet-GHM) counts foreground classes only; regenerate it "
                "without --bg-ratio (`ecmctl weights COUNTS -o weights_fg.json`)")

    def extra_repr(self) -> str:
        return (f"weights_file={self.weights_file!r}, num_classes={self.num_classes}, bins={self.bins}, "
                f"momentum={self.momentum}, loss_weight={self.loss_weight}, reduction={self.reduction!r}")

    def _check_channels(self, found: int) -> None:
        check_foreground_channels(self, found)

    def forward(self, pred: Tensor, target: Tensor, label_weight: Tensor, reduction_override: str | None = None,
                **kwargs) -> Tensor:
        assert reduction_override in (None, "none", "mean", "sum")
        reduction = reduction_override if reduction_override else self.reduction
        self._check_channels(pred.size(-1))
        s = full_precision(pred)
        with autocast_off(s.device.type):
            z = torch.add(self.bias.to(s.dtype), s, alpha=2.0)
            # mmdet's GHMC on the surrogate: g = |σ(z) − y|, bin counts (and acc_sum), weights, BCE(z, y);
            # element-wise, times loss_weight
            loss = super().forward(z, target, label_weight, reduction_override="none")
            loss = loss * self.det_weight.to(loss.dtype)
            if reduction == "mean":  # GHMC's: Σ / tot, tot = number of valid elements (at least 1)
                valid = int((label_weight > 0).sum().item())
                if pred.dim() != target.dim():  # per-prior label_weight, expanded over the C classes
                    valid *= pred.size(-1)
                tot = max(float(valid), 1.0)
                loss = weight_reduce_loss(loss, None, "mean", avg_factor=tot)
            elif reduction == "sum":
                loss = loss.sum()
        return loss
