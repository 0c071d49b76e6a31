"""LVIS conventions ecmctl keeps everywhere: the frequency rule, and LVIS v1's own per-category statistics
(shipped as lvis_v1_categories.tsv) as a built-in counts document."""

from __future__ import annotations

import hashlib
from importlib import resources

from ecmctl.core.schemas import COUNTS_SCHEMA

FREQUENCY_RULE = "LVIS rule on image counts: r <= 10 images (0 included), c 11-100, f > 100"


def frequency_group(image_count: int) -> str:
    """LVIS frequency group from a training image count: r (0-10 images), c (11-100), f (> 100)."""
    return "r" if image_count <= 10 else ("c" if image_count <= 100 else "f")


BUILTIN_COUNTS = {"lvis_v1": "lvis_v1_categories.tsv"}


def builtin_counts(name: str) -> dict:
    """A counts document for a dataset whose statistics ship with ecmctl (LVIS v1 train)."""
    ref = resources.files("ecmctl.dataset") / BUILTIN_COUNTS[name]
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


