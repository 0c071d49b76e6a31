"""Fixed AP and Pooled AP (Dave et al. 2021) against a plain loop implementation of their definition.

The reference below is written from the paper's protocol and its code's behaviour, independently of
ecmctl.evaluation: per category the top K detections over the dataset (stable score sort, no per-image
limit, taken before LVIS's federated filtering), mask area for segm, LVIS matching per image and
category, then per-category AP (Fixed AP) or one ranking per category pool (Pooled AP; ties by image id,
category id, input order). Interpolated precision is computed as its definition: the highest precision
at any rank whose recall is at least the threshold.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
from hypothesis import given, settings
from hypothesis import strategies as st
from lvis_gen import make_case

from ecmctl.evaluation import evaluate_files

THRS = np.linspace(0.5, 0.95, 10)
RECALLS = np.linspace(0.0, 1.0, 101)
AREAS = {"all": (0, 1e10), "small": (0, 32**2), "medium": (32**2, 96**2), "large": (96**2, 1e10)}


def _iou(a, b, segm: bool) -> float:
    if segm:
        return float(mask_utils.iou([a], [b], [0])[0, 0])
    return float(mask_utils.iou(np.array([a], float), np.array([b], float), [0])[0, 0])


def _rle(seg, h, w):
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    return seg


def _match(dts, gts, area, thr, segm):
    """LVIS greedy matching of one image/category: (matched gt or None, gt ignored) per detection."""
    lo, hi = AREAS[area]
    ign = [bool(g.get("ignore")) or not lo <= g["area"] <= hi for g in gts]
    order = sorted(range(len(gts)), key=lambda i: ign[i])  # stable: not ignored first
    used, out = set(), []
    for d in dts:
        best, best_iou = None, min(thr, 1 - 1e-10)
        for g in order:
            if g in used:
                continue
            if best is not None and not ign[best] and ign[g]:
                break
            iou = _iou(d["seg" if segm else "bbox"], gts[g]["seg" if segm else "bbox"], segm)
            if iou >= best_iou:
                best, best_iou = g, iou
        if best is not None:
            used.add(best)
        out.append((best, best is not None and ign[best]))
    return out


def _precision_at_recalls(flags, num_gt):
    """Interpolated precision at the 101 recall thresholds of a ranked list of 'tp'/'fp'/'ignore'."""
    tp = fp = 0
    points = []
    for f in flags:
        tp += f == "tp"
        fp += f == "fp"
        points.append((tp / num_gt, tp / (tp + fp + np.spacing(1))))
    return [max([p for r, p in points if r >= thr], default=0.0) for thr in RECALLS]


def reference(gt: dict, results: list[dict], segm: bool, topk: int):
    """(Fixed AP per category {cat: {area: [T x R precisions]}}, Pooled precisions {pool: [T x R]}, freq)."""
    images = {im["id"]: im for im in gt["images"]}
    cats = {c["id"]: c for c in gt["categories"]}
    by_cat = defaultdict(list)
    for i, r in enumerate(results):
        by_cat[r["category_id"]].append({**r, "i": i})
    chosen = [d for ds in by_cat.values() for d in sorted(ds, key=lambda d: -d["score"])[:topk]]

    gts = defaultdict(list)
    for a in gt["annotations"]:
        if 0 < a["area"] < math.inf and a["image_id"] in images and a["category_id"] in cats:
            im = images[a["image_id"]]
            gts[a["image_id"], a["category_id"]].append({**a, "seg": _rle(a.get("segmentation"), im["height"],
                                                                          im["width"]) if segm else None})
    dts = defaultdict(list)
    for d in chosen:
        im = images[d["image_id"]]
        if segm:
            d["seg"] = _rle(d["segmentation"], im["height"], im["width"])
            d["area"] = float(mask_utils.area(d["seg"]))
        else:
            d["area"] = d["bbox"][2] * d["bbox"][3]
        known = d["category_id"] in im["neg_category_ids"] or gts[d["image_id"], d["category_id"]]
        if 0 < d["area"] < math.inf and known:
            dts[d["image_id"], d["category_id"]].append(d)

    # per detection: {(area, thr): "tp" / "fp" / "ignore"}
    labelled = []
    for (img, cat), ds in dts.items():
        ds = sorted(ds, key=lambda d: (-d["score"], d["i"]))
        for area in AREAS:
            lo, hi = AREAS[area]
            for t, thr in enumerate(THRS):
                for d, (m, ign) in zip(ds, _match(ds, gts[img, cat], area, thr, segm)):
                    if m is not None and not ign and gts[img, cat][m]["id"] != 0:
                        f = "tp"
                    elif ign or (not lo <= d["area"] <= hi or cat in images[img]["not_exhaustive_category_ids"]):
                        f = "ignore"
                    else:
                        f = "fp"
                    d.setdefault("flags", {})[area, t] = f
        labelled.extend(ds)

    def num_gt(cat_ids, area):
        lo, hi = AREAS[area]
        return sum(1 for (_, c), gs in gts.items() if c in cat_ids for g in gs
                   if not g.get("ignore") and lo <= g["area"] <= hi)

    fixed = {}
    for cat in cats:
        ds = sorted((d for d in labelled if d["category_id"] == cat),
                    key=lambda d: (-d["score"], d["image_id"], d["i"]))
        fixed[cat] = {}
        for area in AREAS:
            n = num_gt({cat}, area)
            fixed[cat][area] = None if n == 0 else [
                _precision_at_recalls([d["flags"][area, t] for d in ds], n) for t in range(len(THRS))]
    pooled = {}
    for pool in ("all", "r", "c", "f"):
        members = {c for c in cats if pool == "all" or cats[c]["frequency"] == pool}
        ds = sorted((d for d in labelled if d["category_id"] in members),
                    key=lambda d: (-d["score"], d["image_id"], d["category_id"], d["i"]))
        n = num_gt(members, "all")
        pooled[pool] = None if n == 0 else [_precision_at_recalls([d["flags"]["all", t] for d in ds], n)
                                            for t in range(len(THRS))]
    return fixed, pooled, {c: cats[c]["frequency"] for c in cats}


def _mean(blocks):
    vals = [v for b in blocks if b is not None for row in b for v in row]
    return float(np.mean(vals)) if vals else -1.0


def fixed_summary(fixed, freq):
    t50, t75 = 0, 5
    out = {"AP": _mean(f["all"] for f in fixed.values()),
           "AP50": _mean([f["all"][t50]] if f["all"] else None for f in fixed.values()),
           "AP75": _mean([f["all"][t75]] if f["all"] else None for f in fixed.values()),
           "APs": _mean(f["small"] for f in fixed.values()),
           "APm": _mean(f["medium"] for f in fixed.values()),
           "APl": _mean(f["large"] for f in fixed.values())}
    for g in "rcf":
        out[f"AP{g}"] = _mean(f["all"] for c, f in fixed.items() if freq[c] == g)
    return out


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), segm=st.booleans(), topk=st.sampled_from([1, 2, 5, 10_000]))
def test_fixed_and_pooled_ap_match_reference(tmp_path_factory, seed, segm, topk):
    gt, results = make_case(seed, segm=segm, many=False)
    tmp = tmp_path_factory.mktemp("case")
    (tmp / "gt.json").write_text(json.dumps(gt))
    (tmp / "res.json").write_text(json.dumps(results))
    iou = "segm" if segm else "bbox"
    fixed, pooled, freq = reference(gt, results, segm, topk)
    got = evaluate_files(tmp / "gt.json", tmp / "res.json", iou, "fixed", topk=topk)
    for key, value in fixed_summary(fixed, freq).items():
        assert abs(got[key] - value) <= 1e-9, (key, value, got[key])
    names = {c["id"]: c["name"] for c in gt["categories"]}
    for cat, f in fixed.items():
        assert abs(got["per_class"][names[cat]] - _mean([f["all"]])) <= 1e-9
    got = evaluate_files(tmp / "gt.json", tmp / "res.json", iou, "pooled", topk=topk)
    for pool, key in (("all", "AP"), ("r", "APr"), ("c", "APc"), ("f", "APf")):
        assert abs(got[key] - _mean([pooled[pool]])) <= 1e-9, (pool, got[key], _mean([pooled[pool]]))


def test_topk_applies_before_federated_filtering(tmp_path: Path):
    """A high-scoring detection of a category unknown in its image takes the only top-1 slot: AP 0."""
    gt, _ = make_case(11, id_zero=False)
    ann = next(a for a in gt["annotations"] if a["area"] > 0 and not a.get("ignore"))
    img = next(im for im in gt["images"] if im["id"] == ann["image_id"])
    other = next((im for im in gt["images"] if im["id"] != img["id"] and ann["category_id"] not in
                  im["neg_category_ids"] and not any(a["image_id"] == im["id"] and a["category_id"] ==
                                                     ann["category_id"] for a in gt["annotations"])), None)
    if other is None:
        other = {**img, "id": 10_000, "neg_category_ids": [], "not_exhaustive_category_ids": []}
        gt["images"].append(other)
    results = [{"image_id": other["id"], "category_id": ann["category_id"], "bbox": [0, 0, 5, 5], "score": 0.9},
               {"image_id": img["id"], "category_id": ann["category_id"], "bbox": ann["bbox"], "score": 0.8}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    name = next(c["name"] for c in gt["categories"] if c["id"] == ann["category_id"])
    k1 = evaluate_files(tmp_path / "gt.json", tmp_path / "res.json", "bbox", "fixed", topk=1)["per_class"][name]
    k2 = evaluate_files(tmp_path / "gt.json", tmp_path / "res.json", "bbox", "fixed", topk=2)["per_class"][name]
    assert k1 == 0.0 and k2 > 0.0
