"""ecmctl's streaming evaluator against lvis-api's LVISEval: every summary number and every per-class AP.

Random small cases (tests/lvis_gen.py) cover negative and not-exhaustive categories, categories absent
from the images, images without ground truth, > 300 detections on an image, equal scores, areas on the
32²/96² boundaries and 0, `ignore` flags, annotation id 0 and zero-area detections; the results file is
sometimes shuffled (so images are split across the file) and read in tiny chunks.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lvis import LVIS, LVISEval, LVISResults
from lvis_gen import make_case

import ecmctl.engine.compat  # noqa: F401  (np.float for lvis 0.5.3's LVISEval.accumulate)
from ecmctl.evaluation import evaluate_files, files

logging.getLogger("lvis").setLevel(logging.ERROR)
TOL = 1e-9


def lvis_api(gt_path: str, results: list[dict], iou_type: str) -> tuple[dict, dict]:
    """(lvis-api's results, per-class AP from its eval['precision'] as mmdet/detectron2 compute it)."""
    gt = LVIS(gt_path)
    if results:
        dt = LVISResults(gt, copy.deepcopy(results), max_dets=300)
    else:  # LVISResults cannot take an empty list (it reads results[0]); evaluate "no detections" anyway
        dt = LVISResults.__new__(LVISResults)
        dt.logger, dt.dataset = gt.logger, {**copy.deepcopy(gt.dataset), "annotations": []}
        dt._create_index()
    ev = LVISEval(gt, dt, iou_type)
    ev.run()
    per_class = {}
    for k, cat_id in enumerate(ev.params.cat_ids):
        p = ev.eval["precision"][:, :, k, 0]
        per_class[gt.cats[cat_id]["name"]] = float(np.mean(p[p > -1])) if (p > -1).any() else -1.0
    return {k: float(v) for k, v in ev.results.items()}, per_class


def assert_same(ref: dict, ref_per_class: dict, got: dict) -> None:
    assert set(ref) <= set(got)
    for key, value in ref.items():
        assert abs(got[key] - value) <= TOL, (key, value, got[key])
    assert got["per_class"].keys() == ref_per_class.keys()
    for name, value in ref_per_class.items():
        assert abs(got["per_class"][name] - value) <= TOL, (name, value, got["per_class"][name])


def check(seed: int, iou_type: str, many: bool, drop_boxes: bool = False, chunk: int = 1 << 20) -> None:
    gt, results = make_case(seed, segm=iou_type == "segm", many=many)
    if drop_boxes:  # segm results without boxes: lvis-api then takes the mask area as the detection's area
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    with tempfile.TemporaryDirectory() as tmp:
        gt_path, res_path = Path(tmp) / "gt.json", Path(tmp) / "res.json"
        gt_path.write_text(json.dumps(gt))
        res_path.write_text(json.dumps(results))
        ref, ref_pc = lvis_api(str(gt_path), results, iou_type)
        assert_same(ref, ref_pc, evaluate_files(gt_path, res_path, iou_type, chunk_bytes=chunk))


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), many=st.booleans(), chunk=st.sampled_from([200, 4096, 1 << 20]))
def test_bbox_matches_lvis_api(seed, many, chunk):
    check(seed, "bbox", many, chunk=chunk)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), many=st.booleans(), drop_boxes=st.booleans())
def test_segm_matches_lvis_api(seed, many, drop_boxes):
    check(seed, "segm", many, drop_boxes)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_split_images_spilled_to_buckets(seed, monkeypatch_module):
    """A shuffled file (every image split) re-read in several spilled buckets gives the same numbers."""
    monkeypatch_module.setattr(files, "SPILL_DETS", 40)
    check(seed, "bbox", many=False, chunk=300)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_empty_results(tmp_path, iou_type):
    """No detections at all: AP 0 where a category has ground truth, -1 elsewhere (lvis-api's arrays)."""
    gt, _ = make_case(3, segm=iou_type == "segm")
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text("[]")
    ref, ref_pc = lvis_api(str(tmp_path / "gt.json"), [], iou_type)
    assert_same(ref, ref_pc, evaluate_files(tmp_path / "gt.json", tmp_path / "res.json", iou_type))


def test_every_detection_filtered_out(tmp_path):
    """Detections only of categories without ground-truth information in their image: all dropped."""
    gt, _ = make_case(5)
    img = gt["images"][0]
    known = {a["category_id"] for a in gt["annotations"] if a["image_id"] == img["id"]} | set(img["neg_category_ids"])
    unknown = [c["id"] for c in gt["categories"] if c["id"] not in known]
    if not unknown:
        gt["categories"].append({"id": 999, "name": "cat999", "frequency": "r"})
        unknown = [999]
    results = [{"image_id": img["id"], "category_id": unknown[0], "bbox": [1, 2, 30, 40], "score": 0.5}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    ref, ref_pc = lvis_api(str(tmp_path / "gt.json"), results, "bbox")
    assert_same(ref, ref_pc, evaluate_files(tmp_path / "gt.json", tmp_path / "res.json"))
