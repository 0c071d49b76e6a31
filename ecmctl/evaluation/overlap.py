"""IoU of detection/ground-truth pairs, bit-identical to what lvis-api gets from pycocotools.

Boxes: pycocotools' C `bbIou` evaluated for a list of pairs with the same IEEE double operations in the
same order (numpy float64), so no dense D x G matrix is built for the whole image. Masks: pycocotools'
`iou` on compressed RLEs, one call per image (its C `rleIou` skips pairs whose boxes do not overlap).
"""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_utils


def box_iou_pairs(dt: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of dt[i] with gt[i] (xywh, float64), as maskApi.c `bbIou` with iscrowd=0.

    C: w = fmin(D2+D0, G2+G0) - fmax(D0, G0); <= 0 -> 0; same for h; i = w*h; u = da + ga - i; i / u.
    """
    w = np.minimum(dt[:, 2] + dt[:, 0], gt[:, 2] + gt[:, 0]) - np.maximum(dt[:, 0], gt[:, 0])
    h = np.minimum(dt[:, 3] + dt[:, 1], gt[:, 3] + gt[:, 1]) - np.maximum(dt[:, 1], gt[:, 1])
    inter = w * h
    union = dt[:, 2] * dt[:, 3] + gt[:, 2] * gt[:, 3] - inter
    ok = (w > 0) & (h > 0)
    out = np.zeros(dt.shape[0], np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):  # degenerate boxes: C divides all the same
        np.divide(inter, union, out=out, where=ok)
    return out


def as_dict(rle) -> dict:
    """pycocotools' `iou` takes RLEs only as `dict` instances (other mappings are refused)."""
    return rle if type(rle) is dict else {"size": rle["size"], "counts": rle["counts"]}


def mask_iou(dt_rles: list, gt_rles: list) -> np.ndarray:
    """(len(dt_rles), len(gt_rles)) IoU of compressed RLEs; -1 where the mask sizes differ (pycocotools)."""
    if not dt_rles or not gt_rles:
        return np.zeros((len(dt_rles), len(gt_rles)), np.float64)
    return np.asarray(mask_utils.iou(dt_rles, gt_rles, [0] * len(gt_rles)), np.float64)


AREA_CHUNK = 255  # pycocotools 2.0.11 `area()` raises OverflowError for a list of more than 255 RLEs


def mask_area(rles) -> np.ndarray:
    """float64 pixel count of each compressed RLE (pycocotools `area`, in lists it accepts)."""
    parts = [np.asarray(mask_utils.area(list(rles[i:i + AREA_CHUNK])), np.float64).reshape(-1)
             for i in range(0, len(rles), AREA_CHUNK)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float64)
