"""Typed evaluation settings, one dataclass per concern (litgpt-style), validated on construction.

The same `ppl:` / `icl:` sections live at the top of conf/evaluate.yaml and under `eval:` in train.yaml.
`EvalConfig.from_mapping` turns a plain mapping (or an OmegaConf node) into these dataclasses and rejects
unknown keys with a did-you-mean, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import glob
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from momattn.errors import ConfigError, UserError, did_you_mean
from momattn.io import file_id

PAPER_LENGTHS = (256, 512, 1024)  # Table 6: validation perplexity at these input lengths
MAX_SHOTS_CAP = 32  # the paper: "up to 32 demonstrations"
DEFAULT_TASKS = ("sst2", "sst5", "mr", "subj", "agnews", "trec")
# task_file: set for entries read from a task file (icl.task_dirs), so that errors name the file
TASK_ENTRY_KEYS = ("name", "path", "template", "answers", "demo_path", "label_field", "demo_fraction", "task_file")


def to_plain(obj: Any) -> Any:
    """OmegaConf nodes -> plain dicts/lists (resolved); anything else unchanged."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf ships with hydra
        return obj
    if isinstance(obj, DictConfig | ListConfig):
        from omegaconf.errors import OmegaConfBaseException

        try:
            return OmegaConf.to_container(obj, resolve=True)
        except OmegaConfBaseException as e:  # prompt='${x}': one line (exit 2), as train.py's, not a traceback
            from momattn.schema import interpolation_error

            raise interpolation_error(obj, e) from None
    return obj


def under_eval(e: UserError) -> UserError:
    """e with the evaluation's keys named as train.yaml holds them, under `eval:` (ppl.lengths ->
    eval.ppl.lengths): the sections name themselves as evaluate.py's config does, at its top level."""
    text = re.sub(r"(?<![\w./+~])(ppl|icl|batch_tokens)(?=[.=])", r"eval.\1", str(e))
    return type(e)(text)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_bool(name: str, value: Any) -> None:
    """A ConfigError unless value is a bool (on the command line `off` or `no` stay text, which is truthy)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} must be true or false")


# the logger.wandb keys that evaluate.py's and analyze.py's runs read (id and name only when null): those of
# momattn.wandb_runs.LOGGER_ARGS and entity (tests/test_console.py checks they agree)
EVAL_WANDB_KEYS = ("_target_", "save_dir", "project", "entity", "offline", "name", "group", "tags", "id", "init_timeout")


def check_logger(logger: Any, entry: str, tags: Any = None) -> None:
    """evaluate.py and analyze.py log to W&B or nowhere (their tables are their files): logger=csv is refused.
    With W&B: its names and the entry point's tags as W&B will check them, before the work."""
    if logger is not None and not isinstance(logger, Mapping):
        raise ConfigError(f"logger={logger!r}: choose logger=none or logger=wandb (a config group)")
    other = [k for k in (logger or {}) if k != "wandb"]
    if other:
        raise ConfigError(f"logger={other[0]} is not supported by {entry}; use logger=none or wandb")
    wandb_cfg = (logger or {}).get("wandb")
    if isinstance(wandb_cfg, Mapping):  # before the work, not after it
        from momattn.wandb_runs import check_init_timeout, check_wandb_names, require_api_key, wandb_offline

        unknown = [k for k in wandb_cfg if k not in EVAL_WANDB_KEYS]  # accepted and ignored: +logger.wandb.foo=1
        if unknown:
            raise ConfigError(f"logger.wandb.{unknown[0]} is not a setting of {entry}'s W&B runs.{did_you_mean(str(unknown[0]), EVAL_WANDB_KEYS)} "
                              f"It takes {', '.join(k for k in EVAL_WANDB_KEYS if k not in ('_target_', 'id', 'name'))}")
        for key in ("id", "name"):  # train.py's: one run it names or resumes; these start a run per model
            if wandb_cfg.get(key) is not None:
                raise ConfigError(f"logger.wandb.{key}={wandb_cfg[key]!r}: {entry} starts a W&B run of its own for "
                                  "each model (named by its label and attention) and never resumes one; drop it, and "
                                  "group the runs with logger.wandb.group=...")
        check_init_timeout(wandb_cfg, "logger.wandb")
        check_wandb_names(wandb_cfg, "logger.wandb")  # its own tags, which its runs take (tags=abcd: a, b, c, d)
        if tags is not None:  # the top-level tags= alone: the names above are checked once
            check_wandb_names({}, "logger.wandb", tags=tags)
        if wandb_offline(wandb_cfg.get("offline", True)) is False:
            require_api_key()


@dataclass
class PplConfig:
    enabled: bool = True
    lengths: list[int] | None = None  # None: the paper's 256/512/1024; context/4, /2, /1 if shorter
    max_windows: int | None = 200  # windows per split and length, taken with a fixed stride over the split; null: all
    train: bool = True  # also train-split perplexity at the longest length (Table 6's "Train" column)
    data: dict | None = None  # null: the run's LM corpus; a mapping: keys merged over the run's `data`

    def __post_init__(self):
        check_bool("ppl.enabled", self.enabled)
        check_bool("ppl.train", self.train)
        if _is_int(self.lengths):
            self.lengths = [self.lengths]
        if self.data is not None and not isinstance(self.data, Mapping):
            raise ConfigError(f"ppl.data={self.data!r} must be a mapping of keys to merge over the run's "
                              "data section, e.g. ppl.data={tasks: [mr]}, or a corpus of its own: "
                              "ppl.data={source: text_files, paths: [other.txt]}")
        if self.data:
            from momattn.data.sources import LOADER_KEYS, LoaderConfig
            from momattn.schema import typed

            if unused := [k for k in ("batch_size", "val_batches", "num_workers") if k in self.data]:
                raise ConfigError(f"ppl.data.{unused[0]} has no effect on perplexity (its batches are set by "
                                  "batch_tokens); drop it")
            typed(LoaderConfig, {k: v for k, v in self.data.items() if k in LOADER_KEYS}, "ppl.data")  # num_proc=abc
        if self.lengths is not None:
            if not isinstance(self.lengths, list | tuple) or not self.lengths:
                raise ConfigError(f"ppl.lengths={self.lengths!r} must be a list of ints, or null (auto)")
            for n in self.lengths:
                if not _is_int(n) or n < 2:
                    raise ConfigError(f"ppl.lengths contains {n!r}; every length must be an int >= 2 "
                                      "(a window's first token has no prediction)")
            self.lengths = sorted(set(self.lengths))
        if self.max_windows is not None and (not _is_int(self.max_windows) or self.max_windows < 1):
            raise ConfigError(f"ppl.max_windows={self.max_windows!r} must be an int >= 1, or null for every window")

    def resolve_lengths(self, context: int) -> list[int]:
        """Window lengths for a model with this context (ConfigError if one does not fit)."""
        if context < 2:  # a window of one token predicts nothing (its perplexity divided by zero)
            raise ConfigError(f"the model's context is {context} token: perplexity windows need 2 tokens at least; "
                              "turn perplexity off with ppl.enabled=false")
        if self.lengths is None:
            if context >= max(PAPER_LENGTHS):
                return list(PAPER_LENGTHS)
            return sorted({max(2, context // 4), max(2, context // 2), context})
        too_long = [n for n in self.lengths if n > context]
        if too_long:
            raise ConfigError(f"ppl.lengths contains {too_long} but the model's context is {context} tokens; "
                              f"use lengths <= {context} or ppl.lengths=null for context/4, /2, /1")
        return list(self.lengths)


@dataclass
class IclConfig:
    enabled: bool = True
    # task names (see momattn.eval.tasks.TASKS; "staicc" / "table7" expand to sets), names of task files in
    # task_dirs, paths of task .yaml files, or local-file entries
    # {name, path, template, answers, demo_path?, label_field?, demo_fraction?}
    tasks: list[Any] = field(default_factory=lambda: list(DEFAULT_TASKS))
    task_dirs: list[str] = field(default_factory=list)  # folders of task .yaml files (momattn.eval.tasks)
    shots: list[Any] = field(default_factory=lambda: [0, 4, 16, "max"])  # ints, or "max" = as many as fit
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])  # demonstration draws; 0-shot uses the first
    max_examples: int | None = 200  # test examples per task after the seeded shuffle; null: all (paper: 2000)
    max_shots: int = MAX_SHOTS_CAP  # upper bound of "max"
    score: str = "mean"  # headline: mean (authors) or sum log-prob of the answer tokens; both are reported
    separator: str = "eot"  # after each demonstration: "eot" = the end-of-text token, else this text
    test_seed: int = 1  # shuffle of the test set (the authors use 1)

    def __post_init__(self):
        check_bool("icl.enabled", self.enabled)
        # a single value on the command line (icl.tasks=table7, icl.shots=4, icl.seeds=1) means a list of one
        self.tasks, self.shots, self.seeds = (x if isinstance(x, list | tuple) else [x] for x in
                                              (self.tasks, self.shots, self.seeds))
        if self.enabled and not self.tasks:
            raise ConfigError(f"icl.tasks={self.tasks!r} must be a non-empty list of task names or entries")
        self.tasks = list(self.tasks)
        self.task_dirs = list(self.task_dirs) if isinstance(self.task_dirs, list | tuple) else \
            [self.task_dirs] if self.task_dirs else []
        for d in self.task_dirs:
            if not isinstance(d, str | Path) or not str(d):
                raise ConfigError(f"icl.task_dirs holds {'null' if d is None else repr(d)}; give folders of task "
                                  ".yaml files (paths)")
        self.task_dirs = [str(d) for d in self.task_dirs]
        if self.enabled:  # task files read and checked now, before any model is loaded
            from momattn.eval.tasks import expand_task_files  # (tasks imports this module)

            self.tasks = expand_task_files(self.tasks, self.task_dirs)
        for entry in self.tasks:
            if isinstance(entry, Mapping):
                unknown = [k for k in entry if k not in TASK_ENTRY_KEYS]
                if unknown:
                    raise ConfigError(f"icl.tasks entry {dict(entry)} has unknown key '{unknown[0]}'."
                                      f"{did_you_mean(unknown[0], TASK_ENTRY_KEYS)} "
                                      f"Keys: {', '.join(TASK_ENTRY_KEYS)}")
                if not entry.get("name") or not entry.get("path"):
                    raise ConfigError(f"icl.tasks entry {dict(entry)} needs a 'name' and a JSONL 'path'")
            elif not isinstance(entry, str):
                raise ConfigError(f"icl.tasks contains {entry!r}; use a name or a {{name, path}} mapping")
        if not isinstance(self.shots, list | tuple) or not self.shots:
            raise ConfigError(f"icl.shots={self.shots!r} must be a non-empty list of ints and/or 'max'")
        for k in self.shots:
            if not (k == "max" or (_is_int(k) and k >= 0)):
                raise ConfigError(f"icl.shots contains {k!r}; use ints >= 0 or 'max' "
                                  "(as many as fit, up to max_shots)")
        if len(set(map(str, self.shots))) != len(self.shots):
            raise ConfigError(f"icl.shots={list(self.shots)} lists a value twice")
        self.shots = sorted(k for k in self.shots if k != "max") + (["max"] if "max" in self.shots else [])
        if not isinstance(self.seeds, list | tuple) or not self.seeds or not all(_is_int(s) and s >= 0
                                                                                 for s in self.seeds):
            raise ConfigError(f"icl.seeds={self.seeds!r} must be a non-empty list of ints >= 0 (each seeds numpy's "
                              "draw of one set of demonstrations)")
        if len(set(self.seeds)) != len(self.seeds):  # the same draw twice would count as two and shrink the std
            raise ConfigError(f"icl.seeds={list(self.seeds)} lists a seed twice: a repeat scores the same "
                              "demonstrations again and would count as another draw in the spread over seeds")
        self.seeds = list(self.seeds)
        if self.max_examples is not None and (not _is_int(self.max_examples) or self.max_examples < 1):
            raise ConfigError(f"icl.max_examples={self.max_examples!r} must be an int >= 1 or null (all)")
        if not _is_int(self.max_shots) or self.max_shots < 1:
            raise ConfigError(f"icl.max_shots={self.max_shots!r} must be an int >= 1")
        if self.score not in ("mean", "sum"):
            raise ConfigError(f"icl.score={'null' if self.score is None else repr(self.score)} is unknown; choose 'mean' (mean log-prob per answer "
                              "token, the authors' rule) or 'sum'")
        if not isinstance(self.separator, str) or not self.separator:
            raise ConfigError(f"icl.separator={self.separator!r} must be 'eot' or a non-empty text "
                              "such as '\\n\\n'")
        self.separator = self.separator.replace("\\n", "\n")  # a "\n" typed on the command line: a line break
        if not _is_int(self.test_seed) or self.test_seed < 0:
            raise ConfigError(f"icl.test_seed={self.test_seed!r} must be an int >= 0")

    @property
    def largest_k(self) -> int | str:
        return self.shots[-1]


@dataclass
class EvalConfig:
    """Everything evaluate_model needs; train.yaml's `eval:` section has exactly these keys."""

    ppl: PplConfig = field(default_factory=PplConfig)
    icl: IclConfig = field(default_factory=IclConfig)
    batch_tokens: int = 4096  # tokens per forward pass (rows x length); lower it if memory runs out

    def __post_init__(self):
        if not _is_int(self.batch_tokens) or self.batch_tokens < 1:
            raise ConfigError(f"batch_tokens={self.batch_tokens!r} must be an int >= 1")

    @classmethod
    def from_mapping(cls, data: Mapping | None, where: str = ""):
        return build(cls, data, where)


@dataclass
class EvaluateConfig(EvalConfig):
    """conf/evaluate.yaml: the evaluation sections plus what the evaluate.py entry point needs."""

    ckpt_path: str | None = None  # one checkpoint
    ckpt_paths: list[str] | None = None  # several, evaluated side by side
    sweep_dir: str | None = None  # a multirun folder: every checkpoints/last.ckpt, grouped, with a verdict
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:1 ...
    logger: dict | None = None  # the `logger` config group: none (null) or wandb ({wandb: {project, ...}})
    cache_dir: str | None = None  # token cache for the corpus loader; null = MOMATTN_CACHE (~/.cache/momattn), not the checkpoint's data.cache_dir
    paths: dict | None = None  # the `paths` config group (the logger group's interpolations use it)
    tags: list | None = None  # W&B tags

    def __post_init__(self):
        super().__post_init__()
        if not self.ppl.enabled and not self.icl.enabled:  # wrote an empty report, silently
            raise ConfigError("ppl.enabled=false and icl.enabled=false leave nothing to evaluate; enable one of them")
        for name in ("ckpt_path", "sweep_dir", "cache_dir"):  # cache_dir=5: a TypeError from pathlib, after loading
            value = getattr(self, name)
            if type(value) is int:  # Hydra reads ckpt_path=123 as a number: the file or folder named 123
                setattr(self, name, value := str(value))
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{name}={value!r} must be a path")
        many = self.ckpt_paths  # ckpt_paths=5: "'int' object is not iterable" from deep inside, after start-up
        if isinstance(many, Sequence) and not isinstance(many, str):  # [123]: Hydra's number, the file 123
            self.ckpt_paths = many = [str(p) if type(p) is int else p for p in many]
        if many is not None and not isinstance(many, str) and (
                not isinstance(many, Sequence) or not all(isinstance(p, str) for p in many)):
            raise ConfigError(f"ckpt_paths={many!r} must be a list of checkpoint paths, ckpt_paths=[A.ckpt,B.ckpt]")
        check_logger(self.logger, "evaluate.py", self.tags)

    def checkpoint_paths(self) -> list[str]:
        paths = self.ckpt_paths or []
        paths = [paths] if isinstance(paths, str) else list(paths)  # ckpt_paths=one.ckpt: a list of one
        if self.ckpt_path:
            paths.insert(0, self.ckpt_path)
        if not paths:
            raise ConfigError("no checkpoint given: pass ckpt_path=PATH (a .ckpt written by train.py), "
                              "ckpt_paths=[A,B] to compare several, or sweep_dir=MULTIRUN_FOLDER for a sweep")
        paths = [str(p) for p in paths]
        for p in paths:  # read as a file name, a pattern failed as "does not exist" beside the files it matches
            if re.search(r"[*?[]", p) and not Path(p).expanduser().exists():
                found = len(glob.glob(str(Path(p).expanduser())))
                raise ConfigError(f"ckpt_path / ckpt_paths: '{p}' is a pattern (it matches {found} file(s)), and "
                                  "evaluate.py does not expand patterns; list the checkpoints, ckpt_paths=[runA/"
                                  "checkpoints/last.ckpt,runB/checkpoints/last.ckpt], or pass a sweep's folder as "
                                  "sweep_dir=MULTIRUN_FOLDER")
        resolved = [_same_file(Path(p).expanduser()) for p in paths]  # a link or a hard link: one checkpoint
        same = sorted({p for p, r in zip(paths, resolved) if resolved.count(r) > 1})
        if same:  # scored twice, side by side, under two labels
            raise ConfigError(f"ckpt_path / ckpt_paths name {', '.join(same)} more than once; list each checkpoint once")
        return paths

    def eval_section(self) -> EvalConfig:
        return EvalConfig(ppl=self.ppl, icl=self.icl, batch_tokens=self.batch_tokens)


def build(cls, data: Mapping | None, where: str = ""):
    """A dataclass from a mapping, recursively; unknown keys raise ConfigError naming the key."""
    data = to_plain(data) or {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise ConfigError(f"unknown key '{name}'.{did_you_mean(key, fields)} "
                              f"Valid keys here: {', '.join(fields)}")
        sub = _dataclass_type(fields[key])
        if sub is not None and value is None:  # ppl=null read as "all defaults, enabled", the opposite of meant
            raise ConfigError(f"{name}=null: {name} is a section; to turn it off write {name}.enabled=false"
                              if "enabled" in {f.name for f in dataclasses.fields(sub)} else
                              f"{name}=null: {name} is a section; set its keys one by one ({name}.key=value)")
        kwargs[key] = build(sub, value, name) if sub is not None else to_plain(value)
    return cls(**kwargs)


def _dataclass_type(f: dataclasses.Field):
    factory = f.default_factory
    if factory is not dataclasses.MISSING and isinstance(factory, type) and dataclasses.is_dataclass(factory):
        return factory
    return None


def _same_file(p: Path):
    """A checkpoint as a file (device, inode), so that a hard link is the checkpoint it links; its resolved path
    where it cannot be read (a missing file is named later, as missing)."""
    try:
        return file_id(p)
    except OSError:
        return p.resolve()
