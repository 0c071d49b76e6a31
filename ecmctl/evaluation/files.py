"""Score a results file or detection shards: `evaluate_files`, `evaluate_detections`.

Images are matched as soon as they are complete. Results files list an image's detections together
(lvis-api, detectron2 and mmdet all write them image by image), so an image is complete when the next
one starts; its detections are then matched and dropped. lvis-api, though, takes an image's detections
from anywhere in the file: an image met again after it was matched ("split", e.g. a file sorted by
category) is forgotten, and after the pass its detections are read again, in one more pass, grouped by
image in buckets of at most `SPILL_DETS` detections (spilled to temporary shards when there are more),
so memory stays bounded whatever the order.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ecmctl.core.errors import UserError
from ecmctl.evaluation.detections import DetectionWriter, read_detections
from ecmctl.evaluation.gt import GroundTruth, load_gt, sorted_lookup
from ecmctl.evaluation.params import IOU_TYPES, MAX_DETS, PROTOCOLS, TOPK
from ecmctl.evaluation.results import CHUNK_BYTES, read_results
from ecmctl.evaluation.streaming import DetBatch, StreamingLVISEval, objects

SPILL_DETS = 4 << 20  # detections of split images held at once in the second pass


class _Feeder:
    """Hands each image's detections to the evaluator once the image is complete.

    `repeats`: "merge" (results files: an image met again is split, re-read later) or "skip" (shards:
    a repeated image is a distributed sampler's padding and counts once).
    """

    def __init__(self, ev: StreamingLVISEval, repeats: str):
        n = ev.gt.num_images
        self.ev, self.repeats = ev, repeats
        self.done = np.zeros(n, bool)
        self.split = np.zeros(n, bool)
        self.count = np.zeros(n, np.int64)
        self.pending: DetBatch | None = None

    def add(self, batch: DetBatch) -> None:
        self.count += np.bincount(batch.img, minlength=self.count.size)
        if self.pending is not None:
            batch = DetBatch.concat([self.pending, batch])
            self.pending = None
        if not len(batch):
            return
        tail = batch.img == batch.img[-1]  # the last image may go on in the next batch
        self.pending = batch.take(np.flatnonzero(tail))
        self._complete(batch.take(np.flatnonzero(~tail)))

    def _complete(self, batch: DetBatch) -> None:
        imgs = np.unique(batch.img)
        again = imgs[self.done[imgs]]
        if again.size and self.repeats == "merge":
            self.split[again] = True
        fresh = imgs[~self.done[imgs]]
        if again.size:
            keep = np.zeros(self.done.size, bool)
            keep[fresh] = True
            batch = batch.take(np.flatnonzero(keep[batch.img]))
        if fresh.size:
            self.ev.process_batch(batch, images=fresh)
            self.done[fresh] = True

    def finish(self, images: np.ndarray | None = None) -> None:
        """Flush the last image; `images`: indices processed without any detection (shards)."""
        if self.pending is not None:
            self._complete(self.pending)
            self.pending = None
        if images is not None:
            empty = np.unique(images[~self.done[images]])
            if empty.size:
                self.ev.process_batch(DetBatch.empty(), images=empty)
                self.done[empty] = True


def _check(iou_type: str, protocol: str) -> None:
    if iou_type not in IOU_TYPES:
        raise UserError(f"iou_type must be one of {', '.join(IOU_TYPES)}, got {iou_type!r}")
    if protocol not in PROTOCOLS:
        raise UserError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")


def _section(summary: dict, protocol: str) -> dict:
    return summary if protocol == "standard" else summary[protocol]


def evaluate_files(gt_path: str | os.PathLike, results_path: str | os.PathLike, iou_type: str = "bbox",
                   protocol: str = "standard", *, max_dets: int = MAX_DETS, topk: int = TOPK,
                   gt: GroundTruth | None = None, chunk_bytes: int = CHUNK_BYTES) -> dict:
    """Score an LVIS results file as lvis-api (protocol "standard") or Dave et al. ("fixed", "pooled").

    Returns the summary of that protocol (AP, AP50, ..., APf and, for "standard", AR@300, ARs/m/l;
    `per_class` AP by category name). Every ground-truth image counts, as in lvis-api. Bad input raises
    UserError. `gt`: an already loaded ground truth of `gt_path` (with segmentations for segm).
    """
    _check(iou_type, protocol)
    gt = gt or load_gt(gt_path, with_segm=iou_type == "segm")
    ev = StreamingLVISEval(gt, iou_type, (protocol,), max_dets=max_dets, topk=topk)
    feed_results(ev, results_path, chunk_bytes)
    return _section(ev.summarize("gt"), protocol)


def feed_results(ev: StreamingLVISEval, results_path: str | os.PathLike, chunk_bytes: int = CHUNK_BYTES) -> None:
    """Stream a results file into `ev`, image by image (two passes when an image's detections are split)."""
    feeder = _Feeder(ev, "merge")
    for batch in read_results(results_path, ev.gt, ev.iou_type, chunk_bytes):
        feeder.add(batch)
    feeder.finish()
    split = np.flatnonzero(feeder.split)
    if split.size:
        ev.drop_images(split)
        for bucket in _split_buckets(results_path, ev, split, feeder.count, chunk_bytes):
            ev.process_batch(bucket, images=np.unique(bucket.img))


def _split_buckets(results_path, ev: StreamingLVISEval, split: np.ndarray, count: np.ndarray,
                   chunk_bytes: int) -> Iterator[DetBatch]:
    """All detections of the split images, a bucket of whole images (<= SPILL_DETS) at a time."""
    bucket = np.full(count.size, -1, np.int64)
    bucket[split] = np.cumsum(count[split]) // SPILL_DETS
    num = int(bucket[split].max()) + 1

    def selected() -> Iterator[DetBatch]:
        for batch in read_results(results_path, ev.gt, ev.iou_type, chunk_bytes):
            keep = np.flatnonzero(bucket[batch.img] >= 0)
            if keep.size:
                yield batch.take(keep)

    if num == 1:
        yield _by_image(list(selected()))
        return
    with tempfile.TemporaryDirectory(prefix="ecmctl-eval-") as tmp:
        segm = ev.iou_type == "segm"
        paths = [Path(tmp) / f"bucket{b}.dets" for b in range(num)]
        writers = None
        for part in selected():
            if writers is None:
                box_format = "none" if part.box is None else "xywh"
                writers = [DetectionWriter(p, box_format, "float64", segm) for p in paths]
            b_of = bucket[part.img]
            for b in np.unique(b_of):
                sub = part.take(np.flatnonzero(b_of == b))
                writers[b].add(np.zeros(0), ev.gt.img_ids[sub.img], ev.gt.cat_ids[sub.cat], sub.score, sub.seq,
                               sub.box, sub.rles)
        for w in writers:
            w.close()
        for p in paths:
            yield _by_image([_to_batch(ev.gt, d, strict=True) for d in read_detections([p])])


def _by_image(parts: list[DetBatch]) -> DetBatch:
    return DetBatch.concat(parts) if parts else DetBatch.empty()


def _to_batch(gt: GroundTruth, det, strict: bool) -> DetBatch:
    """Shard chunk -> DetBatch of ground-truth indices; images not in `gt` dropped unless `strict`."""
    img, ok = sorted_lookup(gt.img_ids, det.image_id)
    if strict and not ok.all():
        raise UserError(f"{gt.path}: has no image {int(det.image_id[~ok][0])} of the detections")
    keep = np.flatnonzero(ok)
    cat, known = sorted_lookup(gt.cat_ids, det.category_id[keep])
    if not known.all():
        raise UserError(f"category id {int(det.category_id[keep][~known][0])} of the detections is not a "
                        f"category of {gt.path}")
    box = None
    if det.box is not None:
        b = det.box[keep].astype(np.float64)
        box = b if det.box_format == "xywh" else np.stack(
            (b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]), axis=1)  # as mmdet's xyxy2xywh
    rles = None if det.rles is None else objects(det.rles)[keep]
    return DetBatch(img[keep], cat, det.score[keep], det.seq[keep], box, rles)


def evaluate_detections(gt_path: str | os.PathLike, shards: Iterable[str | os.PathLike], iou_type: str = "bbox",
                        protocol: str = "standard", *, images: str = "processed", max_dets: int = MAX_DETS,
                        topk: int = TOPK, gt: GroundTruth | None = None) -> dict:
    """Re-score detection shards (detections.py) against `gt_path`, which may hold a subset of the images.

    Detections on images that are not in the ground truth are skipped. `images`: "processed" counts the
    ground truth of the images the run processed (what the metric reported), "gt" every image of `gt_path`.
    """
    _check(iou_type, protocol)
    gt = gt or load_gt(gt_path, with_segm=iou_type == "segm")
    ev = StreamingLVISEval(gt, iou_type, (protocol,), max_dets=max_dets, topk=topk)
    feeder = _Feeder(ev, "skip")
    processed = []
    for det in read_detections(list(shards)):
        if iou_type == "segm" and det.rles is None:
            raise UserError("the detection shards hold no masks; re-score them with iou_type='bbox'")
        if iou_type == "bbox" and det.box is None:
            raise UserError("the detection shards hold no boxes; re-score them with iou_type='segm'")
        idx, ok = sorted_lookup(gt.img_ids, det.images)
        processed.append(idx[ok])
        feeder.add(_to_batch(gt, det, strict=False))
    feeder.finish(np.concatenate(processed) if processed else np.zeros(0, np.int64))
    return _section(ev.summarize(images), protocol)
