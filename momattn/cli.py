"""Entry-point glue: Hydra main with clear, traceback-free errors for user mistakes.

Before Hydra composes anything, the command-line overrides are checked against the config tree so that a typo
gets one message with the closest valid name (`attention=momentun` -> "did you mean 'momentum'?").
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import os
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hydra.errors import CompactHydraException

from momattn.entry_signals import (
    Terminated,
    before_line,
    entry_signals,
    import_cut_short,
    on_stop,
    pending,
    rank_zero,
    saying,
    stopped,
)
from momattn.errors import ConfigError, UserError, did_you_mean, first_line
from momattn.quoting import hidden, hydra_quoted, printable, shell_arg, shell_quote

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def user_overrides(argv: list[str]) -> list[str]:
    """The overrides in a command line, wherever they stand: before a flag too (`debug=smoke -m seed=1,2`), which the
    entry points pass on to Hydra after the flags (Hydra's own parser would refuse those after -m as unrecognised)."""
    return list(_hydra_args(argv).overrides)


def _hydra_args(argv: list[str]):
    """Hydra's flags and overrides, read intermixed: with parse_known_args the overrides after a flag were left
    over, so `python train.py debug=smoke -m ckpt_path=last` was checked as `debug=smoke` alone and then run by
    Hydra with all of them (the sweep retrained every job from step 0 in a new folder, the typo checks were
    skipped)."""
    return _command_line(argv)[0]


def _command_line(argv: list[str]) -> tuple:
    """(Hydra's parsed arguments, the flags as typed): what stands after a `--` is an override whatever it looks
    like, as Hydra reads it (argparse's intermixed reading took `-- -m a=1` for a sweep, `-- --help` for help)."""
    from hydra._internal.utils import get_args_parser

    cut = argv.index("--") if "--" in argv else len(argv)
    head = [_Token(a) for a in argv[:cut]]  # told apart by identity: `-p seed=1 seed=1` has a flag value equal to
    args = get_args_parser().parse_known_intermixed_args(head)[0]  # an override, which a comparison mixed up
    ids = {id(o) for o in args.overrides}
    flags = [str(a) for a in head if id(a) not in ids]
    args.overrides = [*map(str, args.overrides), *argv[cut + 1:]]
    return args, flags


class _Token(str):
    """One argument of the command line: argparse hands the same object back, so equal ones stay apart."""


def hydra_argv(flags: list[str], overrides: list[str]) -> list[str]:
    """The command line handed to Hydra: the flags, then `--` and the overrides. Hydra reads overrides after its
    flags only, and without the `--` a flag whose value is optional took the first override for its value
    (`seed=3 --info`: "argument --info: invalid choice: 'seed=3'")."""
    return [*flags, "--", *overrides] if overrides else list(flags)


def command_flags(argv: list[str]) -> tuple[bool, bool]:
    """(runs nothing: --help, --cfg, --info and their other spellings such as --cfg=job or -cjob; multirun: -m),
    read as Hydra reads them. Two modes at once (-m with --cfg) is a ConfigError, not Hydra's traceback."""
    args = _hydra_args(argv)
    modes = [f"--{name}" for name in ("run", "multirun", "cfg", "info", "shell_completion") if getattr(args, name)]
    if len(modes) > 1:
        raise ConfigError(f"{' and '.join(modes)} cannot be given together: Hydra does one of --run, --multirun, "
                          "--cfg, --info at a time (to see one job's config, drop -m/--multirun)")
    asked = [str(o).split("=", 1) for o in args.overrides if str(o).split("=")[0] in ("install", "uninstall", "query")]
    if args.shell_completion and (len(asked) != 1 or len(asked[0]) < 2 or asked[0][1] not in ("bash", "zsh", "fish")):
        # -sc alone, two subcommands, install=powershell, install without a shell: Hydra's tracebacks (review)
        raise ConfigError("--shell-completion (-sc) takes one of install=SHELL, uninstall=SHELL or query=SHELL, SHELL "
                          "bash, zsh or fish, e.g. eval \"$(python train.py -sc install=bash)\"")
    return bool(args.help or args.hydra_help or args.cfg or args.info or args.shell_completion), bool(args.multirun)


def config_multirun(config_name: str, overrides: list[str]) -> bool:
    """Whether the composed config itself asks for a multirun (an experiment such as eta_sweep sets hydra.mode:
    MULTIRUN), which makes `python train.py experiment=eta_sweep` a sweep without -m; so does hparams_search=optuna
    (its sweep's settings went unchecked: direction=up or n_jobs=0 were tracebacks, maximize searched for the worst
    loss). Composed only where one of those, or hydra.mode, is named (a sweep's own comma lists left out)."""
    if not any(_override_key(o) in ("experiment", "hparams_search", "hydra.mode") for o in overrides):
        return False
    from hydra.types import RunMode

    cfg = hydra_section(config_name, overrides)[1]  # None where they do not parse: check_overrides says so
    return cfg is not None and cfg.hydra.mode == RunMode.MULTIRUN


def hydra_section(config_name: str, overrides: list[str]) -> tuple:
    """(the parsed overrides, the config composed with its hydra section from hydra_section_overrides), or (None,
    None) where the overrides do not parse; the config is None where Hydra cannot compose it. Composed once per
    command line for the checks before Hydra starts (config_multirun, plan_sweep, check_search); read-only."""
    return _hydra_section(config_name, tuple(overrides), CONF_DIR)


@functools.lru_cache(maxsize=8)
def _hydra_section(config_name: str, overrides: tuple[str, ...], conf_dir: Path) -> tuple:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:
        return None, None
    return parsed, _compose(config_name, hydra_section_overrides(parsed), return_hydra_config=True)


def check_hydra_overrides(config_name: str, overrides: list[str]) -> None:
    """A hydra.* override of the wrong type or a hydra/ group option that does not exist (hydra.job.chdir=maybe,
    hydra.sweeper.n_trials=abc, hydra/launcher=foo): Hydra's multi-line message and exit 1 once it started, one
    line naming the override here."""
    from momattn.errors import ConfigError

    parsed, cfg = hydra_section(config_name, overrides)
    swept = [o for o in parsed or [] if o.is_hydra_override() and o.is_sweep_override() and
             o.key_or_group.lstrip("+").startswith("hydra.sweeper.params")]
    if swept and cfg is not None and cfg.hydra.sweeper.get("params", None) is None:  # +hydra.sweeper.params.seed=1,2:
        # Hydra's "Sweeping over Hydra's configuration is not supported", and an empty sweep folder (diff review)
        raise _params_unset(swept[0].input_line, "seed=1,2")
    if parsed is None or cfg is not None:
        return
    section = hydra_section_overrides(parsed)
    hydras = [o.input_line for o in parsed if o.is_hydra_override() and not o.is_sweep_override()]
    if not hydras or (base := _compose(config_name, [o for o in section if o not in hydras],
                                       return_hydra_config=True)) is None:
        return  # not theirs: Hydra says what it is
    try:
        _compose(config_name, section, return_hydra_config=True, raise_errors=True)
    except Exception as e:
        text = str(e)
        params = [o.input_line for o in parsed if o.is_hydra_override() and
                  o.key_or_group.lstrip("+").startswith("hydra.sweeper.params")]
        if params and base.hydra.sweeper.get("params", None) is None:  # Hydra: "'NoneType' object has no attribute
            # 'get'" or "Unexpected type: None" (found with the planner)
            raise _params_unset(params[0], "optim.lr=1e-3,2e-3") from None
        if (missing := re.search(r"Could not find '(hydra/[\w/]+)/([^'/]+)'", text)) and \
                (listed := re.search(r"Available options in '[^']+':\n((?:\t.*\n?)+)", text)):
            # hydra/launcher=jobli: Hydra lists each option on a line of its own, and the first three lines kept
            # below named one (basic) as if it were the only launcher (found by review)
            options = [line.strip() for line in listed.group(1).splitlines() if line.strip()]
            raise ConfigError(f"{missing.group(1)}={missing.group(2)} is not an option of '{missing.group(1)}'."
                              f"{did_you_mean(missing.group(2), options)} Options: {', '.join(options)}") from None
        why = [line.strip().rstrip(":") for err in (e, e.__cause__) if err is not None for line in str(err).splitlines()
               if line.strip() and not line.strip().startswith(("full_key:", "object_type=", "reference_type="))]
        raise ConfigError(f"{': '.join(dict.fromkeys(why[:3]))} (among {', '.join(hydras)})") from None


def _params_unset(line: str, example: str):
    """hydra.sweeper.params set on the command line while the basic sweeper's are null, which Hydra cannot do."""
    from momattn.errors import ConfigError

    return ConfigError(f"{line}: Hydra cannot set the sweeper's params from the command line while they are unset "
                       "(null, the basic sweeper's default); give the values as the sweep's own overrides (python "
                       f"train.py -m {example}), or set hydra.sweeper.params in an experiment config, as "
                       "conf/experiment/eta_sweep.yaml does")


def check_compare_callback(config_name: str, overrides: list[str]) -> None:
    """hydra.callbacks.compare.run is a bool: an untyped callback argument, so 'maybe' and 'no' were true, and the
    sweep's end ran evaluate.py. And hydra.job.chdir stays false (every entry point reads paths from where it
    starts)."""
    from omegaconf import OmegaConf

    from momattn.errors import ConfigError

    _, cfg = hydra_section(config_name, overrides)
    compare = OmegaConf.select(cfg, "hydra.callbacks.compare.run", default=False) if cfg is not None else False
    if not isinstance(compare, bool):
        raise ConfigError(f"hydra.callbacks.compare.run={compare!r} must be true or false (whether the sweep's end "
                          "runs evaluate.py sweep_dir=... or prints it)")
    if cfg is not None and OmegaConf.select(cfg, "hydra.job.chdir", default=False) is True:  # (found by review:
        # data.paths=[corpus.txt] was then looked for in the run folder, "does not exist")
        raise ConfigError("hydra.job.chdir=true: momattn reads the paths you give (data files, ckpt_path, task "
                          "files) from the folder you start in, and writes into the run folder itself; leave it false")


def hydra_section_overrides(parsed: list) -> list[str]:
    """Of the parsed overrides, those the hydra section depends on, as Hydra composes it for the mode and the
    sweeper (its master config): the config groups (an experiment sets the mode and the sweep's params) and hydra.*
    keys. A swept group is left out, as Hydra leaves it out (the group keeps its default there: the params of
    experiment=eta_sweep,eta_sweep_rotary are not swept), and so are the task's keys, which a swept group's
    options may lack (attention.eta with attention=vanilla,momentum)."""
    groups = _groups()
    return [o.input_line for o in parsed if not o.is_sweep_override() and (
        o.is_hydra_override() or (o.key_or_group in groups and not o.is_add() and not o.is_delete()))]
    # hydra.sweeper.params.x=interval(...) and other swept hydra keys left out: Hydra refuses them in a multirun


def _compose(config_name: str, overrides: list[str], raise_errors: bool = False, **kwargs):
    """The composed config, or None where Hydra cannot compose it (Hydra reports that itself when it runs)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return compose(config_name, overrides=overrides, **kwargs)
    except Exception:
        if raise_errors:
            raise
        return None
    finally:
        GlobalHydra.instance().clear()


def _groups(conf_dir: Path | None = None) -> dict[str, list[str]]:
    """{config group: its options}: the folders under conf/ and their YAML files."""
    return {d.name: sorted(f.stem for f in d.glob("*.yaml")) for d in (conf_dir or CONF_DIR).iterdir() if d.is_dir()}


def _default_choices(config_name: str) -> dict:
    """{config group: its option} of the primary config's defaults list (None for `experiment: null`)."""
    import yaml

    out = {}
    for entry in yaml.safe_load((CONF_DIR / f"{config_name}.yaml").read_text()).get("defaults") or []:
        if isinstance(entry, dict):
            for key, value in entry.items():
                if not key.startswith("override "):
                    out[key.split()[-1].split("@")[0]] = value
    return out


def _walk(cfg, key: str) -> tuple[str, int, object]:
    """Where a dotted key leads: ('exists', ...), ('missing', i, node) with parts[i] absent from node, ('null', i,
    node) with parts[i] set to null in node (ppl.data.tasks while ppl.data is null), or ('unknown', ...) where a
    list or a value that cannot be resolved yet lies on the way (Hydra judges those). The leaf is never read: a
    ${hydra:...} value cannot be resolved before Hydra runs."""
    from omegaconf import DictConfig

    node, parts = cfg, key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig):
            return "unknown", i, node
        if part not in node:
            return "missing", i, node
        if i < len(parts) - 1:
            try:
                child = node[part]
            except Exception:
                return "unknown", i, node
            if child is None:
                return "null", i, node
            node = child
    return "exists", len(parts), node


def _exists(cfg, key: str) -> bool | None:
    """Whether the dotted key is in the config (None where the walk cannot tell)."""
    status = _walk(cfg, key)[0]
    return None if status == "unknown" else status == "exists"


def _check_key(cfg, key: str, hint: str | None = None, set_too: tuple[str, ...] = ()) -> None:
    """A ConfigError for a key the config lacks, or one under a null section (unless the command line sets that
    section too, set_too: Hydra judges the pair)."""
    status, i, node = _walk(cfg, key)
    if status == "null" and (section := ".".join(key.split(".")[:i + 1])) not in set_too:
        leaf = key.split(".", i + 1)[-1]
        raise ConfigError(f"'{key}': {section} is null (unset), so it has no key '{leaf}' to set; add it with "
                          f"+{key}=..., or give the whole section: {section}={{{leaf}: ...}}")
    if status == "missing":
        parts = key.split(".")
        where = ".".join(parts[:i]) or "the top level"
        known = [str(k) for k in node.keys()]
        from momattn.helptext import OPEN_SECTIONS  # +key adds one there only; elsewhere it is refused alike

        adds = f"To add a new key on purpose use +{key}=..." if parts[0] in (*OPEN_SECTIONS, "hydra") else None
        advice = "" if hint == "" or (hint is None and adds is None) else f" ({hint or adds})"
        raise ConfigError(
            f"'{key}' is not a config key: '{parts[i]}' does not exist in {where}.{did_you_mean(parts[i], known)} "
            f"Keys there: {', '.join(known)}.{_elsewhere(cfg, parts, i) if hint != '' else ''}{advice}"
        )


def _elsewhere(cfg, parts: list[str], i: int) -> str:
    """Where a key the config lacks lives instead: another option of its config group (attention.eta under
    attention=vanilla belongs to attention=momentum), or a section (lr=1e-3 at the top level is optim.lr). The
    message listed only the keys there (found by review)."""
    from omegaconf import DictConfig

    if i == 1 and (holders := _options_holding(parts[0], parts[1:])):
        return f" It belongs to {' and '.join(holders)}: choose it as well ({holders[0]} {'.'.join(parts)}=...)."
    if i == 0 and len(parts) == 1:
        homes = [f"{k}.{parts[0]}" for k, v in cfg.items_ex(resolve=False) if isinstance(v, DictConfig)
                 and parts[0] in v]
        # the groups of this entry point only (its config's sections): evaluate.py was told attention=momentum
        homes += [f"{o} {o.split('=')[0]}.{parts[0]}" for group in sorted(p.name for p in CONF_DIR.iterdir())
                  if group in cfg and f"{group}.{parts[0]}" not in homes for o in _options_holding(group, parts)]
        if homes:
            return f" Did you mean {' or '.join(homes)}?"
    return ""


def _options_holding(group: str, parts: list[str]) -> list[str]:
    """The options of a config group (conf/<group>/*.yaml) whose YAML sets the dotted key `parts`, as group=option."""
    import yaml

    if not (CONF_DIR / group).is_dir():
        return []
    holders = []
    for option in sorted((CONF_DIR / group).glob("*.yaml")):
        node = yaml.safe_load(option.read_text()) or {}
        for part in parts:
            node = node.get(part, _ABSENT) if isinstance(node, dict) else _ABSENT
        if node is not _ABSENT:
            holders.append(f"{group}={option.stem}")
    return holders


_ABSENT = object()


def _parse_error(overrides: list[str], e: Exception) -> ConfigError:
    """Hydra's syntax error as one line, with the fix where it is known: a leading ~ (hydra.run.dir=~/x), or a
    plain value Hydra's lexer stops in (prompt=It's, prompt=日本語), which quoting takes as it is."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from momattn.sweep_jobs import _GroupOptions

    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip() and "hydra.cc/docs" not in line
                    and not re.fullmatch(r"\s*\^+\s*", line))  # (a caret under the override, joined, points nowhere)
    parser = OverridesParser.create(config_loader=_GroupOptions())

    def parses(o: str) -> bool:
        try:
            parser.parse_overrides([o])
            return True
        except Exception:
            return False

    bad = next((o for o in overrides if not parses(o)), None)
    key, _, value = (bad or "").partition("=")
    if bad is not None and (value == "~" or value.startswith("~/")) and "dir" in key.rsplit(".", 1)[-1]:
        return ConfigError(f"{bad}: Hydra does not expand ~ (and cannot parse it unquoted); write the path out, "
                           f"e.g. {key}=$HOME{value[1:]} unquoted, which the shell expands")
    if bad is not None and value.startswith("[") and re.search(r"[\[,]\s*~", value):  # data.paths=[~/a.txt]
        entries = [e.strip() for e in value.strip("[]").split(",")]
        fixed = "[" + ",".join(f"'{e}'" if e.startswith("~") else e for e in entries) + "]"
        return ConfigError(f"{bad}: Hydra cannot parse an unquoted ~ in a list; quote each such entry: "
                           f'"{key}={fixed}" (momattn expands the ~ of a path)')
    if bad is not None and value.startswith("[") and value.endswith("]"):  # tags=[é], data.paths=[a.txt,b=c.txt]:
        # no advice where a single value was told to quote it (found by review)
        entries = [x.strip() for x in value[1:-1].split(",")]
        plain = not re.search(r"[\[\]{}]", value[1:-1]) and not any(x[:1] in "'\"" for x in entries)  # a quoted
        # entry holding a comma, a dict: split at every comma, the advice parsed to other values (diff review)
        fixed = bad if not plain else f"{key}=[" + ",".join(x if parses(f"k=[{x}]") else "'" + x.replace("'", "\\'") + "'"
                                      for x in entries) + "]"
        if fixed != bad and parses(fixed):
            typed = shell_quote(fixed) if hidden(fixed) else f'"{fixed}"' if not set(fixed) & set('$`"\\!') else \
                shlex.quote(fixed)
            return ConfigError(f"{bad} does not parse as a Hydra override ({text}); quote each list entry that holds "
                               f"other characters than letters, digits and / . _ -: {typed}")
    quoted = f"{key}='" + value.replace("'", "\\'") + "'"
    # as typed in a shell: in double quotes where nothing in them is the shell's ($, `, ", \, !), else shlex's
    typed = shell_quote(quoted) if hidden(quoted) else f'"{quoted}"' if not set(value) & set('$`"\\!') else \
        shlex.quote(quoted)  # (\' is the shell's as typed; $'...' for a byte that is not UTF-8, or a control)
    if bad is not None and (fn := re.match(r"(choice|range|interval|glob|tag|shuffle|sort)\(", value)):
        # choice(), interval(1e-3): quoting turned the sweep into a string value, refused later (found by review)
        return ConfigError(f"{bad} does not parse as Hydra's {fn.group(1)}(...) ({text}); e.g. {key}=choice(1e-3,2e-3), "
                           f"{key}=range(1,5), {key}=interval(1e-4,1e-2) (Hydra's sweep grammar: "
                           "https://hydra.cc/docs/advanced/override_grammar/extended/); a text value, not a sweep, "
                           f"is quoted: {typed}")
    closed = len(value) > 1 and value[0] in "'\"" and value[-1] == value[0]  # a quoted value ('...' or "...")
    # not a broken list or dict; a text that starts with a quote ("'tis", got no advice: flows review) is one too
    if bad is not None and value and value[0] not in "[{(" and not closed and parses(quoted):
        # one argument that holds two overrides ("trainer.devices=2 trainer.accelerator=cpu"): quoting is not it
        split = ("; or, if it holds several overrides, pass each as an argument of its own"
                 if re.search(r"\s[A-Za-z_+~][\w.]*=", value) else "")
        return ConfigError(f"{bad} does not parse as a Hydra override ({text}); quote the value: {typed} (the "
                           f"shell passes the single quotes on to Hydra){split}")
    if bad is not None and closed:
        # prompt='It's a "great" film' (a file's text wrapped in quotes): its inner quote ends the quoted value
        q = value[0]
        fixed = f"{key}={q}" + value[1:-1].replace(q, "\\" + q) + q
        if parses(fixed):
            typed = shell_quote(fixed) if hidden(fixed) else shlex.quote(fixed)
            return ConfigError(f"{bad} does not parse as a Hydra override ({text}): the {q} inside the quoted value "
                               f"ends it; escape each inner {q} as \\{q}: {typed} (as typed in the shell)")
    return ConfigError((f"{bad} does not parse as a Hydra override" if bad is not None else
                        "the command line does not parse") + f": {text} (Hydra's override grammar: "
                       "https://hydra.cc/docs/advanced/override_grammar/basic/)")


def parsed_overrides(overrides: list[str]) -> list:
    """Hydra's parse of the command line; a syntax error as one line (_parse_error), exit 2 as for any typo."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from momattn.sweep_jobs import _GroupOptions

    try:
        return OverridesParser.create(config_loader=_GroupOptions()).parse_overrides(overrides)
    except Exception as e:  # Hydra's message says where
        raise _parse_error(overrides, e) from None


def check_overrides(config_name: str, overrides: list[str], jobs: list[list[str]] | None = None) -> None:
    """Raise ConfigError naming a misspelled group option or key, with the closest valid one. With a multirun's
    jobs (momattn.sweep_jobs.plan_sweep), the keys are checked against every combination of group options they
    take (attention.eta set for attention=vanilla,momentum: vanilla has none)."""
    parsed = parsed_overrides(overrides)
    groups, choices, keys, adds, deletes, settings = _groups(), [], [], [], [], []
    fixed = []  # (item, override) of the keys set, added or deleted with one value: Hydra's sweep config has them too
    for o in parsed:
        name = o.key_or_group
        if name.startswith("hydra") or o.is_force_add():
            continue
        if config_name in ("evaluate", "analyze") and name in ("paths.output_dir", "paths.root_dir"):
            # accepted and ignored (found by fuzzing): they serve the logger's interpolations only
            raise ConfigError(f"{o.input_line}: {config_name}.py writes its reports into its run folder, "
                              "hydra.run.dir (paths.output_dir follows it); give hydra.run.dir=<folder> instead")
        if config_name in ("evaluate", "analyze") and name == "paths.cache_dir":  # accepted and ignored too
            raise ConfigError(f"{o.input_line}: {config_name}.py does not read paths.cache_dir"
                              + ("; its token cache is cache_dir=<folder>" if config_name == "evaluate" else
                                 " (it keeps no token cache)"))
        if name in groups and o.package is None and name not in _default_choices(config_name):
            # Hydra: "Could not override 'model'. No match in the defaults list. To append ... use +model=small",
            # advice that fails too (evaluate.py reads the model from the checkpoint)
            owners = [f"{c}.py" for c in ("train", "evaluate", "analyze", "generate")
                      if c != config_name and name in _default_choices(c)]
            theirs = sorted(g for g in _default_choices(config_name) if g in groups)
            raise ConfigError(f"{o.input_line}: '{name}' is a config group of {' and '.join(owners) or 'no entry point'}"
                              f", not of {config_name}.py" + (", which reads the model and its training settings "
                                                             "from the checkpoint" if config_name != "train" else "")
                              + f"; its groups: {', '.join(theirs) or 'none'}")
        if o.is_add() and name in groups and o.package is None and name in (chosen := _default_choices(config_name)):
            # Hydra: "Multiple values for experiment. To override a value use 'override experiment: ginc'"
            raise ConfigError(f"{o.input_line}: the config group '{name}' is in {config_name}.yaml's defaults already "
                              f"({name}: {chosen[name] if chosen[name] is not None else 'null'}), and '+' adds a "
                              f"group the defaults lack; choose its option with {o.input_line[1:]}")
        if o.is_delete() and name in groups and "none" not in groups[name] and \
                _default_choices(config_name).get(name) is not None:
            # ~attention, ~trainer: the run trained on its built-in defaults, then failed at its end (a traceback,
            # no summary, no evaluation; found by review). ~logger and ~callbacks mean their option none
            raise ConfigError(f"{o.input_line}: every run needs its {name} group, which cannot be left out. "
                              f"Options: {', '.join(groups[name])}")
        if o.is_add() or o.is_delete():
            if name not in groups:
                (adds if o.is_add() else deletes).append((name, o.input_line or name))
                if not o.is_sweep_override():
                    fixed.append((("add" if o.is_add() else "delete", (name, o.input_line or name)), o))
            continue
        if name in groups:
            try:
                if o.is_sweep_override():
                    values = list(o.sweep_string_iterator())
                else:  # one option, or several of one group (logger=[csv,wandb])
                    value = o.value()
                    values = [str(v) for v in value] if isinstance(value, list) else [o.get_value_element_as_str()]
            except Exception:  # sweeps that Hydra expands itself
                continue
            if not values:  # Hydra launched no job, then printed the command comparing them
                raise ConfigError(f"{o.input_line}: the glob matches none of the options of the config group "
                                  f"'{name}', so the sweep has no jobs. Options: {', '.join(groups[name])}")
            for v in values:
                if v == "null":  # Hydra: "ValueError: Config group override must be a string ...", a traceback
                    off = f", or {name}=none" if "none" in groups[name] else f", or ~{name} (to leave it out)" \
                        if _default_choices(config_name).get(name) is None else ""  # ~ of a needed one: refused
                    raise ConfigError(f"{name}=null: a config group takes one of its options{off}. "
                                      f"Options: {', '.join(groups[name])}")
                if v not in groups[name]:
                    raise ConfigError(f"{name}={v} is not an option of the config group '{name}'."
                                      f"{did_you_mean(v, groups[name])} Options: {', '.join(groups[name])}")
            choices.append([f"{name}={v}" for v in values] if o.is_sweep_override() or not o.input_line
                           else [o.input_line])
        else:
            keys.append(name)
            if not o.is_sweep_override():
                fixed.append((("key", name), o))
            if not o.is_sweep_override() and o.input_line:
                settings.append((name, o))
    if not (keys or adds or deletes):
        return
    from momattn.sweep_jobs import group_choices

    # without the jobs (an Optuna search picks its trials as it goes): the combinations of the swept options
    combos = group_choices(jobs, groups) if jobs else [
        list(c) for c in itertools.islice(itertools.product(*choices), MAX_COMBOS)]
    configs = [(combo, cfg) for combo in combos[:MAX_COMBOS] if (cfg := _compose(config_name, combo)) is not None]
    if config_name == "train":
        _check_attention_kind(parsed, configs)
    items = [("key", k) for k in keys] + [("add", a) for a in adds] + [("delete", d) for d in deletes]
    partly: tuple | None = None  # (the refusals, the passing combinations) of the first item some jobs refuse
    for item in [*items, ("shapes", None)]:  # each key on its own: another may fail on other options
        refused, passed = [], []
        for combo, cfg in configs:  # a swept group: every option the jobs take must have the keys set
            try:
                _check_item(cfg, item, keys, settings, hint="" if len(configs) > 1 else None)
                passed.append(combo)
            except ConfigError as e:
                refused.append((combo, e))
        if refused and not passed:  # no job takes it: a typo, named as for a single run, with the '+' hint
            combo = next((c for c, e in refused if "Did you mean" in str(e)), refused[0][0])  # the nearest name
            _check_item(next(cfg for c, cfg in configs if c is combo), item, keys, settings)
            raise refused[0][1]
        if refused and partly is None:
            partly = (refused, passed)
    if partly:  # attention.eta for attention=vanilla,momentum: Hydra's multi-line error, or a misleading one
        refused, passed = partly
        which = list(dict.fromkeys(o for c, _ in refused for o in c if not any(o in p for p in passed)))
        which = which or [o for o in refused[0][0] if any(o not in c for c in combos)]  # no option alone: a pair
        said = str(refused[0][1]).rstrip(".") + "."
        raise ConfigError(
            f"the sweep's jobs with {' or '.join(which)}: {said} The sweep's other jobs accept it, so it fits "
            "some of the swept options only: sweep those in a sweep of their own, each sweep into a folder under one "
            "parent (hydra.sweep.dir=<parent>/<name>), then compare them all: python evaluate.py sweep_dir=<parent>")
    if len(combos) > 1 or jobs:
        _check_sweep_config(config_name, overrides, fixed, keys)


def _check_attention_kind(parsed: list, configs: list) -> None:
    """attention.kind=momentum under another attention option trained momentum with the code's own defaults (eta,
    ...), which the run's config (.hydra/config.yaml, --cfg job) did not record (found by review): the attention is
    chosen with its config group, which brings its settings."""
    if _unquoted(_last([o.input_line for o in parsed if o.input_line], "ckpt_path") or "null") not in ("null", ""):
        return  # a resume: its saved command line may hold one (runs before this check), and its kind cannot change
    for o in parsed:
        if o.key_or_group != "attention.kind" or o.is_delete():
            continue
        try:  # each job's value of a sweep (attention.kind=vanilla,momentum: diff review), unquoted
            kinds = [str(v) for v in o.sweep_string_iterator()] if o.is_sweep_override() else [str(o.value())]
        except Exception:
            continue
        for kind in kinds:
            if kind not in (kinds_known := _groups().get("attention", [])):  # it advised attention=<the typo>
                raise ConfigError(f"{o.input_line}: attention kind '{kind}' is unknown.{did_you_mean(kind, kinds_known)}"
                                  f" An attention is chosen with its config group: attention={' | '.join(kinds_known)}")
            for _, cfg in configs:
                chosen = cfg.get("attention", {}).get("kind")
                if chosen is not None and kind != chosen:
                    raise ConfigError(f"{o.input_line}: an attention is chosen with its config group, attention="
                                      f"{kind}, which brings its settings into the run's config; attention.kind alone "
                                      f"would train {kind} on the code's defaults under the {chosen} option's config")


def _check_sweep_config(config_name: str, overrides: list[str], fixed: list, keys: list[str]) -> None:
    """Before any job, Hydra composes the sweep's own config: the swept groups at their defaults, and the
    overrides that are not sweeps applied to it. A key every job has but that config lacks (attention.eta with
    experiment=eta_sweep,eta_sweep_rotary: both experiments choose momentum, the default experiment (null) leaves
    vanilla) ended in Hydra's multi-line 'Could not override'; a one-value sweep, key=choice(value), is applied by
    the jobs only."""
    from omegaconf import OmegaConf

    from momattn.sweep_jobs import sweeper_params

    parsed, cfg = hydra_section(config_name, overrides)  # composed as Hydra composes the sweep's config
    if cfg is None:
        return
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    swept = [o.key_or_group for o in parsed if o.is_sweep_override()]
    swept = list(dict.fromkeys([*sweeper_params(cfg), *swept]))
    at = ", ".join(f"{g}={'null' if choices[g] is None else choices[g]}" for g in swept if g in choices)
    for item, o in fixed:
        kind, what = item
        try:
            if kind == "add":
                if _exists(cfg, what[0]):
                    raise ConfigError(f"'{what[0]}' exists there already")
            else:
                _check_item(cfg, item, keys, [], hint="")
        except ConfigError as e:
            line = o.input_line or (what[1] if kind != "key" else what)
            key, value = line.split("=", 1) if "=" in line else (line, "")
            fix = (f" Give it as a one-value sweep, which only the jobs apply: {key}=choice({value})" if value and
                   kind != "delete" else "")
            raise ConfigError(f"{line}: every job of the sweep takes it, but Hydra first composes the sweep's own "
                              f"config, with the swept groups at their defaults{f' ({at})' if at else ''}, and "
                              f"there {str(e).rstrip('.')}.{fix}") from None


def check_config_flags(config_name: str, args) -> None:
    """-cn / -cp / -cd (Hydra's other primary config, config path and config folder) are refused by name: the entry
    point's code and its start-up checks read conf/<config_name>.yaml and conf/ (`train.py -cn evaluate` checked the
    overrides against train.yaml, then ran train.py's code on evaluate.yaml)."""
    entry = f"{config_name}.py"
    own = ("add yours to a group there, e.g. conf/experiment/<name>.yaml, then experiment=<name>" if config_name ==
           "train" else "set what differs with overrides")
    name = args.config_name
    if name is not None and name.removesuffix(".yaml") != config_name:
        other = name.removesuffix(".yaml")
        if other in {p.stem for p in CONF_DIR.glob("*.yaml")}:  # an entry point's, not a group's option
            raise ConfigError(f"-cn {name}: {other}.yaml is {other}.py's config; run python {other}.py instead")
        raise ConfigError(f"-cn {name}: {entry} runs on conf/{config_name}.yaml only; set what differs with "
                          "overrides" + (", or as an experiment (conf/experiment/<name>.yaml, then experiment=<name>)"
                                         if config_name == "train" else ""))
    for flag, value in (("-cp/--config-path", args.config_path), ("-cd/--config-dir", args.config_dir)):
        if value is not None:
            raise ConfigError(f"{flag} {value}: {entry} reads its configs from {CONF_DIR} only (its start-up checks "
                              f"compose them there); {own}")


def check_run_mode(overrides: list[str]) -> None:
    """A single run (no -m) given a sweep (attention=vanilla,momentum): Hydra refuses it, but the key checks came
    first and blamed another override (attention.eta=0.3: 'not a config key', as the first option lacks it)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ValueType

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # check_overrides reports the syntax error
        return
    for o in parsed:
        if not o.is_sweep_override():
            continue
        key, value = o.input_line.split("=", 1)
        if o.value_type == ValueType.SIMPLE_CHOICE_SWEEP and o.key_or_group in _groups():
            raise ConfigError(f"{o.input_line} gives several options, which only a sweep runs: add -m (--multirun) "
                              "for one job per option")
        if o.value_type == ValueType.SIMPLE_CHOICE_SWEEP:
            raise ConfigError(f"{o.input_line} gives several values, which only a sweep runs: add -m (--multirun) "
                              f"for one job per value; for a list write {key}=[{value}], for a text with commas "
                              f"quote it: \"{key}='{value}'\"")
        raise ConfigError(f"{o.input_line} is a sweep, which needs -m (--multirun)")


MAX_COMBOS = 64  # distinct combinations of swept group options whose keys are checked (each one composed)


def _check_item(cfg, item: tuple, keys: list[str], settings: list, hint: str | None = None) -> None:
    """One thing the command line does to the config: set a key, add one (+), delete one (~), or the shapes of the
    values set (a list given to a section, ...)."""
    kind, what = item
    if kind == "key":
        _check_key(cfg, what, hint=hint, set_too=tuple(keys))
    elif kind == "add":  # Hydra's own message is a multi-line error, exit 1
        key, line = what
        if _exists(cfg, key):
            raise ConfigError(f"{line}: '{key}' exists already; '+' adds a new key. Write {line[1:]} to set it "
                              f"(or ++{line[1:]} to set it whether or not it exists)")
    elif kind == "delete":
        key, line = what
        _check_key(cfg, key, hint=f"{line} deletes a key, which must exist")  # names the missing part
        _check_deletable(cfg, key, line)
    else:
        _check_shapes(settings, cfg)


def _check_deletable(cfg, key: str, line: str) -> None:
    """Hydra resolves the value it deletes: one set from the run's folder (${hydra:...}, or ${paths.output_dir}
    that is) ended in its multi-line 'HydraConfig was not set', exit 1 (found by review). Refused in one line."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=False)  # as written: the answer must not depend on whether this
    raw = _raw(plain, key)  # process has run a Hydra job before (HydraConfig set)
    if raw is None:  # Hydra: "Could not delete from config. 'ckpt_path' does not exist.", exit 1 (found by review)
        raise ConfigError(f"{line}: {key} is null already (unset); leave the override out (on a resume of a run "
                          f"that set it, write {key}=null to unset it: flows review)")
    if isinstance(raw, dict) and "enabled" in raw:  # ~eval.icl ran the section with its defaults: on, not off
        raise ConfigError(f"{line}: {key} is a section, and deleting it runs it with its defaults; to turn it off "
                          f"write {key}.enabled=false")
    if key.rsplit(".", 1)[-1] == "_target_":  # a bare mapping where a class was built: a traceback later
        raise ConfigError(f"{line}: {key} names the class to build; choose another option of the group, or set "
                          f"{key}=<a class>")
    if isinstance(raw, str) and _from_hydra(plain, raw):
        raise ConfigError(f"{line}: {key} is set from the run's folder ({raw}), which Hydra cannot delete; set it "
                          f"instead ({key}=...), or leave it")


def _from_hydra(plain: dict, raw: str, depth: int = 0) -> bool:
    """Whether a written value reads ${hydra:...}, itself or through the keys it interpolates."""
    if "${hydra:" in raw:
        return True
    return depth < 8 and any(isinstance(v := _raw(plain, ref), str) and _from_hydra(plain, v, depth + 1)
                             for ref in re.findall(r"\$\{([\w.]+)\}", raw))


def _check_shapes(settings: list, cfg) -> None:
    """A mapping given to a list (eval.icl.tasks={a:1}) or a list to a section (eval.icl=[1]) refused with one
    line: Hydra's own merge error exits 1 in its multi-line format (other mismatches reach the typed checks)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    given: dict[str, type] = {}  # the shape an earlier override on this line gave a key (a null default has none)
    for key, o in settings:
        try:
            value = o.value()
            node = OmegaConf.select(cfg, key, throw_on_missing=False)
        except Exception:  # an interpolation or anything else Hydra judges itself
            continue
        shape = given.get(key) or (list if isinstance(node, ListConfig) else dict if isinstance(node, DictConfig)
                                   else None)
        if isinstance(value, list | dict):
            given[key] = list if isinstance(value, list) else dict
        if shape is list and isinstance(value, dict):
            shapes = "a list and the value is a mapping"
        elif shape is dict and isinstance(value, list):
            shapes = "a section and the value is a list"
        else:
            continue
        earlier = " (as an earlier override on the command line made it)" if node is None else ""
        raise ConfigError(f"{o.input_line}: {key} is {shapes}{earlier}; a list is written [a,b], and a section's keys "
                          "are set one by one (key.sub=value)")


def _removed_additions(saved: list[str], kept: list[str], overrides: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(kept, overrides, the saved ones left out): a key the run added to (+k=..., or +k.x=... below it) that
    today's command deletes (~k) or sets to null (k=null, k a section the run added keys below) is left out of the
    resume with those additions (each way to drop an added callback was refused: found by review). Today's
    deletion goes too where k is not in the base config (it would name a key that is not there); where k is (the
    run added a key below a shipped callback), it stays and applies."""
    def below(key: str, parent: str, strictly: bool = False) -> bool:
        return (key == parent and not strictly) or key.startswith(parent + ".")

    added = [_override_key(o) for o in saved if o.startswith("+")]
    gone = {_override_key(o) for o in overrides if not o.startswith("+") and (
        (o.startswith("~") and any(below(a, _override_key(o)) for a in added)) or
        (o.partition("=")[2].strip() in ("null", "~") and any(below(a, _override_key(o), True) for a in added)))}
    if not gone:
        return kept, overrides, []
    removed = [o for o in kept if o.startswith("+") and any(below(_override_key(o), k) for k in gone)]
    groups = _groups()
    choices = [o for o in [*saved, *overrides] if not o.startswith(("+", "~")) and _override_key(o) in groups]
    base = _compose("train", choices)
    in_base = {k for k in gone if base is None or _exists(base, k) is not False}
    return ([o for o in kept if o not in removed],
            [o for o in overrides if o.startswith("+") or _override_key(o) not in gone - in_base], removed)


def _override_key(o: str) -> str:
    """The key an override sets: 'trainer.max_steps' for 'trainer.max_steps=5', '+x.y=1', '~x.y'."""
    return o.split("=", 1)[0].lstrip("+~")


# what a resume may change (and the keys below them): the length, where and how it runs, logging, evaluation
RESUME_FREE = ("ckpt_path", "trainer.max_steps", "trainer.devices", "trainer.num_nodes", "trainer.accelerator",
               "trainer.strategy", "trainer.enable_progress_bar", "trainer.log_every_n_steps", "data.batch_size",
               "data.num_workers", "data.num_proc", "data.cache_dir", "data.val_batches", "paths", "logger",
               "callbacks", "run_eval", "eval", "tags", "compile", "dist_timeout_s", "hydra")


def changed_overrides(saved: list[str], now: list[str], free: tuple[str, ...] = RESUME_FREE) -> list[str]:
    """'key=saved (now: value)' for every key the saved command line set that `now` sets otherwise or not at all,
    apart from the keys in `free` and below them. Values compare as Hydra reads them: quotes and the spaces
    between list items do not count ([a, b] is [a,b])."""
    def norm(value: str) -> str:
        value = _unquoted(value)
        return value if "'" in value or '"' in value else "".join(value.split())

    def values(overrides: list[str]) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for o in overrides:
            key = _override_key(o)
            if not any(key == f or key.startswith(f + ".") for f in free):
                out[key] = None if o.startswith("~") else norm(o.split("=", 1)[1]) if "=" in o else None
        return out

    was, today = values(saved), values(now)
    # an interpolation is not compared: the command line is kept unresolved since session 49 (resolving it before
    # any check crashed on a bad one), and a checkpoint of an earlier release holds it resolved
    return [f"{k}={v} (now: {today[k] if k in today else 'not given'})" for k, v in was.items()
            if (k not in today or today[k] != v) and "${" not in f"{v}{today.get(k)}"]


def _last(overrides: list[str], key: str) -> str | None:
    """The value the last override of `key` gives, unquoted as Hydra reads it ('a b' -> a b)."""
    values = [o.split("=", 1)[1] for o in overrides if "=" in o and _override_key(o) == key]
    return _unquoted(values[-1]) if values else None


def _unquoted(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        q = value[0]
        return value[1:-1].replace("\\" + q, q)
    return value


def run_folder_of(ckpt_path: str, run_dir: str | None, root: Path) -> Path | None:
    """The run folder a resume continues: hydra.run.dir when given, else the folder holding the checkpoint's
    checkpoints/ (for ckpt_path=last: the newest last.ckpt under root/outputs and root/multirun)."""
    if run_dir:
        return Path(run_dir)  # as Hydra takes it: no ~ expansion (check_output_dir refuses a leading ~)
    if ckpt_path == "last":
        from momattn.checkpoint import newest_last_checkpoint  # the search resolve_ckpt_path makes

        newest = newest_last_checkpoint(root)
        return newest.parent.parent if newest else None
    p = Path(ckpt_path).expanduser()
    if p.parent.name == "checkpoints":
        return p.parent.parent
    # a step file a callback keeps in another folder of its run (${paths.output_dir}/steps): the run it records,
    # where it lies inside it (it was told to leave hydra.run.dir out, which forked it: flows review)
    run = recorded_run_folder(p) if p.is_file() else None
    return run if run is not None and same_run(p, run) else None  # (same_run: inside it, not a run of its own)


def _checkpoint_overrides(ckpt: str) -> list[str]:
    """The overrides a checkpoint was trained with (momattn >= this release records them), else []."""
    path = Path(ckpt).expanduser()
    if ckpt == "last" or not path.exists():
        return []
    from momattn.checkpoint import read_meta

    # weights only, never running code (a sharded FSDP folder: its meta.pt alone); an unreadable or foreign file is
    # refused now in one line (read as no overrides, it was refused after notes on the defaults it never used)
    meta = read_meta(path, targets=False).get("momattn") or {}  # (targets: resume_overrides, trusting today's)
    return [str(o) for o in meta.get("overrides") or []]  # checked by resume_overrides (trust.check_overrides)


def resolved_ckpt_path(overrides: list[str]) -> list[str]:
    """A ckpt_path given through a resolver of its own (${oc.env:CKPT,last}) as its value: the resume's decisions
    (ckpt_path=last's folder and saved command line, the checkpoint's folder) read the text, which named no file,
    so it resumed into a new folder with the settings it did not repeat back at their defaults (found by review).
    One that names the config (${paths.output_dir}/...) is left to Hydra, as before."""
    raw = _last(overrides, "ckpt_path")
    if raw is None or "${" not in raw:
        return overrides
    i = max(n for n, o in enumerate(overrides) if "=" in o and _override_key(o) == "ckpt_path")
    if parsed_overrides([overrides[i]])[0].is_sweep_override():  # a sweep's list of them: each job's, Hydra's
        return overrides
    from omegaconf import OmegaConf

    try:
        value = OmegaConf.create({"v": raw}).v
    except Exception:  # it names the config, or cannot be resolved: Hydra's own message, later
        return overrides
    return [*overrides[:i], f"ckpt_path={'null' if value is None else hydra_quoted(value)}", *overrides[i + 1:]]


def check_ckpt_exists(overrides: list[str]) -> None:
    """A ckpt_path file that does not exist: its one line now, before Hydra starts (it came 6-10 s later, once
    training had imported Lightning)."""
    ckpt = _last(overrides, "ckpt_path")
    if ckpt is not None and not ckpt.strip():  # ckpt_path=$CKPT with CKPT unset: a new run, not the resume meant
        from momattn.config import empty_ckpt_path

        raise empty_ckpt_path(ckpt)
    if ckpt and ckpt not in ("last", "null") and "${" not in ckpt and not Path(_unquoted(ckpt)).expanduser().exists():
        from momattn.checkpoint import read_checkpoint

        read_checkpoint(_unquoted(ckpt))


def _outside_switched_groups(kept: list[str], now: list[str], saved: list[str]) -> tuple[list[str], list[str],
                                                                                          list[str]]:
    """The run's saved overrides (`kept` of `saved`) that still apply where today's command switches a config
    group, those dropped because the option chosen now lacks the key (trainer=cpu on a run trained with trainer=ddp
    trainer.strategy=ddp: the saved trainer.strategy was re-applied to a group without it, and the error blamed a
    key not typed), and those replaced by the option's own value where the switch itself changes it (trainer=fsdp on
    a DDP run kept its trainer.strategy=ddp and trained with DDP, and trainer=cpu its trainer.devices=2, without a
    word: found by review)."""
    groups = _groups()
    switched = {_override_key(o) for o in now if "=" in o and not o.startswith("~") and _override_key(o) in groups}
    under = [o for o in kept if not o.startswith(("+", "~")) and _override_key(o).split(".", 1)[0] in switched]
    if not under:
        return kept, [], []
    cfg = _compose("train", [o for o in now if _override_key(o) in switched])
    if cfg is None:  # today's group choice does not compose: Hydra says so when it runs
        return kept, [], []
    dropped = [o for o in under if _exists(cfg, _override_key(o)) is False]  # (the leaf is never read)
    # the option's own values, in the run's config (an experiment= may choose or set them too), before and after
    from momattn.trust import injected

    rest = [o for o in saved if o not in under and _override_key(o) not in switched and not injected(o, saved)]
    before, after = _compose("train", [*rest, *(o for o in saved if _override_key(o) in switched)]), \
        _compose("train", [*rest, *(o for o in now if _override_key(o) in switched)])
    # (where they do not compose, the run's own values are kept: the group choices alone missed those that an
    # experiment= or recipe= makes, and dropped a data.batch_size on data=ginc where the recipe chose ginc: review)
    replaced = []
    if before is not None and after is not None:
        from omegaconf import OmegaConf

        # unresolved (${paths.output_dir} needs Hydra's run), each converted once
        before, after = (OmegaConf.to_container(c, resolve=False) for c in (before, after))
        replaced = [o for o in under if o not in dropped and _raw(before, _override_key(o)) is not _raw
                    and _raw(after, _override_key(o)) != _raw(before, _override_key(o))]
    return [o for o in kept if o not in dropped and o not in replaced], dropped, replaced


def _raw(node, key: str):
    """The value at a dotted key of a plain nested config, or a marker (_raw itself) where there is none."""
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _raw
        node = node[part]
    return node


def resume_overrides(overrides: list[str], multirun: bool = False, root: Path | None = None) -> list[str]:
    """A resume reuses its run's own command line: the overrides saved in <run folder>/.hydra/overrides.yaml,
    then today's on top (today's win, key by key). A single run also continues in that folder. Anything else
    (no ckpt_path, no saved overrides) is returned unchanged."""
    ckpt = _last(overrides, "ckpt_path")
    # a sweep resumed without its folder got a new timestamped one, and every job started from step 0, silently
    if multirun and ckpt == "last" and _last(overrides, "hydra.sweep.dir") is None:
        raise ConfigError("ckpt_path=last in a sweep resumes each job from its own folder in the sweep's folder; "
                          "without hydra.sweep.dir a new timestamped one would be made and every job start from "
                          "step 0. Name the sweep: hydra.sweep.dir=multirun/<date>/<time>")
    if multirun and ckpt == "last" and not other_rank():  # each job resumes, and writes into, its folder in it
        from momattn.trust import check_links

        check_links(Path(_unquoted(_last(overrides, "hydra.sweep.dir"))).expanduser())  # (skipped: third review)
    if not ckpt or ckpt == "null" or (multirun and ckpt == "last"):  # a sweep's jobs each resume their own folder
        return overrides
    run_dir = _last(overrides, "hydra.run.dir")
    root_dir = _last(overrides, "paths.root_dir")  # where ckpt_path=last searches (train.py searches there too)
    search_root = root or (Path(root_dir).expanduser() if root_dir else Path.cwd())
    folder = run_folder_of(ckpt, run_dir, search_root)
    if ckpt == "last" and folder is None and "${" not in str(root_dir or ""):
        from momattn.checkpoint import no_run_to_resume

        raise no_run_to_resume(search_root)  # now, not once Hydra has made an empty run folder for it
    saved_file = folder / ".hydra" / "overrides.yaml" if folder else None
    source = f"{saved_file}, the run folder's saved command line,"
    if saved_file is not None and saved_file.is_file():
        from omegaconf import OmegaConf

        try:
            saved = [str(o) for o in OmegaConf.to_container(OmegaConf.load(saved_file), resolve=False)]  # ${..} kept
        except Exception as e:
            raise ConfigError(f"cannot read the run's saved command line {saved_file}: {e}. Resume by giving the "
                              "original overrides again, or repair that file") from None
    else:  # no run folder with .hydra/: the checkpoint itself records the command line it was trained with
        saved = _checkpoint_overrides(ckpt)
        if not saved:
            return overrides
        source = f"checkpoint '{ckpt}': its recorded command line"
        folder = folder if run_dir else None
    now = {_override_key(o) for o in overrides}
    set_now = {_override_key(o) for o in overrides if not o.startswith("~")}

    def undeleted(o: str) -> bool:  # a saved ~eval.icl where today sets eval.icl.enabled=false, as the refusal of
        # that deletion advises (a run started before it was refused could not be resumed: diff review)
        return o.startswith("~") and any(k.startswith(_override_key(o) + ".") for k in set_now)

    # not carried over: the checkpoint to resume (given now) and injected faults (a test device; re-injecting
    # one would kill the resumed run at the same step)
    from momattn.trust import check_links, check_overrides, injected, mark_resume_from_checkpoint

    # checked whole before anything below composes it: Hydra reads a recorded hydra.searchpath=[pkg://x] as it
    # composes, importing x, before the check of what is kept refused it (found by review). Its classes are
    # imported only when built, so they are checked with what is kept: a class of the run's own, given again
    # today as the printed resume command does, was refused here (flows review)
    check_overrides([o for o in saved if _override_key(o) != "ckpt_path" and not injected(o, saved)], source,
                    classes=False)
    kept = [o for o in saved if _override_key(o) not in now and _override_key(o) != "ckpt_path"
            and not injected(o, saved)
            and not undeleted(o)]
    undone = [o for o in saved if undeleted(o)]
    kept, dropped, replaced = _outside_switched_groups(kept, overrides, saved)
    kept, overrides, removed = _removed_additions(saved, kept, overrides)

    # what this resume repeats is data from the folder or the checkpoint, which may come from elsewhere: a _target_
    # there is imported and called, a path chooses where files are written (a run folder's was trusted: review)
    check_overrides(kept, source, repeat=True)
    mark_resume_from_checkpoint(overrides, _unquoted(ckpt))  # the composed config's targets: checked in the task
    if folder is not None and not other_rank():  # the folder this resume writes into: no link to write through
        check_links(Path(folder))
    # a key the run added (+k=v; not in the base config) and today sets again as k=v2: still an addition
    added = {_override_key(o): o[: len(o) - len(o.lstrip("+"))] for o in saved if o.startswith("+")}
    overrides = [added[_override_key(o)] + o if not o.startswith(("+", "~")) and _override_key(o) in added else o
                 for o in overrides]
    merged = kept + overrides
    if not multirun and "hydra.mode" not in now:  # one job of a sweep experiment (its config sets MULTIRUN) resumes
        merged.append("hydra.mode=RUN")           # as the single run it is, in its own folder
    if run_dir is None and not multirun and folder is not None:
        merged.append(f"hydra.run.dir={hydra_quoted(folder)}")
    # its config came from the checkpoint, and the folder is a new one (a copy outside any checkpoints/ folder too:
    # it said "resuming the run in <new folder>"; found by review)
    fork = folder is not None and ckpt != "last" and not same_run(ckpt, folder)
    what = f"continuing {ckpt} in a new folder, {folder}," if fork else f"resuming the run in {folder}" if folder \
        else f"continuing {ckpt} in a new folder"  # (no run folder of its own: a new one; it said "the run of")
    if not other_rank():  # (the processes Lightning, srun or torchrun start for other ranks: said once)
        _BEFORE_LOG.clear()  # (an earlier resume of this process, e.g. a test's, never opened its log)
        say = _say_before_log if not multirun else functools.partial(print, file=sys.stderr, flush=True)
        shown = functools.partial(map, printable)  # recorded text: no escape sequence reaches the terminal raw
        say(printable(f"[momattn] {what}") + " with its own config"
            + (f" ({' '.join(shown(kept))})" if kept else "")
            + (f"; on top: {' '.join(shown(overrides))}" if overrides else "")
            + (f"; not carried over, as the group given now has no such key: {' '.join(shown(dropped))}" if dropped
               else "")
            + (f"; not carried over, as the group given now sets them itself: {' '.join(shown(replaced))} (give "
               "them again to keep them)" if replaced else "")
            + (f"; left out, as asked now: {' '.join(shown(removed))}" if removed else "")
            + (f"; not carried over, as keys below it are set now: {' '.join(shown(undone))}" if undone else ""))
        if ckpt == "last" and run_dir is None and not multirun and folder is not None and \
                (Path(folder).parent / "multirun.yaml").is_file():  # the newest run was one job of a sweep: that
            # job alone went on (and split the sweep's verdict), where the user meant the sweep (found by review)
            say(f"[momattn] note: {folder} is job {Path(folder).name} of the sweep in {Path(folder).parent}; this "
                "resumes that job alone. To go on with the whole sweep: python train.py -m <its overrides> "
                f"ckpt_path=last {shell_arg('hydra.sweep.dir', Path(folder).parent)}")
    return merged


_BEFORE_LOG: list[str] = []  # said before Hydra made the run's folder and log: written into that log when it opens


def _say_before_log(line: str) -> None:
    """A line of a single run's start-up (the resume's overrides), printed now and kept for its train.log, which
    holds the run's record of what was carried over (found by review: only the console had it)."""
    print(line, file=sys.stderr, flush=True)
    _BEFORE_LOG.append(line)


def check_dir_values(overrides: list[str]) -> None:
    """An empty hydra.run.dir / hydra.sweep.dir, or one starting with ~ (Hydra makes a folder named '~'), refused
    before anything is created or locked."""
    for k in ("hydra.run.dir", "hydra.sweep.dir"):
        value = _last(overrides, k)
        if value is not None and not value.strip():
            raise ConfigError(f"{k}= is empty; give a folder ({k}=. for the current one)")
        if value is not None and value.startswith("~"):
            home = value == "~" or value.startswith("~/")  # ~bob/runs: not $HOMEbob/runs
            raise ConfigError(f"{k}={value}: Hydra does not expand ~ (it would make a folder named "
                              f"'{value.split('/')[0]}'); write the path out"
                              + (f", e.g. {k}=$HOME{value[1:]} unquoted, which the shell expands" if home else
                                 " in full"))


def check_output_dir(overrides: list[str], multirun: bool, cwd: Path | None = None) -> None:
    """Refuse, before any work, an output folder that cannot be written (a read-only mount, /proc, a file in the
    way): the folder Hydra will create (hydra.run.dir / hydra.sweep.dir, else outputs/ or multirun/ here) is
    created now and a probe file written and removed."""
    from momattn.io import probe_write

    check_dir_values(overrides)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = _last(overrides, key)
    target = given if given else ("multirun" if multirun else "outputs")
    prefix = target.split("${", 1)[0]  # an interpolated folder (${now:...}): the folder its fixed prefix names,
    target = prefix if prefix == target or prefix.endswith("/") else os.path.dirname(prefix)  # not run_ of run_${now:}
    target = target or "."  # (an empty run_ folder was left beside each run: found by review)
    folder = (cwd or Path.cwd()) / Path(target)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe_write(folder)
    except OSError as e:
        how = f"{key}={given}" if given else f"the default folder {target}/ under {cwd or Path.cwd()}"
        raise ConfigError(f"cannot write the output folder {folder} ({how}): {e.strerror or e}. Choose a writable "
                          f"folder with {key}=<path>, or run from a writable directory") from None


def check_fresh_folder(overrides: list[str], multirun: bool, cwd: Path | None = None) -> None:
    """A fresh training run (no ckpt_path) into a folder that holds a run would overwrite its checkpoints, and
    Hydra would rewrite its saved command line before the run could refuse: refused here, before Hydra starts."""
    ckpt = _last(overrides, "ckpt_path")
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = _last(overrides, key)
    if not given or "${" in given:
        return
    folder = (cwd or Path.cwd()) / Path(given)
    if ckpt and ckpt not in ("null", "last") and not multirun:  # another run's checkpoint, into a folder with a run
        if (held := run_held(folder)) and not same_run(ckpt, folder, cwd):
            raise another_runs_checkpoint(ckpt, folder, held, key)
    if ckpt and ckpt != "null":
        return
    runs = [folder] if not multirun else sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if held := runs_held(runs):
        raise folder_holds_a_run(folder, held, key, sweep=multirun, search=multirun and _is_search(overrides))


def keep_run_config(overrides: list[str], cwd: Path | None = None, entry: str = "train"):
    """For a run into a folder that holds one: a function that puts back the folder's saved config (.hydra/*.yaml,
    which Hydra rewrites with this command line as the job starts) where the job then fails without writing its
    results. train.py: a resume that fails before a checkpoint (another model width or attention, another
    accumulation, ...): the folder's config keeps describing the run that wrote its checkpoints, which a later
    `ckpt_path=last hydra.run.dir=...` resumes and evaluate.py reads. evaluate.py / analyze.py: a refused command
    into the folder of an earlier evaluation or analysis (its reports stay, and so does the config that made them;
    the refused command's replaced it). None where there is nothing to keep."""
    given = _last(overrides, "hydra.run.dir")
    if entry == "train" and (not (ckpt := _last(overrides, "ckpt_path")) or ckpt == "null"):
        return None
    if not given or "${" in given:
        return None
    folder = (cwd or Path.cwd()) / Path(given)
    saved = {p: p.read_bytes() for p in (folder / ".hydra").glob("*.yaml")}
    if not saved:
        return None
    made = ["checkpoints/*.ckpt"] if entry == "train" else ["*.json", "*.md"]  # what the config is the record of

    def state() -> list:
        found = []
        for p in sorted(q for pattern in made for q in folder.glob(pattern)):
            with contextlib.suppress(OSError):
                st = p.stat()
                found.append((p.name, st.st_ino, st.st_mtime_ns, st.st_size))
        return found

    before = state()
    if entry != "train" and not before:  # no reports here: the command's own config is the folder's record
        return None

    def restore() -> None:
        if state() != before:  # it wrote a new state: the config that made it stays
            return
        from momattn.io import atomic_write

        for p, data in saved.items():
            with contextlib.suppress(OSError):
                atomic_write(p, lambda f, data=data: f.write(data))

    return restore


SWEEP_ENV = "MOMATTN_SWEEP_DIR"  # rank 0's sweep folder, for the local ranks Lightning starts (rank_zeros_sweep_dir)
_RUN_LOCKS: dict[Path, int] = {}  # the run folder this process trains in, and its lock (one run at a time)


def rank_zeros_sweep_dir(overrides: list[str]) -> list[str]:
    """A DDP job's other local ranks, which Lightning starts with the sweep's command line (so they run the sweep
    alongside rank 0, job by job), sweep into rank 0's folder: the default multirun/<date>/<time> gave them a
    folder of their own, a second or more later (its evaluate.py command then found no finished run)."""
    folder = os.environ.get(SWEEP_ENV)
    if not folder or os.environ.get("LOCAL_RANK", "0") == "0" or "'" in folder or folder.endswith("\\"):
        return overrides
    return [*overrides, f"hydra.sweep.dir='{folder}'"]


def check_sweep_folder_key(overrides: list[str]) -> None:
    """A sweep (-m, or an experiment or search whose config sets hydra.mode=MULTIRUN) given hydra.run.dir alone,
    which only a single run reads: the sweep went to multirun/<date>/<time> without a word (found by review)."""
    run_dir = _last(overrides, "hydra.run.dir")
    if run_dir is None or _last(overrides, "hydra.sweep.dir") is not None or other_rank():
        return
    raise ConfigError(f"hydra.run.dir={run_dir} names a single run's folder, but this command is a sweep (-m, or an "
                      "experiment or search whose config sets hydra.mode=MULTIRUN), whose jobs go into folders under "
                      f"hydra.sweep.dir: give hydra.sweep.dir={run_dir} instead")


def other_rank() -> bool:
    """Whether this process is a rank other than a job's first (they share its folder, which it locks)."""
    return any(os.environ.get(k, "0") != "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"))


def claim_run_folder(folder: Path) -> str | None:
    """Lock the run folder for this run: None where it is now held (or cannot be locked: no flock there), else the
    other run that holds it ('process PID on HOST')."""
    from momattn.io import lock_folder

    folder = folder.resolve()
    for held in [f for f in _RUN_LOCKS if f != folder]:
        os.close(_RUN_LOCKS.pop(held))
    if folder in _RUN_LOCKS or other_rank():
        return None
    fd, holder = lock_folder(folder)
    if fd is not None:
        _RUN_LOCKS[folder] = fd
    return holder


def hold_run_folder(folder: Path | None) -> None:
    """Lock the run folder for this run (None: release it). Two runs in one folder (a resume started twice, a
    requeued job whose first copy still runs) overwrote each other's checkpoints and metrics.csv, and one crashed
    in the CSV logger: the second is refused, before Hydra rewrites the folder's saved config where the folder is
    named (hydra.run.dir, a resume's). Two runs started in the same second into Hydra's outputs/<date>/<time> do
    not meet: the second moves to <time>_2 (momattn.run_folder). Only a job's first process locks: the other ranks
    share its folder."""
    if folder is None:
        for held in list(_RUN_LOCKS):
            os.close(_RUN_LOCKS.pop(held))
        return
    holder = claim_run_folder(folder)
    if holder is not None:
        raise in_use(folder.resolve(), holder)


def in_use(folder: Path, holder: str, kind: str = "training run") -> ConfigError:
    """The refusal of a run folder that another process (`holder`) holds; `kind` names what this entry point runs."""
    if kind != "training run":
        return ConfigError(f"{folder} is in use by another {kind} ({holder}); wait for it to end, or write into "
                           "another folder (hydra.run.dir=...)")
    return ConfigError(f"{folder} is in use by another training run ({holder}): two runs in one folder overwrite "
                       "each other's checkpoints and metrics. Wait for it to end (then resume with ckpt_path=last "
                       f"{shell_arg('hydra.run.dir', folder)} if it was stopped), or train in another folder (hydra.run.dir=...)")


def _is_search(overrides: list[str]) -> bool:
    """Whether the multirun is a search (an Optuna sweeper), which ckpt_path=last cannot resume."""
    from omegaconf import OmegaConf

    from momattn.sweep_jobs import optuna_search

    cfg = hydra_section("train", overrides)[1]
    return cfg is not None and optuna_search(OmegaConf.select(cfg, "hydra"))


def same_run(ckpt: str | Path, folder: Path, cwd: Path | None = None) -> bool:
    """Whether the checkpoint is one of the run folder's own: in its checkpoints/, or in another folder of it that
    is not a run folder itself (step files a checkpoint callback keeps in ${paths.output_dir}/steps, as
    ModelCheckpoint's own advice has it, were refused as another run's: found by review). The folder that holds
    the file is resolved, not the file: a last.ckpt that is itself a link (MOMATTN_TRUST_LINKS=1) was the run's own
    "ckpt_path=last", refused as another run's with that same command as the fix (trust review)."""
    path = (cwd or Path.cwd()) / Path(ckpt).expanduser()
    run = ((cwd or Path.cwd()) / folder).resolve()
    held = run / "checkpoints"

    def owned(parent: Path, file: Path) -> bool:
        if parent == held:
            return True
        if run not in parent.parents:
            return False
        # (a run folder inside this one, a sweep's job folder, is its own run's)
        if any((p / ".hydra").is_dir() or (p / "checkpoints").is_dir()
               for p in [parent, *parent.parents[:len(parent.parents) - len(run.parents) - 1]]):
            return False
        # and the file was written by this run (another run's checkpoint copied into a folder of this one trained
        # on there, over its checkpoints and metrics: diff review)
        return recorded_run_folder(file) == run

    # the folder of each link on the way (a link elsewhere to the run's own file, ~/latest.ckpt ->
    # run/checkpoints/last.ckpt, which may be a link itself: diff review)
    for _ in range(40):
        if owned(path.parent.resolve(), path):
            return True
        if not path.is_symlink():
            return False
        path = path.parent / os.readlink(path)
    return False


def recorded_run_folder(ckpt: Path) -> Path | None:
    """The run folder (paths.output_dir, resolved) a checkpoint records it was written in; None where it records
    none or cannot be read."""
    from momattn.checkpoint import read_meta
    from momattn.errors import UserError

    try:
        paths = ((read_meta(ckpt, targets=False).get("momattn") or {}).get("config") or {}).get("paths") or {}
    except (UserError, OSError):
        return None
    out = paths.get("output_dir") if isinstance(paths, dict) else None
    return Path(out).expanduser().resolve() if isinstance(out, str) and out else None


def another_runs_checkpoint(ckpt: str | Path, folder: Path, held: Path, key: str = "hydra.run.dir") -> ConfigError:
    """The refusal of a resume of one run's checkpoint into the folder of another (it overwrote that run's
    last.ckpt, cut its metrics.csv at the checkpoint's step and rewrote its summary and saved command line)."""
    return ConfigError(f"ckpt_path={ckpt} is not a checkpoint of the run in {folder}, which holds {held}: resuming "
                       "it there would overwrite that run's checkpoints, metrics and summary. Continue it in its own "
                       f"folder (leave {key} out), fork it into a new folder ({key}=<a new folder>), or resume "
                       f"{folder}'s own run with {resume_arg(held)}{_newest_note(held)}")


def best_files_only(held: Path) -> bool:
    """Whether run_held's `held` is a checkpoint of a run without last.ckpt (save_last=false), which ckpt_path=last
    refuses to resume."""
    return held.name not in ("last.ckpt", "summary.json")


def resume_arg(held: Path) -> str:
    """How to resume the run that holds `held` (run_held's): ckpt_path=last, or its newest checkpoint where it has no
    last.ckpt."""
    return shell_arg("ckpt_path", held) if best_files_only(held) else "ckpt_path=last"


def _newest_note(held: Path) -> str:
    return " (it has no last.ckpt; this is its newest checkpoint)" if best_files_only(held) else ""


def saved_checkpoints(run: Path) -> list[Path]:
    """The checkpoint files (or FSDP folders) in run/checkpoints, not a killed writer's partial file."""
    with contextlib.suppress(OSError):
        return [p for p in (run / "checkpoints").glob("*.ckpt") if not p.name.startswith(".")]
    return []


def runs_held(runs: list[Path]) -> list[Path]:
    """run_held of each run folder that holds a run, a checkpoint a kill left aside in it restored first (where no
    process holds the folder), so that it is seen: a fresh run went on into such a folder, and Hydra rewrote its
    saved command line (found by review)."""
    from momattn.io import restore_left_aside

    for run in runs:
        restore_left_aside(run / "checkpoints", unless_held=True)
    return [p for run in runs if (p := run_held(run))]


def run_held(run: Path) -> Path | None:
    """What a fresh run in the folder `run` would overwrite: its last.ckpt; else its newest other checkpoint (with
    save_last=false, a fresh run overwrote an earlier attempt's checkpoints without a word: found by review); else
    the summary of a run that kept none (callbacks=none); None where it holds none of these."""
    if (last := run / "checkpoints" / "last.ckpt").exists():
        return last
    others = []
    with contextlib.suppress(OSError):
        others = [(p.stat().st_mtime, p) for p in saved_checkpoints(run)]
    if others:
        return max(others)[1]
    return summary if (summary := run / "summary.json").exists() else None


def folder_holds_a_run(folder: Path, held: list[Path], key: str, sweep: bool = False,
                       search: bool = False) -> ConfigError:
    """The refusal of a fresh run in a folder whose checkpoints `held` it would overwrite (sweep: the jobs'
    checkpoints of a sweep folder; search: of an Optuna search, which is not resumed)."""
    what = f"{len(held)} job(s) of a {'search' if search else 'sweep'}" if sweep else "a run"
    bare = [h for h in held if best_files_only(h)]
    if search:
        how = "search into another folder (hydra.sweep.dir=...; a study kept in hydra.sweeper.storage goes on there)"
    elif bare and (sweep or key == "hydra.sweep.dir"):  # one file for every job would not do (diff review)
        job = bare[0].parent.parent
        how = (f"resume each job without a last.ckpt on its own from its newest checkpoint ({len(bare)}: e.g. python "
               f"train.py {resume_arg(bare[0])} {shell_arg('hydra.run.dir', job)}), then the sweep with "
               f"ckpt_path=last (the same command otherwise), or sweep into another folder ({key}=...)")
    else:
        how = (f"resume it with {resume_arg(held[0])}{_newest_note(held[0])} (the same command otherwise), or train in "
               f"another folder ({key}=...)")
    return ConfigError(f"{folder} holds {what} already ({held[0]}{', ...' if len(held) > 1 else ''}); a fresh run "
                       f"there would overwrite its checkpoints and results. {how[0].upper()}{how[1:]}, or delete that "
                       "folder first")


FULL_DISK = (errno.ENOSPC, errno.EDQUOT)  # no space left: the disk, or the user's quota
_UNWRITABLE = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some of your quota",
               errno.EROFS: "choose a writable folder (hydra.run.dir=...)",
               errno.EACCES: "choose a writable folder (hydra.run.dir=...)",
               errno.EISDIR: "move the folder that is in the way", errno.ENOTDIR: "move the file that is in the way"}


def unwritable(e: OSError) -> UserError | None:
    """A write refused by the filesystem (full disk, read-only, a folder where a file goes), as one line naming
    the file; None for any other OSError, and for a read (a file that cannot be read stays a traceback, which
    names it). Files are written atomically (io.atomic_write, which marks its failures): those written before it
    are complete."""
    target = getattr(e, "write_target", None)
    if e.errno not in _UNWRITABLE or not (target or e.errno in FULL_DISK and e.filename):
        return None
    where = target or e.filename
    return UserError(f"cannot write {where}: {e.strerror}; {_UNWRITABLE[e.errno]} and run it again (the files "
                     "written before it are complete)")


def name_too_long(e: OSError) -> UserError | None:
    """A path with a part longer than the filesystem takes (255 bytes on most), read or written, as one line; None
    for any other OSError. The run's own folders and file names are checked at start-up (config._check_folders):
    this catches the rest (a task file, a checkpoint path on the command line)."""
    if e.errno != errno.ENAMETOOLONG:
        return None
    name = str(e.filename or "")
    shown = name if len(name) <= 120 else f"{name[:60]}...{name[-40:]} ({len(name)} characters)"
    return UserError(f"a file or folder name is longer than the filesystem takes: '{shown}'; shorten the setting "
                     "that gives it")


def report(e: UserError, hydra: bool = True) -> None:
    if getattr(e, "every_rank", False) and other_rank():  # the first process says it (twice: found by review)
        return
    hint = "\n(set HYDRA_FULL_ERROR=1 for the full traceback)" if hydra and os.environ.get("HYDRA_FULL_ERROR") != "1" \
        else ""  # (set already, it was said again after the one line: found by review)
    print(f"\nerror: {e}{hint}", file=sys.stderr, flush=True)


class _Tee:
    """A console stream that also appends its complete lines to the run's log file; of a progress bar's
    carriage-return updates, only the state a line ends in."""

    def __init__(self, stream, log):
        self._stream, self._log, self._line = stream, log, ""

    def write(self, text: str) -> int:
        n = self._stream.write(text)
        *done, self._line = (self._line + text).split("\n")
        self._line = self._line.rsplit("\r", 1)[-1]  # a bar redrawn in place keeps only its newest state
        if done:
            self._log.write("".join(line.rsplit("\r", 1)[-1] + "\n" for line in done))
            self._log.flush()
        return n

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding, ...: the console's
        return getattr(self._stream, name)


@contextlib.contextmanager
def run_log():
    """What a run prints (its start line, progress, results, warnings, a one-line error) also goes to the log
    file Hydra keeps in the run folder (`train.log`, `evaluate.log`, ...), beside Python's logging records."""
    import logging

    files = [h.baseFilename for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    if not files:  # hydra/job_logging=none (generate.py)
        yield
        return
    out, err = sys.stdout, sys.stderr
    # (backslashreplace: a folder name that is not UTF-8 in the start line was a traceback: review)
    with open(files[0], "a", encoding="utf-8", errors="backslashreplace") as log:
        log.writelines(line + "\n" for line in _BEFORE_LOG)
        _BEFORE_LOG.clear()
        sys.stdout, sys.stderr = _Tee(out, log), _Tee(err, log)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = out, err


class JobFailed(CompactHydraException):
    """One job of a multirun failed with the error printed above it; Hydra runs the other jobs and names this one
    at the end (and Optuna counts the trial as failed). Compact: Hydra prints its message, not a stack trace."""


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def hydra_main(config_name: str):
    """Like @hydra.main, with conf/ found from the package, and UserErrors printed as one message (exit 2)."""
    import hydra

    def decorate(fn):
        jobs: list[HydraJob] = []  # the jobs begun in this process: a stop after one is between a sweep's jobs

        @functools.wraps(fn)
        def task(cfg):
            from momattn.console import quiet_console
            from momattn.hardware import keep_freed_memory

            pending()  # a stop between the jobs that Python dropped: the sweep ends here, before this job
            quiet_console()
            keep_freed_memory()  # no page faults on every step's re-allocated tensors (glibc)
            jobs.append(hydra_job())  # (Hydra's config is gone again between a sweep's jobs)
            with run_log(), saying(lambda signame: interrupted(config_name, cfg, signame)):
                try:
                    try:
                        return fn(cfg)
                    except OSError as e:  # a report or table that cannot be written, after the work
                        if (err := unwritable(e) or name_too_long(e)) is None:
                            raise
                        raise err from e  # HYDRA_FULL_ERROR=1 shows where it failed
                except UserError as e:
                    if os.environ.get("HYDRA_FULL_ERROR") == "1":
                        raise
                    report(e)
                    if _multirun():  # Hydra marks this job failed and runs the others (Optuna: a failed trial);
                        raise JobFailed(f"error: {first_line(e, 500)}") from None  # exiting ended the whole sweep
                    sys.exit(2)
                except (KeyboardInterrupt, Terminated, Exception) as e:  # a stop outside fit (Lightning handles it
                    _end_stopped(e, lambda signame: interrupted(config_name, cfg, signame))  # there): it was a
                    raise  # traceback of Hydra's frames, or a silent -15

        hydra_task = hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")(task)

        @functools.wraps(fn)
        def entry():
            def say(signame: str) -> str:
                return stopped_outside_job(config_name, signame, jobs[-1] if jobs else None)

            with entry_signals(say):  # a SIGTERM or Ctrl-C before the job's own handling, or between jobs: one line
                try:
                    done = checked_entry()
                    pending()
                    return done
                except (KeyboardInterrupt, Terminated, Exception) as e:  # outside the job: the checks, Hydra composing
                    _end_stopped(e, say)
                    raise

        def checked_entry():
            from momattn.console import quiet_console
            from momattn.sweep_jobs import (
                check_entry_jobs,
                check_jobs,
                check_resume,
                check_search,
                plan_sweep,
            )

            quiet_console()  # before Hydra: a sweeper's setup (Optuna's storage) logs too
            _BEFORE_LOG.clear()  # an earlier entry of this process (a test, a notebook) refused before its log opened
            try:
                args, flags = _command_line(sys.argv[1:])
                check_config_flags(config_name, args)
                if args.help:  # what this entry point does and its keys, with their comments
                    from momattn.helptext import print_help

                    print_help(config_name, sys.modules[fn.__module__].__doc__, CONF_DIR)
                    return None
                given = list(args.overrides)
                info, multirun = command_flags(sys.argv[1:])
                if args.shell_completion:  # install=bash, query=bash: Hydra's own commands, not overrides of the config
                    sys.argv = [sys.argv[0], *hydra_argv(flags, given)]
                    return hydra_task()
                if config_name == "train":
                    parsed_overrides(given)  # (a ckpt_path=steps/epoch=0-step=8.ckpt unquoted: resume_overrides'
                    # own parse of it ended in Hydra's traceback: found by review)
                    multirun = multirun or config_multirun(config_name, given)
                    given = resolved_ckpt_path(given)  # (a sweep's too: its ckpt_path=last checks: diff review)
                    if not multirun:  # (a sweep may list several: ckpt_path=a.ckpt,b.ckpt)
                        check_ckpt_exists(given)
                    given = resume_overrides(given, multirun=multirun)
                    given = rank_zeros_sweep_dir(given) if multirun else given
                sys.argv = [sys.argv[0], *hydra_argv(flags, given)]
                if not multirun:
                    check_run_mode(given)
                sweep = plan_sweep(config_name, given) if multirun and not info else None
                check_overrides(config_name, given, jobs=sweep.jobs if sweep else None)
                if multirun and config_name == "train":
                    check_sweep_folder_key(given)  # (after the overrides' own checks: a typo is named first)
                if not info:
                    check_dir_values(given)  # before the run folder is locked: a '~' folder was made, then refused
                if config_name == "train" and not info:
                    check_fresh_folder(given, multirun=multirun)
                    if not multirun and (run_dir := _last(given, "hydra.run.dir")) and "${" not in run_dir:
                        hold_run_folder(Path(run_dir))
                    if sweep is not None and _last(given, "ckpt_path") == "last":
                        check_resume(sweep)  # before Hydra rewrites the job folders' saved command lines
                    if sweep is not None:
                        check_jobs(sweep, given)  # a value one job takes, refused before any job trains
                if config_name in ("evaluate", "analyze") and sweep is not None and not info:
                    check_entry_jobs(config_name, sweep, given)  # as train.py's sweeps: before any job's work
                if multirun and sweep is None and not info:
                    check_search(config_name, given)  # an Optuna search: its space's keys, no ckpt_path=last
                check_hydra_overrides(config_name, given)  # what the checks above leave to Hydra's hydra section
                check_compare_callback(config_name, given)
                # sampling writes no files (hydra.output_subdir: null, run.dir: .), but Hydra makes a folder given
                if not info and (config_name != "generate" or _last(given, "hydra.run.dir") is not None):
                    check_output_dir(given, multirun=multirun)
            except UserError as e:
                if os.environ.get("HYDRA_FULL_ERROR") == "1":  # as inside a job: the traceback the hint promises
                    raise
                report(e)
                sys.exit(2)
            except OSError as e:  # ckpt_path=<a 300-character name>: a traceback from the checks' own probes
                if (err := name_too_long(e)) is None:
                    raise
                report(err)
                sys.exit(2)
            restore = keep_run_config(given, entry=config_name) \
                if config_name in ("train", "evaluate", "analyze") and not multirun and not info else None
            try:
                with on_stop(restore):  # a stop inside an import ends the process at once: restored there
                    return hydra_task()
            except BaseException as e:  # the job's own exception where HYDRA_FULL_ERROR=1 (or a debugger), a signal
                if restore is not None and not (isinstance(e, SystemExit) and e.code in (0, None)):
                    restore()  # a resume that failed before saving leaves the run folder's config as it was
                if multirun:  # Hydra ended the sweep on a failed job's error after running them all
                    from momattn.sweep_callback import after_failed_sweep

                    after_failed_sweep()
                raise

        return entry

    return decorate


def _end_stopped(e: BaseException, line: Callable[[str], str]) -> None:
    """For a Ctrl-C or SIGTERM (stopped): line(signame) from the job's first process, then exit 130 or 143, what a
    shell reports (it ends a sweep as well). Returns for any other error, and where HYDRA_FULL_ERROR=1 asks for
    the traceback: the caller raises it."""
    if (stop := stopped(e)) is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
        return
    signame, code = stop
    if rank_zero():
        print(line(signame), file=sys.stderr, flush=True)
    sys.exit(code)


def interrupted(config_name: str, cfg, signame: str = "Ctrl-C") -> str:
    """The line a Ctrl-C or SIGTERM in a job, outside trainer.fit, ends with: what was kept and how to go on."""
    from hydra.core.hydra_config import HydraConfig

    out = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path.cwd()
    if config_name == "train":  # while tokenizing, building the data, or evaluating after fit
        return f"\n[momattn] interrupted ({signame}): {_saved(out)}. {go_on(hydra_job(), out)}"
    if config_name == "generate":
        return f"\n[momattn] interrupted ({signame})"
    if config_name in ("evaluate", "analyze") and _multirun():  # each job's folder is new under a new sweep folder:
        # "the same command again" (or hydra.run.dir, which -m ignores) redid the jobs finished (flows review)
        sweep = Path(str(HydraConfig.get().sweep.dir)).resolve()
        if config_name == "analyze" and not cfg.get("sweep_dir"):  # one checkpoint's analysis is never reused: a
            # rerun makes it again (it was said to be reused: diff review)
            return (f"\n[momattn] interrupted ({signame}): {sweep} holds the reports of the jobs of this -m run "
                    "finished so far; a rerun analyses every job it lists again, so rerun the unfinished values alone")
        reused = "the checkpoints each job scored there are reused" if config_name == "evaluate" else \
            "each job's sweep analyses there are reused"
        return (f"\n[momattn] interrupted ({signame}): {sweep} holds the jobs of this -m run finished so far; run the "
                f"same command again with {shell_arg('hydra.sweep.dir', sweep)}: {reused}")
    # a sweep's finished jobs: each job's record, written last (it said results were held where none were: review)
    jobs_done = any((out / "jobs").glob("*/settings.json" if config_name == "analyze" else "*/results.json"))
    if config_name == "analyze" and cfg.get("sweep_dir"):  # its finished jobs are kept, and reused in that folder
        if not jobs_done:
            return f"\n[momattn] interrupted ({signame}) before any job's analysis had finished; run the same " \
                "command again"
        return (f"\n[momattn] interrupted ({signame}): {out} holds the sweep's jobs analysed so far; run the same "
                f"command again with {shell_arg('hydra.run.dir', out)}: those are reused")
    if config_name == "evaluate":  # the checkpoints (a sweep's jobs) finished are kept in its folder, and reused
        what = "sweep's jobs" if cfg.get("sweep_dir") else "checkpoints"
        if not (jobs_done if cfg.get("sweep_dir") else (out / "results.json").exists()):
            return f"\n[momattn] interrupted ({signame}) before any {'job' if cfg.get('sweep_dir') else 'checkpoint'}" \
                "'s evaluation had finished; run the same command again"
        return (f"\n[momattn] interrupted ({signame}): {out} holds the results of the {what} evaluated so far; run "
                f"the same command again with {shell_arg('hydra.run.dir', out)}: those are reused")
    return (f"\n[momattn] interrupted ({signame}): results are written as the work ends, so {out} holds none or only "
            "some of this run's; run the same command again")


def _saved(out: Path) -> str:
    """The run's newest checkpoint, read without importing torch where the signal cut an import of it short (a
    second import ran torch's start-up over its half-loaded C extension: a traceback, or a crash)."""
    if import_cut_short():
        last = out / "checkpoints" / "last.ckpt"
        return f"{last} is kept" if last.exists() else "no checkpoint was written yet"
    from momattn.checkpoint import newest_checkpoint

    return newest_checkpoint(out)


def stopped_outside_job(config_name: str, signame: str, job: HydraJob | None) -> str:
    """The line a Ctrl-C or SIGTERM outside any job ends with: before the first (the command line's checks, Hydra
    composing the config) nothing was done; after `job` (the last one begun), what the jobs wrote is kept."""
    if job is None:
        from momattn.sweep_callback import SWEEP, _search

        started = SWEEP[0] if SWEEP else None
        if started is None:
            return before_line(signame)
        # the jobs ran in processes of their own (joblib, submitit: none in this one), which had trained: "nothing
        # was done; run the same command again" started the sweep afresh (found by review)
        job = HydraJob([], sweep_dir=str(started.hydra.sweep.dir), search=_search(started))
        if str(started.hydra.launcher.get("_target_", "")).endswith("SlurmLauncher"):
            # the jobs are SLURM's: nothing is passed on, and a resume now would submit copies of jobs still queued
            # or running (it said the signal was passed on to them: found by review)
            return (f"\n[momattn] interrupted ({signame}) in the sweep's process, which waited on jobs submitted to "
                    f"SLURM: they go on (queued or running) and write into {job.sweep_dir}; squeue lists them and "
                    "scancel stops them (a SIGTERM saves each one's step). Once none runs, "
                    + (f"the same command with ckpt_path=last {shell_arg('hydra.sweep.dir', job.sweep_dir)} resumes "
                       "the unfinished ones" if config_name == "train" and not job.search else
                       "evaluate the folder: python evaluate.py " + shell_arg("sweep_dir", job.sweep_dir)))
        where = ("in the sweep's process, whose jobs ran in processes of their own (" + (
            "it was passed on to them, and each said what it saved, above" if signame == "SIGTERM" else
            "a Ctrl-C is not passed on: they keep their last checkpoints") + ")")
    else:
        where = "outside the sweep's jobs (Hydra starting the next or ending the sweep)"
    if job.sweep_dir is None:  # Hydra's end of a single run
        return f"\n[momattn] interrupted ({signame}) after the run's work ended: what it wrote is kept"
    line = f"\n[momattn] interrupted ({signame}) {where}: the jobs that ran are kept in {job.sweep_dir}"
    if config_name == "train" and not job.search:
        return (line + f"; run the same command with ckpt_path=last {shell_arg('hydra.sweep.dir', job.sweep_dir)} to go on (finished "
                "jobs train no further, each job resumes its own folder)")
    return line


@dataclass
class HydraJob:
    overrides: list[str]  # the command line's overrides
    sweep_dir: str | None = None  # multirun only: the sweep's folder
    num: int | None = None  # multirun only: this job's number
    run_dir_given: bool = False  # hydra.run.dir was on the command line
    search: bool = False  # multirun only: an Optuna search's trial (not resumed with ckpt_path=last)


# the launch variables as this process started with them: Lightning sets MASTER_ADDR and NODE_RANK itself when it
# starts a single node's ranks, which read as nodes started by hand
_STARTED_WITH = {k: os.environ.get(k) for k in ("MASTER_ADDR", "NODE_RANK", "LOCAL_RANK")}


def relaunch_note() -> str:
    """How a resume is launched where a launcher started this job (torchrun, srun, several nodes by hand): as it
    was; '' for a plain `python train.py`. The printed `python train.py ...` alone, run on one node of a
    two-node job, was refused (found by review)."""
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        how = "with the same torchrun command"
    elif os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
        how = "with the same srun (or sbatch script)"
    elif _STARTED_WITH["MASTER_ADDR"] and _STARTED_WITH["NODE_RANK"] is not None and \
            _STARTED_WITH["LOCAL_RANK"] is None:  # (a rank Lightning started has LOCAL_RANK)
        how = "on every node, with its NODE_RANK, MASTER_ADDR and MASTER_PORT, as before"
    else:
        return ""
    return f" (launch it as this job was launched: {how})"


def go_on(job, out_dir: Path) -> str:
    """How to go on from a run's newest checkpoint: a search's own way, the sweep's command, or the run's."""
    if job.search:
        return search_stop(job, out_dir)
    return _go_on(job, out_dir) + relaunch_note()


def retyped(out_dir: Path, job) -> str:
    """The overrides a printed resume command repeats: what a resume does not take from the run folder's saved
    command line (.hydra/overrides.yaml), or all of them where it has none (hydra.output_subdir=null)."""
    from momattn.trust import given_again

    return given_again(job).strip() if (out_dir / ".hydra" / "overrides.yaml").is_file() else \
        " ".join(shell_quote(o) for o in job.overrides if not o.startswith(("ckpt_path=", "hydra.run.dir=")))


def resume_from(out_dir: Path) -> Path | None:
    """The checkpoint a resume of the run folder starts from: its last.ckpt where that can be read, else its newest
    other one (save_last=false, or a damaged last.ckpt, which ckpt_path=last refuses: every stop message advised
    it; diff review); None where it holds none. Before momattn.checkpoint (and torch) is loaded, a last.ckpt is
    taken as it is: a stop during the start-up's imports cannot import them (its message came out empty)."""
    last = out_dir / "checkpoints" / "last.ckpt"
    if last.exists():
        read_meta = getattr(sys.modules.get("momattn.checkpoint"), "read_meta", None)  # (not half-imported)
        if read_meta is None:
            return last
        with contextlib.suppress(Exception):
            read_meta(last)
            return last
    others = [p for p in saved_checkpoints(out_dir) if p.name != "last.ckpt"]
    with contextlib.suppress(OSError):
        return max(others, key=lambda p: p.stat().st_mtime) if others else None
    return None


def _go_on(job, out_dir: Path) -> str:
    from momattn.trust import resume_prefix

    own = f" {retyped(out_dir, job)}".rstrip()  # what a resume does not take from the saved line: given again
    links = resume_prefix(job.sweep_dir) if job.sweep_dir is not None else ""  # the sweep's folder links out
    if (held := resume_from(out_dir)) is not None and best_files_only(held):  # ckpt_path=last refuses it (review)
        alone = (f"{resume_prefix(out_dir)}python train.py {resume_arg(held)} {shell_arg('hydra.run.dir', out_dir)}{own}"
                 " (it trains on from that file's step)")
        return f"Resume with: {alone}" + (f", then the sweep with ckpt_path=last {shell_arg('hydra.sweep.dir', job.sweep_dir)}"
                                           " (the same command otherwise)" if job.sweep_dir is not None else "")
    where = (f"ckpt_path=last {shell_arg('hydra.sweep.dir', job.sweep_dir)} (the same command"
             f"{', after ' + links.strip() if links else ''}; each job resumes its own folder)"
             if job.sweep_dir is not None else
             f"{resume_prefix(out_dir)}python train.py ckpt_path=last {shell_arg('hydra.run.dir', out_dir)}{own}")
    return f"Resume with: {where}"


def search_stop(job: HydraJob, out_dir: Path) -> str:
    """How to go on with a search stopped in trial job.num: ckpt_path=last cannot resume a search (its trials
    would be new suggestions of the sampler, and cli.check_search refuses it)."""
    from momattn.trust import given_again

    held = resume_from(out_dir)  # best files only: their path (ckpt_path=last refuses them: diff review)
    arg = resume_arg(held) if held is not None else "ckpt_path=last"
    return (f"the search stops at trial {job.num}; finish it as a single run: python train.py {arg} "
            f"{shell_arg('hydra.run.dir', out_dir)}{given_again(job)}, and run the search again into a new folder for more trials (a search is not "
            "resumed with ckpt_path=last; a study kept in hydra.sweeper.storage keeps its finished trials, and marks "
            "this one failed: the single run's result does not enter the study)")


def hydra_job() -> HydraJob:
    """The running Hydra job (an empty one outside Hydra, e.g. when a test calls run_train directly)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return HydraJob([])
    from omegaconf import OmegaConf

    from momattn.sweep_jobs import optuna_search

    hc = HydraConfig.get()
    # unresolved: an override's ${...} is its text here (resolving it crashed with omegaconf's traceback before
    # the config's own check could name it)
    overrides = OmegaConf.to_container(hc.overrides, resolve=False)
    if hc.mode == RunMode.MULTIRUN:
        return HydraJob(overrides["task"], str(hc.sweep.dir), int(hc.job.num),
                        search=optuna_search(hc))
    return HydraJob(overrides["task"],
                    run_dir_given=any(str(o).startswith("hydra.run.dir=") for o in overrides["hydra"]))


def lm_eval_main() -> None:
    """The momattn-lm-eval command: lm-eval's command line with the "momattn" model registered; without the
    [lm-eval] extra, one line saying how to install it (exit 2), as `python -m momattn.lm_eval_adapter` does."""
    try:
        from momattn.lm_eval_adapter import main
    except UserError as e:  # the adapter's ConfigError: lm_eval cannot be imported
        report(e, hydra=False)
        sys.exit(2)
    main()
