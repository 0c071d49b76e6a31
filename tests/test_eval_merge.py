"""Distributed use: states of disjoint image sets merge into exactly the one-process numbers."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from lvis_gen import make_case

from ecmctl.evaluation import StreamingLVISEval, load_gt
from ecmctl.evaluation.gt import GroundTruth

PROTOCOLS = ("standard", "fixed", "pooled")


def per_image(gt: dict, results: list[dict]) -> list[tuple[int, list[dict]]]:
    by_img: dict[int, list[dict]] = {im["id"]: [] for im in gt["images"]}
    for r in results:
        by_img[r["image_id"]].append(r)
    return list(by_img.items())


def feed(ev: StreamingLVISEval, gt: GroundTruth, images: list[tuple[int, list[dict]]]) -> None:
    """process() as the mmengine metric calls it: xyxy float32 boxes, mmdet label indices, binary masks."""
    order = list(gt.cat_ids[gt.label_to_cat])  # label -> category id, the file's category order
    for img_id, dets in images:
        xywh = np.array([d["bbox"] for d in dets], np.float32).reshape(-1, 4)
        xyxy = np.c_[xywh[:, :2], xywh[:, :2] + xywh[:, 2:]]
        labels = np.array([order.index(d["category_id"]) for d in dets], np.int64)
        scores = np.array([d["score"] for d in dets], np.float32)
        masks = None
        if ev.iou_type == "segm":
            h, w = gt.img_hw[gt.image_index([img_id])[0]]
            masks = np.zeros((len(dets), h, w), bool)
            for i, d in enumerate(dets):
                masks[i] = mask_utils.decode(d["segmentation"] | {"counts": d["segmentation"]["counts"].encode()})
        ev.process(img_id, xyxy, scores, labels, masks=masks)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("seed", [0, 1, 2, 7])
def test_two_halves_merge_to_one_process(tmp_path, iou_type, seed):
    gt_dict, results = make_case(seed, segm=iou_type == "segm", many=seed == 0)
    (tmp_path / "gt.json").write_text(json.dumps(gt_dict))
    gt = load_gt(tmp_path / "gt.json", with_segm=iou_type == "segm")
    images = per_image(gt_dict, results)
    one = StreamingLVISEval(gt, iou_type, PROTOCOLS, topk=3)
    feed(one, gt, images)
    half = len(images) // 2
    ranks = [StreamingLVISEval(gt, iou_type, PROTOCOLS, topk=3) for _ in range(2)]
    feed(ranks[0], gt, images[:half])
    feed(ranks[1], gt, images[half:])
    states = [pickle.loads(pickle.dumps(r.state())) for r in ranks]
    merged = StreamingLVISEval.merge(states, gt)
    assert merged.summarize() == one.summarize()
    assert merged.summarize("processed") == one.summarize("processed")


def test_per_image_states_and_padding_duplicates(tmp_path):
    """One state per image (what the metric gathers), an image repeated by sampler padding counts once."""
    gt_dict, results = make_case(4)
    (tmp_path / "gt.json").write_text(json.dumps(gt_dict))
    gt = load_gt(tmp_path / "gt.json")
    images = per_image(gt_dict, results)
    one = StreamingLVISEval(gt, "bbox", PROTOCOLS)
    feed(one, gt, images)
    ev = StreamingLVISEval(gt, "bbox", PROTOCOLS)
    states = []
    for item in [*images, images[0]]:
        feed(ev, gt, [item])
        states.append(ev.pop_state())
    assert StreamingLVISEval.merge(states, gt).summarize() == one.summarize()


def test_merge_refuses_other_evaluations(tmp_path):
    gt_dict, _ = make_case(1)
    (tmp_path / "gt.json").write_text(json.dumps(gt_dict))
    gt = load_gt(tmp_path / "gt.json")
    a, b = StreamingLVISEval(gt, "bbox"), StreamingLVISEval(gt, "bbox", ("fixed",))
    with pytest.raises(ValueError, match="different evaluations"):
        StreamingLVISEval.merge([a.state(), b.state()], gt)
