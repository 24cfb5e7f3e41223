"""In-context accuracy with the authors' protocol (PAPER.md), one task at a time.

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

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch.nn as nn
from tqdm.auto import tqdm

from momattn.errors import ConfigError, DataError
from momattn.eval.config import IclConfig
from momattn.eval.scoring import PrefixScorer
from momattn.eval.tasks import IclExample, IclTask

PROTOCOL = (
    "prompt = <eot> + k demonstrations (template + ' ' + answer, each followed by the separator) + "
    "test template; every candidate answer is appended with a leading space and scored by the mean "
    "log-probability of its tokens (acc; the authors' rule) and by the sum (acc_sum); argmax wins. "
    "Demonstrations: the task's pool shuffled with each seed, taken in order; k='max' = as many as fit next "
    "to the longest test prompt+answer (up to max_shots); for int k, demonstrations that would overflow the "
    "context are dropped from the end (k_used). Test set shuffled with test_seed, capped at max_examples. "
    "Accuracy: mean and population std over seeds (0-shot: one seed)."
)


def answer_token_ids(answers: Sequence[str], tokenizer, where: str) -> list[list[int]]:
    """Token ids of " " + answer for each answer; ConfigError for an empty answer or two identical encodings.
    (One answer's tokens being a prefix of another's is fine: the mean log-prob compares them fairly.)"""
    ids = []
    for i, a in enumerate(answers):
        if not str(a).strip():
            raise ConfigError(f"{where}: answer {i} is empty ({a!r}); every answer needs visible text")
        ids.append(tokenizer.encode(" " + str(a)))
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
class PreparedTask:
    task: IclTask
    test: list[EncodedExample]
    pool: list[IclExample]
    info: dict  # what the report says about the task's data


class IclEvaluator:
    """ICL accuracy of one model over tasks, shots and seeds."""

    def __init__(self, model: nn.Module, tokenizer, cfg: IclConfig, split_seed: int,
                 batch_tokens: int = 4096):
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.split_seed, self.batch_tokens = split_seed, batch_tokens
        self.context = model.config.block_size
        self.start = [tokenizer.eot_id]
        self.sep = [tokenizer.eot_id] if cfg.separator == "eot" else tokenizer.encode(cfg.separator)
        self.predictions: list[dict] = []  # one record per test example, seed and k

    # -- prompts

    def demo_ids(self, task: IclTask, ex: IclExample) -> list[int]:
        return self.tokenizer.encode(task.fill(ex) + " " + ex.answers[ex.label]) + self.sep

    def encode_test(self, task: IclTask, examples: Sequence[IclExample]) -> tuple[list[EncodedExample], int]:
        """Encoded test examples and how many were skipped (per-example answers that tokenize ambiguously)."""
        fixed = None
        if task.answers:
            fixed = answer_token_ids(task.answers, self.tokenizer, f"ICL task '{task.name}'")
        out, skipped = [], 0
        for ex in examples:
            if fixed is not None:
                answers = fixed
            else:
                try:
                    answers = answer_token_ids(ex.answers, self.tokenizer, f"{task.name} example {ex.id}")
                except ConfigError:
                    skipped += 1  # a hub item with an empty or duplicated choice
                    continue
            query = self.tokenizer.encode(task.fill(ex))
            room = self.context - len(self.start) - max(len(a) for a in answers)
            if room < 1:
                raise DataError(f"ICL task '{task.name}': an answer of example {ex.id} is longer than the "
                                f"model's context of {self.context} tokens")
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
            raise DataError(f"ICL task '{task.name}': no usable test example ({skipped} skipped)")
        pool = data.demo_pool
        for k in self.cfg.shots:
            if k != "max" and k > len(pool):
                raise DataError(f"icl.shots contains {k} but task '{task.name}' has only {len(pool)} "
                                f"demonstration examples ({task.source}); lower icl.shots or give a larger "
                                "demonstration pool (demo_path, or a larger demo_fraction)")
        info = {
            "source": task.source, "template": task.template,
            "answers": list(task.answers) if task.answers else "per example",
            "chance": float(np.mean([1.0 / len(e.answers) for e in test])), "n": len(test),
            "n_test_available": len(data.test), "n_skipped": skipped,
            "n_truncated": sum(e.truncated for e in test), "n_demo_pool": len(pool),
        }
        return PreparedTask(task, test, pool, info)

    def evaluate_task(self, task: IclTask | PreparedTask) -> dict:
        prep = task if isinstance(task, PreparedTask) else self.prepare(task)
        runs = [(k, s) for k in self.cfg.shots for s in (self.cfg.seeds[:1] if k == 0 else self.cfg.seeds)]
        per_k = defaultdict(list)
        for k, seed in tqdm(runs, desc=f"icl {prep.task.name}", leave=False):
            per_k[k].append(self.evaluate_run(prep.task, prep.test, prep.pool, k, seed))
        return {**prep.info, "shots": {str(k): self._summarise(seeds) for k, seeds in per_k.items()}}

    def demonstrations(self, task: IclTask, pool: Sequence[IclExample], k: int | str,
                       seed: int) -> list[list[int]]:
        """Token ids of the demonstrations of draw `seed`, each ending with the separator."""
        order = np.random.default_rng(seed).permutation(len(pool))
        n = min(self.cfg.max_shots, len(pool)) if k == "max" else k
        return [self.demo_ids(task, pool[i]) for i in order[:n]]

    def evaluate_run(self, task: IclTask, test: Sequence[EncodedExample], pool, k, seed: int) -> dict:
        demos = self.demonstrations(task, pool, k, seed)
        cum = np.concatenate([[0], np.cumsum([len(d) for d in demos])])  # prefix after j demonstrations
        room = self.context - len(self.start) - cum  # what is left for the test example after j of them
        if k == "max":  # the authors: as many as fit next to the longest test example
            n_fit = int(np.flatnonzero(room >= max(e.need for e in test)).max())
            k_used = [n_fit] * len(test)
        else:
            k_used = [int(np.flatnonzero(room >= e.need).max()) for e in test]
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
        right_mean = right_sum = 0
        for e, s, j in zip(test, scores, k_used):
            pred_mean = int(np.argmax([lp / n for lp, n in s]))
            pred_sum = int(np.argmax([lp for lp, _ in s]))
            right_mean += pred_mean == e.example.label
            right_sum += pred_sum == e.example.label
            self.predictions.append({"task": task.name, "k": k, "seed": seed, "id": e.example.id,
                                     "label": e.example.label, "pred": pred_mean, "pred_sum": pred_sum,
                                     "k_used": j, "logprob_sum": [lp for lp, _ in s],
                                     "n_tokens": [n for _, n in s]})
        return {"seed": seed, "acc_mean_lp": right_mean / len(test), "acc_sum_lp": right_sum / len(test),
                "k_used_mean": float(np.mean(k_used)), "k_used_min": int(min(k_used)),
                "k_used_max": int(max(k_used))}

    def _summarise(self, seeds: list[dict]) -> dict:
        mean_lp = np.array([s["acc_mean_lp"] for s in seeds])
        sum_lp = np.array([s["acc_sum_lp"] for s in seeds])
        head = mean_lp if self.cfg.score == "mean" else sum_lp
        return {"acc": float(head.mean()), "acc_std": float(head.std()),
                "acc_mean_lp": float(mean_lp.mean()), "acc_mean_lp_std": float(mean_lp.std()),
                "acc_sum_lp": float(sum_lp.mean()), "acc_sum_lp_std": float(sum_lp.std()),
                "k_used_mean": float(np.mean([s["k_used_mean"] for s in seeds])),
                "seeds": [s["seed"] for s in seeds], "per_seed": seeds}

    def evaluate(self, tasks: Sequence[IclTask | PreparedTask]) -> dict:
        """{'tasks': {name: result}, 'avg': {k: {...}}, 'protocol': ..., settings}; tasks load first."""
        prepared = [t if isinstance(t, PreparedTask) else self.prepare(t) for t in tasks]
        was_training = self.model.training
        self.model.eval()
        try:
            results = {p.task.name: self.evaluate_task(p) for p in prepared}
        finally:
            self.model.train(was_training)
        avg = {}
        for k in map(str, self.cfg.shots):
            accs = [r["shots"][k]["acc"] for r in results.values()]
            chance = [r["chance"] for r in results.values()]
            avg[k] = {"acc": float(np.mean(accs)), "chance": float(np.mean(chance)), "n_tasks": len(accs)}
        c = self.cfg
        return {"protocol": PROTOCOL, "score": c.score, "headline_k": str(c.largest_k),
                "separator": c.separator, "shots": [str(k) for k in c.shots], "seeds": c.seeds,
                "test_seed": c.test_seed,
                "max_examples": c.max_examples, "max_shots": c.max_shots, "split_seed": self.split_seed,
                "tasks": results, "avg": avg}
