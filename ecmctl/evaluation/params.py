"""lvis-api's evaluation constants (lvis/eval.py `Params`), built with the very same numpy calls.

The thresholds are compared with `==` when summarising (AP50, AP75), so they must be lvis-api's floats
bit for bit: `np.linspace`, not `np.arange`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
# lvis-api compares IoUs against min(thr, 1 - 1e-10), so a threshold of 1.0 would still match IoU 1 - 1e-10
MATCH_THRS = np.minimum(IOU_THRS, 1 - 1e-10)
AREA_RANGES = np.array([[0**2, 1e5**2], [0**2, 32**2], [32**2, 96**2], [96**2, 1e5**2]], dtype=np.float64)
AREA_LABELS = ("all", "small", "medium", "large")
FREQ_LABELS = ("r", "c", "f")
MAX_DETS = 300  # LVISResults(max_dets=300): detections kept per image, by score
TOPK = 10_000  # Fixed AP / Pooled AP (Dave et al. 2021): detections kept per class over the dataset

NUM_THRS = IOU_THRS.size
NUM_AREAS = len(AREA_LABELS)

IouType = Literal["bbox", "segm"]
Protocol = Literal["standard", "fixed", "pooled"]
PROTOCOLS: tuple[str, ...] = ("standard", "fixed", "pooled")
IOU_TYPES: tuple[str, ...] = ("bbox", "segm")

# Per detection, kept instead of its box or mask: one byte per IoU threshold (bit a: true positive in area
# range a; bit 4 + a: matched to a ground truth that is ignored in area range a) and one `extra` byte:
NEL_BIT = 4  # extra bits 0-3: detection area outside area range a; bit 4: not-exhaustive category
PHANTOM_BIT = 5  # dropped by lvis-api's filters (no gt info, zero area): only takes a Fixed AP top-K slot

# The summary's per-class dicts and the mmengine metric's key for them (`{iou}_{key}/{name}`): AP, recall at the
# detection cap (AR per class), and the mean score of IoU-0.5 true positives
PER_CLASS_KEYS = {"per_class": "class_AP", "recall_per_class": "class_recall", "tp_score_per_class": "class_tp_score"}
