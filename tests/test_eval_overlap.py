"""Pair IoUs bit-identical to pycocotools, the results reader's element boundaries, mask areas in chunks."""

from __future__ import annotations

import json

import numpy as np
import pycocotools.mask as mask_utils
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ecmctl.evaluation.overlap import box_iou_pairs, mask_area
from ecmctl.evaluation.results import element_ends

coord = st.one_of(st.floats(-50, 500, allow_nan=False, width=64), st.sampled_from([0.0, 1.0, 32.0, 96.0, 1e-9]))


@settings(max_examples=200, deadline=None)
@given(dt=arrays(np.float64, (7, 4), elements=coord), gt=arrays(np.float64, (5, 4), elements=coord))
def test_box_iou_is_pycocotools_bit_for_bit(dt, gt):
    ref = np.asarray(mask_utils.iou(dt, gt, [0] * len(gt)))
    d, g = np.meshgrid(np.arange(len(dt)), np.arange(len(gt)), indexing="ij")
    got = box_iou_pairs(dt[d.ravel()], gt[g.ravel()]).reshape(ref.shape)
    assert np.array_equal(got.view(np.int64), ref.view(np.int64))


def test_mask_area_past_pycocotools_255_limit():
    rle = mask_utils.merge(mask_utils.frPyObjects([[1, 1, 20, 1, 20, 20, 1, 20]], 40, 50))
    assert mask_area([rle] * 600).tolist() == [float(mask_utils.area(rle))] * 600


@settings(max_examples=100, deadline=None)
@given(st.lists(st.fixed_dictionaries({"s": st.text(alphabet='ab"\\[]{},', max_size=8),
                                       "v": st.lists(st.integers(), max_size=3)}), max_size=6),
       st.sampled_from([None, 1]))
def test_element_ends_with_quotes_escapes_and_brackets_in_strings(items, indent):
    text = json.dumps(items, indent=indent).encode()
    ends = element_ends(text, 1)
    assert len(ends) == len(items)
    for i, end in enumerate(ends):
        assert json.loads(b"[" + text[1:end] + b"]")[-1] == items[i]
