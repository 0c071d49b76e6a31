"""`ecmctl eval`: the LVIS protocol (score_thr 1e-4, 300 detections per image) with lvis-api, box and mask."""

from __future__ import annotations

import json
import math
from pathlib import Path

from omegaconf import OmegaConf

from ecmctl.core.errors import UserError
from ecmctl.core.io import atomic_write_json, atomic_write_text, load_schema, sha256_file
from ecmctl.core.runs import HYDRA_CONFIG, MM_CONFIG, RunDir, now
from ecmctl.core.schemas import METRIC_KEYS, METRICS_SCHEMA
from ecmctl.engine.builder import set_test_protocol
from ecmctl.launch import Task, launch

METRICS_JSON = "metrics.json"


def eval_config(run_dir: Path, overrides: list[str]):
    """The run's Hydra config with eval.*, launcher.* and device= overrides applied."""
    cfg = OmegaConf.load(Path(run_dir) / HYDRA_CONFIG)
    bad = [o for o in overrides if not o.startswith(("eval.", "launcher.", "device="))]
    if bad:
        raise UserError(f"eval takes only eval.*, launcher.* and device= overrides, got {' '.join(bad)}")
    try:
        return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except Exception as e:
        raise UserError(f"bad eval override: {e}") from None


# per-class items of the metric ('bbox_class_recall/NAME') -> metrics.json sections ('bbox_recall_per_class');
# recall (at the 300 cap) and tp_score (mean score of IoU-0.5 true positives) are optional sections
PER_CLASS_SECTIONS = {"class_AP": "per_class", "class_recall": "recall_per_class",
                      "class_tp_score": "tp_score_per_class"}


def parse_metrics(raw: dict) -> dict:
    """mmengine's flat 'lvis/bbox_APr' keys -> {'bbox': {'APr': ...}, 'segm': {...}}, plus the per-class
    sections: '{iou}_per_class' (AP), '{iou}_recall_per_class' and '{iou}_tp_score_per_class'."""
    out: dict = {}
    for key, value in raw.items():
        name = key.split("/", 1)[-1]
        for iou in ("bbox", "segm"):
            if name.startswith(iou + "_"):
                item = name[len(iou) + 1:]
                if item in METRIC_KEYS:
                    out.setdefault(iou, {})[item] = float(value)
                elif "/" in item and item.split("/", 1)[0] in PER_CLASS_SECTIONS:
                    kind, cls = item.split("/", 1)
                    out.setdefault(f"{iou}_{PER_CLASS_SECTIONS[kind]}", {})[cls] = (
                        None if math.isnan(value) else float(value))
    return out


EVAL_MM_CONFIG = "eval_mmdet_config.py"
EVAL_RAW = "raw_metrics.json"


def eval_mm_config(run: RunDir, checkpoint: Path, cfg):
    """The run's mmdet config set up for testing `checkpoint` with the LVIS protocol of `cfg.eval`."""
    from mmengine.config import Config

    mm = Config.fromfile(str(run.path / MM_CONFIG))
    mm.work_dir = str((run.path / "eval").resolve())
    mm.load_from, mm.resume = str(Path(checkpoint).resolve()), False
    mm.test_evaluator.classwise = True  # per-class AP feeds metrics.json and the report
    set_test_protocol(mm.model, float(cfg.eval.score_thr), int(cfg.eval.max_per_img))
    mm.launcher = "pytorch" if cfg.launcher.name == "torchrun" else "none"  # slurm runs evaluate here
    mm.visualizer.vis_backends = [dict(type="LocalVisBackend")]
    return mm


def evaluate(run_dir: str | Path, checkpoint: str | Path | None = None, overrides: list[str] = (),
             say=print) -> dict:
    """Evaluate a run's checkpoint and write metrics.json into the run directory."""
    run = RunDir.open(run_dir)
    cfg = eval_config(run.path, list(overrides))
    ckpt = Path(checkpoint) if checkpoint else (Path(cfg.eval.checkpoint) if cfg.eval.checkpoint
                                                else run.last_checkpoint())
    if ckpt is None:
        raise UserError(f"{run.path}: no checkpoint yet; train it first or pass --checkpoint PATH")
    if not ckpt.is_file():
        raise UserError(f"{ckpt}: no such checkpoint")
    eval_dir = run.path / "eval"
    eval_dir.mkdir(exist_ok=True)
    atomic_write_text(eval_dir / EVAL_MM_CONFIG, eval_mm_config(run, ckpt, cfg).pretty_text)
    raw_file = eval_dir / EVAL_RAW
    raw_file.unlink(missing_ok=True)
    task = Task("ecmctl.engine.runner:test_run", str(run.path),
                {"config": f"eval/{EVAL_MM_CONFIG}", "out": f"eval/{EVAL_RAW}"})
    launcher = cfg.launcher if cfg.launcher.name == "torchrun" else OmegaConf.create({"name": "local"})
    launch(task, launcher, say, device=cfg.get("device", "auto"))
    return write_metrics(run.path, ckpt, cfg, json.loads(raw_file.read_text()))


def write_metrics(run_dir: Path, ckpt: Path, cfg, raw: dict) -> dict:
    parsed = parse_metrics(raw)
    if "bbox" not in parsed:
        raise RuntimeError(f"the evaluation returned no box metrics ({sorted(raw)}); "
                           "the model produced no detections")
    doc = {"schema": METRICS_SCHEMA, "run": str(run_dir), "checkpoint": str(ckpt),
           "checkpoint_sha256": sha256_file(ckpt), "evaluated": now(),
           "protocol": {"score_thr": float(cfg.eval.score_thr), "max_per_img": int(cfg.eval.max_per_img),
                        "ann_file": str(cfg.dataset.val_ann)},
           **parsed}
    atomic_write_json(run_dir / METRICS_JSON, doc)
    return doc


def load_metrics(run_dir: str | Path) -> dict:
    path = Path(run_dir) / METRICS_JSON
    if not path.is_file():
        raise UserError(f"{run_dir}: no {METRICS_JSON}; run `ecmctl eval {run_dir}` first")
    return load_schema(path, METRICS_SCHEMA)
