"""What a checkpoint may name. A checkpoint is loaded weights-only, so its pickle runs no code; but its stored run
config and command line are data that momattn acts on, and a `_target_` in them is an import and a call: a data
section naming `os.system` ran a shell command in evaluate.py. Only the classes momattn's own configs name (and
Lightning's callbacks and loggers) are taken from a checkpoint; a class of your own is allowed by name:

    MOMATTN_TRUSTED_TARGETS=mypkg.data.MySource,mypkg.callbacks.   # exact names, or prefixes ending with '.'

A run folder's .hydra/ (the command line a resume repeats) is trusted as your own, as Hydra trusts it: resume
only folders you made; a checkpoint from elsewhere is evaluated, analysed or continued in a folder of its own.
The classes train.py's own command line names are trusted in its process (its run reads its checkpoints back).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from momattn.errors import CheckpointError

ENV = "MOMATTN_TRUSTED_TARGETS"
# classes no shipped config names but momattn's own runs may (a test's fault injection; older runs' sources)
EXTRA = ("momattn.faults.FaultInjection", "momattn.data.sources.StaiccCorpus", "momattn.data.sources.TextFiles",
         "momattn.data.sources.HubCorpus", "momattn.data.streaming.StreamingHubCorpus", "momattn.data.ginc.GincCorpus")
PREFIXES = ("lightning.pytorch.callbacks.", "lightning.pytorch.loggers.")  # classes a run may add with +callbacks.x
# the sections of a stored run config that evaluate.py and analyze.py build objects from (data sources)
BUILT_FROM_CONFIG = ("data", "eval")


@functools.cache
def _shipped() -> frozenset[str]:
    """Every `_target_` the configs under conf/ name."""
    import yaml

    from momattn.cli import CONF_DIR

    found: set[str] = set()
    for path in Path(CONF_DIR).rglob("*.yaml"):
        try:
            found.update(targets(yaml.safe_load(path.read_text())))
        except (OSError, yaml.YAMLError):
            continue
    return frozenset(found)


_OWN: set[str] = set()  # the targets this process's own training config names (its command line is trusted)


def allow_own(config: Mapping) -> None:
    """train.py's config names these classes itself (data._target_=mypkg.MySource): the checkpoints its run
    writes, read back in this process (the resume check, the end-of-run evaluation), may name them too."""
    _OWN.update(targets(config))


def trusted(target: str) -> bool:
    given = [t.strip() for t in os.environ.get(ENV, "").split(",") if t.strip()]
    return (target in _shipped() or target in EXTRA or target.startswith(PREFIXES) or target in _OWN
            or any(target == t or (t.endswith(".") and target.startswith(t)) for t in given))


def targets(node) -> Iterator[str]:
    """Every `_target_` value in a nested config (dicts and lists), as strings."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            if k == "_target_":
                yield str(v)
            else:
                yield from targets(v)
    elif isinstance(node, list | tuple):
        for v in node:
            yield from targets(v)


def _refused(target: str, where: str) -> CheckpointError:
    return CheckpointError(
        f"{where} names _target_={target}, which is not a class momattn's configs name: a checkpoint's config is "
        "data, and a _target_ in it is imported and called (it could run any code). If the file is yours (a run "
        f"with a class of your own), allow that class: {ENV}={target}")


def check_config(config: Mapping | None, path) -> None:
    """The targets of the sections evaluate.py and analyze.py build from a checkpoint's run config."""
    for section in BUILT_FROM_CONFIG:
        for t in targets((config or {}).get(section)):
            if not trusted(t):
                raise _refused(t, f"checkpoint '{path}': its run config's {section} section")


def check_overrides(overrides, path) -> None:
    """The command line a checkpoint records, which a resume from the checkpoint alone repeats: no hydra.*
    setting (hydra.job.env_set sets environment variables), and every `_target_` it names or nests trusted."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for line in overrides or []:
        where = f"checkpoint '{path}': its recorded command line ({line})"
        try:
            o = OverridesParser.create().parse_override(str(line))
        except Exception:
            raise CheckpointError(f"{where} does not parse as an override; the checkpoint is damaged") from None
        key = o.key_or_group
        if o.is_hydra_override() or key.startswith("hydra"):
            raise CheckpointError(f"{where} sets Hydra itself, which train.py never records; the checkpoint was "
                                  "not written by train.py")
        found = [o.get_value_element_as_str()] if key.split(".")[-1] == "_target_" else []
        value = o.value() if not o.is_sweep_override() else None
        for t in [*found, *targets(value)]:
            if not trusted(t):
                raise _refused(t, where)
