"""ECM losses for mmdet 3: importing this package registers them in mmdet's MODELS registry.

ecm_loss (RoI heads, C+1 sigmoid outputs) · ecm_focal_loss (dense heads) · ecm_varifocal_loss (VarifocalNet).
Putting them into a detector config is ecmctl.engine.placement's job (no torch needed for that).

Use from a config with ``custom_imports=dict(imports=['ecmctl.losses'], allow_failed_imports=False)``
and ``loss_cls=dict(type='ECMLoss', weights_file=...)`` (RoI heads),
``loss_cls=dict(type='ECMFocalLoss', use_sigmoid=True, weights_file=...)`` (dense heads) or
``loss_cls=dict(type='ECMVarifocalLoss', use_sigmoid=True, weights_file=...)`` (VFNetHead).
"""

from ecmctl.losses.ecm_focal_loss import ECMFocalLoss, ecm_focal_loss
from ecmctl.losses.ecm_loss import ECMLoss, attach_class_weights, ecm_roi_loss
from ecmctl.losses.ecm_varifocal_loss import ECMVarifocalLoss, ecm_varifocal_loss

__all__ = ["ECMLoss", "ECMFocalLoss", "ECMVarifocalLoss", "ecm_roi_loss", "ecm_focal_loss", "ecm_varifocal_loss",
           "attach_class_weights"]
