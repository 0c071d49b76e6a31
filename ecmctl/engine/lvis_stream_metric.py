"""`StreamingLVISMetric`: the mmengine metric on top of the streaming evaluator (config type
'ecmctl.StreamingLVISMetric').

`process()` matches each image as soon as its predictions arrive and keeps only the compact records (a few
numbers per detection; for Fixed/Pooled AP pruned to the per-class top K as they grow); at the end each rank
hands one state to mmengine's `collect_results`, which gathers those small arrays instead of every box and
mask, and `compute_metrics()` merges them (an image padded onto two ranks counts once). Predictions are
converted exactly as mmdet's LVISMetric converts them (boxes xyxy -> xywh as float64 differences of the
float32 outputs, masks RLE-encoded, `mask_scores` for segm when the model has them), so the numbers are
lvis-api's on mmdet's own results file. Only the images evaluated count (a subset run is scored on that
subset).

Keys: `{iou}_AP`, `{iou}_AP50`, ... `{iou}_APf`, `{iou}_AR@300` ..., per class `{iou}_class_AP/{name}`
(nan where undefined, as mmdet), and with `protocols` including them `{iou}_fixed_*` / `{iou}_pooled_*`.
`shard_dir`: also write every rank's raw detections there (evaluation/detections.py) for re-scoring later.

    test_evaluator = dict(type='ecmctl.StreamingLVISMetric', ann_file='data/lvis_v1_val.json',
                          metric=['bbox', 'segm'], protocols=['standard'], shard_dir=None)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
from mmengine.dist import get_rank
from mmengine.evaluator import BaseMetric
from mmengine.fileio import get_local_path
from mmengine.registry import METRICS

from ecmctl.engine.compat import scope_registry
from ecmctl.evaluation.detections import DetectionWriter, rank_path
from ecmctl.evaluation.gt import load_gt
from ecmctl.evaluation.params import IOU_TYPES, MAX_DETS, PER_CLASS_KEYS, PROTOCOLS, TOPK
from ecmctl.evaluation.streaming import StreamingLVISEval, objects


class StreamingLVISMetric(BaseMetric):
    default_prefix = "lvis"

    def __init__(self, ann_file: str, metric: str | Sequence[str] = "bbox",
                 protocols: Sequence[str] = ("standard",), classwise: bool = True, max_dets: int = MAX_DETS,
                 topk: int = TOPK, shard_dir: str | None = None, collect_device: str = "cpu",
                 prefix: str | None = None, backend_args: dict | None = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.metrics = [metric] if isinstance(metric, str) else list(metric)
        bad = [m for m in self.metrics if m not in IOU_TYPES] + [p for p in protocols if p not in PROTOCOLS]
        if bad:
            raise KeyError(f"StreamingLVISMetric: metric must be in {IOU_TYPES} and protocols in {PROTOCOLS}, "
                           f"got {bad}")
        with get_local_path(ann_file, backend_args=backend_args) as local:
            self.gt = load_gt(local, with_segm="segm" in self.metrics)
        self.protocols, self.classwise = tuple(protocols), classwise
        self.evaluators = {m: StreamingLVISEval(self.gt, m, self.protocols, max_dets=max_dets, topk=topk)
                           for m in self.metrics}
        self.shard_dir = shard_dir
        self._writer: DetectionWriter | None = None
        self._seq = 0

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            pred = sample["pred_instances"]
            img_id = int(sample["img_id"])
            boxes = pred["bboxes"].cpu().numpy()
            scores = pred["scores"].cpu().numpy()
            labels = pred["labels"].cpu().numpy().astype(np.int64)  # SOLO's empty result is a float tensor
            rles = None
            if "segm" in self.metrics or (self.shard_dir and "masks" in pred):
                masks = pred["masks"].detach().cpu().numpy()
                rles = objects(mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0), dtype=np.uint8))
                               if len(masks) else [])
            for m, ev in self.evaluators.items():
                if ev.has_image(img_id):
                    continue  # the sampler padded the last batch with an image this rank already did
                if m == "segm":
                    mask_scores = pred["mask_scores"].cpu().numpy() if "mask_scores" in pred else scores
                    ev.process(img_id, boxes, mask_scores, labels, rles=rles)
                else:
                    ev.process(img_id, boxes, scores, labels)
            if self.shard_dir:
                self._write(img_id, boxes, scores, labels, rles)

    def _write(self, img_id: int, boxes, scores, labels, rles) -> None:
        if self._writer is None:
            Path(self.shard_dir).mkdir(parents=True, exist_ok=True)
            self._writer = DetectionWriter(rank_path(self.shard_dir, get_rank()), "xyxy", "float32",
                                           masks=rles is not None)
        n = len(scores)
        self._writer.add([img_id], np.full(n, img_id), self.gt.cat_ids[self.gt.label_to_cat[labels]], scores,
                         self._seq + np.arange(n), boxes, None if rles is None else list(rles))
        self._seq += n

    def evaluate(self, size: int) -> dict:
        if self._writer is not None:  # every rank's shard is complete before rank 0 reports
            self._writer.close()
            self._writer, self._seq = None, 0
        self.results = [{m: ev.pop_state() for m, ev in self.evaluators.items()}]  # one small state per rank
        return super().evaluate(size)

    def compute_metrics(self, results: list) -> dict[str, float]:
        out: dict[str, float] = {}
        for m in self.metrics:
            ev = StreamingLVISEval.merge([r[m] for r in results], self.gt) if results else self.evaluators[m]
            summary = ev.summarize("processed")  # no image at all: every value -1
            out.update(_flat(m, summary, self.classwise))
            for protocol in ("fixed", "pooled"):
                if protocol in summary:
                    out.update(_flat(f"{m}_{protocol}", summary[protocol], self.classwise))
        return out


def _flat(prefix: str, summary: dict, classwise: bool) -> dict[str, float]:
    out = {f"{prefix}_{k}": float(v) for k, v in summary.items()
           if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if classwise:
        for section, key in PER_CLASS_KEYS.items():
            out.update({f"{prefix}_{key}/{name}": (math.nan if v < 0 else v)
                        for name, v in summary.get(section, {}).items()})
    return out


def register() -> None:
    scoped = scope_registry(METRICS)
    if scoped.module_dict.get("StreamingLVISMetric") is not StreamingLVISMetric:
        scoped.register_module(name="StreamingLVISMetric", module=StreamingLVISMetric, force=True)


register()
