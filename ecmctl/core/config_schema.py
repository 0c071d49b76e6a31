"""The typed config: one dataclass per config group, checked once right after composition.

Hydra composes `ecmctl/conf/` as plain YAML; `validate()` then merges the result onto these dataclasses
(OmegaConf structured configs: types, booleans and unknown keys) and checks each field's range from its
metadata, so a bad value or an unknown key is one line naming the key, the value and what is allowed,
for every command, before anything runs.
"""

from __future__ import annotations

import difflib
import math
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from ecmctl.core.errors import UserError
from ecmctl.core.schemas import MAX_BG_RATIO


def rule(default: Any = MISSING, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
         lt: float | None = None, choices: tuple | None = None, factory: Any = None, each: bool = False,
         min_len: int | None = None):
    """A dataclass field with a range or a set of choices, checked by `validate` (`each`: every item of
    a list; `min_len`: the list's length). Why metadata: one walker checks every group and names the key in
    one place."""
    meta = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt, choices=choices, each=each, min_len=min_len).items()
            if v is not None and v is not False}  # identity: a bound of 0 (== False) is a bound
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class SynthConf:
    profile: str = rule("small", choices=("lvis", "small"))  # how per-class counts are designed (ecmctl synth)
    classes: int = rule(24, ge=3)
    train_images: int = rule(400, ge=1)
    val_images: int = rule(120, ge=1)
    image_size: int = rule(128, ge=32)  # width (and height unless image_height)
    image_height: int | None = rule(None, ge=32)
    repeat_looks: bool = False  # more classes than distinct looks: looks repeat under numbered names
    seed: int = rule(0, ge=0)


@dataclass
class DatasetConf:
    name: str = MISSING
    root: str = MISSING
    train_ann: str = MISSING
    val_ann: str = MISSING
    img_prefix: str = ""
    train_scale: list[int] = rule(factory=lambda: [1333, 800], gt=0, each=True)  # (w, h), keep_ratio
    test_scale: list[int] = rule(factory=lambda: [1333, 800], gt=0, each=True)
    multiscale: list[list[int]] | None = None  # (w, h) choices for training, or null
    flip: float = rule(0.5, ge=0.0, le=1.0)
    rfs_thr: float | None = rule(None, gt=0.0, le=1.0)  # repeat-factor sampling, null = off
    # train/val on a packed copy of the annotations (ecmctl.PackedLVISV1Dataset, one memory-mapped file per node);
    # false: mmdet's LVISV1Dataset, every rank parsing the json itself
    packed: bool = True
    cache_dir: str | None = None  # where packs live; null: <run_root>/cache/datasets
    synth: SynthConf | None = None  # how to generate the embedded dataset when missing


@dataclass
class DetectorConf:
    name: str = MISSING
    mmdet_config: str = MISSING  # relative to mmdet's shipped configs, or the user's own .py file
    with_mask: bool | None = None  # null: read from the model (mask heads); given, it must agree
    normed_head: bool = False  # NormedLinear (tau 20) box classifier, NormedConv2d mask predictor
    # backbone weights: a torchvision:// or open-mmlab:// name, a URL, a local file, `config` (the config's own
    # initialisation, untouched) or null (random init everywhere: no checkpoint is loaded)
    pretrained: str | None = None
    model: dict[str, Any] = field(default_factory=dict)  # merged into mmdet's `model`


@dataclass
class FocalConf:
    gamma: float = rule(2.0, ge=0.0)
    alpha: float = rule(0.25, ge=0.0, le=1.0)


@dataclass
class EQLv2Conf:  # Equalization Loss v2 (Tan et al. 2021): r = 1/(1+exp(-gamma (g - mu))), q = 1 + alpha (1 - r)
    gamma: float = rule(12.0, gt=0.0)
    mu: float = rule(0.8, ge=0.0)
    alpha: float = rule(4.0, ge=0.0)


@dataclass
class EQLConf:  # Equalization Loss (Tan et al. 2020): tail classes have image frequency < lambda_
    lambda_: float = rule(1.76e-3, gt=0.0, le=1.0)


@dataclass
class FedConf:  # Federated loss (detectron2's FED_LOSS_NUM_CLASSES, FED_LOSS_FREQ_WEIGHT_POWER)
    num_sampled_classes: int = rule(50, ge=1)
    freq_weight_power: float = rule(0.5, ge=0.0)
    seed: int | None = rule(None, ge=0)  # null: mmengine's seed (the run's `seed`), plus the rank


@dataclass
class EFLConf:  # Equalized Focal Loss (Li et al. 2022): gamma_j = focal.gamma + scale (1 - g_j)
    scale: float = rule(8.0, ge=0.0)


@dataclass
class LossConf:
    name: str = MISSING
    type: str = rule(MISSING, choices=("ecm", "bce", "ce", "seesaw", "eqlv2", "eql", "fed", "efl"))
    loss_weight: float = rule(1.0, gt=0.0)
    focal: FocalConf | None = None  # dense heads: focal weighting of (ECM) BCE; EFL's gamma_b and alpha
    varifocal: FocalConf | None = None  # VarifocalNet: varifocal weighting (gamma 2, alpha 0.75)
    p: float | None = rule(None, ge=0.0)  # seesaw
    q: float | None = rule(None, ge=0.0)
    eqlv2: EQLv2Conf | None = None
    eql: EQLConf | None = None
    fed: FedConf | None = None
    efl: EFLConf | None = None


@dataclass
class ScheduleConf:
    name: str = MISSING
    by_epoch: bool = False  # epochs of the (RFS-resampled) training set, as the paper counts them
    max_iters: int | None = rule(None, ge=1)  # iteration-based schedules
    max_epochs: int | None = rule(None, ge=1)  # epoch-based schedules
    # lr steps x0.1: epochs when by_epoch, else fractions of max_iters
    milestones: list[float] = rule(factory=list, gt=0.0, each=True)
    batch_size: int = rule(2, ge=1)  # images per GPU (per process)
    lr: float = rule(0.02, gt=0.0)  # for base_batch_size images per iteration
    base_batch_size: int = rule(16, ge=1)
    scale_lr: bool = True  # linear scaling when world size x batch_size != base_batch_size
    momentum: float = rule(0.9, ge=0.0, lt=1.0)
    weight_decay: float = rule(1e-4, ge=0.0)
    warmup_iters: int = rule(0, ge=0)
    warmup_ratio: float = rule(1e-3, gt=0.0, le=1.0)  # the warmup's starting lr factor
    grad_clip: float | None = rule(None, gt=0.0)  # max L2 norm
    mmdet_optimizer: bool = False  # keep the detector's own mmdet optim_wrapper (one-stage recipes)
    val_interval: int = rule(0, ge=0)  # iterations (epochs when by_epoch); 0 = no validation while training
    checkpoint_interval: int = rule(5000, ge=1)  # iterations, also in epoch-based schedules
    # the detector config's own recipe (optimizer, lr schedule, loop, hooks, pipelines; conf/schedule/native.yaml):
    # only lr, base_batch_size, batch_size, the loop's length and val/checkpoint intervals are read from here
    native: bool = False


@dataclass
class LocalLauncherConf:
    name: str = "local"


@dataclass
class TorchrunLauncherConf:
    name: str = "torchrun"
    nproc_per_node: int = rule(2, ge=1)
    nnodes: int = rule(1, ge=1)
    node_rank: int = rule(0, ge=0)
    rdzv_endpoint: str = "localhost:29500"
    rdzv_id: str = "ecmctl"
    max_restarts: int = rule(0, ge=0)


@dataclass
class SlurmLauncherConf:
    name: str = "slurm"
    cluster: str | None = rule(None, choices=("slurm", "local", "debug"))
    partition: str | None = None
    nodes: int = rule(1, ge=1)
    gpus_per_node: int = rule(8, ge=0)
    tasks_per_node: int | None = rule(None, ge=1)
    cpus_per_task: int = rule(8, ge=1)
    mem_gb: int | None = rule(None, ge=1)
    timeout_min: int = rule(4320, ge=1)
    account: str | None = None
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    folder: str = "runs/slurm/%j"


LAUNCHERS = {"local": LocalLauncherConf, "torchrun": TorchrunLauncherConf, "slurm": SlurmLauncherConf}


@dataclass
class PaperConf:
    bbox: float | None = rule(None, ge=0.0, le=100.0)  # LVIS v1 val AP in %, as published
    segm: float | None = rule(None, ge=0.0, le=100.0)


@dataclass
class RecipeConf:
    name: str | None = None  # null: no paper recipe (a plain detector x loss x schedule choice)
    title: str = ""
    gpus: int = rule(8, ge=1)  # the recipe's world size: GPUs x images_per_gpu = images per iteration
    images_per_gpu: int = rule(2, ge=1)
    paper: PaperConf = field(default_factory=PaperConf)
    strict: bool = False  # refuse to start when the effective batch differs from the recipe's
    # accumulate: gradient accumulation up to gpus x images_per_gpu images per update (the recipe's lr, every
    # schedule quantity in updates); scale_lr: the lr scaled linearly to the launch's batch (not the paper's)
    batch_policy: str = rule("accumulate", choices=("accumulate", "scale_lr"))


@dataclass
class TrainConf:
    max_iters: int | None = rule(None, ge=1)
    max_epochs: int | None = rule(None, ge=1)
    val_interval: int = rule(0, ge=0)
    checkpoint_interval: int = rule(1, ge=1)
    batch_size: int = rule(2, ge=1)
    num_workers: int = rule(0, ge=0)
    amp: bool = False
    # autocast dtype with amp: auto = bfloat16 where the GPU supports it, else float16 (decided by each rank)
    amp_dtype: str = rule("auto", choices=("auto", "bfloat16", "float16"))
    log_level: str = rule("INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    progress: bool = True
    eval_after: bool = False  # `ecmctl eval` at the end of the training job (a sweep ends with metrics)


@dataclass
class TrackingConf:
    """Where a run's scalars, config, ECM inputs and final metrics go (conf/tracking/, engine/tracking.py)."""

    name: str = rule("tensorboard", choices=("tensorboard", "wandb", "mlflow"))
    project: str = "ecmctl"  # wandb
    entity: str | None = None  # wandb
    mode: str | None = rule(None, choices=("online", "offline"))  # wandb; null: WANDB_MODE, else online
    uri: str | None = None  # mlflow; null: the file store <run_root>/mlruns
    experiment: str = "ecmctl"  # mlflow


@dataclass
class CalibrateConf:
    max_iters: int = rule(200, ge=1)
    min_iters: int = rule(20, ge=1)
    rel_tol: float = rule(0.02, gt=0.0)
    bootstrap: int = rule(1000, ge=10)
    bg_ratio: float | None = rule(None, gt=0.0, le=MAX_BG_RATIO)  # a fixed r for every RoI stage, not measured


@dataclass
class EvalConf:
    checkpoint: str | None = None
    score_thr: float = rule(1e-4, ge=0.0, lt=1.0)
    max_per_img: int = rule(300, ge=1)  # the standard protocol's detections per image
    # standard AP, or also Fixed AP / Pooled AP (Dave et al. 2021): per-class top-K over the dataset, no
    # per-image cap at inference (max_per_img_fixed), which costs more detections per image
    protocol: str = rule("standard", choices=("standard", "fixed", "pooled"))
    topk: int = rule(10_000, ge=1)  # Fixed/Pooled AP: detections kept per class over the dataset
    max_per_img_fixed: int | None = rule(None, ge=1)  # fixed/pooled inference: null = no per-image cap
    keep_detections: bool = True  # the run keeps its raw detections (eval/detections/) for re-scoring
    per_class: bool = False


@dataclass
class DemoConf:
    seeds: list[int] = rule(factory=lambda: [0], ge=0, each=True, min_len=1)
    # loss options (conf/loss/) trained with every seed, each compared with bce (else the first) by seed
    losses: list[str] = rule(factory=lambda: ["ecm", "bce"], min_len=1)
    out: str = "runs/demo"


@dataclass
class RootConf:
    dataset: DatasetConf = MISSING
    detector: DetectorConf = MISSING
    loss: LossConf = MISSING
    schedule: ScheduleConf = MISSING
    launcher: dict[str, Any] = MISSING  # checked against LAUNCHERS[launcher.name]
    recipe: RecipeConf = field(default_factory=RecipeConf)
    name: str = MISSING
    seed: int = rule(0, ge=0)
    data_root: str = "data"
    run_root: str = "runs"
    run_dir: str | None = None  # train into this new directory instead of <run_root>/<name>/<timestamp>
    device: str = rule("auto", choices=("auto", "cpu", "cuda"))
    counts_file: str | None = None
    weights_file: Any = None  # a path, or one path per Cascade stage
    allow_foreign_weights: bool = False  # counts/weights made from another annotation file than the dataset's
    train: TrainConf = field(default_factory=TrainConf)
    tracking: TrackingConf = field(default_factory=TrackingConf)
    calibrate: CalibrateConf = field(default_factory=CalibrateConf)
    eval: EvalConf = field(default_factory=EvalConf)
    demo: DemoConf = field(default_factory=DemoConf)


def _fmt(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _field_type(cls: type, name: str) -> type | None:
    """The dataclass type of field `name` of dataclass `cls` (Optional unwrapped), or None."""
    hint = typing.get_type_hints(cls).get(name)
    for t in (hint, *typing.get_args(hint)):
        if isinstance(t, type) and is_dataclass(t):
            return t
    return None


def _near(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def unknown_key(full_key: str, schema: type, prefix: str = "", launcher: str = "local") -> str:
    """'config key X does not exist; valid keys: ...; did you mean ...?' from the schema's dataclasses
    (`launcher`: the chosen launcher, whose schema types the `launcher` node)."""
    parent_path, _, leaf = full_key.rpartition(".")
    node: Any = schema
    for part in [p for p in parent_path.split(".") if p]:
        if node is RootConf and part == "launcher":
            node = LAUNCHERS.get(launcher)
            continue
        node = _field_type(node, part) if node is not None else None
    valid = [f.name for f in fields(node)] if node is not None else []
    if parent_path == "launcher" and leaf not in valid:  # a key of another launcher: name the one that has it
        owners = [name for name, conf in LAUNCHERS.items() if leaf in {f.name for f in fields(conf)}]
        if owners:
            return (f"config key {prefix + full_key!r} does not exist with launcher={launcher}; it is a setting of "
                    + " and ".join(f"launcher={o}" for o in owners) + f": add launcher={owners[0]}")
    return (f"config key {prefix + full_key!r} does not exist" + (f"; valid keys: {', '.join(valid)}" if valid else "")
            + _near(leaf, valid))


def _explain(e: OmegaConfBaseException, schema: type, prefix: str = "") -> str:
    """One line from an OmegaConf error: the key, the value and what is allowed."""
    key = f"{prefix}{e.full_key}" if getattr(e, "full_key", None) else prefix.rstrip(".") or "config"
    if isinstance(e, ConfigKeyError):
        return unknown_key(str(e.full_key), schema, prefix)
    value = getattr(e, "value", None)
    expected = getattr(getattr(e, "object_type", None), "__name__", None)
    msg = str(getattr(e, "msg", e)).splitlines()[0]
    if isinstance(e, ValidationError) and "could not be converted" in msg:
        kind = msg.rsplit("to ", 1)[-1]
        return f"config key {key!r} = {_fmt(value)}: not a valid {kind.lower()}"
    if isinstance(e, ValidationError) and "is not a valid bool" in msg:
        return f"config key {key!r} = {_fmt(value)}: not a boolean; use true or false"
    return f"config key {key!r}: {msg}" + (f" (expected {expected})" if expected else "")


def _check_ranges(node: Any, path: str = "") -> None:
    """Every field's range/choices from its `rule` metadata, recursively."""
    if not is_dataclass(node):
        return
    for f in fields(node):
        value = getattr(node, f.name)
        key = f"{path}{f.name}"
        if is_dataclass(value):
            _check_ranges(value, key + ".")
            continue
        _check_int(key, value)
        meta = f.metadata
        if not meta or value is None:
            continue
        if "min_len" in meta and len(value) < meta["min_len"]:
            raise UserError(f"config key {key!r} = {_fmt(value)}: must list at least {meta['min_len']} "
                            f"value{'s' if meta['min_len'] > 1 else ''}")
        items = list(value) if meta.get("each") else [value]
        for item in items:
            _check_value(key, value, item, meta)


# the largest integer a config key may hold: every integer reaches mmengine, torch or numpy, which take C ints
# (a 20-digit max_iters was an OverflowError after 30 s of preparation)
MAX_INT = 2**31 - 1


def _check_int(key: str, v: Any) -> None:
    """`v`, or every integer in it (a list, a list of lists such as dataset.multiscale), within +-MAX_INT."""
    if isinstance(v, list):
        for item in v:
            _check_int(key, item)
    elif isinstance(v, int) and not isinstance(v, bool) and not -MAX_INT <= v <= MAX_INT:
        raise UserError(f"config key {key!r} = {v}: too large; must be between {-MAX_INT} and {MAX_INT}")


def _check_value(key: str, whole: Any, v: Any, meta: dict) -> None:
    shown = _fmt(whole)
    if "choices" in meta and v not in meta["choices"]:
        raise UserError(f"config key {key!r} = {shown}: must be one of {', '.join(map(str, meta['choices']))}"
                        + (_near(str(v), [str(c) for c in meta["choices"]])))
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if isinstance(v, float) and not math.isfinite(v):
            raise UserError(f"config key {key!r} = {shown}: must be a finite number")
        for op, bound, ok in (("ge", ">=", v >= meta.get("ge", -math.inf)), ("gt", ">", v > meta.get("gt", -math.inf)),
                              ("le", "<=", v <= meta.get("le", math.inf)), ("lt", "<", v < meta.get("lt", math.inf))):
            if op in meta and not ok:
                raise UserError(f"config key {key!r} = {shown}: must be {bound} {meta[op]}")


def _typed(schema: type, node: Any, prefix: str) -> DictConfig:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        obj = OmegaConf.to_object(merged)  # also checks that nothing is MISSING
    except OmegaConfBaseException as e:
        raise UserError(_explain(e, schema, prefix)) from None
    _check_ranges(obj, prefix)
    return merged


def validate(cfg: DictConfig) -> DictConfig:
    """`cfg` merged onto the typed schema (types, unknown keys, missing values, ranges), or UserError."""
    launcher = cfg.get("launcher") if isinstance(cfg, DictConfig) else None
    name = launcher.get("name") if isinstance(launcher, DictConfig) else None
    if name not in LAUNCHERS:
        raise UserError(f"config key 'launcher.name' = {_fmt(name)}: must be one of {', '.join(LAUNCHERS)}")
    typed_launcher = _typed(LAUNCHERS[name], launcher, "launcher.")
    typed = _typed(RootConf, cfg, "")
    with_launcher = OmegaConf.merge(typed, {"launcher": typed_launcher})
    _check_cross(OmegaConf.to_object(with_launcher))
    OmegaConf.set_struct(with_launcher, True)
    return with_launcher


def _check_name(name: str) -> None:
    """`name` is a directory under run_root: an absolute path (e.g. from `${oc.env:HOME}`) or `..` would put the
    run elsewhere without a word; a run meant to live elsewhere is given as run_dir."""
    parts = str(name).replace("\\", "/").split("/")
    if not str(name).strip() or str(name).startswith(("/", "~")) or ".." in parts:
        raise UserError(f"config key 'name' = {_fmt(name)}: must be a name under run_root (no absolute path, no "
                        "'..'); to train into another directory, set run_dir=PATH")


def _check_cross(c: RootConf) -> None:
    """Rules that tie several keys together."""
    s = c.schedule
    if s.by_epoch:
        if s.max_epochs is None:
            raise UserError(f"schedule {s.name!r}: by_epoch needs schedule.max_epochs")
        bad = [m for m in s.milestones if m != int(m) or not 0 < m <= s.max_epochs]
        if bad:
            raise UserError(f"config key 'schedule.milestones' = {s.milestones}: with by_epoch they are epochs, "
                            f"whole numbers in 1..{s.max_epochs}")
    else:
        if s.max_iters is None:
            raise UserError(f"schedule {s.name!r}: an iteration-based schedule needs schedule.max_iters")
        bad = [m for m in s.milestones if not 0 < m < 1]
        if bad:
            raise UserError(f"config key 'schedule.milestones' = {s.milestones}: without by_epoch they are "
                            "fractions of max_iters, each in (0, 1)")
    for key in ("data_root", "run_root"):
        if not str(getattr(c, key)).strip():
            raise UserError(f"config key {key!r} is empty; give a directory (relative to the current one)")
    _check_name(c.name)
    if c.calibrate.min_iters > c.calibrate.max_iters:
        raise UserError(f"config key 'calibrate.min_iters' = {c.calibrate.min_iters}: must be <= "
                        f"calibrate.max_iters ({c.calibrate.max_iters})")
    wf = c.weights_file
    if wf is not None and not (isinstance(wf, str) or (isinstance(wf, list) and wf and
                                                        all(isinstance(w, str) for w in wf))):
        raise UserError(f"config key 'weights_file' = {_fmt(wf)}: a path, or a list of paths (one per "
                        "Cascade stage)")
