"""Entry-point glue: Hydra main with clear, traceback-free errors for user mistakes.

Before Hydra composes anything, the command-line overrides are checked against the config tree so that a typo
gets one message with the closest valid name (`attention=momentun` -> "did you mean 'momentum'?").
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from momattn.errors import ConfigError, UserError, did_you_mean

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def user_overrides(argv: list[str]) -> list[str]:
    """The overrides in a command line, as Hydra's own argument parser reads them."""
    from hydra._internal.utils import get_args_parser

    return list(get_args_parser().parse_known_args(argv)[0].overrides)


def _groups() -> dict[str, list[str]]:
    return {d.name: sorted(f.stem for f in d.glob("*.yaml")) for d in CONF_DIR.iterdir() if d.is_dir()}


def _check_key(cfg, key: str) -> None:
    from omegaconf import DictConfig

    node, parts = cfg, key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig):
            return  # a list index or a leaf value: let Hydra judge
        if part not in node:
            where = ".".join(parts[:i]) or "the top level"
            known = [str(k) for k in node.keys()]
            raise ConfigError(
                f"'{key}' is not a config key: '{part}' does not exist in {where}.{did_you_mean(part, known)} "
                f"Keys there: {', '.join(known)}. (To add a new key on purpose use +{key}=...)"
            )
        node = node[part]


def check_overrides(config_name: str, overrides: list[str]) -> None:
    """Raise ConfigError naming a misspelled group option or key, with the closest valid one."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:
        return  # a syntax error: Hydra's own message says where
    groups, choices, keys = _groups(), [], []
    for o in parsed:
        name = o.key_or_group
        if name.startswith("hydra") or o.is_add() or o.is_delete() or o.is_force_add():
            continue
        if name in groups:
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
            for v in values:
                if v not in groups[name] and v != "null":
                    raise ConfigError(f"{name}={v} is not an option of the config group '{name}'."
                                      f"{did_you_mean(v, groups[name])} Options: {', '.join(groups[name])}")
            choices.append(f"{name}={values[0]}")
        else:
            keys.append(name)
    if not keys:
        return
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=choices)
    except Exception:
        return  # composition problems are reported by Hydra itself
    finally:
        GlobalHydra.instance().clear()
    for key in keys:
        _check_key(cfg, key)


def report(e: UserError) -> None:
    print(f"\nerror: {e}\n(set HYDRA_FULL_ERROR=1 for the full traceback)", file=sys.stderr, flush=True)


def hydra_main(config_name: str):
    """Like @hydra.main, with conf/ found from the package, and UserErrors printed as one message (exit 2)."""
    import hydra

    def decorate(fn):
        @functools.wraps(fn)
        def task(cfg):
            try:
                return fn(cfg)
            except UserError as e:
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                report(e)
                sys.exit(2)

        hydra_task = hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")(task)

        @functools.wraps(fn)
        def entry():
            try:
                check_overrides(config_name, user_overrides(sys.argv[1:]))
            except UserError as e:
                report(e)
                sys.exit(2)
            return hydra_task()

        return entry

    return decorate


@dataclass
class HydraJob:
    overrides: list[str]  # the command line's overrides
    sweep_dir: str | None = None  # multirun only: the sweep's folder
    num: int | None = None  # multirun only: this job's number


def hydra_job() -> HydraJob:
    """The running Hydra job (an empty one outside Hydra, e.g. when a test calls run_train directly)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return HydraJob([])
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        return HydraJob(list(hc.overrides.task), str(hc.sweep.dir), int(hc.job.num))
    return HydraJob(list(hc.overrides.task))
