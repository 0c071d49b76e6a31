"""Hydra composition of `conf/`: the same config tree for calibrate, train, eval and sweeps, typed and
checked once (config_schema.validate) before anything runs."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ecmctl.core.config_schema import validate
from ecmctl.core.errors import UserError, first_line

GROUPS = ("dataset", "detector", "loss", "schedule", "launcher", "tracking", "recipe")


def _stem(path: str) -> str:
    """`${ecmctl_stem:PATH}`: a run name from a config file's name (detector=mmdet)."""
    return Path(str(path)).name.removesuffix(".py")


OmegaConf.register_new_resolver("ecmctl_stem", _stem, replace=True)


def _native(path: str, key: str):
    """`${ecmctl_native:PATH,KEY}`: one value of the detector config's own training recipe (schedule=native)."""
    from ecmctl.core.mmdet_configs import recipe_value  # reads the mmdet config: only when schedule=native

    return recipe_value(str(path), str(key))


OmegaConf.register_new_resolver("ecmctl_native", _native, replace=True)


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
    """One line for a Hydra composition error: an unknown group option or key, with a near miss."""
    import difflib

    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    msg = first_line(err)
    for ov in overrides:
        key, _, value = ov.lstrip("+~").partition("=")
        if key in GROUPS and value and value not in choices(key) and "," not in value:
            close = difflib.get_close_matches(value, choices(key), n=1, cutoff=0.6)
            return (f"unknown {key} {value!r}; valid: {', '.join(choices(key))}"
                    + (f"; did you mean {close[0]!r}?" if close else ""))
    cause = err.__cause__ or err.__context__
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and getattr(cause, "full_key", None):
        from ecmctl.core.config_schema import RootConf, unknown_key

        chosen = [ov.partition("=")[2] for ov in overrides if ov.lstrip("+").startswith("launcher=")]
        return unknown_key(str(cause.full_key), RootConf, launcher=(chosen or ["local"])[-1])
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
    if OmegaConf.is_missing(cfg.detector, "mmdet_config"):
        raise UserError("detector=mmdet needs detector.mmdet_config=PATH: one of mmdet's shipped configs (e.g. "
                        "rtmdet/rtmdet_s_8xb32-300e_coco.py) or your own .py file")
    try:
        OmegaConf.resolve(cfg)
    except Exception as e:
        if isinstance(cause := e.__cause__ or e.__context__, UserError):  # from one of ecmctl's resolvers
            raise cause from None
        raise UserError(f"config does not resolve: {e}") from None
    own = Path(str(cfg.detector.get("mmdet_config") or "")).expanduser()
    if own.suffix == ".py" and own.is_file():  # the user's own config: recorded absolute, so runs resume anywhere
        cfg.detector.mmdet_config = str(own.resolve())
    return validate(cfg)


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
