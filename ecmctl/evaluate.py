"""`ecmctl eval`: the LVIS protocol (score_thr 1e-4, 300 detections per image) with lvis-api, box and mask."""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import OmegaConf

from ecmctl.errors import UserError
from ecmctl.io import atomic_write_json, load_schema, sha256_file
from ecmctl.runs import HYDRA_CONFIG, MM_CONFIG, RunDir, now
from ecmctl.schemas import METRICS_SCHEMA

METRICS_JSON = "metrics.json"
METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


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


def parse_metrics(raw: dict) -> dict:
    """mmengine's flat 'lvis/bbox_APr' keys -> {'bbox': {'APr': ...}, 'segm': {...}}, plus per-class AP."""
    out: dict = {}
    for key, value in raw.items():
        name = key.split("/", 1)[-1]
        for iou in ("bbox", "segm"):
            if name.startswith(iou + "_"):
                item = name[len(iou) + 1:]
                if item in METRIC_KEYS:
                    out.setdefault(iou, {})[item] = float(value)
                elif item.startswith("class_AP/"):
                    out.setdefault(f"{iou}_per_class", {})[item.split("/", 1)[1]] = (
                        None if math.isnan(value) else float(value))
    return out


def run_test(run_dir: str | Path, checkpoint: str | Path, cfg) -> dict:
    """Run mmengine's test loop for one checkpoint (one rank); returns the raw metrics dict."""
    from mmengine.config import Config

    from ecmctl.detector import make_runner, set_test_protocol

    run_dir = Path(run_dir)
    mm = Config.fromfile(str(run_dir / MM_CONFIG))
    mm.work_dir = str((run_dir / "eval").resolve())
    mm.load_from, mm.resume = str(checkpoint), False
    mm.test_evaluator.classwise = True  # per-class AP feeds metrics.json and the report
    set_test_protocol(mm.model, float(cfg.eval.score_thr), int(cfg.eval.max_per_img))
    mm.launcher = {"local": "none", "torchrun": "pytorch", "slurm": "slurm"}[cfg.launcher.name]
    mm.visualizer.vis_backends = [dict(type="LocalVisBackend")]
    return make_runner(mm).test()


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
    if cfg.launcher.name == "torchrun":
        import subprocess

        from ecmctl.launch import torchrun_command

        cmd = torchrun_command(run.path, cfg.launcher, resume=False) + ["--test", str(ckpt)]
        cmd += [a for ov in overrides for a in ("--set", ov)]
        if subprocess.run(cmd).returncode != 0:
            raise RuntimeError("distributed evaluation failed; see the ranks' logs above")
        return load_schema(run.path / METRICS_JSON, METRICS_SCHEMA)
    return write_metrics(run.path, ckpt, cfg, run_test(run.path, ckpt, cfg))


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


def metrics_table(docs: list[dict], names: list[str] | None = None):
    """Runs side by side (box, then mask); columns after the first show deltas against the first."""
    from rich.table import Table

    names = names or [Path(d["run"]).parent.name + "/" + Path(d["run"]).name for d in docs]
    table = Table(title="LVIS evaluation (AP in %)")
    table.add_column("metric")
    for i, n in enumerate(names):
        table.add_column(n if i == 0 else f"{n} (Δ)", justify="right")
    for iou in ("bbox", "segm"):
        if not any(iou in d for d in docs):
            continue
        for key in METRIC_KEYS:
            vals = [d.get(iou, {}).get(key) for d in docs]
            cells = []
            for i, v in enumerate(vals):
                if v is None or v < 0:
                    cells.append("-")
                elif i == 0 or vals[0] is None or vals[0] < 0:
                    cells.append(f"{100 * v:.1f}")
                else:
                    cells.append(f"{100 * v:.1f} ({100 * (v - vals[0]):+.1f})")
            table.add_row(f"{iou} {key}", *cells)
    return table
