"""Random small LVIS-format ground truths and results for the evaluator tests (seeded numpy, fast).

They are built to hit lvis-api's corner cases: negative and not-exhaustive categories, categories absent
from the images, images without ground truth, more than 300 detections on an image, equal scores,
ground-truth areas on the small/medium/large boundaries (32², 96²), zero and above lvis-api's 1e10 bound
of "all", a category that is never annotated, `ignore` flags, an annotation id 0, zero-area and huge
detections, and near-copies of ground-truth boxes so that matches happen at every IoU.
"""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_utils


def _box(rng: np.random.Generator, h: int, w: int, huge: bool = False) -> list[float]:
    kind = rng.integers(7)
    if huge and kind == 6 and rng.random() < 0.3:  # area above 1e10: outside even lvis-api's "all" range
        return [0.0, 0.0, 2e5, 1e5 + float(rng.integers(0, 3))]
    if kind == 0:  # exactly on an area-range boundary
        side = float(rng.choice([32, 96]))
        return [float(rng.integers(0, 20)), float(rng.integers(0, 20)), side, side]
    if kind == 1:  # tiny
        return [float(rng.uniform(0, w - 4)), float(rng.uniform(0, h - 4)), float(rng.uniform(0.5, 4)),
                float(rng.uniform(0.5, 4))]
    x, y = rng.uniform(0, w * 0.8), rng.uniform(0, h * 0.8)
    return [float(x), float(y), float(rng.uniform(2, w - x)), float(rng.uniform(2, h - y))]


def _jitter(rng: np.random.Generator, b: list[float], scale: float) -> list[float]:
    x, y, w, h = b
    dx, dy, dw, dh = rng.normal(0, scale, 4) * np.array([w, h, w, h])
    return [float(x + dx), float(y + dy), float(max(w + dw, 0.5)), float(max(h + dh, 0.5))]


def _poly(b: list[float]) -> list[list[float]]:
    x, y, w, h = b
    return [[x, y, x + w, y, x + w * 0.7, y + h, x, y + h * 0.8]]


def make_case(seed: int, *, segm: bool = False, many: bool = False, ties: bool = True,
              id_zero: bool = True) -> tuple[dict, list[dict]]:
    """(ground truth dict, results list) for one random case."""
    rng = np.random.default_rng(seed)
    n_cat = int(rng.integers(1, 7))
    cat_ids = sorted(rng.choice(np.arange(1, 30), n_cat, replace=False).tolist())
    cats = [{"id": c, "name": f"cat{c}", "frequency": str(rng.choice(list("rcf")))} for c in cat_ids]
    cats.append({"id": 99, "name": "never_annotated", "frequency": str(rng.choice(list("rcf")))})
    rng.shuffle(cats)  # file order != id order (mmdet labels follow file order)
    n_img = int(rng.integers(1, 6))
    img_ids = sorted(rng.choice(np.arange(1, 100), n_img, replace=False).tolist())
    images, anns, results = [], [], []
    ann_id = 0 if id_zero and rng.random() < 0.3 else 1
    score_pool = np.round(rng.uniform(0, 1, 4), 2)
    for img_id in img_ids:
        h, w = int(rng.integers(40, 130)), int(rng.integers(40, 130))
        n_gt = int(rng.integers(0, 9)) if rng.random() > 0.15 else 0
        present = rng.choice(cat_ids, min(n_cat, int(rng.integers(1, 4))), replace=False).tolist()
        gts = []
        for _ in range(n_gt):
            c = int(rng.choice(present))
            b = _box(rng, h, w, huge=not segm)
            area = b[2] * b[3]
            r = rng.random()
            if r < 0.1:
                area = float(rng.choice([32 * 32, 96 * 96, 0.0, 2e10 if not segm else 1.0]))
            elif r < 0.15:
                area = float(rng.uniform(0, 12000))
            ann = {"id": ann_id, "image_id": img_id, "category_id": c, "bbox": b, "area": area}
            if rng.random() < 0.05:
                ann["ignore"] = 1
            if segm:
                ann["segmentation"] = _poly(b)
            anns.append(ann)
            gts.append(ann)
            ann_id += 1
        pos = sorted({a["category_id"] for a in gts})
        others = [c for c in [*cat_ids, 99] if c not in pos]
        neg = rng.choice(others, int(rng.integers(0, len(others) + 1)), replace=False).tolist() if others else []
        nel_pool = pos + ([int(rng.choice(others))] if others and rng.random() < 0.3 else [])
        nel = rng.choice(nel_pool, int(rng.integers(0, len(nel_pool) + 1)), replace=False).tolist() if nel_pool else []
        images.append({"id": img_id, "height": h, "width": w, "neg_category_ids": [int(c) for c in neg],
                       "not_exhaustive_category_ids": [int(c) for c in nel]})
        n_dt = int(rng.integers(0, 40))
        if many and rng.random() < 0.5:
            n_dt = int(rng.integers(295, 320))
        for _ in range(n_dt):
            if gts and rng.random() < 0.6:
                g = gts[int(rng.integers(len(gts)))]
                b = _jitter(rng, g["bbox"], float(rng.choice([0.02, 0.08, 0.2])))
                c = g["category_id"] if rng.random() < 0.85 else int(rng.choice(cat_ids))
            else:
                b = _box(rng, h, w, huge=not segm)
                c = int(rng.choice([*cat_ids, 99]))
            if rng.random() < 0.03:
                b[2] = 0.0  # zero area: dropped by lvis-api
            score = float(rng.choice(score_pool)) if ties and rng.random() < 0.5 else float(rng.uniform(0, 1))
            det = {"image_id": img_id, "category_id": c, "bbox": b, "score": score}
            if segm:
                rle = mask_utils.merge(mask_utils.frPyObjects(_poly(b), h, w))
                rle["counts"] = rle["counts"].decode()
                det["segmentation"] = rle
            results.append(det)
    order = rng.permutation(len(results)) if rng.random() < 0.3 else np.arange(len(results))
    results = [results[i] for i in order]
    return {"images": images, "annotations": anns, "categories": cats}, results
