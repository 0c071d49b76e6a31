"""A deterministic synthetic long-tailed detection dataset in true LVIS v1 format.

Why: the whole count -> calibrate -> train -> eval pipeline must be runnable (and testable) in minutes on a
CPU without downloading LVIS. Each class is a (shape, colour, texture) combination, so a tiny detector
trained from scratch can learn it from appearance. LVIS's rule on TRAIN image counts (rare 1-10, common
11-100, frequent > 100) is kept as is; two profiles design the per-class train image counts:

  small  a third of the classes in each band, log-spaced (24 classes / 400 images: 8 r, 8 c, 8 f);
  lvis   a scaled-down LVIS v1: the r/c/f class shares of LVIS v1 (337/461/405 of 1203), each class's
         count drawn from the real per-group quantiles of LVIS v1 train image counts (rare and common
         as they are, the frequent group's 101..1977 range compressed in log space just enough that the
         images hold LVIS's 3.6 categories each on average). See `lvis_train_targets`.

Images live at OUT_DIR/{split}/{file_name} and `coco_url` is
http://images.cocodataset.org/{split}/{file_name}, the layout mmdet 3.3's LVISV1Dataset expects with
data_root=OUT_DIR, data_prefix=dict(img='').
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ecmctl.core.errors import UserError
from ecmctl.core.io import atomic_write_text
from ecmctl.dataset.lvis import builtin_counts, frequency_group

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "ring", "cross", "star", "diamond", "bar",
                           "crescent", "arrow", "hourglass", "semicircle")
COLOURS: dict[str, tuple[int, int, int]] = {  # RGB, saturated and far apart in hue (white: far in value)
    "red": (225, 35, 35),
    "green": (35, 195, 45),
    "blue": (45, 75, 235),
    "yellow": (240, 220, 30),
    "magenta": (215, 45, 215),
    "cyan": (30, 210, 225),
    "orange": (245, 135, 20),
    "white": (238, 238, 238),
}
TEXTURES: tuple[str, ...] = ("solid", "striped")
# The first 96 classes use the original 8 shapes x 6 colours, in their original order, so sets of up to 96
# classes are byte-identical to those of earlier versions; later classes add the 4 shapes and 2 colours.
BASE_SHAPES, BASE_COLOURS = 8, 6
MAX_CLASSES = len(SHAPES) * len(COLOURS) * len(TEXTURES)  # 192
MAX_OBJECTS = 6  # objects per image (and distinct classes per image)
MIN_SIDE, MAX_SIDE = 0.12, 0.5  # object size as a fraction of the image side
MAX_OVERLAP = 0.2  # intersection / smaller box area: occlusion allowed but limited
DUPLICATE_PROB = 0.1  # chance that a class present in an image gets a second instance
SYNTH_DESCRIPTION = "ecmctl synthetic long-tailed dataset"
COCO_PREFIX = "http://images.cocodataset.org/"  # stripped by mmdet's LVISV1Dataset
DATE = "2024-01-01 00:00:00"  # fixed, so that files are byte-identical across runs
LICENSE = {"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}


@dataclass(frozen=True)
class ClassSpec:
    """One category: what it looks like and how it is named."""

    shape: str
    colour: str
    texture: str
    repeat: int = 0  # > 0: a look already taken by another class (repeat_looks), named apart by this number

    @property
    def name(self) -> str:
        base = f"{self.colour}_{self.shape}"
        base = base if self.texture == "solid" else f"{self.texture}_{base}"
        return f"{base}_{self.repeat}" if self.repeat else base

    @property
    def definition(self) -> str:
        return f"a {self.texture} {self.colour} {self.shape} drawn on a noisy grey background"


# ---------------------------------------------------------------- checks


def _check_args(out_dir: Path, num_classes: int, train_images: int, val_images: int, image_size: int,
                image_height: int, seed: int, profile: str = "small", repeat_looks: bool = False) -> None:
    """Refuse impossible requests up front, naming the CLI option and the fix."""
    if profile not in PROFILES:
        raise UserError(f"--profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    if num_classes < 3:
        raise UserError(f"--classes must be at least 3 (one per frequency group r/c/f), got {num_classes}")
    if num_classes > MAX_CLASSES and not repeat_looks:
        raise UserError(f"--classes must be at most {MAX_CLASSES} (shapes x colours x textures), "
                        f"got {num_classes}; --repeat-looks allows more, for speed tests only")
    need = math.ceil(num_classes / MAX_OBJECTS)
    for opt, n in (("--train-images", train_images), ("--val-images", val_images)):
        if n < 1:
            raise UserError(f"{opt} must be at least 1, got {n}")
        if n < need:
            raise UserError(f"{opt} {n} is too few for {num_classes} classes (at most {MAX_OBJECTS} per "
                            f"image): use at least {need} or lower --classes")
    for opt, n in (("--image-size", image_size), ("--image-height", image_height)):
        if n < 32:
            raise UserError(f"{opt} must be at least 32 pixels, got {n}")
    if seed < 0:
        raise UserError(f"--seed must be a non-negative integer, got {seed}")
    if profile == "lvis":
        need = lvis_min_train_images(num_classes)
        if train_images < need:
            raise UserError(f"--train-images {train_images} is too few for {num_classes} classes with --profile "
                            f"lvis: its {lvis_group_sizes(num_classes)[2]} frequent classes need more than 100 "
                            f"images each at {LVIS_CATEGORIES_PER_IMAGE:.1f} categories per image; use at "
                            f"least {need} or lower --classes")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a directory; remove it or choose another OUT_DIR")


# ---------------------------------------------------------------- classes and counts


def _looks(num_classes: int) -> list[ClassSpec]:
    """The first `num_classes` (at most MAX_CLASSES) looks, interleaved so any prefix mixes shapes and colours.

    The first 96 are the original vocabulary (8 shapes x 6 colours x 2 textures) in the original order;
    the next 96 are every combination with one of the added shapes or colours, in the same kind of
    interleaving (shape fastest, colour shifted by one per round), solid first.
    """
    colours = list(COLOURS)
    specs = []
    n_sc = BASE_SHAPES * BASE_COLOURS
    for k in range(min(num_classes, n_sc * len(TEXTURES))):
        j, texture = k % n_sc, TEXTURES[k // n_sc]
        shape = j % BASE_SHAPES
        colour = (shape + j // BASE_SHAPES) % BASE_COLOURS  # a distinct colour per shape within a texture
        specs.append(ClassSpec(SHAPES[shape], colours[colour], texture))
    base = set(specs)
    for texture in TEXTURES:
        for shift in range(len(colours)):
            for shape in range(len(SHAPES)):
                if len(specs) >= num_classes:
                    return specs
                spec = ClassSpec(SHAPES[shape], colours[(shape + shift) % len(colours)], texture)
                if shape >= BASE_SHAPES or (shape + shift) % len(colours) >= BASE_COLOURS:
                    assert spec not in base
                    specs.append(spec)
    return specs


def class_specs(num_classes: int) -> list[ClassSpec]:
    """The first `num_classes` categories. Beyond MAX_CLASSES the looks repeat under numbered names
    (repeat_looks): LVIS's 1203 classes for speed tests, where no detector could tell the repeats apart."""
    looks = _looks(min(num_classes, MAX_CLASSES))
    return [looks[k] if k < MAX_CLASSES else replace(looks[k % MAX_CLASSES], repeat=k // MAX_CLASSES)
            for k in range(num_classes)]


def class_names(num_classes: int) -> list[str]:
    """The category names of a synthetic set of `num_classes` classes, in the order of its `categories`."""
    return [s.name for s in class_specs(num_classes)]


def _group_sizes(num_classes: int) -> tuple[int, int, int]:
    """About a third of the classes in each designed group (frequent, common, rare)."""
    n_r = n_c = round(num_classes / 3)
    return num_classes - n_r - n_c, n_c, n_r


def train_targets(num_classes: int, n_images: int) -> np.ndarray:
    """Designed train image counts by frequency rank: log-spaced within each band of the LVIS rule.

    For 400 images the frequent band spans 160..104, common 90..12 and rare 10..1 images.
    """
    n_f, n_c, n_r = _group_sizes(num_classes)
    f = np.geomspace(0.40 * n_images, 0.26 * n_images, n_f)
    c = np.geomspace(0.225 * n_images, 0.03 * n_images, n_c)
    r = np.geomspace(min(10.0, max(1.0, c[-1] if n_c else 10.0)), 1.0, n_r)
    return np.rint(np.concatenate([f, c, r])).astype(int)


# LVIS v1 train: 100,170 images, 1203 categories, sum of per-category image counts 360,952 (3.6 per image).
LVIS_TRAIN_IMAGES = 100_170
LVIS_CATEGORIES_PER_IMAGE = 360_952 / LVIS_TRAIN_IMAGES
FREQUENT_MIN = 101  # LVIS's rule: frequent means more than 100 training images


@functools.cache
def lvis_image_counts() -> dict[str, np.ndarray]:
    """LVIS v1 train image counts per category, sorted ascending, by frequency group (r, c, f); read once
    (read-only arrays: every profile computation shares them)."""
    cats = builtin_counts("lvis_v1")["categories"]
    out = {g: np.sort([c["image_count"] for c in cats if c["frequency"] == g]) for g in ("r", "c", "f")}
    for values in out.values():
        values.setflags(write=False)
    return out


def lvis_group_sizes(num_classes: int) -> tuple[int, int, int]:
    """(rare, common, frequent) class counts in LVIS v1's proportions (337/461/405 of 1203), each >= 1."""
    counts = lvis_image_counts()
    total = sum(len(v) for v in counts.values())
    n_r = max(1, round(num_classes * len(counts["r"]) / total))
    n_c = max(1, round(num_classes * len(counts["c"]) / total))
    return n_r, n_c, num_classes - n_r - n_c


def lvis_quantiles(values: np.ndarray, n: int) -> np.ndarray:
    """n real values of a sorted sample at the mid-quantiles (i + 0.5) / n, largest first."""
    probs = (np.arange(n) + 0.5) / n
    return np.quantile(values, probs, method="inverted_cdf")[::-1].astype(float)


def _frequent_counts(q: np.ndarray, alpha: float) -> np.ndarray:
    """LVIS frequent counts compressed in log space towards 101: 101 * (q / 101) ** alpha."""
    return np.maximum(FREQUENT_MIN, np.rint(FREQUENT_MIN * (q / FREQUENT_MIN) ** alpha)).astype(int)


def lvis_min_train_images(num_classes: int) -> int:
    """The fewest train images the lvis profile can hold `num_classes` in (every frequent class at 101)."""
    counts = lvis_image_counts()
    n_r, n_c, n_f = lvis_group_sizes(num_classes)
    slots = (np.rint(lvis_quantiles(counts["r"], n_r)).sum() + np.rint(lvis_quantiles(counts["c"], n_c)).sum()
             + FREQUENT_MIN * n_f)
    return max(FREQUENT_MIN if n_f else 1, math.ceil(slots / LVIS_CATEGORIES_PER_IMAGE))


def lvis_train_targets(num_classes: int, n_images: int) -> tuple[np.ndarray, float]:
    """Designed train image counts by rank (largest first) of a scaled-down LVIS v1, and the compression.

    - Group sizes: LVIS v1's class shares (`lvis_group_sizes`).
    - Rare and common classes: the real LVIS v1 image counts at each group's mid-quantiles. The rule's
      thresholds (10, 100) are absolute, so these bands need no rescaling.
    - Frequent classes: LVIS v1's frequent counts (101..1977) at the mid-quantiles, mapped to
      101 * (q / 101) ** alpha: the same shape in log space, compressed towards 101. alpha in [0, 1] is the
      largest value at which the images hold at most LVIS's 3.6 categories each (alpha = 1: no compression).
    """
    counts = lvis_image_counts()
    n_r, n_c, n_f = lvis_group_sizes(num_classes)
    rare = np.rint(lvis_quantiles(counts["r"], n_r)).astype(int)
    common = np.rint(lvis_quantiles(counts["c"], n_c)).astype(int)
    q_f = lvis_quantiles(counts["f"], n_f)
    budget = LVIS_CATEGORIES_PER_IMAGE * n_images - rare.sum() - common.sum()
    lo, hi = 0.0, 1.0
    if _frequent_counts(q_f, hi).sum() <= budget:
        lo = hi
    else:
        for _ in range(40):  # bisection: the total is non-decreasing in alpha
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if _frequent_counts(q_f, mid).sum() <= budget else (lo, mid)
    frequent = np.minimum(_frequent_counts(q_f, lo), n_images)
    return np.concatenate([frequent, common, rare]), float(lo)


def val_targets(train_counts: np.ndarray, n_images: int) -> np.ndarray:
    """Val image counts, flatter than train (counts**0.35), with >= 3 images per class where possible.

    Why: like LVIS val, rare classes are over-represented relative to train so APr is measurable.
    """
    w = train_counts.astype(float) ** 0.35
    v = np.rint(w / w.sum() * 3.0 * n_images).astype(int)
    return np.maximum(v, min(3, n_images))


def fit_counts(targets: np.ndarray, n_images: int, mean_load: float = 4.0) -> np.ndarray:
    """Make per-class image counts feasible: 1..n_images each, total between n_images and mean_load*n_images.

    The lower total keeps every image non-empty; the upper one keeps placement with limited occlusion easy.
    Adjustments go to the most frequent classes first, so the tail is untouched.
    """
    t = np.clip(targets.astype(int), 1, n_images)
    order = np.argsort(-t, kind="stable")
    hi = max(int(mean_load * n_images), len(t))
    while t.sum() < n_images:
        grow = [i for i in order if t[i] < n_images]
        for i in grow[: n_images - t.sum()]:
            t[i] += 1
    while t.sum() > hi:
        i = int(np.argmax(t))
        t[i] -= 1
    return t


def assign_classes(counts: np.ndarray, n_images: int, rng: np.random.Generator) -> list[list[int]]:
    """Place class c in exactly counts[c] distinct images, <= MAX_OBJECTS per image, no image empty."""
    load = np.zeros(n_images, dtype=int)
    members: list[list[int]] = [[] for _ in range(n_images)]
    for c in np.argsort(-counts, kind="stable"):
        free = np.flatnonzero(load < MAX_OBJECTS)
        w = (MAX_OBJECTS - load[free]).astype(float) ** 2
        for i in np.sort(rng.choice(free, size=int(counts[c]), replace=False, p=w / w.sum())):
            members[i].append(int(c))
            load[i] += 1
    for empty in np.flatnonzero(load == 0):  # move one class from the fullest image
        donor = int(np.argmax(load))
        members[empty].append(members[donor].pop(int(rng.integers(len(members[donor])))))
        load[donor] -= 1
        load[empty] += 1
    return members


# ---------------------------------------------------------------- geometry and drawing


def _unit_polygons(shape: str) -> list[np.ndarray]:
    """Contours of a shape of radius ~1 centred at 0; a second contour is a hole (the ring)."""
    ang = lambda n, start=0.0: start + 2 * np.pi * np.arange(n) / n  # noqa: E731
    circ = lambda n, r=1.0, start=0.0: np.stack(  # noqa: E731
        [r * np.cos(ang(n, start)), r * np.sin(ang(n, start))], 1)
    if shape == "circle":
        return [circ(32)]
    if shape == "ring":
        return [circ(32), circ(32, 0.55)[::-1]]
    if shape == "square":
        return [np.array([[-0.85, -0.85], [0.85, -0.85], [0.85, 0.85], [-0.85, 0.85]])]
    if shape == "diamond":
        return [np.array([[0.0, -1.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])]
    if shape == "triangle":
        return [circ(3, 1.0, -np.pi / 2) + [0.0, 0.2]]
    if shape == "star":
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        a = ang(10, -np.pi / 2)
        return [np.stack([radii * np.cos(a), radii * np.sin(a)], 1)]
    if shape == "cross":
        h = 0.33
        return [np.array([[-h, -1], [h, -1], [h, -h], [1, -h], [1, h], [h, h], [h, 1], [-h, 1], [-h, h],
                          [-1, h], [-1, -h], [-h, -h]], dtype=float)]
    if shape == "bar":
        return [np.array([[-1.0, -0.33], [1.0, -0.33], [1.0, 0.33], [-1.0, 0.33]])]
    if shape == "crescent":  # the unit disc minus a disc of radius 0.97 centred at (0.6, 0), tips at +-70 deg
        outer = np.deg2rad(np.linspace(70.0, 290.0, 23))
        inner = np.deg2rad(np.linspace(254.7, 105.3, 17))
        pts = np.concatenate([np.stack([np.cos(outer), np.sin(outer)], 1),
                              np.stack([0.6 + 0.9745 * np.cos(inner), 0.9745 * np.sin(inner)], 1)])
        return [pts + [0.33, 0.0]]
    if shape == "arrow":
        return [np.array([[-1.0, -0.22], [0.2, -0.22], [0.2, -0.65], [1.0, 0.0], [0.2, 0.65], [0.2, 0.22],
                          [-1.0, 0.22]])]
    if shape == "hourglass":
        return [np.array([[-0.8, -1.0], [0.8, -1.0], [0.12, 0.0], [0.8, 1.0], [-0.8, 1.0], [-0.12, 0.0]])]
    if shape == "semicircle":  # the upper half disc, centred on its box
        a = np.linspace(np.pi, 2 * np.pi, 17)
        return [np.stack([np.cos(a), np.sin(a) + 0.5], 1)]
    raise ValueError(f"unknown shape {shape!r}")


def shape_contours(shape: str, side: float, angle_deg: float) -> list[np.ndarray]:
    """The shape's contours, rotated and scaled to a `side`-pixel extent, centred at the origin."""
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return [(p @ rot.T) * (side / 2.0) for p in _unit_polygons(shape)]


def annotation_polygon(contours: list[np.ndarray]) -> np.ndarray:
    """One COCO polygon for the shape; a hole is joined by a zero-width keyhole bridge."""
    if len(contours) == 1:
        return contours[0]
    outer, inner = contours
    return np.concatenate([outer, outer[:1], inner, inner[:1]])


def polygon_area(poly: np.ndarray) -> float:
    """Shoelace area; the keyhole bridge contributes nothing, so a ring gives outer - inner."""
    x, y = poly[:, 0], poly[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over the smaller box's area, boxes as x0, y0, x1, y1."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return float(w * h / small)


def place_object(shape: str, size: np.ndarray, boxes: list[np.ndarray],
                 rng: np.random.Generator) -> list[np.ndarray]:
    """Contours of one object, fully inside the image (`size` = width, height) and overlapping earlier
    boxes only a little.

    Shrinks the object after repeated failures; if nothing fits, keeps the least-overlapping try.
    """
    side = rng.uniform(MIN_SIDE, MAX_SIDE) * size.min()
    angle = 0.0 if shape in ("circle", "ring") else rng.uniform(-10.0, 10.0)
    best, best_ov = None, math.inf
    for attempt in range(40):
        if attempt and attempt % 10 == 0:
            side = max(MIN_SIDE * size.min(), side * 0.8)
        cont = shape_contours(shape, side, angle)
        pts = np.concatenate(cont)
        lo, hi = pts.min(0), pts.max(0)
        centre = rng.uniform(-lo, size - hi)
        moved = [c + centre for c in cont]
        box = np.concatenate([lo + centre, hi + centre])
        ov = max((_overlap(box, b) for b in boxes), default=0.0)
        if ov < best_ov:
            best, best_ov = moved, ov
        if ov <= MAX_OVERLAP:
            break
    assert best is not None
    return best


def background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A plain grey of random level with a faint tint: colour, not background, must carry the class."""
    level = rng.uniform(60, 170)
    tint = rng.uniform(-10, 10, size=3)
    return np.broadcast_to(level + tint, (height, width, 3)).astype(np.float32).copy()


def draw_object(img: np.ndarray, contours: list[np.ndarray], colour: tuple[int, int, int], texture: str,
                stripe_phase: float) -> None:
    """Anti-aliased fill of the contours (holes by even-odd), solid or diagonally striped."""
    height, width = img.shape[:2]
    mask = np.zeros((height, width), dtype=np.uint8)
    # COCO polygons use pixel-corner coordinates, OpenCV pixel centres: shift by half a pixel.
    pts = [np.rint((c - 0.5) * 16).astype(np.int32) for c in contours]
    cv2.fillPoly(mask, pts, 255, lineType=cv2.LINE_AA, shift=4)
    alpha = (mask.astype(np.float32) / 255.0)[..., None]
    paint = np.broadcast_to(np.asarray(colour, np.float32), img.shape)
    if texture == "striped":
        yy, xx = np.mgrid[0:height, 0:width]
        dark = ((xx + yy + stripe_phase) % 8) < 4
        paint = np.where(dark[..., None], paint * 0.3, paint)
    img *= 1.0 - alpha
    img += alpha * paint


# ---------------------------------------------------------------- splits


def _round(v: float) -> float:
    return round(float(v), 2)


def render_split(split: str, members: list[list[int]], specs: list[ClassSpec], width: int, height: int,
                 first_image_id: int, first_ann_id: int, out_dir: Path,
                 rng: np.random.Generator) -> tuple[list[dict], list[dict]]:
    """Draw and save every image of a split; return its LVIS `images` and `annotations` records."""
    size = np.array([width, height], dtype=float)
    img_dir = out_dir / split
    img_dir.mkdir(parents=True, exist_ok=True)
    all_ids = list(range(1, len(specs) + 1))
    images, anns = [], []
    ann_id = first_ann_id
    for k, classes in enumerate(members):
        image_id = first_image_id + k
        file_name = f"{image_id:012d}.png"
        objs = list(classes)
        for c in classes:
            if len(objs) < MAX_OBJECTS and rng.random() < DUPLICATE_PROB:
                objs.append(c)
        objs = [objs[i] for i in rng.permutation(len(objs))]
        img = background(width, height, rng)
        boxes: list[np.ndarray] = []
        for c in objs:
            spec = specs[c]
            cont = place_object(spec.shape, size, boxes, rng)
            draw_object(img, cont, COLOURS[spec.colour], spec.texture, float(rng.integers(8)))
            poly = np.clip(np.round(annotation_polygon(cont), 2), 0.0, size)
            lo, hi = poly.min(0), poly.max(0)
            boxes.append(np.concatenate([lo, hi]))
            anns.append({
                "id": ann_id, "image_id": image_id, "category_id": c + 1,
                "bbox": [_round(lo[0]), _round(lo[1]), _round(hi[0] - lo[0]), _round(hi[1] - lo[1])],
                "area": _round(polygon_area(poly)),
                "segmentation": [[_round(v) for v in poly.reshape(-1)]],
            })
            ann_id += 1
        noise = rng.normal(0.0, 6.0, size=(height, width, 1))  # grey noise: smaller PNGs
        img += noise.astype(np.float32)
        pixels = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        if not cv2.imwrite(str(img_dir / file_name), pixels[..., ::-1]):  # RGB -> BGR for OpenCV
            raise UserError(f"{img_dir / file_name}: could not write the image; check OUT_DIR is writable")
        present = {c + 1 for c in classes}
        absent = [i for i in all_ids if i not in present]
        n_neg = min(len(absent), int(rng.integers(2, 7)))
        neg = sorted(int(i) for i in rng.choice(absent, size=n_neg, replace=False)) if n_neg else []
        images.append({
            "id": image_id, "width": width, "height": height, "file_name": file_name,
            "coco_url": f"{COCO_PREFIX}{split}/{file_name}", "flickr_url": "",
            "license": LICENSE["id"], "date_captured": DATE,
            "neg_category_ids": neg,
            "not_exhaustive_category_ids": [],  # every instance is annotated
        })
    return images, anns


def category_records(specs: list[ClassSpec], train_anns: list[dict]) -> list[dict]:
    """LVIS categories; counts and frequency from the TRAIN split, as in LVIS (same in both files)."""
    inst, imgs = _split_counts(train_anns, len(specs))
    return [{"id": i + 1, "name": s.name, "synset": f"{s.name}.n.01", "synonyms": [s.name], "def": s.definition,
             "frequency": frequency_group(imgs[i]), "image_count": imgs[i], "instance_count": inst[i]}
            for i, s in enumerate(specs)]


def describe(split: str, seed: int, profile: str) -> str:
    """info.description of a generated file; the small profile keeps the wording of earlier versions."""
    extra = "" if profile == "small" else f", profile {profile}"
    return f"{SYNTH_DESCRIPTION} ({split}, seed {seed}{extra})"


def _dataset_json(split: str, images: list[dict], anns: list[dict], cats: list[dict], seed: int,
                  profile: str = "small") -> str:
    """Compact JSON with a fixed key order: identical arguments give identical bytes."""
    info = {
        "description": describe(split, seed, profile),
        "url": "", "version": "1.0", "year": 2024, "contributor": "ecmctl synth", "date_created": DATE,
    }
    obj = {"info": info, "licenses": [LICENSE], "images": images, "annotations": anns, "categories": cats}
    return json.dumps(obj, separators=(",", ":"), allow_nan=False) + "\n"


def _split_counts(anns: list[dict], num_classes: int) -> tuple[list[int], list[int]]:
    inst, imgs = [0] * num_classes, [set() for _ in range(num_classes)]
    for a in anns:
        inst[a["category_id"] - 1] += 1
        imgs[a["category_id"] - 1].add(a["image_id"])
    return inst, [len(s) for s in imgs]


# ---------------------------------------------------------------- entry points


# Each profile's defaults (`ecmctl synth --profile P`, conf/dataset/synth*.yaml). lvis: 96 classes (27 r,
# 37 c, 32 f), 1600 train images (the frequent group needs > 100 images per class), val 0.2x train as in
# LVIS v1 (19,809 val / 100,170 train images).
PROFILES: dict[str, dict[str, int]] = {
    "lvis": {"classes": 96, "train_images": 1600, "val_images": 320, "image_size": 128},
    "small": {"classes": 24, "train_images": 400, "val_images": 120, "image_size": 128},
}


def design_counts(profile: str, num_classes: int, train_images: int) -> tuple[np.ndarray, dict]:
    """Feasible train image counts by rank (largest first) for a profile, and a record of the design."""
    if profile == "lvis":
        targets, alpha = lvis_train_targets(num_classes, train_images)
        counts = fit_counts(targets, train_images, mean_load=LVIS_CATEGORIES_PER_IMAGE)
        return counts, {"profile": profile, "frequent_alpha": round(alpha, 4),
                        "categories_per_image": round(float(counts.sum()) / train_images, 3)}
    counts = fit_counts(train_targets(num_classes, train_images), train_images)
    return counts, {"profile": profile, "categories_per_image": round(float(counts.sum()) / train_images, 3)}


def make_dataset(out_dir: str | os.PathLike, num_classes: int | None = None, train_images: int | None = None,
                 val_images: int | None = None, image_size: int | None = None, seed: int = 0,
                 profile: str = "small", image_height: int | None = None,
                 repeat_looks: bool = False) -> dict[str, Any]:
    """Write OUT_DIR/{train,val}/*.png and OUT_DIR/{train,val}.json; return a summary.

    Sizes left as None take the profile's defaults (PROFILES). Images are `image_size` wide and
    `image_height` (default: `image_size`) high. JSON files are written last and atomically, so their
    presence means the images are complete.
    """
    out = Path(out_dir)
    defaults = PROFILES.get(profile, PROFILES["small"])
    num_classes = defaults["classes"] if num_classes is None else num_classes
    train_images = defaults["train_images"] if train_images is None else train_images
    val_images = defaults["val_images"] if val_images is None else val_images
    image_size = defaults["image_size"] if image_size is None else image_size
    height = image_size if image_height is None else image_height
    _check_args(out, num_classes, train_images, val_images, image_size, height, seed, profile, repeat_looks)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    specs = class_specs(num_classes)
    rank_to_class = rng.permutation(num_classes)  # which class gets which place in the long tail
    t_rank, design = design_counts(profile, num_classes, train_images)
    v_rank = fit_counts(val_targets(t_rank, val_images), val_images)
    t_counts, v_counts = np.empty_like(t_rank), np.empty_like(v_rank)
    t_counts[rank_to_class], v_counts[rank_to_class] = t_rank, v_rank

    splits = {}
    image_id, ann_id = 1, 1
    for split, counts, n in (("train", t_counts, train_images), ("val", v_counts, val_images)):
        members = assign_classes(counts, n, rng)
        images, anns = render_split(split, members, specs, image_size, height, image_id, ann_id, out, rng)
        splits[split] = (images, anns)
        image_id += n
        ann_id += len(anns)

    cats = category_records(specs, splits["train"][1])
    paths = {}
    for split, (images, anns) in splits.items():
        text = _dataset_json(split, images, anns, cats, seed, profile)
        paths[split] = atomic_write_text(out / f"{split}.json", text)

    t_inst, t_imgs = [c["instance_count"] for c in cats], [c["image_count"] for c in cats]
    v_inst, v_imgs = _split_counts(splits["val"][1], num_classes)
    return {
        "out_dir": str(out),
        "train_json": str(paths["train"]), "val_json": str(paths["val"]),
        "train_images_dir": str(out / "train"), "val_images_dir": str(out / "val"),
        "num_classes": num_classes, "image_size": image_size, "image_height": height, "seed": seed,
        "profile": profile,
        "design": design,
        "splits": {s: {"images": len(im), "annotations": len(an)} for s, (im, an) in splits.items()},
        "groups": {g: [c["name"] for c in cats if c["frequency"] == g] for g in ("r", "c", "f")},
        "classes": [
            {"id": c["id"], "name": c["name"], "frequency": c["frequency"],
             "train_images": t_imgs[i], "train_instances": t_inst[i],
             "val_images": v_imgs[i], "val_instances": v_inst[i]}
            for i, c in enumerate(cats)
        ],
    }
