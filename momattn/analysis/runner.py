"""ICL versus explicit finetuning on one checkpoint and task, as a story (Dai et al. 2023, Section 4):

    episodes (the evaluator's prompts) -> ZSL and ICL predictions and captures -> learning rate picked on
    held-out rows -> FT on the demonstrations (K/V only) -> FT and random-update captures -> metrics ->
    dual-form check -> results.json, results.md, per_layer.png

analyze(model, tokenizer, run_config, cfg) does the work on a model in memory; run_analyze(cfg) is analyze.py.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from momattn.analysis.capture import Capture, Delta, capture, kv_delta, queries64
from momattn.analysis.config import AnalyzeConfig
from momattn.analysis.episodes import AnalysisSet, Episode, ginc_set, text_set
from momattn.analysis.finetune import FtRun, answer_scores, finetune
from momattn.analysis.metrics import kendall_per_layer, kendall_random, layer_mean, rec2ftp, simam, simaou
from momattn.errors import ConfigError, NonFiniteLossError, UserError
from momattn.eval.ginc import GincTask, check_prompt_count, check_separator, check_test_seed
from momattn.eval.results import JsonMixin
from momattn.eval.scoring import PrefixScorer
from momattn.eval.tasks import TASK_FILE_SUFFIXES, IclTask, read_task_file, resolve_tasks
from momattn.utils import done_line, stable_seed, stderr_tty


def progress(it, desc: str, unit: str):
    """A bar on a terminal (as evaluate.py's); in a log file, where tqdm shows nothing, a line when it is done."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    yield from tqdm(it, desc=desc, unit=unit, leave=False, disable=not stderr_tty())
    done_line(desc, t0)

log = logging.getLogger(__name__)

PROTOCOL = (
    "ZSL = <eot> + test input; ICL = <eot> + k demonstrations (the evaluator's prompt) + test input; FT = the "
    "zero-shot prompt on the model finetuned on the k demonstrations: each demonstration its own sequence "
    "(<eot> + demonstration as in the prompt), same order, one epoch, batch size 1, SGD, loss = mean NLL of the "
    "answer tokens (GINC: the last symbol), only the K and V rows of every c_attn (weights, and biases where it "
    "has them) updated. "
    "Predictions use the evaluator's rule (text: argmax of the mean log-prob of each candidate answer; GINC: "
    "greedy next token). Learning rate: each value of the grid finetuned on the same demonstrations, scored "
    "on held-out rows (text: demonstration-pool rows after the k demonstrations in the seeded order, never in "
    "the prompt nor the test set; GINC: separate prompts from another seed, each finetuned on its own "
    "demonstrations); the most accurate non-diverged value wins, ties broken by the higher mean log-prob of "
    "the right answer. A finetuned GINC model that diverged (non-finite loss, weights or test logits) answers "
    "nothing (it is wrong), and its example is left out of every per-layer mean, FT's and the baselines'. Metric "
    "definitions: momattn/analysis/metrics.py."
)


@dataclass
class LayerMetric(JsonMixin):
    per_layer: list[float]
    mean: float  # over layers (of per-layer means over examples)


@dataclass
class AnalysisResult(JsonMixin):
    checkpoint: str | None
    attention: str
    model: dict
    task: str
    kind: str
    source: str
    shots: int
    seed: int
    n_test: int
    chance: float
    acc: dict[str, float]  # zsl / icl / ft
    rec2ftp: float | None
    rec2ftp_n: int  # N(FT right, ZSL wrong)
    simaou_ft: LayerMetric
    simaou_random: LayerMetric
    simam_before: LayerMetric  # ICL vs ZSL
    simam_after: LayerMetric  # ICL vs FT
    kendall_ft: LayerMetric
    kendall_random: LayerMetric
    lr: float
    lr_selection: dict[str, float | None]  # str(lr) -> held-out accuracy (None: diverged); {}: lr fixed by lrs
    n_select: int
    ft: dict  # losses, update norms, diverged test models
    protocol: str = PROTOCOL
    # SimAOU after the output projection (c_proj's output), as the authors' code reads it (results before
    # session 18 have none)
    simaou_proj_ft: LayerMetric | None = None
    simaou_proj_random: LayerMetric | None = None
    # Kendall(ICL, FT) with the ICL side read as the authors' code reads it (results before session 48 have none)
    kendall_authors_ft: LayerMetric | None = None
    dual: dict | None = None
    timing_s: dict[str, float] = field(default_factory=dict)
    # the draws and the prompt's form besides seed and shots: a copied results.json said which baseline draw it
    # used nowhere (found by review; results before session 55 have none)
    settings: dict | None = None


class Timer:
    def __init__(self):
        self.t: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Ctx:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.t[name] = timer.t.get(name, 0.0) + time.perf_counter() - self.t0

        return _Ctx()


def zsl_rows(eps: list[Episode]) -> list[list[int]]:
    return [e.query for e in eps]


def choice_predictions(model, prefix: list[int], eps: list[Episode], delta: Delta | None,
                       batch_tokens: int) -> np.ndarray:
    """The evaluator's rule with its scorer: argmax over candidates of the mean log-prob after prefix + query; -1
    (no answer) where a score is not finite (a finetuned model's nan would argmax to candidate 0)."""
    with kv_delta(model, delta):
        scorer = PrefixScorer(model, prefix, batch_tokens)
        flat = iter(scorer.score([(e.query, a) for e in eps for a in e.answers]))
    preds = []
    for e in eps:
        s = np.asarray([lp / n for lp, n in (next(flat) for _ in e.answers)], dtype=np.float64)
        preds.append(int(np.argmax(s)) if np.isfinite(s).all() else -1)
    return np.asarray(preds)


def select_lr(model, aset: AnalysisSet, cfg: AnalyzeConfig, n_ids: int | None = None
              ) -> tuple[float, dict[str, float | None]]:
    """n_ids: GINC's greedy answer is over the tokenizer's ids (the embedding's padding rows are no token), as the
    test predictions'."""
    grid = cfg.lr_grid
    if len(grid) == 1:  # fixed by lrs=[x]: nothing to choose, no held-out rows spent
        return grid[0], {}
    if not aset.select:
        raise ConfigError(f"task '{aset.task}': no held-out rows are left to choose the learning rate; lower "
                          "shots, raise select_examples, or fix it with lrs=[x]")
    eot = aset.eot
    acc = np.zeros(len(grid))
    gold = np.zeros(len(grid))
    bad = np.zeros(len(grid), dtype=bool)
    labels = np.asarray([e.label for e in aset.select])
    if aset.kind == "choice":  # one set of demonstrations: every lr side by side
        for g0 in progress(range(0, len(grid), cfg.ft_models_per_batch), "choosing the learning rate",
                           unit="batch of models"):
            lrs = grid[g0 : g0 + cfg.ft_models_per_batch]
            run = finetune(model, [aset.select[0].train] * len(lrs), lrs)
            s = answer_scores(model, run.delta, [[eot] + e.query for e in aset.select],
                              [e.answers for e in aset.select], cfg.batch_tokens)  # (M, R, A)
            pred = s.argmax(-1).numpy()
            acc[g0 : g0 + len(lrs)] = (pred == labels).mean(1)
            gold[g0 : g0 + len(lrs)] = s[:, np.arange(len(labels)), labels].mean(1).numpy()
            bad[g0 : g0 + len(lrs)] = run.diverged.numpy() | ~np.isfinite(s.numpy()).all((1, 2))
    else:  # GINC: one model per (lr, prompt)
        pairs = [(i, e) for i in range(len(grid)) for e in aset.select]
        right = np.zeros(len(grid))
        lp = np.zeros(len(grid))
        for p0 in progress(range(0, len(pairs), cfg.ft_models_per_batch), "choosing the learning rate",
                           unit="batch of models"):
            chunk = pairs[p0 : p0 + cfg.ft_models_per_batch]
            run = finetune(model, [e.train for _, e in chunk], [grid[i] for i, _ in chunk])
            cap = capture(model, [[eot] + e.query for _, e in chunk], delta=run.delta, batch_tokens=cfg.batch_tokens)
            logp = torch.log_softmax(cap.logits.double(), -1)
            for (i, e), row, dv in zip(chunk, logp, run.diverged):
                bad[i] |= bool(dv) or not bool(torch.isfinite(row).all())
                right[i] += int(row[:n_ids].argmax()) == e.label
                lp[i] += float(row[e.label])
        acc, gold = right / len(aset.select), lp / len(aset.select)
    table = {str(lr): (None if b else float(a)) for lr, a, b in zip(grid, acc, bad)}
    ok = np.flatnonzero(~bad)
    if not len(ok):
        raise NonFiniteLossError(
            f"every learning rate in lrs={grid} diverged (non-finite finetuning loss or weights) on task "
            f"'{aset.task}'; use smaller values, e.g. lrs=[1e-5,1e-4,1e-3], or the paper's grid (lrs=null)")
    best = max(ok, key=lambda i: (acc[i], gold[i]))
    return float(grid[best]), table


def _diverged_everywhere(lr: float, aset: AnalysisSet, cfg: AnalyzeConfig) -> str:
    return (f"finetuning at lr={lr:g} diverged (non-finite loss, weights or scores) on task '{aset.task}' "
            f"(lrs={cfg.lr_grid}); use smaller values, e.g. lrs=[1e-5,1e-4,1e-3], or the paper's grid (lrs=null)")


def finetuned_states(model, aset: AnalysisSet, lr: float, cfg: AnalyzeConfig, timer: Timer
                     ) -> tuple[Capture, Capture, list[torch.Tensor], FtRun | None, dict, np.ndarray]:
    """FT and random-update captures of every test example's zero-shot prompt, the c_attn inputs recorded while
    finetuning (per example (L, n_demo, C): capture.queries64 makes them queries), FT facts, and which test examples' finetuned models diverged."""
    eot, eps = aset.eot, aset.test
    if aset.kind == "choice":  # one finetuned model serves every test example
        with timer("ft_test"):
            run = finetune(model, [eps[0].train], [lr], record_queries=True)
        with timer("capture_ft_rnd"):
            cap_ft = capture(model, zsl_rows(eps), [eot], run.delta, cfg.batch_tokens)
            cap_rnd = _random_captures(model, run.delta, [[eot] + q for q in zsl_rows(eps)], cfg)
        q = torch.cat(run.queries[0], dim=1)  # (L, n_demo, C)
        facts = {"loss_per_step": run.losses[0].tolist(), "update_norm_per_layer": run.delta.norms()[0].tolist(),
                 "n_diverged": int(run.diverged.sum())}
        return cap_ft, cap_rnd, [q] * len(eps), run, facts, np.full(len(eps), bool(run.diverged.any()))
    caps_ft, caps_rnd, queries, losses, norms, diverged = [], [], [], [], [], []
    for c0 in progress(range(0, len(eps), cfg.ft_models_per_batch), "finetuning a model per test prompt",
                       unit="batch of models"):
        chunk = eps[c0 : c0 + cfg.ft_models_per_batch]
        with timer("ft_test"):
            run = finetune(model, [e.train for e in chunk], [lr] * len(chunk), record_queries=True)
        rnd = run.delta.random_like([stable_seed("analyze-random-update", cfg.random_seed, c0 + m)  # per prompt
                                     for m in range(len(chunk))])
        rows = [[eot] + e.query for e in chunk]
        with timer("capture_ft_rnd"):
            caps_ft.append(capture(model, rows, delta=run.delta, batch_tokens=cfg.batch_tokens))
            caps_rnd.append(capture(model, rows, delta=rnd, batch_tokens=cfg.batch_tokens))
        queries.extend(torch.cat(qm, dim=1) for qm in run.queries)
        losses.append(run.losses)
        norms.append(run.delta.norms())
        # finite weights can still overflow on the test prompt: nan logits answer nothing, as a diverged model
        diverged.extend(bool(d) or not bool(torch.isfinite(lg).all()) for d, lg in zip(run.diverged, caps_ft[-1].logits))
    ok = ~torch.tensor(diverged, dtype=torch.bool)  # a diverged model's inf / nan would swamp the means
    facts = {"loss_per_step": torch.cat(losses)[ok].mean(0).tolist(),
             "update_norm_per_layer": torch.cat(norms)[ok].mean(0).tolist(), "n_diverged": sum(diverged)}
    return _cat(caps_ft), _cat(caps_rnd), queries, None, facts, np.asarray(diverged, dtype=bool)


def _random_captures(model, delta: Delta, rows: list[list[int]], cfg: AnalyzeConfig) -> Capture:
    """Each row under a random update of its own with the norm of `delta` (one model's), seeded by the row's place
    as a GINC prompt's is: one draw shared by every test example of a text task stayed one draw after the means
    over examples, and the verdict against it flipped with random_seed (found by review)."""
    caps = []
    for c0 in range(0, len(rows), cfg.ft_models_per_batch):
        chunk = rows[c0 : c0 + cfg.ft_models_per_batch]
        rnd = delta.select([0] * len(chunk)).random_like(
            [stable_seed("analyze-random-update", cfg.random_seed, c0 + m) for m in range(len(chunk))])
        caps.append(capture(model, chunk, delta=rnd, batch_tokens=cfg.batch_tokens))
    return _cat(caps)


def _cat(caps: list[Capture]) -> Capture:
    return Capture(torch.cat([c.h for c in caps]), torch.cat([c.h_proj for c in caps]), torch.cat([c.q for c in caps]),
                   [s for c in caps for s in c.scores], torch.cat([c.logits for c in caps]))


def analyze(model, tokenizer, run_config: Mapping, cfg: AnalyzeConfig, checkpoint: str | None = None,
            trained_on: str | None = None) -> AnalysisResult:
    """Section 4's measurements of one model on one task, in eval mode (the model's mode is given back).
    trained_on: the checkpoint's data fingerprint (a GINC world must be the one it trained on)."""
    was_training = model.training
    model.eval()
    try:
        return _analyze(model, tokenizer, run_config, cfg, checkpoint, trained_on)
    finally:
        model.train(was_training)


def analysis_task(cfg: AnalyzeConfig) -> IclTask | GincTask:
    """The one task `task=` names (a name, or a task file as evaluate.py reads them); a ConfigError naming it."""
    entry = cfg.task
    if isinstance(entry, str) and entry.endswith(TASK_FILE_SUFFIXES):
        entry = read_task_file(entry, key="task")
    tasks = resolve_tasks([entry], key="task")
    if len(tasks) != 1:
        raise ConfigError(f"task={cfg.task} is a set of {len(tasks)} tasks; analyze.py takes one, e.g. "
                          f"task={tasks[0].name}")
    return tasks[0]


def _analyze(model, tokenizer, run_config: Mapping, cfg: AnalyzeConfig, checkpoint: str | None,
             trained_on: str | None = None) -> AnalysisResult:
    timer = Timer()
    t0 = time.perf_counter()
    task = analysis_task(cfg)
    tasks = [task]
    from momattn.eval.runner import _unchecked_leak, is_ginc_run

    ginc_run = is_ginc_run(run_config)
    if not isinstance(task, GincTask) and ginc_run:
        raise ConfigError(f"task={task.name} is a text task, and this checkpoint was trained on GINC (its tokenizer "
                          "knows only the GINC symbols); analyse a GINC task instead, e.g. task=ginc")
    if not ginc_run and (note := _unchecked_leak(dict(run_config), tasks)):  # as evaluate.py says it: for each
        print(note, file=sys.stderr, flush=True)  # checkpoint (once a process left job 1's analyze.log without it)
    if ginc_run:  # (a GINC task on a text checkpoint is refused by ginc_set, naming data=ginc)
        check_separator(tasks, cfg.separator, key="separator")
        check_test_seed(tasks, cfg.test_seed, key="test_seed", seeds_key="seed")
        for key in ("max_examples", "select_prompts"):
            check_prompt_count(tasks, getattr(cfg, key), key=key)
    with timer("prepare"):
        if isinstance(task, GincTask):
            aset = ginc_set(model, tokenizer, task, cfg, run_config.get("data"), trained_on)
        else:
            from momattn.eval.runner import split_seed_of

            aset = text_set(model, tokenizer, task, cfg, split_seed_of(run_config))
    eps, eot = aset.test, aset.eot
    labels = np.asarray([e.label for e in eps])
    asked = cfg.select_examples if aset.kind == "choice" else cfg.select_prompts
    short = (f" (select_{'examples' if aset.kind == 'choice' else 'prompts'}={asked}: no more are usable beside "
             f"the {aset.k} demonstrations)" if len(cfg.lr_grid) > 1 and len(aset.select) < asked else "")
    held = "rows" if aset.kind == "choice" else "prompts"  # GINC chooses on separate prompts (select_prompts)
    choose = (f"{len(cfg.lr_grid)} learning rates, {len(aset.select)} held-out {held} to choose one{short}"
              if len(cfg.lr_grid) > 1 else f"learning rate {cfg.lr_grid[0]:g} (fixed by lrs)")
    print(f"[momattn] analysing {aset.task} ({aset.kind}, k={aset.k}): {len(eps)} test examples, {choose}",
          file=sys.stderr, flush=True)
    with timer("capture_zsl_icl"):
        # the zero-shot prompt [eot] + query through the same path as the FT and random-update captures (GINC:
        # whole rows, no shared prefix), so that a zero update gives SimAOU 0 exactly
        cap_zsl = capture(model, zsl_rows(eps), [eot], batch_tokens=cfg.batch_tokens) if aset.kind == "choice" \
            else capture(model, [[eot] + e.query for e in eps], batch_tokens=cfg.batch_tokens)
        if aset.prefix is not None:
            cap_icl = capture(model, zsl_rows(eps), aset.prefix, batch_tokens=cfg.batch_tokens)
        else:
            cap_icl = capture(model, [e.icl_prompt for e in eps], batch_tokens=cfg.batch_tokens)
    with timer("lr_select"):
        lr, table = select_lr(model, aset, cfg, tokenizer.n_ids if aset.kind == "ginc" else None)
    cap_ft, cap_rnd, queries, run, facts, diverged = finetuned_states(model, aset, lr, cfg, timer)
    n_models = 1 if aset.kind == "choice" else len(eps)
    if facts["n_diverged"] == n_models:
        raise NonFiniteLossError(_diverged_everywhere(lr, aset, cfg))
    with timer("predict"):
        if aset.kind == "choice":
            zsl = choice_predictions(model, [eot], eps, None, cfg.batch_tokens)
            icl = choice_predictions(model, aset.prefix, eps, None, cfg.batch_tokens)
            ft = choice_predictions(model, [eot], eps, run.delta, cfg.batch_tokens)
            # finite weights can still give non-finite states or scores (a huge lr): those examples answer nothing
            # and are left out of the per-example means, as a diverged GINC model's are
            bad = (ft == -1) | ~torch.isfinite(cap_ft.logits).all(-1).numpy()
            facts["n_nonfinite_examples"] = int((bad & ~diverged).sum())
            diverged = diverged | bad
            if diverged.all():
                raise NonFiniteLossError(_diverged_everywhere(lr, aset, cfg))
        else:
            # greedy over the tokenizer's ids, as evaluate.py's acc: the embedding's padding rows are no token
            zsl, icl, ft = (c.logits[:, : tokenizer.n_ids].argmax(-1).numpy() for c in (cap_zsl, cap_icl, cap_ft))
            ft[diverged] = -1  # a diverged model's nan logits would argmax to symbol 0, often the right one
    with timer("metrics"):
        rng = np.random.default_rng(stable_seed("analyze-random-ranking", cfg.random_seed))
        sa_ft, sa_rnd = simaou(cap_zsl.h, cap_icl.h, cap_ft.h).numpy(), simaou(cap_zsl.h, cap_icl.h, cap_rnd.h).numpy()
        sp_ft = simaou(cap_zsl.h_proj, cap_icl.h_proj, cap_ft.h_proj).numpy()
        sp_rnd = simaou(cap_zsl.h_proj, cap_icl.h_proj, cap_rnd.h_proj).numpy()
        before, after, k_ft, k_rnd, k_authors = [], [], [], [], []
        for i, e in enumerate(eps):
            nq = len(e.query)
            before.append(simam(cap_icl.scores[i], cap_zsl.scores[i], nq).numpy())
            after.append(simam(cap_icl.scores[i], cap_ft.scores[i], nq).numpy())
            if i == 0 or queries[i] is not queries[i - 1]:  # (a choice task's one finetuned model: one set)
                q_train = queries64(model, queries[i])  # (L, n_demo, C) float64
            k_ft.append(kendall_per_layer(cap_icl.scores[i], e.demo_pos, cap_ft.q[i], q_train))
            k_rnd.append(kendall_random(cap_icl.scores[i], e.demo_pos, rng))
            k_authors.append(kendall_per_layer(cap_icl.scores[i], e.demo_pos, cap_ft.q[i], q_train, authors=True))
        before, after, k_ft, k_rnd, k_authors = (np.asarray(a, dtype=np.float64)
                                                 for a in (before, after, k_ft, k_rnd, k_authors))
        # a diverged model's example is left out of every per-example mean, the baselines' too: FT and its baselines
        # are then compared over the same examples (its nan states leave it out of FT's; its finite states with
        # non-finite logits would not)
        for a in (sa_ft, sa_rnd, sp_ft, sp_rnd, before, after, k_ft, k_rnd, k_authors):
            a[diverged] = np.nan
    r2, r2n = rec2ftp(zsl == labels, icl == labels, ft == labels)
    dual = None
    if cfg.dual_check:
        with timer("dual_check"):
            from momattn.analysis.dual import dual_form_report

            cpu = copy.deepcopy(model).cpu().double() if next(model.parameters()).device.type != "cpu" else model
            e = eps[0]  # the zero-shot prompt is <eot> + query: the <eot> is on its side, not a demonstration's
            start = 1 if e.icl_prompt[0] == aset.eot else 0
            dual = dual_form_report(cpu, e.icl_prompt, len(e.icl_prompt) - len(e.query) - start, start)
    from momattn.eval.lm import attention_kind, describe

    timer.t["total"] = time.perf_counter() - t0
    return AnalysisResult(
        checkpoint=checkpoint, attention=attention_kind(model), model=describe(model), task=aset.task,
        kind=aset.kind, source=aset.source, shots=aset.k, seed=cfg.seed, n_test=len(eps), chance=aset.chance,
        acc={"zsl": float((zsl == labels).mean()), "icl": float((icl == labels).mean()),
             "ft": float((ft == labels).mean())},
        rec2ftp=r2, rec2ftp_n=r2n, simaou_ft=LayerMetric(*layer_mean(sa_ft)),
        simaou_random=LayerMetric(*layer_mean(sa_rnd)), simam_before=LayerMetric(*layer_mean(before)),
        simam_after=LayerMetric(*layer_mean(after)), kendall_ft=LayerMetric(*layer_mean(k_ft)),
        kendall_random=LayerMetric(*layer_mean(k_rnd)), lr=lr, lr_selection=table,
        n_select=len(aset.select), ft=facts, dual=dual, timing_s=dict(timer.t),
        simaou_proj_ft=LayerMetric(*layer_mean(sp_ft)), simaou_proj_random=LayerMetric(*layer_mean(sp_rnd)),
        kendall_authors_ft=LayerMetric(*layer_mean(k_authors)),
        settings={"random_seed": cfg.random_seed,  # GINC: its prompts follow seed, its delimiter is "/" (found by review)
                  "test_seed": cfg.test_seed if aset.kind != "ginc" else None,
                  "separator": cfg.separator if aset.kind != "ginc" else "/",
                  "select_examples": cfg.select_examples, "select_prompts": cfg.select_prompts})


@contextlib.contextmanager
def set_aside(out: Path, names: tuple[str, ...]):
    """The reports `names` of an earlier analysis in `out`, out of the way while this one runs: gone where it
    ends otherwise (a stop or a crash left them looking like its own), put back where it is refused (a UserError: a
    shots the context cannot hold, checked once the work began, lost them to a typo, and the saved config with them:
    flows review; an lrs whose finetuning diverges, said with the advice to choose smaller values: review)."""
    aside = out / ".previous_reports"
    shutil.rmtree(aside, ignore_errors=True)  # (a killed run's: its reports went, as before)
    moved = [name for name in names if (out / name).is_file()]
    if moved:
        aside.mkdir()
        for name in moved:
            os.replace(out / name, aside / name)
    try:
        yield
    except UserError:  # a refusal (exit 2), not a crash
        for name in moved:
            os.replace(aside / name, out / name)
        raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def run_analyze(cfg: Mapping, out_dir: str | Path | None = None) -> AnalysisResult | None:
    """analyze.py: load the checkpoint, analyse, write results.json / results.md / per_layer.png. With sweep_dir:
    every run of the sweep, then the verdict over seeds (momattn.analysis.sweep; None returned)."""
    from momattn.analysis.report import REPORTS, SWEEP_REPORTS, log_wandb, write_reports
    from momattn.checkpoint import load_checkpoint, read_meta
    from momattn.eval.config import build
    from momattn.eval.runner import hydra_output_dir
    from momattn.hardware import resolve_device

    conf = build(AnalyzeConfig, cfg)
    if not conf.ckpt_path and not conf.sweep_dir:
        raise ConfigError("ckpt_path is not set; pass ckpt_path=outputs/<date>/<time>/checkpoints/last.ckpt, or "
                          "sweep_dir=<a train.py -m folder> for every run of a sweep")
    analysis_task(conf)  # a misspelt task: now, before any checkpoint is read or an earlier analysis's files are
    # removed (a sweep's every job record was removed, then each job refused it: found by review)
    out = Path(out_dir) if out_dir is not None else hydra_output_dir()
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(conf.device)
    if conf.sweep_dir:
        from momattn.analysis.sweep import run_analyze_sweep

        run_analyze_sweep(conf, out, device)
        return None
    meta = read_meta(conf.ckpt_path).get("momattn") or {}
    model, tokenizer = load_checkpoint(conf.ckpt_path, map_location=device)
    # an earlier analysis's reports in this folder: written again at the end, and a stop or failure before it left
    # them looking like this run's; a sweep's verdict stood beside this single analysis's (both found by review)
    with set_aside(out, (*REPORTS, *SWEEP_REPORTS)):
        result = analyze(model, tokenizer, dict(meta.get("config") or {}), conf, checkpoint=str(conf.ckpt_path),
                         trained_on=meta.get("data_fingerprint"))
    written = write_reports(result, out)
    if conf.logger and "wandb" in conf.logger:
        log_wandb(result, out, conf.logger["wandb"], conf.tags, settings=asdict(conf))
    print((out / "results.md").read_text())
    print(f"reports written to {out}/ ({', '.join(written)})")  # (per_layer.png only with matplotlib)
    return result
