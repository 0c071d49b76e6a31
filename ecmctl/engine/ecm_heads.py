"""ECM test scores and matching costs for mmdet's heads with a no-object class (ECMNoObjectLoss).

With ``ECMNoObjectLoss`` the C + 1 outputs of DETR, MaskFormer, Mask2Former and YOLACT are sigmoid logits
with the no-object class last, and the score of class c is σ(s_c)·(1 − σ(s_bg)) (ECM's two-stage test
score), not the softmax these heads apply. The registered subclasses below change only that:

- ``ECMDETRHead``: test score (one detection per query and class, top ``max_per_img`` of all pairs, as
  mmdet's DETRHead does for sigmoid classifiers), and the classification ``avg_factor`` counts every
  query once (the no-object weight is m_bg inside the loss, not ``bg_cls_weight``).
- ``ECMMaskFormerHead`` / ``ECMMask2FormerHead``: ``class_weight`` taken from the loss module (all ones),
  so ``avg_factor = class_weight[labels].sum()`` is the number of queries.
- ``ECMMaskFormerFusionHead``: panoptic and instance post-processing score with ECM.
- ``ECMYOLACTHead``: test score (training, OHEM included, already goes through ``loss_cls``).
- ``ECMClassificationCost``: the Hungarian matcher's cost −score·weight with the ECM score, so training
  assignment ranks queries as the test score does.

Each head checks that its ``loss_cls`` is an ``ECMNoObjectLoss`` whose weights file has the head's
classes. ecmctl's placement swaps the types with the two dicts below; SSD is refused (``SSD_REFUSAL``).
Importing this module imports torch and mmdet.
"""

from __future__ import annotations

import copy

import torch
from mmdet.evaluation.functional import INSTANCE_OFFSET
from mmdet.models.dense_heads import DDQDETRHead, DETRHead, Mask2FormerHead, MaskFormerHead, YOLACTHead
from mmdet.models.layers import multiclass_nms
from mmdet.models.roi_heads.bbox_heads import SABLHead
from mmdet.models.seg_heads.panoptic_fusion_heads import MaskFormerFusionHead
from mmdet.models.task_modules.assigners import ClassificationCost
from mmdet.registry import MODELS, TASK_UTILS
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy
from mmdet.structures.mask import mask2bbox
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData, PixelData
from torch import Tensor

from ecmctl.core.errors import UserError

# the type maps live with the placement (no torch there): head type -> ECM subclass, match cost -> ECM cost
from ecmctl.engine.placement import ECM_COST_TYPES, ECM_HEAD_TYPES, HAND_WRITTEN  # noqa: F401
from ecmctl.losses.ecm_no_object_loss import ECMNoObjectLoss, no_object_scores

NO_OBJECT_LOSS_TYPE = "ECMNoObjectLoss"
SSD_REFUSAL = HAND_WRITTEN["SSDHead"]
ECM_REFUSED_HEADS = {"SSDHead": SSD_REFUSAL}


def _check_no_object_loss(head) -> None:
    """The head's loss_cls is ECMNoObjectLoss and its weights file has the head's num_classes (+ background)."""
    if not isinstance(head.loss_cls, ECMNoObjectLoss):
        raise UserError(f"{type(head).__name__} scores with ECM's σ(s_c)·(1 − σ(s_bg)) and needs "
                        f"loss_cls=dict(type='{NO_OBJECT_LOSS_TYPE}', weights_file=...), got "
                        f"{type(head.loss_cls).__name__}")
    head.loss_cls.get_cls_channels(head.num_classes)  # refuses a weights file with another class count


@MODELS.register_module()
class ECMDETRHead(DETRHead):
    """DETRHead with ECMNoObjectLoss: ECM test scores, and the classification loss averaged over queries.

    DETRHead turns ``bg_cls_weight`` into the loss's class weights only for its own class; here the
    no-object weight is m_bg inside the loss, and ``bg_cls_weight = 1`` makes the head's
    ``cls_avg_factor = num_pos + num_neg`` the number of queries.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _check_no_object_loss(self)
        self.bg_cls_weight = 1.0

    def _predict_by_feat_single(self, cls_score: Tensor, bbox_pred: Tensor, img_meta: dict,
                                rescale: bool = True) -> InstanceData:
        """DETRHead's, scoring every (query, class) with σ(s_c)·(1 − σ(s_bg)) and keeping the top
        ``max_per_img`` pairs (mmdet's sigmoid-classifier path), instead of one softmax label per query."""
        assert len(cls_score) == len(bbox_pred)  # num_queries
        max_per_img = self.test_cfg.get("max_per_img", len(cls_score))
        scores = self.loss_cls.get_activation(cls_score)[..., :-1]  # ECM score; the no-object column dropped
        scores, indexes = scores.reshape(-1).topk(min(max_per_img, scores.numel()))
        det_labels = indexes % self.num_classes
        bbox_pred = bbox_pred[indexes // self.num_classes]

        # DETRHead's own lines from here on: normalised cxcywh -> image xyxy
        img_shape = img_meta["img_shape"]
        det_bboxes = bbox_cxcywh_to_xyxy(bbox_pred)
        det_bboxes[:, 0::2] = det_bboxes[:, 0::2] * img_shape[1]
        det_bboxes[:, 1::2] = det_bboxes[:, 1::2] * img_shape[0]
        det_bboxes[:, 0::2].clamp_(min=0, max=img_shape[1])
        det_bboxes[:, 1::2].clamp_(min=0, max=img_shape[0])
        if rescale:
            assert img_meta.get("scale_factor") is not None
            det_bboxes /= det_bboxes.new_tensor(img_meta["scale_factor"]).repeat((1, 2))
        results = InstanceData()
        results.bboxes = det_bboxes
        results.scores = scores
        results.labels = det_labels
        return results


def _with_class_weight(loss_cls) -> ConfigDict:
    """MaskFormer heads read ``loss_cls.class_weight`` from the config: let a config without one build."""
    loss_cls = ConfigDict(copy.deepcopy(loss_cls))
    loss_cls.setdefault("class_weight", None)
    return loss_cls


class _QueryClassWeight:
    """MaskFormer-style heads with ECMNoObjectLoss: the loss normalised by the number of queries (all-ones
    ``class_weight`` from the loss module instead of the config's hand-set no-object weight)."""

    def __init__(self, *args, loss_cls, **kwargs) -> None:
        super().__init__(*args, loss_cls=_with_class_weight(loss_cls), **kwargs)
        _check_no_object_loss(self)
        self.class_weight = list(self.loss_cls.class_weight)


@MODELS.register_module()
class ECMMaskFormerHead(_QueryClassWeight, MaskFormerHead):
    """MaskFormerHead with ECMNoObjectLoss (see `_QueryClassWeight`)."""


@MODELS.register_module()
class ECMMask2FormerHead(_QueryClassWeight, Mask2FormerHead):
    """Mask2FormerHead with ECMNoObjectLoss (see `_QueryClassWeight`)."""


@MODELS.register_module()
class ECMMaskFormerFusionHead(MaskFormerFusionHead):
    """MaskFormerFusionHead scoring the C + 1 query logits with ECM, σ(s_c)·(1 − σ(s_bg)), not softmax.

    Panoptic: a query's label is the argmax over the C scores and σ(s_bg) (no object when σ(s_bg) wins),
    as mmdet takes the argmax of the softmax over C + 1. The two methods are mmdet 3.3's, with only the
    marked scoring line changed (mmdet computes it inline).
    """

    def panoptic_postprocess(self, mask_cls: Tensor, mask_pred: Tensor) -> PixelData:
        object_mask_thr = self.test_cfg.get("object_mask_thr", 0.8)
        iou_thr = self.test_cfg.get("iou_thr", 0.8)
        filter_low_score = self.test_cfg.get("filter_low_score", False)

        scores, labels = no_object_scores(mask_cls).max(-1)  # ECM (mmdet: F.softmax(mask_cls, dim=-1))
        mask_pred = mask_pred.sigmoid()

        keep = labels.ne(self.num_classes) & (scores > object_mask_thr)
        cur_scores = scores[keep]
        cur_classes = labels[keep]
        cur_masks = mask_pred[keep]

        cur_prob_masks = cur_scores.view(-1, 1, 1) * cur_masks

        h, w = cur_masks.shape[-2:]
        panoptic_seg = torch.full((h, w), self.num_classes, dtype=torch.int32, device=cur_masks.device)
        if cur_masks.shape[0] > 0:
            cur_mask_ids = cur_prob_masks.argmax(0)
            instance_id = 1
            for k in range(cur_classes.shape[0]):
                pred_class = int(cur_classes[k].item())
                isthing = pred_class < self.num_things_classes
                mask = cur_mask_ids == k
                mask_area = mask.sum().item()
                original_area = (cur_masks[k] >= 0.5).sum().item()

                if filter_low_score:
                    mask = mask & (cur_masks[k] >= 0.5)

                if mask_area > 0 and original_area > 0:
                    if mask_area / original_area < iou_thr:
                        continue
                    if not isthing:
                        panoptic_seg[mask] = pred_class  # stuff regions of one class merge (instance id 0)
                    else:
                        panoptic_seg[mask] = pred_class + instance_id * INSTANCE_OFFSET
                        instance_id += 1

        return PixelData(sem_seg=panoptic_seg[None])

    def instance_postprocess(self, mask_cls: Tensor, mask_pred: Tensor) -> InstanceData:
        max_per_image = self.test_cfg.get("max_per_image", 100)
        num_queries = mask_cls.shape[0]
        scores = no_object_scores(mask_cls)[:, :-1]  # ECM, (num_queries, C) (mmdet: softmax[:, :-1])
        labels = torch.arange(self.num_classes, device=mask_cls.device).unsqueeze(0).repeat(
            num_queries, 1).flatten(0, 1)
        scores_per_image, top_indices = scores.flatten(0, 1).topk(max_per_image, sorted=False)
        labels_per_image = labels[top_indices]

        query_indices = top_indices // self.num_classes
        mask_pred = mask_pred[query_indices]

        # extract things
        is_thing = labels_per_image < self.num_things_classes
        scores_per_image = scores_per_image[is_thing]
        labels_per_image = labels_per_image[is_thing]
        mask_pred = mask_pred[is_thing]

        mask_pred_binary = (mask_pred > 0).float()
        mask_scores_per_image = (mask_pred.sigmoid() * mask_pred_binary).flatten(1).sum(1) / (
            mask_pred_binary.flatten(1).sum(1) + 1e-6)
        det_scores = scores_per_image * mask_scores_per_image
        mask_pred_binary = mask_pred_binary.bool()
        bboxes = mask2bbox(mask_pred_binary)

        results = InstanceData()
        results.bboxes = bboxes
        results.labels = labels_per_image
        results.scores = det_scores
        results.masks = mask_pred_binary
        return results


@MODELS.register_module()
class ECMYOLACTHead(YOLACTHead):
    """YOLACTHead with ECMNoObjectLoss: test scores σ(s_c)·(1 − σ(s_bg)) (C + 1 columns, background last,
    the layout fast_nms expects). Training is YOLACTHead's: OHEM ranks the ECM per-anchor losses.
    ``_predict_by_feat_single`` is mmdet 3.3's with only the marked scoring line changed."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _check_no_object_loss(self)

    def _predict_by_feat_single(self, cls_score_list, bbox_pred_list, coeff_preds_list, mlvl_priors,
                                img_meta, cfg, rescale=True) -> InstanceData:
        assert len(cls_score_list) == len(bbox_pred_list) == len(mlvl_priors)
        cfg = copy.deepcopy(self.test_cfg if cfg is None else cfg)
        img_shape = img_meta["img_shape"]
        nms_pre = cfg.get("nms_pre", -1)

        mlvl_bbox_preds, mlvl_valid_priors, mlvl_scores, mlvl_coeffs = [], [], [], []
        for cls_score, bbox_pred, coeff_pred, priors in zip(cls_score_list, bbox_pred_list, coeff_preds_list,
                                                            mlvl_priors, strict=True):
            assert cls_score.size()[-2:] == bbox_pred.size()[-2:]
            cls_score = cls_score.permute(1, 2, 0).reshape(-1, self.cls_out_channels)
            scores = self.loss_cls.get_activation(cls_score)  # ECM (mmdet: cls_score.softmax(-1))
            bbox_pred = bbox_pred.permute(1, 2, 0).reshape(-1, 4)
            coeff_pred = coeff_pred.permute(1, 2, 0).reshape(-1, self.num_protos)

            if 0 < nms_pre < scores.shape[0]:
                max_scores, _ = scores[:, :-1].max(dim=1)  # foreground classes; background last
                _, topk_inds = max_scores.topk(nms_pre)
                priors = priors[topk_inds, :]
                bbox_pred = bbox_pred[topk_inds, :]
                scores = scores[topk_inds, :]
                coeff_pred = coeff_pred[topk_inds, :]

            mlvl_bbox_preds.append(bbox_pred)
            mlvl_valid_priors.append(priors)
            mlvl_scores.append(scores)
            mlvl_coeffs.append(coeff_pred)

        bbox_pred = torch.cat(mlvl_bbox_preds)
        priors = torch.cat(mlvl_valid_priors)
        multi_bboxes = self.bbox_coder.decode(priors, bbox_pred, max_shape=img_shape)
        return self._bbox_post_process(multi_bboxes=multi_bboxes, multi_scores=torch.cat(mlvl_scores),
                                       multi_coeffs=torch.cat(mlvl_coeffs), cfg=cfg, rescale=rescale,
                                       img_meta=img_meta)


@TASK_UTILS.register_module()
class ECMClassificationCost(ClassificationCost):
    """ClassificationCost with ECM's score: cost(query, gt) = −σ(s_l)·(1 − σ(s_bg))·weight for the gt's
    class l (mmdet: −softmax(s)_l·weight), the score the query gets at test time."""

    def __call__(self, pred_instances: InstanceData, gt_instances: InstanceData, img_meta: dict | None = None,
                 **kwargs) -> Tensor:
        scores = no_object_scores(pred_instances.scores)
        return -scores[:, gt_instances.labels] * self.weight


@MODELS.register_module()
class ECMSABLHead(SABLHead):
    """SABLHead scoring with its loss: ECM's σ(s_c)·(1 − σ(s_bg)) (any loss with ``custom_activation``),
    σ(s) for a sigmoid loss; mmdet's SABLHead applies softmax whatever the loss."""

    def _predict_by_feat_single(self, roi: Tensor, cls_score: Tensor, bbox_pred: tuple, img_meta: dict,
                                rescale: bool = False, rcnn_test_cfg: ConfigDict | None = None) -> InstanceData:
        if isinstance(cls_score, list):
            cls_score = sum(cls_score) / float(len(cls_score))
        if cls_score is not None and getattr(self.loss_cls, "custom_activation", False):
            scores = self.loss_cls.get_activation(cls_score)
        elif cls_score is not None and getattr(self.loss_cls, "use_sigmoid", False):
            scores = torch.cat([cls_score.sigmoid(), cls_score.new_zeros(len(cls_score), 1)], dim=1)
        else:
            return super()._predict_by_feat_single(roi, cls_score, bbox_pred, img_meta, rescale, rcnn_test_cfg)
        # SABLHead's own lines from here on (mmdet 3.3), with `scores` from above
        results = InstanceData()
        img_shape = img_meta["img_shape"]
        if bbox_pred is not None:
            bboxes, confidences = self.bbox_coder.decode(roi[:, 1:], bbox_pred, img_shape)
        else:
            bboxes, confidences = roi[:, 1:].clone(), None
            if img_shape is not None:
                bboxes[:, [0, 2]].clamp_(min=0, max=img_shape[1] - 1)
                bboxes[:, [1, 3]].clamp_(min=0, max=img_shape[0] - 1)
        if rescale and bboxes.size(0) > 0:
            scale_factor = bboxes.new_tensor(img_meta["scale_factor"]).repeat((1, 2))
            bboxes = (bboxes.view(bboxes.size(0), -1, 4) / scale_factor).view(bboxes.size()[0], -1)
        if rcnn_test_cfg is None:
            results.bboxes, results.scores = bboxes, scores
            return results
        det_bboxes, det_labels = multiclass_nms(bboxes, scores, rcnn_test_cfg.score_thr, rcnn_test_cfg.nms,
                                                rcnn_test_cfg.max_per_img, score_factors=confidences)
        results.bboxes, results.scores, results.labels = det_bboxes[:, :4], det_bboxes[:, -1], det_labels
        return results


@MODELS.register_module()
class ECMDDQDETRHead(DDQDETRHead):
    """DDQDETRHead whose dense auxiliary branch takes its classification loss from the config (``aux_loss_cls``;
    mmdet builds it from a fixed QualityFocalLoss), so the placement can give it the ECM form."""

    def __init__(self, *args, aux_loss_cls: dict | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if aux_loss_cls is not None:
            self.aux_loss_for_dense.loss_cls = MODELS.build(aux_loss_cls)
