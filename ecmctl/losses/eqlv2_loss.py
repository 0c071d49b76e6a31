"""Equalization Loss v2 (Tan et al., CVPR 2021) for RoI heads: mmdet's EQLV2Loss, with its gradient statistics
summed over every rank of a distributed job and mmdet 3's RoI-head contract.

The head has C + 1 sigmoid outputs, the last one the objectness ("background") task. With the accumulated
gradient ratio g_j = Σ|∂L/∂s_j| over positives / Σ over negatives of class j (collected after every step from
the reweighted gradients |σ(s) − y| · weight), each class's positive and negative BCE terms are weighted

    r_j = f(g_j) = 1 / (1 + exp(−γ (g_j − μ))),   q_j = 1 + α (1 − r_j)

(the background column keeps weight 1), and the loss is Σ_ij w_ij BCE(σ(s_ij), y_ij) / N over the N RoIs.
Defaults are the official code's (tztztztztz/eqlv2, mmdet/models/losses/eqlv2.py): γ = 12, μ = 0.8, α = 4;
the test score is σ(s_c)·(1 − σ(s_bg)).

mmdet's EQLV2Loss all-reduces its statistics only with ``use_distributed=True`` (default False): a multi-GPU
run would weight each rank by its own statistics. Here ``use_distributed=None`` (default) sums them whenever
torch.distributed runs more than one process, as the official code always does. mmdet 3's BBoxHead sizes and
scores its classifier from the loss only through ``custom_cls_channels``/``custom_activation`` (mmdet's
EQLV2Loss has the mmdet 2 ``get_channel_num``): without them the head would score with softmax.
"""

from __future__ import annotations

import torch
from mmdet.models.losses.eqlv2_loss import EQLV2Loss
from mmdet.registry import MODELS
from torch import Tensor

from ecmctl.core.errors import UserError
from ecmctl.losses.ecm_loss import full_precision
from ecmctl.losses.long_tail import foreground_accuracy, world_size


@MODELS.register_module(force=True)
class SyncEQLv2Loss(EQLV2Loss):
    """EQLv2 for mmdet RoI heads (Shared2FCBBoxHead, Cascade stages): C + 1 sigmoid outputs.

    Config: ``loss_cls=dict(type='SyncEQLv2Loss', num_classes=C, gamma=12, mu=0.8, alpha=4.0)``. The
    statistics are buffers (``pos_grad``, ``neg_grad``, ``pos_neg``, as mmdet's): checkpoints carry them, so a
    resumed run continues with the statistics it had. Like the official code and mmdet's, the loss is the sum
    over RoIs and classes divided by the number of RoIs: ``label_weights`` and ``avg_factor`` are not used.
    """

    def __init__(self, num_classes: int = 1203, gamma: float = 12.0, mu: float = 0.8, alpha: float = 4.0,
                 loss_weight: float = 1.0, reduction: str = "mean", use_sigmoid: bool = True,
                 test_with_obj: bool = True, use_distributed: bool | None = None, vis_grad: bool = False,
                 class_weight=None) -> None:
        if not use_sigmoid:
            raise UserError("SyncEQLv2Loss is a sigmoid loss: drop use_sigmoid=False from loss_cls")
        super().__init__(use_sigmoid=True, reduction=reduction, class_weight=class_weight, loss_weight=loss_weight,
                         num_classes=int(num_classes), use_distributed=bool(use_distributed), mu=float(mu),
                         alpha=float(alpha), gamma=gamma, vis_grad=vis_grad, test_with_obj=test_with_obj)
        self.sync = use_distributed  # None: sum over ranks whenever there are several
        # the attributes mmdet 3's BBoxHead / CascadeRoIHead look for (as for SeesawLoss)
        self.custom_cls_channels = True
        self.custom_activation = True
        self.custom_accuracy = True

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, gamma={self.gamma}, mu={self.mu}, alpha={self.alpha}, "
                f"loss_weight={self.loss_weight}, test_with_obj={self.test_with_obj}")

    def _check_channels(self, found: int, what: str) -> None:
        if found != self.num_classes + 1:
            raise UserError(f"SyncEQLv2Loss was built for {self.num_classes} classes + objectness = "
                            f"{self.num_classes + 1} outputs, but {what} has {found}; set loss_cls.num_classes to "
                            "the head's num_classes")

    def get_cls_channels(self, num_classes: int) -> int:
        """C foreground outputs and the objectness output (last)."""
        self._check_channels(num_classes + 1, f"the RoI head (num_classes={num_classes}, + objectness)")
        return num_classes + 1

    def get_activation(self, cls_score: Tensor) -> Tensor:
        """Test scores, N × (C + 1): σ(s_c)·(1 − σ(s_bg)) (σ(s_c) with test_with_obj=False), then σ(s_bg)."""
        return super().get_activation(full_precision(cls_score))

    @torch.no_grad()
    def get_accuracy(self, cls_score: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """acc_objectness: fg/bg accuracy of s_bg < 0; acc_classes: top-1 of the foreground logits on fg RoIs."""
        is_bg = labels == self.num_classes
        objectness = (cls_score[..., -1] > 0) == is_bg
        return dict(acc_objectness=100.0 * objectness.float().mean().reshape(1),
                    acc_classes=foreground_accuracy(cls_score[..., :-1], labels, self.num_classes))

    def forward(self, cls_score: Tensor, label: Tensor, weight: Tensor | None = None,
                avg_factor: float | None = None, reduction_override: str | None = None) -> Tensor:
        """EQLv2 loss of logits ``cls_score`` (N × (C + 1)) for labels in 0..C (C = background); then the
        step's gradient statistics are added (summed over ranks)."""
        self._check_channels(cls_score.size(-1), "cls_score")
        loss = super().forward(full_precision(cls_score), label.long())
        self.pred_class_logits = self.gt_classes = None  # mmdet keeps them; they would hold the step's graph
        return loss

    def collect_grad(self, pred: Tensor, target: Tensor, weight: Tensor) -> None:
        self.use_distributed = world_size() > 1 if self.sync is None else bool(self.sync)
        super().collect_grad(pred, target, weight)
