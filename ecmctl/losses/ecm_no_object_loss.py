"""ECM loss for set-prediction / softmax heads with a no-object class: DETR, MaskFormer, Mask2Former, YOLACT.

These heads train a softmax cross-entropy over C + 1 outputs, the last one "no object" (background), and
down-weight that class by hand: ``bg_cls_weight=0.1`` (DETR) or ``class_weight=[1.0] * C + [0.1]``
(MaskFormer, Mask2Former). The ECM form is the paper's two-stage form (`ECMLoss`, reused here, not
copied): the same C + 1 outputs read as *sigmoid* logits s, the last one background, and per query

    Σ_c m_c · BCE(σ(2 s_c + b_c), y_c),   b = log w⁺ − log w⁻,

with m the detection weights of a weights file *with* a background class (``ecmctl weights COUNTS
--bg-ratio R``, R = unmatched / matched queries). Test score of class c: σ(s_c) · (1 − σ(s_bg)).

The hand-set no-object weight is what ECM replaces: the background class gets its weight m_bg (and its
margin) from the class statistics like every other class, so the config's ``class_weight`` and
``bg_cls_weight`` are accepted (a config keeps working when only the type is swapped) and ignored. The
module exposes ``class_weight = [1.0] * (C + 1)``: heads that normalise by it (Mask2Former's
``avg_factor = class_weight[labels].sum()``) then divide by the number of queries, the mean over
queries that ECMLoss takes over RoIs.

``use_sigmoid`` stays False although the math is sigmoid: the heads read it (from the config dict, or
DETRHead from this module) to allocate C + 1 outputs, with the background last.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from mmdet.registry import MODELS
from torch import Tensor

from ecmctl.core.errors import UserError
from ecmctl.ecm.weights import load_weights
from ecmctl.losses.ecm_loss import ECMLoss


def no_object_scores(cls_score: Tensor) -> Tensor:
    """ECM test scores of C + 1 no-object logits, (..., C + 1): σ(s_c)·(1 − σ(s_bg)) for the C foreground
    columns, then σ(s_bg). The same as ``ECMLoss.get_activation``, for the callers that hold no loss
    module: the Hungarian matcher's classification cost and MaskFormer's fusion head."""
    scores = cls_score.sigmoid()
    bg = scores[..., -1:]
    return torch.cat([scores[..., :-1] * (1.0 - bg), bg], dim=-1)


@MODELS.register_module()
class ECMNoObjectLoss(ECMLoss):
    """ECM loss for heads with a no-object class (DETRHead, MaskFormerHead, Mask2FormerHead, YOLACTHead).

    Config: the head's ``loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, ...)`` with its type
    swapped, ``loss_cls=dict(type='ECMNoObjectLoss', use_sigmoid=False, weights_file='weights.json',
    loss_weight=...)``, and the head's type swapped to its ``ecmctl.engine.ecm_heads`` subclass (for
    the test score and the matching cost). The weights file holds the head's ``num_classes`` classes
    plus background.

    The constructor takes CrossEntropyLoss's arguments: ``class_weight`` and ``bg_cls_weight`` are
    replaced by the detection weights m (kept as ``replaced_class_weight`` / ``replaced_bg_cls_weight``
    for the record); ``ignore_index`` and ``avg_non_ignore`` work as in CrossEntropyLoss;
    ``use_sigmoid=True`` and ``use_mask=True`` are refused. Math, buffers, test activation and the
    SeesawLoss-style head contract (``get_cls_channels``, ``get_activation``, ``get_accuracy``) are
    ECMLoss's.
    """

    def __init__(self, weights_file: str | os.PathLike, use_sigmoid: bool = False, use_mask: bool = False,
                 class_weight: float | Sequence[float] | Tensor | None = None,
                 bg_cls_weight: float | None = None, ignore_index: int | None = None,
                 loss_weight: float = 1.0, reduction: str = "mean", avg_non_ignore: bool = False) -> None:
        if use_sigmoid:
            raise UserError("ECMNoObjectLoss is for heads with a no-object class: keep use_sigmoid=False in "
                            "loss_cls (the head reads it to allocate C + 1 outputs, background last); for a "
                            "sigmoid head without one use ECMFocalLoss")
        if use_mask:
            raise UserError("ECMNoObjectLoss: use_mask=True (mask cross-entropy) is not a classification loss; "
                            "keep CrossEntropyLoss for loss_mask")
        if weights_file is not None and str(weights_file) != "":
            path = os.path.expanduser(str(weights_file))
            cw = load_weights(path)
            if not cw.has_background:
                raise UserError(
                    f"{path}: this weights file has no background class ({len(cw.names)} foreground classes), "
                    "but ECMNoObjectLoss needs one for the no-object output; regenerate it with the ratio of "
                    "unmatched to matched queries, e.g. `ecmctl weights COUNTS --bg-ratio R -o weights.json`")
        super().__init__(weights_file, loss_weight=loss_weight, reduction=reduction)  # use_sigmoid=True there
        self.use_sigmoid = False  # what the heads read: C + 1 outputs with the no-object class last
        num_out = self.num_classes + 1
        if isinstance(class_weight, (Sequence, Tensor)) and len(class_weight) != num_out:
            raise UserError(
                f"{self.weights_file}: loss_cls.class_weight has {len(class_weight)} entries (num_classes + "
                f"no-object), but the weights file has {self.num_classes} classes + background = {num_out}; "
                "regenerate the weights file from this model's training set or fix the head's num_classes")
        self.replaced_class_weight = class_weight
        self.replaced_bg_cls_weight = bg_cls_weight
        self.class_weight = [1.0] * num_out  # the no-object weight is m_bg, inside the loss
        self.ignore_index = -100 if ignore_index is None else int(ignore_index)  # CrossEntropyLoss's default
        self.avg_non_ignore = bool(avg_non_ignore)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", use_sigmoid=False (C + 1 sigmoid outputs, no-object last), "
                f"replaced_class_weight={self.replaced_class_weight!r}")

    def forward(self, cls_score: Tensor, labels: Tensor, label_weights: Tensor | None = None,
                avg_factor: float | None = None, reduction_override: str | None = None,
                ignore_index: int | None = None, **kwargs) -> Tensor:
        """ECMLoss of logits ``cls_score`` (N × (C + 1)) for labels in 0..C (C = no object).

        Labels equal to ``ignore_index`` weigh 0; with ``avg_non_ignore`` and no ``avg_factor``, 'mean'
        divides by the number of the other labels (CrossEntropyLoss's conventions).
        """
        ignore = self.ignore_index if ignore_index is None else ignore_index
        reduction = reduction_override if reduction_override else self.reduction
        valid = labels != ignore
        if not bool(valid.all()):
            labels = labels.masked_fill(~valid, 0)
            keep = valid.to(torch.float32)
            label_weights = keep if label_weights is None else label_weights * keep.to(label_weights.dtype)
        if avg_factor is None and self.avg_non_ignore and reduction == "mean":
            avg_factor = valid.sum().item()
        return super().forward(cls_score, labels, label_weights, avg_factor=avg_factor,
                               reduction_override=reduction_override)
