"""`ecmctl train`: compose, plan (detector kind, batch and lr, backbone weights), prepare the run directory
(counts, weights, configs), then launch; or write the resolved mmdet config without touching any data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ecmctl.core.checkpoint_record import verify_checkpoint
from ecmctl.core.config import to_yaml
from ecmctl.core.environment import device_name, require_device, versions
from ecmctl.core.errors import UserError, as_interrupt, first_line
from ecmctl.core.io import atomic_write_text, check_output, check_writable
from ecmctl.core.runs import HYDRA_CONFIG, MM_CONFIG, RunDir, git_commit, new_run_dir, now
from ecmctl.core.signals import deferred, terminate_as_interrupt
from ecmctl.dataset.counting import load_counts
from ecmctl.ecm.weights import EVERY_WEIGHTS_FILE, weights_file_names
from ecmctl.engine.builder import base_config, build_mm_config, pretrained_checkpoint
from ecmctl.engine.checkpoints import ensure_checkpoint, read_state_dict
from ecmctl.engine.placement import Placement, check_loss, drop_semantic_branch, model_has_masks, plan_placement
from ecmctl.launch import Task, launch, train_task
from ecmctl.pipeline.calibrate import run_calibration
from ecmctl.pipeline.prepare import (
    Say,
    annotations_sha256,
    check_val_categories,
    check_weights,
    class_names,
    class_names_without_data,
    ensure_counts,
    foreign_inputs,
)
from ecmctl.pipeline.recipes import BatchPlan, plan_batch


@dataclass(frozen=True)
class RunPlan:
    """What a run will be, decided from the config alone (no data read): fails fast on bad choices."""

    placement: Placement  # the classification sites and the weights files loss=ecm needs
    batch: BatchPlan
    pretrained: str | None
    notes: tuple[str, ...] = ()  # what ecmctl changed in the detector beyond classes and loss, said once

    @property
    def kind(self) -> str:  # two_stage | cascade | query | one_stage
        return self.placement.kind

    @property
    def stages(self) -> int:
        """Classification sites with a background class, each calibrated to its own r."""
        return self.placement.stages

    def weights_names(self, loss_type: str) -> list[str] | None:
        """The run's own copies of the weights file(s), relative to the run directory: one per background
        stage, then the foreground-only one when the detector has such sites."""
        if loss_type != "ecm":
            return None
        return [f"inputs/{name}" for name in weights_file_names(self.stages, self.placement.needs_fg)]

    def with_background(self, i: int) -> bool:
        """Whether the i-th weights file of `weights_names` has a background class."""
        return i < self.stages


def plan_run(cfg: DictConfig) -> RunPlan:
    """Classification sites, batch/lr and backbone checkpoint; refuses what cannot run (a head ECM or the chosen
    loss cannot reach, device, strict recipe) before anything is written."""
    from ecmctl.engine.tracking import require_tracker  # mmengine's visualizer backends: imported when used

    require_device(cfg.device)
    require_tracker(cfg.tracking.name)
    mm = base_config(cfg)
    dropped = drop_semantic_branch(mm.model)
    placement = plan_placement(mm.model)
    if cfg.loss.type in ("ce", "seesaw") and (other := [s for s in placement.sites if not s.roi]):
        raise UserError(f"loss={cfg.loss.name} is defined for RoI box heads only; {other[0].head_type} "
                        f"({other[0].where}) classifies with {other[0].base_loss}: use loss=ecm or loss=bce")
    check_loss(placement, cfg.loss.type)  # eqlv2/eql/fed on RoI box heads only, efl on focal-loss heads only
    notes = tuple(f"{d}: removed (a semantic-segmentation branch needs stuff maps that instance annotations "
                  "do not have)" for d in dropped)
    return RunPlan(placement=placement, batch=plan_batch(cfg), pretrained=pretrained_checkpoint(mm), notes=notes)


MMDET_CONFIG_HEADER = "# mmdet config written by `ecmctl train --mmdet-config`"
RUN_COUNTS = "inputs/counts.json"  # the run's copy of its counts (`prepare`), relative to the run: eql/fed read it


def write_mmdet_config(cfg: DictConfig, out: str | Path, say: Say = print) -> Path:
    """`ecmctl train ... --mmdet-config OUT.py`: the fully resolved mmdet config of the run this command would
    start, without reading the dataset's files, calibrating or training. Paths into the run directory
    (the weights files calibration would write) are relative to it. OUT never replaces a file other than
    an earlier config written this way (they start with MMDET_CONFIG_HEADER)."""
    out = check_output(out, inputs=(cfg.counts_file,), option="--mmdet-config",
                       marker=MMDET_CONFIG_HEADER.encode(), kind="`--mmdet-config` output")
    plan = plan_run(cfg)
    say(plan.batch.message())
    mm = build_mm_config(cfg, class_names_without_data(cfg), "RUN_DIR", plan.weights_names(cfg.loss.type),
                         lr=plan.batch.lr, accumulation=plan.batch.accumulation, counts_file=RUN_COUNTS)
    return atomic_write_text(out, f"{MMDET_CONFIG_HEADER}\n{mm.pretty_text}")


def prefetch_checkpoints(cfg: DictConfig, say: Say = print) -> list[tuple[str, Path]]:
    """`ecmctl prefetch`: every checkpoint the config needs, in the local cache; (name, file) pairs."""
    name = pretrained_checkpoint(base_config(cfg))
    if name is None:
        say(f"detector {cfg.detector.name} starts from random init (detector.pretrained=null): nothing to fetch")
        return []
    return [(name, ensure_checkpoint(name, say, timeout=300))]


def given_weights(cfg: DictConfig, plan: RunPlan, say: Say = print) -> list[str] | None:
    """The weights_file(s) the user gave, one per RoI stage; None when the run makes its own."""
    if plan.weights_names(cfg.loss.type) is None:
        if cfg.weights_file:
            say(f"weights_file is not used: loss={cfg.loss.name} has no ECM weights")
        return None
    if not cfg.weights_file:
        return None
    given = cfg.weights_file
    want = len(plan.weights_names("ecm"))
    if isinstance(given, str):
        if want > 1 and plan.placement.needs_fg:
            raise UserError(f"weights_file: {cfg.detector.name} needs {plan.stages} weights file(s) with background "
                            "and one foreground-only file; give them as a list, background stages first")
        files = [str(given)] * want  # every RoI stage with the same r
    else:
        files = [str(f) for f in given]
    if len(files) != want:
        raise UserError(f"weights_file: {len(files)} files, but {cfg.detector.name} needs {want} "
                        f"({plan.stages} with background, one per stage"
                        + (", then one foreground-only)" if plan.placement.needs_fg else ")"))
    return files


def check_run_weights(cfg: DictConfig, plan: RunPlan, files: list[str], counts_file: Path, counts: dict) -> None:
    """Every weights file of the run: consistent values, the dataset's classes and counts, the head's layout,
    and made from this dataset's annotations (unless allow_foreign_weights)."""
    ann_sha = annotations_sha256(cfg.dataset.train_ann)
    for i, f in enumerate(files):
        check_weights(f, counts, with_background=plan.with_background(i), counts_file=counts_file,
                      ann_sha256=ann_sha, allow_foreign=bool(cfg.allow_foreign_weights))


def resolve_weights(cfg: DictConfig, plan: RunPlan, counts_file: Path, counts: dict, run: RunDir,
                    say: Say, files: list[str] | None = None) -> list[str] | None:
    """The weights file(s) for loss=ecm, copied into the run: given (`files`, already checked), or made now
    (calibrate for RoI heads, foreground-only weights for dense heads)."""
    names = plan.weights_names(cfg.loss.type)
    if names is None:
        return None
    if not files:
        say("loss=ecm has no weights_file: running `ecmctl calibrate` first"
            + (" (foreground-only weights)" if plan.stages == 0 else ""))
        cal = run_calibration(cfg, run.path / "calibration", say, counts=(counts_file, counts))
        run.save_input("calibration", run.path / "calibration" / "calibration.json", "calibration.json")
        for st in cal.per_stage:
            ci = f", 95% CI [{st['ci95'][0]:.4g}, {st['ci95'][1]:.4g}]" if st.get("ci95") else ""
            say(f"r = {st['r']:.4g}{ci}" + (f" (stage {st['stage']}: {st['site']})" if len(cal.per_stage) > 1 else "")
                + (f" over {st['iters']} iterations" if st.get("iters") else " (fixed)"))
        files = list(cal.weights_files)
        check_run_weights(cfg, plan, files, counts_file, counts)
    for f, name in zip(files, names):
        run.save_input(Path(name).stem, f, Path(name).name)
        calibration = Path(f).parent / "calibration.json"  # where `calibrate` wrote this file
        if cfg.weights_file and calibration.is_file() and "calibration" not in run.meta.get("inputs", {}):
            run.save_input("calibration", calibration, "calibration.json")
    return names


def check_amp(cfg: DictConfig) -> None:
    """train.amp=true trains with mmengine's AmpOptimWrapper, which needs CUDA: refused before any work where the
    run would train on this machine's CPU (on SLURM the ranks' nodes decide, engine/runner.py amp_dtype)."""
    if not cfg.train.amp:
        return
    where = "device=cpu" if cfg.device == "cpu" else None
    if where is None and cfg.launcher.name != "slurm":
        import torch

        where = None if torch.cuda.is_available() else "no GPU is usable here"
    if where:
        raise UserError(f"train.amp=true needs a GPU (mmengine's AmpOptimWrapper trains on CUDA only), but {where}; "
                        "set train.amp=false")


def prepare(cfg: DictConfig, overrides: list[str], say: Say = print,
            on_run: Callable[[RunDir], None] | None = None) -> RunDir:
    """Plan and check every input (device, run_dir, counts, given weights) before anything is written; then
    create and lock the run directory (`on_run` is told), make the missing inputs and write both configs.
    A failure after the directory exists leaves it `failed` (with the reason) or `interrupted`."""
    plan = plan_run(cfg)
    say(plan.batch.message())
    for note in plan.notes:
        say(note)
    check_amp(cfg)
    if cfg.run_dir:
        RunDir.check_new(cfg.run_dir)
    else:
        check_writable(cfg.run_root, "run_root")
    if plan.pretrained:
        ensure_checkpoint(plan.pretrained, say)
    counts_file, counts = ensure_counts(cfg, say)
    check_val_categories(cfg.dataset.val_ann, counts, counts_file)
    files = given_weights(cfg, plan, say)
    if files:
        check_run_weights(cfg, plan, files, counts_file, counts)
    run = RunDir.create(cfg.run_dir) if cfg.run_dir else RunDir(new_run_dir(cfg.run_root, cfg.name))
    if on_run is not None:
        on_run(run)
    try:  # from the directory's first second: whatever stops the preparation leaves a final state
        run.lock()
        run.update(name=cfg.name, status="preparing", created=now(), overrides=list(overrides),
                   git_commit=git_commit(), versions=versions(), device=device_name(cfg.device),
                   launcher=cfg.launcher.name, max_iters=cfg.train.max_iters, max_epochs=cfg.train.max_epochs,
                   recipe=OmegaConf.to_container(cfg.recipe) if cfg.recipe.name else None,
                   effective_batch=plan.batch.effective_batch, world_size=plan.batch.world_size, lr=plan.batch.lr,
                   base_lr=plan.batch.base_lr, base_batch=plan.batch.base_batch, pretrained=plan.pretrained,
                   batch_policy=plan.batch.policy, accumulation_steps=plan.batch.accumulation,
                   images_per_iteration=plan.batch.images_per_iteration, amp=bool(cfg.train.amp),
                   amp_dtype=str(cfg.train.get("amp_dtype", "auto")) if cfg.train.amp else None)
        counts_file, counts = run_counts(run, counts_file, counts)
        weights = resolve_weights(cfg, plan, counts_file, counts, run, say, files)
        foreign = foreign_inputs(cfg, counts_file, counts, [str(run.path / w) for w in weights or []])
        mm = build_mm_config(cfg, class_names(counts), run.path.resolve(), weights, lr=plan.batch.lr,
                             accumulation=plan.batch.accumulation, counts_file=RUN_COUNTS)
        OmegaConf.update(cfg, "detector.with_mask", model_has_masks(mm.model))  # eval reads it from the run
        atomic_write_text(run.path / HYDRA_CONFIG, to_yaml(cfg))
        atomic_write_text(run.path / MM_CONFIG, mm.pretty_text)
        run.update(status="ready", **_bg_ratio_used(run),
                   **({"allow_foreign_weights": True, "foreign_inputs": foreign} if foreign else {}))
        say(f"run directory: {run.path}")
        say(f"device: {run.meta.get('device')}")
    except BaseException as e:
        with deferred():
            try:
                if (stop := as_interrupt(e)) is None:
                    run.update(status="failed", stopped=now(), reason=first_line(e))
                    raise
                run.update(status="interrupted", stopped=now(), reason="interrupted while preparing, before "
                           "training")
                say(f"interrupted before training started; {run.path} cannot be resumed, start a new run")
            finally:
                run.unlock()
        raise stop from stop.__cause__  # the library error that hid it, if any
    return run


def run_counts(run: RunDir, counts_file: Path, counts: dict) -> tuple[Path, dict]:
    """The run's own copy of its counts, used from now on (calibration, weights): the shared cache or the user's
    file can be replaced by another job meanwhile. A copy that is not the counts checked before is refused."""
    copy = run.save_input("counts", counts_file, "counts.json")
    doc, _ = load_counts(copy)
    if doc.get("source") != counts.get("source") or doc.get("categories") != counts.get("categories"):
        raise UserError(f"{counts_file}: changed while this run was being prepared (another job wrote it); start "
                        "the run again")
    return copy, doc


def _bg_ratio_used(run: RunDir) -> dict:
    """Which background ratio r the run's ECM weights were made with, per RoI stage, and how."""
    from ecmctl.core.io import load_json

    ratios = [r for name in EVERY_WEIGHTS_FILE
              if (p := run.input_path(Path(name).stem)) is not None and (r := load_json(p)["bg_ratio"]) is not None]
    cal = run.input_path("calibration")
    source = load_json(cal).get("bg_ratio_source", "measured") if cal else "given"
    return {"bg_ratio": ratios, "bg_ratio_source": source} if ratios else {}


def train(cfg: DictConfig, overrides: list[str], say: Say = print,
          on_run: Callable[[RunDir], None] | None = None) -> RunDir:
    """Prepare a new run and train it with the configured launcher (`on_run`: told the run directory as
    soon as it exists, so a caller can record it even when the run then fails). On the other nodes of a
    multi-node torchrun job, join the run that node 0 prepares instead."""
    lc = cfg.launcher
    if lc.name == "torchrun" and int(lc.nnodes) > 1 and int(lc.node_rank) > 0:
        return join_run(cfg, say)
    run = prepare(cfg, overrides, say, on_run)
    return launch_run(run, cfg, resume=False, say=say)


JOIN_POLL_S = 5


def join_run(cfg: DictConfig, say: Say = print, timeout_s: float = 24 * 3600) -> RunDir:
    """Node k > 0 of a multi-node torchrun job: wait until node 0 has prepared `run_dir` (counts, calibration,
    configs: it alone writes them), then start this node's ranks of the same training task."""
    import time

    if not cfg.run_dir:
        raise UserError(f"launcher.node_rank={cfg.launcher.node_rank}: a multi-node run needs the same "
                        "run_dir=/shared/path on every node (node 0 prepares it, the others join)")
    run, deadline = RunDir(cfg.run_dir), time.monotonic() + timeout_s
    say(f"node {cfg.launcher.node_rank}: waiting for node 0 to prepare {run.path}")
    while (status := run.meta.get("status")) not in ("ready", "running"):
        if status in ("failed", "interrupted", "finished"):
            raise UserError(f"{run.path}: node 0's run is {status}; nothing to join")
        if time.monotonic() > deadline:
            raise UserError(f"{run.path}: node 0 did not prepare the run within {timeout_s / 3600:.0f} h")
        time.sleep(JOIN_POLL_S)
    launch(train_task(run.path), cfg.launcher, say, device=cfg.device)
    return run


def resume(run_dir: str | Path, say: Say = print) -> RunDir:
    """Continue a run from its last checkpoint, with the launcher it was started with."""
    run = RunDir.open(run_dir)
    meta = run.meta
    if meta.get("status") == "finished":
        raise UserError(f"{run.path}: the run already finished; nothing to resume")
    if not (run.path / MM_CONFIG).is_file() or not (run.path / HYDRA_CONFIG).is_file():
        raise UserError(f"{run.path}: no {MM_CONFIG}; the run never got ready, start a new one")
    cfg = OmegaConf.load(run.path / HYDRA_CONFIG)
    require_device(cfg.get("device", "auto"))
    last = run.last_checkpoint()
    if last is not None:  # a checkpoint cut off by a crash, or damaged since: one line, not a traceback
        try:
            verify_checkpoint(run.path, last)
            read_state_dict(last)
        except UserError as e:
            raise UserError(f"{e}; remove {last} to resume from the checkpoint before it") from None
    run.lock()
    say(f"resuming {run.path} from {run.last_checkpoint() or 'the start (no checkpoint yet)'}")
    return launch_run(run, cfg, resume=True, say=say)


def launch_run(run: RunDir, cfg: DictConfig, resume: bool, say: Say) -> RunDir:
    """Launch the run's training and record how it ended: finished, failed (with the reason) or interrupted
    (SIGTERM too, from the first second). A SLURM run's lock passes to its job once submitted."""
    slurm = cfg.launcher.name == "slurm"  # the job marks itself running, then finished or failed
    after = eval_after_task(run.path) if cfg.train.get("eval_after") else None
    try:
        with terminate_as_interrupt():
            run.update(status="submitted" if slurm else "running", **({} if slurm else {"started": now()}))
            job = launch(train_task(run.path, resume), cfg.launcher, say, device=cfg.device, after=after)
            if slurm and _on_slurm(job):  # `ecmctl status` asks SLURM about it, even if it never starts
                run.update(slurm_job=job.job_id)
    except BaseException as e:
        with deferred():
            try:
                if (stop := as_interrupt(e)) is None:
                    run.update(status="failed", stopped=now(), reason=first_line(e))
                    raise
                run.update(status="interrupted", stopped=now())
                say(f"interrupted; continue with `ecmctl train --resume {run.path}`")
            finally:
                run.unlock()
        raise stop from stop.__cause__  # the library error that hid it, if any
    try:
        if not slurm:
            run.update(status="finished", finished=now(), checkpoint=run.relative(run.last_checkpoint()))
    finally:
        run.unlock()
    if not slurm and after is not None:
        after.run()
    return run


def _on_slurm(job) -> bool:
    """A job of a real SLURM cluster (not submitit's local executor, whose ids are process ids)."""
    import submitit

    return isinstance(job, submitit.SlurmJob)


def eval_after_task(run_dir: str | Path) -> Task:
    """train.eval_after=true: `ecmctl eval RUN` once training finished (in the SLURM job, on its node)."""
    return Task("ecmctl.pipeline.evaluate:evaluate_after_training", str(run_dir))


def finished_iters(run_dir: str | Path) -> int | None:
    """The iteration count of a run's last checkpoint (its `meta.iter`), or None."""
    import torch

    ckpt = RunDir(run_dir).last_checkpoint()
    if ckpt is None:
        return None
    return int(torch.load(ckpt, map_location="cpu", weights_only=False)["meta"]["iter"])
