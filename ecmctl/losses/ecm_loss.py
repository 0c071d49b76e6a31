"""ECM loss for RoI (two-stage) classification heads: Effective Class-Margins, Cho & Krähenbühl, ECCV 2022.

The head has C + 1 sigmoid outputs, the last one background. With s the logits, labels in 0..C
(C = background) and y their one-hot over C + 1 columns, training uses the surrogate score of
supplementary eq. 12,

    p = σ(z),  z = 2 s + log w⁺ − log w⁻,

and the per-RoI loss  Σ_c m_c · BCE(p_c, y_c)  with the detection weight m. At test time the score of
class c is σ(s_c) · (1 − σ(s_bg)) (no margins: they only move the training decision boundary).

Implementation: BCE(σ(z), y) = softplus(z) − y·z (the logits form of binary cross-entropy), so the
per-RoI loss is  softplus(z) · m − m_l z_l  with l the RoI's label. No one-hot target is built; the
backward pass is the closed form ∂/∂s = 2 m (σ(z) − y) (supplementary eq. 22-23), written in place into
one buffer. Both run in float32 (float64 when given), never in fp16/bf16.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmdet.models.losses.accuracy import accuracy
from mmdet.models.losses.utils import weight_reduce_loss
from mmdet.registry import MODELS
from torch import Tensor
from torch.autograd.function import once_differentiable

from ecmctl.core.errors import UserError
from ecmctl.ecm.weights import ClassWeights, load_weights

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def attach_class_weights(loss: nn.Module, weights_file: str | os.PathLike) -> ClassWeights:
    """Read a weights file once into `loss`: its path, class count and names, and the float32 buffers
    ``bias`` = log w⁺ − log w⁻ and ``det_weight`` = m (non-persistent: always from the file)."""
    if weights_file is None or str(weights_file) == "":
        raise UserError("the ECM loss needs weights_file=...: make one with `ecmctl weights COUNTS "
                        "[--bg-ratio R] -o weights.json` and pass its path in loss_cls")
    path = os.path.expanduser(str(weights_file))
    cw = load_weights(path)
    bias = torch.as_tensor(cw.log_w_pos - cw.log_w_neg, dtype=torch.float32)
    det_weight = torch.as_tensor(cw.det_weight, dtype=torch.float32)
    if not (torch.isfinite(bias).all() and torch.isfinite(det_weight).all()):
        raise UserError(f"{path}: log_w_pos, log_w_neg or det_weight holds a non-finite value; "
                        "regenerate it with `ecmctl weights`")
    loss.weights_file = path
    loss.num_classes = cw.num_foreground
    loss.class_names = list(cw.names)
    loss.register_buffer("bias", bias, persistent=False)
    loss.register_buffer("det_weight", det_weight, persistent=False)
    return cw


def full_precision(x: Tensor) -> Tensor:
    """fp16/bf16 -> float32 (the loss math never runs in half precision); float32/64 unchanged."""
    return x.float() if x.dtype in _LOW_PRECISION else x


def autocast_off(device_type: str):
    """A context that disables autocast on this device type (a no-op where autocast does not exist)."""
    try:
        return torch.autocast(device_type=device_type, enabled=False)
    except (RuntimeError, ValueError):
        return contextlib.nullcontext()


class _ECMRoILoss(torch.autograd.Function):
    """Per-RoI ECM loss Σ_c m_c BCE(σ(2 s_c + b_c), y_c), y = one-hot(labels); gradient w.r.t. s only."""

    @staticmethod
    def forward(ctx, s: Tensor, labels: Tensor, bias: Tensor, det_weight: Tensor) -> Tensor:
        z = torch.add(bias, s, alpha=2.0)  # 2 s + log w⁺ − log w⁻, one N × (C+1) buffer
        idx = labels.view(-1, 1)
        z_label = z.gather(1, idx).squeeze(1)
        m_label = det_weight.index_select(0, labels)
        # Σ_c m_c [softplus(z_c) − y_c z_c]: softplus is computed stably (linear above z = 20)
        loss = F.softplus(z).mv(det_weight).sub_(m_label * z_label)
        ctx.save_for_backward(z, idx, det_weight, m_label)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: Tensor):
        z, idx, det_weight, m_label = ctx.saved_tensors
        grad = torch.sigmoid(z)  # the only N × (C+1) allocation of the backward pass
        grad.mul_(det_weight)  # m_c σ(z_c)
        grad.scatter_add_(1, idx, m_label.neg().unsqueeze(1))  # − m_l at the label column
        grad.mul_(grad_loss.mul(2.0).unsqueeze(1))  # chain rule, ∂z/∂s = 2
        return grad, None, None, None


def ecm_roi_loss(cls_score: Tensor, labels: Tensor, bias: Tensor, det_weight: Tensor) -> Tensor:
    """Per-RoI ECM loss (shape N) in float32/64; differentiable w.r.t. `cls_score`."""
    s = full_precision(cls_score)
    with autocast_off(s.device.type):
        return _ECMRoILoss.apply(s, labels.long(), bias.to(s.dtype), det_weight.to(s.dtype))


@MODELS.register_module()
class ECMLoss(nn.Module):
    """ECM loss for mmdet RoI heads (BBoxHead, Shared2FCBBoxHead, Cascade stages): C + 1 sigmoid outputs.

    Config: ``loss_cls=dict(type='ECMLoss', weights_file='weights.json', loss_weight=1.0)`` with
    ``custom_imports=dict(imports=['ecmctl.losses'], allow_failed_imports=False)``. The weights file
    (``ecmctl weights COUNTS --bg-ratio R``) must hold the head's ``num_classes`` classes plus background.

    The head contract (same attributes as mmdet's SeesawLoss):

    - ``custom_cls_channels``: ``get_cls_channels(num_classes)`` returns ``num_classes + 1`` (background
      last) and refuses a weights file with another class count.
    - ``custom_activation``: ``get_activation(cls_score)`` returns N × (C + 1) scores, the C foreground
      columns σ(s_c)·(1 − σ(s_bg)) and the last column σ(s_bg); mmdet drops that last column
      (multiclass_nms, Cascade refinement).
    - ``custom_accuracy``: ``get_accuracy`` returns ``acc_objectness`` (fg/bg decision σ(s_bg) < ½) and
      ``acc_classes`` (argmax of the foreground logits on foreground RoIs).

    The per-class constants (bias = log w⁺ − log w⁻ and m) are non-persistent buffers: they always come
    from the weights file, and checkpoints stay loadable by heads with another loss.
    """

    def __init__(self, weights_file: str | os.PathLike, loss_weight: float = 1.0, reduction: str = "mean",
                 use_sigmoid: bool = True) -> None:
        super().__init__()
        if reduction not in ("none", "mean", "sum"):
            raise UserError(f"ECMLoss: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        if not use_sigmoid:
            raise UserError("ECMLoss is a sigmoid loss: drop use_sigmoid=False from loss_cls")
        cw = attach_class_weights(self, weights_file)  # C + 1 entries, background last
        if not cw.has_background:
            raise UserError(
                f"{self.weights_file}: this weights file has no background class "
                f"({len(cw.names)} foreground classes), but ECMLoss (RoI heads) needs one; regenerate it "
                "with a background ratio, e.g. "
                "`ecmctl weights COUNTS --bg-ratio 6.3313 -o weights.json`, or use ECMFocalLoss for a "
                "one-stage (dense) head")
        self.loss_weight = float(loss_weight)
        self.reduction = reduction
        self.use_sigmoid = True
        # the attributes mmdet's BBoxHead / CascadeRoIHead look for (as for SeesawLoss)
        self.custom_cls_channels = True
        self.custom_activation = True
        self.custom_accuracy = True

    def extra_repr(self) -> str:
        return (f"weights_file={self.weights_file!r}, num_classes={self.num_classes}, "
                f"loss_weight={self.loss_weight}, reduction={self.reduction!r}")

    def _check_channels(self, found: int, what: str) -> None:
        expected = self.num_classes + 1
        if found != expected:
            raise UserError(
                f"{self.weights_file}: the weights file has {self.num_classes} foreground classes + "
                f"background = {expected} outputs, but {what} has {found}; regenerate the weights file "
                f"from the counts of this model's training set (`ecmctl weights COUNTS --bg-ratio R`) or "
                f"set the head's num_classes to {self.num_classes}")

    def get_cls_channels(self, num_classes: int) -> int:
        """Classifier outputs for ``num_classes`` foreground classes: ``num_classes + 1``."""
        self._check_channels(num_classes + 1, f"the RoI head (num_classes={num_classes}, + background)")
        return num_classes + 1

    def get_activation(self, cls_score: Tensor) -> Tensor:
        """Test scores, N × (C + 1): σ(s_c)·(1 − σ(s_bg)) for c < C, then σ(s_bg) (background, last)."""
        scores = cls_score.sigmoid()
        bg = scores[..., -1:]
        return torch.cat([scores[..., :-1] * (1.0 - bg), bg], dim=-1)

    @torch.no_grad()
    def get_accuracy(self, cls_score: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """acc_objectness: fg/bg accuracy of s_bg < 0; acc_classes: top-1 of s_fg on foreground RoIs."""
        is_bg = labels == self.num_classes
        bg_logit = cls_score[..., -1:]
        objectness = torch.cat([torch.zeros_like(bg_logit), bg_logit], dim=-1)  # argmax 1 <=> s_bg > 0
        pos = ~is_bg
        return dict(acc_objectness=accuracy(objectness, is_bg.long()),
                    acc_classes=accuracy(cls_score[..., :-1][pos], labels[pos]))

    def forward(self, cls_score: Tensor, labels: Tensor, label_weights: Tensor | None = None,
                avg_factor: float | None = None, reduction_override: str | None = None) -> Tensor:
        """ECM loss of logits ``cls_score`` (N × (C + 1)) for integer ``labels`` in 0..C (C = background).

        ``label_weights`` (N) weighs each RoI, ``avg_factor`` divides the sum for reduction 'mean'
        (mmdet's weight_reduce_loss); with neither, 'mean' is the mean over RoIs.
        """
        assert reduction_override in (None, "none", "mean", "sum")
        reduction = reduction_override if reduction_override else self.reduction
        self._check_channels(cls_score.size(-1), "cls_score")
        if labels.dim() != 1 or labels.size(0) != cls_score.size(0):
            raise ValueError(f"ECMLoss: labels must be class indices of shape ({cls_score.size(0)},), "
                             f"got {tuple(labels.shape)}")
        loss = ecm_roi_loss(cls_score, labels, self.bias, self.det_weight)
        if label_weights is not None:
            label_weights = label_weights.to(loss.dtype)
        loss = weight_reduce_loss(loss, weight=label_weights, reduction=reduction, avg_factor=avg_factor)
        return self.loss_weight * loss
