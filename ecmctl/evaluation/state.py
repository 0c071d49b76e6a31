"""What the evaluator keeps per detection, and its picklable, mergeable state.

A detection is reduced, as soon as its image is matched, to 35 bytes: category, score, image, input
order (`seq`, lvis-api's tie-breaker), the match bits per IoU threshold and area range, and the bits of
its own area range / not-exhaustive category (see params.py). Boxes and masks are never kept.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, fields

import numpy as np

from ecmctl.evaluation.params import NUM_THRS


@dataclass
class Records:
    """Columns of per-detection records (one family of protocols)."""

    cat: np.ndarray  # int32 category index
    score: np.ndarray  # float64
    img: np.ndarray  # int32 image index
    seq: np.ndarray  # int64 input order: within an image, and for Fixed AP's top-K ties, over the dataset
    flags: np.ndarray  # (n, thresholds) uint8 match bits
    extra: np.ndarray  # uint8 area-range / not-exhaustive / phantom bits

    @classmethod
    def empty(cls) -> Records:
        return cls(np.zeros(0, np.int32), np.zeros(0, np.float64), np.zeros(0, np.int32), np.zeros(0, np.int64),
                   np.zeros((0, NUM_THRS), np.uint8), np.zeros(0, np.uint8))

    @classmethod
    def concat(cls, parts: list[Records]) -> Records:
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)))

    def take(self, idx: np.ndarray) -> Records:
        return Records(*(getattr(self, f.name)[idx] for f in fields(self)))

    def shifted(self, offset: int) -> Records:
        """The same records with `seq` moved by `offset` (a later rank's detections come after)."""
        return Records(self.cat, self.score, self.img, self.seq + offset, self.flags, self.extra)

    def __len__(self) -> int:
        return int(self.cat.size)


def gt_fingerprint(img_ids: np.ndarray, cat_ids: np.ndarray) -> str:
    """Identifies the ground truth a state's image and category *indices* refer to."""
    return f"{img_ids.size}:{cat_ids.size}:{zlib.crc32(img_ids.tobytes()):08x}:{zlib.crc32(cat_ids.tobytes()):08x}"


@dataclass
class EvalState:
    """Everything `StreamingLVISEval.merge` needs from one evaluator (e.g. one distributed rank)."""

    gt: str  # gt_fingerprint
    iou_type: str
    protocols: tuple[str, ...]
    max_dets: int
    topk: int
    images: np.ndarray  # int32 indices of the processed images, in processing order
    next_seq: int  # detections seen (seq values used) so far
    families: dict[str, Records]  # "standard" (capped per image) and/or "dataset" (Fixed/Pooled AP)

    def config(self) -> tuple:
        return self.gt, self.iou_type, self.protocols, self.max_dets, self.topk
