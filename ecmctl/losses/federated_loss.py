"""Federated loss (Zhou et al., CenterNet2's LVIS challenge entry; Detic) for RoI heads, as detectron2 implements
it (detectron2/modeling/roi_heads/fast_rcnn.py, `get_fed_loss_classes` and `sigmoid_cross_entropy_loss`).

The head has C + 1 outputs (detectron2's layout); the loss is sigmoid BCE on the C foreground outputs only
(the background output gets no loss), restricted to a set S of classes drawn each step:

    L = Σ_i Σ_{j ∈ S} BCE(σ(s_ij), y_ij) / N,

S = the labels present among the step's RoIs, plus classes sampled without replacement with probability
∝ image_count_j^0.5 (FED_LOSS_FREQ_WEIGHT_POWER) until S has 50 entries (FED_LOSS_NUM_CLASSES). As in
detectron2, the background label counts as one of the 50 when background RoIs are present, and classes with no
training image are never sampled; with fewer than 50 classes every class that can be drawn is (detectron2
would fail there). Test scores are σ(s_c).

The draws come from this loss's own torch.Generator (the global RNG is not touched), seeded with ``seed``, or
with mmengine's seed (``torch.initial_seed()``, which mmengine's ``randomness.seed`` sets), plus the rank: each
process samples its own classes, as detectron2's per-rank seeds do, and a run is reproducible for a seed.
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


def fed_loss_classes(labels: Tensor, num_sampled: int, num_classes: int, weight: Tensor,
                     generator: torch.Generator) -> Tensor:
    """detectron2's `get_fed_loss_classes`: the unique labels (background C included when present), then classes
    drawn without replacement ∝ `weight` up to `num_sampled` entries (fewer when fewer can be drawn). CPU."""
    unique = torch.unique(labels.detach().cpu())
    if len(unique) >= num_sampled:
        return unique
    prob = torch.zeros(num_classes + 1)
    prob[:num_classes] = weight.detach().float().cpu()
    prob[unique] = 0
    k = min(num_sampled - len(unique), int((prob > 0).sum()))
    if k == 0:
        return unique
    return torch.cat([unique, torch.multinomial(prob, k, replacement=False, generator=generator)])


@MODELS.register_module(force=True)
class FederatedLoss(nn.Module):
    """Federated loss for mmdet RoI heads (Shared2FCBBoxHead, Cascade stages): C + 1 sigmoid outputs, the
    background output unused (detectron2's layout).

    Config: ``loss_cls=dict(type='FederatedLoss', counts_file='counts.json', num_sampled_classes=50,
    freq_weight_power=0.5)``. ``label_weights`` weigh RoIs and ``avg_factor`` divides the sum (mmdet's
    BBoxHead passes the number of sampled RoIs: detectron2's Σ/N). ``last_classes`` holds the last step's set.
    """

    def __init__(self, counts_file: str | os.PathLike, num_sampled_classes: int = 50, freq_weight_power: float = 0.5,
                 seed: int | None = None, loss_weight: float = 1.0, reduction: str = "mean",
                 use_sigmoid: bool = True) -> None:
        super().__init__()
        if not use_sigmoid:
            raise UserError("FederatedLoss is a sigmoid loss: drop use_sigmoid=False from loss_cls")
        if reduction not in ("none", "mean", "sum"):
            raise UserError(f"FederatedLoss: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        if int(num_sampled_classes) < 1:
            raise UserError(f"FederatedLoss: num_sampled_classes must be >= 1, got {num_sampled_classes}")
        image_count, _ = class_image_counts(counts_file, "FederatedLoss")
        self.counts_file = str(counts_file)
        self.num_classes = len(image_count)
        self.num_sampled_classes = int(num_sampled_classes)
        self.freq_weight_power = float(freq_weight_power)
        self.register_buffer("sample_weight", torch.as_tensor(image_count, dtype=torch.float32)
                             ** self.freq_weight_power, persistent=False)
        self.sample_weight[torch.as_tensor(image_count) == 0] = 0.0  # 0 ** 0 = 1: never draw an unseen class
        self.seed = seed
        self.generator: torch.Generator | None = None  # made at the first step (the rank is known then)
        self.last_classes: Tensor | None = None
        self.loss_weight = float(loss_weight)
        self.reduction = reduction
        self.use_sigmoid = True
        self.custom_cls_channels = True
        self.custom_activation = True
        self.custom_accuracy = True

    def extra_repr(self) -> str:
        return (f"counts_file={self.counts_file!r}, num_classes={self.num_classes}, "
                f"num_sampled_classes={self.num_sampled_classes}, freq_weight_power={self.freq_weight_power}, "
                f"seed={self.seed}, loss_weight={self.loss_weight}")

    def _generator(self) -> torch.Generator:
        if self.generator is None:
            from mmengine.dist import get_rank

            base = torch.initial_seed() if self.seed is None else int(self.seed)
            self.generator = torch.Generator().manual_seed((base + get_rank()) % 2**64)
        return self.generator

    def sample_classes(self, labels: Tensor) -> Tensor:
        """This step's classes S (labels 0..C, C = background), on the labels' device."""
        classes = fed_loss_classes(labels, self.num_sampled_classes, self.num_classes, self.sample_weight,
                                   self._generator())
        return classes.to(labels.device)

    def get_cls_channels(self, num_classes: int) -> int:
        """C foreground outputs and a background output (unused by the loss), as detectron2's FastRCNN head."""
        check_classes(num_classes, self.num_classes, self.counts_file, "the RoI head")
        return num_classes + 1

    def get_activation(self, cls_score: Tensor) -> Tensor:
        """Test scores N × (C + 1): σ of every output (detectron2's sigmoid scores; mmdet drops the last)."""
        return full_precision(cls_score).sigmoid()

    @torch.no_grad()
    def get_accuracy(self, cls_score: Tensor, labels: Tensor) -> dict[str, Tensor]:
        return dict(acc_classes=foreground_accuracy(cls_score[..., :-1], labels, self.num_classes))

    def forward(self, cls_score: Tensor, labels: Tensor, label_weights: Tensor | None = None,
                avg_factor: float | None = None, reduction_override: str | None = None) -> Tensor:
        assert reduction_override in (None, "none", "mean", "sum")
        reduction = reduction_override if reduction_override else self.reduction
        check_classes(cls_score.size(-1) - 1, self.num_classes, self.counts_file, "cls_score (minus background)")
        s = full_precision(cls_score)
        c = self.num_classes
        classes = self.sample_classes(labels)
        self.last_classes = classes
        mask = s.new_zeros(c + 1)
        mask[classes] = 1.0
        with autocast_off(s.device.type):
            target = F.one_hot(labels.long(), c + 1)[:, :c].to(s.dtype)
            bce = F.binary_cross_entropy_with_logits(s[:, :c], target, reduction="none")
            loss = (bce * mask[:c]).sum(1)
            if label_weights is not None:
                label_weights = label_weights.to(loss.dtype)
            loss = weight_reduce_loss(loss, weight=label_weights, reduction=reduction, avg_factor=avg_factor)
        return self.loss_weight * loss
