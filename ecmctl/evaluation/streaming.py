"""`StreamingLVISEval`: match each image as its detections arrive, keep a few numbers per detection.

Per image (or per batch of complete images): detections are ranked by (score desc, input order), cut to
lvis-api's 300 per image (LVISResults' `limit_dets_per_image`, applied before any filtering), filtered
as `LVISEval._prepare` does (category neither positive nor negative in the image, or area <= 0 -> gone),
matched (matching.py), and reduced to records (state.py). Two record families exist:

* "standard": the lvis-api protocol, 300 per image; a detection's area is its box area when boxes are
  given (LVISResults sets `area = w * h` whenever the results have a bbox, also for segm) and its mask
  area otherwise;
* "dataset": for Fixed and Pooled AP (fixed.py), no per-image cap, mask area for segm, and the filtered
  detections kept as phantoms because they take top-K slots; pruned to the per-category top K as it grows.

`state()` is small and picklable; `merge(states, gt)` concatenates states of disjoint image sets (e.g.
distributed ranks) as if one process had seen them in that order; `summarize()` accumulates.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pycocotools.mask as mask_utils

from ecmctl.core.errors import UserError
from ecmctl.evaluation import fixed
from ecmctl.evaluation.accumulate import category_curves, per_class_ap, per_class_recall, per_class_tp_score, summary
from ecmctl.evaluation.gt import GroundTruth, sorted_lookup, to_rle
from ecmctl.evaluation.matching import gt_ignored, match_flags
from ecmctl.evaluation.overlap import mask_area as mask_area_of
from ecmctl.evaluation.params import (
    AREA_RANGES,
    IOU_TYPES,
    MAX_DETS,
    NEL_BIT,
    NUM_AREAS,
    NUM_THRS,
    PHANTOM_BIT,
    PROTOCOLS,
    TOPK,
)
from ecmctl.evaluation.state import EvalState, Records, gt_fingerprint

STANDARD, DATASET = "standard", "dataset"
PRUNE_MIN = 1 << 20  # records before the first top-K pruning


@dataclass
class DetBatch:
    """Detections of complete images: every detection of each image it mentions is in it."""

    img: np.ndarray  # image index into the ground truth
    cat: np.ndarray  # category index
    score: np.ndarray  # float64
    seq: np.ndarray  # int64 input order (unique, increasing in the order the detections were produced)
    box: np.ndarray | None  # (n, 4) float64 xywh, or None (segm results without boxes)
    rles: np.ndarray | None  # object array: compressed RLE per detection (segm)

    @classmethod
    def concat(cls, parts: list[DetBatch]) -> DetBatch:
        if len(parts) == 1:
            return parts[0]
        box = None if parts[0].box is None else np.concatenate([p.box for p in parts])
        rles = None if parts[0].rles is None else np.concatenate([p.rles for p in parts])
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("img", "cat", "score", "seq")),
                   box, rles)

    @classmethod
    def empty(cls) -> DetBatch:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64), None, None)

    def __len__(self) -> int:
        return int(self.img.size)

    def take(self, idx: np.ndarray) -> DetBatch:
        return DetBatch(self.img[idx], self.cat[idx], self.score[idx], self.seq[idx],
                        None if self.box is None else self.box[idx],
                        None if self.rles is None else self.rles[idx])


def objects(items: list) -> np.ndarray:
    """A 1-d object array of `items` (RLEs): fancy indexing in C instead of list comprehensions.
    (`fromiter` does not probe each item for being a sequence, as `np.array` and slice assignment do.)"""
    return np.fromiter(items, object, len(items))


def _families(protocols: Sequence[str]) -> tuple[str, ...]:
    out = []
    if "standard" in protocols:
        out.append(STANDARD)
    if "fixed" in protocols or "pooled" in protocols:
        out.append(DATASET)
    return tuple(out)


class StreamingLVISEval:
    """LVIS AP (lvis-api's numbers exactly), Fixed AP and Pooled AP from per-image detections.

    `protocols`: any of "standard" (LVISEval), "fixed", "pooled" (Dave et al.). `max_dets`: lvis-api's
    per-image cap for the standard protocol; `topk`: the per-category budget of Fixed/Pooled AP.
    """

    def __init__(self, gt: GroundTruth, iou_type: str = "bbox", protocols: Sequence[str] = ("standard",), *,
                 max_dets: int = MAX_DETS, topk: int = TOPK):
        if iou_type not in IOU_TYPES:
            raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
        bad = [p for p in protocols if p not in PROTOCOLS]
        if bad or not protocols:
            raise ValueError(f"protocols must be a non-empty subset of {PROTOCOLS}, got {tuple(protocols)!r}")
        if iou_type == "segm" and gt.ann_segm is None:
            raise ValueError("segm evaluation needs a ground truth loaded with with_segm=True")
        if iou_type == "bbox" and gt.ann_box is None:
            raise UserError(f"{gt.path}: an annotation has no 'bbox'; bbox evaluation needs one on every annotation")
        self.gt = gt
        self.iou_type = iou_type
        self.protocols = tuple(p for p in PROTOCOLS if p in protocols)
        self.max_dets = int(max_dets)
        self.topk = int(topk)
        self._fingerprint = gt_fingerprint(gt.img_ids, gt.cat_ids)
        self._reset()

    def _reset(self) -> None:
        self._images: list[np.ndarray] = []
        self._parts: dict[str, list[Records]] = {f: [] for f in _families(self.protocols)}
        self._size = 0  # records in the "dataset" family since the last pruning
        self._prune_at = PRUNE_MIN
        self._next_seq = 0
        self._seen = np.zeros(self.gt.num_images, bool)

    # -- input -----------------------------------------------------------------------------------
    def has_image(self, image_id: int) -> bool:
        """Whether this image was processed already (a distributed sampler pads with repeated images)."""
        return bool(self._seen[int(self.gt.image_index(np.array([image_id], np.int64), "image_id")[0])])

    def process(self, image_id: int, boxes: np.ndarray | None, scores: np.ndarray, labels: np.ndarray | None = None,
                *, category_ids: np.ndarray | None = None, masks: np.ndarray | None = None,
                rles: list | None = None, box_format: str = "xyxy") -> None:
        """Match one image's detections now.

        `boxes` (n, 4) in `box_format` ("xyxy" as mmdet predicts, converted as mmdet's `xyxy2xywh` does, or
        "xywh" as in results files); `labels` index the ground truth's categories in file order (mmdet's
        class order), or give `category_ids`. segm: binary `masks` (n, H, W) or `rles` (compressed or
        uncompressed RLE dicts, or polygons). Scores, boxes and ids are validated (ValueError).
        """
        img = int(self.gt.image_index(np.array([image_id], np.int64), "image_id")[0])
        if self._seen[img]:
            raise ValueError(f"image {image_id} was already processed; give all its detections in one call")
        scores = np.asarray(scores, np.float64).reshape(-1)
        n = scores.size
        if not np.isfinite(scores).all():
            raise ValueError(f"image {image_id}: scores must be finite")
        cat = self._categories(image_id, n, labels, category_ids)
        box = None if boxes is None else _to_xywh(np.asarray(boxes), n, box_format, image_id)
        seg = None
        if self.iou_type == "segm":
            seg = self._rles(img, n, masks, rles, image_id)
        elif box is None:
            raise ValueError(f"image {image_id}: bbox evaluation needs boxes")
        seq = self._next_seq + np.arange(n, dtype=np.int64)
        self.process_batch(DetBatch(np.full(n, img, np.int64), cat, scores, seq, box, seg), images=[img])

    def _categories(self, image_id: int, n: int, labels, category_ids) -> np.ndarray:
        if (labels is None) == (category_ids is None):
            raise ValueError("give exactly one of labels (mmdet class indices) and category_ids")
        if category_ids is not None:
            category_ids = np.asarray(category_ids, np.int64).reshape(-1)
            if category_ids.size != n:
                raise ValueError(f"image {image_id}: {category_ids.size} category ids for {n} detections")
            return self.gt.cat_index(category_ids)
        labels = np.asarray(labels, np.int64).reshape(-1)
        if labels.size != n or (n and (labels.min() < 0 or labels.max() >= self.gt.num_cats)):
            raise ValueError(f"image {image_id}: labels must be {n} class indices in [0, {self.gt.num_cats})")
        return self.gt.label_to_cat[labels]

    def _rles(self, img: int, n: int, masks, rles, image_id: int) -> np.ndarray:
        if masks is not None:
            masks = np.asarray(masks)
            if masks.ndim != 3 or masks.shape[0] != n:
                raise ValueError(f"image {image_id}: masks must be (n, H, W) with n = {n}")
            return objects(mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0), dtype=np.uint8)) if n else [])
        if rles is None or len(rles) != n:
            raise ValueError(f"image {image_id}: segm evaluation needs {n} masks or rles")
        h, w = (int(v) for v in self.gt.img_hw[img])
        return objects([to_rle(r, h, w) for r in rles])

    def process_batch(self, batch: DetBatch, images: Iterable[int] | None = None) -> None:
        """Match detections of complete images (`images`: the images processed, detections or not)."""
        imgs = np.unique(batch.img) if images is None else np.asarray(list(images), np.int64)
        self._images.append(imgs.astype(np.int32))
        self._seen[imgs] = True
        if batch.seq.size:
            self._next_seq = max(self._next_seq, int(batch.seq.max()) + 1)
        order = np.lexsort((batch.seq, -batch.score, batch.img))
        b = batch.take(order)
        n = b.img.size
        first = np.r_[True, b.img[1:] != b.img[:-1]] if n else np.zeros(0, bool)
        starts = np.flatnonzero(first)
        rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
        k = self.gt.num_cats
        _, fed = sorted_lookup(self.gt.fed_keys, b.img * k + b.cat)
        _, nel = sorted_lookup(self.gt.nel_keys, b.img * k + b.cat)
        box_area = None if b.box is None else b.box[:, 2] * b.box[:, 3]
        need_mask_area = (STANDARD in self._parts and box_area is None) or (
            DATASET in self._parts and self.iou_type == "segm")
        mask_area = mask_area_of(b.rles) if need_mask_area else None
        for family in self._parts:
            if family == STANDARD:
                take = rank < self.max_dets
                area = box_area if box_area is not None else mask_area
            else:
                take = np.ones(n, bool)
                area = mask_area if self.iou_type == "segm" else box_area
            # LVISResults/get_ann_ids keep `0 < area < inf`; _prepare keeps positive or negative categories
            valid = take & fed & (area > 0) & (area < np.inf)
            self._append(family, b, valid, take & ~valid if family == DATASET else None, area, nel)

    def _append(self, family: str, b: DetBatch, valid: np.ndarray, phantom: np.ndarray | None,
                area: np.ndarray, nel: np.ndarray) -> None:
        v = np.flatnonzero(valid)
        sub = b.take(v)
        flags = match_flags(self.gt, sub.img, sub.cat, sub.box if self.iou_type == "bbox" else None,
                            sub.rles if self.iou_type == "segm" else None)
        a = area[v]
        extra = (nel[v].astype(np.uint8) << NEL_BIT)
        for r in range(NUM_AREAS):
            extra |= ((a < AREA_RANGES[r, 0]) | (a > AREA_RANGES[r, 1])).astype(np.uint8) << r
        parts = [Records(sub.cat.astype(np.int32), sub.score, sub.img.astype(np.int32), sub.seq, flags, extra)]
        if phantom is not None and phantom.any():
            p = np.flatnonzero(phantom)
            parts.append(Records(b.cat[p].astype(np.int32), b.score[p], b.img[p].astype(np.int32), b.seq[p],
                                 np.zeros((p.size, NUM_THRS), np.uint8),
                                 np.full(p.size, 1 << PHANTOM_BIT, np.uint8)))
        self._parts[family].extend(parts)
        if family == DATASET:
            self._size += sum(len(p) for p in parts)
            if self._size > self._prune_at:
                self._prune()

    def _prune(self) -> None:
        rec = fixed.prune_topk(Records.concat(self._parts[DATASET]), self.topk)
        self._parts[DATASET] = [rec]
        self._size = len(rec)
        self._prune_at = max(PRUNE_MIN, 2 * len(rec))

    def drop_images(self, imgs: np.ndarray) -> None:
        """Forget what was recorded for these image indices (they will be processed again)."""
        gone = np.zeros(self.gt.num_images, bool)
        gone[imgs] = True
        for family, parts in self._parts.items():
            rec = Records.concat(parts)
            self._parts[family] = [rec.take(np.flatnonzero(~gone[rec.img]))]
        images = np.concatenate(self._images) if self._images else np.zeros(0, np.int32)
        self._images = [images[~gone[images]]]
        self._seen[imgs] = False

    # -- state ------------------------------------------------------------------------------------
    def state(self) -> EvalState:
        """Compact picklable state (numpy arrays only): what a rank sends for `merge`."""
        if DATASET in self._parts:
            self._prune()
        return EvalState(self._fingerprint, self.iou_type, self.protocols, self.max_dets, self.topk,
                         np.concatenate(self._images) if self._images else np.zeros(0, np.int32),
                         self._next_seq, {f: Records.concat(p) for f, p in self._parts.items()})

    def pop_state(self) -> EvalState:
        """`state()`, then start empty: per-image states for a list that is gathered later (mmengine)."""
        out = self.state()
        self._reset()
        return out

    @classmethod
    def merge(cls, states: Sequence[EvalState], gt: GroundTruth) -> StreamingLVISEval:
        """One evaluator holding `states` in order (later states' detections count as later input).

        An image present in several states (a distributed sampler's padding repeats images) counts once,
        from the first state that has it.
        """
        if not states:
            raise ValueError("merge needs at least one state")
        s0 = states[0]
        ev = cls(gt, s0.iou_type, s0.protocols, max_dets=s0.max_dets, topk=s0.topk)
        seen = np.zeros(gt.num_images, bool)
        offset = 0
        for s in states:
            if s.config() != ev._config():
                raise ValueError(f"cannot merge states of different evaluations: {s.config()} vs {ev._config()}")
            new = ~seen[s.images]
            if not new.all():
                dup = np.zeros(gt.num_images, bool)
                dup[s.images[~new]] = True
            for family, rec in s.families.items():
                if not new.all():
                    rec = rec.take(np.flatnonzero(~dup[rec.img]))
                ev._parts[family].append(rec.shifted(offset))
            ev._images.append(s.images[new])
            seen[s.images] = True
            ev._seen[s.images] = True
            offset += s.next_seq
        ev._next_seq = offset
        if DATASET in ev._parts:
            ev._prune()
        return ev

    def _config(self) -> tuple:
        return self._fingerprint, self.iou_type, self.protocols, self.max_dets, self.topk

    # -- results ----------------------------------------------------------------------------------
    def num_gt(self, images: str = "gt") -> np.ndarray:
        """(categories, areas) non-ignored ground truths over all images ("gt") or the processed ones."""
        gt = self.gt
        keep = np.ones(gt.num_images, bool)
        if images == "processed":
            keep[:] = False
            if self._images:
                keep[np.concatenate(self._images)] = True
        elif images != "gt":
            raise ValueError(f"images must be 'gt' or 'processed', got {images!r}")
        ann_img = np.repeat(np.arange(gt.num_images), np.diff(gt.ann_ptr))
        sel = keep[ann_img]
        ok = sel[None, :] & ~gt_ignored(gt, np.arange(gt.ann_cat.size))
        return np.stack([np.bincount(gt.ann_cat[ok[a]], minlength=gt.num_cats) for a in range(NUM_AREAS)], 1)

    def summarize(self, images: str = "gt") -> dict:
        """lvis-api's summary (AP, AP50, AP75, APs/m/l, APr/c/f, AR@max_dets, ARs/m/l), `per_class` AP,
        `recall_per_class` (AR at the cap) and `tp_score_per_class` (mean IoU-0.5 true-positive score), by
        category name and -1 if undefined, for the standard protocol; `fixed` (same keys without AR) and
        `pooled` (AP, APr, APc, APf) sections for the others, each with `classes_below_topk` (categories with
        detections but fewer than top-K: their AP is underestimated, as Dave et al.'s scripts warn). Undefined
        values are -1, as in lvis-api.

        `images`: "gt" counts every ground-truth image (lvis-api: an image without detections is all
        misses); "processed" only the images given to `process` (a subset run).
        """
        num_gt = self.num_gt(images)
        groups = [np.flatnonzero(self.gt.cat_freq == g).tolist() for g in range(3)]
        names = self.gt.cat_names
        out: dict = {}
        if STANDARD in self._parts:
            rec = Records.concat(self._parts[STANDARD])
            rec = rec.take(np.lexsort((rec.seq, rec.img, -rec.score, rec.cat)))
            precision, recall = category_curves(rec.cat, self.gt.num_cats, rec.flags, rec.extra, num_gt)
            out.update(summary(precision, recall, groups, self.max_dets))
            out["per_class"] = per_class_ap(precision, names)
            out["recall_per_class"] = per_class_recall(recall, names)
            out["tp_score_per_class"] = per_class_tp_score(rec.cat, rec.score, rec.flags, rec.extra, names)
        if DATASET in self._parts:
            self._prune()
            selected = self._parts[DATASET][0]
            short = fixed.classes_below_topk(selected, self.topk)
            rec = fixed.evaluated(selected)
            if "fixed" in self.protocols:
                precision = fixed.fixed_curves(rec, num_gt)
                out["fixed"] = {**summary(precision, None, groups, None), "per_class": per_class_ap(precision, names),
                                "classes_below_topk": short}
            if "pooled" in self.protocols:
                out["pooled"] = {**fixed.pooled_summary(fixed.pooled_curves(rec, num_gt[:, 0], self.gt.cat_freq)),
                                 "classes_below_topk": short}
        return out


def _to_xywh(boxes: np.ndarray, n: int, box_format: str, image_id: int) -> np.ndarray:
    """float64 xywh; from xyxy as mmdet's `xyxy2xywh` (float64 differences of the given values)."""
    if boxes.shape != (n, 4):
        raise ValueError(f"image {image_id}: boxes must have shape ({n}, 4), got {boxes.shape}")
    b = boxes.astype(np.float64)
    if not np.isfinite(b).all():
        raise ValueError(f"image {image_id}: boxes must be finite")
    if box_format == "xywh":
        return b
    if box_format != "xyxy":
        raise ValueError(f"box_format must be 'xyxy' or 'xywh', got {box_format!r}")
    return np.stack((b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]), axis=1)
