"""A handful of detector families of different head kinds through the user's route, as separate processes:
`ecmctl train detector=mmdet detector.mmdet_config=…` (2 iterations on the tiny set, random init, r measured
over 2 iterations where there is a background class), then `ecmctl eval` (benchmarks/detector_zoo.py runs all)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("detector_zoo", Path(__file__).parents[1] / "benchmarks/detector_zoo.py")
zoo = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(zoo)

# one of each: QualityFocalLoss dense head, sigmoid-BCE dense head, softmax no-object queries (r measured from
# matched vs unmatched queries), six foreground-only RoI stages
FAMILIES = ["rtmdet", "yolox", "detr", "sparse_rcnn"]


@pytest.fixture(scope="module")
def zoo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    zoo.prepare_data(root / "data", root / "runs")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_family_trains_and_evaluates_with_ecm(family, zoo_root):
    row = zoo.run_family(family, zoo_root, zoo_root / "data", timeout=900)
    assert row["status"] == "evaluated", row
    run = zoo_root / family
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "finished"
    mm = (run / "mmdet_config.py").read_text()
    assert "ECM" in mm and "num_classes=8" in mm.replace(" ", "")
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["bbox"]["AP"] <= 100.0
    if family == "detr":  # a background site: its r was measured, not fixed
        cal = json.loads((run / "inputs" / "calibration.json").read_text())
        assert cal["bg_ratio_source"] == "measured" and cal["per_stage"][0]["site"] == "bbox_head"
        assert cal["per_stage"][0]["r"] > 1  # 100 queries, a few objects per image
