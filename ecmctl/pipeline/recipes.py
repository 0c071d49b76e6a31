"""The paper's recipes (conf/recipe/) and the batch they assume.

A recipe's learning rate is for a total batch (16 images per iteration: 8 GPUs x 2). The world size is
known before launching, so the effective batch is checked up front: a different one scales the lr
linearly and says so in one visible line (and in run.json), or, with `recipe.strict=true`, refuses to
start. `ecmctl recipes` lists them with the numbers the paper reports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from omegaconf import DictConfig

from ecmctl.core.config import choices, compose
from ecmctl.core.errors import UserError
from ecmctl.launch import world_size

# the one override that reproduces the official code's constant background ratio in every RoI stage
OFFICIAL_BG_RATIO_OVERRIDE = "calibrate.bg_ratio=6.3313"


@dataclass(frozen=True)
class BatchPlan:
    """Processes x images per process, against the batch the learning rate is for."""

    world_size: int
    batch_size: int  # images per process
    base_batch: int  # images per iteration schedule.lr is for
    base_lr: float
    lr: float  # what the run trains with
    recipe: str | None
    recipe_batch: int | None  # the recipe's GPUs x images per GPU

    @property
    def effective_batch(self) -> int:
        return self.world_size * self.batch_size

    def message(self) -> str:
        """The one line every train prints: the effective batch and lr, and any deviation from the recipe."""
        procs = f"{self.world_size} process{'es' if self.world_size > 1 else ''}"
        line = f"batch: {procs} x {self.batch_size} images = {self.effective_batch} per iteration"
        if self.recipe_batch is not None and self.effective_batch != self.recipe_batch:
            line += (f"; recipe {self.recipe} assumes {self.recipe_batch} — NOT the paper's setting "
                     "(recipe.strict=true refuses instead)")
        if self.lr != self.base_lr:
            line += (f"; lr scaled linearly {self.base_lr:g} -> {self.lr:g} "
                     f"({self.base_lr:g} is for {self.base_batch} images per iteration)")
        else:
            line += f"; lr {self.lr:g}"
        return line

    def to_json(self) -> dict:
        return {**asdict(self), "effective_batch": self.effective_batch}


def plan_batch(cfg: DictConfig) -> BatchPlan:
    """The run's effective batch and learning rate; UserError under recipe.strict when they differ."""
    world = world_size(cfg.launcher)
    batch, base, base_lr = int(cfg.train.batch_size), int(cfg.schedule.base_batch_size), float(cfg.schedule.lr)
    recipe = cfg.recipe.name
    recipe_batch = int(cfg.recipe.gpus) * int(cfg.recipe.images_per_gpu) if recipe else None
    if recipe and cfg.recipe.strict and world * batch != recipe_batch:
        raise UserError(f"recipe {recipe} assumes {recipe_batch} images per iteration ({cfg.recipe.gpus} GPUs x "
                        f"{cfg.recipe.images_per_gpu}); this launch has {world * batch} ({world} x {batch}). "
                        f"Use {cfg.recipe.gpus} processes (e.g. launcher=torchrun "
                        f"launcher.nproc_per_node={cfg.recipe.gpus}) or drop recipe.strict to scale the lr")
    lr = base_lr * world * batch / base if cfg.schedule.scale_lr else base_lr
    return BatchPlan(world_size=world, batch_size=batch, base_batch=base, base_lr=base_lr, lr=lr, recipe=recipe,
                     recipe_batch=recipe_batch)


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
