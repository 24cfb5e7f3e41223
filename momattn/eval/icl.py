"""In-context accuracy with the authors' protocol (Dai et al. 2023, Section 5 and their code), one task at a time.

    prompt = <eot> demo_1 <sep> ... demo_k <sep> template(test)      demo = template(x) + " " + answer
    score  = mean log-prob of the tokens of " " + answer after the prompt (argmax wins); sum also reported

- <eot> first: every training document follows an end-of-text token, so the prompt starts like one.
- <sep> (icl.separator): "eot" = the tokenizer's end-of-text token (the authors end each demonstration with
  a separator token), or a text such as "\n\n".
- Demonstrations: the task's pool shuffled with each seed, taken in order. k = "max" takes as many as fit
  next to the longest test prompt + answer (at most icl.max_shots); for an int k, a test example whose
  prompt + answer would overflow the context keeps only the first demonstrations that fit. A test prompt
  longer than the context on its own keeps its last tokens (counted as n_truncated).
- Test set: shuffled with icl.test_seed (the authors use 1), capped at icl.max_examples. 0-shot uses one seed.
- Each demonstration prefix is encoded once into a KV cache and shared by every test row (PrefixScorer).
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from momattn.errors import ConfigError, DataError
from momattn.eval.config import IclConfig
from momattn.eval.lm import LanguageModel
from momattn.eval.results import (
    MIN_DEMOS,
    IclResult,
    SeedRun,
    ShotResult,
    TaskResult,
    warn_nonfinite,
    warn_ties,
)
from momattn.eval.scoring import PrefixScorer
from momattn.eval.tasks import IclExample, IclTask, check_answer_texts
from momattn.utils import done_line, stderr_tty

PROTOCOL = (
    "prompt = <eot> + k demonstrations (template + ' ' + answer, each followed by the separator) + "
    "test template; every candidate answer is appended with a leading space and scored by the mean "
    "log-probability of its tokens (acc; the authors' rule) and by the sum (acc_sum); argmax wins. "
    "Demonstrations: the task's pool shuffled with each seed, taken in order; k='max' = as many as fit next "
    "to the longest test prompt+answer (up to max_shots); for int k, demonstrations that would overflow the "
    "context are dropped from the end (k_used = demonstrations actually placed, reported beside every "
    f"accuracy). A k that places fewer than requested (or k='max' below {MIN_DEMOS}) is marked 'does not "
    "fit' and left out of the average. Pool rows whose text equals a test example's are dropped, and every "
    "prompt is checked at run time never to hold its own test example. Test set shuffled with test_seed, "
    "capped at max_examples. Accuracy: mean and population std over seeds (0-shot: one seed)."
)


def short_k_used(mean: float, fewest: int | None, k: int | str) -> str:
    """k_used where the k does not fit: the mean to two places rounded down (3.9995 read "4.00": diff review), and
    for an integer k, which every prompt must hold, the fewest placed ("k_used=1.0" at k=1 read as placed: review)."""
    return f"k_used={math.floor(mean * 100) / 100:.2f}" + (f", fewest {fewest}" if fewest is not None and
                                                          str(k) != "max" else "")


class DemonstrationLeakError(DataError):
    """A test example appears among its own prompt's demonstrations (a bug guard: it should never fire)."""


@functools.cache
def _extra_normalize() -> Callable[[str], str] | None:
    try:  # the LM-leakage filter's normalisation (punctuation, PTB escapes), where it exists
        from momattn.data.staicc import normalize
    except ImportError:
        return None
    return normalize


def normalize_text(text: str) -> str:
    """momattn.data.staicc.normalize (case, whitespace, punctuation, escapes), where it exists; else case and
    whitespace folded. normalize reads the raw text: lower-cased first, the `cat -v` bytes it decodes ("M-i") no
    longer read as such."""
    extra = _extra_normalize()
    return extra(text) if extra is not None else re.sub(r"\s+", " ", text.strip().lower())


def answer_token_ids(answers: Sequence[str], tokenizer, where: str, case: bool = True) -> list[list[int]]:
    """Token ids of " " + answer for each answer; ConfigError for an empty answer, two answers that differ only in
    whitespace (or case, where `case`: a task's answer set, not a row's own), or two identical encodings.
    (One answer's tokens being a prefix of another's is fine: the mean log-prob compares them fairly.)"""
    check_answer_texts(answers, where, case)
    ids = []
    for i, a in enumerate(answers):
        ids.append(tokenizer.encode(" " + str(a)))
        if not ids[-1]:  # a tokenizer whose normaliser drops its characters
            raise ConfigError(f"{where}: answer {i} ({a!r}) encodes to no tokens with this tokenizer; use "
                              "answers it can spell")
    seen: dict[tuple[int, ...], int] = {}
    for i, t in enumerate(ids):
        if tuple(t) in seen:
            j = seen[tuple(t)]
            raise ConfigError(f"{where}: answers {answers[j]!r} and {answers[i]!r} tokenize identically "
                              f"({t}), so the model cannot tell them apart; make them differ")
        seen[tuple(t)] = i
    return ids


@dataclass
class EncodedExample:
    example: IclExample
    query: list[int]  # template tokens (maybe left-truncated)
    answers: list[list[int]]  # " " + answer tokens
    truncated: bool

    @property
    def need(self) -> int:  # context this example takes after the demonstrations
        return len(self.query) + max(len(a) for a in self.answers)


@dataclass
class Placement:
    """One seed's demonstrations for a k, and how many of them each test prompt holds (k_used)."""

    seed: int
    examples: list[IclExample]
    demos: list[list[int]]  # token ids of each demonstration, separator included
    k_used: list[int]  # per test example


@dataclass
class PreparedTask:
    task: IclTask
    test: list[EncodedExample]
    pool: list[IclExample]
    result: TaskResult  # what the report says about the task's data; shots are filled in by evaluate_task


class IclEvaluator:
    """ICL accuracy of one model over answer-choice tasks, shots and seeds."""

    def __init__(self, model: LanguageModel, tokenizer, cfg: IclConfig, split_seed: int,
                 batch_tokens: int = 4096):
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.split_seed, self.batch_tokens = split_seed, batch_tokens
        self.context = model.config.block_size
        self.start = [tokenizer.eot_id]
        try:
            self.sep = [tokenizer.eot_id] if cfg.separator == "eot" else tokenizer.encode(cfg.separator)
        except DataError as e:  # a tokenizer that cannot spell it (GINC's word-level one)
            raise ConfigError(f"icl.separator={cfg.separator!r}: {e}") from None
        self.predictions: list[dict] = []  # one record per test example, seed and k

    # -- prompts

    def demo_ids(self, task: IclTask, ex: IclExample) -> list[int]:
        return self.tokenizer.encode(task.fill(ex) + " " + ex.answers[ex.label]) + self.sep

    def encode_test(self, task: IclTask, examples: Sequence[IclExample]) -> tuple[list[EncodedExample], int]:
        """Encoded test examples and how many were skipped (per-example answers that tokenize ambiguously, or
        one longer than the context: a task-wide answer that long is an error, as no example could be scored)."""
        fixed = None
        if task.answers:
            fixed = answer_token_ids(task.answers, self.tokenizer, f"ICL task '{task.name}'")
        out, skipped = [], 0
        for ex in examples:
            if fixed is not None:
                answers = fixed
            else:
                try:
                    answers = answer_token_ids(ex.answers, self.tokenizer, f"{task.name} example {ex.id}", case=False)
                except ConfigError:
                    skipped += 1  # a hub item with an empty or duplicated choice
                    continue
            query = self.tokenizer.encode(task.fill(ex))
            room = self.context - len(self.start) - max(len(a) for a in answers)
            if room < 1 and fixed is None:  # one PIQA solution longer than a tiny context: that example only
                skipped += 1
                continue
            if room < 1:  # the task's answer set, not this example (it blamed the first one drawn: review)
                longest = max(range(len(answers)), key=lambda i: len(answers[i]))  # (fixed: task.answers' tokens)
                text = str(task.answers[longest])
                raise DataError(f"ICL task '{task.name}': an answer of the task, {text[:40]!r}"
                                f"{'...' if len(text) > 40 else ''} ({len(answers[longest])} tokens), is longer than "
                                f"the model's context of {self.context} tokens holds after the prompt's start; "
                                "shorten the task's answers")
            out.append(EncodedExample(ex, query[-room:], answers, len(query) > room))
        return out, skipped

    # -- evaluation

    def test_set(self, test: Sequence[IclExample]) -> list[IclExample]:
        order = np.random.default_rng(self.cfg.test_seed).permutation(len(test))
        return [test[i] for i in order[: self.cfg.max_examples]]

    def prepare(self, task: IclTask) -> PreparedTask:
        """Load and encode a task's rows, checking everything that can go wrong before any scoring."""
        data = task.load(self.split_seed)
        test, skipped = self.encode_test(task, self.test_set(data.test))
        if not test:
            raise DataError(f"ICL task '{task.name}': no usable test example ({skipped} skipped: each one's answers "
                            "are empty, encode alike, or leave no room for its text in the model's context)")
        same = task.same_text or normalize_text
        test_texts = {same(task.fill(e)) for e in data.test}
        pool = [e for e in data.demo_pool if same(task.fill(e)) not in test_texts]
        for k in self.cfg.shots:
            if k != "max" and k > len(pool):
                dropped = len(data.demo_pool) - len(pool)
                why = (f", after {dropped} of its {len(data.demo_pool)} were dropped as copies of test texts"
                       if dropped else "")
                more = ("its pool is StaICC's, fixed: for more, give the task as a local JSONL task file "
                        "({name, path, template, answers, demo_path})" if task.source.startswith("staicc:") else
                        "give a larger demonstration pool (demo_path, or a larger demo_fraction)")  # (StaICC's was
                # told to set demo_fraction, which a built-in task refuses: review)
                raise DataError(f"icl.shots contains {k} but task '{task.name}' has only {len(pool)} "
                                f"demonstration examples ({task.source}){why}; lower icl.shots, or {more}")
        result = TaskResult(
            name=task.name, kind="choice", source=task.source, template=task.template,
            answers=list(task.answers) if task.answers else "per example",
            chance=float(np.mean([1.0 / len(e.answers) for e in test])), n=len(test),
            majority=max(Counter(e.example.label for e in test).values()) / len(test) if test else None,
            n_test_available=len(data.test), n_skipped=skipped, n_truncated=sum(e.truncated for e in test),
            n_demo_pool=len(pool), n_demo_dropped=len(data.demo_pool) - len(pool))
        return PreparedTask(task, test, pool, result)

    def evaluate_task(self, task: IclTask | PreparedTask) -> TaskResult:
        """Each k's prompts are placed for every seed first; a k that does not fit is not scored (its accuracy, of
        fewer demonstrations than asked, is reported nowhere: it was scored in full, then marked 'does not fit')."""
        prep = task if isinstance(task, PreparedTask) else self.prepare(task)
        placed = {k: [self.place(prep.task, prep.test, prep.pool, k, s)
                      for s in (self.cfg.seeds[:1] if k == 0 else self.cfg.seeds)] for k in self.cfg.shots}
        unfit = {k: self._unplaced_runs(p) for k, p in placed.items()}
        unfit = {k: r for k, r in unfit.items() if not self.fits(k, r)}
        runs = [(k, p) for k in self.cfg.shots if k not in unfit for p in placed[k]]
        per_k: dict[int | str, list[SeedRun]] = defaultdict(list, unfit)
        t0 = time.perf_counter()
        for k, p in tqdm(runs, desc=f"icl {prep.task.name}", leave=False, disable=not stderr_tty()):
            per_k[k].append(self.score_run(prep.task, prep.test, k, p))
        skipped = f"; k={', '.join(map(str, unfit))} not scored: does not fit" if unfit else ""
        done_line(f"icl {prep.task.name}: {len(runs)} (k, seed) runs of {len(prep.test)} test examples{skipped}", t0)
        chance = prep.result.chance
        prep.result.shots = {str(k): ShotResult.from_runs(k, per_k[k], chance, self.fits(k, per_k[k]),
                                                          **self._note(k, per_k[k], len(prep.pool)))
                             for k in self.cfg.shots}
        return prep.result

    @staticmethod
    def _unplaced_runs(placed: Sequence[Placement]) -> list[SeedRun]:
        """Each seed's placement as a run with nothing scored (acc None): what fits() and the note read."""
        return [SeedRun(seed=p.seed, acc=None, k_used_mean=float(np.mean(p.k_used)), k_used_min=int(min(p.k_used)),
                        k_used_max=int(max(p.k_used)), n=0) for p in placed]  # n: test prompts scored (none)

    def fits(self, k: int | str, runs: Sequence[SeedRun]) -> bool:
        """Every prompt holds the requested k; k='max' places at least MIN_DEMOS (or max_shots, if lower)."""
        if k == "max":
            return float(np.mean([r.k_used_mean for r in runs])) >= min(MIN_DEMOS, self.cfg.max_shots)
        return min(r.k_used_min for r in runs) >= k

    def _note(self, k: int | str, runs: Sequence[SeedRun], n_pool: int | None = None) -> dict:
        if self.fits(k, runs):
            return {}
        used = float(np.mean([r.k_used_mean for r in runs]))
        want = f"at least {min(MIN_DEMOS, self.cfg.max_shots)}" if k == "max" else f"{k} in every prompt"
        if k == "max" and n_pool is not None and min(r.k_used_min for r in runs) == n_pool:  # all placed
            return {"note": f"the demonstration pool holds only {n_pool} examples, all placed: "
                            f"{short_k_used(used, None, k)}, wanted {want}; give a larger pool (demo_path, or a "
                            "larger demo_fraction)"}
        return {"note": f"does not fit the {self.context}-token context: "
                        f"{short_k_used(used, min(r.k_used_min for r in runs), k)}, wanted {want}"}

    def demo_examples(self, pool: Sequence[IclExample], k: int | str, seed: int) -> list[IclExample]:
        """The demonstrations of draw `seed`, in prompt order (k='max': up to max_shots of them)."""
        order = np.random.default_rng(seed).permutation(len(pool))
        n = min(self.cfg.max_shots, len(pool)) if k == "max" else k
        return [pool[i] for i in order[:n]]

    def demonstrations(self, task: IclTask, pool: Sequence[IclExample], k: int | str,
                       seed: int) -> list[list[int]]:
        """Token ids of the demonstrations of draw `seed`, each ending with the separator."""
        return [self.demo_ids(task, ex) for ex in self.demo_examples(pool, k, seed)]

    @staticmethod
    def check_no_leak(task: IclTask, test: Sequence[EncodedExample], demos: Sequence[IclExample],
                      k_used: Sequence[int], k: int | str, seed: int) -> None:
        """Raise DemonstrationLeakError if a test example's text is among the demonstrations of its prompt."""
        first: dict[str, int] = {}
        same = task.same_text or normalize_text
        for pos, ex in enumerate(demos):
            first.setdefault(same(task.fill(ex)), pos)
        for e, j in zip(test, k_used):
            pos = first.get(same(task.fill(e.example)))
            if pos is not None and pos < j:
                raise DemonstrationLeakError(
                    f"ICL task '{task.name}': test row {e.example.id} appears as demonstration {pos + 1} "
                    f"(row {demos[pos].id}) of its own prompt (seed {seed}, k={k}); the demonstration pool "
                    "must not hold test texts. This is a bug in the task's split: please report it")

    def place(self, task: IclTask, test: Sequence[EncodedExample], pool, k, seed: int) -> Placement:
        """Draw `seed`'s demonstrations and how many of them each test prompt holds (nothing scored yet)."""
        examples = self.demo_examples(pool, k, seed)
        demos = [self.demo_ids(task, ex) for ex in examples]
        cum = np.concatenate([[0], np.cumsum([len(d) for d in demos])])  # prefix after j demonstrations
        room = self.context - len(self.start) - cum  # what is left for the test example after j of them
        if k == "max":  # the authors: as many as fit next to the longest test example
            n_fit = int(np.flatnonzero(room >= max(e.need for e in test)).max())
            k_used = [n_fit] * len(test)
        else:
            k_used = [int(np.flatnonzero(room >= e.need).max()) for e in test]
        return Placement(seed, examples, demos, k_used)

    def evaluate_run(self, task: IclTask, test: Sequence[EncodedExample], pool, k, seed: int) -> SeedRun:
        return self.score_run(task, test, k, self.place(task, test, pool, k, seed))

    def score_run(self, task: IclTask, test: Sequence[EncodedExample], k, placed: Placement) -> SeedRun:
        seed, demos, k_used = placed.seed, placed.demos, placed.k_used
        self.check_no_leak(task, test, placed.examples, k_used, k, seed)
        by_prefix = defaultdict(list)
        for i, j in enumerate(k_used):
            by_prefix[j].append(i)
        scores: list[list[tuple[float, int]]] = [[] for _ in test]
        for j, idx in by_prefix.items():
            prefix = self.start + [t for d in demos[:j] for t in d]
            scorer = PrefixScorer(self.model, prefix, self.batch_tokens)
            rows = [(test[i].query, a) for i in idx for a in test[i].answers]
            flat = iter(scorer.score(rows))
            for i in idx:
                scores[i] = [next(flat) for _ in test[i].answers]
        right_mean = right_sum = broken = ties = 0
        for e, s, j in zip(test, scores, k_used):
            if not all(math.isfinite(lp) for lp, _ in s):  # argmax over nan is answer 0: a believable accuracy
                broken += 1
            by_mean, by_sum = [lp / n for lp, n in s], [lp for lp, _ in s]
            pred_mean, pred_sum = int(np.argmax(by_mean)), int(np.argmax(by_sum))
            headline = by_mean if self.cfg.score == "mean" else by_sum
            ties += headline.count(max(headline)) > 1  # argmax takes the first of them
            right_mean += pred_mean == e.example.label
            right_sum += pred_sum == e.example.label
            self.predictions.append({"task": task.name, "k": k, "seed": seed, "id": e.example.id,
                                     # pred: the headline rule's (icl.score; it was the mean rule's whatever
                                     # the headline: found by review), then each rule's
                                     "label": e.example.label, "pred": pred_mean if self.cfg.score == "mean"
                                     else pred_sum, "pred_mean": pred_mean, "pred_sum": pred_sum,
                                     "k_used": j, "logprob_sum": [lp for lp, _ in s],
                                     "n_tokens": [n for _, n in s]})
        acc_mean, acc_sum = right_mean / len(test), right_sum / len(test)
        if broken:  # a diverged model: no accuracy (a sweep names the run and leaves it out)
            warn_nonfinite(task.name, k, seed, broken, len(test), "test prompts")
            acc_mean = acc_sum = float("nan")
        elif ties:
            warn_ties(task.name, k, seed, ties, len(test), "the first answer listed")
        return SeedRun(seed=seed, acc=acc_mean if self.cfg.score == "mean" else acc_sum,
                       k_used_mean=float(np.mean(k_used)), k_used_min=int(min(k_used)),
                       k_used_max=int(max(k_used)), n=len(test), acc_mean_lp=acc_mean, acc_sum_lp=acc_sum,
                       n_ties=None if broken else ties)  # a run with no accuracy has no ties to lean on

    def evaluate_tasks(self, tasks: Sequence[IclTask | PreparedTask]) -> dict[str, TaskResult]:
        prepared = [t if isinstance(t, PreparedTask) else self.prepare(t) for t in tasks]
        was_training = self.model.training
        self.model.eval()
        try:
            return {p.task.name: self.evaluate_task(p) for p in prepared}
        finally:
            self.model.train(was_training)

    def evaluate(self, tasks: Sequence[IclTask | PreparedTask]) -> IclResult:
        """Every task (loaded first), then the average over tasks that fit."""
        return icl_result(self.cfg, self.evaluate_tasks(tasks), self.split_seed)


def icl_result(cfg: IclConfig, tasks: Mapping[str, TaskResult], split_seed: int,
               ginc_protocol: str | None = None) -> IclResult:
    shots = [str(k) for k in cfg.shots]
    return IclResult(protocol=PROTOCOL, score=cfg.score, headline_k=str(cfg.largest_k), separator=cfg.separator,
                     shots=shots, seeds=list(cfg.seeds), test_seed=cfg.test_seed, max_examples=cfg.max_examples,
                     max_shots=cfg.max_shots, split_seed=split_seed, tasks=dict(tasks),
                     avg=IclResult.average(tasks, shots), ginc_protocol=ginc_protocol,
                     min_demos=min(MIN_DEMOS, cfg.max_shots))  # the bar fits() holds k=max to
