"""A thin adapter over the evaluator's prompt building (momattn.eval.icl / ginc): the same test examples, the same
demonstrations in the same order, and for each test example what ZSL, ICL and FT need.

Text tasks (StaICC, hub, local files): IclEvaluator.prepare gives the test set (shuffled with test_seed, capped
at max_examples) and the demonstration pool (test texts removed); the pool in the order of `seed` gives the k
demonstrations (IclEvaluator.demo_examples) and, after them, the held-out rows that pick the learning rate.
GINC: GincEvaluator's prompts (the same seed stream as evaluate.py), and for the learning rate separate prompts
from another seed (each finetuned on its own demonstrations, scored on its own test input).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from momattn.analysis.finetune import FtSequence
from momattn.errors import ConfigError, DataError
from momattn.eval.config import IclConfig
from momattn.eval.ginc import GincEvaluator, GincTask, ginc_world
from momattn.eval.icl import IclEvaluator, answer_token_ids
from momattn.eval.tasks import IclTask
from momattn.utils import stable_seed


@dataclass
class Episode:
    query: list[int]  # the test input's tokens: ZSL prompt = [<eot>] + query
    label: int
    answers: list[list[int]] | None  # candidate continuations (text tasks); None: greedy next token (GINC)
    train: list[FtSequence]  # the demonstrations as finetuning sequences, in prompt order
    icl_prompt: list[int]  # prefix + query (no answer)
    demo_pos: np.ndarray  # positions in icl_prompt of train[j].tokens[1:], concatenated over j


@dataclass
class AnalysisSet:
    kind: str  # "choice" | "ginc"
    task: str
    source: str
    chance: float
    eot: int
    test: list[Episode]
    select: list[Episode]  # learning-rate selection, never the test rows
    prefix: list[int] | None  # text tasks: [<eot>] + demonstrations, shared by every test example
    k: int


def _fit_error(task: str, k: int, context: int, need: int, k_fit: int) -> DataError:
    return DataError(f"task '{task}': with shots={k} the prompt needs {need} tokens but the model's context is "
                     f"{context}; " + (f"lower shots (at most {k_fit} fit with every test example)" if k_fit else
                                       "not even one demonstration fits: use a model with a longer context")
                     + " or pick a task with shorter examples")


def text_set(model, tokenizer, task: IclTask, cfg, split_seed: int) -> AnalysisSet:
    k = cfg.shots
    icl = IclConfig(tasks=[task.name], shots=[0], seeds=[cfg.seed], max_examples=cfg.max_examples,
                    separator=cfg.separator, test_seed=cfg.test_seed)
    ev = IclEvaluator(model, tokenizer, icl, split_seed, cfg.batch_tokens)
    prep = ev.prepare(task)
    pool = prep.pool
    need_pool = k + (1 if len(cfg.lr_grid) > 1 else 0)
    if len(pool) < need_pool:
        dropped = prep.result.n_demo_dropped
        raise DataError(f"task '{task.name}' has {len(pool)} demonstration-pool rows ({task.source}"
                        + (f"; {dropped} more were dropped as copies of test texts" if dropped else "")
                        + f") but shots={k}"
                        + (" plus at least one held-out row to choose the learning rate" if need_pool > k else "")
                        + f" needs {need_pool}; lower shots or give a larger pool (demo_path or demo_fraction)"
                        + (", or fix the learning rate with lrs=[x]" if need_pool > k else ""))
    order = ev.demo_examples(pool, len(pool), cfg.seed)
    demos, held = order[:k], order[k : k + cfg.select_examples] if len(cfg.lr_grid) > 1 else []
    demo_ids = [ev.demo_ids(task, ex) for ex in demos]  # each ends with the separator
    prefix = ev.start + [t for d in demo_ids for t in d]
    context = model.config.block_size
    need = len(prefix) + max(e.need for e in prep.test)
    if need > context:
        cum = np.cumsum([0] + [len(d) for d in demo_ids]) + len(ev.start) + max(e.need for e in prep.test)
        raise _fit_error(task.name, k, context, need, int(np.flatnonzero(cum <= context).max()))
    train, pos, off = [], [], len(ev.start)
    for ex, d in zip(demos, demo_ids):
        body = d[: len(d) - len(ev.sep)]
        n_answer = len(tokenizer.encode(" " + ex.answers[ex.label]))
        train.append(FtSequence([tokenizer.eot_id] + body, min(n_answer, len(body))))
        pos.extend(range(off, off + len(body)))
        off += len(d)
    demo_pos = np.asarray(pos)
    test = [Episode(e.query, e.example.label, e.answers, train, prefix + e.query, demo_pos) for e in prep.test]
    select = []
    for ex in held:
        try:
            answers = answer_token_ids(ex.answers, tokenizer, f"{task.name} example {ex.id}", case=False)
        except ConfigError:
            continue
        room = context - 1 - max(map(len, answers))  # the query's last tokens that fit beside its longest answer
        if room < 1:  # ([-0:] would have kept the whole query, a negative room cut it from the wrong end)
            continue
        query = tokenizer.encode(task.fill(ex))[-room:]
        select.append(Episode(query, ex.label, answers, train, [], demo_pos))
    return AnalysisSet("choice", task.name, task.source, prep.result.chance, tokenizer.eot_id, test, select,
                       prefix, k)


def _ginc_episodes(prompts, x, example_len: int, eot: int) -> list[Episode]:
    out = []
    for p, row in zip(prompts, x.tolist()):
        sym = list(p.symbols)
        train = [FtSequence([eot] + sym[j * (example_len + 1) : j * (example_len + 1) + example_len], 1)
                 for j in range(p.k)]
        pos = np.asarray([1 + j * (example_len + 1) + i for j in range(p.k) for i in range(example_len)], dtype=int)
        out.append(Episode(sym[len(sym) - (example_len - 1):], p.label, None, train, row, pos))
    return out


def ginc_set(model, tokenizer, task: GincTask, cfg, data_cfg: Mapping | None, trained_on: str | None = None
             ) -> AnalysisSet:
    k = cfg.shots
    world = ginc_world(data_cfg, task.name, key="task", ood_task=task.name if task.ood else None,
                       trained_on=trained_on)
    icl = IclConfig(tasks=[task.name], shots=[k], seeds=[cfg.seed], max_examples=cfg.max_examples)
    ev = GincEvaluator(model, tokenizer, icl, world, cfg.batch_tokens)
    try:
        fit = ev.k_max_fit(task)
    except ConfigError as e:  # the evaluator names evaluate.py's key; analyze.py's is task
        raise ConfigError(str(e).replace("icl.tasks: ", "task: ", 1)) from None
    if k > fit:
        from momattn.data.ginc import prompt_length

        raise _fit_error(task.name, k, model.config.block_size, 1 + prompt_length(task.example_len, k), fit)
    prompts = ev.prompts(task, k, cfg.seed, cfg.max_examples)  # evaluate.py's prompts for this seed
    eot = tokenizer.eot_id
    test = _ginc_episodes(prompts, ev.encode(task, prompts), task.example_len, eot)
    select = []
    if len(cfg.lr_grid) > 1:  # a learning rate fixed by lrs=[x] spends no held-out prompts
        held = world.prompts(task.example_len, k, cfg.select_prompts, ood=task.ood,
                             seed=stable_seed("analyze-lr-select", cfg.seed))
        select = _ginc_episodes(held, ev.encode(task, held), task.example_len, eot)
    return AnalysisSet("ginc", task.name, task.source, 1.0 / world.n_symbols, eot, test, select, None, k)
