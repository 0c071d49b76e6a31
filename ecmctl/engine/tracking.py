"""Trackers (`tracking=tensorboard|wandb|mlflow`): mmengine's visualizer backends carry a run's scalars and
config; this module adds what mmengine does not send: the run's ECM inputs (r, weights sha256) when training
starts (`TrackerHook`) and its final metrics after evaluation (`log_final_metrics`).

One W&B run per run directory (its id is fixed, so a resumed run continues it); one MLflow run per training
start, tagged `ecmctl.run_dir`. run.json's `tracker` names the tracker run that the final metrics go to.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import time
from pathlib import Path

from mmengine.hooks import Hook
from mmengine.registry import HOOKS, VISBACKENDS
from mmengine.visualization import MLflowVisBackend, WandbVisBackend

from ecmctl.core.errors import UserError
from ecmctl.core.quiet import verbose
from ecmctl.engine.compat import scope_registry

MODULES = {"wandb": "wandb", "mlflow": "mlflow"}  # tracker -> the package it needs (and ecmctl's extra)


def require_tracker(name: str) -> None:
    """A missing tracker package is one line naming the extra, before any work (not mmengine's ImportError
    inside the training job)."""
    module = MODULES.get(name)
    if module is None:
        return
    try:
        importlib.import_module(module)
    except ImportError:
        raise UserError(f"tracking={name} needs the {module} package: pip install 'ecmctl[{name}]'") from None


def mlflow_uri(uri: str | None, run_root: str | os.PathLike) -> str:
    """The tracking URI, or the local file store <run_root>/mlruns (absolute: jobs run elsewhere)."""
    return str(uri) if uri else Path(run_root).resolve().joinpath("mlruns").as_uri()


def vis_backends(cfg, run_dir: str | os.PathLike) -> list[dict]:
    """mmengine's visualizer backends for `cfg.tracking` (always the local json scalars too)."""
    tc = cfg.tracking
    local = dict(type="LocalVisBackend")
    if tc.name == "wandb":
        init = dict(project=str(tc.project), name=str(cfg.name), dir=str(run_dir), resume="allow",
                    allow_val_change=True, id=hashlib.sha1(str(run_dir).encode()).hexdigest()[:16],
                    settings=dict(silent=not verbose()))  # W&B's banner lines: the log, not the console
        init.update({k: str(tc[k]) for k in ("entity", "mode") if tc.get(k)})
        return [local, dict(type="ecmctl.WandbBackend", init_kwargs=init)]
    if tc.name == "mlflow":
        return [local, dict(type="ecmctl.MLflowBackend", exp_name=str(tc.experiment), run_name=str(cfg.name),
                            tracking_uri=mlflow_uri(tc.uri, cfg.run_root), tags={"ecmctl.run_dir": str(run_dir)})]
    return [local, dict(type="TensorboardVisBackend")]


@scope_registry(VISBACKENDS).register_module(name="WandbBackend")
class WandbBackend(WandbVisBackend):
    """mmengine's W&B backend without `run.log_code()`, which uploads every .py file under the current
    directory (a virtual environment there: thousands)."""

    def add_config(self, config, **kwargs) -> None:
        self.experiment.config.update(config.to_dict(), allow_val_change=True)


@scope_registry(VISBACKENDS).register_module(name="MLflowBackend")
class MLflowBackend(MLflowVisBackend):
    """mmengine's MLflow backend; a `file:` store is allowed (MLflow 3 refuses it unless told)."""

    def _init_env(self) -> None:
        if str(self._tracking_uri).startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        super()._init_env()


def ecm_inputs(meta: dict) -> dict:
    """The run's ECM inputs as flat tracker params: r per RoI stage and how it was chosen, and the sha256 of
    its counts and weights files."""
    params: dict = {"ecmctl.run_dir": meta.get("run_dir", ""), "ecmctl.git_commit": meta.get("git_commit") or ""}
    if meta.get("bg_ratio"):
        params["ecm.r"] = ",".join(f"{r:.6g}" for r in meta["bg_ratio"])
        params["ecm.r_source"] = meta.get("bg_ratio_source")
    for key, entry in sorted((meta.get("inputs") or {}).items()):
        if isinstance(entry, dict) and entry.get("sha256"):
            params[f"ecm.{key}.sha256"] = entry["sha256"]
    return params


@scope_registry(HOOKS).register_module(name="TrackerHook")
class TrackerHook(Hook):
    """Rank 0, when training starts: the ECM inputs go to the tracker, and run.json records the tracker run
    (where `log_final_metrics` sends the metrics)."""

    priority = "LOWEST"

    def before_train(self, runner) -> None:
        from ecmctl.core.runs import RunDir

        run = RunDir(runner.work_dir)
        if runner.rank != 0 or not (run.path / "run.json").is_file():
            return
        params = ecm_inputs({**run.meta, "run_dir": str(run.path.resolve())})
        for backend in runner.visualizer._vis_backends.values():
            if isinstance(backend, MLflowVisBackend):
                mlflow = backend.experiment
                mlflow.log_params(params)
                run.update(tracker=dict(name="mlflow", uri=mlflow.get_tracking_uri(),
                                        run_id=mlflow.active_run().info.run_id))
            elif isinstance(backend, WandbVisBackend):
                wandb = backend.experiment
                wandb.config.update(params, allow_val_change=True)
                kw = backend._init_kwargs
                run.update(tracker=dict(name="wandb", id=wandb.run.id, project=wandb.run.project,
                                        entity=kw.get("entity"), dir=kw["dir"],
                                        mode="offline" if wandb.run.offline else "online"))


def final_scalars(doc: dict) -> dict[str, float]:
    """metrics.json's summary numbers as flat scalars: final/bbox_AP, final/segm_APr, final/bbox_AR_300, ..."""
    out = {}
    for section, values in doc.items():
        if isinstance(values, dict) and not section.endswith("per_class") and section not in ("protocol", "recipe"):
            out.update({re.sub(r"[^\w.\- /:]", "_", f"final/{section}_{k}"): float(v) for k, v in values.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})  # AR@300: MLflow's names
    return out


def log_final_metrics(tracker: dict | None, doc: dict) -> str | None:
    """Send an evaluation's metrics to the run's tracker run (run.json `tracker`); the line to show, or None
    when the run has no tracker."""
    if not tracker:
        return None
    scalars = final_scalars(doc)
    if tracker["name"] == "mlflow":
        if tracker["uri"].startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        stamp = int(time.time() * 1000)
        MlflowClient(tracking_uri=tracker["uri"]).log_batch(
            tracker["run_id"], metrics=[Metric(k, v, stamp, 0) for k, v in scalars.items()])
        return f"metrics logged to MLflow run {tracker['run_id']} ({tracker['uri']})"
    import wandb

    run = wandb.init(id=tracker["id"], project=tracker["project"], entity=tracker.get("entity"), dir=tracker["dir"],
                     mode=tracker.get("mode"), resume="allow", settings=dict(silent=not verbose()))
    run.summary.update(scalars)
    run.log(scalars)
    run.finish()
    offline = tracker.get("mode") == "offline"
    sync = f"; upload with `wandb sync {tracker['dir']}/wandb/offline-run-*`" if offline else ""
    return f"metrics logged to W&B run {tracker['id']} ({tracker.get('mode')}){sync}"
