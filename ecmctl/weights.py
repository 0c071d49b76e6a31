"""The weights file: per-class margins and weights from a counts file and an optional background ratio."""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from importlib import resources

import numpy as np

from ecmctl.errors import UserError
from ecmctl.io import atomic_write_json, check_output_dir, load_schema, sha256_file
from ecmctl.margins import compute_margins
from ecmctl.schemas import BACKGROUND, COUNTS_SCHEMA, WEIGHTS_SCHEMA

BUILTIN_COUNTS = {"lvis_v1": "lvis_v1_categories.tsv"}


def builtin_counts(name: str) -> dict:
    """A counts document for a dataset whose statistics ship with ecmctl (LVIS v1 train)."""
    ref = resources.files("ecmctl.data") / BUILTIN_COUNTS[name]
    text = ref.read_text()
    rows = [line.split("\t") for line in text.strip().splitlines()]
    header, rows = rows[0], rows[1:]
    cats = []
    for row in rows:
        rec = dict(zip(header, row))
        cats.append({
            "id": int(rec["id"]),
            "name": rec["name"],
            "frequency": rec["frequency"],
            "instance_count": int(rec["instance_count"]),
            "image_count": int(rec["image_count"]),
        })
    return {
        "schema": COUNTS_SCHEMA,
        "source": {"path": f"builtin:{name}", "sha256": hashlib.sha256(text.encode()).hexdigest(),
                   "num_images": None, "num_annotations": sum(c["instance_count"] for c in cats)},
        "categories": cats,
    }


def load_counts(path_or_name: str | os.PathLike) -> tuple[dict, str]:
    """Load a counts file (or a built-in name); returns the document and its sha256."""
    if str(path_or_name) in BUILTIN_COUNTS:
        doc = builtin_counts(str(path_or_name))
        return doc, doc["source"]["sha256"]
    doc = load_schema(path_or_name, COUNTS_SCHEMA)
    if not isinstance(doc.get("categories"), list) or not doc["categories"]:
        raise UserError(f"{path_or_name}: field 'categories' is missing or empty; regenerate it with `ecmctl count`")
    for c in doc["categories"]:
        n = c.get("instance_count") if isinstance(c, dict) else None
        if isinstance(n, bool) or not isinstance(n, (int, float)) or not math.isfinite(n) or n < 0:
            name = c.get("name") if isinstance(c, dict) else c
            raise UserError(f"{path_or_name}: category {name!r} has no valid 'instance_count' ({n!r}); "
                            "regenerate the file with `ecmctl count`")
    return doc, sha256_file(path_or_name)


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


def weights_table(doc: dict, rows: int = 5):
    """A rich table of the rarest and most frequent classes' weights (and background)."""
    from rich.table import Table

    classes = doc["classes"]
    fg = [c for c in classes if c["name"] != BACKGROUND]
    order = sorted(fg, key=lambda c: c["n_pos"])
    shown = order[:rows] + (order[-rows:] if len(order) > 2 * rows else order[rows:])
    shown += [c for c in classes if c["name"] == BACKGROUND]
    title = f"ECM weights, {len(fg)} classes, bg_ratio={doc['bg_ratio']}"
    table = Table(title=title)
    for col in ("name", "n_pos", "n_neg", "margin_pos", "log_w_pos", "log_w_neg", "det_weight"):
        table.add_column(col, justify="left" if col == "name" else "right")
    for c in shown:
        table.add_row(c["name"], f"{c['n_pos']:.0f}", f"{c['n_neg']:.0f}", f"{c['margin_pos']:.4f}",
                      f"{c['log_w_pos']:.4f}", f"{c['log_w_neg']:.4f}", f"{c['det_weight']:.4f}")
    return table
