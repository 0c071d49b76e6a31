"""The LVIS metric ecmctl evaluates with: subset-correct scoring (compat) plus per-class AP per IoU type,
and per-class recall and true-positive scores at the detection cap.

mmdet's `classwise` output names per-class AP `{name}_precision` for bbox and segm alike, so the mask
values overwrite the box values; here each IoU type is evaluated on its own and keyed
`{iou}_class_AP/{name}`. With `classwise`, lvis-api's own evaluation object is also read for
`{iou}_class_recall/{name}` (recall at the 300-detection cap, mean over IoU 0.50:0.95, all areas: lvis-api's
AR per class) and `{iou}_class_tp_score/{name}` (the mean score of the class's detections that match a
ground truth at IoU 0.5). Config type: 'ecmctl.PerClassLVISMetric'.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from ecmctl.engine.compat import SubsetLVISMetric, scope_registry

PRECISION_SUFFIX = "_precision"


def per_class_recall_and_score(lvis_eval) -> dict[int, tuple[float, float, int]]:
    """{category id: (recall, mean true-positive score, true positives)} from a run LVISEval.

    recall: lvis-api's accumulated recall at its detection cap for area 'all', averaged over the IoU
    thresholds with a defined value (NaN when the class has no ground truth). Mean TP score: over the
    detections matched to a non-ignored ground truth at the first IoU threshold (0.5) (NaN without any).
    """
    params = lvis_eval.params
    area_all = params.area_rng[params.area_rng_lbl.index("all")]
    a_idx = params.area_rng_lbl.index("all")
    recall = lvis_eval.eval["recall"]  # [iou thresholds, categories, area ranges]
    scores: dict[int, list[float]] = {}
    for e in lvis_eval.eval_imgs:
        if e is None or list(e["area_rng"]) != list(area_all):
            continue
        matched = (np.asarray(e["dt_matches"])[0] > 0) & ~np.asarray(e["dt_ignore"], dtype=bool)[0]
        if matched.any():
            scores.setdefault(e["category_id"], []).extend(np.asarray(e["dt_scores"])[matched].tolist())
    out = {}
    for k, cat_id in enumerate(params.cat_ids):
        r = recall[:, k, a_idx]
        r = r[r > -1]
        s = scores.get(cat_id, [])
        out[cat_id] = (float(r.mean()) if r.size else float("nan"),
                       float(np.mean(s)) if s else float("nan"), len(s))
    return out


@contextmanager
def _recording_lvis_eval(record: list):
    """While active, every LVISEval that mmdet's LVISMetric creates is appended to `record` once it ran."""
    import mmdet.evaluation.metrics.lvis_metric as mm_lvis

    base = mm_lvis.LVISEval

    class RecordingLVISEval(base):
        def accumulate(self, *args, **kwargs):
            out = super().accumulate(*args, **kwargs)
            record.append(self)
            return out

    mm_lvis.LVISEval = RecordingLVISEval
    try:
        yield
    finally:
        mm_lvis.LVISEval = base


class PerClassLVISMetric(SubsetLVISMetric):
    def compute_metrics(self, results: list) -> dict[str, float]:
        if not self.classwise:
            return super().compute_metrics(results)
        names = list(self.dataset_meta["classes"])
        metrics, out = list(self.metrics), {}
        try:
            for metric in metrics:
                self.metrics = [metric]
                record: list = []
                with _recording_lvis_eval(record):
                    raw = super().compute_metrics(results)
                for key, value in raw.items():
                    name = key[: -len(PRECISION_SUFFIX)] if key.endswith(PRECISION_SUFFIX) else None
                    out[f"{metric}_class_AP/{name}" if name in names else key] = value
                if record and metric in ("bbox", "segm"):
                    out.update(self._recall_items(metric, record[-1]))
        finally:
            self.metrics = metrics
        return out

    def _recall_items(self, metric: str, lvis_eval) -> dict[str, float]:
        items = {}
        for cat_id, (recall, score, _) in per_class_recall_and_score(lvis_eval).items():
            name = self._lvis_api.load_cats([cat_id])[0]["name"]
            items[f"{metric}_class_recall/{name}"] = round(recall, 4)
            items[f"{metric}_class_tp_score/{name}"] = round(score, 4)
        return items


def register() -> None:
    from mmengine.registry import METRICS

    scoped = scope_registry(METRICS)
    if scoped.module_dict.get("PerClassLVISMetric") is not PerClassLVISMetric:
        scoped.register_module(name="PerClassLVISMetric", module=PerClassLVISMetric, force=True)


register()
