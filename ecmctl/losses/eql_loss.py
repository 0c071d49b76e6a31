"""Equalization Loss (Tan et al., CVPR 2020) for RoI heads: sigmoid BCE over C outputs (no background output:
a background RoI has an all-zero target) in which the negative terms of tail classes are dropped for foreground
RoIs,

    L = − Σ_j w_j [y_j log p_j + (1 − y_j) log(1 − p_j)],   w_j = 1 − E(r) T_λ(f_j) (1 − y_j),

E(r) = 1 for a foreground RoI r, 0 for background; T_λ(f) = 1 when f < λ, with f_j the fraction of training
images that contain class j (image count / number of images). The paper's LVIS v0.5 threshold is λ = 1.76e-3;
the official LVIS v1 config (tztztztztz/eqlv2, configs/end2end/eql_r50_8x2_1x.py) uses λ = 1.1e-3. The class
frequencies come from ecmctl's counts file (`counts_file`, the run's inputs/counts.json). Test scores are σ(s_c)
(the official code's sigmoid head: no objectness).
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
from ecmctl.losses.ecm_loss import autocast_off, full_precision
from ecmctl.losses.long_tail import check_classes, class_image_counts, foreground_accuracy


def eql_roi_loss(cls_score: Tensor, labels: Tensor, tail: Tensor) -> Tensor:
    """Per-RoI EQL loss (N) of logits ``cls_score`` (N × C), labels in 0..C (C = background), ``tail`` (C) the
    0/1 indicator T_λ(f_j)."""
    n, c = cls_score.shape
    target = F.one_hot(labels.long(), c + 1)[:, :c].to(cls_score.dtype)
    foreground = (labels < c).to(cls_score.dtype).unsqueeze(1)  # E(r)
    weight = 1.0 - foreground * tail.to(cls_score.dtype).unsqueeze(0) * (1.0 - target)
    return (F.binary_cross_entropy_with_logits(cls_score, target, reduction="none") * weight).sum(1)


@MODELS.register_module(force=True)
class EQLLoss(nn.Module):
    """EQL for mmdet RoI heads (Shared2FCBBoxHead, Cascade stages): C sigmoid outputs.

    Config: ``loss_cls=dict(type='EQLLoss', counts_file='counts.json', lambda_=1.76e-3)``. ``num_images``
    (default: the counts file's ``source.num_images``, all images of the annotation file) is the denominator of
    the frequencies. ``label_weights`` weigh RoIs and ``avg_factor`` divides the sum (mmdet's BBoxHead passes
    the number of sampled RoIs: the official Σ/N).
    """

    def __init__(self, counts_file: str | os.PathLike, lambda_: float = 1.76e-3, num_images: int | None = None,
                 loss_weight: float = 1.0, reduction: str = "mean", use_sigmoid: bool = True) -> None:
        super().__init__()
        if not use_sigmoid:
            raise UserError("EQLLoss is a sigmoid loss: drop use_sigmoid=False from loss_cls")
        if reduction not in ("none", "mean", "sum"):
            raise UserError(f"EQLLoss: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        image_count, total = class_image_counts(counts_file, "EQLLoss")
        num_images = num_images if num_images is not None else total
        if not num_images or num_images <= 0:
            raise UserError(f"{counts_file}: no number of images (source.num_images) to turn image counts into "
                            "frequencies; count the annotation file with `ecmctl count` or pass num_images=N")
        self.counts_file = str(counts_file)
        self.lambda_ = float(lambda_)
        self.num_images = int(num_images)
        self.num_classes = len(image_count)
        self.register_buffer("frequency", torch.as_tensor(image_count / num_images, dtype=torch.float32),
                             persistent=False)
        self.register_buffer("tail", (self.frequency < self.lambda_).float(), persistent=False)
        self.loss_weight = float(loss_weight)
        self.reduction = reduction
        self.use_sigmoid = True
        self.custom_cls_channels = True
        self.custom_activation = True
        self.custom_accuracy = True

    def extra_repr(self) -> str:
        return (f"counts_file={self.counts_file!r}, num_classes={self.num_classes}, lambda_={self.lambda_}, "
                f"tail_classes={int(self.tail.sum())}, loss_weight={self.loss_weight}")

    def get_cls_channels(self, num_classes: int) -> int:
        """C outputs: no background output (a background RoI is all-negative)."""
        check_classes(num_classes, self.num_classes, self.counts_file, "the RoI head")
        return num_classes

    def get_activation(self, cls_score: Tensor) -> Tensor:
        """Test scores N × (C + 1): σ(s_c), then a zero background column (mmdet drops the last column)."""
        scores = full_precision(cls_score).sigmoid()
        return torch.cat([scores, scores.new_zeros(scores.shape[:-1] + (1,))], dim=-1)

    @torch.no_grad()
    def get_accuracy(self, cls_score: Tensor, labels: Tensor) -> dict[str, Tensor]:
        return dict(acc_classes=foreground_accuracy(cls_score, labels, self.num_classes))

    def forward(self, cls_score: Tensor, labels: Tensor, label_weights: Tensor | None = None,
                avg_factor: float | None = None, reduction_override: str | None = None) -> Tensor:
        assert reduction_override in (None, "none", "mean", "sum")
        reduction = reduction_override if reduction_override else self.reduction
        check_classes(cls_score.size(-1), self.num_classes, self.counts_file, "cls_score")
        s = full_precision(cls_score)
        with autocast_off(s.device.type):
            loss = eql_roi_loss(s, labels, self.tail)
            if label_weights is not None:
                label_weights = label_weights.to(loss.dtype)
            loss = weight_reduce_loss(loss, weight=label_weights, reduction=reduction, avg_factor=avg_factor)
        return self.loss_weight * loss
