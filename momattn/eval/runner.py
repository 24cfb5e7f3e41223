"""Evaluation as a story: checkpoint(s) -> perplexity (Table 6) + in-context accuracy (Table 7) -> reports.

    run_evaluate(cfg)          evaluate.py's body (Hydra config, conf/evaluate.yaml)
    evaluate_model(...)        one model already in memory (train.py calls it at the end of training)
    write_reports(results, d)  results.json, results.md, ppl.png, icl.png
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from momattn.data import corpus
from momattn.data.sources import merge_data
from momattn.errors import ConfigError, DataError
from momattn.eval.config import EvalConfig, EvaluateConfig, to_plain
from momattn.eval.ginc import PROTOCOL as GINC_PROTOCOL
from momattn.eval.ginc import (
    GincEvaluator,
    GincTask,
    check_ginc_icl,
    ginc_world,
)
from momattn.eval.icl import IclEvaluator, icl_result
from momattn.eval.lm import LanguageModel, attention_kind, describe
from momattn.eval.ppl import PerplexityEvaluator
from momattn.eval.report import markdown_report, write_reports
from momattn.eval.results import ModelResult, as_model_result
from momattn.eval.tasks import resolve_tasks
from momattn.hardware import resolve_device
from momattn.io import atomic_write_text, json_text, remove_stale
from momattn.quoting import shell_quote

__all__ = ["check_evaluation", "evaluate_model", "flat_metrics", "run_evaluate", "write_reports"]


def split_seed_of(run_config: Mapping) -> int:
    from momattn.data.staicc import SPLIT_SEED

    seed = (run_config.get("data") or {}).get("split_seed")
    return int(seed) if seed is not None else SPLIT_SEED


def is_ginc_run(run_config: Mapping) -> bool:
    """Whether a run's data section is GINC (momattn.data.ginc.GincCorpus)."""
    target = str(((run_config or {}).get("data") or {}).get("_target_") or "")
    return target.rsplit(".", 1)[-1] == "GincCorpus"


@dataclass
class _Plan:
    """An evaluation checked and loaded, before any scoring: the ICL tasks encoded, the GINC world and the
    perplexity corpus read."""
    lengths: list[int]
    tasks: list
    icl_eval: IclEvaluator
    prepared: dict
    ginc_tasks: list
    ginc_eval: GincEvaluator | None
    val: object = None
    train: object = None
    data_cfg: dict | None = None
    leak_note: str | None = None  # _unchecked_leak's, for the console and the report


def _unchecked_leak(run_config: dict, tasks: list) -> str | None:
    """A note where StaICC tasks score a checkpoint trained on another text than momattn's StaICC LM text: only
    that text is kept clear of the rows they score (momattn.data.staicc's filter), and a corpus of the same
    datasets could hold them (found by review: the report read as if the model never trained on them)."""
    data = run_config.get("data") if isinstance(run_config.get("data"), dict) else {}
    target = data.get("_target_") or data.get("source")  # (source: an older run config's name)
    staicc = [t.name for t in tasks if not isinstance(t, GincTask) and str(t.source).startswith("staicc:")]
    if not staicc or not target or target in (STAICC_SOURCE, "staicc"):
        return None
    return (f"[momattn] note: {', '.join(staicc)} score rows that momattn keeps out of its own LM text (data=staicc); "
            f"this checkpoint was trained on {target}, whose text is not checked against them: if it holds them (a "
            "corpus made of the same datasets), the model may have trained on its own test examples")


STAICC_SOURCE = "momattn.data.sources.StaiccCorpus"


def _plan(model: LanguageModel, tokenizer, run_config: dict, cfg: EvalConfig, cache_dir: str | None,
          read_corpus: bool = True, trained_on: str | None = None, training: bool = False,
          notes: bool = True) -> _Plan:
    # ICL data loaded and checked first: a missing file, an offline hub task or a GINC task on a checkpoint
    # that never saw GINC fails before any scoring
    lengths = cfg.ppl.resolve_lengths(model.config.block_size) if cfg.ppl.enabled else []
    tasks = resolve_tasks(cfg.icl.tasks) if cfg.icl.enabled else []
    ginc_tasks = [t for t in tasks if isinstance(t, GincTask)]
    text_tasks = [t.name for t in tasks if not isinstance(t, GincTask)]
    if text_tasks and is_ginc_run(run_config):
        raise ConfigError(f"icl.tasks: {', '.join(text_tasks)} are text tasks, and this checkpoint was trained on GINC "
                          f"(its tokenizer, {tokenizer.name}, knows only the GINC symbols). Score GINC tasks instead: "
                          "icl.tasks=[ginc,ginc_l3,ginc_l8,ginc_ood]")
    world = ginc_world(run_config.get("data"), ginc_tasks[0].name, ood_task=next(
        (t.name for t in ginc_tasks if t.ood), None), trained_on=trained_on, training=training) if ginc_tasks else None
    if ginc_tasks:  # after the checkpoint is known to be a GINC one, before the separator is encoded
        check_ginc_icl(ginc_tasks, cfg.icl)
    icl_eval = IclEvaluator(model, tokenizer, cfg.icl, split_seed_of(run_config), cfg.batch_tokens)
    prepared = {t.name: icl_eval.prepare(t) for t in tasks if not isinstance(t, GincTask)}
    ginc_eval = None
    if ginc_tasks:
        ginc_eval = GincEvaluator(model, tokenizer, cfg.icl, world, cfg.batch_tokens)
        for t in ginc_tasks:  # the length fits, the world can make its prompts (ood: a held-out concept), and
            ginc_eval.k_max_fit(t)  # the tokenizer maps symbol i to token i: one 0-shot prompt made and encoded
            ginc_eval.encode(t, ginc_eval.world.prompts(t.example_len, 0, 1, ood=t.ood, seed=0))
    plan = _Plan(lengths, tasks, icl_eval, prepared, ginc_tasks, ginc_eval, leak_note=_unchecked_leak(run_config, tasks))
    if notes and plan.leak_note:  # (once a run: said at train.py's end-of-run evaluation, not at its start-up check
        print(plan.leak_note, file=sys.stderr, flush=True)  # too: found by review)
    if cfg.ppl.enabled:
        data_cfg = merge_data(run_config.get("data") or {}, cfg.ppl.data)
        if not data_cfg.get("source") and not data_cfg.get("_target_"):
            raise DataError("the run config has no data source (data._target_ or data.source), so the LM "
                            "validation corpus is unknown; pass ppl.data={source: text_files, paths: [val.txt]} "
                            "or turn perplexity off with ppl.enabled=false")
        # cache_dir= (empty): train.py's own run's cache; a checkpoint's recorded folder is not written into (one from
        # elsewhere chose where the tokens of any file it names went: found by review): MOMATTN_CACHE's instead
        own_cache, cache_dir = bool(cache_dir), cache_dir or (data_cfg.get("cache_dir") if training else None)
        plan.data_cfg = data_cfg
        if read_corpus:
            try:
                plan.val = corpus.load_tokens(data_cfg, tokenizer, "val", cache_dir)
                plan.train = corpus.load_tokens(data_cfg, tokenizer, "train", cache_dir) if cfg.ppl.train else None
            except (ConfigError, DataError) as e:
                raise _corpus_error(e, cfg.ppl.data, cache_dir if own_cache else None) from None
            for split, tokens in (("validation", plan.val), ("training", plan.train)):  # read now: scored after
                if tokens is not None and (short := [n for n in lengths if len(tokens) < n]):  # training, it failed there
                    raise DataError(f"the perplexity corpus's {split} split has only {len(tokens)} tokens, fewer than "
                                    f"one window of {max(short)}; lower ppl.lengths (to at most {len(tokens)}) or "
                                    "evaluate on a larger corpus")
    return plan


def check_same_corpus(data_cfg: Mapping, trained_on: str, label: str) -> None:
    """The run's own corpus, split again for its validation perplexity, against the one the checkpoint trained on
    (its fingerprint, kept since session 37): documents added to a file moved others across the split, and 15 of
    the 25 'validation' documents of such a corpus had been trained on, scored without a word."""
    from momattn.data.sources import make_source

    try:
        source = make_source(data_cfg)
        # (same_rows: the rows under an earlier version of the source's rules, which moved none across the split)
        same = source.fingerprint() == trained_on or hasattr(source, "same_rows") and source.same_rows(trained_on)
    except (ConfigError, DataError, OSError):
        return  # the corpus was read (and checked) already; a source without files has no other fingerprint
    if not same:
        print(f"[momattn] warning: {label}: the run's LM corpus is not the one its checkpoint trained on (its files "
              "changed, or moved, since): the validation split made from it now may hold documents the model "
              "trained on, so its Valid perplexities can read too low. Evaluate on held-out text with ppl.data=..., "
              "or restore the corpus", file=sys.stderr, flush=True)


def _corpus_error(e: ConfigError | DataError, override: Mapping | None, own_cache: str | None = None
                  ) -> ConfigError | DataError:
    """An error of the perplexity corpus with its keys named as the evaluation sets them (the loaders name them
    as train.py does): data.X -> ppl.data.X, data=hf -> ppl.data.source=hf; a culprit the checkpoint's own data
    section gave, not ppl.data, is said to be so. own_cache: the evaluation's own cache_dir= (evaluate.py,
    analyze.py), named as the culprit of a token cache folder that cannot be made."""
    text = re.sub(r"(?<![\w.])data\.(?=\w)", "ppl.data.", str(e).rstrip("."))
    text = re.sub(r"(?<![\w.])data=(?=\w)", "ppl.data.source=", text)
    if own_cache and "token cache" in text:  # the loader's advice names keys that this cache_dir= overrides
        text = re.sub(r"; set cache_dir \(evaluate.py, analyze.py\).*", "", text)
        return type(e)(f"cache_dir={own_cache}: {text}; set cache_dir= to a writable folder")
    culprit = re.search(r"ppl\.data\.(\w+)", text)
    if culprit and culprit[1] not in (override or {}):
        text += (f". ppl.data.{culprit[1]} is not set by ppl.data but taken from the training run's data section; "
                 f"set it for the evaluation with ppl.data={{{culprit[1]}: ...}}, or turn perplexity off with "
                 "ppl.enabled=false")
    return type(e)(text)


def check_evaluation(model: LanguageModel, tokenizer, run_config: Mapping, eval_cfg: Mapping | EvalConfig,
                     cache_dir: str | None = None, read_corpus: bool = True, trained_on: str | None = None,
                     training: bool = False) -> None:
    """Everything evaluate_model checks before scoring (tasks found and encoded against the model's context,
    perplexity lengths, the LM corpus read), without scoring: train.py calls it before training, so that a
    setting the evaluation cannot take fails at start-up, not after hours of training. read_corpus=False: the
    perplexity corpus is not read (train.py's own, which it has just read, or streams). training: train.py's
    check, whose advice may name its data.* keys."""
    cfg = eval_cfg if isinstance(eval_cfg, EvalConfig) else EvalConfig.from_mapping(eval_cfg, "eval")
    _plan(model, tokenizer, to_plain(run_config) or {}, cfg, cache_dir, read_corpus, trained_on, training, notes=False)


def evaluate_model(model: LanguageModel, tokenizer, run_config: Mapping, eval_cfg: Mapping | EvalConfig,
                   out_dir: str | os.PathLike, label: str, cache_dir: str | None = None,
                   trained_on: str | None = None, training: bool = False) -> ModelResult:
    """Perplexity and ICL accuracy of one model (write_reports turns a list of these into the reports).

    run_config: the resolved training config (its `data` section names the LM corpus, the split seed and,
    for GINC, the world the prompts come from); eval_cfg: the `ppl` / `icl` / `batch_tokens` sections
    (EvalConfig or a mapping); out_dir receives the per-example ICL predictions
    (icl_predictions_<label>.jsonl). training: train.py's end-of-run evaluation of its own run (its data.cache_dir
    is used)."""
    cfg = eval_cfg if isinstance(eval_cfg, EvalConfig) else EvalConfig.from_mapping(eval_cfg, "eval")
    run_config = to_plain(run_config) or {}
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    result = ModelResult(label=label, attention=attention_kind(model), model=describe(model),
                         tokenizer={"name": tokenizer.name, "vocab_size": tokenizer.vocab_size,
                                    "fingerprint": getattr(tokenizer, "fingerprint", None)},
                         eval_config=asdict(cfg))
    plan = _plan(model, tokenizer, run_config, cfg, cache_dir, trained_on=trained_on, training=training)
    if plan.leak_note:
        result.notes.append(plan.leak_note.removeprefix("[momattn] note: "))
    if cfg.ppl.enabled and not cfg.ppl.data and trained_on:
        check_same_corpus(plan.data_cfg, trained_on, label)
    if cfg.batch_tokens < model.config.block_size:
        print(f"[momattn] note: batch_tokens={cfg.batch_tokens} is below the model's context of "
              f"{model.config.block_size} tokens, so every sequence is scored in a batch of its own (slow; the "
              "default is 4096, or more on a GPU)", file=sys.stderr, flush=True)
    if cfg.ppl.enabled:
        evaluator = PerplexityEvaluator(model, tokenizer, cfg.ppl.max_windows, cfg.batch_tokens)
        result.ppl = evaluator.evaluate(plan.val, plan.lengths, plan.train)
        result.ppl.data = plan.data_cfg
        result.timing_s["ppl"] = time.perf_counter() - t0
    if cfg.icl.enabled:
        t1 = time.perf_counter()
        icl_eval, ginc_eval = plan.icl_eval, plan.ginc_eval
        done = icl_eval.evaluate_tasks(list(plan.prepared.values()))
        if ginc_eval is not None:
            done.update(ginc_eval.evaluate_tasks(plan.ginc_tasks))
        result.icl = icl_result(cfg.icl, {t.name: done[t.name] for t in plan.tasks}, icl_eval.split_seed,
                                GINC_PROTOCOL if plan.ginc_tasks else None)
        predictions = icl_eval.predictions + (ginc_eval.predictions if ginc_eval else [])
        atomic_write_text(out_dir / predictions_name(label), "".join(json_text(p) + "\n" for p in predictions))
        result.timing_s["icl"] = time.perf_counter() - t1
    result.timing_s["total"] = time.perf_counter() - t0
    return result


def flat_metrics(result: ModelResult | Mapping) -> dict[str, float]:
    """Namespaced scalars for a logger: eval/ppl@256, eval/bpb@256, eval/train_ppl@1024, icl/sst2/acc
    (headline k), icl/sst2/acc@k4, icl/sst2/acc_sum@k4, icl/sst2/k_used@k4, icl/ginc/acc_cand@k8,
    icl/avg/acc (tasks that fit), icl/avg/n_tasks@k4 (how many), ..."""
    r = as_model_result(result)
    out: dict[str, float | None] = {}
    if r.ppl:
        for n, v in r.ppl.valid.items():
            out[f"eval/ppl@{n}"], out[f"eval/bpb@{n}"] = v.ppl, v.bpb
        for n, v in r.ppl.train.items():
            out[f"eval/train_ppl@{n}"] = v.ppl
    if r.icl:
        k = r.icl.headline_k
        for name, t in r.icl.tasks.items():
            # accuracies only where their k fits, as the report ("does not fit") and the average: a k whose prompts
            # placed fewer demonstrations logged a near zero-shot score under its k (found by review); k_used always
            out[f"icl/{name}/acc"] = t.shots[k].acc if t.shots[k].fits else None
            for s, v in t.shots.items():
                if v.fits:
                    out[f"icl/{name}/acc@k{s}"] = v.acc
                    out[f"icl/{name}/acc_sum@k{s}"] = v.acc_sum_lp
                    out[f"icl/{name}/acc_cand@k{s}"] = v.acc_cand
                out[f"icl/{name}/k_used@k{s}"] = v.k_used_mean
        out["icl/avg/acc"] = r.icl.avg[k].acc if k in r.icl.avg else None
        for s, v in r.icl.avg.items():  # each k's Avg is over the tasks that fit there: n_tasks says how many
            out[f"icl/avg/acc@k{s}"] = v.acc
            out[f"icl/avg/n_tasks@k{s}"] = v.n_tasks
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(v)}


def predictions_name(label: str) -> str:
    """The file of a model's per-example ICL predictions in the evaluation's folder."""
    return f"icl_predictions_{slug(label)}.jsonl"


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "model"


def variant_labels(params: Sequence[Mapping]) -> list[str]:
    """Each model's attention kind, and where models of one kind differ in its settings (an eta sweep), what differs:
    'momentum(eta=0.3)', 'momentum(learnable_eta=True)'. params: each model's attention config (with its kind);
    vanilla's settings are unused, so never named."""
    from momattn.model import ATTENTION_SETTINGS, AttentionConfig

    defaults = asdict(AttentionConfig())  # a setting an older checkpoint lacks had its default value then
    labels = [str(p["kind"]) for p in params]
    for kind in set(labels) - {"vanilla"}:
        idx = [i for i, k in enumerate(labels) if k == kind]
        value = lambda i, k: params[i].get(k, defaults.get(k))  # noqa: E731
        # the settings this kind reads (an older checkpoint's include_current under multirate_ema, accepted and
        # ignored then, split one variant in two: second diff review)
        keys = sorted({k for i in idx for k in params[i] if k != "kind" and kind in ATTENTION_SETTINGS.get(k, (kind,))})
        varying = [k for k in keys if len({json.dumps(value(i, k), default=str) for i in idx}) > 1]
        for i in idx if varying else ():
            labels[i] = f"{kind}(" + ", ".join(f"{k}={value(i, k)}" for k in varying) + ")"
    return labels


def checkpoint_labels(paths: Sequence[str], kinds: Sequence[str]) -> list[str]:
    """Each checkpoint's attention variant; a variant that repeats gets the shortest path tail that tells
    its checkpoints apart, also as a file name (slug: the predictions file of one would replace another's)."""
    labels = list(kinds)
    for kind in set(kinds):
        idx = [i for i, k in enumerate(kinds) if k == kind]
        if len(idx) < 2:
            continue
        parts = [Path(paths[i]).with_suffix("").parts for i in idx]
        for n in range(1, max(map(len, parts)) + 1):
            tails = ["/".join(p[-n:]) for p in parts]
            distinct = len({slug(t) for t in tails}) == len(tails)
            if distinct:
                break
        for j, (i, tail) in enumerate(zip(idx, tails)):
            labels[i] = f"{kind} [{tail}]" if distinct else f"{kind} [{tail} #{j + 1}]"
    return labels


def hydra_output_dir() -> Path:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except (ImportError, ValueError):  # not running under Hydra
        return Path.cwd()


EVAL_KEYS = ("ppl", "icl", "batch_tokens")


def eval_overridden() -> bool:
    """Whether the command line set any evaluation setting (ppl.*, icl.*, batch_tokens); True outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = HydraConfig.get().overrides.task
    except (ImportError, ValueError):  # not running under Hydra: the caller's config is explicit
        return True
    return any(o.lstrip("+~").split("=", 1)[0].split(".", 1)[0] in EVAL_KEYS for o in overrides)


def log_wandb(results: Sequence[ModelResult], out_dir: Path, wandb_cfg: Mapping) -> None:
    """One W&B run per checkpoint, in the run folder, under train.py's rules (momattn.wandb_runs: offline unless
    wandb_cfg says offline: false or WANDB_MODE=online, none for WANDB_MODE=disabled, offline when W&B cannot be
    reached; sync an offline run later with `wandb sync`)."""
    from momattn.wandb_runs import folder_group, start_run, where

    for r in results:
        train_run = train_run_id_of(r.checkpoint)  # the training run this checkpoint logged to, to find it by
        run = start_run(out_dir, wandb_cfg, f"the evaluation of {r.label}",
                        group=wandb_cfg.get("group") or folder_group(out_dir), tags=list(wandb_cfg.get("tags") or []),
                        job_type="evaluate", name=r.label,
                        config={"checkpoint": r.checkpoint, "attention": r.attention, "model": r.model,  # eta etc.
                                "step": r.step, "eval": r.eval_config, "train_run_id": train_run})
        if run is None:
            return
        try:
            metrics = flat_metrics(r)
            run.log(metrics)
            run.summary.update(metrics)
            run_dir, offline = where(run)
        finally:
            run.finish()
        print(f"[momattn] W&B run of {r.label}: {run_dir}"
              + (f" (offline; upload with: wandb sync {shell_quote(str(run_dir))})" if offline else ""), file=sys.stderr)


def train_run_id_of(checkpoint: str | None) -> str | None:
    from momattn.checkpoint import read_meta

    try:
        return (read_meta(checkpoint).get("momattn") or {}).get("wandb_run_id") if checkpoint else None
    except Exception:  # the link is a convenience: an unreadable checkpoint was reported when it was evaluated
        return None


def check_saved(path, meta: dict, eval_cfg: EvalConfig, cache_dir: str | None = None) -> None:
    """check_evaluation of a checkpoint from its metadata alone (no weights are read): before any is scored."""
    from types import SimpleNamespace

    from momattn.checkpoint import checkpoint_tokenizer, model_config_from

    stand_in = SimpleNamespace(config=model_config_from(meta, path))  # all that the preparation reads of a model
    check_evaluation(stand_in, checkpoint_tokenizer(meta, path), dict(meta.get("config") or {}), eval_cfg, cache_dir,
                     trained_on=meta.get("data_fingerprint"))


def _check_one(path, label: str, meta: dict, conf: EvaluateConfig) -> None:
    try:
        check_saved(path, meta, conf.eval_section(), conf.cache_dir)
    except (ConfigError, DataError) as e:
        raise type(e)(f"checkpoint '{path}' ({label}): {e}") from None


def _scored_before(path: Path, eval_cfg: EvalConfig, inputs: dict) -> dict[tuple[str, str], ModelResult]:
    """(checkpoint, label) -> its result in an earlier results.json of this folder, where scored by today's
    protocols with these settings and the local files it read (`inputs`, eval_inputs') unchanged (the caller
    checks step and weights)."""
    from momattn.eval.report import read_results

    settings = json.loads(json.dumps(asdict(eval_cfg)))
    return {(r.checkpoint, r.label): r for r in read_results(path) or ()
            if r.eval_config == settings and r.inputs == inputs and r.weights is not None}


def _say_dropped(out: Path, paths: Sequence[str], labels: Sequence[str]) -> None:
    """Before any work: the checkpoints of an earlier evaluation in this folder that this one does not score, whose
    rows its reports replace (a rerun with fewer checkpoints dropped them without a word)."""
    try:
        rows = json.loads((out / "results.json").read_text())["checkpoints"]
        before = [(r.get("checkpoint"), r.get("label")) for r in rows]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return  # unreadable: nothing to name (it is replaced all the same)
    now = {os.path.abspath(os.path.expanduser(p)) for p in paths}  # (a label changes beside another checkpoint of
    # its kind: 'vanilla' became 'vanilla [a/last]', named as dropped though scored: diff review)
    gone = [label or checkpoint for checkpoint, label in before if checkpoint not in now]
    if gone:
        print(f"[momattn] {out / 'results.json'} holds an earlier evaluation of {len(gone)} checkpoint"
              f"{'s' if len(gone) > 1 else ''} this one does not score ({', '.join(map(str, gone))}): this "
              "evaluation's reports replace its rows; to keep them, pass those checkpoints too (ckpt_paths=...) or "
              "write into another folder (hydra.run.dir=...)", file=sys.stderr, flush=True)


def run_evaluate(cfg: Mapping, out_dir: str | os.PathLike | None = None) -> list[ModelResult]:
    """evaluate.py: every checkpoint in cfg evaluated with the same settings; reports in the run folder.
    With sweep_dir: the sweep's verdict (momattn.eval.sweep), sweep.md / sweep.json in the run folder."""
    from momattn.checkpoint import model_from, read_checkpoint, weights_digest
    from momattn.eval.sweep import eval_inputs

    conf = EvaluateConfig.from_mapping(cfg)
    if conf.icl.enabled:  # an unknown task name: said now, not after a checkpoint's weights were read and checked,
        resolve_tasks(conf.icl.tasks)  # nor blamed on a sweep's first job (found by review)
    out = Path(out_dir) if out_dir is not None else hydra_output_dir()
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(conf.device)
    if conf.sweep_dir:
        if conf.ckpt_path or conf.ckpt_paths:
            raise ConfigError("pass either sweep_dir or ckpt_path / ckpt_paths, not both")
        from momattn.eval.sweep import run_sweep

        # no evaluation setting on the command line: each run is judged by its own end-of-run settings (train.py's
        # eval: section; a GINC run's are GINC tasks), so their results are reused instead of recomputed
        run_sweep(conf.sweep_dir, conf.eval_section(), out, device, cache_dir=conf.cache_dir,
                  own_settings=not eval_overridden(), wandb_cfg=(conf.logger or {}).get("wandb"))
        return []
    paths = conf.checkpoint_paths()
    metas, steps = [], []
    for p in paths:  # every checkpoint readable before hours of work (one in memory at a time)
        ckpt = read_checkpoint(p)
        metas.append(ckpt["momattn"])
        steps.append(ckpt.get("global_step"))  # an int (read_checkpoint checks it), or None: into results.json
        del ckpt
    # by attention variant (momentum(eta=0.3) beside momentum(eta=0.5): both read "momentum"; found by review)
    labels = checkpoint_labels(paths, variant_labels([m["model_config"]["attention"] for m in metas]))
    if len(paths) > 1:  # each one's tasks, lengths and corpus checked before any is scored (a GINC checkpoint
        # among text ones failed after the first had been scored); the config and tokenizer suffice, no weights
        for path, meta, label in zip(paths, metas, labels):
            _check_one(path, label, meta, conf)
    earlier = (out / "results.json").is_file()  # an evaluation was written here before: its files, not others'
    if earlier and len(paths) == 1:  # one, into an earlier evaluation's folder: checked before its files are
        # touched (a refused setting had removed the earlier predictions, which a rerun then reused without: flows
        # review)
        check_saved(paths[0], metas[0], conf.eval_section(), conf.cache_dir)
    if earlier:
        _say_dropped(out, paths, labels)
    inputs = eval_inputs(conf.eval_section())  # the local files the evaluation reads, as they are now
    done = _scored_before(out / "results.json", conf.eval_section(), inputs) if earlier else {}
    for path, label in zip(paths, labels):  # an earlier evaluation's predictions of a checkpoint to score again:
        # gone now, not at the end (a stop part-way left them beside the new results; found by review)
        if earlier and (os.path.abspath(os.path.expanduser(path)), label) not in done:
            (out / predictions_name(label)).unlink(missing_ok=True)
    results: list[ModelResult] = []
    for i, (path, meta, label, step) in enumerate(zip(paths, metas, labels, steps)):
        ckpt = read_checkpoint(path, verify=True)  # the weights, step and settings of one read (found by review)
        model, tokenizer = model_from(ckpt, path, map_location=device)
        if ckpt.get("global_step") != step or ckpt["momattn"].get("model_config") != meta.get("model_config"):
            print(f"[momattn] warning: {path} changed since it was first read (step {step}, now "
                  f"{ckpt.get('global_step')}; a run still training?): its row is the weights read now",
                  file=sys.stderr, flush=True)
            step, meta = ckpt.get("global_step"), ckpt["momattn"]
        del ckpt
        checkpoint, weights = os.path.abspath(os.path.expanduser(path)), weights_digest(model)
        if (res := done.get((checkpoint, label))) is not None and (res.step, res.weights) == (step, weights) and (
                (out / predictions_name(label)).is_file() or not conf.icl.enabled):  # (its predictions gone: scored again, for them)
            # scored into this folder by an evaluation a stop cut short: every checkpoint was scored again
            print(f"[momattn] {path} ({label}): scored into this folder before, with these settings: reused",
                  file=sys.stderr, flush=True)
        else:
            print(f"[momattn] evaluating {path} ({label}) on {device}", file=sys.stderr, flush=True)
            run_config = dict(meta.get("config") or {})
            res = evaluate_model(model, tokenizer, run_config, conf.eval_section(), out, label,
                                 cache_dir=conf.cache_dir, trained_on=meta.get("data_fingerprint"))
            # as a path that still names the file from another folder (a relative one named it from where
            # evaluate.py ran)
            res.checkpoint, res.step, res.weights = checkpoint, step, weights  # which weights, as a sweep's job
            res.inputs = inputs
        results.append(res)
        # after each checkpoint: finished ones survive a later crash, marked as a part
        written = write_reports(results, out, pending=labels[i + 1:])
        del model
    if earlier:  # the earlier evaluation's plots and predictions that this one did not write again contradicted it
        remove_stale(out, ["icl_predictions_*.jsonl", "ppl.png", "icl.png"],
                     {predictions_name(label) for label in labels if conf.icl.enabled} | set(written))
    if conf.logger and "wandb" in conf.logger:
        log_wandb(results, out, conf.logger["wandb"])
    print(markdown_report(results))
    others = sorted(p.name for p in out.glob("icl_predictions_*.jsonl")) + \
        [name for name in ("evaluate.log",) if (out / name).exists()]  # (it named the reports alone: docs review)
    print(f"reports written to {out}/ ({', '.join([*written, *others])})")
    return results
