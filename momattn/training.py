"""The training story: config -> tokenizer -> model -> tokens -> trainer -> fit -> report -> evaluate."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from momattn import lightning_compat as compat
from momattn import loggers as logs
from momattn.callbacks import AtomicCheckpointIO, PreemptionCheckpoint, Throughput, throughput_summary
from momattn.checkpoint import (
    check_compatible,
    checkpoint_meta,
    checkpoint_tokenizer,
    holds_optimizer,
    model_config_from,
    newest_checkpoint,
    read_meta,
    resolve_ckpt_path,
    verify_file,
    weights_digest,
)
from momattn.cli import (
    FULL_DISK,
    SWEEP_ENV,
    HydraJob,
    another_runs_checkpoint,
    best_files_only,
    changed_overrides,
    folder_holds_a_run,
    go_on,
    hold_run_folder,
    hydra_job,
    relaunch_note,
    resume_from,
    retyped,
    run_held,
    same_run,
    saved_checkpoints,
    search_stop,
)
from momattn.config import TrainConfig, load_train_config, world_size
from momattn.console import quiet_console, quiet_resume
from momattn.data.corpus import load_tokens, own_documents
from momattn.data.datamodule import TokenDataModule, check_window
from momattn.data.sources import HubCorpus
from momattn.data.streaming import StreamingHubCorpus, StreamWindows
from momattn.entry_signals import (
    die_by_default,
    die_with_parent,
    end_now,
    end_now_if_importing,
    importing,
    is_default,
    is_default_int,
    started_ranks_know_me,
)
from momattn.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DiskFullError,
    LaunchError,
    NonFiniteLossError,
    first_line,
)
from momattn.io import atomic_write_text, json_text, remove_stale_temps, restore_left_aside
from momattn.lit import LitGPT, with_last_window
from momattn.loss import before_compile
from momattn.memory import check_fits
from momattn.metrics import unigram_ppl
from momattn.model import GPT, GPTConfig
from momattn.progress import TrainProgress
from momattn.quoting import shell_arg, shell_quote
from momattn.schema import check_arguments, instantiate, instantiate_all
from momattn.signal_watch import PREEMPTED_EXIT, SignalWatch
from momattn.tokenizer import Tokenizer, bpe_cache_file, build_tokenizer
from momattn.utils import DIVERGENCE, THRESHOLD, early_stopped, stop_reason
from momattn.wandb_runs import folder_group

SUMMARY_METRICS = ("val/", "train/loss", "train/lr", "train/skipped_nonfinite")  # summary.json's metrics: every optimized_metric (config.LOGGED)
RESUME_ENV = "MOMATTN_RESUME_CKPT"  # rank 0's resume choice, for the local ranks Lightning starts
RANK_GRACE_S = 30  # how long rank 0 may take to end by itself once a rank it started has ended with an error


def warmup_warning(warmup_steps: int, max_steps: int, lr: float) -> str | None:
    """A warm-up at least as long as the run (legitimate in a smoke run of a long recipe, so not an error)."""
    if warmup_steps < max_steps:
        return None
    return (f"[momattn] warning: optim.warmup_steps={warmup_steps} >= trainer.max_steps={max_steps}: the learning "
            f"rate stays in its warm-up (at most {max_steps / (warmup_steps + 1):.0%} of optim.lr={lr:g}) and never "
            "decays")


def logging_note(log_every: int | None, max_steps: int) -> str | None:
    """A run shorter than the logging interval logs its training metrics at its last step only (said once, in place
    of Lightning's UserWarning about "the number of training batches" and "logs for the training epoch")."""
    log_every = 50 if log_every is None else log_every  # Lightning's default
    if max_steps >= log_every:
        return None
    return (f"[momattn] note: training metrics are logged every trainer.log_every_n_steps={log_every} steps, so this "
            f"run of {max_steps} logs them at its last step only; for more, e.g. trainer.log_every_n_steps=1")


def run_train(cfg: DictConfig, checked: TrainConfig | None = None) -> float | None:
    """Train one model as the composed config says; return the metric named by cfg.optimized_metric. `checked`:
    load_train_config(cfg), where the caller has checked it already (train.py does, before importing this module)."""
    guard = SigtermOutsideFit()
    die_with_parent()  # a rank started once for a sweep's jobs: again until this job's ranks meet (LitGPT.setup)
    try:
        return _train(cfg, checked, guard)
    except BaseException as e:
        if guard.fired and not (isinstance(e, SystemExit) and e.code == PREEMPTED_EXIT):
            # the SystemExit the handler raised, replaced on its way out (datasets' map pool raised a TimeoutError
            # in its `finally`): the signal still decides, not a job failure the sweep would go on after
            raise SystemExit(PREEMPTED_EXIT) from None
        raise
    finally:
        guard.close()
        hold_run_folder(None)  # however the run ended, a check after the folder was claimed included (a process
        # that goes on, a test or a sweep's next job, held it: the next run_train into it was refused as "in use")


def _train(cfg: DictConfig, checked: TrainConfig | None, guard: SigtermOutsideFit) -> float | None:
    quiet_console()
    c = checked if checked is not None else load_train_config(cfg)
    out_dir, job = Path(c.paths.output_dir).resolve(), hydra_job()
    if isinstance(c.data, HubCorpus):  # its Arrow copies of local files beside the token cache (paths.cache_dir)
        c.data.arrow_root = c.cache_dir
    guard.out_dir, guard.job = out_dir, job
    config_callbacks = check_lightning_values(c, out_dir)
    if (warning := warmup_warning(c.optim.warmup_steps, c.max_steps, c.optim.lr)) and rank_zero_only.rank == 0:
        print(warning, file=sys.stderr)
    if any(isinstance(cb, Mapping) and cb.get("save_weights_only") is True for cb in (c.callbacks or {}).values()) \
            and rank_zero_only.rank == 0:
        print("[momattn] note: save_weights_only=true: its checkpoints hold no optimizer or data position, so after a "
              "crash the run cannot be resumed from them (a SIGTERM still saves a full last.ckpt)", file=sys.stderr)
    if type(c.data).__name__ == "GincCorpus" and c.tokenizer.kind != "source" and rank_zero_only.rank == 0:
        # (refused where the run evaluates itself; without it, the checkpoint was found unscorable only by
        # evaluate.py: GINC review)
        print(f"[momattn] note: data=ginc with tokenizer={c.tokenizer.kind} trains on GINC as plain text: no GINC "
              "task can score this run's checkpoints (they read GINC symbol i as token i, which only "
              "tokenizer=source keeps; experiment=ginc sets it)", file=sys.stderr)
    if note := logging_note(c.trainer.get("log_every_n_steps"), c.max_steps):
        if rank_zero_only.rank == 0:  # (each note below was printed once per process: found by review)
            print(note, file=sys.stderr)
        warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval.*")
    pl.seed_everything(c.seed, workers=True, verbose=False)

    hold_run_folder(out_dir)
    # partial files of a run killed while saving: this host's, whose writer is gone, at any age, since this process
    # holds the run folder (a minute's wait kept a resume-at-once's for good in the finished run: DDP review)
    for tmp in remove_stale_temps(out_dir / "checkpoints", idle_s=0):
        print(f"[momattn] removed {tmp.name}, a partial checkpoint of a killed process", file=sys.stderr)
    remove_stale_temps(out_dir, idle_s=0)  # a summary.json's or log's, kept for good (DDP review)
    restore_left_aside(out_dir / "checkpoints")  # a kill between swap_into's renames (every rank: each waits for
    # the one restoring it)
    if summary := _finished_uncheckpointed(c, job, out_dir):  # (every rank: a sweep's later jobs run on the ranks it
        value = summary.get(c.optimized_metric)  # started)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    ckpt_path = _resume_from(c, job, out_dir)
    if ckpt_path is None and (held := run_held(out_dir)) and held.name != "summary.json" \
            and os.environ.get("LOCAL_RANK", "0") == "0":  # cli's check's backstop
        raise folder_holds_a_run(out_dir, [held], "hydra.sweep.dir" if job.sweep_dir else "hydra.run.dir")
    resumed = read_meta(ckpt_path) if ckpt_path else {}
    if resumed and not ckpt_path.is_dir() and "fsdp" in str(c.trainer.get("strategy")).lower():
        # ShardedFSDP.load_checkpoint refuses it too, but inside fit: once per launched process
        raise CheckpointError(f"checkpoint '{ckpt_path}' is a single file, written without FSDP; trainer=fsdp resumes "
                              "only the sharded folders it writes. Resume it with the strategy it was trained with "
                              "(trainer=ddp, or one device)")
    if resumed and not holds_optimizer(ckpt_path, resumed):
        raise CheckpointError(f"checkpoint '{ckpt_path}' holds the weights only (save_weights_only=true): it has no "
                              "optimizer, schedule or data position to resume training from. Evaluate it with "
                              "evaluate.py, or resume from a full checkpoint (last.ckpt of a run without "
                              "save_weights_only)")
    resume, start_step = resumed.get("momattn") or {}, int(resumed.get("global_step") or 0)
    same_folder = bool(resume) and same_run(ckpt_path, out_dir)
    if same_folder and rank_zero_only.rank == 0:
        _older_than_last(ckpt_path, start_step, out_dir)
    # a run an EarlyStopping callback ended, resumed with that callback: finished (Lightning restores the callback's
    # wait and patience but not the stop, so it trained on to the next validation, and further where the metric
    # improved there: a sweep resumed after a crash retrained its early-stopped jobs; found by review)
    stopped = _stopped_early(resumed, c, config_callbacks) if resume else None
    finished = bool(resume) and (start_step >= c.max_steps or stopped is not None)
    if resume and not same_folder and (held := run_held(out_dir)) and os.environ.get("LOCAL_RANK", "0") == "0":
        raise another_runs_checkpoint(ckpt_path, out_dir, held, "hydra.sweep.dir" if job.sweep_dir else
                                      "hydra.run.dir")  # (cli's check's backstop)
    if resume and start_step > c.max_steps and not (same_folder and _summary_steps(out_dir) == start_step):
        # nothing would train, and the summary would be the checkpoint's last validation, of an earlier model
        raise ConfigError(f"trainer.max_steps={c.max_steps} is below the step of {ckpt_path}, {start_step}, which its "
                          f"run had not finished: nothing would be trained, and the step-{start_step} model was never "
                          f"reported. Resume with trainer.max_steps >= {start_step}, or evaluate the checkpoint with "
                          "evaluate.py")
    if resume and job.sweep_dir is not None and c.ckpt_path == "last" and resume.get("overrides"):
        # a sweep's job N resumes folder N, whatever run is there: another value list (or order) than the one
        # that made the folders would continue one run's weights with another's settings, silently
        if changed := changed_overrides([str(o) for o in resume["overrides"]], list(job.overrides)):
            original = [o for o in map(str, resume["overrides"]) if not o.startswith(("hydra.", "ckpt_path="))]
            raise ConfigError(
                f"job {job.num} of this sweep would resume {ckpt_path}, trained with {'; '.join(changed)}: the "
                "sweep's value lists (or their order) differ from the ones that made its job folders. Resume with "
                "the sweep's original overrides plus ckpt_path=last (trainer.max_steps, logger and eval settings "
                f"may change); this job's were: {' '.join(original)}")
    if resume:
        quiet_resume(same_folder=same_folder)
        was_accumulate = ((resume.get("config") or {}).get("trainer") or {}).get("accumulate_grad_batches")
        if isinstance(was_accumulate, int) and was_accumulate != c.accumulate and start_step < c.max_steps:
            raise ConfigError(
                f"the checkpoint's run accumulated {was_accumulate} micro-batch(es) per optimizer step and this one "
                f"would accumulate {c.accumulate} (trainer.accumulate_grad_batches, or global_batch over "
                f"{world_size(c.trainer)} process(es)): Lightning would count the restored micro-batches in the old "
                f"unit and step on a part of an accumulation. Resume with trainer.accumulate_grad_batches="
                f"{was_accumulate}{' global_batch=null' if c.global_batch else ''} (to change the samples per "
                "step, change data.batch_size: the data continues where it stopped)")
    if resume:  # its every byte, before the data and the model are set up (fit checked it after them: review)
        verify_file(ckpt_path)
    fits = functools.partial(check_fits, batch_size=c.loader.batch_size, precision=c.trainer["precision"],
                             accelerator=c.trainer.get("accelerator"), devices=c.trainer.get("devices", 1),
                             world=world_size(c.trainer), sharded="fsdp" in str(c.trainer.get("strategy")).lower())
    if not resume and c.tokenizer.kind == "bpe":  # before a BPE's training (minutes on a large corpus): a run that
        # cannot fit with its smallest vocabulary (the 256 bytes and <|endoftext|>) won't
        least = c.model_for(257)
        more = c.model_for(c.tokenizer.vocab_size).vocab_size > least.vocab_size  # (300 pads to the same 320 rows)
        fits(least, at_least=f"with a BPE's smallest vocabulary, {least.vocab_size} rows" + (
            f"; tokenizer.vocab_size={c.tokenizer.vocab_size} needs more" if more else ""))
    if not resume and c.tokenizer.kind == "bpe" and not isinstance(c.data, StreamingHubCorpus) and \
            not bpe_cache_file(c.tokenizer.vocab_size, c.data, c.cache_dir).exists():
        # a validation split too short for one window even at a token per byte: said before the BPE is trained on
        # the whole train split (seconds to minutes), not after (found by review)
        most = sum(len(d.encode("utf-8", "replace")) + 1 for d in own_documents(c.data, "val"))
        check_window("val", range(most), c.model.block_size, getattr(c.data, "split_size_advice", None),
                     at_most=True)
    tokenizer = checkpoint_tokenizer(resume, ckpt_path) if resume else build_tokenizer(c.tokenizer, c.data,
                                                                                          c.cache_dir)
    was = (resume.get("config") or {}).get("tokenizer")
    if resume and was is not None and was != c.resolved.get("tokenizer") and rank_zero_only.rank == 0:
        print(f"[momattn] resuming with the checkpoint's own tokenizer ({tokenizer!r}); the tokenizer settings "
              "given now are not used (a model cannot change its vocabulary mid-run)", file=sys.stderr)
    model_config = c.model_for(tokenizer.n_ids)
    if not resume and c.tokenizer.kind == "bpe" and tokenizer.vocab_size < c.tokenizer.vocab_size \
            and rank_zero_only.rank == 0:
        print(f"[momattn] note: the BPE tokenizer has {tokenizer.vocab_size} tokens, fewer than tokenizer.vocab_size="
              f"{c.tokenizer.vocab_size}: the training text supports no more merges (a larger vocab_size trains the "
              f"same tokenizer). The model's embedding has {model_config.vocab_size} rows; summary.json records both",
              file=sys.stderr, flush=True)
    if resume:
        check_compatible(model_config_from(resume, ckpt_path), model_config, ckpt_path)
    fits(model_config)
    evaluated = finished and _evaluated_step(out_dir) in (start_step, "unknown")  # a finished run
    # a finished run resumed, with its summary and (where asked for) its evaluation: nothing to log
    reported = _kept_summary(out_dir / "summary.json", start_step, say=False) \
        if same_folder and finished and (evaluated or not (c.run_eval and c.eval)) else None
    if reported is not None:  # (its data was tokenised, its model built and its checkpoint restored for none of it: a
        # sweep resumed after a crash did it for each finished job)
        return _finished_idle(c, job, out_dir, start_step, stopped, reported)
    model = GPT(model_config)

    train, val = _tokens(c, tokenizer, model_config.vocab_size, model_config.block_size)
    dm = TokenDataModule(train, val, model_config.block_size, c.loader.batch_size, c.max_steps, c.accumulate,
                         c.loader.val_batches, c.seed, c.loader.num_workers, getattr(c.data, "split_size_advice", None))
    if c.run_eval and c.eval and not evaluated and os.environ.get("LOCAL_RANK", "0") == "0":
        _check_evaluation(c, model, tokenizer)  # a task or length the evaluation cannot take: now, not after training
    meta = checkpoint_meta(model_config, tokenizer, c.resolved, overrides=list(job.overrides),
                           data_fingerprint=c.data.fingerprint(),  # evaluate.py: is the corpus still this one?
                           **_history(resume, start_step, c.resolved))
    lit = LitGPT(model, c.optim, c.max_steps, meta,
                 tokens_per_batch=c.loader.batch_size * model_config.block_size)
    if c.compile:  # the forward only: parameter names (and so checkpoints) stay the same
        before_compile()
        model.forward = torch.compile(model.forward)

    # the config's callbacks first: PreemptionCheckpoint then sees a SIGTERM raised by one of them at once
    preempt, throughput = PreemptionCheckpoint(out_dir / "checkpoints"), _throughput_monitor(c)
    preempt.compiled = bool(c.compile)
    callbacks = [*config_callbacks, preempt, throughput]
    if c.trainer.get("enable_progress_bar", True) and not any(isinstance(cb, ProgressBar) for cb in callbacks):
        callbacks.append(TrainProgress())
    # a fork (another folder) is a W&B run of its own: sharing the original's id, two diverging histories
    # overwrote each other's steps when both were synced
    loggers = logs.make_loggers(c.logger, resume.get("wandb_run_id") if same_folder else None,
                                *_sweep_names(job, model_config),
                                resumed=bool(resume), start_step=start_step,
                                checkpoints=str(out_dir / "checkpoints"))
    for lg in loggers:  # the run's whole config (attention, eta, lr, seed, ...): W&B runs can be told apart; the
        # attention as the model has it (typed, defaults filled in): attention.kind=momentum logged no eta (review)
        lg.log_hyperparams({**c.resolved, "attention": dataclasses.asdict(c.model.attention)})
    # callbacks=none means no checkpoints (but on SIGTERM): not Lightning's default one in the logger's folder
    own_checkpointing = {} if "enable_checkpointing" in c.trainer else {
        "enable_checkpointing": any(isinstance(cb, pl.callbacks.ModelCheckpoint) for cb in callbacks)}
    trainer: pl.Trainer = instantiate(c.trainer, "trainer", callbacks=callbacks, logger=loggers or False,
                                      **own_checkpointing,
                                      default_root_dir=str(out_dir), plugins=[AtomicCheckpointIO()],
                                      **({"max_steps": start_step} if stopped else {}),
                                      gradient_clip_val=c.optim.grad_clip or None,
                                      **_timed_strategy(c.trainer, c.dist_timeout_s))
    guard.kill_ranks = lambda signum: trainer.strategy.launcher.kill(signum) if trainer.strategy.launcher else None

    n_all, n_core = model.num_params(non_embedding=False), model.num_params()
    counts = f"{n_all / 1e6:.2f}M parameters" + (f" ({n_core / 1e6:.2f}M without position embeddings)"
                                                  if n_core != n_all else "")
    passes = _passes(train, c, model_config.block_size, dm, resumed.get(type(dm).__qualname__) if resumed else None)
    if rank_zero_only.rank == 0:  # the processes Lightning starts for the other ranks run this too
        if passes and (per_batch := c.loader.batch_size * world_size(c.trainer)) > passes["train_windows"]:
            print(f"[momattn] warning: a step's {per_batch} sequences per micro-batch "
                  f"(data.batch_size x processes) outnumber the training split's {passes['train_windows']} windows "
                  "of model.block_size tokens, so every batch repeats windows: give more data, or a smaller "
                  "data.batch_size or model.block_size", file=sys.stderr)
        print(f"[momattn] {model_config.attention.kind} attention, {counts}, "
              f"{_train_size(train)}"
              + (f" ({passes['train_windows']:,} windows, read {passes['train_epochs']:.3g} times in "
                 f"{c.max_steps} steps)" if passes else "") + f", {tokenizer!r}, precision {c.trainer['precision']}"
              + (f" ({c.precision_note})" if c.precision_note else "") + "; "
              f"output: {out_dir}", file=sys.stderr)
    if c.val_every_steps and rank_zero_only.rank == 0:  # it replaces trainer.val_check_interval, which Lightning
        # counts in micro-batches
        print(f"[momattn] validating every {c.val_every_steps} optimizer steps (val_every_steps; "
              f"trainer.val_check_interval={c.trainer['val_check_interval']} micro-batches)", file=sys.stderr)
    t0 = time.perf_counter()

    def outcome() -> tuple[dict, dict]:  # (speed, logged metrics) at the end of fit, or where a SIGTERM ended it
        logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if math.isnan(logged.get("train/loss", 0.0)) and lit.last_finite_loss is not None:
            logged["train/loss"] = lit.last_finite_loss  # the last step was skipped (optim.on_nonfinite=skip)
            # and said so: summary.json put an earlier step's loss beside the last step's lr (found by review)
            logged["train/loss_from"] = float(lit.last_finite_step)  # (a "_step" suffix reads as a per-step metric)
        # fit_seconds: this process's fit; after a resume it covers the steps from fit_from_step on only
        return ({**throughput_summary(throughput), "fit_seconds": round(time.perf_counter() - t0, 1),
                 **({"fit_from_step": start_step} if start_step else {}), **passes}, logged)

    lit.outcome = outcome  # into each checkpoint: a resume that trains no steps reports them (see below)
    failed = True  # until the run returns or is preempted (resumable): W&B marks the run by it
    grace = min(RANK_GRACE_S, c.dist_timeout_s)  # a rank that ended: rank 0's own error first (lightning_compat)
    compat.patient_observer(grace, lambda rank, how: _rank_lost(rank, how, grace, out_dir, job))
    compat.quoted_rank_folder()
    if os.environ.get("LOCAL_RANK", "0") == "0":
        started_ranks_know_me()
    try:
        guard.enter("fit")
        trainer.fit(lit, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path else None)
        guard.enter("end")
        if preempt.pending:  # a SIGTERM after the callback's last look (fit's teardown): stop as for any other
            raise SIGTERMException
        speed, metrics = outcome()
        trained = trainer.global_step > start_step  # False: a finished run resumed (the final model was validated
        # inside fit, even off the validation interval: LitGPT.on_train_batch_end)
        own_last = out_dir / "checkpoints" / "last.ckpt"
        brought = not getattr(trainer.checkpoint_callback, "save_last", None) and trained and \
            trainer.strategy.broadcast(own_last.exists(), src=0)  # (a collective: every rank takes rank 0's way)
        if brought:
            # callbacks=none or save_last=false: a SIGTERM's last.ckpt that no callback keeps, which the resume left
            # at its step (evaluate.py then called the run partial, and a resume of the finished run retrained from
            # it: found by review): brought to the end
            trainer.save_checkpoint(own_last)
        eval_model = _evaluation_model(trainer, model, bool(c.run_eval and c.eval))  # FSDP: rank 0's full copy
        if trainer.is_global_zero:  # DDP: rank 0 reports and evaluates
            kept = None if trained else _kept_summary(out_dir / "summary.json", trainer.global_step)
            if kept is None and not trained:  # stopped before its summary: the checkpoint's last validation, train
                # metrics and speed (the summary had no train/loss or tokens/s: found by review)
                metrics = {**_dict(resume.get("train_metrics")), **_dict(resume.get("val_metrics")), **metrics}
                if not speed.get("tokens_per_sec") and (saved := _dict(resume.get("speed"))):
                    speed = {**saved, "speed_note": f"measured by the process that saved {ckpt_path} (this one "
                             "trained no steps)"}
            if kept is None and trained and (window := with_last_window(speed, _dict(resume.get("speed")))):
                # a resume too short to fill a window: summary.json had no tokens/s or MFU (found by review); the
                # last measured window's (the rate, its MFU and the peak it was of)
                n = trainer.global_step - start_step
                speed = {**window, "speed_note": f"the last steps' rate is {ckpt_path}'s, the last window measured "
                                                 f"before it: this process trained {n} step{'' if n == 1 else 's'}, "
                                                 "too few to fill its window"}
            if kept is None:
                _report(c, trainer, metrics, loggers, _unigram(train, dm, trainer.world_size, tokenizer.n_ids), speed,
                        out_dir, (tokenizer.vocab_size, model_config.vocab_size), None if trained else ckpt_path)
            else:  # a finished run resumed: its summary (val loss, speed) stays, and gives the sweep's metric
                _say_nothing_to_train(c, job, out_dir, start_step, stopped)
                metrics = {**_summary_metrics(kept), **metrics}
            done_before = not trained and _evaluated_step(out_dir) in (trainer.global_step, "unknown")
            if c.run_eval and c.eval and not done_before:
                # the checkpoint callback saved last.ckpt at the final validation, the last step: these weights
                scored = str(own_last) if (trainer.checkpoint_callback is not None or brought) and own_last.exists() \
                    else None
                _evaluate(c, eval_model, tokenizer, loggers, trainer.global_step, out_dir, trained, scored)
            elif c.run_eval and c.eval:
                print(f"[momattn] the evaluation of step {start_step} is in {out_dir / 'eval'} already; "
                      "evaluate.py evaluates again with other settings", file=sys.stderr, flush=True)
        value = metrics.get(c.optimized_metric)
        if value is not None and not math.isfinite(value):  # Optuna cannot record nan: a failed trial instead
            raise NonFiniteLossError(f"{c.optimized_metric}={value} at the end of training; the run diverged")
        failed = False
        return value
    except OSError as e:
        if e.errno not in FULL_DISK:
            raise
        raise DiskFullError(_disk_full(e, out_dir, job)) from None
    except (torch.distributed.DistError, RuntimeError) as e:
        if lost := _peer_lost(e):  # another rank ended mid-run (its own error is above, or it was killed): one
            # line, not gloo's forty lines of C++ frames
            raise LaunchError(f"another process of this run ended (torch.distributed: {lost}): its error, if it had "
                              f"time to print one, is above; {newest_checkpoint(out_dir)}. {go_on(job, out_dir)}") \
                from None
        if _peer_hung(e):  # a collective waited dist_timeout_s for a rank that never came (hung, or far slower):
            # a traceback, and the ranks Lightning started outlived this one (found by review); they end with it now
            if guard.kill_ranks is not None:
                guard.kill_ranks(signal.SIGKILL)
            raise LaunchError(f"a collective of torch.distributed waited dist_timeout_s={c.dist_timeout_s} s for "
                              "another process of this run, which did not answer (hung, or far slower: a long "
                              "evaluation or checkpoint write on one rank needs a larger dist_timeout_s); any "
                              f"processes this one started are stopped; {newest_checkpoint(out_dir)}. "
                              f"{go_on(job, out_dir)} (torch: {first_line(e, 200)})") from None
        if not _rendezvous_failure(e):
            raise
        if guard.kill_ranks is not None:  # the ranks it started outlived it, and printed torch's C++ frames into
            guard.kill_ranks(signal.SIGKILL)  # its console after it had ended (found by review)
        raise LaunchError(_no_join(e, c)) from None
    except DataError as e:
        if preempt.data_error_step is None:
            raise
        raise DataError(f"{e}. The {preempt.data_error_step} steps trained are saved in {preempt.saved_path}. "
                        f"{go_on(job, out_dir)} (a stream whose files changed starts its new order at sample 0, "
                        "and says so)") from None
    except SIGTERMException:
        failed = False  # preempted, saved and resumable
        if trainer.global_step >= c.max_steps > start_step and trainer.is_global_zero:
            # a SIGTERM at the last step: the run is complete and reported now; its evaluation is left to the resume
            speed, metrics = outcome()
            _report(c, trainer, metrics, loggers, _unigram(train, dm, trainer.world_size, tokenizer.n_ids), speed,
                    out_dir, (tokenizer.vocab_size, model_config.vocab_size))
        if trainer.is_global_zero:
            print(_resume_hint(preempt, out_dir, job, loggers), file=sys.stderr, flush=True)
        if job.sweep_dir is not None and not _jobs_in_sweep_process():
            # submitit, joblib and other launchers end a job their own way (a None is done): the sweep's process
            # learns of the stop from the job's end file
            from momattn.sweep_callback import PREEMPTED

            PREEMPTED[:] = [int(trainer.global_step)]
            return None
        if job.sweep_dir is not None and trainer.is_global_zero:  # a preempted sweep stops instead of going on
            print(_sweep_stop(job, out_dir), file=sys.stderr, flush=True)
        # saved and resumable, but not done: exit 0 let `train.py && evaluate.py` go on with a run (or a sweep)
        # cut short; 143 is what a shell reports for a SIGTERM
        raise SystemExit(PREEMPTED_EXIT) from None
    except SystemExit:  # Ctrl-C: Lightning tears down and exits 1, its one line silenced with the libraries' chatter
        failed = failed and not guard.fired  # a SIGTERM after fit: the run itself is saved (W&B: not failed)
        if trainer.interrupted and trainer.is_global_zero and not guard.fired:  # (a SIGTERM in fit's setup too)
            print(_interrupt_hint(out_dir, job), file=sys.stderr, flush=True)
        if trainer.interrupted and not guard.fired:  # Lightning's exit 1 read as a crash to a wrapper script: a
            raise SystemExit(130) from None  # Ctrl-C exits 130 everywhere else (found by review)
        raise
    except KeyboardInterrupt:  # a Ctrl-C after fit (the report, the evaluation): the run is trained and saved, and a
        failed = failed and guard.phase != "end"  # SIGTERM there is not a failure either (W&B marked it failed)
        raise
    finally:
        close = getattr(dm.train_set, "close", None)  # a stream's reader thread, on success or failure
        if close is not None:
            close()
        logs.finish(loggers, failed=failed)  # (run_train lets the run folder go)


def _resume_from(c: TrainConfig, job: HydraJob, out_dir: Path) -> Path | None:
    """The checkpoint to resume. A folder the command line chose (hydra.run.dir, a multirun job's) resumes only
    its own last.ckpt. The processes Lightning starts for the other local ranks (their command line gains a
    hydra.run.dir) take rank 0's choice from the environment they inherit, so that all resume the same file. In a
    sweep they are started once, by the first job that trains on several processes, and run the later jobs of the
    sweep's command line alongside rank 0's: the inherited choice is that job's only, each later one is chosen by
    its own folder as rank 0 chooses it (job 1 took job 0's checkpoint, and was refused as resumed with other
    values)."""
    inherited = json.loads(os.environ.get(RESUME_ENV) or "null")
    if isinstance(inherited, dict) and os.environ.get("LOCAL_RANK", "0") != "0" and inherited.get("run") == str(out_dir):
        return Path(inherited["path"]) if inherited.get("path") else None
    chosen = job.sweep_dir is not None or job.run_dir_given
    path = resolve_ckpt_path(c.ckpt_path, out_dir, Path(c.paths.root_dir).resolve(), search=not chosen)
    os.environ[RESUME_ENV] = json.dumps({"run": str(out_dir), "path": str(path or "")})
    if job.sweep_dir is not None and os.environ.get("LOCAL_RANK", "0") == "0":  # for the ranks Lightning starts
        os.environ[SWEEP_ENV] = str(Path(job.sweep_dir).resolve())
    return path



def _jobs_in_sweep_process() -> bool:
    """Whether Hydra runs the sweep's jobs one after another in this process (its basic launcher, or joblib with a
    single worker, which runs them in the sweep's own process: a SIGTERM there went on to the next job and ended in
    'sweep done', exit 0: found by review): only then does a SystemExit stop the sweep cleanly (submitit, joblib
    and others run jobs elsewhere, and handle exits their own way)."""
    from momattn.sweep_callback import SWEEP

    if SWEEP:  # the sweep started in this process (the callback's start runs in the sweep's)
        return True
    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().launcher.get("_target_", "")).endswith("BasicLauncher")
    except Exception:
        return False


def _evaluation_model(trainer: pl.Trainer, model: GPT, needed: bool) -> GPT | None:
    """The model the evaluation after training runs: `model` itself, or under FSDP (whose units each hold a shard
    of their weights and gather them in a collective at every forward) a plain copy on rank 0 with the full
    weights, which every rank helps gather; None on the other ranks."""
    from lightning.pytorch.strategies import FSDPStrategy

    if not (needed and isinstance(trainer.strategy, FSDPStrategy)):
        return model
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    wrapped = trainer.strategy.model
    with FSDP.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT,
                              FullStateDictConfig(offload_to_cpu=wrapped.compute_device.type != "cpu", rank0_only=True)):
        state = wrapped.state_dict()  # a collective: every rank enters
    if not trainer.is_global_zero:
        return None
    full = GPT(model.config)
    full.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
    return full.to(next(model.parameters()).device)


def _tokens(c: TrainConfig, tokenizer: Tokenizer, vocab_size: int, block_size: int):
    """The train and val token ids (cached on disk), checked against the model's vocabulary; for a streaming
    source (data=hf_stream) the train side is a StreamWindows dataset that tokenizes while training."""
    val = load_tokens(c.data, tokenizer, "val", c.cache_dir, c.loader.num_proc)
    # before the train split is read and tokenized (minutes to hours of a large corpus: found by review)
    check_window("val", val, block_size, getattr(c.data, "split_size_advice", None))
    if isinstance(c.data, StreamingHubCorpus):
        c.data.check_start()
        return StreamWindows(c.data, tokenizer, block_size), val
    train = load_tokens(c.data, tokenizer, "train", c.cache_dir, c.loader.num_proc)
    if int(max(train.max(initial=0), val.max(initial=0))) >= vocab_size:
        raise CheckpointError("token ids exceed the model's vocabulary: the tokenizer and the model do not match")
    return train, val


def check_lightning_values(c: TrainConfig, out_dir: Path | str = ".") -> list:
    """Lightning's own keys (check_arguments) and its checks of their values (accelerator=foo, mode=minimum,
    save_top_k=-2) now, not after the tokenizer and the token cache were built: the config's callbacks made (and
    returned), a trainer made and dropped. A sweep checks every job's so before the first starts (sweep_jobs)."""
    quiet_console()  # (Lightning's "GPU available" lines, printed by the trainer made here)
    for what, conf in [("trainer", c.trainer), *((f"callbacks.{k}", v) for k, v in (c.callbacks or {}).items()),
                       *((f"logger.{k}", v) for k, v in (c.logger or {}).items())]:
        if conf is not None:  # (callbacks.x=null: left out)
            check_arguments(conf, what)
    callbacks = instantiate_all(c.callbacks, "callbacks")
    check_trainer(c, out_dir)
    return callbacks


def check_trainer(c: TrainConfig, out_dir: Path | str = ".") -> None:
    """Lightning's own checks of the trainer's values (a trainer made and dropped), and that it runs the processes
    the batch arithmetic counted: strategy=single_device with devices=2 trained one process, without a word, at half
    the global batch (momattn.plan calls this too, for what it plans as train.py would run it)."""
    probe = instantiate(c.trainer, "trainer", callbacks=[], logger=False, enable_checkpointing=False,
                        default_root_dir=str(out_dir), **_timed_strategy(c.trainer, c.dist_timeout_s))
    if not isinstance(probe, pl.Trainer):  # (a bare mapping, ~trainer._target_: a traceback on its num_devices)
        raise ConfigError(f"trainer._target_={c.trainer.get('_target_')} made a {type(probe).__name__}, not a "
                          "Lightning Trainer; choose a trainer option (trainer=cpu, gpu, ddp, ...) or "
                          "trainer._target_=lightning.pytorch.Trainer")
    runs, counted = probe.num_devices * probe.num_nodes, world_size(c.trainer)
    if runs != counted:
        raise ConfigError(f"trainer.strategy={c.trainer.get('strategy')} runs {runs} process(es), but trainer.devices "
                          f"x trainer.num_nodes asks for {counted}: use strategy=ddp (or fsdp) for several, or "
                          "trainer.devices=1 for one")


def _timed_strategy(trainer: dict, timeout_s: int) -> dict:
    """strategy=ddp / fsdp (and auto with several processes, which Lightning runs as ddp) as Lightning objects that
    wait dist_timeout_s (not torch's 30 minutes) for the other processes to join (fsdp: momattn.strategies' sharded
    checkpoints); any other strategy is left as configured."""
    from datetime import timedelta

    name = trainer.get("strategy")
    several = world_size(trainer) > 1  # auto with several processes is Lightning's ddp: dist_timeout_s was ignored
    if name in ("ddp", "ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false") or (
            several and name in (None, "auto")):
        from lightning.pytorch.strategies import DDPStrategy

        unused = name == "ddp_find_unused_parameters_true"
        return {"strategy": DDPStrategy(timeout=timedelta(seconds=timeout_s), find_unused_parameters=unused)}
    if name == "fsdp":  # sharded, atomic checkpoint folders (momattn.strategies); CPU processes through gloo
        from momattn.strategies import CPUShardedFSDP, ShardedFSDP

        cpu = str(trainer.get("accelerator") or "auto").lower() == "cpu" or not torch.cuda.is_available()
        return {"strategy": (CPUShardedFSDP if cpu else ShardedFSDP)(timeout=timedelta(seconds=timeout_s))}
    return {}


def _collective_error(e: BaseException) -> str | None:
    """torch's error text, lowered, where it comes from a collective of a running job (its process group exists);
    else None (a DataLoader worker's "Broken pipe", a stream's network error: this process's own error)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    text = str(e).lower()
    found = isinstance(e, torch.distributed.DistError) or any(t in text for t in ("gloo/", "nccl", "processgroup"))
    return text if found else None


def _peer_lost(e: BaseException) -> str | None:
    """What torch said when another process of a running job is gone (gloo: "connection closed by peer", NCCL: a
    remote process exited); else None."""
    text = _collective_error(e) or ""
    return next((m for m in ("connection closed by peer", "connection reset by peer", "remote process exited",
                             "broken pipe") if m in text), None)


def _peer_hung(e: BaseException) -> bool:
    """Whether torch says a collective of a running job timed out (gloo: "Timed out waiting ...ms for recv", NCCL's
    watchdog: "Timeout at NCCL work")."""
    text = _collective_error(e) or ""
    return "timed out" in text or "timeout" in text


def _rendezvous_failure(e: BaseException) -> bool:
    """torch's errors when the processes of a job never all meet (TCPStore join, connect to the first node):
    raised while the process group did not exist yet (once it does, a peer's crash is not a launch problem)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return False
    text = str(e).lower()
    return isinstance(e, torch.distributed.DistError) or "timed out" in text or "timeout" in text and "client" in text


def _no_join(e: BaseException, c: TrainConfig) -> str:
    import os

    addr, port = os.environ.get("MASTER_ADDR", "?"), os.environ.get("MASTER_PORT", "?")
    rank = os.environ.get("NODE_RANK", os.environ.get("SLURM_NODEID", "?"))
    first = first_line(e)
    if int(c.trainer.get("num_nodes") or 1) == 1:  # one machine: no address to get wrong (it blamed MASTER_ADDR)
        local = os.environ.get("LOCAL_RANK", "0")
        launched = any(k in os.environ for k in ("TORCHELASTIC_RUN_ID", "SLURM_PROCID"))  # torchrun / srun started it
        who = (f"this process (local rank {local}) and the job's first process, which ended or started far slower"
               if local != "0" else "the processes of this job" if launched else "the processes this one started")
        return (f"the processes of this job did not all meet within dist_timeout_s={c.dist_timeout_s} s: {who} did "
                "not reach the rendezvous in time (each one's start-up, its imports, data and model, counts against "
                f"it; a process that ended first printed its error above); nothing was trained. Raise dist_timeout_s "
                f"(e.g. dist_timeout_s={max(120, 4 * int(c.dist_timeout_s))}) on a busy machine (torch: {first})")
    return (f"the processes of this job did not all meet at MASTER_ADDR={addr} MASTER_PORT={port} within "
            f"dist_timeout_s={c.dist_timeout_s} s (this is node NODE_RANK={rank} of trainer.num_nodes="
            f"{c.trainer.get('num_nodes', 1)}; torch: {first}). Start every node with the same MASTER_ADDR / "
            "MASTER_PORT (the first node's address, reachable from the others, port open in its firewall) and "
            "NODE_RANK 0..num_nodes-1; raise dist_timeout_s when nodes start far apart")


def _throughput_monitor(c: TrainConfig) -> Throughput:
    # The monitor keeps one entry per micro-batch and computes at each optimizer step's end; it reports nothing
    # until its window is full. So the window spans whole steps, n steps = n * accumulate + 1 entries (a window of 2
    # under accumulate_grad_batches=4 timed the last micro-batch alone), and n is one step short of the first
    # logging step and of the run's length, so that it fills (at n = log_every_n_steps = max_steps it never did,
    # and the run reported no speed). Both found by review.
    every = int(c.trainer.get("log_every_n_steps") or 50)  # null: Lightning's 50
    steps = max(1, min(20, every, c.max_steps if isinstance(c.max_steps, int) and c.max_steps > 0 else 20) - 1)
    window = steps * c.accumulate + 1
    return Throughput(batch_size_fn=lambda b: b[0].size(0), length_fn=lambda b: b[0].numel(), window_size=window,
                      peak_record=c.cache_dir / "cpu_peak_flops.json")


def _sweep_names(job: HydraJob, model_config: GPTConfig) -> tuple[str | None, str | None]:
    """(W&B group, run name) of a multirun job: the sweep's folder (with its date where Hydra's default
    multirun/<date>/<time> names it by the time alone), and attention kind + job number + the job's own
    overrides (`momentum-4 seed=2`), so that runs can be told apart in W&B's run list."""
    if job.sweep_dir is None:
        return None, None
    folder = Path(job.sweep_dir)
    group = folder_group(folder.resolve())  # (as evaluate.py's verdict names it: sweep_dir=x was 'x' here)
    own = [o for o in job.overrides if not o.startswith(("hydra.", "attention=", "ckpt_path="))]
    swept = _swept_keys(folder)  # what tells the jobs apart first: the command line's other overrides cut it off
    own = [o for o in own if o.split("=", 1)[0].lstrip("+~") in swept] if swept else own
    name = f"{model_config.attention.kind}-{job.num} {' '.join(own)}".strip()
    return group, name if len(name) <= 128 else name[:127] + "…"


def _swept_keys(sweep_dir: Path) -> set[str]:
    """The keys a sweep varies, from its multirun.yaml: its sweeps on the command line (seed=1,2) and the keys of
    hydra.sweeper.params (an experiment's sweep); empty where the file cannot be read. An Optuna search writes
    none: its sweeper names the keys it searches in SEARCH_KEYS_ENV."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from momattn.sweep_jobs import SEARCH_KEYS_ENV, sweeper_params

    if not (sweep_dir / "multirun.yaml").is_file():  # an Optuna search writes none: the keys its sweeper searches
        keys = json.loads(os.environ.get(SEARCH_KEYS_ENV) or "[]")
        return {str(k).lstrip("+~") for k in keys} if isinstance(keys, list) else set()
    try:
        cfg = OmegaConf.load(sweep_dir / "multirun.yaml")
        keys = {str(k) for k in sweeper_params(cfg)}
        task = [str(o) for o in OmegaConf.select(cfg, "hydra.overrides.task", default=None) or []]
        keys |= {o.key_or_group for o in OverridesParser.create().parse_overrides(task) if o.is_sweep_override()}
    except Exception:  # a file Hydra cannot parse: every override named
        return set()
    return {k.lstrip("+~") for k in keys}


def _older_than_last(ckpt_path: Path, step: int, out_dir: Path) -> None:
    """A note where a resume in a run's own folder starts from an earlier step than its last.ckpt: the later
    steps' last.ckpt and metrics were replaced without a word (found by review)."""
    last = out_dir / "checkpoints" / "last.ckpt"
    if ckpt_path.name == last.name or not last.exists():  # (FSDP's is a folder)
        return
    try:
        newer = int(read_meta(last).get("global_step") or 0)
    except (CheckpointError, OSError, ValueError, TypeError):
        return
    if newer > step:
        print(f"[momattn] note: resuming {ckpt_path.name} at step {step}, but {last} is at step {newer}: training "
              f"from step {step} replaces last.ckpt, the checkpoints and metrics of the steps after {step} and "
              f"summary.json, and keeps {ckpt_path.name} (Lightning never removes the checkpoint a run resumed "
              f"from); to keep step {newer}'s run, resume into another folder (hydra.run.dir=...)", file=sys.stderr,
              flush=True)


def _disk_full(e: OSError, out_dir: Path, job=None) -> str:
    """What survived a full disk or quota (checkpoints are written atomically: last.ckpt is the previous complete
    one)."""
    from momattn.trust import given_again, resume_prefix

    last = out_dir / "checkpoints" / "last.ckpt"
    again = given_again(job)
    try:
        saved = f"{last} (step {read_meta(last)['global_step']}) is intact"
        # ckpt_path=last in another folder finds no checkpoint there and trains the defaults from step 0: the
        # checkpoint is named (found by review)
        elsewhere = (f"; or go on in another folder, on a disk with room: {resume_prefix(out_dir)}python train.py "
                     f"{shell_arg('ckpt_path', last)} hydra.run.dir=<another folder>{again}")
    except Exception:
        saved, elsewhere = "no checkpoint was completed", ""
    target = getattr(e, "write_target", None) or e.filename  # io.atomic_write names the file it was writing
    where = f" while writing {target}" if target else ""
    full = "the disk quota is used up" if e.errno == errno.EDQUOT else "the disk is full"
    return (f"{full}{where} ({e.strerror or e}). {saved}. Free space, then resume with: {resume_prefix(out_dir)}"
            f"python train.py ckpt_path=last {shell_arg('hydra.run.dir', out_dir)}{again}{elsewhere}")


def _resume_hint(preempt: PreemptionCheckpoint, out_dir: Path, job: HydraJob, loggers: list = ()) -> str:
    """What was saved, and the resume command. The run folder's .hydra/overrides.yaml holds its command line, which
    a resume reuses (momattn.cli.resume_overrides), so nothing is retyped; without that file the overrides are
    repeated. An offline W&B run's segment so far is named with its `wandb sync`."""
    if preempt.saved_path is not None:
        saved = f"checkpoint written to {preempt.saved_path} at step {preempt.saved_step}"
    else:  # stopped before the first step (e.g. in the sanity check): the newest checkpoint there is stands
        saved = newest_checkpoint(out_dir)
        saved = saved if saved.startswith("no ") else f"no new checkpoint; {saved}"
    held = resume_from(out_dir) if preempt.saved_path is None else None
    if job.sweep_dir is not None and not job.search and not _jobs_in_sweep_process() or \
            held is not None and best_files_only(held):  # a job of joblib's or submitit's: the sweep's resume (the
        # job's own left it out of the sweep's W&B group: review); best files only: ckpt_path=last refuses them
        how = go_on(job, out_dir)
    else:
        how = _own_resume(out_dir, job)
    return f"\n[momattn] SIGTERM received: {saved}.\n{how}" + "".join(f"\n{line}" for line in
                                                                     logs.offline_runs(list(loggers)))


def _dict(value) -> dict:
    """A checkpoint's entry that should be a dict (one written by hand, or damaged: {}, not a TypeError)."""
    return dict(value) if isinstance(value, Mapping) else {}


def _own_resume(out_dir: Path, job: HydraJob, tail: str = "") -> str:
    """'Resume with: python train.py <what the saved line lacks> ckpt_path=last hydra.run.dir=<run>' + tail, and
    the launcher's note: a single run's (or a basic sweep's job's) own resume from its last.ckpt."""
    from momattn.trust import resume_prefix

    return (f"Resume with: {resume_prefix(out_dir)}python train.py {retyped(out_dir, job)} ckpt_path=last "
            f"{shell_arg('hydra.run.dir', out_dir)}{tail}").replace("  ", " ") + relaunch_note()


def _rank_lost(rank: int, how: str, grace: float, out_dir: Path, job) -> str:
    """What the rank watcher says when another rank ended and this one (rank 0) did not stop within its grace."""
    return (f"\nerror: the process of rank {rank} ended ({how}) and this one did not stop within {grace} s (waiting "
            f"in a collective); {newest_checkpoint(out_dir)}. {go_on(job, out_dir)}")


def _interrupt_hint(out_dir: Path, job) -> str:
    """What a Ctrl-C left: no checkpoint of its own (it can land mid-step), the newest one written before it, and
    how to go on from there."""
    from momattn.trust import given_again, resume_prefix

    newest, sigterm = newest_checkpoint(out_dir), "(a SIGTERM, e.g. kill <pid>, saves the current step first)"
    held = resume_from(out_dir)  # a readable last.ckpt, else the newest other (a damaged last.ckpt too: review)
    if held is not None and held.name != "last.ckpt":  # (it said "before the first")
        last = out_dir / "checkpoints" / "last.ckpt"
        what = f"{last} cannot be read" if last.exists() else "no last.ckpt"
        return (f"\n[momattn] interrupted (Ctrl-C): {what}; the newest checkpoint is {held}, and the "
                f"steps after it are lost {sigterm}. Resume from it with: {resume_prefix(out_dir)}python train.py "
                f"{shell_arg('ckpt_path', held)}{given_again(job)}")
    if newest.startswith("no "):  # it said "no checkpoint was written yet; the steps after it are lost" (review)
        return (f"\n[momattn] interrupted (Ctrl-C) before the first checkpoint: the steps trained are lost {sigterm}. "
                + go_on(job, out_dir).replace("Resume with:", "Start it again with:", 1))
    return f"\n[momattn] interrupted (Ctrl-C): {newest}; the steps after it are lost {sigterm}. {go_on(job, out_dir)}"


def _sweep_stop(job: HydraJob, out_dir: Path, signame: str = "SIGTERM") -> str:
    return (f"[momattn] {signame}: {search_stop(job, out_dir)}" if job.search else
            f"[momattn] {signame}: the sweep stops at job {job.num}; run the same command with ckpt_path=last "
            f"{shell_arg('hydra.sweep.dir', job.sweep_dir)} to resume it (finished jobs train no further, each job resumes its own "
            "folder)")


class SigtermOutsideFit:
    """A SIGTERM before trainer.fit (tokenizing, building GINC) or after it (the report, the evaluation) ended the
    process without a word, as Python's default does; in a sweep, the whole sweep. Here it says what is saved and
    how to go on, and exits 143 as a preempted run does. During fit Lightning's handlers (and momattn's
    PreemptionCheckpoint) are in charge; a handler someone else installed (submitit's) is left alone, and a
    process forked from this one (a tokenizing pool) dies of the signal as before."""

    def __init__(self):
        self.out_dir: Path | None = None
        self.job: HydraJob | None = None
        self.kill_ranks: Callable[[int], None] | None = None  # the processes Lightning started for other ranks
        self.phase, self.fired, self.pid = "start", False, os.getpid()
        self.previous = signal.getsignal(signal.SIGTERM)
        self.active = is_default(self.previous) and threading.current_thread() is threading.main_thread()  # the
        # entry point's handler (entry_signals) is replaced here and put back at close
        self._in_fit = self._fit_handler  # one bound method: getsignal returns it while it is the handler
        self.enter("start")
        self.interrupted, self._on_int, self.watch = False, self._int_handler, None
        self.previous_int = signal.getsignal(signal.SIGINT)
        if self.active:
            if is_default_int(self.previous_int):
                signal.signal(signal.SIGINT, self._on_int)
            self.watch = SignalWatch((signal.SIGTERM, signal.SIGINT), self._heard, self._blocked)

    def _int_handler(self, signum, frame) -> None:
        self.interrupted = True  # the main thread heard the Ctrl-C: the KeyboardInterrupt goes its usual way
        if os.getpid() == self.pid and self.phase == "start":  # inside an import it ends the process at once (see
            end_now_if_importing("Ctrl-C", 130, frame)  # entry_signals); from fit on, loggers are open, left to unwind
        signal.default_int_handler(signum, frame)

    def _heard(self, signum: int) -> bool:
        """Whether the main thread ran its handler for signum, or a handler other than this one is in charge.
        In the training steps Lightning's are: a SIGTERM saves once the step ends, and a Ctrl-C waits for the step's
        long matmul (on a CPU, seconds at 350M) to end in Lightning's shutdown as before."""
        steps = self.phase == "fit" and signal.getsignal(signal.SIGTERM) is not self._in_fit
        if signum == signal.SIGINT:
            return self.interrupted or steps or signal.getsignal(signal.SIGINT) is not self._on_int
        return self.fired or signal.getsignal(signal.SIGTERM) not in (self._in_fit, self._handler)

    def _blocked(self, signum: int) -> None:
        """A SIGTERM or Ctrl-C while the main thread waits inside C++ (a DDP rendezvous for a node that has not
        started waits up to dist_timeout_s): said and ended now, as the handler would once the wait ended."""
        from lightning.pytorch.utilities import rank_zero_only

        signame = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        line = (f"\n[momattn] {signame} while this process waited inside a call that Python cannot interrupt (e.g. "
                f"the DDP rendezvous, which waits up to dist_timeout_s for the other processes, or a library's long "
                f"computation): ending it now{self.hint(signame)}") if rank_zero_only.rank == 0 else None
        self._pass_on(signum)
        _kill_pool()
        end_now(line, PREEMPTED_EXIT if signum == signal.SIGTERM else 130)

    def _pass_on(self, signum: int) -> None:
        """To the ranks Lightning started, as Lightning passes a SIGTERM on."""
        if self.kill_ranks is not None:
            with contextlib.suppress(Exception):
                self.kill_ranks(signum)

    def enter(self, phase: str) -> None:  # "start", "fit" (Lightning's own), "end"
        self.phase = phase
        if self.active:
            signal.signal(signal.SIGTERM, self._in_fit if phase == "fit" else self._handler)

    def _fit_handler(self, signum, frame) -> None:
        """In trainer.fit: Lightning's handler, registered once its setup is done (the process group, the
        checkpoint's restore) and restored at its teardown, calls this one after its own; then nothing more is to
        be done here. Outside it (SIG_DFL here ended the process without a word) the setup's SIGTERM is said."""
        if os.getpid() == self.pid and signal.getsignal(signal.SIGTERM) is not self._in_fit:
            return  # Lightning's handler is in charge (PreemptionCheckpoint saves at the step's end)
        if os.getpid() == self.pid:
            self._pass_on(signum)
        self._handler(signum, frame)

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()
        if self.active:
            signal.signal(signal.SIGTERM, self.previous)
            if signal.getsignal(signal.SIGINT) is self._on_int:
                signal.signal(signal.SIGINT, self.previous_int)

    def _handler(self, signum, frame) -> None:
        if os.getpid() != self.pid:  # a forked worker (datasets' map pool): the default, as before this handler
            return die_by_default(signum)
        self.fired = True
        from lightning.pytorch.utilities import rank_zero_only

        line = self.hint() if rank_zero_only.rank == 0 else None  # RANK, LOCAL_RANK or SLURM_PROCID: once per
        # job, srun's nodes included. A tokenizing pool: its cleanup, run by the SystemExit, waited forever on a lock
        # a worker killed by the same signal held; an import before fit: see entry_signals. Nothing is lost there
        if _kill_pool() or (self.phase == "start" and importing(frame)):
            end_now(line, PREEMPTED_EXIT)
        if line is not None:
            print(line, file=sys.stderr, flush=True)
        raise SystemExit(PREEMPTED_EXIT)

    def hint(self, signame: str = "SIGTERM") -> str:
        if self.out_dir is None or self.job is None:  # still reading the config
            return f"\n[momattn] {signame} before training started: nothing was trained"
        from momattn.trust import resume_prefix

        where = {"start": "before training started", "fit": "outside the training steps (while trainer.fit set up "
                 "or tore down)"}.get(self.phase, "after training (its report or evaluation)")
        newest = newest_checkpoint(self.out_dir)
        last = self.out_dir / "checkpoints" / "last.ckpt"
        readable = newest.startswith(f"{last} is at step ")  # (not "cannot be read", nor "no ...")
        held = None if readable else run_held(self.out_dir)  # what the same command would refuse to overwrite
        hint = f"\n[momattn] {signame} {where}: "
        if readable:
            if self.job.sweep_dir is not None and not _jobs_in_sweep_process():  # a joblib or submitit job: the
                # sweep's resume, as a job stopped in fit says (its own left it out of the sweep: found by review)
                hint += f"{newest}.\n{go_on(self.job, self.out_dir)}"
            else:
                hint += f"{newest}.\n" + _own_resume(self.out_dir, self.job, (
                    " (it trains no further; the report and evaluation are done again)" if self.phase == "end" else ""))
        elif held is not None and best_files_only(held):  # save_last=false: best files only, which ckpt_path=last
            # does not read; the same command refuses to overwrite them (it was advised; found by review)
            names = sorted(p.name for p in saved_checkpoints(self.out_dir))
            hint += (f"no last.ckpt (save_last is off); {self.out_dir / 'checkpoints'} holds {', '.join(names)}, "
                     f"which evaluate.py reads.\n{go_on(self.job, self.out_dir)}")
        elif held is not None and held.name == "last.ckpt":  # there, but it cannot be read (diff review)
            other = resume_from(self.out_dir)  # (the newest other, where it has one)
            hint += newest + (f".\nResume from the newest other with: {resume_prefix(self.out_dir)}python train.py "
                              f"{retyped(self.out_dir, self.job)} {shell_arg('ckpt_path', other)} "
                              f"{shell_arg('hydra.run.dir', self.out_dir)}".replace("  ", " ") + relaunch_note()
                              if other is not None else "; move it away and run the same command again")
        elif held is not None:  # callbacks=none, stopped after its summary: the same command is refused there
            hint += (f"{newest}. The run keeps no checkpoints (no ModelCheckpoint callback), so its trained model is "
                     f"lost and its evaluation cannot be finished; to train it again, delete {self.out_dir} (its "
                     "summary.json is kept there) or train in another folder (hydra.run.dir=...)")
        else:
            hint += newest + (". Nothing was trained" if self.phase in ("start", "fit") else
                              ". The run keeps no checkpoints (no ModelCheckpoint callback), so its training is "
                              "lost") + ": run the same command again."
        if self.job.sweep_dir is not None and _jobs_in_sweep_process():  # other launchers end a job their own way
            hint += "\n" + _sweep_stop(self.job, self.out_dir, signame)
        return hint


def _kill_pool() -> bool:
    """SIGKILL the live processes of this process's multiprocessing pools; whether there were any."""
    kids = _pool_children()
    for kid in kids:
        with contextlib.suppress(OSError):
            os.kill(kid.pid, signal.SIGKILL)
    return bool(kids)


def _pool_children() -> list:
    """The live processes of a multiprocessing pool of this process (datasets' map uses `multiprocess`)."""
    kids = []
    for name in ("multiprocessing", "multiprocess"):
        if (module := sys.modules.get(name)) is not None:
            with contextlib.suppress(Exception):
                kids += module.active_children()
    return kids


def _passes(train, c: TrainConfig, block_size: int, dm: TokenDataModule | None = None,
            data_state: dict | None = None) -> dict:
    """How often the run reads its training split: its windows and the epochs max_steps make of them (the same
    windows repeat past 1; a corpus smaller than a batch repeated them within each batch, unsaid: found by review);
    {} for a stream, whose length is not known. data_state: a resumed checkpoint's data position (its samples read
    so far, at its own samples per step), from which the run goes on; a run in a new order of the windows counts
    from that order's start (max_steps x this run's samples per step read 156 samples as 2.09 epochs of 107 windows
    after a resume at another data.batch_size: found by review)."""
    if isinstance(train, StreamWindows) or not (windows := (len(train) - 1) // block_size):
        return {}
    per_step = c.loader.batch_size * world_size(c.trainer) * c.accumulate
    sequences = c.max_steps * per_step
    if isinstance(data_state, dict) and isinstance(data_state.get("position"), int) and \
            isinstance(data_state.get("step"), int) and dm is not None:
        rest = max(0, c.max_steps - data_state["step"]) * per_step
        sequences = rest + (data_state["position"] if dm.continues(data_state) else 0)
    epochs = sequences / windows  # (a tiny run's read "0 times" at 4 decimals: flows review)
    return {"train_windows": windows, "train_epochs": round(epochs, 4) if epochs >= 0.01 else float(f"{epochs:.3g}")}


def _train_size(train) -> str:
    return "train tokens streamed" if isinstance(train, StreamWindows) else f"{len(train) / 1e6:.2f}M train tokens"


def _unigram(train, dm: TokenDataModule, world: int, vocab_size: int) -> float | None:
    """The unigram baseline, on the tokens val/ppl is measured on (the whole split read 1162.3 where its validated
    windows read 1172.8); None for a stream: its train tokens are never all in one place."""
    if isinstance(train, StreamWindows) or not len(targets := dm.validated_targets(world)):
        return None
    return unigram_ppl(train, targets, vocab_size)


def _read_summary(path: Path) -> tuple[dict | None, str | None]:
    """(a finished run's summary.json, None) or (None, why it cannot be read); (None, None) where it is missing."""
    if not path.exists():
        return None, None
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return None, first_line(e)
    return (kept, None) if isinstance(kept, dict) else (None, f"a JSON {type(kept).__name__}, not an object")


def _summary_steps(out_dir: Path) -> int | None:
    """The steps a finished run's summary.json records (quietly: None where it is missing or unreadable)."""
    steps = (_read_summary(out_dir / "summary.json")[0] or {}).get("steps")
    return steps if isinstance(steps, int) else None


def _finished_uncheckpointed(c: TrainConfig, job: HydraJob, out_dir: Path) -> dict | None:
    """The summary of a run that finished without a checkpoint (callbacks=none), resumed with ckpt_path=last, having
    said that nothing trains; None where the folder holds no such run; a ConfigError where this command asks it
    for what it cannot do without one (more steps) or names other settings than it was trained with. A sweep
    resumed with ckpt_path=last trained such jobs again from step 0 over their logs (found by review)."""
    checkpoints = out_dir / "checkpoints"
    if c.ckpt_path != "last" or (checkpoints / "last.ckpt").exists():  # (resolve_ckpt_path's to take)
        return None
    best = sorted(p.name for p in saved_checkpoints(out_dir))
    if not best and checkpoints.is_dir() and any(checkpoints.iterdir()):
        return None
    summary = _read_summary(out_dir / "summary.json")[0]
    if not summary:
        return None
    if best:  # save_last=false: a finished job of a sweep resumed with ckpt_path=last was refused ("no last.ckpt"),
        # and failed the sweep (flows review); an unfinished one or other settings: resolve_ckpt_path's refusal
        saved, target = summary.get("overrides"), summary.get("max_steps", summary.get("steps"))
        early = summary.get("stopped_early") and any("EarlyStopping" in str(cb.get("_target_", "")) for cb in (
            c.callbacks or {}).values() if isinstance(cb, Mapping))  # (without the callback now, it trains on)
        if target != c.max_steps or summary.get("steps") != target and not early or \
                isinstance(saved, list) and changed_overrides([str(o) for o in saved], list(job.overrides)) or \
                c.run_eval and c.eval and not (out_dir / "eval" / "results.json").is_file():  # its evaluation cut
            return None  # short: the refusal, which names its files (third diff review)
        try:  # the model it would report: another width or attention added on the command line was taken as it
            from momattn.checkpoint import model_config_from  # (third diff review)

            newest = resume_from(out_dir)  # (no last.ckpt here: the newest best file)
            resumed = model_config_from(read_meta(newest)["momattn"], newest)
        except Exception:  # unreadable: resolve_ckpt_path's refusal names the files
            return None
        check_compatible(resumed, c.model_for(resumed.vocab_size), newest)
        if os.environ.get("LOCAL_RANK", "0") == "0":
            print(f"[momattn] nothing to train: {out_dir} finished at step {summary.get('steps')} "
                  f"(trainer.max_steps={c.max_steps}), keeping {', '.join(best)} and no last.ckpt (save_last=false); "
                  f"{out_dir / 'summary.json'} is kept", file=sys.stderr, flush=True)
        return summary
    saved = summary.get("overrides")
    if isinstance(saved, list) and (changed := changed_overrides([str(o) for o in saved], list(job.overrides))):
        raise ConfigError(f"{out_dir} holds a run that finished without a checkpoint, trained with "
                          f"{'; '.join(changed)}: this command's settings differ, and it cannot be resumed. Train in "
                          "another folder (hydra.run.dir=..., or hydra.sweep.dir=...)")
    target = summary.get("max_steps", summary.get("steps"))  # (a summary of before session 49: its steps)
    if target != c.max_steps:
        raise ConfigError(f"{out_dir} holds a run that finished at step {summary.get('steps')} without a checkpoint "
                          f"(callbacks=none): with trainer.max_steps={c.max_steps} it would train on, which it cannot "
                          "without one. A longer run starts anew in another folder (hydra.run.dir=...)")
    if os.environ.get("LOCAL_RANK", "0") == "0":
        unevaluated = c.run_eval and c.eval and not (out_dir / "eval" / "results.json").is_file()
        print(f"[momattn] nothing to train: {out_dir} finished at step {summary.get('steps')} without a checkpoint "
              f"(trainer.max_steps={c.max_steps}); {out_dir / 'summary.json'} is kept"
              + ("; its end-of-run evaluation did not finish, and without a checkpoint it cannot be made"
                 if unevaluated else ""), file=sys.stderr, flush=True)
    return summary


def _stopped_early(checkpoint: dict, c: TrainConfig, callbacks: list) -> tuple[str, str] | None:
    """(The config's name for it, why) where an EarlyStopping callback ended the checkpoint's run and this run has
    that callback (the same state_key: monitor and mode), which Lightning restores with the checkpoint's wait and
    patience; None otherwise: no such callback now, or one whose threshold (which Lightning does not restore) is
    not the one the run stopped at: the run trains on. callbacks: instantiate_all(c.callbacks)."""
    names = [name for name, conf in (c.callbacks or {}).items() if conf is not None]
    states = checkpoint.get("callbacks") or {}
    was = ((checkpoint.get("momattn") or {}).get("config") or {}).get("callbacks") or {}
    for name, cb in zip(names, callbacks, strict=True):
        state = states.get(cb.state_key) if isinstance(cb, pl.callbacks.EarlyStopping) else None
        if not (why := early_stopped({cb.state_key: state})):
            continue
        key = {THRESHOLD: "stopping_threshold", DIVERGENCE: "divergence_threshold"}.get(stop_reason(state))
        before = (was.get(name) or {}).get(key) if isinstance(was.get(name), Mapping) else None
        now = getattr(cb, key) if key else None
        if key and now is not None and before is not None and now != before and \
                (now >= before if (key == "stopping_threshold") == (cb.mode == "min") else now <= before):
            # a looser threshold, which the value that stopped the run meets too: still stopped (it trained one
            # more validation interval, then stopped there)
            return str(name), f"{why}; callbacks.{name}.{key}={now} is met by it too"
        if key and now != before:  # a new threshold: it trains on until it meets that one (flows review)
            if rank_zero_only.rank == 0:
                print(f"[momattn] the run stopped early at step {checkpoint.get('global_step')} ({why}); with "
                      f"callbacks.{name}.{key}={now} ("
                      + (f"it stopped at {before}" if before is not None else f"callbacks.{name} records none")
                      + ") it trains on", file=sys.stderr, flush=True)
            _forget_stop(cb)
            return None
        return str(name), why
    return None


def _train_on(name: str, job: HydraJob) -> str:
    """How to resume a run its EarlyStopping callback `name` ended without that callback. A sweep's command line
    that adds it (+callbacks.es.patience=...) cannot also delete it (~callbacks.es was refused there: found by
    review); a single run's resume drops its saved additions for ~callbacks.<name>."""
    added = [o for o in job.overrides if o.lstrip("+").startswith((f"callbacks.{name}.", f"callbacks.{name}="))
             and o.startswith("+")]
    if job.sweep_dir is not None and added:
        return f"resume the sweep without its +callbacks.{name} overrides ({' '.join(map(shell_quote, added))})"
    return f"resume with ~callbacks.{name}"


def _history(resume: dict, step: int, config: dict) -> dict:
    """{"history": [{"step", "config"}, ...]}: the configs a run trained with before each resume that changed its
    settings (optim.lr after a divergence, a longer trainer.max_steps), oldest first; {} for a run that has none.
    The stored config is the latest only, so such a run read as trained that way from step 0, and a sweep's
    verdict averaged it with runs that were (found by review)."""
    from momattn.eval.sweep import setting_config

    history = list(resume.get("history") or [])
    before = resume.get("config")
    # what a sweep's setting is made of: a resume with a fault callback dropped, another logger or cache folder
    # changed nothing it trained (each such resume kept a copy of the config: diff review)
    if isinstance(before, Mapping) and setting_config(before) != setting_config(config):
        history.append({"step": step, "config": before})
    return {"history": history} if history else {}


def _forget_stop(cb: pl.callbacks.EarlyStopping) -> None:
    """The callback, as Lightning restores it, without the stop it restores: that stop stayed in every checkpoint
    of the run trained on, which then read as stopped early (at its end, and as finished on resume after a
    SIGTERM: third flows review)."""
    from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

    restore = cb.load_state_dict

    def load_state_dict(state_dict: dict) -> None:
        restore(state_dict)
        cb.stopping_reason, cb.stopping_reason_message = EarlyStoppingReason.NOT_STOPPED, None

    cb.load_state_dict = load_state_dict


def _say_nothing_to_train(c: TrainConfig, job: HydraJob, out_dir: Path, step: int,
                          stopped: tuple[str, str] | None) -> None:
    print("[momattn] nothing to train: " + (
        f"its EarlyStopping callback ended the run at step {step} ({stopped[1]}); "
        f"{out_dir / 'summary.json'} is kept. To train on, " + _train_on(stopped[0], job) if stopped
        else
        f"the run was at step {step} already (trainer.max_steps={c.max_steps}); "
        f"{out_dir / 'summary.json'} is kept. Raise trainer.max_steps to train on"),
        file=sys.stderr, flush=True)


def _summary_metrics(summary: dict) -> dict[str, float]:
    return {k: float(v) for k, v in summary.items() if k.startswith(SUMMARY_METRICS)
            and isinstance(v, int | float) and not isinstance(v, bool)}


def _finished_idle(c: TrainConfig, job: HydraJob, out_dir: Path, start_step: int,
                   stopped: tuple[str, str] | None, summary: dict) -> float | None:
    """A finished run resumed in its own folder, reported (and evaluated, where it evaluates): nothing is trained,
    logged or evaluated. metrics.csv's repairs (rows a stopped resume dropped) are written; its summary's metric
    is the sweep's."""
    loggers = logs.make_loggers(c.logger, None, resumed=True, start_step=start_step, idle=True,
                                checkpoints=str(out_dir / "checkpoints"))
    if rank_zero_only.rank == 0:
        for lg in loggers:
            getattr(lg, "repair", lambda: None)()
        _say_nothing_to_train(c, job, out_dir, start_step, stopped)
        if c.run_eval and c.eval:
            print(f"[momattn] the evaluation of step {start_step} is in {out_dir / 'eval'} already; "
                  "evaluate.py evaluates again with other settings", file=sys.stderr, flush=True)
    value = _summary_metrics(summary).get(c.optimized_metric)
    if value is not None and not math.isfinite(value):  # Optuna cannot record nan: a failed trial instead
        raise NonFiniteLossError(f"{c.optimized_metric}={value} at the end of training; the run diverged")
    return value


def _kept_summary(path: Path, step: int, say: bool = True) -> dict | None:
    """A finished run's summary.json, if it reports the model of `step`; None where it is missing or unreadable,
    or reports an earlier end (then written again): a run finished, extended, stopped by a SIGTERM at a later step
    and resumed with max_steps at that step kept the earlier end's summary (val loss, speed) for a model it never
    reported (found by review). A summary without its steps (written before they were recorded) is kept."""
    kept, why = _read_summary(path)
    if why and say:
        print(f"[momattn] warning: {path} cannot be read ({why}); it is written again", file=sys.stderr, flush=True)
    if kept is not None and isinstance(kept.get("steps"), int) and kept["steps"] != step:
        return None
    return kept


def _report(c: TrainConfig, trainer: pl.Trainer, metrics: dict, loggers: list, baseline: float | None, speed: dict,
            out_dir: Path, vocab: tuple[int, int] | tuple[None, None] = (None, None),
            untrained_from: str | None = None) -> None:
    """The end-of-run lines and summary.json; vocab: (the tokenizer's tokens, the model's embedding rows);
    untrained_from: the checkpoint a resume that trained nothing started from (a fork at its last step)."""
    ckpt_cb = trainer.checkpoint_callback
    best = getattr(ckpt_cb, "best_model_path", "") or None
    last = getattr(ckpt_cb, "last_model_path", "") or None
    if last is None and (out_dir / "checkpoints" / "last.ckpt").exists():  # a SIGTERM's, brought to the end
        # (FSDP's is a folder)
        last = str(out_dir / "checkpoints" / "last.ckpt")
    stop = early_stopped({cb.state_key: cb.state_dict() for cb in trainer.callbacks if type(cb).__name__ ==
                          "EarlyStopping"})  # (Lightning says so in an INFO line, which is silenced: found by review)
    lines = [f"[momattn] done: {trainer.global_step} step{'' if trainer.global_step == 1 else 's'}"
             + (f", stopped early ({stop})" if stop else "")]
    if "val/loss" in metrics:
        unigram = f"  (unigram baseline ppl {baseline:.1f})" if baseline is not None else ""
        ppl = metrics["val/ppl"]
        ppl = f"{ppl:.2f}" if ppl < 1e7 else f"{ppl:.4g}"  # a diverged run's printed as 37 digits (found by review)
        lines.append(f"  final val/loss {metrics['val/loss']:.4f}  val/ppl {ppl}{unigram}")
    if skipped := int(metrics.get("train/skipped_nonfinite") or 0):  # (metrics.csv alone had it: found by review)
        lines.append(f"  {skipped} step{'s' if skipped > 1 else ''} skipped: a non-finite loss or gradient norm "
                     "(optim.on_nonfinite=skip; the warnings above say where)")
    if speed.get("tokens_per_sec"):
        mfu = f" MFU {100 * speed['mfu']:.1f}%;" if speed.get("mfu") else f" ({speed['mfu_note']});" \
            if speed.get("mfu_note") else ""
        mean = (f", {speed['tokens_per_sec_mean']:.0f} tokens/s" + (" over all devices" if (speed.get("devices") or 1) > 1
                                                                      else "") + " over all training steps, validation excluded") \
            if speed.get("tokens_per_sec_mean") else ""
        every = f" per device ({speed['tokens_per_sec_all_devices']:.0f} over all {speed['devices']} devices)" \
            if speed.get("tokens_per_sec_all_devices") else ""
        since = f" (steps {speed['fit_from_step']}-{trainer.global_step}, since the resume)" \
            if speed.get("fit_from_step") else ""
        lines.append(f"  throughput {speed['tokens_per_sec']:.0f} tokens/s{every} in the last steps{mean};{mfu} fit "
                     f"took {speed.get('fit_seconds') or 0:.0f} s{since}"
                     + (f" ({speed['speed_note']})" if speed.get("speed_note") else ""))
    elif speed.get("fit_seconds") is not None:  # the line was left out without a word (a short resumed segment)
        mean = (f"; {speed['tokens_per_sec_mean']:.0f} tokens/s over all the run's training steps, validation "
                "excluded" if speed.get("tokens_per_sec_mean") else "")  # (in summary.json, left out here: review)
        lines.append("  throughput of the last steps not measured: this process trained too few optimizer steps to "
                     f"fill its window (up to min(20, trainer.log_every_n_steps) steps){mean}; fit took "
                     f"{speed['fit_seconds']:.0f} s")
    # "best None" where only last.ckpt was written; with monitor=null the kept file is the newest, not a best one
    kept = [f"{'best' if getattr(ckpt_cb, 'monitor', None) else 'newest (monitor=null)'} {best}"] if best else []
    lines.append("  checkpoints: " + "  ".join([*kept, *([f"last {last}"] if last else [])]) if best or last else
                 f"  checkpoints: none written (nothing was trained: the model is {untrained_from}'s)"
                 if untrained_from else
                 "  checkpoints: none written (no ModelCheckpoint callback: callbacks=none)" if ckpt_cb is None else
                 "  checkpoints: none written (the ModelCheckpoint saves none: save_top_k=0 and save_last unset)"
                 if getattr(ckpt_cb, "save_top_k", 1) == 0 and not getattr(ckpt_cb, "save_last", None) else
                 "  checkpoints: none written (the run ended before its ModelCheckpoint saved one)")
    lines += [f"  {logs.describe(lg)}" for lg in loggers]
    print("\n".join(lines), file=sys.stderr, flush=True)
    # the attention the model has (its typed config, defaults filled in): attention.kind=momentum under
    # attention=vanilla recorded {kind: momentum} without the eta it trained with (found by review)
    summary = {"attention": dataclasses.asdict(c.model.attention), "steps": trainer.global_step, "max_steps": c.max_steps,
               # the command line: a run without a checkpoint, resumed, is judged by it (_finished_uncheckpointed)
               "overrides": list(hydra_job().overrides), "unigram_val_ppl": baseline,
               "precision": c.trainer["precision"], "tokenizer_vocab_size": vocab[0], "model_vocab_size": vocab[1],
               "best_checkpoint": best, "last_checkpoint": last, "stopped_early": stop, **speed,
               **{k: v for k, v in metrics.items() if k.startswith(SUMMARY_METRICS)}}
    atomic_write_text(out_dir / "summary.json", json_text(summary, indent=2))


def _evaluated_step(out_dir: Path) -> int | str | None:
    """The step eval/results.json scored (train.py's end-of-run evaluation); "unknown" for one written before the
    step was recorded; None without a readable one. A run extended past its evaluation and stopped at its last step
    is evaluated again on resume, not reported as evaluated already."""
    try:
        doc = json.loads((out_dir / "eval" / "results.json").read_text())
        step = doc["checkpoints"][0].get("step")
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
    return "unknown" if step is None else step


def _check_evaluation(c: TrainConfig, model: GPT, tokenizer: Tokenizer) -> None:
    from momattn.eval.config import under_eval
    from momattn.eval.runner import check_evaluation

    t0 = time.perf_counter()
    try:
        # the run's own corpus was just read (or streams: its perplexity tokens are built after training)
        check_evaluation(model, tokenizer, c.resolved, c.eval, read_corpus=c.eval.ppl.data is not None, training=True)
    except (ConfigError, DataError) as e:
        e = under_eval(e)
        raise type(e)(f"the evaluation after training (run_eval=true) cannot run: {str(e).rstrip('.')}. Fix the eval settings, or "
                      "train without it (run_eval=false) and evaluate later with evaluate.py") from None
    if (took := time.perf_counter() - t0) > 5:
        print(f"[momattn] the evaluation's tasks and corpus checked in {took:.0f}s", file=sys.stderr)


def _evaluation_step(logger, step: int, trained: bool) -> int:
    """The logged step of the evaluation after `step` optimizer steps: the final validation's, step - 1; in W&B,
    when the process trained nothing (a resume of a run a SIGTERM stopped at its last step, or of a finished run
    with run_eval=true added), `step`: W&B drops the rows a resumed run logs below the step its first segment
    reached. (metrics.csv keeps step - 1: a row at the
    checkpoint's step is cut by the next resume, which continues the file from that step.)"""
    return step if not trained and isinstance(logger, WandbLogger) else max(0, step - 1)


def _evaluate(c: TrainConfig, model: GPT, tokenizer: Tokenizer, loggers: list, step: int, out_dir: Path,
              trained: bool = True, checkpoint: str | None = None) -> None:
    """The short evaluation (train.yaml's eval section) of the model after `step` optimizer steps, logged next to
    the training curves at the final validation's step: the loggers' axis is the last trained batch's index
    (train/loss of optimizer step n is at n - 1), not the count of optimizer steps (_evaluation_step)."""
    from momattn.eval.report import markdown_report
    from momattn.eval.runner import evaluate_model, flat_metrics, write_reports
    from momattn.eval.sweep import eval_inputs

    results = evaluate_model(model.eval(), tokenizer, c.resolved, c.eval, out_dir / "eval",
                             model.config.attention.kind, training=True)
    # the sweep's evaluation reuses these numbers only for a last.ckpt of these weights, and these local files
    results.step, results.weights, results.inputs = step, weights_digest(model), eval_inputs(c.eval)
    results.checkpoint = checkpoint  # the file holding these weights (none with callbacks=none)

    def log() -> None:  # before results.json, which tells a resume that the evaluation is done
        for lg in loggers:  # eval/ppl@L, icl/<task>/acc, ...
            lg.log_metrics(flat_metrics(results), step=_evaluation_step(lg, step, trained))
            lg.save()

    write_reports([results], out_dir / "eval", before_json=log)
    print(markdown_report([results]), flush=True)
    print(f"[momattn] evaluation tables: {out_dir / 'eval' / 'results.md'}", file=sys.stderr)
