"""Precision/recall curves and the summary numbers of lvis-api (`LVISEval.accumulate` / `summarize`).

lvis-api, per category, area range and IoU threshold: sort the detections by score (stable), cumulative
TP and FP counts (ignored detections count as neither), recall = TP / #gt, precision = TP / (TP + FP +
eps), made non-increasing from the right, then read at the 101 recall thresholds with
`searchsorted(recall, thr, 'left')`; thresholds past the last recall get 0 (its `try/except IndexError`).
No non-ignored ground truth -> -1 ("undefined"), which the summaries skip.

Here all categories (or pools) are done at once per (area, threshold) on one sorted array: cumulative
sums per segment, the recall thresholds turned into exact integer TP targets (k / #gt >= thr in float64,
the same division lvis-api does) found with one `searchsorted`, and the right-to-left maximum read only
at those 101 points (`maximum.reduceat` over the blocks between them). Ignored detections are kept in
place, as in lvis-api, so every float is computed from the same operands.
"""

from __future__ import annotations

import numpy as np

from ecmctl.evaluation.params import AREA_LABELS, IOU_THRS, NEL_BIT, NUM_AREAS, NUM_THRS, REC_THRS

EPS = np.spacing(1)


def segment_bounds(seg: np.ndarray, num_seg: int) -> tuple[np.ndarray, np.ndarray]:
    """[start, end) of segments 0..num_seg-1 in a non-decreasing segment-id array."""
    ids = np.arange(num_seg)
    return np.searchsorted(seg, ids, "left"), np.searchsorted(seg, ids, "right")


def _recall_targets(num_gt: np.ndarray) -> np.ndarray:
    """(segments, recall thresholds) smallest integer k with k / num_gt >= thr, in float64 like lvis-api."""
    ng = np.maximum(num_gt, 1).astype(np.float64)[:, None]
    c = np.ceil(REC_THRS[None, :] * ng).astype(np.int64)
    best = np.full(c.shape, np.iinfo(np.int64).max)
    for d in (1, 0, -1, -2):  # the float product is within an ulp, so the answer is c - 1, c or c + 1
        k = np.maximum(c + d, 0)
        best = np.where(k / ng >= REC_THRS[None, :], np.minimum(best, k), best)
    return best


def pr_curves(seg: np.ndarray, num_seg: int, tp: np.ndarray, fp: np.ndarray,
              num_gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(precision (num_seg, 101), recall (num_seg,)) for detections sorted by (segment, rank).

    `seg` non-decreasing segment ids, `tp`/`fp` booleans, `num_gt` non-ignored ground truths per segment.
    """
    n = seg.size
    starts, ends = segment_bounds(seg, num_seg)
    lens = ends - starts
    tpc = np.cumsum(tp, dtype=np.int64)
    fpc = np.cumsum(fp, dtype=np.int64)
    before = np.maximum(starts - 1, 0)
    tp_base = np.where(starts > 0, tpc[before] if n else 0, 0)
    fp_base = np.where(starts > 0, fpc[before] if n else 0, 0)
    tpc -= np.repeat(tp_base, lens)
    fpc -= np.repeat(fp_base, lens)
    tp_f = tpc.astype(np.float64)
    pr = tp_f / (fpc.astype(np.float64) + tp_f + EPS)

    # first position in each segment whose recall reaches each threshold
    stride = n + 2
    key = seg.astype(np.int64) * stride + tpc
    q = np.searchsorted(key, np.arange(num_seg)[:, None] * stride + _recall_targets(num_gt), "left")
    np.minimum(q, ends[:, None], out=q)  # a target past the segment's last TP count lands in the next one
    reached = q < ends[:, None]
    # maximum of pr over [q_i, q_{i+1}) (last block: [q_100, end)), then right-to-left maximum
    stop = np.concatenate((q[:, 1:], ends[:, None]), axis=1)
    nonempty = q < stop
    block = np.full(q.shape, -np.inf)
    if nonempty.any():
        idx = np.stack((q[nonempty], stop[nonempty]), axis=1).ravel()
        block[nonempty] = np.maximum.reduceat(np.append(pr, -np.inf), idx)[::2]
    env = np.maximum.accumulate(block[:, ::-1], axis=1)[:, ::-1]
    precision = np.where(reached, env, 0.0)

    last = tp_f[np.maximum(ends - 1, 0)] if n else np.zeros(num_seg)
    recall = np.where(lens > 0, last / np.maximum(num_gt, 1), 0.0)
    undefined = num_gt == 0
    precision[undefined] = -1
    recall[undefined] = -1
    return precision, recall


def flag_arrays(flags: np.ndarray, extra: np.ndarray, area: int, thr: int) -> tuple[np.ndarray, np.ndarray]:
    """(tp, fp) of detections in one area range at one threshold, from the match bits.

    lvis-api: dt_ignore = matched to an ignored gt, or unmatched (or matched to gt id 0) and outside the
    area range or of a not-exhaustive category; tp = matched and not ignored; fp = neither.
    """
    f = flags[:, thr]
    tp = (f >> area) & 1
    unmatched_ignored = ((extra >> area) & 1) | ((extra >> NEL_BIT) & 1)
    ignored = ((f >> (4 + area)) & 1) | (unmatched_ignored & (tp ^ 1))
    return tp.astype(bool), ((tp | ignored) == 0)



def category_curves(seg: np.ndarray, num_seg: int, flags: np.ndarray, extra: np.ndarray,
                    num_gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """lvis-api's eval['precision'] (T, R, S, A) and eval['recall'] (T, S, A) for sorted detections."""
    precision = -np.ones((NUM_THRS, REC_THRS.size, num_seg, NUM_AREAS))
    recall = -np.ones((NUM_THRS, num_seg, NUM_AREAS))
    for a in range(NUM_AREAS):
        for t in range(NUM_THRS):
            tp, fp = flag_arrays(flags, extra, a, t)
            p, r = pr_curves(seg, num_seg, tp, fp, num_gt[:, a])
            precision[t, :, :, a] = p.T
            recall[t, :, a] = r
    return precision, recall


def _mean_defined(s: np.ndarray) -> float:
    """lvis-api `_summarize`: mean over values > -1, or -1 when there are none."""
    v = s[s > -1]
    return float(np.mean(v)) if v.size else -1.0


def summarize_ap(precision: np.ndarray, freq_groups: list[list[int]], iou_thr: float | None = None,
                 area: str = "all", group: int | None = None) -> float:
    """lvis-api `_summarize('ap', ...)`, with the same indexing (so the same float summation)."""
    aidx = [i for i, label in enumerate(AREA_LABELS) if label == area]
    s = precision
    if iou_thr is not None:
        s = s[np.where(iou_thr == IOU_THRS)[0]]
    s = s[:, :, freq_groups[group], aidx] if group is not None else s[:, :, :, aidx]
    return _mean_defined(s)


def summarize_ar(recall: np.ndarray, area: str = "all") -> float:
    aidx = [i for i, label in enumerate(AREA_LABELS) if label == area]
    return _mean_defined(recall[:, :, aidx])


def summary(precision: np.ndarray, recall: np.ndarray | None, freq_groups: list[list[int]],
            max_dets: int | None) -> dict[str, float]:
    """lvis-api `LVISEval.summarize()` results: AP, AP50, AP75, APs/m/l, APr/c/f (+ AR@max_dets, ARs/m/l)."""
    out = {
        "AP": summarize_ap(precision, freq_groups),
        "AP50": summarize_ap(precision, freq_groups, iou_thr=0.50),
        "AP75": summarize_ap(precision, freq_groups, iou_thr=0.75),
        "APs": summarize_ap(precision, freq_groups, area="small"),
        "APm": summarize_ap(precision, freq_groups, area="medium"),
        "APl": summarize_ap(precision, freq_groups, area="large"),
        "APr": summarize_ap(precision, freq_groups, group=0),
        "APc": summarize_ap(precision, freq_groups, group=1),
        "APf": summarize_ap(precision, freq_groups, group=2),
    }
    if recall is not None:
        out[f"AR@{max_dets}"] = summarize_ar(recall)
        for area in ("small", "medium", "large"):
            out[f"AR{area[0]}@{max_dets}"] = summarize_ar(recall, area)
    return out


def per_class_ap(precision: np.ndarray, names: list[str]) -> dict[str, float]:
    """AP per category over area 'all' (mmdet/detectron2's classwise AP from eval['precision']), -1 if none."""
    return {name: _mean_defined(precision[:, :, k, 0]) for k, name in enumerate(names)}


def per_class_recall(recall: np.ndarray, names: list[str]) -> dict[str, float]:
    """Recall at the detection cap per category (area 'all', mean over the IoU thresholds: lvis-api's AR of
    that class), -1 if the class has no ground truth: how many of a class's objects survive the cap."""
    return {name: _mean_defined(recall[:, k, 0]) for k, name in enumerate(names)}


def per_class_tp_score(cat: np.ndarray, score: np.ndarray, flags: np.ndarray, extra: np.ndarray,
                       names: list[str]) -> dict[str, float]:
    """Mean score of each category's true positives at IoU 0.5 (area 'all'), -1 without any: the score the
    model gives the objects it does find (what ECM's margins are meant to lift for rare classes)."""
    tp, _ = flag_arrays(flags, extra, 0, 0)
    n = np.bincount(cat[tp], minlength=len(names))
    total = np.bincount(cat[tp], weights=score[tp], minlength=len(names))
    return {name: float(total[k] / n[k]) if n[k] else -1.0 for k, name in enumerate(names)}
