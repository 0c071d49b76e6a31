"""`ecmctl train`: compose, prepare the run directory (counts, weights, configs), then launch."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ecmctl.core.config import to_yaml
from ecmctl.core.environment import device_name, versions
from ecmctl.core.errors import UserError
from ecmctl.core.io import atomic_write_text
from ecmctl.core.runs import HYDRA_CONFIG, MM_CONFIG, RunDir, git_commit, new_run_dir, now
from ecmctl.engine.builder import base_config, build_mm_config
from ecmctl.launch import launch, train_task
from ecmctl.losses.placement import detector_kind
from ecmctl.pipeline.calibrate import run_calibration
from ecmctl.pipeline.prepare import Say, check_weights, class_names, ensure_counts


def resolve_weights(cfg: DictConfig, kind: str, counts_file: Path, counts: dict, run: RunDir,
                    say: Say) -> list[str] | None:
    """The weights file(s) for loss=ecm: given, or made now (calibrate for RoI heads, weights for dense)."""
    if cfg.loss.type != "ecm":
        return None
    stages = 3 if kind == "cascade" else 1
    if cfg.weights_file:
        given = cfg.weights_file
        files = [str(given)] * stages if isinstance(given, str) else [str(f) for f in given]
    else:
        say("loss=ecm has no weights_file: running `ecmctl calibrate` first"
            + (" (one-stage: foreground-only weights)" if kind == "one_stage" else ""))
        cal = run_calibration(cfg, run.path / "calibration", say, counts=(counts_file, counts))
        run.save_input("calibration", run.path / "calibration" / "calibration.json")
        files = list(cal.weights_files)
    if len(files) != stages:
        raise UserError(f"weights_file: {len(files)} files for {stages} RoI stage(s) of {cfg.detector.name}")
    for i, f in enumerate(files):
        check_weights(f, counts, with_background=kind != "one_stage")
        files[i] = str(run.save_input(f"weights_stage{i}" if stages > 1 else "weights", f))
        calibration = Path(f).parent / "calibration.json"  # where `calibrate` wrote this file
        if cfg.weights_file and calibration.is_file() and "calibration" not in run.meta.get("inputs", {}):
            run.save_input("calibration", calibration)
    return files


def prepare(cfg: DictConfig, overrides: list[str], say: Say = print) -> RunDir:
    """Create and lock the run directory, make every missing input, write both configs."""
    kind = detector_kind(base_config(cfg).model)  # fails fast on an unsupported detector
    counts_file, counts = ensure_counts(cfg, say)
    run = RunDir(Path(cfg.run_dir) if cfg.get("run_dir") else new_run_dir(cfg.run_root, cfg.name))
    run.path.mkdir(parents=True, exist_ok=True)
    run.lock()
    run.update(name=cfg.name, status="preparing", created=now(), overrides=list(overrides),
               git_commit=git_commit(), versions=versions(), device=device_name(),
               launcher=cfg.launcher.name, max_iters=int(cfg.train.max_iters))
    run.save_input("counts", counts_file)
    weights = resolve_weights(cfg, kind, counts_file, counts, run, say)
    mm = build_mm_config(cfg, class_names(counts), run.path.resolve(), weights)
    atomic_write_text(run.path / HYDRA_CONFIG, to_yaml(cfg))
    atomic_write_text(run.path / MM_CONFIG, mm.pretty_text)
    run.update(status="ready")
    return run


def train(cfg: DictConfig, overrides: list[str], say: Say = print) -> RunDir:
    """Prepare a new run and train it with the configured launcher."""
    run = prepare(cfg, overrides, say)
    say(f"run directory: {run.path}")
    return launch_run(run, cfg, resume=False, say=say)


def resume(run_dir: str | Path, say: Say = print) -> RunDir:
    """Continue a run from its last checkpoint, with the launcher it was started with."""
    run = RunDir.open(run_dir)
    meta = run.meta
    if meta.get("status") == "finished":
        raise UserError(f"{run.path}: the run already finished ({meta.get('max_iters')} iterations); "
                        "nothing to resume")
    if not (run.path / MM_CONFIG).is_file():
        raise UserError(f"{run.path}: no {MM_CONFIG}; the run never got ready, start a new one")
    run.lock()
    cfg = OmegaConf.load(run.path / HYDRA_CONFIG)
    say(f"resuming {run.path} from {run.last_checkpoint() or 'the start (no checkpoint yet)'}")
    return launch_run(run, cfg, resume=True, say=say)


def launch_run(run: RunDir, cfg: DictConfig, resume: bool, say: Say) -> RunDir:
    slurm = cfg.launcher.name == "slurm"  # the job marks itself running, then finished
    run.update(status="submitted" if slurm else "running", **({} if slurm else {"started": now()}))
    try:
        launch(train_task(run.path, resume), cfg.launcher, say, device=cfg.device)
    except BaseException:
        run.update(status="failed", stopped=now())
        raise
    finally:
        run.unlock()
    if not slurm:
        run.update(status="finished", finished=now(), checkpoint=str(run.last_checkpoint()))
    return run


def finished_iters(run_dir: str | Path) -> int | None:
    """The iteration count of a run's last checkpoint (its `meta.iter`), or None."""
    import torch

    ckpt = RunDir(run_dir).last_checkpoint()
    if ckpt is None:
        return None
    return int(torch.load(ckpt, map_location="cpu", weights_only=False)["meta"]["iter"])
