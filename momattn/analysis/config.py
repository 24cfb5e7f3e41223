"""analyze.py's settings (conf/analyze.yaml), typed and checked once."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from momattn.analysis.finetune import paper_lr_grid
from momattn.errors import ConfigError
from momattn.eval.config import check_bool, check_logger


@dataclass
class AnalyzeConfig:
    ckpt_path: str | None = None  # a .ckpt written by train.py
    sweep_dir: str | None = None  # or a train.py -m folder: every finished run analysed, then mean ± std over seeds
    task: Any = "ginc"  # an ICL task name (sst2, mr, ..., ginc, ginc_l8, ...) or a local-file mapping
    shots: int = 32  # demonstrations per prompt = finetuning steps
    seed: int = 1  # demonstration draw (the evaluator's icl.seeds entry)
    max_examples: int = 200  # test examples (GINC: prompts)
    select_examples: int = 32  # text tasks: held-out pool rows that choose the learning rate
    select_prompts: int = 8  # GINC: separate prompts that choose it (each costs one finetuning per lr)
    lrs: list[float] | None = None  # SGD learning rates; null = the paper's grid 1..9 x 1e-1..1e-4
    random_seed: int = 0  # the random-update and random-ranking baselines
    separator: str = "eot"  # after each demonstration, as in evaluate.py's icl.separator
    test_seed: int = 1  # test-set shuffle, as in evaluate.py's icl.test_seed
    device: str = "cpu"  # cpu | cuda | auto
    batch_tokens: int = 8192  # tokens per forward pass
    ft_models_per_batch: int = 64  # models finetuned side by side (GINC: one per prompt)
    dual_check: bool = True  # check the dual form on the checkpoint's layers
    tags: list[str] = field(default_factory=lambda: ["analyze"])
    logger: Any = None  # {wandb: {...}} or None
    paths: Any = None  # conf/paths (unused here; composed by the defaults list)

    def __post_init__(self):
        def positive_int(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name}={v!r} must be an int >= 1")

        for name in ("shots", "max_examples", "select_examples", "select_prompts", "batch_tokens",
                     "ft_models_per_batch"):
            positive_int(name)
        for name in ("seed", "test_seed", "random_seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{name}={v!r} must be an int")
        for name in ("seed", "test_seed"):  # numpy's generators, which draw the demonstrations and test rows
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be an int >= 0 (it seeds numpy's "
                                  "generator of the demonstrations and test rows)")
        for name in ("ckpt_path", "sweep_dir"):  # sweep_dir=5: a TypeError from pathlib
            v = getattr(self, name)
            if type(v) is int:  # Hydra reads ckpt_path=123 as a number: the file or folder named 123
                setattr(self, name, v := str(v))
            if v is not None and not isinstance(v, str):
                raise ConfigError(f"{name}={v!r} must be a path")
        if self.ckpt_path and self.sweep_dir:
            raise ConfigError("pass either ckpt_path (one checkpoint) or sweep_dir (every run of a train.py -m "
                              "folder), not both")
        check_bool("dual_check", self.dual_check)
        check_logger(self.logger, "analyze.py", self.tags)  # logger=csv was accepted and logged nothing
        if not isinstance(self.separator, str) or not self.separator:
            raise ConfigError(f"separator={self.separator!r} must be 'eot' or a non-empty text such as '\\n\\n'")
        if not isinstance(self.task, str | Mapping):
            raise ConfigError(f"task={self.task!r} must be one task: a name (e.g. ginc, sst2), a task file (.yaml) "
                              "or a local-file mapping {name, path, template, answers}")
        self._check_selection()
        if self.lrs is not None:
            lrs = self.lrs if isinstance(self.lrs, list | tuple) else [self.lrs]
            if not lrs or not all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
                                  and x > 0 for x in lrs):
                raise ConfigError(f"lrs={self.lrs!r} must be a non-empty list of positive numbers, e.g. "
                                  "lrs=[1e-3,1e-2], or null for the paper's grid (1..9 x 1e-1..1e-4)")
            self.lrs = sorted({float(x) for x in lrs})  # a repeated rate finetuned twice and chose among equals

    def _check_selection(self) -> None:
        """select_examples on a GINC task, or select_prompts on a text task, changed nothing, without a word (found
        by review; separator and test_seed were refused so already). Changed from its default only can be told."""
        from momattn.eval.ginc import ginc_task

        ginc = isinstance(self.task, str) and ginc_task(self.task, "task") is not None
        wrong, right, why = (("select_examples", "select_prompts", "GINC chooses the learning rate on prompts of its "
                              "own") if ginc else ("select_prompts", "select_examples", "a text task chooses the "
                                                   "learning rate on held-out rows of its pool"))
        if getattr(self, wrong) != getattr(AnalyzeConfig, wrong):
            task = self.task if isinstance(self.task, str) else self.task.get("name", "<local task>")
            raise ConfigError(f"{wrong}={getattr(self, wrong)!r} does not apply to task={task}: {why}, so the setting "
                              f"would be ignored; set {right} instead")

    @property
    def lr_grid(self) -> list[float]:
        return self.lrs if self.lrs is not None else paper_lr_grid()
