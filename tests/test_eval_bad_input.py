"""evaluate_files on bad input: one UserError line naming the file, the element and field, and the fix."""

from __future__ import annotations

import json

import pytest
from lvis_gen import make_case

from ecmctl.core.errors import UserError
from ecmctl.evaluation import evaluate_files


@pytest.fixture()
def gt_path(tmp_path):
    gt, _ = make_case(2, segm=True, id_zero=False)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    return path, gt


def _det(gt: dict, **over) -> dict:
    d = {"image_id": gt["images"][0]["id"], "category_id": gt["categories"][0]["id"], "bbox": [1.0, 2.0, 3.0, 4.0],
         "score": 0.5}
    return {**d, **over}


def _error(tmp_path, gt_path, text: str, iou_type: str = "bbox") -> str:
    res = tmp_path / "res.json"
    res.write_text(text)
    with pytest.raises(UserError) as e:
        evaluate_files(gt_path, res, iou_type)
    msg = str(e.value)
    assert "\n" not in msg and str(res) in msg
    return msg


def test_malformed_json(tmp_path, gt_path):
    path, gt = gt_path
    ok = json.dumps(_det(gt))
    msg = _error(tmp_path, path, f"[{ok}, {ok} {ok}]")
    assert "not valid JSON" in msg and "element #2" in msg and "expected a JSON list of detections" in msg
    assert "truncated" in _error(tmp_path, path, f"[{ok}, {ok}")
    assert "empty" in _error(tmp_path, path, "  ")
    assert "annotation file" in _error(tmp_path, path, json.dumps(gt))


def test_unknown_image_and_category(tmp_path, gt_path):
    path, gt = gt_path
    msg = _error(tmp_path, path, json.dumps([_det(gt), _det(gt, image_id=987654)]))
    assert "element #1, image_id: 987654 is not an image of" in msg and str(path) in msg
    msg = _error(tmp_path, path, json.dumps([_det(gt), _det(gt), _det(gt, category_id=0)]))
    assert "element #2, category_id: 0 is not a category of" in msg and "not 0-based class indices" in msg


def test_non_finite_score_and_box(tmp_path, gt_path):
    path, gt = gt_path
    ok = json.dumps(_det(gt))
    assert "element #1, score: NaN is not a finite number" in _error(
        tmp_path, path, f'[{ok}, {json.dumps(_det(gt, score=float("nan")))}]')
    assert "element #0, score: number out of range (not finite)" in _error(
        tmp_path, path, ok.join("[]").replace("0.5", "1e999"))
    assert "element #1, bbox: -Infinity is not a finite number" in _error(
        tmp_path, path, f'[{ok}, {json.dumps(_det(gt, bbox=[1, 2, float("-inf"), 4]))}]')
    assert "element #0, bbox[2]: number out of range (not finite)" in _error(
        tmp_path, path, json.dumps([_det(gt, bbox=[1, 2, "X", 4])]).replace('"X"', "-1e400"))


def test_wrong_types_and_missing_fields(tmp_path, gt_path):
    path, gt = gt_path
    msg = _error(tmp_path, path, json.dumps([_det(gt), _det(gt, score="high")]))
    assert "element #1, score: Expected `float`, got `str`" in msg
    msg = _error(tmp_path, path, json.dumps([_det(gt, bbox=[1, 2, 3])]))
    assert "element #0, bbox: Expected `array` of length 4" in msg
    msg = _error(tmp_path, path, json.dumps([{k: v for k, v in _det(gt).items() if k != "bbox"}]))
    assert "element #0 has no 'bbox'; bbox evaluation needs" in msg
    msg = _error(tmp_path, path, json.dumps([{"image_id": 1}, 5]))
    assert "element #0" in msg and "missing required field" in msg


def test_missing_segmentation_for_segm(tmp_path, gt_path):
    path, gt = gt_path
    rle = {"size": [gt["images"][0]["height"], gt["images"][0]["width"]], "counts": "0"}
    msg = _error(tmp_path, path, json.dumps([_det(gt, segmentation=rle), _det(gt)]), "segm")
    assert "element #1 has no 'segmentation'; segm evaluation needs an RLE" in msg


def test_bad_protocol_and_missing_file(tmp_path, gt_path):
    path, _ = gt_path
    with pytest.raises(UserError, match="protocol must be one of standard, fixed, pooled"):
        evaluate_files(path, tmp_path / "x.json", protocol="fixedap")
    with pytest.raises(UserError, match="no such results file"):
        evaluate_files(path, tmp_path / "missing.json")


@pytest.mark.parametrize(("break_gt", "iou_type", "expected"), [
    (lambda g: g["images"][0].pop("neg_category_ids"), "bbox", "has no 'neg_category_ids'; LVIS evaluation needs"),
    (lambda g: g["categories"][0].pop("frequency"), "bbox", "LVIS evaluation needs 'r', 'c' or 'f'"),
    (lambda g: g["annotations"][0].pop("area"), "bbox", "annotation #0 has no 'area'"),
    (lambda g: g["images"].append(dict(g["images"][0])), "bbox", "appears twice in 'images'"),
    (lambda g: g["images"][0].pop("height"), "segm", "has no 'height'/'width'; segm evaluation needs them"),
    (lambda g: g["annotations"][0].update(image_id="x"), "bbox", "annotations[0].image_id"),
])
def test_bad_ground_truth(tmp_path, gt_path, break_gt, iou_type, expected):
    _, gt = gt_path
    break_gt(gt)
    (tmp_path / "bad_gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text("[]")
    with pytest.raises(UserError) as e:
        evaluate_files(tmp_path / "bad_gt.json", tmp_path / "res.json", iou_type)
    assert expected in str(e.value) and str(tmp_path / "bad_gt.json") in str(e.value) and "\n" not in str(e.value)
