"""What the long-tail losses ECM is compared against (EQLv2, EQL, Federated loss, EFL) share.

- `class_image_counts`: the dataset's per-class image counts (and image total) from ecmctl's counts file
  (`ecmctl count`), in the class order of the head (the order of ``categories`` in the annotation file).
- `world_size` / `all_reduce_sum`: statistics summed over the ranks of a torch.distributed job (a single
  process leaves them as they are).
- `foreground_accuracy`: the ``acc_classes`` these RoI losses report to mmdet's BBoxHead (``custom_accuracy``).
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist
from mmdet.models.losses.accuracy import accuracy
from torch import Tensor

from ecmctl.core.errors import UserError


def class_image_counts(counts_file: str | os.PathLike, who: str) -> tuple[np.ndarray, int | None]:
    """(image count of each class in head order, number of images of the annotation file or None) from a counts
    file (`ecmctl count`, or a built-in name such as ``lvis_v1``)."""
    from ecmctl.dataset.counting import load_counts

    if counts_file is None or str(counts_file) == "":
        raise UserError(f"{who} needs the dataset's class counts: pass counts_file=COUNTS.json (`ecmctl count "
                        "TRAIN.json -o COUNTS.json`; `ecmctl train` passes the run's inputs/counts.json)")
    doc, _ = load_counts(os.path.expanduser(str(counts_file)))
    counts = []
    for c in doc["categories"]:
        n = c.get("image_count")
        if isinstance(n, bool) or not isinstance(n, (int, float)) or not np.isfinite(n) or n < 0:
            raise UserError(f"{counts_file}: category {c.get('name')!r} has no valid 'image_count' ({n!r}); "
                            "regenerate the file with `ecmctl count`")
        counts.append(float(n))
    num_images = (doc.get("source") or {}).get("num_images")
    return np.asarray(counts, dtype=np.float64), (int(num_images) if isinstance(num_images, int) else None)


def check_classes(found: int, expected: int, counts_file: str, what: str) -> None:
    """A head's class count must be the counts file's."""
    if found != expected:
        raise UserError(f"{counts_file}: the counts file has {expected} classes, but {what} has {found}; use the "
                        "counts of this model's training set or set the head's num_classes to match")


def world_size() -> int:
    """Processes of the torch.distributed job this process belongs to (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(t: Tensor) -> Tensor:
    """`t` summed over every rank, in place (unchanged in a single process)."""
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


@torch.no_grad()
def foreground_accuracy(fg_scores: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Top-1 accuracy (%) of the foreground scores on foreground RoIs (labels < num_classes)."""
    pos = (labels >= 0) & (labels < num_classes)
    return accuracy(fg_scores[pos], labels[pos])
