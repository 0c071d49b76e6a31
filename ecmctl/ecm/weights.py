"""The weights file: per-class margins and weights from a counts file and an optional background ratio."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from ecmctl.core.errors import UserError
from ecmctl.core.io import atomic_write_json, check_output_dir, load_schema
from ecmctl.core.schemas import BACKGROUND, WEIGHTS_SCHEMA
from ecmctl.dataset.counting import load_counts
from ecmctl.ecm.margins import compute_margins


def weights_document(counts: dict, counts_sha256: str, bg_ratio: float | None = None,
                     min_count: int | None = None, source: str = "counts") -> dict:
    """Compute the weights document (schema ecmctl/weights@1) for every class in counts order."""
    if bg_ratio is not None and (not math.isfinite(bg_ratio) or bg_ratio <= 0):
        raise UserError(f"--bg-ratio must be a finite number > 0, got {bg_ratio}")
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
    entries = [{"id": c["id"], "name": c["name"]} for c in cats]
    if bg_ratio is not None:
        entries.append({"id": None, "name": BACKGROUND})
    classes = []
    for i, e in enumerate(entries):
        classes.append({**e, "n_pos": float(m.n_pos[i]), "n_neg": float(m.n_neg[i]),
                        "margin_pos": float(m.margin_pos[i]), "margin_neg": float(m.margin_neg[i]),
                        "log_w_pos": float(m.log_w_pos[i]), "log_w_neg": float(m.log_w_neg[i]),
                        "det_weight": float(m.det_weight[i])})
    return {"schema": WEIGHTS_SCHEMA, "bg_ratio": bg_ratio, "counts_sha256": counts_sha256, "classes": classes}


def write_weights(counts_path: str | os.PathLike, out: str | os.PathLike, bg_ratio: float | None = None,
                  min_count: int | None = None) -> dict:
    """`ecmctl weights`: counts file (or built-in name) -> weights file, written atomically."""
    check_output_dir(out)
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

    @property
    def num_foreground(self) -> int:
        return len(self.names) - int(self.has_background)


def load_weights(path: str | os.PathLike) -> ClassWeights:
    doc = load_schema(path, WEIGHTS_SCHEMA)
    classes = doc.get("classes")
    if not isinstance(classes, list) or not classes:
        raise UserError(f"{path}: field 'classes' is missing or empty; regenerate it with `ecmctl weights`")
    try:
        arr = {k: np.array([c[k] for c in classes], dtype=np.float64)
               for k in ("log_w_pos", "log_w_neg", "det_weight")}
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: a class entry lacks a numeric field ({e}); regenerate it") from None
    return ClassWeights(
        ids=[c.get("id") for c in classes],
        names=[c.get("name") for c in classes],
        has_background=classes[-1].get("name") == BACKGROUND,
        **arr,
    )
