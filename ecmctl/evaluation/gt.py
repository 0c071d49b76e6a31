"""The LVIS ground truth as flat numpy arrays, decoded once with msgspec.

Only what lvis-api's LVISEval reads is kept: image ids, sizes and label lists; per annotation its image,
category, box, area, `ignore` flag and (for segm) the raw segmentation JSON, turned into an RLE only when
its image is evaluated. Annotations are grouped by image in file order (CSR arrays), because lvis-api's
per-(image, category) lists keep file order and its greedy matching breaks IoU ties by that order.

lvis-api behaviours kept on purpose (lvis/eval.py `_prepare`, lvis/lvis.py `get_ann_ids`):
  * annotations with area <= 0 (or not finite), of an unknown image or of an unknown category are
    dropped entirely, and do not make their category "positive" for the image;
  * `iscrowd` is never read (LVISEval passes iscrowd=0 for every ground truth);
  * a truthy `ignore` field makes the annotation an ignored ground truth in every area range.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import pycocotools.mask as mask_utils

from ecmctl.core.errors import UserError
from ecmctl.evaluation.params import FREQ_LABELS


class _Image(msgspec.Struct):
    id: int
    height: int = 0
    width: int = 0
    neg_category_ids: list[int] | None = None
    not_exhaustive_category_ids: list[int] | None = None


class _Category(msgspec.Struct):
    id: int
    name: str
    frequency: str | None = None


class _Ann(msgspec.Struct):
    image_id: int
    category_id: int
    id: int = 0
    area: float | None = None
    bbox: tuple[float, float, float, float] | None = None
    ignore: Any = 0


class _AnnSegm(_Ann):
    segmentation: msgspec.Raw = msgspec.Raw()  # any JSON value; empty when the field is missing


class _Doc(msgspec.Struct):
    images: list[_Image]
    annotations: list[_Ann]
    categories: list[_Category]


class _DocSegm(msgspec.Struct):
    images: list[_Image]
    annotations: list[_AnnSegm]
    categories: list[_Category]


def sorted_lookup(sorted_ids: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of each value in `sorted_ids`, whether it is there): a vectorised dict lookup."""
    values = np.asarray(values)
    pos = np.searchsorted(sorted_ids, values)
    if sorted_ids.size == 0:
        return pos, np.zeros(values.shape, bool)
    np.minimum(pos, sorted_ids.size - 1, out=pos)
    return pos, sorted_ids[pos] == values


@dataclass(eq=False)
class GroundTruth:
    """Arrays of one LVIS annotation file. Category index = rank of its id (lvis-api's precision axis)."""

    path: str
    cat_ids: np.ndarray  # sorted category ids
    cat_names: list[str]  # names, in cat_ids order
    cat_freq: np.ndarray  # 0/1/2 for r/c/f, in cat_ids order
    label_to_cat: np.ndarray  # mmdet label (file order of 'categories') -> category index
    img_ids: np.ndarray  # sorted image ids
    img_hw: np.ndarray  # (num_images, 2) height, width
    ann_ptr: np.ndarray  # annotations of image i: ann_ptr[i]:ann_ptr[i+1], file order
    ann_cat: np.ndarray  # category index
    ann_box: np.ndarray | None  # (n, 4) float64 xywh (None when an annotation has no box)
    ann_area: np.ndarray
    ann_ignore: np.ndarray  # bool
    ann_id_zero: np.ndarray  # bool: lvis-api records a match as the gt's id, so id 0 reads as "no match"
    ann_segm: list | None  # raw segmentation JSON per annotation (segm only)
    fed_keys: np.ndarray  # sorted img * K + cat of every category positive or negative in an image
    nel_keys: np.ndarray  # sorted img * K + cat of every not-exhaustive category of an image

    @property
    def num_cats(self) -> int:
        return int(self.cat_ids.size)

    @property
    def num_images(self) -> int:
        return int(self.img_ids.size)

    def image_index(self, image_ids: np.ndarray, what: str = "image id") -> np.ndarray:
        """Image indices of `image_ids`; a UserError for an id that is not in the ground truth."""
        idx, ok = sorted_lookup(self.img_ids, np.asarray(image_ids, np.int64))
        if not ok.all():
            bad = np.asarray(image_ids).reshape(-1)[np.flatnonzero(~ok.reshape(-1))[0]]
            raise UserError(f"{what} {int(bad)} is not an image of {self.path}")
        return idx

    def cat_index(self, category_ids: np.ndarray) -> np.ndarray:
        idx, ok = sorted_lookup(self.cat_ids, np.asarray(category_ids, np.int64))
        if not ok.all():
            bad = np.asarray(category_ids).reshape(-1)[np.flatnonzero(~ok.reshape(-1))[0]]
            raise UserError(f"category id {int(bad)} is not a category of {self.path}")
        return idx

    def gt_rles(self, img: int, anns: np.ndarray) -> list[dict]:
        """Compressed RLEs of annotations `anns` (global indices) of image `img`, as `LVIS.ann_to_rle` makes
        them. Single polygons (nearly all of LVIS) go through one `frPyObjects` call per image: pycocotools
        rasterises each polygon on its own, and `merge` of one RLE returns it unchanged."""
        if self.ann_segm is None:
            raise ValueError("the ground truth was loaded without segmentations (with_segm=False)")
        h, w = (int(v) for v in self.img_hw[img])
        segs = [msgspec.json.decode(self.ann_segm[k]) for k in anns.tolist()]
        single = [i for i, s in enumerate(segs) if isinstance(s, list) and len(s) == 1 and isinstance(s[0], list)
                  and len(s[0]) > 4]
        out = [None] * len(segs)
        if single:
            for i, rle in zip(single, mask_utils.frPyObjects([segs[i][0] for i in single], h, w)):
                out[i] = rle
        return [to_rle(seg, h, w) if rle is None else rle for seg, rle in zip(segs, out)]


def to_rle(segm: Any, h: int, w: int) -> dict:
    """Polygons, uncompressed or compressed RLE -> compressed RLE, exactly as `LVIS.ann_to_rle`."""
    if isinstance(segm, list):  # polygons of one object: merged into one mask
        return mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
    if isinstance(segm, dict) and isinstance(segm.get("counts"), list):
        return mask_utils.frPyObjects(segm, h, w)
    return segm


def _keys(img_idx: np.ndarray, cat_idx: np.ndarray, num_cats: int) -> np.ndarray:
    return np.unique(img_idx.astype(np.int64) * num_cats + cat_idx)


def load_gt(path: str | os.PathLike, with_segm: bool = False) -> GroundTruth:
    """Decode an LVIS annotation file; segmentations are kept (as raw JSON) only with `with_segm`."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UserError(f"{path}: cannot read the ground truth ({e.strerror})") from None
    try:
        doc = msgspec.json.decode(data, type=_DocSegm if with_segm else _Doc)
    except msgspec.ValidationError as e:
        raise UserError(f"{path}: not LVIS-format ground truth: {e}") from None
    except msgspec.DecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e}); expected an LVIS annotation file") from None
    del data
    return _index(path, doc, with_segm)


def _categories(path: str, cats: list[_Category]) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    ids = np.array([c.id for c in cats], np.int64)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    if np.any(sorted_ids[1:] == sorted_ids[:-1]):
        dup = int(sorted_ids[np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])[0]])
        raise UserError(f"{path}: category id {dup} appears twice in 'categories'; ids must be unique")
    names = [c.name for c in cats]
    if len(set(names)) != len(names):  # per-class results are keyed by name: one class would hide another
        dup_name = next(n for i, n in enumerate(names) if n in names[:i])
        raise UserError(f"{path}: category name {dup_name!r} appears twice in 'categories'; names must be unique")
    freq = []
    for c in (cats[i] for i in order):
        if c.frequency not in FREQ_LABELS:
            raise UserError(f"{path}: category {c.id} ({c.name!r}) has frequency {c.frequency!r}; LVIS "
                            "evaluation needs 'r', 'c' or 'f' (from the training image counts) on every category")
        freq.append(FREQ_LABELS.index(c.frequency))
    label_to_cat = np.empty(ids.size, np.int64)
    label_to_cat[order] = np.arange(ids.size)
    return sorted_ids, [cats[i].name for i in order], np.array(freq, np.int8), label_to_cat


def _label_keys(path: str, images: list[_Image], img_order: np.ndarray, cat_ids: np.ndarray,
                field: str) -> np.ndarray:
    """img * K + cat for a per-image category list; ids that are no category cannot match a detection."""
    lists = [getattr(images[i], field) for i in img_order]
    missing = [i for i, v in zip(img_order.tolist(), lists) if v is None]
    if missing:
        raise UserError(f"{path}: image id {images[missing[0]].id} has no {field!r}; LVIS evaluation needs "
                        "'neg_category_ids' and 'not_exhaustive_category_ids' on every image")
    counts = np.fromiter((len(v) for v in lists), np.int64, len(lists))
    flat = np.fromiter((c for v in lists for c in v), np.int64, int(counts.sum()))
    cat, ok = sorted_lookup(cat_ids, flat)
    img = np.repeat(np.arange(len(lists)), counts)
    return _keys(img[ok], cat[ok], cat_ids.size)


def _index(path: str, doc: _Doc | _DocSegm, with_segm: bool) -> GroundTruth:
    cat_ids, names, freq, label_to_cat = _categories(path, doc.categories)
    k = cat_ids.size
    raw_img_ids = np.array([im.id for im in doc.images], np.int64)
    img_order = np.argsort(raw_img_ids, kind="stable")
    img_ids = raw_img_ids[img_order]
    if np.any(img_ids[1:] == img_ids[:-1]):
        dup = int(img_ids[np.flatnonzero(img_ids[1:] == img_ids[:-1])[0]])
        raise UserError(f"{path}: image id {dup} appears twice in 'images'; ids must be unique")
    img_hw = np.array([(doc.images[i].height, doc.images[i].width) for i in img_order], np.int64).reshape(-1, 2)
    if with_segm and (img_hw <= 0).any():
        bad = int(img_ids[np.flatnonzero((img_hw <= 0).any(axis=1))[0]])
        raise UserError(f"{path}: image id {bad} has no 'height'/'width'; segm evaluation needs them to "
                        "rasterise polygons")

    anns = doc.annotations
    n = len(anns)
    ann_ids = np.sort(np.fromiter((a.id for a in anns), np.int64, n))
    if np.any(ann_ids[1:] == ann_ids[:-1]):  # lvis-api keys annotations by id: a duplicate silently replaces one
        dup = int(ann_ids[np.flatnonzero(ann_ids[1:] == ann_ids[:-1])[0]])
        raise UserError(f"{path}: annotation id {dup} appears twice in 'annotations'; ids must be unique")
    a_img, img_ok = sorted_lookup(img_ids, np.fromiter((a.image_id for a in anns), np.int64, n))
    a_cat, cat_ok = sorted_lookup(cat_ids, np.fromiter((a.category_id for a in anns), np.int64, n))
    missing_area = next((i for i, a in enumerate(anns) if a.area is None), None)
    if missing_area is not None:
        raise UserError(f"{path}: annotation #{missing_area} has no 'area'; LVIS evaluation needs it for "
                        "the small/medium/large ranges")
    area = np.fromiter((a.area for a in anns), np.float64, n)
    # lvis get_ann_ids(area_rng=[0, inf]): `area > 0 and area < inf`, so NaN, 0 and inf are dropped
    keep = img_ok & cat_ok & (area > 0) & (area < np.inf)
    kept = np.flatnonzero(keep)
    kept = kept[np.argsort(a_img[kept], kind="stable")]  # grouped by image, file order within
    boxes = [anns[i].bbox for i in kept]
    box = None if None in boxes else np.array(boxes, np.float64).reshape(-1, 4)  # bbox evaluation needs them
    segm = None
    if with_segm:
        no_segm = next((int(i) for i in kept if not len(anns[i].segmentation)), None)
        if no_segm is not None:
            raise UserError(f"{path}: annotation #{no_segm} has no 'segmentation'; segm evaluation needs one "
                            "on every annotation")
        segm = [anns[i].segmentation for i in kept]
    ann_img = a_img[kept]
    ann_cat = a_cat[kept]
    pos = _keys(ann_img, ann_cat, k)
    neg = _label_keys(path, doc.images, img_order, cat_ids, "neg_category_ids")
    nel = _label_keys(path, doc.images, img_order, cat_ids, "not_exhaustive_category_ids")
    return GroundTruth(
        path=path, cat_ids=cat_ids, cat_names=names, cat_freq=freq, label_to_cat=label_to_cat,
        img_ids=img_ids, img_hw=img_hw,
        ann_ptr=np.concatenate(([0], np.cumsum(np.bincount(ann_img, minlength=img_ids.size)))).astype(np.int64),
        ann_cat=ann_cat.astype(np.int64), ann_box=box, ann_area=area[kept],
        ann_ignore=np.array([bool(anns[i].ignore) for i in kept], bool).reshape(-1),
        ann_id_zero=np.array([anns[i].id == 0 for i in kept], bool).reshape(-1),
        ann_segm=segm, fed_keys=np.union1d(pos, neg), nel_keys=nel)
