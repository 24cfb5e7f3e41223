"""Typed evaluation results, with ONE JSON layout (results.json) produced by `to_json` and read by `from_json`.

    ModelResult                 one checkpoint: metadata, ppl (PerplexityResult), icl (IclResult), timing
      PerplexityResult          valid / train: {str(L): WindowNumbers}
      IclResult                 tasks: {name: TaskResult}, avg: {str(k): IclAverage}
        TaskResult              shots: {str(k): ShotResult}
          ShotResult            mean / std over seeds; per_seed: [SeedRun]

Paths users and the README rely on: checkpoints[i].icl.tasks.<task>.shots[<k>].acc (also .acc_std,
.k_used_mean, .chance, .fits), checkpoints[i].ppl.valid[<L>].ppl. Fields that do not apply to a result
(e.g. acc_cand for a StaICC task) are left out of the JSON rather than written as null. A number that is not
finite (a diverged model's nan accuracy, the inf perplexity of a mean NLL above 709 nats) is written as null, since
JSON has neither (momattn.io.json_text), and read back as nan.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MIN_DEMOS = 4  # fewer demonstrations than this at k=max and a task "does not fit" the context


class JsonMixin:
    """to_json / from_json for dataclasses made of numbers, strings, lists, dicts and other such dataclasses."""

    def to_json(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue  # not applicable here
            out[f.name] = _to_json(value)
        return out

    @classmethod
    def from_json(cls, data: Mapping):
        hints = typing.get_type_hints(cls)
        # a field that to_json leaves out when None: a null there was a non-finite number
        omitted = {f.name: f.default is None for f in dataclasses.fields(cls)}
        return cls(**{k: _from_json(hints[k], v, omitted[k]) for k, v in data.items() if k in omitted})


def _to_json(value: Any) -> Any:
    if isinstance(value, JsonMixin):
        return value.to_json()
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _from_json(tp: Any, value: Any, null_is_nan: bool = True) -> Any:
    """value read as type tp; a null where a float goes is nan (json_text's null), unless None is a value of its
    own there (an optional field that to_json writes as null)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if value is None:
        optional_float = origin in (typing.Union, types.UnionType) and float in args
        return float("nan") if tp is float or (optional_float and null_is_nan) else None
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _from_json(inner[0], value) if len(inner) == 1 else value
    if isinstance(tp, type) and issubclass(tp, JsonMixin):
        return tp.from_json(value)
    if origin is dict and len(args) == 2:
        return {k: _from_json(args[1], v) for k, v in value.items()}
    if origin is list and args:
        return [_from_json(args[0], v) for v in value]
    return value


# -----------------------------------------------------------------------------
# perplexity


@dataclass
class WindowNumbers(JsonMixin):
    """Perplexity of one split at one window length, aggregated from per-window (NLL, tokens, bytes)."""

    ppl: float
    bpb: float
    nll_per_token: float
    n_windows: int
    n_tokens: int
    n_bytes: int
    length: int
    split: str  # valid | train
    n_windows_available: int
    split_tokens: int


@dataclass
class PerplexityResult(JsonMixin):
    protocol: str
    lengths: list[int]
    max_windows: int | None  # None: every window
    valid: dict[str, WindowNumbers]  # str(L) -> numbers
    train: dict[str, WindowNumbers] = field(default_factory=dict)  # the longest L only
    data: dict | None = None  # the data section the corpus came from


# -----------------------------------------------------------------------------
# in-context accuracy


@dataclass
class SeedRun(JsonMixin):
    """One demonstration draw (seed) at one k: accuracies over the test prompts."""

    seed: int
    acc: float | None  # the headline rule; None: not scored, its k does not fit the context
    k_used_mean: float  # demonstrations actually placed, mean over test prompts
    k_used_min: int
    k_used_max: int
    n: int = 0  # test prompts scored
    acc_mean_lp: float | None = None  # answer-choice tasks: mean log-prob rule
    acc_sum_lp: float | None = None  # answer-choice tasks: sum log-prob rule
    acc_cand: float | None = None  # GINC: argmax over the V symbols (the candidate rule)
    delimiter_baseline: float | None = None  # GINC: share of labels that are the delimiter "/"
    n_ties: int | None = None  # test prompts whose top score two or more answers shared (the first was taken)

    @classmethod
    def from_json(cls, data: Mapping) -> SeedRun:
        run = super().from_json(data)
        if run.acc is None and any(k in data for k in ("acc_mean_lp", "acc_sum_lp", "acc_cand")):
            run.acc = float("nan")  # a scored run's null was a nan (diverged); one with no rule's value was not scored
        return run


def warn_nonfinite(task: str, k, seed: int, broken: int, n: int, what: str) -> None:
    """Said where a run's accuracy is nan because the model's log-probabilities were not finite: an argmax over
    nan picks answer 0, whose share of the labels would read as a real accuracy."""
    print(f"[momattn] warning: {task} k={k} seed={seed}: the model gave non-finite log-probabilities for {broken} "
          f"of {n} {what} (diverged weights?); its accuracy is nan", file=sys.stderr)


def warn_ties(task: str, k, seed: int, ties: int, n: int, first: str) -> None:
    """Said where answers tied for the top score: the argmax takes the first, so a model that cannot tell the
    answers apart scores that answer's share of the labels, not chance."""
    print(f"[momattn] warning: {task} k={k} seed={seed}: {ties} of {n} test prompts had two or more answers with the "
          f"same top score; the first ({first}) was taken, which leans the accuracy toward its share of the labels",
          file=sys.stderr)


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    a = np.asarray(vals, dtype=np.float64)
    if len(set(vals)) == 1:  # seeds that agree: their value and 0 exactly (the float sum gave 0.4000000000000001
        return float(vals[0]), (0.0 if len(vals) > 1 else None)  # and a std of 5.6e-17: found by review)
    # population std over seeds, as before; none for a single seed (0-shot), where 0 would read as "no spread"
    return float(a.mean()), (float(a.std()) if len(a) > 1 else None)


@dataclass
class ShotResult(JsonMixin):
    """Accuracy at one requested k, mean and population std over seeds (0-shot: one seed)."""

    k: str  # as requested: "4" or "max"
    fits: bool  # False: the requested k (or max, below MIN_DEMOS) does not fit the context
    chance: float
    k_used_mean: float
    acc: float | None = None  # None only when nothing was scored: a k that does not fit the context
    acc_std: float | None = None
    seeds: list[int] = field(default_factory=list)
    per_seed: list[SeedRun] = field(default_factory=list)
    acc_mean_lp: float | None = None
    acc_mean_lp_std: float | None = None
    acc_sum_lp: float | None = None
    acc_sum_lp_std: float | None = None
    acc_cand: float | None = None
    acc_cand_std: float | None = None
    delimiter_baseline: float | None = None
    k_max_fit: int | None = None  # the largest k whose prompts fit (GINC)
    note: str | None = None  # why it does not fit

    @classmethod
    def from_runs(cls, k: int | str, runs: Sequence[SeedRun], chance: float, fits: bool,
                  **extra) -> ShotResult:
        stats = {}
        for name in ("acc", "acc_mean_lp", "acc_sum_lp", "acc_cand"):
            stats[name], stats[f"{name}_std"] = _mean_std([getattr(r, name) for r in runs])
        return cls(k=str(k), fits=fits, chance=chance,
                   k_used_mean=float(np.mean([r.k_used_mean for r in runs])), seeds=[r.seed for r in runs],
                   per_seed=list(runs), delimiter_baseline=_mean_std([r.delimiter_baseline for r in runs])[0],
                   **stats, **extra)

    def to_json(self) -> dict:
        return {**super().to_json(), "acc": self.acc}  # null when nothing was scored, never missing

    @classmethod
    def from_json(cls, data: Mapping) -> ShotResult:
        shot = super().from_json(data)
        if not shot.fits and shot.acc is not None and math.isnan(shot.acc):
            shot.acc = None  # to_json's null for "nothing scored" (a GINC k beyond the context), not a nan
        return shot


@dataclass
class TaskResult(JsonMixin):
    name: str
    kind: str  # "choice" (answer candidates scored by log-prob) | "ginc" (greedy next symbol)
    source: str
    chance: float
    n: int  # test prompts per seed
    shots: dict[str, ShotResult] = field(default_factory=dict)
    template: str | None = None
    answers: list[str] | str | None = None
    n_test_available: int | None = None
    n_skipped: int | None = None
    n_truncated: int | None = None
    n_demo_pool: int | None = None
    n_demo_dropped: int | None = None  # pool rows dropped because their text is a test example's
    example_len: int | None = None  # GINC
    ood: bool | None = None  # GINC: held-out concepts
    n_symbols: int | None = None  # GINC: V
    majority: float | None = None  # share of the commonest label in the scored test set: always answering it
    world: dict | None = None  # GINC: the world's settings its prompts and labels come from (world_settings)


@dataclass
class IclAverage(JsonMixin):
    acc: float | None  # mean over the answer-choice tasks that fit at this k
    chance: float | None
    n_tasks: int
    excluded: list[str] = field(default_factory=list)  # tasks left out: they do not fit at this k

    @classmethod
    def from_json(cls, data: Mapping) -> IclAverage:
        avg = super().from_json(data)
        if avg.n_tasks:  # a null over tasks that fit was a nan (a task's nan accuracy), not "no task fits"
            avg.acc, avg.chance = (float("nan") if v is None else v for v in (avg.acc, avg.chance))
        return avg


@dataclass
class IclResult(JsonMixin):
    protocol: str
    score: str
    headline_k: str
    separator: str
    shots: list[str]
    seeds: list[int]
    test_seed: int
    max_examples: int | None
    max_shots: int
    split_seed: int
    tasks: dict[str, TaskResult]
    avg: dict[str, IclAverage]
    min_demos: int = MIN_DEMOS
    ginc_protocol: str | None = None

    @staticmethod
    def average(tasks: Mapping[str, TaskResult], shots: Sequence[str]) -> dict[str, IclAverage]:
        """Per k: mean accuracy of the answer-choice tasks that fit (GINC tasks are reported on their own)."""
        avg = {}
        for k in shots:
            fit = [t for t in tasks.values() if t.kind == "choice" and t.shots[k].fits]
            out = [t.name for t in tasks.values() if t.kind == "choice" and not t.shots[k].fits]
            avg[k] = IclAverage(acc=float(np.mean([t.shots[k].acc for t in fit])) if fit else None,
                                chance=float(np.mean([t.chance for t in fit])) if fit else None,
                                n_tasks=len(fit), excluded=out)
        return avg


@dataclass
class ModelResult(JsonMixin):
    label: str
    attention: str
    model: dict
    tokenizer: dict
    eval_config: dict
    ppl: PerplexityResult | None = None
    icl: IclResult | None = None
    timing_s: dict[str, float] = field(default_factory=dict)
    checkpoint: str | None = None
    step: int | None = None  # the optimizer steps the scored weights had trained (a checkpoint's global_step)
    weights: str | None = None  # checkpoint.weights_digest of the scored weights: a sweep reuses only these
    inputs: dict | None = None  # the local files read ({path: file_stamp}; eval.sweep.eval_inputs)
    # what a reader of the report must know besides the numbers (the StaICC rows unchecked against the checkpoint's
    # own text: said on the console only, the report read clean; found by review)
    notes: list[str] = field(default_factory=list)


def as_model_result(r: ModelResult | Mapping) -> ModelResult:
    """A ModelResult, or one read back from its JSON form (a results.json entry)."""
    return r if isinstance(r, ModelResult) else ModelResult.from_json(r)
