"""The training story: validate config -> tokenizer -> tokens -> model -> trainer -> fit -> report -> evaluate."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from momattn.callbacks import AtomicCheckpointIO, FaultInjection, PreemptionCheckpoint, Throughput
from momattn.checkpoint import checkpoint_meta, model_config_from, read_checkpoint
from momattn.config import validate_train_config
from momattn.data.corpus import default_cache_dir, load_tokens
from momattn.data.datamodule import TokenDataModule
from momattn.data.sources import make_source
from momattn.errors import CheckpointError, ConfigError
from momattn.lit import LitGPT
from momattn.model import GPTConfig
from momattn.tokenizer import Tokenizer, file_tokenizer, gpt2_tokenizer, train_bpe


def _hydra_runtime() -> tuple[Path | None, list[str], bool, str | None, int | None]:
    """(output dir, overrides, multirun?, sweep dir, job number) when running under Hydra."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None, [], False, None, None
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    return (Path(hc.runtime.output_dir), list(hc.overrides.task), multirun, hc.sweep.dir if multirun else None,
            hc.job.num if multirun else None)


def build_tokenizer(tok_cfg, data_cfg: dict, cache_dir: Path) -> Tokenizer:
    if tok_cfg.kind == "gpt2":
        return gpt2_tokenizer()
    if tok_cfg.kind == "file":
        if not tok_cfg.path:
            raise ConfigError("tokenizer=file needs tokenizer.path=/path/to/tokenizer.json")
        return file_tokenizer(tok_cfg.path)
    source = make_source(data_cfg)
    cache = cache_dir / "tokenizers" / f"bpe{tok_cfg.vocab_size}-{source.fingerprint()}.json"
    return train_bpe(lambda: source.documents("train"), tok_cfg.vocab_size, cache)


def resolve_ckpt_path(ckpt_path: str | None, out_dir: Path, root_dir: Path) -> Path | None:
    """`ckpt_path=last` -> this run folder's last.ckpt, else the newest last.ckpt under outputs/ and multirun/."""
    if not ckpt_path:
        return None
    if ckpt_path != "last":
        return Path(ckpt_path).expanduser()
    own = out_dir / "checkpoints" / "last.ckpt"
    if own.exists():
        return own
    found = [p for d in ("outputs", "multirun") for p in (root_dir / d).glob("**/checkpoints/last.ckpt")]
    if not found:
        raise CheckpointError(f"ckpt_path=last: no last.ckpt in {out_dir}/checkpoints nor under {root_dir}/outputs; "
                              "pass the checkpoint's path, e.g. ckpt_path=outputs/<date>/<time>/checkpoints/last.ckpt")
    return max(found, key=lambda p: p.stat().st_mtime)


def unigram_ppl(train_tokens, val_tokens, vocab_size: int) -> float:
    """Perplexity on val of the add-one-smoothed unigram distribution of train: the bar any LM must clear."""
    counts = np.bincount(np.asarray(train_tokens), minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(np.exp(-logp[np.asarray(val_tokens)].mean()))


def padded_vocab(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


def _check_compatible(resumed: GPTConfig, current: GPTConfig, path: Path) -> None:
    a, b = asdict(resumed), asdict(current)
    diff = {k: (a[k], b[k]) for k in a if a[k] != b[k] and k != "dropout"}  # dropout may change on resume
    if diff:
        raise CheckpointError(
            f"checkpoint '{path}' was trained with a different model: "
            + "; ".join(f"{k}: checkpoint {v[0]} vs config {v[1]}" for k, v in diff.items())
            + ". Resume with the checkpoint's own model/attention settings (or start a new run without ckpt_path)"
        )


def _instantiate(conf, what: str, **kwargs):
    """hydra.utils.instantiate, with a failure reported as one ConfigError naming the config entry."""
    try:
        return hydra.utils.instantiate(conf, **kwargs)
    except Exception as e:
        cause = e.__cause__ or e
        raise ConfigError(f"{what} could not be created: {str(cause).splitlines()[0][:300]}") from e


def _instantiate_all(node, what: str) -> list:
    return [_instantiate(conf, f"{what}.{name}") for name, conf in (node or {}).items() if conf is not None]


def run_train(cfg: DictConfig) -> float | None:
    """Train one model as the composed config says; return the metric named by cfg.optimized_metric."""
    if "hydra" in cfg:  # tests compose with return_hydra_config=True; the run itself never needs that node
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
    typed = validate_train_config(cfg)
    hydra_out, overrides, multirun, sweep_dir, job_num = _hydra_runtime()
    out_dir = Path(hydra_out or cfg.paths.output_dir).resolve()
    root_dir = Path(cfg.paths.root_dir).resolve()
    cache_dir = Path(typed["data"].cache_dir or typed["paths"].cache_dir or default_cache_dir()).expanduser()
    data_cfg = {k: v for k, v in asdict(typed["data"]).items() if k not in ("batch_size", "val_batches", "num_workers", "cache_dir")}
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, out_dir, root_dir)
    resume = read_checkpoint(ckpt_path)["momattn"] if ckpt_path else None
    tokenizer = Tokenizer.from_json(resume["tokenizer"], resume.get("tokenizer_name", "tokenizer")) if resume \
        else build_tokenizer(typed["tokenizer"], data_cfg, cache_dir)
    m = typed["model"]
    model_config = GPTConfig(block_size=m.block_size, vocab_size=padded_vocab(tokenizer.vocab_size, m.vocab_multiple),
                             n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd, n_inner=m.n_inner,
                             dropout=m.dropout, bias=m.bias, pos_emb=m.pos_emb, attention=typed["attention"])
    if resume:
        _check_compatible(model_config_from(resume), model_config, ckpt_path)

    train_tokens = load_tokens(data_cfg, tokenizer, "train", cache_dir)
    val_tokens = load_tokens(data_cfg, tokenizer, "val", cache_dir)
    if int(max(train_tokens.max(initial=0), val_tokens.max(initial=0))) >= model_config.vocab_size:
        raise CheckpointError("token ids exceed the model's vocabulary: the tokenizer and the model do not match")

    baseline = unigram_ppl(train_tokens, val_tokens, model_config.vocab_size)
    t = cfg.trainer
    try:
        max_steps, accumulate = int(t.max_steps), int(t.get("accumulate_grad_batches", 1))
    except (TypeError, ValueError):
        raise ConfigError(f"trainer.max_steps={t.max_steps!r} and trainer.accumulate_grad_batches="
                          f"{t.get('accumulate_grad_batches')!r} must be integers") from None
    if max_steps < 1 or accumulate < 1:
        raise ConfigError(f"trainer.max_steps={max_steps} and trainer.accumulate_grad_batches={accumulate} must be >= 1")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    meta = checkpoint_meta(model_config, tokenizer, resolved)
    lit = LitGPT(model_config, typed["optim"], max_steps, meta)
    lit.flops_per_batch = lit.model.flops_per_token() * typed["data"].batch_size * model_config.block_size
    if cfg.compile:  # compile the forward only: parameter names (and so checkpoints) stay the same
        lit.model.forward = torch.compile(lit.model.forward)
    dm = TokenDataModule(train_tokens, val_tokens, model_config.block_size, typed["data"].batch_size, max_steps,
                         accumulate, typed["data"].val_batches, cfg.seed, typed["data"].num_workers)

    ckpt_dir = out_dir / "checkpoints"
    preempt = PreemptionCheckpoint(ckpt_dir)
    callbacks = _instantiate_all(cfg.get("callbacks"), "callbacks")
    if os.environ.get("MOMATTN_FAULT"):  # before PreemptionCheckpoint, so that it sees an injected SIGTERM at once
        callbacks.append(FaultInjection(os.environ["MOMATTN_FAULT"]))
    callbacks.append(preempt)
    throughput = Throughput(batch_size_fn=lambda b: b[0].size(0), length_fn=lambda b: b[0].numel(),
                            window_size=max(2, min(20, int(cfg.trainer.log_every_n_steps))))
    callbacks.append(throughput)
    loggers = _make_loggers(cfg, out_dir, resume, multirun, sweep_dir, job_num)
    trainer_kwargs: dict[str, Any] = dict(callbacks=callbacks, logger=loggers or False, default_root_dir=str(out_dir),
                                          plugins=[AtomicCheckpointIO()])
    if typed["optim"].grad_clip > 0:
        trainer_kwargs["gradient_clip_val"] = typed["optim"].grad_clip
    trainer: pl.Trainer = _instantiate(cfg.trainer, "trainer", **trainer_kwargs)

    print(f"[momattn] {model_config.attention.kind} attention, {lit.model.num_params() / 1e6:.2f}M parameters, "
          f"{len(train_tokens) / 1e6:.2f}M train tokens, {tokenizer!r}; output: {out_dir}", file=sys.stderr)
    t0 = time.perf_counter()
    try:
        trainer.fit(lit, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path else None)
    except SIGTERMException:
        where = preempt.saved_path or (ckpt_dir / "last.ckpt")
        again = " ".join(o for o in overrides if not o.startswith(("ckpt_path=", "hydra.run.dir=")))
        print(f"\n[momattn] SIGTERM received: checkpoint written to {where} at step {trainer.global_step}.\n"
              f"Resume with: python train.py {again} ckpt_path={where} hydra.run.dir={out_dir}".replace("  ", " "),
              file=sys.stderr, flush=True)
        return None
    else:
        speed = _throughput_summary(throughput)
        speed["fit_seconds"] = round(time.perf_counter() - t0, 1)
        return _report(cfg, trainer, lit, tokenizer, resolved, out_dir, loggers, baseline, speed)
    finally:
        _finish_wandb(loggers)


def _make_loggers(cfg, out_dir: Path, resume: dict | None, multirun: bool, sweep_dir, job_num) -> list:
    loggers = []
    for name, conf in (cfg.get("logger") or {}).items():
        if conf is None:
            continue
        extra = {}
        if "wandb" in str(conf.get("_target_", "")):
            extra["id"] = conf.get("id") or (resume or {}).get("wandb_run_id")
            if multirun and not conf.get("group"):
                extra["group"] = Path(sweep_dir).name
            if not conf.get("name"):
                extra["name"] = f"{cfg.attention.kind}-{job_num}" if multirun else None
        loggers.append(_instantiate(conf, f"logger.{name}", **extra))
    return loggers


def _finish_wandb(loggers) -> None:
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish()  # one job's crash must not break the next job of a multirun


def _throughput_summary(monitor: Throughput) -> dict:
    """The ThroughputMonitor's last training window: tokens/s, FLOP/s and MFU (rank 0's device)."""
    from lightning.pytorch.trainer.states import RunningStage

    t = monitor._throughputs.get(RunningStage.TRAINING)
    try:
        m = t.compute() if t is not None else {}
    except Exception:  # too few steps for a window
        m = {}
    return {"tokens_per_sec": m.get("device/items_per_sec"), "flops_per_sec": m.get("device/flops_per_sec"),
            "mfu": m.get("device/mfu")}


def _report(cfg, trainer, lit, tokenizer, resolved, out_dir: Path, loggers, baseline: float, speed: dict):
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    value = metrics.get(cfg.optimized_metric)
    if not trainer.is_global_zero:  # DDP: rank 0 reports and evaluates
        return None if value is None else float(value)
    ckpt_cb = trainer.checkpoint_callback
    best = getattr(ckpt_cb, "best_model_path", "") or None
    last = getattr(ckpt_cb, "last_model_path", "") or None
    lines = [f"[momattn] done: {trainer.global_step} steps"]
    if "val/loss" in metrics:
        lines.append(f"  final val/loss {metrics['val/loss']:.4f}  val/ppl {metrics['val/ppl']:.2f}  "
                     f"(unigram baseline ppl {baseline:.1f})")
    if speed.get("tokens_per_sec"):
        mfu = f"  MFU {100 * speed['mfu']:.1f}%" if speed.get("mfu") else ""
        lines.append(f"  throughput {speed['tokens_per_sec']:.0f} tokens/s{mfu}; fit took {speed['fit_seconds']:.0f} s")
    lines.append(f"  checkpoints: best {best}  last {last}")
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            run_dir = Path(lg.experiment.dir).parent
            offline = "offline-run" in run_dir.name
            lines.append(f"  W&B run: {run_dir}" + (f"  (offline; upload with: wandb sync {run_dir})" if offline else ""))
        else:
            lines.append(f"  {type(lg).__name__}: {getattr(lg, 'log_dir', None) or getattr(lg, 'save_dir', '')}")
    print("\n".join(lines), file=sys.stderr, flush=True)
    summary = {"attention": resolved["attention"], "steps": trainer.global_step, "unigram_val_ppl": baseline,
               "best_checkpoint": best, "last_checkpoint": last, **speed,
               **{k: v for k, v in metrics.items() if k.startswith(("val/", "train/loss"))}}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))

    if cfg.get("run_eval") and cfg.get("eval"):
        from momattn.eval.runner import evaluate_model, flat_metrics, write_reports

        model = lit.model.eval()
        label = resolved["attention"]["kind"]
        results = evaluate_model(model, tokenizer, resolved, cfg.eval, out_dir / "eval", label)
        write_reports([results], out_dir / "eval")
        for lg in loggers:  # eval/ppl@L, icl/<task>/acc, ... next to the training curves
            lg.log_metrics(flat_metrics(results), step=trainer.global_step)
            lg.save()
        print(f"[momattn] evaluation tables: {out_dir / 'eval' / 'results.md'}", file=sys.stderr)
    return None if value is None else float(value)
