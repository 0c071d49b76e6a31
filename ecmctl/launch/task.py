"""What a launcher runs: a `Task` names its function by import path, so the launcher imports no stage.

torchrun and SLURM start fresh processes; they rebuild the task from JSON and import the function there
(as detectron2's `launch(main_func, ...)` is handed its work, but across processes).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Task:
    """`target(run_dir, **kwargs)` on every rank; `target` is "package.module:function"."""

    target: str
    run_dir: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def resume(self) -> bool:
        return bool(self.kwargs.get("resume"))

    def resumed(self) -> Task:
        """The same task continuing from its last checkpoint (a requeued SLURM job)."""
        return replace(self, kwargs={**self.kwargs, "resume": True})

    def function(self):
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)

    def run(self) -> Any:
        return self.function()(self.run_dir, **self.kwargs)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Task:
        return cls(**json.loads(text))


def train_task(run_dir: str | Path, resume: bool = False, **kwargs: Any) -> Task:
    """engine.runner.train_run in `run_dir` (kwargs: its `config`, ...)."""
    return Task("ecmctl.engine.runner:train_run", str(run_dir), {"resume": bool(resume), **kwargs})


def eval_task(run_dir: str | Path, **kwargs: Any) -> Task:
    """engine.runner.test_run in `run_dir` (kwargs: its `config` and `out`)."""
    return Task("ecmctl.engine.runner:test_run", str(run_dir), kwargs)
