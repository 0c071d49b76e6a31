"""Streaming LVIS evaluation: lvis-api's numbers exactly, Fixed AP and Pooled AP, in bounded memory.

Modules, one job each:
  params      lvis-api's constants (IoU/recall thresholds, area ranges, 300 per image, top-K 10,000)
  gt          the ground truth as flat arrays (msgspec-decoded), masks turned into RLEs per image on demand
  results     results files read in chunks and decoded with msgspec, validated element by element
  overlap     pair IoUs bit-identical to pycocotools (boxes vectorised, masks with its C routine)
  matching    lvis-api's greedy matching for a batch of images, all thresholds and area ranges at once
  state       the 35 bytes kept per detection, and the picklable, mergeable evaluator state
  accumulate  precision/recall curves for all categories at once, lvis-api's summary numbers
  fixed       Fixed AP and Pooled AP (Dave et al. 2021): per-category top-K selection, pooled curves
  streaming   StreamingLVISEval: process(image) -> state() -> merge(states) -> summarize()
  files       evaluate_files (a results file), evaluate_detections (re-score detection shards)
  detections  detection shards: compact per-rank files of a run's raw detections
The mmengine metric on top of it is ecmctl.engine.lvis_stream_metric.StreamingLVISMetric (imports mmengine).
"""

from ecmctl.evaluation.files import evaluate_detections, evaluate_files
from ecmctl.evaluation.gt import GroundTruth, load_gt
from ecmctl.evaluation.state import EvalState
from ecmctl.evaluation.streaming import StreamingLVISEval

__all__ = ["EvalState", "GroundTruth", "StreamingLVISEval", "evaluate_detections", "evaluate_files", "load_gt"]
