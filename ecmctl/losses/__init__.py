"""ECM losses for mmdet 3: importing this package registers them in mmdet's MODELS registry.

Use from a config with ``custom_imports=dict(imports=['ecmctl.losses'], allow_failed_imports=False)``
and ``loss_cls=dict(type='ECMLoss', weights_file=...)`` (RoI heads) or
``loss_cls=dict(type='ECMFocalLoss', use_sigmoid=True, weights_file=...)`` (dense heads).
"""

from ecmctl.losses.ecm_focal_loss import ECMFocalLoss, ecm_focal_loss
from ecmctl.losses.ecm_loss import ECMLoss, attach_class_weights, ecm_roi_loss

__all__ = ["ECMLoss", "ECMFocalLoss", "ecm_roi_loss", "ecm_focal_loss", "attach_class_weights"]
