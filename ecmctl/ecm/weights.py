"""The weights file: per-class margins and weights from a counts file and an optional background ratio."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields

import numpy as np

from ecmctl.core.errors import UserError
from ecmctl.core.io import atomic_write_json, check_output, load_schema
from ecmctl.core.schemas import BACKGROUND, MAX_BG_RATIO, WEIGHTS_SCHEMA
from ecmctl.dataset.counting import load_counts
from ecmctl.dataset.lvis import BUILTIN_COUNTS
from ecmctl.ecm.margins import Margins, compute_margins

NUMERIC = tuple(f.name for f in fields(Margins))  # the per-class numbers of a weights file


def weights_file_names(stages: int, foreground: bool = False) -> list[str]:
    """The weights files of a calibration or run whose detector has `stages` classification sites with a
    background class (RoI stages, no-object query heads), each with its own r: weights.json for one, one
    weights_stage{i}.json per stage for several; then, for `foreground` (foreground-only sites: dense heads,
    Sparse R-CNN, focal DETRs), weights.json when there is no background stage, else weights_fg.json.
    Their stems are the keys under a run's inputs."""
    names = ["weights.json"] if stages == 1 else [f"weights_stage{i}.json" for i in range(stages)]
    if foreground or stages == 0:
        names.append("weights_fg.json" if stages else "weights.json")
    return names


MAX_STAGES = 16  # more background stages than any mmdet detector has (Cascade and HTC: 3)
EVERY_WEIGHTS_FILE = ("weights.json", "weights_fg.json", *(f"weights_stage{i}.json" for i in range(MAX_STAGES)))


def weights_document(counts: dict, counts_sha256: str, bg_ratio: float | None = None,
                     min_count: int | None = None, source: str = "counts") -> dict:
    """Compute the weights document (schema ecmctl/weights@1) for every class in counts order. It records
    where it comes from: the counts file's sha256 and the annotation file those counts were made from."""
    if bg_ratio is not None and (not math.isfinite(bg_ratio) or not 0 < bg_ratio <= MAX_BG_RATIO):
        raise UserError(f"--bg-ratio must be a finite number > 0 and <= {MAX_BG_RATIO:g} (a ratio of sampled "
                        f"RoIs), got {bg_ratio}")
    cats = counts["categories"]
    n = np.array([c["instance_count"] for c in cats], dtype=np.float64)
    if min_count is not None:
        if min_count < 1:
            raise UserError(f"--min-count must be >= 1, got {min_count}")
        n = np.maximum(n, min_count)
    zero = [c["name"] for c, k in zip(cats, n) if k <= 0]
    if zero:
        shown = ", ".join(zero[:5]) + (f" and {len(zero) - 5} more" if len(zero) > 5 else "")
        raise UserError(f"{source}: {len(zero)} categories have zero instances ({shown}); "
                        "pass --min-count 1 to floor them explicitly")
    m = compute_margins(n, bg_ratio)
    values = np.stack([getattr(m, k) for k in NUMERIC])
    if not np.isfinite(values).all():
        raise UserError(f"{source}: the counts (total {n.sum():g} instances) give non-finite margins"
                        + (f" with --bg-ratio {bg_ratio:g}" if bg_ratio is not None else "")
                        + "; check the counts file and the background ratio")
    entries = [{"id": c["id"], "name": c["name"]} for c in cats]
    if bg_ratio is not None:
        entries.append({"id": None, "name": BACKGROUND})
    classes = []
    for i, e in enumerate(entries):
        classes.append({**e, **{k: float(getattr(m, k)[i]) for k in NUMERIC}})
    src = counts.get("source") or {}
    return {"schema": WEIGHTS_SCHEMA, "bg_ratio": bg_ratio, "min_count": min_count, "counts_sha256": counts_sha256,
            "annotations": src.get("path"), "annotations_sha256": src.get("sha256"), "classes": classes}


def write_weights(counts_path: str | os.PathLike, out: str | os.PathLike, bg_ratio: float | None = None,
                  min_count: int | None = None) -> dict:
    """`ecmctl weights`: counts file (or built-in name) -> weights file, written atomically. The output never
    replaces the counts file or anything but an earlier weights file."""
    builtin = str(counts_path) in BUILTIN_COUNTS
    check_output(out, WEIGHTS_SCHEMA, inputs=() if builtin else (counts_path,))
    counts, sha = load_counts(counts_path)
    doc = weights_document(counts, sha, bg_ratio, min_count, source=str(counts_path))
    atomic_write_json(out, doc)
    return doc


@dataclass(frozen=True)
class ClassWeights:
    """The arrays a loss needs, loaded once from a weights file."""

    ids: list
    names: list[str]
    log_w_pos: np.ndarray
    log_w_neg: np.ndarray
    det_weight: np.ndarray
    has_background: bool
    n_pos: np.ndarray | None = None
    doc: dict | None = field(default=None, repr=False, compare=False)  # the file's content (provenance)

    @property
    def num_foreground(self) -> int:
        return len(self.names) - int(self.has_background)


def _bad(path, msg: str) -> UserError:
    return UserError(f"{path}: {msg}; regenerate it with `ecmctl weights` (or `ecmctl calibrate`)")


def check_weights_document(doc: dict, path: str | os.PathLike = "weights file") -> None:
    """Values, not only layout: every number finite, det_weight > 0, and margins, weights and detection
    weights equal (within rounding) to what `compute_margins` gives for the file's own n_pos and bg_ratio,
    so an edited or corrupted file is refused. Class ids unique, the background (if any) last."""
    classes = doc.get("classes")
    if not isinstance(classes, list) or not classes:
        raise _bad(path, "field 'classes' is missing or empty")
    for i, c in enumerate(classes):
        if not isinstance(c, dict):
            raise _bad(path, f"class entry #{i} is not an object")
        for k in NUMERIC:
            v = c.get(k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise _bad(path, f"class {c.get('name')!r}: field {k!r} is {v!r}, not a finite number")
        if not isinstance(c.get("name"), str):
            raise _bad(path, f"class entry #{i} has no string 'name'")
        if c["det_weight"] <= 0 or c["n_pos"] <= 0 or c["n_neg"] <= 0:
            k = next(k for k in ("n_pos", "n_neg", "det_weight") if c[k] <= 0)
            raise _bad(path, f"class {c['name']!r}: {k} = {c[k]!r} must be > 0")
    has_bg = classes[-1]["name"] == BACKGROUND
    fg = classes[:-1] if has_bg else classes
    if has_bg and classes[-1].get("id") is not None:
        raise _bad(path, f"the {BACKGROUND} class has id {classes[-1].get('id')!r}, expected null")
    ids = [c.get("id") for c in fg]
    for c in fg:
        if c["name"] == BACKGROUND:
            raise _bad(path, f"{BACKGROUND} must be the last class")
        if isinstance(c.get("id"), bool) or not isinstance(c.get("id"), int):
            raise _bad(path, f"class {c['name']!r} has id {c.get('id')!r}, expected an integer")
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise _bad(path, f"class id {dup} appears {ids.count(dup)} times")
    r = doc.get("bg_ratio")
    if has_bg != (r is not None):
        raise _bad(path, f"bg_ratio is {r!r} but the file {'has' if has_bg else 'has no'} {BACKGROUND} class")
    if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r)
                          or not 0 < r <= MAX_BG_RATIO):
        raise _bad(path, f"bg_ratio is {r!r}, expected a finite number in (0, {MAX_BG_RATIO:g}]")
    for key in ("counts_sha256", "annotations_sha256"):
        if not isinstance(doc.get(key), (str, type(None))):
            raise _bad(path, f"field {key!r} is {doc.get(key)!r}, not a sha256 hex digest")
    try:
        m = compute_margins([c["n_pos"] for c in fg], r)
    except ValueError as e:
        raise _bad(path, str(e)) from None
    for k in NUMERIC:
        got = np.array([c[k] for c in classes], dtype=np.float64)
        want = getattr(m, k)
        bad = np.flatnonzero(~np.isclose(got, want, rtol=1e-6, atol=1e-9))
        if bad.size:
            i = int(bad[0])
            raise _bad(path, f"class {classes[i]['name']!r}: {k} = {got[i]!r}, but its n_pos and bg_ratio give "
                             f"{want[i]!r} (the file was edited or is corrupt)")


def load_weights(path: str | os.PathLike) -> ClassWeights:
    doc = load_schema(path, WEIGHTS_SCHEMA)
    check_weights_document(doc, path)
    classes = doc["classes"]
    arr = {k: np.array([c[k] for c in classes], dtype=np.float64) for k in ("log_w_pos", "log_w_neg", "det_weight")}
    return ClassWeights(
        ids=[c.get("id") for c in classes],
        names=[c.get("name") for c in classes],
        has_background=classes[-1].get("name") == BACKGROUND,
        n_pos=np.array([c["n_pos"] for c in classes], dtype=np.float64),
        doc=doc,
        **arr,
    )
