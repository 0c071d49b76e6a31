"""The paper's recipes (conf/recipe/) and the batch they assume.

A recipe's learning rate is for a total batch (16 images per update: 8 GPUs x 2). The world size is known
before launching, so the batch is planned up front, by `recipe.batch_policy`:

- `accumulate` (the default): where world size x images per GPU divides the recipe's batch, gradients are
  accumulated over that many micro-steps per update (mmengine's `optim_wrapper.accumulative_counts`), with
  the recipe's lr; every iteration-counted schedule quantity is kept in updates (engine/builder.py converts
  them into the micro-steps mmengine counts). Where it does not divide, one line says so and proposes the
  nearest settings.
- `scale_lr`: a different batch scales the lr linearly and says so in one visible line (and in run.json),
  or, with `recipe.strict=true`, refuses to start.

`ecmctl recipes` lists the recipes with the numbers the paper reports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from omegaconf import DictConfig

from ecmctl.core.config import choices, compose
from ecmctl.core.errors import UserError
from ecmctl.launch import world_size

# the one override that reproduces the official code's constant background ratio in every RoI stage
OFFICIAL_BG_RATIO_OVERRIDE = "calibrate.bg_ratio=6.3313"
ACCUMULATE, SCALE_LR = "accumulate", "scale_lr"


@dataclass(frozen=True)
class BatchPlan:
    """Processes x images per process x accumulation steps, against the batch the learning rate is for."""

    world_size: int
    batch_size: int  # images per process and micro-step
    base_batch: int  # images per update schedule.lr is for
    base_lr: float
    lr: float  # what the run trains with
    recipe: str | None
    recipe_batch: int | None  # the recipe's GPUs x images per GPU
    policy: str | None = None  # recipe.batch_policy (None: no recipe)
    accumulation: int = 1  # micro-steps (mmengine iterations) per parameter update

    @property
    def images_per_iteration(self) -> int:
        return self.world_size * self.batch_size

    @property
    def effective_batch(self) -> int:
        """Images per parameter update."""
        return self.images_per_iteration * self.accumulation

    def message(self) -> str:
        """The one line every train prints: the effective batch and lr, and any deviation from the recipe."""
        if self.accumulation > 1:
            line = (f"batch: {self.effective_batch} images per update ({self.world_size} × {self.batch_size} × "
                    f"{self.accumulation} accumulation steps): the paper's setting; schedule counted in updates "
                    f"of {self.accumulation} iterations")
        else:
            procs = f"{self.world_size} process{'es' if self.world_size > 1 else ''}"
            line = f"batch: {procs} x {self.batch_size} images = {self.effective_batch} per iteration"
        if self.recipe_batch is not None and self.accumulation == 1:
            line += (": the paper's setting" if self.effective_batch == self.recipe_batch else
                     f"; recipe {self.recipe} assumes {self.recipe_batch} — NOT the paper's setting "
                     "(recipe.strict=true refuses instead)")
        if self.lr != self.base_lr:
            line += (f"; lr scaled linearly {self.base_lr:g} -> {self.lr:g} "
                     f"({self.base_lr:g} is for {self.base_batch} images per iteration)")
        else:
            line += f"; lr {self.lr:g}"
        return line

    def to_json(self) -> dict:
        return {**asdict(self), "effective_batch": self.effective_batch}


def _processes(launcher: DictConfig, n: int) -> str:
    """How to ask this launcher for `n` processes, where one key does it."""
    if launcher.name == "torchrun" and int(launcher.nnodes) == 1:
        return f"launcher.nproc_per_node={n}"
    if launcher.name == "slurm" and int(launcher.nodes) == 1 and launcher.get("tasks_per_node") is None:
        return f"launcher.gpus_per_node={n}"
    return f"{n} processes"


def nearest_settings(launcher: DictConfig, world: int, batch: int, target: int) -> list[str]:
    """Settings near (world, batch) whose iterations divide `target` images, each with its accumulation steps."""
    out = []
    worlds = [w for w in range(1, target // batch + 1) if target % (w * batch) == 0]
    below, above = [w for w in worlds if w < world], [w for w in worlds if w > world]
    for w in ([below[-1]] if below else []) + ([above[0]] if above else []):
        out.append(f"{_processes(launcher, w)} ({_split(w, batch, target // (w * batch))})")
    sizes = [b for b in range(1, target // world + 1) if target % (world * b) == 0]
    if sizes:
        b = min(sizes, key=lambda b: (abs(b - batch), -b))
        out.append(f"train.batch_size={b} ({_split(world, b, target // (world * b))})")
    return out


def _split(world: int, batch: int, steps: int) -> str:
    return f"{world} × {batch} × {steps} accumulation steps" if steps > 1 else f"{world} × {batch}, no accumulation"


def _accumulation(cfg: DictConfig, world: int) -> tuple[int | None, str | None]:
    """(micro-steps per update, None) under recipe.batch_policy=accumulate; (None, why not) where the batch
    does not divide the recipe's; (1, None) when nothing is to be accumulated."""
    recipe = cfg.recipe.name
    if not recipe or cfg.recipe.get("batch_policy", SCALE_LR) != ACCUMULATE:
        return 1, None
    per_iter = world * int(cfg.train.batch_size)
    target = int(cfg.recipe.gpus) * int(cfg.recipe.images_per_gpu)
    if target % per_iter:
        near = nearest_settings(cfg.launcher, world, int(cfg.train.batch_size), target)
        return None, (f"recipe {recipe} trains on {target} images per update ({cfg.recipe.gpus} GPUs x "
                      f"{cfg.recipe.images_per_gpu}), not a whole number of this launch's {per_iter}-image "
                      f"iterations ({world} x {cfg.train.batch_size}); nearest: " + "; ".join(
                          [*near, "or recipe.batch_policy=scale_lr (lr scaled linearly: NOT the paper's setting)"]))
    steps = target // per_iter
    if steps > 1 and cfg.schedule.get("native"):
        return None, ("recipe.batch_policy=accumulate does not apply to schedule=native (the config's own "
                      "optimizer wrapper); use recipe.batch_policy=scale_lr")
    return steps, None


def accumulation_steps(cfg: DictConfig, launcher: DictConfig | None = None) -> int:
    """Micro-steps per update for `cfg` launched with `launcher` (default its own), or 1 where nothing is
    accumulated (no recipe, scale_lr, a batch that does not divide the recipe's): calibration's short run,
    which must not refuse what the training plan allowed."""
    steps, _ = _accumulation(cfg, world_size(launcher if launcher is not None else cfg.launcher))
    return steps or 1


def plan_batch(cfg: DictConfig) -> BatchPlan:
    """The run's effective batch, accumulation steps and learning rate; UserError where the recipe's batch cannot
    be made (batch_policy=accumulate and a batch that does not divide it, or recipe.strict under scale_lr)."""
    world = world_size(cfg.launcher)
    batch, base, base_lr = int(cfg.train.batch_size), int(cfg.schedule.base_batch_size), float(cfg.schedule.lr)
    recipe = cfg.recipe.name
    recipe_batch = int(cfg.recipe.gpus) * int(cfg.recipe.images_per_gpu) if recipe else None
    policy = str(cfg.recipe.get("batch_policy", SCALE_LR)) if recipe else None
    steps, why = _accumulation(cfg, world)
    if steps is None:
        raise UserError(why)
    if recipe and cfg.recipe.strict and world * batch * steps != recipe_batch:
        raise UserError(f"recipe {recipe} assumes {recipe_batch} images per iteration ({cfg.recipe.gpus} GPUs x "
                        f"{cfg.recipe.images_per_gpu}); this launch has {world * batch} ({world} x {batch}). "
                        f"Use {cfg.recipe.gpus} processes (e.g. launcher=torchrun "
                        f"launcher.nproc_per_node={cfg.recipe.gpus}), recipe.batch_policy=accumulate, or drop "
                        "recipe.strict to scale the lr")
    effective = world * batch * steps
    lr = base_lr * effective / base if cfg.schedule.scale_lr else base_lr
    return BatchPlan(world_size=world, batch_size=batch, base_batch=base, base_lr=base_lr, lr=lr, recipe=recipe,
                     recipe_batch=recipe_batch, policy=policy, accumulation=steps)


@dataclass(frozen=True)
class Recipe:
    """One row of `ecmctl recipes`."""

    name: str
    title: str
    detector: str
    loss: str
    schedule: str
    gpus: int
    images_per_gpu: int
    paper_bbox: float | None
    paper_segm: float | None

    @property
    def command(self) -> str:
        return (f"ecmctl train recipe={self.name} data_root=DATA launcher=torchrun "
                f"launcher.nproc_per_node={self.gpus}")


def list_recipes() -> list[Recipe]:
    """Every recipe in conf/recipe/, composed (so each one is known to build)."""
    out = []
    for name in choices("recipe"):
        if name == "none":
            continue
        cfg = compose([f"recipe={name}"])
        r = cfg.recipe
        out.append(Recipe(name=name, title=r.title, detector=cfg.detector.name, loss=cfg.loss.name,
                          schedule=cfg.schedule.name, gpus=int(r.gpus), images_per_gpu=int(r.images_per_gpu),
                          paper_bbox=r.paper.bbox, paper_segm=r.paper.segm))
    return out
