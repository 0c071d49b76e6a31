"""The mmengine metric (mmdet's predictions -> lvis-api's numbers on mmdet's own results file), detection
shards written while evaluating, and re-scoring them with another protocol or a subset of the images."""

from __future__ import annotations

import json
import math

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from lvis_gen import make_case
from mmdet.evaluation.metrics.lvis_metric import LVISMetric as MMDetLVISMetric
from test_lvis_eval_equivalence import assert_same, lvis_api

from ecmctl.engine.lvis_stream_metric import StreamingLVISMetric
from ecmctl.evaluation import evaluate_detections, evaluate_files
from ecmctl.evaluation.detections import shard_paths

KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf", "AR@300", "ARs@300", "ARm@300", "ARl@300")


def samples(gt: dict, results: list[dict]) -> list[dict]:
    """mmdet data samples (as dicts): float32 xyxy boxes, label indices in the file's category order."""
    labels = {c["id"]: i for i, c in enumerate(gt["categories"])}
    out = []
    for im in gt["images"]:
        dets = [r for r in results if r["image_id"] == im["id"]]
        xywh = np.array([d["bbox"] for d in dets], np.float32).reshape(-1, 4)
        masks = np.zeros((len(dets), im["height"], im["width"]), bool)
        for i, d in enumerate(dets):
            masks[i] = mask_utils.decode({**d["segmentation"], "counts": d["segmentation"]["counts"].encode()})
        out.append({"img_id": im["id"], "ori_shape": (im["height"], im["width"]), "pred_instances": {
            "bboxes": torch.from_numpy(np.c_[xywh[:, :2], xywh[:, :2] + xywh[:, 2:]]),
            "scores": torch.tensor([d["score"] for d in dets], dtype=torch.float32),
            "labels": torch.tensor([labels[d["category_id"]] for d in dets], dtype=torch.int64),
            "masks": torch.from_numpy(masks)}})
    return out


@pytest.mark.parametrize("seed", [0, 3])
def test_metric_equals_lvis_api_on_mmdet_results_file(tmp_path, seed):
    gt, results = make_case(seed, segm=True, many=seed == 0, id_zero=False)
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    batch = samples(gt, results)
    mmdet = MMDetLVISMetric(ann_file=str(gt_path), metric=["bbox", "segm"], format_only=True,
                             outfile_prefix=str(tmp_path / "mmdet"))
    mmdet.process({}, batch)
    mmdet.compute_metrics(mmdet.results)  # writes mmdet.bbox.json / mmdet.segm.json as mmdet evaluates them

    metric = StreamingLVISMetric(ann_file=str(gt_path), metric=["bbox", "segm"], shard_dir=str(tmp_path))
    metric.process({}, batch[:2])
    metric.process({}, batch[2:])
    got = metric.evaluate(len(batch))
    for iou in ("bbox", "segm"):
        written = json.loads((tmp_path / f"mmdet.{iou}.json").read_text())
        ref, ref_pc = lvis_api(str(gt_path), written, iou)
        flat = {k: got[f"lvis/{iou}_{k}"] for k in KEYS}
        per_class = {name: got[f"lvis/{iou}_class_AP/{name}"] for name in ref_pc}
        assert_same(ref, ref_pc, {**flat, "per_class": {k: -1.0 if math.isnan(v) else v for k, v in per_class.items()}})

        # the shards re-score to the same numbers, and to Fixed AP as the results file does
        shards = shard_paths(tmp_path)
        again = evaluate_detections(gt_path, shards, iou)
        assert {k: again[k] for k in KEYS} == flat
        (tmp_path / f"mmdet.{iou}.fixed.json").write_text(json.dumps(written))
        assert evaluate_detections(gt_path, shards, iou, "fixed") == evaluate_files(
            gt_path, tmp_path / f"mmdet.{iou}.fixed.json", iou, "fixed")


def test_shards_rescored_on_a_ground_truth_subset(tmp_path):
    gt, results = make_case(6, segm=True, id_zero=False)
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    metric = StreamingLVISMetric(ann_file=str(gt_path), metric="bbox", shard_dir=str(tmp_path))
    metric.process({}, samples(gt, results))
    metric.evaluate(len(gt["images"]))
    keep = {im["id"] for im in gt["images"][: max(1, len(gt["images"]) // 2)]}
    subset = {**gt, "images": [im for im in gt["images"] if im["id"] in keep],
              "annotations": [a for a in gt["annotations"] if a["image_id"] in keep]}
    (tmp_path / "subset.json").write_text(json.dumps(subset))
    mine = [{**r, "bbox": [float(v) for v in np.float32(r["bbox"])]} for r in results if r["image_id"] in keep]
    for r in mine:  # what the shard holds: float32 xyxy, converted back as mmdet does
        x1, y1, w, h = np.float32(r["bbox"])
        x2, y2 = np.float32(x1 + w), np.float32(y1 + h)
        r["bbox"] = [float(x1), float(y1), float(x2) - float(x1), float(y2) - float(y1)]
        r["score"] = float(np.float32(r["score"]))
    ref, ref_pc = lvis_api(str(tmp_path / "subset.json"), mine, "bbox")
    assert_same(ref, ref_pc, evaluate_detections(tmp_path / "subset.json", shard_paths(tmp_path), "bbox", images="gt"))


def test_built_from_config_in_ecmctl_scope(tmp_path):
    from mmengine.registry import METRICS

    gt, _ = make_case(1)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    metric = METRICS.build(dict(type="ecmctl.StreamingLVISMetric", ann_file=str(tmp_path / "gt.json"),
                                metric=["bbox"], protocols=["standard", "fixed"]))
    assert isinstance(metric, StreamingLVISMetric)
    assert metric.compute_metrics([])["bbox_AP"] == -1.0  # nothing evaluated: undefined, not an exception
