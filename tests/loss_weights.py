"""Weights files for the loss tests: a counts document made from a list of instance counts, the weights file
`ecmctl weights` would write for it, and the loss constants read straight from such a file."""

from __future__ import annotations

import json

import torch

from ecmctl.ecm.weights import load_weights, weights_document


def counts_doc(counts) -> dict:
    return {
        "schema": "ecmctl/counts@1",
        "source": {"path": "synthetic", "sha256": "0" * 64, "num_images": 10,
                   "num_annotations": int(sum(counts))},
        "categories": [{"id": i + 1, "name": f"cls{i}", "frequency": "f", "instance_count": int(n),
                        "image_count": int(n)} for i, n in enumerate(counts)],
    }


def write_weights_file(path, counts, bg_ratio=None):
    """The weights file of `counts` (with a background class when `bg_ratio` is given) at `path`."""
    path.write_text(json.dumps(weights_document(counts_doc(counts), "0" * 64, bg_ratio)))
    return path


def ref_arrays(path, dtype=torch.float64):
    """log w+, log w-, m straight from the weights file (independent of the loss modules)."""
    cw = load_weights(path)
    return tuple(torch.as_tensor(a, dtype=dtype) for a in (cw.log_w_pos, cw.log_w_neg, cw.det_weight))
