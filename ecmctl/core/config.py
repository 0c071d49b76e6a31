"""Hydra composition of `conf/`: the same config tree for calibrate, train, eval and sweeps."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ecmctl.core.errors import UserError

GROUPS = ("dataset", "detector", "loss", "schedule", "launcher")


def conf_dir() -> Path:
    """The config tree: $ECMCTL_CONF if set, else the one shipped inside the package (ecmctl/conf)."""
    env = os.environ.get("ECMCTL_CONF")
    path = Path(env) if env else Path(__file__).resolve().parents[1] / "conf"
    if not (path / "config.yaml").is_file():
        raise UserError(f"{path}: no config.yaml; set ECMCTL_CONF to ecmctl's conf/ directory")
    return path


def choices(group: str) -> list[str]:
    """Valid options of a config group, for error messages and `--help`."""
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml") if not p.stem.startswith("_"))


def _explain(overrides: list[str], err: Exception) -> str:
    msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    for ov in overrides:
        key, _, value = ov.lstrip("+~").partition("=")
        if key in GROUPS and value and value not in choices(key) and "," not in value:
            return f"unknown {key} {value!r}; valid: {', '.join(choices(key))}"
    return f"bad override in {' '.join(overrides) or '(none)'}: {msg}"


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose conf/config.yaml with Hydra's override grammar, unchanged (`a.b=1`, `group=opt`, `+x=y`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = list(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=overrides)
    except Exception as e:  # Hydra raises several unrelated types for user mistakes
        raise UserError(_explain(overrides, e)) from None
    finally:
        GlobalHydra.instance().clear()
    try:
        OmegaConf.resolve(cfg)
    except Exception as e:
        raise UserError(f"config does not resolve: {e}") from None
    return cfg


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """Hydra's basic-sweeper expansion of `a=1,2 b=x,y` into one override list per job."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:
        raise UserError(f"bad override: {e}") from None
    batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [list(job) for batch in batches for job in batch]


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
