"""Fixed AP and Pooled AP (Dave et al. 2021, "Evaluating Large-Vocabulary Object Detectors: The Devil is
in the Details"), as their code (github.com/achalddave/large-vocab-devil) computes them.

Both take, per category, the K = 10,000 highest-scoring detections over the whole dataset (ties: the
earlier detection in the results file, i.e. a stable sort), with no per-image limit, *before* lvis-api's
federated filtering; then LVISEval runs unchanged (`LVISResults(max_dets=-1)`), so detections of
categories without ground-truth information in an image still take a top-K slot and are then dropped.
For segm, the boxes are removed from the results first, so a detection's area (for the small/medium/large
ranges) is its mask area, not lvis-api's box area.

* Fixed AP: the standard per-category AP, AP50, AP75, APs/m/l and APr/c/f on that selection.
* Pooled AP (`LVISPooledEval`): matching as above, but one precision/recall curve for all categories of a
  pool (all, r, c, f) together: detections of the pool's categories ranked by score (ties: image id,
  category id, input order, as its concatenation then stable sort does) against the pool's total number
  of ground truths; area range "all" only (its script's default).

Memory stays bounded while streaming: `prune_topk` is applied whenever the records grow, and a
detection outside its category's top K by (score, input order) can never re-enter it.
"""

from __future__ import annotations

import numpy as np

from ecmctl.evaluation.accumulate import category_curves, flag_arrays, pr_curves
from ecmctl.evaluation.params import FREQ_LABELS, NUM_THRS, PHANTOM_BIT, REC_THRS
from ecmctl.evaluation.state import Records

POOLS = ("all", "r", "c", "f")


def topk_mask(cat: np.ndarray, score: np.ndarray, seq: np.ndarray, topk: int) -> np.ndarray:
    """Whether each detection is among its category's `topk` best by (score desc, seq asc)."""
    order = np.lexsort((seq, -score, cat))
    c = cat[order]
    first = np.r_[True, c[1:] != c[:-1]] if c.size else np.zeros(0, bool)
    starts = np.flatnonzero(first)
    rank = np.arange(c.size) - np.repeat(starts, np.diff(np.r_[starts, c.size]))
    keep = np.zeros(c.size, bool)
    keep[order[rank < topk]] = True
    return keep


def prune_topk(rec: Records, topk: int) -> Records:
    """Only the records that can still be in their category's top K."""
    keep = topk_mask(rec.cat, rec.score, rec.seq, topk)
    return rec if keep.all() else rec.take(np.flatnonzero(keep))


def classes_below_topk(rec: Records, topk: int) -> int:
    """Categories with at least one but fewer than `topk` detections (the devil scripts' warning)."""
    counts = np.bincount(rec.cat)
    return int(((counts > 0) & (counts < topk)).sum())


def evaluated(rec: Records) -> Records:
    """Drop phantoms (detections lvis-api filters out after the top-K selection)."""
    real = ((rec.extra >> PHANTOM_BIT) & 1) == 0
    return rec if real.all() else rec.take(np.flatnonzero(real))


def pooled_curves(rec: Records, num_gt_all: np.ndarray, cat_freq: np.ndarray) -> np.ndarray:
    """(thresholds, recall thresholds, pools) precision of Pooled AP, area range 'all'."""
    order = np.lexsort((rec.seq, rec.cat, rec.img, -rec.score))
    rec = rec.take(order)
    precision = -np.ones((NUM_THRS, REC_THRS.size, len(POOLS)))
    for p, pool in enumerate(POOLS):
        cats = np.ones(cat_freq.size, bool) if pool == "all" else cat_freq == FREQ_LABELS.index(pool)
        in_pool = cats[rec.cat]
        ng = np.array([num_gt_all[cats].sum()])
        flags, extra = rec.flags[in_pool], rec.extra[in_pool]
        seg = np.zeros(flags.shape[0], np.int64)
        for t in range(NUM_THRS):
            tp, fp = flag_arrays(flags, extra, 0, t)
            precision[t, :, p] = pr_curves(seg, 1, tp, fp, ng)[0][0]
    return precision


def fixed_curves(rec: Records, num_gt: np.ndarray) -> np.ndarray:
    """(T, R, K, A) precision of Fixed AP: the standard per-category curves on the top-K selection."""
    order = np.lexsort((rec.seq, rec.img, -rec.score, rec.cat))
    rec = rec.take(order)
    return category_curves(rec.cat, num_gt.shape[0], rec.flags, rec.extra, num_gt)[0]


def pooled_summary(precision: np.ndarray) -> dict[str, float]:
    """AP-pooled-{all,r,c,f} as `LVISPooledEval._summarize_pool`: mean of the defined precisions."""
    out = {}
    for p, pool in enumerate(POOLS):
        s = precision[:, :, p]
        v = s[s > -1]
        out["AP" if pool == "all" else f"AP{pool}"] = float(np.mean(v)) if v.size else -1.0
    return out
