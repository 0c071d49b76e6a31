"""ECM losses for mmdet 3: importing this package registers them in mmdet's MODELS registry.

ecm_loss (RoI heads, C+1 sigmoid outputs) · ecm_focal_loss (dense heads) · ecm_varifocal_loss (VarifocalNet).
ecm_quality_focal_loss (QualityFocalLoss heads: GFL, TOOD, RTMDet(-Ins), LD, DDQ aux, DETR/DINO with QFL).
ecm_bce_loss (CrossEntropyLoss(use_sigmoid=True) class branch: YOLOX, YOLOv3).
ecm_ghm_loss (GHMC: RetinaNet-GHM).
ecm_gaussian_focal_loss (GaussianFocalLoss heatmaps: CornerNet, CentripetalNet, CenterNet(-update)).
ecm_no_object_loss (softmax heads with a no-object class: DETR, MaskFormer, Mask2Former, YOLACT).
The long-tail losses ECM is compared against: eqlv2_loss (SyncEQLv2Loss), eql_loss (EQLLoss), federated_loss
(FederatedLoss) for RoI heads; equalized_focal_loss (EqualizedFocalLoss) for sigmoid focal-loss dense heads.
Putting them into a detector config is ecmctl.engine.placement's job (no torch needed for that).

Use from a config with ``custom_imports=dict(imports=['ecmctl.losses'], allow_failed_imports=False)``
and ``loss_cls=dict(type='ECMLoss', weights_file=...)`` (RoI heads),
``loss_cls=dict(type='ECMFocalLoss', use_sigmoid=True, weights_file=...)`` (dense heads) or
``loss_cls=dict(type='ECMVarifocalLoss', use_sigmoid=True, weights_file=...)`` (VFNetHead).
"""

from ecmctl.losses.ecm_bce_loss import ECMSigmoidBCELoss, ecm_sigmoid_bce_loss
from ecmctl.losses.ecm_focal_loss import ECMFocalLoss, ecm_focal_loss
from ecmctl.losses.ecm_gaussian_focal_loss import ECMGaussianFocalLoss, ecm_gaussian_focal_loss
from ecmctl.losses.ecm_ghm_loss import ECMGHMC
from ecmctl.losses.ecm_loss import ECMLoss, attach_class_weights, ecm_roi_loss
from ecmctl.losses.ecm_no_object_loss import ECMNoObjectLoss, no_object_scores
from ecmctl.losses.ecm_quality_focal_loss import ECMQualityFocalLoss, ecm_quality_focal_loss
from ecmctl.losses.ecm_varifocal_loss import ECMVarifocalLoss, ecm_varifocal_loss
from ecmctl.losses.eql_loss import EQLLoss, eql_roi_loss
from ecmctl.losses.eqlv2_loss import SyncEQLv2Loss
from ecmctl.losses.equalized_focal_loss import EqualizedFocalLoss, equalized_focal_loss
from ecmctl.losses.federated_loss import FederatedLoss, fed_loss_classes

__all__ = ["ECMLoss", "ECMFocalLoss", "ECMVarifocalLoss", "ecm_roi_loss", "ecm_focal_loss", "ecm_varifocal_loss",
           "attach_class_weights"]
__all__ += ["ECMQualityFocalLoss", "ECMSigmoidBCELoss", "ecm_quality_focal_loss", "ecm_sigmoid_bce_loss"]
__all__ += ["ECMGHMC", "ECMGaussianFocalLoss", "ecm_gaussian_focal_loss"]
__all__ += ["ECMNoObjectLoss", "no_object_scores"]
__all__ += ["SyncEQLv2Loss", "EQLLoss", "FederatedLoss", "EqualizedFocalLoss", "eql_roi_loss", "fed_loss_classes",
            "equalized_focal_loss"]
