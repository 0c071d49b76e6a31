"""lvis-api's greedy matching (`LVISEval.evaluate_img`) for all detections of a batch of images at once.

What lvis-api does, per image, category, area range and IoU threshold: detections in score order (ties
in input order) each take the still-unmatched ground truth with the highest IoU >= threshold, preferring
a non-ignored one (ground truths outside the area range are "ignored"; they sort last and are only
taken when no non-ignored one qualifies); equal IoUs go to the *later* ground truth in file order.

Here every (area range, threshold) pair and every image/category group is solved at once, on the sparse
list of detection/ground-truth pairs with IoU >= 0.5 (no other pair can ever match). The sequential
greedy loop is replaced by rounds that give the same result: each unresolved detection proposes its
best free ground truth; the proposal is final when no earlier unresolved detection could still take that
ground truth (none has it above the threshold). Earlier detections never want it, and everything the
proposer prefers is already taken, so the sequential loop would decide exactly the same. The earliest
unresolved detection of every group is always final, so the rounds end; they are few in practice
(the length of the longest chain of detections competing for the same ground truths).

The result per detection is a byte per IoU threshold: bit a = true positive in area range a, bit 4+a =
matched to an ignored ground truth (lvis-api's `dt_ignore` from the match). A match to a ground truth
whose id is 0 is no true positive (lvis-api stores the matched gt *id*, and 0 reads as "unmatched").
"""

from __future__ import annotations

import numpy as np

from ecmctl.evaluation.gt import GroundTruth
from ecmctl.evaluation.overlap import as_dict, box_iou_pairs, mask_iou
from ecmctl.evaluation.params import AREA_RANGES, MATCH_THRS, NUM_AREAS, NUM_THRS


def ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenated `arange(s, s + c)` for every (s, c), without a Python loop."""
    counts = np.asarray(counts, np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offsets = np.cumsum(counts) - counts
    return np.arange(total, dtype=np.int64) + np.repeat(np.asarray(starts, np.int64) - offsets, counts)


def gt_ignored(gt: GroundTruth, ann: np.ndarray) -> np.ndarray:
    """(areas, len(ann)) lvis-api's `_ignore` of ground truths: `ignore` or area outside the range."""
    area = gt.ann_area[ann]
    lo, hi = AREA_RANGES[:, :1], AREA_RANGES[:, 1:]
    return gt.ann_ignore[ann][None, :] | (area[None, :] < lo) | (area[None, :] > hi)


def candidate_pairs(gt: GroundTruth, img: np.ndarray, cat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(detection, gt annotation) of every same-image, same-category pair, by detection then file order."""
    imgs = np.unique(img)
    counts = gt.ann_ptr[imgs + 1] - gt.ann_ptr[imgs]
    ann = ranges(gt.ann_ptr[imgs], counts)
    k = gt.num_cats
    gkey = np.repeat(imgs, counts) * k + gt.ann_cat[ann]
    order = np.argsort(gkey, kind="stable")
    gkey, ann = gkey[order], ann[order]
    dkey = img * k + cat
    lo = np.searchsorted(gkey, dkey, "left")
    n = np.searchsorted(gkey, dkey, "right") - lo
    return np.repeat(np.arange(img.size), n), ann[ranges(lo, n)]


def pair_ious(gt: GroundTruth, img: np.ndarray, box: np.ndarray | None, rles: np.ndarray | None,
              dt: np.ndarray, ann: np.ndarray) -> np.ndarray:
    """IoU of each (dt, ann) pair: boxes vectorised, masks with one pycocotools call per image."""
    if rles is None:
        return box_iou_pairs(box[dt], gt.ann_box[ann])
    out = np.empty(dt.size, np.float64)
    bounds = np.flatnonzero(np.diff(img[dt])) + 1  # pairs are grouped by detection, so by image
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, dt.size]):
        rows, row_of = np.unique(dt[lo:hi], return_inverse=True)
        cols, col_of = np.unique(ann[lo:hi], return_inverse=True)
        ious = mask_iou([as_dict(r) for r in rles[rows]], gt.gt_rles(int(img[dt[lo]]), cols))
        out[lo:hi] = ious[row_of, col_of]
    return out


def match_flags(gt: GroundTruth, img: np.ndarray, cat: np.ndarray, box: np.ndarray | None,
                rles: np.ndarray | None) -> np.ndarray:
    """(n, thresholds) uint8 match bits of detections sorted by (image, -score, input order).

    `img`/`cat` are image/category indices; `box` xywh float64 (bbox) or `rles` compressed RLEs (segm).
    """
    flags = np.zeros((img.size, NUM_THRS), np.uint8)
    dt, ann = candidate_pairs(gt, img, cat)
    if dt.size == 0:
        return flags
    iou = pair_ious(gt, img, box, rles, dt, ann)
    live = iou >= MATCH_THRS[0]
    dt, ann, iou = dt[live], ann[live], iou[live]
    if dt.size == 0:
        return flags
    dts, l_of = np.unique(dt, return_inverse=True)
    anns, m_of = np.unique(ann, return_inverse=True)
    ignored = gt_ignored(gt, anns)  # (areas, gts)
    match = _greedy_rounds(l_of, m_of, iou, ignored, dts.size, anns.size)  # (areas, thrs, dts)
    hit = match >= 0
    m = np.where(hit, match, 0)
    ig = hit & np.take_along_axis(ignored[:, None, :].repeat(NUM_THRS, 1), m, axis=2)
    tp = hit & ~ig & ~gt.ann_id_zero[anns][m]
    bits = np.zeros((dts.size, NUM_THRS), np.uint8)
    for a in range(NUM_AREAS):
        bits |= (tp[a].T.astype(np.uint8) << a) | (ig[a].T.astype(np.uint8) << (4 + a))
    flags[dts] = bits
    return flags


def _greedy_rounds(l_of: np.ndarray, m_of: np.ndarray, iou: np.ndarray, ignored: np.ndarray,
                   num_dt: int, num_gt: int) -> np.ndarray:
    """Matched gt (local index, -1 if none) per (area, threshold, detection); see the module docstring.

    Entries are (combo, dt, gt) triples with IoU >= the combo's threshold, combo = area * T + threshold;
    they are kept sorted by (combo, dt, gt), and `by_gt` orders them by (combo, gt, dt).
    """
    ge = iou[:, None] >= MATCH_THRS[None, :]  # (pairs, thresholds)
    per_t = [np.flatnonzero(ge[:, t]) for t in range(NUM_THRS)]
    pair = np.concatenate([p for _ in range(NUM_AREAS) for p in per_t])
    combo = np.concatenate([np.full(p.size, a * NUM_THRS + t, np.int64)
                            for a in range(NUM_AREAS) for t, p in enumerate(per_t)])
    e_l, e_m, e_iou = l_of[pair], m_of[pair], iou[pair]
    e_ni = ~ignored[combo // NUM_THRS, e_m]
    cl = combo * num_dt + e_l
    cm = combo * num_gt + e_m
    by_gt = np.argsort(cm * num_dt + e_l)
    match = np.full(NUM_AREAS * NUM_THRS * num_dt, -1, np.int64)
    taken = np.zeros(NUM_AREAS * NUM_THRS * num_gt, bool)
    while cl.size:
        n = cl.size
        first = np.r_[True, cl[1:] != cl[:-1]]
        starts = np.flatnonzero(first)
        seg = np.cumsum(first) - 1
        # proposal: non-ignored first, then highest IoU, then the last gt in file order
        ni = e_ni.view(np.uint8)
        cand = ni == np.maximum.reduceat(ni, starts)[seg]
        v = np.where(cand, e_iou, -np.inf)
        cand &= v == np.maximum.reduceat(v, starts)[seg]
        best = np.maximum.reduceat(np.where(cand, np.arange(n), -1), starts)
        # final when the proposer is the earliest remaining detection that has this gt above threshold
        cm2 = cm[by_gt]
        first2 = np.r_[True, cm2[1:] != cm2[:-1]]
        seg2 = np.empty(n, np.int64)
        seg2[by_gt] = np.cumsum(first2) - 1
        min_l = np.minimum.reduceat(e_l[by_gt], np.flatnonzero(first2))
        final = best[min_l[seg2[best]] == e_l[best]]
        match[cl[final]] = e_m[final]
        taken[cm[final]] = True
        done = np.zeros(starts.size, bool)
        done[seg[final]] = True
        keep = ~done[seg] & ~taken[cm]
        if not keep.all():
            new_index = np.cumsum(keep) - 1
            by_gt = new_index[by_gt[keep[by_gt]]]
            cl, cm, e_l, e_m, e_iou, e_ni = cl[keep], cm[keep], e_l[keep], e_m[keep], e_iou[keep], e_ni[keep]
    return match.reshape(NUM_AREAS, NUM_THRS, num_dt)
