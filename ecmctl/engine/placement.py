"""Put a loss choice into any mmdet detector config: every classification loss that matters.

Pure dict surgery on the model config (no detector is built), so it is cheap to test.
RPN objectness is class-agnostic and keeps its loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ecmctl.core.errors import UserError

ROI_LOSSES = ("ecm", "bce", "ce", "seesaw")
DENSE_LOSSES = ("ecm", "bce")
# Dense heads whose classification loss is a sigmoid focal loss (ECMFocalLoss generalises it) or
# VarifocalNet's varifocal loss (ECMVarifocalLoss).
FOCAL_TYPES = ("FocalLoss", "ECMFocalLoss")
VARIFOCAL_TYPES = ("VarifocalLoss", "ECMVarifocalLoss")


def _as_list(x) -> list:
    return list(x) if isinstance(x, Sequence) and not isinstance(x, (str, Mapping)) else [x]


def detector_kind(model: Mapping) -> str:
    """'cascade', 'two_stage' or 'one_stage', from the config's structure, not its name."""
    roi = model.get("roi_head")
    if roi is not None:
        return "cascade" if isinstance(roi.get("bbox_head"), Sequence) else "two_stage"
    if model.get("bbox_head") is not None:
        return "one_stage"
    raise UserError(f"detector type {model.get('type')!r} has neither roi_head nor bbox_head; "
                    "ecmctl cannot place a classification loss in it")


def roi_bbox_heads(model: Mapping) -> list:
    """The RoI box heads in stage order (one per Cascade stage)."""
    return _as_list(model["roi_head"]["bbox_head"])


def set_num_classes(model: Mapping, num_classes: int) -> None:
    """Every head that predicts classes gets the dataset's class count."""
    heads = []
    roi = model.get("roi_head")
    if roi is not None:
        heads += roi_bbox_heads(model)
        if roi.get("mask_head") is not None:
            heads += _as_list(roi["mask_head"])
    elif model.get("bbox_head") is not None:
        heads.append(model["bbox_head"])
    for head in heads:
        head["num_classes"] = num_classes


def roi_loss(loss: Mapping, num_classes: int, weights_file: str | None) -> dict:
    kind, lw = loss["type"], float(loss.get("loss_weight", 1.0))
    if kind == "ecm":
        if not weights_file:
            raise UserError("loss=ecm needs a weights file with background; run `ecmctl calibrate` "
                            "or pass weights_file=PATH")
        return dict(type="ECMLoss", weights_file=str(weights_file), loss_weight=lw)
    if kind == "bce":
        return dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=lw)
    if kind == "ce":
        return dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=lw)
    if kind == "seesaw":
        return dict(type="SeesawLoss", p=float(loss.get("p", 0.8)), q=float(loss.get("q", 2.0)),
                    num_classes=num_classes, loss_weight=lw)
    raise UserError(f"unknown loss type {kind!r}; valid for RoI heads: {', '.join(ROI_LOSSES)}")


def dense_loss(loss: Mapping, head_type: str, weights_file: str | None, varifocal: bool = False) -> dict:
    """The dense head's loss: focal (RetinaNet, FCOS, ATSS) or varifocal (VarifocalNet) weighting of
    the plain (bce) or ECM surrogate (ecm) sigmoid score."""
    kind, lw = loss["type"], float(loss.get("loss_weight", 1.0))
    weighting = dict(loss.get("varifocal" if varifocal else "focal") or {})
    gamma, alpha = float(weighting.get("gamma", 2.0)), float(weighting.get("alpha", 0.75 if varifocal else 0.25))
    if kind == "ecm":
        if not weights_file:
            raise UserError("loss=ecm needs a foreground-only weights file for a dense head; "
                            "run `ecmctl weights COUNTS` or pass weights_file=PATH")
        if varifocal:
            return dict(type="ECMVarifocalLoss", weights_file=str(weights_file), gamma=gamma, alpha=alpha,
                        iou_weighted=True, loss_weight=lw, use_sigmoid=True)
        return dict(type="ECMFocalLoss", weights_file=str(weights_file), gamma=gamma, alpha=alpha,
                    loss_weight=lw, use_sigmoid=True)
    if kind == "bce":
        if varifocal:
            return dict(type="VarifocalLoss", use_sigmoid=True, gamma=gamma, alpha=alpha, iou_weighted=True,
                        loss_weight=lw)
        return dict(type="FocalLoss", use_sigmoid=True, gamma=gamma, alpha=alpha, loss_weight=lw)
    raise UserError(f"loss {kind!r} is not defined for the dense head {head_type}; "
                    f"valid: {', '.join(DENSE_LOSSES)}")


def apply_loss(model: Mapping, loss: Mapping, num_classes: int,
               weights_files: Sequence[str | None] | str | None = None) -> str:
    """Replace the classification loss of every RoI stage or dense head; returns the detector kind.

    `weights_files` is one path, or one per Cascade stage (each stage has its own r).
    Unsupported heads raise rather than silently keeping their old loss.
    """
    kind = detector_kind(model)
    set_num_classes(model, num_classes)
    if kind == "one_stage":
        head = model["bbox_head"]
        old = (head.get("loss_cls") or {}).get("type")
        if old not in FOCAL_TYPES + VARIFOCAL_TYPES:
            raise UserError(f"dense head {head.get('type')} classifies with {old}; ecmctl replaces only "
                            "FocalLoss-based heads (RetinaNet, FCOS, ATSS, ...) and VarifocalLoss (VarifocalNet)")
        wf = weights_files[0] if isinstance(weights_files, (list, tuple)) else weights_files
        head["loss_cls"] = dense_loss(loss, head.get("type"), wf, varifocal=old in VARIFOCAL_TYPES)
        return kind
    heads = roi_bbox_heads(model)
    files = list(weights_files) if isinstance(weights_files, (list, tuple)) else [weights_files] * len(heads)
    if len(files) != len(heads):
        raise UserError(f"{len(files)} weights files for {len(heads)} RoI stages; give one per stage")
    for head, wf in zip(heads, files):
        if "loss_cls" not in head:
            raise UserError(f"RoI head {head.get('type')} has no loss_cls; ecmctl cannot place the loss")
        head["loss_cls"] = roi_loss(loss, num_classes, wf)
    return kind


def apply_normed_head(model: Mapping, temperature: float = 20.0) -> None:
    """The paper's two-stage recipe: cosine classifier (NormedLinear) and NormedConv2d mask predictor."""
    if model.get("roi_head") is None:
        raise UserError("detector.normed_head applies to RoI heads only (two-stage and Cascade detectors)")
    for head in roi_bbox_heads(model):
        head["cls_predictor_cfg"] = dict(type="NormedLinear", tempearture=temperature)  # mmdet's spelling
    for head in _as_list(model["roi_head"].get("mask_head") or []):
        head["predictor_cfg"] = dict(type="NormedConv2d", tempearture=temperature)
