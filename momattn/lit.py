"""The LightningModule: loss, AdamW with decay on the Linear and Embedding weights, warm-up + decay schedule,
RNG-exact resume."""

from __future__ import annotations

import dataclasses
import math
import random
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger

from momattn import lightning_compat as compat
from momattn.errors import NonFiniteLossError
from momattn.metrics import perplexity
from momattn.model import GPT
from momattn.optim import OptimConfig, build_adamw, fused_adamw_ok, lr_lambda
from momattn.quoting import shell_arg


def rng_state() -> dict:
    """RNG states in types that torch.load(weights_only=True) accepts (Lightning loads checkpoints that way)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    name, keys, pos, has_gauss, gauss = s["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _val_metrics(module) -> dict:
    """The trainer's newest val/* metrics (none without a trainer: a checkpoint saved by hand)."""
    metrics = getattr(getattr(module, "_trainer", None), "callback_metrics", None) or {}
    return {k: v for k, v in metrics.items() if k.startswith("val/") and getattr(v, "numel", lambda: 1)() == 1}


WINDOW_SPEED = ("tokens_per_sec", "mfu", "mfu_note", "flops_per_sec", "peak_flops_per_sec", "tokens_per_sec_all_devices")
# a throughput window's figures: what a resume too short to fill one keeps of the last measured (momattn.training)


def with_last_window(speed: dict, earlier) -> dict | None:
    """speed with the last measured window's figures (WINDOW_SPEED) of `earlier` (a checkpoint's speed) where this
    process measured none and earlier has one; None otherwise."""
    earlier = earlier if isinstance(earlier, dict) else {}
    if speed.get("tokens_per_sec") or not earlier.get("tokens_per_sec"):
        return None
    return {**speed, **{k: earlier[k] for k in WINDOW_SPEED if earlier.get(k) is not None}}


class LitGPT(pl.LightningModule):
    """Trains `model`; `meta` (model config, tokenizer, resolved run config) goes into every checkpoint."""

    def __init__(self, model: GPT, optim: OptimConfig, max_steps: int, meta: dict | None = None,
                 tokens_per_batch: int | None = None):
        super().__init__()
        self.model = model
        self.optim, self.max_steps = optim, max_steps
        self.meta = meta or {}
        self._train_flops = model.flops_per_token() * tokens_per_batch if tokens_per_batch else None
        self._val_sum, self._val_count, self._rng_to_restore = 0.0, 0, None
        self._step_loss, self._step_finite, self._nonfinite, self._skipped = None, 0, [], 0  # see training_step
        self.outcome: Callable[[], tuple[dict, dict]] | None = None  # train.py's (speed, logged metrics) so far
        self.last_finite_loss: float | None = None  # the newest step's train/loss over its finite micro-batches
        self.last_finite_step: int | None = None  # that step (counted from 0, as metrics.csv's step column)
        self._half_norm: torch.Tensor | None = None  # the step's float16 gradients' norm, summed in float32

    @property
    def flops_per_batch(self) -> float | None:
        """FLOPs of one micro-batch, read by Lightning's ThroughputMonitor: forward and backward (6N + 12 L d T per
        token) when training, the forward alone (a third: 2N + 4 L d T) when validating, which counted all three."""
        if self._train_flops is None:
            return None
        trainer = self._trainer
        return self._train_flops / 3 if trainer is not None and trainer.validating else self._train_flops

    def forward(self, idx):
        return self.model(idx)

    def _loss(self, batch) -> torch.Tensor:
        x, y = batch  # (B, T), (B, T)
        return self.model(x, targets=y)  # the mean cross-entropy; no float32 (B, T, V) logits on a CPU

    def training_step(self, batch, batch_idx):
        """The micro-batch's loss; its step's mean loss is logged once, in on_before_optimizer_step. A non-finite
        loss returns a zero that still gives every parameter a (zero) gradient, so that under DDP this rank's
        gradient all-reduce runs like the others'; the step is then stopped or skipped on every rank at once."""
        loss = self._loss(batch)
        if bool(torch.isfinite(loss)):
            d = loss.detach().double()
            self._step_loss = d if self._step_loss is None else self._step_loss + d
            self._step_finite += 1
            return loss
        self._nonfinite.append((loss.item(), batch_idx))
        # a zero (nan_to_num: even where the weights hold a NaN) through the forward's output, so that FSDP's
        # backward hooks run as on any step, plus every parameter, so that each gets a gradient (DDP waits for all)
        zero = sum(torch.nan_to_num(p, 0.0, 0.0, 0.0).sum() for p in self.parameters() if p.requires_grad) * 0.0
        return torch.nan_to_num(loss, 0.0, 0.0, 0.0) * 0.0 + zero

    def on_before_optimizer_step(self, optimizer):
        """After the step's last backward: every rank learns whether any rank met a non-finite loss, which and where
        (one all-reduce of 3 + 3 x ranks numbers under DDP, which also gives the step's mean loss over all ranks and
        micro-batches); such a step stops training, or with optim.on_nonfinite=skip leaves the weights and AdamW's
        state untouched."""
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        stats = torch.stack([zero if self._step_loss is None else self._step_loss.to(self.device),
                             zero + self._step_finite, zero + len(self._nonfinite), self._grad_norm(zero)])
        world, bad = self.trainer.world_size, self._nonfinite
        if world > 1:  # and each rank's first non-finite loss (met, value, batch): every rank says the same, where
            # rank 0 said "non-finite ... on another process" beside the rank's own line (found by review)
            firsts = torch.zeros(world, 3, dtype=torch.float64, device=self.device)
            if bad:
                firsts[self.trainer.global_rank] = torch.tensor([1.0, bad[0][0], bad[0][1]], dtype=torch.float64,
                                                                device=self.device)
            stats = self.trainer.strategy.reduce(torch.cat([stats, firsts.flatten()]), reduce_op="sum")
            firsts = stats[4:].view(world, 3).tolist()
            bad = [(v, int(b), r) for r, (met, v, b) in enumerate(firsts) if met][:1]
        total, n_finite, n_bad, grad_norm = stats[:4].tolist()
        self._nonfinite, self._step_loss, self._step_finite = [], None, 0
        if n_bad or not math.isfinite(grad_norm):
            # a gradient that overflowed in the backward of a finite loss: clipping then scaled every gradient by
            # nan and AdamW wrote nan into every weight, which the next validation saved as last.ckpt and as the
            # best, the checkpoint the stop called good (found by review)
            # the step as the console counts it (from 1: "step 10: val/loss"), and as metrics.csv does (from 0); it
            # said metrics.csv's alone, one below the validation lines beside it (found by review)
            value, where = (f"{bad[0][0]}", f", batch {bad[0][1]}" if world == 1 else
                            f", rank {bad[0][2]}, batch {bad[0][1]}") if n_bad else (f"{grad_norm}", "")
            where = f"{self.global_step + 1} (metrics.csv's step {self.global_step}{where})"
            if self.optim.on_nonfinite != "skip":
                kept, then = self._what_is_kept()
                advice = "Lower optim.lr, raise optim.warmup_steps or set optim.grad_clip" if n_bad else \
                    "Lower optim.lr or raise optim.warmup_steps (clipping cannot mend an infinite norm; in float16, " \
                    "a wider precision: bf16-mixed or 32-true)"
                raise NonFiniteLossError(
                    f"the training {'loss' if n_bad else 'gradient norm (of a finite loss)'} became {value} at step "
                    f"{where}; training stopped{kept}. {advice}, then {then}; or set "
                    "optim.on_nonfinite=skip to skip such steps")
            for p in self.parameters():  # AdamW passes over parameters without a gradient: no update, no decay
                p.grad = None
            self._skipped += 1
            self.print(f"[momattn] warning: non-finite {'loss' if n_bad else 'gradient norm'} ({value}) at step "
                       f"{where}: step skipped")
        # a step every loss of which was non-finite (skipped) logs nan: unlogged, Lightning wrote the step before's
        # (the run's result, summary.json and a sweeper's metric, takes last_finite_loss instead: momattn.training)
        self.log("train/loss", total / n_finite if n_finite else float("nan"), prog_bar=True)
        if n_finite:
            self.last_finite_loss, self.last_finite_step = total / n_finite, self.global_step
        self.log("train/lr", optimizer.param_groups[0]["lr"])
        if self.optim.on_nonfinite == "skip":
            self.log("train/skipped_nonfinite", float(self._skipped))  # steps skipped so far in this run

    def _grad_norm(self, zero: torch.Tensor) -> torch.Tensor:
        """This process's gradient norm (its shard's under FSDP; a sum over processes is non-finite where any is),
        as a float64 scalar; zero under fp16's grad scaler, which skips a step of non-finite gradients itself."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        self._half_norm = None
        if not grads or self._grad_scaler():
            return zero
        # float16 gradients summed in float32: their norm overflowed at 65504 though each was finite (review)
        half = any(g.dtype == torch.float16 for g in grads)
        grads = [g.float() if g.dtype == torch.float16 else g for g in grads]
        norm = torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False)
        self._half_norm = norm if half else None  # what clipping float16 gradients takes (configure_gradient_clipping)
        return norm.to(zero)

    def _what_is_kept(self) -> tuple[str, str]:
        """(what the run keeps, how to go on) for a divergence: it said "the last good checkpoint is kept ... resume
        with ckpt_path=last" before the run's first checkpoint too, in a folder that held none."""
        folder = getattr(getattr(self.trainer, "checkpoint_callback", None), "dirpath", None)
        if folder is not None and Path(folder, "last.ckpt").exists():
            return " and the last good checkpoint is kept", "resume with ckpt_path=last"
        others = sorted(Path(folder).glob("*.ckpt"), key=lambda p: p.stat().st_mtime) if folder is not None else []
        if others:  # save_last=false: its best checkpoints, which ckpt_path=last does not take; the newest named
            names = ", ".join(p.name for p in others[-3:]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
            return (f" ({folder} keeps {names}; no last.ckpt, save_last is off)",
                    f"resume from one of them, e.g. the newest ({shell_arg('ckpt_path', others[-1])})")
        started = getattr(self.trainer, "ckpt_path", None)
        if started:  # resumed into a folder of its own from another run's checkpoint
            return " before its first checkpoint", ("resume from the checkpoint it started from again "
                                                    f"({shell_arg('ckpt_path', started)})")
        return " before its first checkpoint", "train again"

    def validation_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self._val_sum += loss.item() * batch[0].size(0)
        self._val_count += batch[0].size(0)

    def on_validation_epoch_end(self):
        totals = torch.tensor([self._val_sum, self._val_count], dtype=torch.float64, device=self.device)
        totals = self.all_gather(totals).reshape(-1, 2).sum(0) if self.trainer.world_size > 1 else totals
        self._val_sum, self._val_count = 0.0, 0
        if totals[1] > 0:
            if not self.trainer.sanity_checking:
                self.validated_at = self.trainer.global_step  # the final step is validated where this lags
            val_loss = (totals[0] / totals[1]).item()
            self.log("val/loss", val_loss, prog_bar=True, sync_dist=False, rank_zero_only=True)
            # a float64 tensor (on the CPU, where every device has float64): a float was logged as float32, inf
            # past a val/loss of 88.7 (found by review)
            self.log("val/ppl", torch.tensor(perplexity(val_loss), dtype=torch.float64), prog_bar=True,
                     rank_zero_only=True)

    def configure_optimizers(self):
        o = self.optim
        opt = build_adamw(self.model, o, self._fused([p for p in self.model.parameters() if p.requires_grad]))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, o, self.max_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Trainer(gradient_clip_val=...) as usual; under FSDP, whose precision plugin refuses norm clipping, the
        wrapped module clips the global norm over all shards itself."""
        from lightning.pytorch.strategies import FSDPStrategy

        if all(p.grad is None for p in self.parameters()):  # a step skipped (optim.on_nonfinite=skip): nothing to
            return  # clip (FSDP warned "clip_grad_norm_() ... with no gradients" on every rank: review)
        if gradient_clip_val and self._half_norm is not None and gradient_clip_algorithm != "value" \
                and not isinstance(self.trainer.strategy, FSDPStrategy):
            # float16 gradients (16-true): clipped by the norm summed in float32; torch's clip_grad_norm_ sums them
            # in float16, where a finite norm over 65504 overflows and the clip multiplied every gradient by 0,
            # silently (third flows review)
            torch.nn.utils.clip_grads_with_norm_([p for p in self.parameters() if p.grad is not None],
                                                 gradient_clip_val, self._half_norm)
            return
        if gradient_clip_val and isinstance(self.trainer.strategy, FSDPStrategy):
            if gradient_clip_algorithm == "value":  # elementwise: each shard clips its own gradients alone
                torch.nn.utils.clip_grad_value_([p for p in self.parameters() if p.grad is not None], gradient_clip_val)
            else:
                self.trainer.model.clip_grad_norm_(gradient_clip_val)
            return
        if gradient_clip_val and getattr(optimizer, "_step_supports_amp_scaling", False) and not self._grad_scaler():
            # a fused AdamW under bf16-mixed: Lightning's mixed-precision plugin refuses to clip for an optimizer
            # that unscales gradients itself, a guard for fp16's grad scaler; with no scaler, clip as it would
            params = [p for group in optimizer.param_groups for p in group["params"]]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def _fused(self, params) -> bool:
        """Fused AdamW where it can run (fused_adamw_ok), except under FSDP (sharded views) and fp16's grad scaler."""
        from lightning.pytorch.strategies import FSDPStrategy

        trainer = getattr(self, "_trainer", None)
        fsdp = trainer is not None and isinstance(trainer.strategy, FSDPStrategy)
        return fused_adamw_ok(params) and not fsdp and not self._grad_scaler()

    def _grad_scaler(self) -> bool:
        """Whether the trainer (if any) scales gradients (fp16 mixed precision)."""
        trainer = getattr(self, "_trainer", None)
        return trainer is not None and getattr(getattr(trainer, "precision_plugin", None), "scaler", None) is not None

    def on_train_batch_start(self, batch, batch_idx):
        if getattr(self, "_align_step", False):  # the first batch of this fit, after Lightning restored its loops
            compat.align_logged_step(self.trainer)  # a resumed curve continues at the right step
            self._align_step = False

    def on_train_batch_end(self, outputs, batch, batch_idx):
        # the last optimizer step off the validation interval: stopping here makes Lightning validate this model
        # inside fit, so the checkpoint callback sees that validation (best-*.ckpt, last.ckpt) like any other
        t = self.trainer
        if t.max_steps > 0 and t.global_step >= t.max_steps and getattr(self, "validated_at", None) != t.global_step \
                and t.num_val_batches and t.limit_val_batches != 0:
            t.should_stop = True

    def on_save_checkpoint(self, checkpoint):
        checkpoint["momattn"] = {**self.meta, "rng": rng_state(), "skipped_nonfinite": self._skipped,
                                 # the newest validation's: a run stopped between its end and summary.json reports
                                 # them on the resume that trains no further (its report had no val/loss)
                                 "val_metrics": {k: float(v) for k, v in _val_metrics(self).items()}}
        if self.outcome is not None:  # and its train/* metrics and speed (they were missing there: review)
            speed, logged = self.outcome()
            # a resume too short for a window: the last window measured, carried on (a second short resume had no
            # rate again: flows review)
            speed = with_last_window(speed, getattr(self, "_resumed_speed", None)) or speed
            checkpoint["momattn"] |= {"speed": speed,
                                      "train_metrics": {k: v for k, v in logged.items() if k.startswith("train/")}}
        for logger in self.loggers:  # a resume continues the same W&B run
            if isinstance(logger, WandbLogger) and logger.version:
                checkpoint["momattn"]["wandb_run_id"] = logger.version

    def on_load_checkpoint(self, checkpoint):
        self._rng_to_restore = checkpoint.get("momattn", {}).get("rng")
        self._resumed_speed = checkpoint.get("momattn", {}).get("speed")
        self._skipped = int(checkpoint.get("momattn", {}).get("skipped_nonfinite") or 0)  # the count runs on
        config = checkpoint.get("momattn", {}).get("config") or {}
        self._resumed_optim = config.get("optim") or {}
        self._resumed_max_steps = (config.get("trainer") or {}).get("max_steps")

    def setup(self, stage: str) -> None:
        from momattn.entry_signals import die_with_parent

        die_with_parent(False)  # the ranks have met (Lightning's setup_environment, before this hook): from here a
        # lost rank 0 is heard of in a collective, and this rank ends in one line naming the checkpoint

    def on_train_start(self):
        self._align_step = True
        if self._rng_to_restore is not None:  # after every other restore step, right before the next batch
            set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        trainer = getattr(self, "_trainer", None)
        if getattr(self, "_resumed_optim", None) is not None and getattr(trainer, "optimizers", None):
            self._apply_optim_config(trainer, self._resumed_optim)
        self._resumed_optim = None

    def _apply_optim_config(self, trainer, before: dict) -> None:
        """A resume trains with the optim section it is given: Lightning restores the optimizer's lr, betas, eps
        and weight decay, and the schedule's base lr, from the checkpoint, so `optim.lr=1e-4 ckpt_path=last` (what
        the divergence message advises) would otherwise train on at the old rates. The same values as the
        checkpoint's leave every number as it was (the resume stays exact)."""
        o, opt = self.optim, trainer.optimizers[0]
        for i, g in enumerate(opt.param_groups):  # build_adamw's groups: [weights (decayed), the rest]
            g.update(initial_lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay if i == 0 else 0.0)
            g["lr"] = o.lr * lr_lambda(trainer.global_step, o, self.max_steps)  # what LambdaLR gives there
        for config in trainer.lr_scheduler_configs:
            config.scheduler.base_lrs = [o.lr] * len(opt.param_groups)
        def plain(v):  # betas: a list in the stored config, a tuple or list here
            return list(v) if isinstance(v, list | tuple) else v

        rate = ("lr", "schedule", "warmup_steps", "min_lr_ratio", "power")  # what the lr at a step is made of
        keys = [k for k in ("lr", "betas", "eps", "weight_decay", *rate[1:])
                if before.get(k) is not None and plain(before[k]) != plain(getattr(o, k))]  # changed by the resume
        changed = [f"optim.{k}={getattr(o, k)} (was {before[k]})" for k in keys]
        if changed and trainer.is_global_zero:
            print(f"[momattn] resumed with {', '.join(changed)}: training continues at step {trainer.global_step} "
                  "with these", file=sys.stderr)
        was = getattr(self, "_resumed_max_steps", None)  # the schedule's length: a new max_steps re-stretches it
        step = trainer.global_step
        if isinstance(was, int) and was != self.max_steps and trainer.is_global_zero:
            # the checkpoint's run's rate: its own optim section and length (today's lr on the old length mixed the
            # two configs: "from 0.0001" where the run had 2e-4; found by review)
            # (a plain view, not dataclasses.replace: its checks on a mix of the two configs could refuse a resume)
            old = SimpleNamespace(**{**dataclasses.asdict(o), **{k: before[k] for k in rate
                                                                 if before.get(k) is not None}})
            old_lr, new_lr = old.lr * lr_lambda(step, old, was), o.lr * lr_lambda(step, o, self.max_steps)
            moved = [f"optim.{k}={getattr(o, k)}" for k in keys if k in rate]  # the lr's own settings changed too
            jumps = not math.isclose(old_lr, new_lr, rel_tol=1e-9)  # (constant, or still warming up: it does not)
            if jumps and moved:  # the jump is theirs as much (optim.schedule=constant's was put down to the length)
                print(f"[momattn] trainer.max_steps={self.max_steps} (the checkpoint's run had {was}) and "
                      f"{', '.join(moved)}: at step {step} the lr goes from {old_lr:.3g} (its {old.schedule} "
                      f"schedule over {was} steps) to {new_lr:.3g} ({o.schedule} over {self.max_steps})",
                      file=sys.stderr)
            elif jumps:
                print(f"[momattn] trainer.max_steps={self.max_steps} (the checkpoint's run had {was}): the "
                      f"{o.schedule} lr schedule now spans {self.max_steps} steps, so at step {step} the lr goes "
                      f"from {old_lr:.3g} to {new_lr:.3g}", file=sys.stderr)
