"""The LVIS metric ecmctl evaluates with: subset-correct scoring (compat) plus per-class AP per IoU type.

mmdet's `classwise` output names per-class AP `{name}_precision` for bbox and segm alike, so the mask
values overwrite the box values; here each IoU type is evaluated on its own and keyed
`{iou}_class_AP/{name}`. Config type: 'ecmctl.PerClassLVISMetric'.
"""

from __future__ import annotations

from ecmctl.engine.compat import SubsetLVISMetric, scope_registry

PRECISION_SUFFIX = "_precision"


class PerClassLVISMetric(SubsetLVISMetric):
    def compute_metrics(self, results: list) -> dict[str, float]:
        if not self.classwise:
            return super().compute_metrics(results)
        names = list(self.dataset_meta["classes"])
        metrics, out = list(self.metrics), {}
        try:
            for metric in metrics:
                self.metrics = [metric]
                for key, value in super().compute_metrics(results).items():
                    name = key[: -len(PRECISION_SUFFIX)] if key.endswith(PRECISION_SUFFIX) else None
                    out[f"{metric}_class_AP/{name}" if name in names else key] = value
        finally:
            self.metrics = metrics
        return out


def register() -> None:
    from mmengine.registry import METRICS

    scoped = scope_registry(METRICS)
    if scoped.module_dict.get("PerClassLVISMetric") is not PerClassLVISMetric:
        scoped.register_module(name="PerClassLVISMetric", module=PerClassLVISMetric, force=True)


register()
