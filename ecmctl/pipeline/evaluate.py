"""`ecmctl eval`: the LVIS protocol (score_thr 1e-4, 300 detections per image), box and mask, scored by the
streaming evaluator (ecmctl.evaluation: lvis-api's numbers, a few bytes per detection), optionally with
Fixed AP / Pooled AP; for a run directory (inference, or its kept detections) or any results file."""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ecmctl.core.checkpoint_record import verify_checkpoint
from ecmctl.core.config_schema import validate
from ecmctl.core.environment import require_device
from ecmctl.core.errors import UserError, as_interrupt, first_line
from ecmctl.core.io import atomic_write_json, atomic_write_text, check_output, load_schema, make_dirs, sha256_file
from ecmctl.core.metrics_identity import METRICS_JSON, METRICS_PREV_JSON, check_not_run_metrics, check_own_metrics
from ecmctl.core.runs import HYDRA_CONFIG, MM_CONFIG, RunDir, now
from ecmctl.core.schemas import COUNTS_SCHEMA, METRICS_SCHEMA
from ecmctl.engine.checkpoints import check_checkpoint
from ecmctl.engine.runner import load_run_config
from ecmctl.evaluation import evaluate_detections, evaluate_files
from ecmctl.evaluation.detections import shard_paths
from ecmctl.evaluation.params import MAX_DETS, PER_CLASS_KEYS, TOPK
from ecmctl.launch import eval_task, launch
from ecmctl.pipeline.prepare import check_val_categories

EVAL_DIR = "eval"
EVAL_MM_CONFIG = "eval_mmdet_config.py"
EVAL_RAW = "raw_metrics.json"
EVAL_LOCK = ".publish.lock"  # RUN/eval/: held while an evaluation puts its detections and metrics.json in place
DETECTIONS = "detections"  # RUN/eval/detections/: the raw detections of the last evaluation, per rank
DETECTIONS_JSON = "detections.json"  # what they are: checkpoint, protocol at inference
# metrics.json sections: standard AP, then Fixed AP and Pooled AP (Dave et al. 2021) when evaluated; longest first
SECTIONS = ("bbox_fixed", "bbox_pooled", "segm_fixed", "segm_pooled", "bbox", "segm")


def eval_config(run_dir: Path, overrides: list[str]) -> DictConfig:
    """The run's config with eval.*, launcher.* and device= overrides applied, typed and checked like any
    config (an unknown key or a bad value is an error, never ignored)."""
    cfg = OmegaConf.load(Path(run_dir) / HYDRA_CONFIG)
    bad = [o for o in overrides if not o.startswith(("eval.", "launcher.", "device="))]
    if bad:
        raise UserError(f"eval takes only eval.*, launcher.* and device= overrides, got {' '.join(bad)}")
    try:
        merged = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except Exception as e:
        raise UserError(f"bad eval override {' '.join(overrides)}: {str(e).splitlines()[0]}") from None
    return validate(merged)


# per-class items of the metric ('bbox_class_recall/NAME') -> metrics.json sections ('bbox_recall_per_class')
PER_CLASS_SECTIONS = {key: section for section, key in PER_CLASS_KEYS.items()}


def parse_metrics(raw: dict) -> dict:
    """The metric's flat 'lvis/bbox_APr', 'lvis/bbox_fixed_AP', 'lvis/segm_class_AP/name' keys ->
    {'bbox': {'APr': ...}, 'bbox_fixed': {...}, 'segm_per_class': {name: AP or None}, ...}, with the optional
    per-class sections '{iou}_recall_per_class' (at the 300 cap) and '{iou}_tp_score_per_class'."""
    out: dict = {}
    for key, value in raw.items():
        name = key.split("/", 1)[1] if key.startswith("lvis/") else key
        if "/" in name:  # '{section}_{kind}/{class name}'
            head, _, cls = name.partition("/")
            kind = next((k for k in PER_CLASS_SECTIONS if head.endswith("_" + k)), None)
            if kind is not None:
                section = head[: -len(kind) - 1]
                out.setdefault(f"{section}_{PER_CLASS_SECTIONS[kind]}", {})[cls] = (
                    None if math.isnan(value) else float(value))
        else:
            section = next((s for s in SECTIONS if name.startswith(s + "_")), None)
            if section is not None:
                item = name[len(section) + 1:]
                out.setdefault(section, {})[item] = int(value) if item == "classes_below_topk" else float(value)
    return out


def eval_mm_config(run: RunDir, checkpoint: Path, cfg: DictConfig, shard_dir: Path | None, work_dir: Path):
    """The run's mmdet config set up for testing `checkpoint` with the protocol of `cfg.eval`, writing its logs
    into `work_dir`."""
    from mmengine.config import Config

    from ecmctl.engine.builder import apply_eval_protocol  # mmdet and torch: not for `eval --reuse`, `report`

    mm = Config.fromfile(str(run.path / MM_CONFIG))
    mm.work_dir = str(work_dir.resolve())
    mm.load_from, mm.resume = str(Path(checkpoint).resolve()), False
    apply_eval_protocol(mm, cfg.eval, cfg.dataset.val_ann, bool(cfg.detector.with_mask),
                        str(shard_dir.resolve()) if shard_dir else None)
    mm.launcher = "pytorch" if cfg.launcher.name == "torchrun" else "none"  # slurm runs evaluate here
    mm.visualizer.vis_backends = [dict(type="LocalVisBackend")]
    if not any(h.get("type") == "ecmctl.ProgressHook" for h in mm.get("custom_hooks") or []):
        mm.custom_hooks = [*(mm.get("custom_hooks") or []), dict(type="ecmctl.ProgressHook")]  # quiet by default
    return mm


def _checkpoint(run: RunDir, checkpoint: str | Path | None, cfg: DictConfig) -> tuple[Path, str]:
    """The checkpoint to evaluate and its sha256: one the run wrote, intact (as recorded when it was written),
    fitting the run's model and finite. Another model's checkpoint is refused: metrics.json describes only the
    run's own model."""
    ckpt = Path(checkpoint) if checkpoint else (Path(cfg.eval.checkpoint) if cfg.eval.checkpoint
                                                else run.last_checkpoint())
    if ckpt is None:
        raise UserError(f"{run.path}: no checkpoint in this run directory; train it first "
                        "(or resume it) or pass --checkpoint PATH")
    if not ckpt.is_file():
        raise UserError(f"{ckpt}: no such checkpoint")
    own = ckpt.resolve().parent == run.path.resolve()
    sha = verify_checkpoint(run.path, ckpt) if own else None
    check_checkpoint(load_run_config(run.path, MM_CONFIG), ckpt)  # strict: shapes and names, before any write
    if not own:
        raise UserError(f"{ckpt}: not a checkpoint of {run.path}, whose metrics.json describes only its own model; "
                        "evaluate it with the run that wrote it")
    return ckpt, sha


def _check_run_writable(run: RunDir) -> None:
    """A read-only run directory is refused before inference or re-scoring, not after."""
    try:
        with tempfile.TemporaryFile(dir=run.path, prefix=".ecmctl-probe-"):
            pass
    except OSError as e:
        raise UserError(f"{run.path}: cannot write into the run directory ({e.strerror}), where metrics.json "
                        "goes; make it writable first") from None


def check_run_val_categories(run: RunDir, val_ann: str | Path) -> None:
    """The val set against the counts the run trained with (its inputs/counts.json), before any work."""
    counts = run.input_path("counts")
    if counts is not None and counts.is_file():
        check_val_categories(val_ann, load_schema(counts, COUNTS_SCHEMA), counts)


def evaluate(run_dir: str | Path, checkpoint: str | Path | None = None, overrides: list[str] = (),
             say=print, reuse_detections: bool = False, gt: str | Path | None = None,
             out: str | Path | None = None) -> dict:
    """Evaluate a run's checkpoint and write metrics.json into it; or (`reuse_detections`) re-score the
    detections it kept, against its val set or against `gt` (e.g. a subset of it) into `out`."""
    run = RunDir.open(run_dir)
    cfg = eval_config(run.path, list(overrides))
    if (gt is None) != (out is None) or (gt is not None and not reuse_detections):
        raise UserError("--gt with a run directory re-scores its kept detections: give --reuse-detections, --gt "
                        "and -o (the run's own metrics.json stays for its val set)")
    if checkpoint is not None and reuse_detections:
        raise UserError("--reuse-detections re-scores the detections the run kept: it takes no --checkpoint")
    if out is None:
        _check_run_writable(run)
    if reuse_detections:
        return _rescore(run, cfg, say, gt, out)
    check_run_val_categories(run, cfg.dataset.val_ann)
    ckpt, sha = _checkpoint(run, checkpoint, cfg)
    require_device(cfg.get("device", "auto"))
    eval_dir = make_dirs(run.path / EVAL_DIR, "evaluation directory")
    # this invocation's own scratch directory: two evaluations of one run at once never share a file
    scratch = Path(tempfile.mkdtemp(prefix=".eval-", dir=eval_dir))
    try:
        partial = scratch / DETECTIONS if cfg.eval.keep_detections else None
        atomic_write_text(scratch / EVAL_MM_CONFIG, eval_mm_config(run, ckpt, cfg, partial, scratch).pretty_text)
        rel = scratch.relative_to(run.path)
        task = eval_task(run.path, config=f"{rel}/{EVAL_MM_CONFIG}", out=f"{rel}/{EVAL_RAW}")
        launcher = cfg.launcher if cfg.launcher.name == "torchrun" else OmegaConf.create({"name": "local"})
        launch(task, launcher, say, device=cfg.get("device", "auto"))
        doc = metrics_document(run, ckpt, cfg, parse_metrics(json.loads((scratch / EVAL_RAW).read_text())),
                               checkpoint_sha256=sha)
        if partial is not None:
            atomic_write_json(partial / DETECTIONS_JSON, {"checkpoint": run.relative(ckpt),
                                                          "protocol": doc["protocol"], "checkpoint_sha256": sha})
        _publish(run, scratch, doc, partial)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _track(run, doc, say)
    return doc


@contextlib.contextmanager
def _publishing(eval_dir: Path):
    """RUN/eval/'s lock: one evaluation at a time puts its results in place or re-scores the kept detections
    (none where the run cannot be written: nothing is put in place there)."""
    try:
        lock = open(eval_dir / EVAL_LOCK, "a")  # noqa: SIM115 (closed below; opening it may fail alone)
    except OSError:
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _publish(run: RunDir, scratch: Path, doc: dict, detections: Path | None) -> None:
    """Put an evaluation's results in place, under a lock so that the kept detections, the config they were
    made with and metrics.json all come from the same evaluation (the last to finish), and its logs beside."""
    eval_dir = scratch.parent
    with _publishing(eval_dir):
        if detections is not None:  # the detections of this checkpoint replace the previous evaluation's
            if (eval_dir / DETECTIONS).exists():
                os.rename(eval_dir / DETECTIONS, scratch / "replaced-detections")
            os.rename(detections, eval_dir / DETECTIONS)
        os.replace(scratch / EVAL_MM_CONFIG, eval_dir / EVAL_MM_CONFIG)
        for logs in scratch.iterdir():  # mmengine's <timestamp>/ log directory
            if logs.is_dir() and logs.name != "replaced-detections" and not (eval_dir / logs.name).exists():
                os.rename(logs, eval_dir / logs.name)
        write_metrics(run.path, doc)


def _track(run: RunDir, doc: dict, say) -> None:
    """The final metrics to the run's tracker (W&B, MLflow), when it has one; metrics.json is written already,
    so a tracker that cannot be reached is said, not raised."""
    tracker = run.meta.get("tracker")
    if not tracker:
        return
    from ecmctl.engine.tracking import log_final_metrics

    try:
        line = log_final_metrics(tracker, doc)
    except Exception as e:
        if as_interrupt(e) is not None:
            raise
        say(f"the metrics did not reach {tracker['name']}: {first_line(e)}")
        return
    say(line)


def evaluate_after_training(run_dir: str | Path, say=print) -> dict | None:
    """train.eval_after=true, once training finished (in the SLURM job): the run's evaluation. A failure is
    said and recorded in run.json (`eval_error`), and the training run stays finished."""
    try:
        return evaluate(run_dir, say=say)
    except Exception as e:
        if as_interrupt(e) is not None:
            raise
        RunDir(run_dir).update(eval_error=first_line(e))
        say(f"evaluation after training failed: {first_line(e)}; evaluate with `ecmctl eval {run_dir}`")
        return None


def has_current_metrics(run: RunDir) -> bool:
    """Whether metrics.json evaluates the run's last checkpoint (`ecmctl eval SWEEP` skips those runs)."""
    path = run.path / METRICS_JSON
    last = run.last_checkpoint()
    return path.is_file() and last is not None and json.loads(path.read_text()).get("checkpoint") == run.relative(last)


def _rescore(run: RunDir, cfg: DictConfig, say, gt: str | Path | None = None, out: str | Path | None = None) -> dict:
    """`ecmctl eval RUN --reuse-detections [--gt SUBSET.json -o OUT]`: the kept detections of the last
    evaluation, scored again (another protocol, or another ground truth such as a subset), without inference."""
    if out is not None:
        out = check_output(out, schema=METRICS_SCHEMA, inputs=(gt, run.path / METRICS_JSON))
        check_not_run_metrics(out, f"the detections of {run.path} scored against {gt}")
    if gt is None:
        check_run_val_categories(run, cfg.dataset.val_ann)
    with _publishing(run.path / EVAL_DIR):
        return _rescore_kept(run, cfg, say, gt, out)


def _rescore_kept(run: RunDir, cfg: DictConfig, say, gt: str | Path | None, out: Path | None) -> dict:
    det_dir = run.path / EVAL_DIR / DETECTIONS
    info_file = det_dir / DETECTIONS_JSON
    if not info_file.is_file():
        raise UserError(f"{run.path}: no kept detections ({det_dir}); evaluate the run once with "
                        "eval.keep_detections=true")
    info = json.loads(info_file.read_text())
    shards = shard_paths(det_dir)
    ious = ["bbox", "segm"] if cfg.detector.with_mask else ["bbox"]
    protocols = ["standard"] + ([cfg.eval.protocol] if cfg.eval.protocol != "standard" else [])
    if cfg.eval.protocol != "standard" and info["protocol"].get("protocol", "standard") == "standard":
        say(f"the kept detections were made with {info['protocol']['max_per_img']} per image (the standard "
            "protocol): Fixed/Pooled AP from them is a lower bound; evaluate with eval.protocol="
            f"{cfg.eval.protocol} for the uncapped inference")
    parsed: dict = {}
    for iou in ious:
        for protocol in protocols:
            summary = evaluate_detections(gt or cfg.dataset.val_ann, shards, iou, protocol,
                                          max_dets=int(cfg.eval.max_per_img), topk=int(cfg.eval.topk))
            parsed.update(_sections(iou, protocol, summary))
    ckpt = run.path / info["checkpoint"]
    doc = metrics_document(run, ckpt, cfg, parsed, checkpoint_sha256=info["checkpoint_sha256"])
    doc["rescored_from"] = str(det_dir.relative_to(run.path))
    if gt is not None:
        doc["protocol"]["ann_file"] = str(gt)
        doc["gt_sha256"] = sha256_file(gt)
        atomic_write_json(out, doc)
        return doc
    write_metrics(run.path, doc)
    return doc


def _sections(iou: str, protocol: str, summary: dict) -> dict:
    """evaluate_files/evaluate_detections' summary as metrics.json sections."""
    name = iou if protocol == "standard" else f"{iou}_{protocol}"
    values = {k: float(v) for k, v in summary.items() if isinstance(v, float)}
    out = {name: values}
    for section in PER_CLASS_KEYS:
        per_class = summary.get(section)
        if per_class is not None:
            out[f"{name}_{section}"] = {k: (None if v < 0 else float(v)) for k, v in per_class.items()}
    if "classes_below_topk" in summary:
        out[name]["classes_below_topk"] = int(summary["classes_below_topk"])
    return out


def metrics_document(run: RunDir, ckpt: Path, cfg: DictConfig, parsed: dict,
                     checkpoint_sha256: str | None = None) -> dict:
    """metrics.json (schema ecmctl/metrics@1) of a run's evaluation."""
    if "bbox" not in parsed:
        raise UserError(f"{ckpt}: the evaluation returned no box metrics ({', '.join(sorted(parsed)) or 'none'}): "
                        f"the model produced no detections; {run.path / METRICS_JSON} is unchanged")
    ev = cfg.eval
    return {"schema": METRICS_SCHEMA, "run": str(run.path), "checkpoint": run.relative(ckpt),
            "checkpoint_sha256": checkpoint_sha256 or sha256_file(ckpt), "evaluated": now(),
            "protocol": {"protocol": ev.protocol, "score_thr": float(ev.score_thr), "max_per_img": int(ev.max_per_img),
                         "topk": int(ev.topk), "ann_file": str(cfg.dataset.val_ann)},
            # which ground truth, by content: `ecmctl compare` pairs only runs scored on the same one
            "gt_sha256": sha256_file(cfg.dataset.val_ann) if Path(cfg.dataset.val_ann).is_file() else None,
            "recipe": run.meta.get("recipe"),  # with the paper's numbers, for a side-by-side
            **parsed}


def write_metrics(run_dir: Path, doc: dict) -> dict:
    """metrics.json, replaced only now, after a successful evaluation; the previous one is kept."""
    previous = Path(run_dir) / METRICS_JSON
    if previous.is_file():
        atomic_write_text(Path(run_dir) / METRICS_PREV_JSON, previous.read_text())
    atomic_write_json(previous, doc)
    return doc


def evaluate_results_file(gt: str | Path, results: str | Path, iou_type: str = "bbox", protocol: str = "standard",
                          out: str | Path | None = None, topk: int = TOPK) -> dict:
    """`ecmctl eval --gt ANNOTATIONS.json --results RESULTS.json`: an LVIS-format results file (lvis-api,
    detectron2 and mmdet write them), scored without a run directory or a model, as metrics@1."""
    if out is not None:
        out = check_output(out, schema=METRICS_SCHEMA, inputs=(gt, results))
        check_not_run_metrics(out, f"the results file {results}")
    summary = evaluate_files(gt, results, iou_type, protocol, topk=topk)
    doc = {"schema": METRICS_SCHEMA, "gt": str(gt), "results": str(results), "evaluated": now(),
           "protocol": {"protocol": protocol, "iou_type": iou_type, "max_per_img": MAX_DETS, "topk": topk},
           **_sections(iou_type, protocol, summary)}
    if out is not None:
        atomic_write_json(out, doc)
    return doc


def load_metrics(run_dir: str | Path) -> dict:
    """A run's metrics.json, once checked to score the run's own model (never foreign numbers under its name)."""
    path = Path(run_dir) / METRICS_JSON
    if not path.is_file():
        raise UserError(f"{run_dir}: no {METRICS_JSON}; run `ecmctl eval {run_dir}` first")
    return check_own_metrics(run_dir, load_schema(path, METRICS_SCHEMA), path)
