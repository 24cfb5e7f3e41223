"""AdamW and its learning-rate schedule as train.py runs them: train.yaml's optim section (validated at start-up,
without Lightning), the warm-up + decay multiplier, and the optimizer with decay on the Linear and Embedding
weights only (not biases, LayerNorms, eta or multirate_ema's rates: build_adamw)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from momattn.errors import ConfigError

SCHEDULES = ("cosine", "polynomial", "constant")


@dataclass
class OptimConfig:
    """train.yaml's optim section."""

    lr: float = 2e-3
    min_lr_ratio: float = 0.1  # lr * min_lr_ratio at step max_steps (cosine, polynomial): the last step trained, max_steps - 1, is one decay step above it
    weight_decay: float = 0.1  # AdamW, on the Linear and Embedding weights (not biases, norms or learned rates)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    warmup_steps: int = 40
    schedule: str = "cosine"  # cosine | polynomial | constant
    power: float = 1.0  # polynomial decay power (fairseq's default 1.0 = linear)
    grad_clip: float | None = 1.0  # 0 or null disables
    on_nonfinite: str = "stop"  # stop | skip: what a NaN/inf loss does

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"optim.schedule='{self.schedule}' is unknown; choose cosine, polynomial or constant")
        if self.on_nonfinite not in ("stop", "skip"):
            raise ConfigError(f"optim.on_nonfinite='{self.on_nonfinite}' is unknown; choose stop or skip")
        checks = [("lr", self.lr, math.isfinite(self.lr) and self.lr > 0, "finite and > 0"),  # each named alone
                  ("warmup_steps", self.warmup_steps, self.warmup_steps >= 0, ">= 0"),  # (one sentence named all)
                  ("betas", list(self.betas), len(self.betas) == 2, "two numbers, e.g. optim.betas=[0.9,0.95]"),("min_lr_ratio", self.min_lr_ratio, 0 <= self.min_lr_ratio <= 1, "in [0, 1]"),
                  ("betas", list(self.betas), all(0 <= b < 1 for b in self.betas), "each in [0, 1)"),
                  ("grad_clip", self.grad_clip, self.grad_clip is None or 0 <= self.grad_clip < math.inf,
                   "finite and >= 0 (0 or null: no clipping; a negative norm would reverse the gradient)"),
                  # inf passed these silently: eps=inf makes every Adam step 0, power=inf drops the lr to its floor
                  # after step 0, and weight_decay=inf turned the loss nan, blamed on the learning rate
                  ("power", self.power, 0 < self.power < math.inf, "finite and > 0"),
                  ("eps", self.eps, 0 < self.eps < math.inf, "finite and > 0"),
                  ("weight_decay", self.weight_decay, 0 <= self.weight_decay < math.inf, "finite and >= 0")]
        for name, value, ok, want in checks:
            if not ok:
                raise ConfigError(f"optim.{name}={value} must be {want}")
        # finite but absurd, as inf was (found by fuzzing): eps=1e30 made every Adam step ~0 and trained nothing in
        # silence; lr x weight_decay >= 1 scales the weights by 1 - lr * wd <= 0 each step (1000: sign flips, 1e30:
        # a nan loss blamed on the learning rate)
        if self.eps >= 1:
            raise ConfigError(f"optim.eps={self.eps} must be < 1 (it is added to Adam's sqrt(v), the size of a "
                              "gradient: at 1 or more every step shrinks towards 0); the usual values are 1e-8 to 1e-6")
        if self.lr * self.weight_decay >= 1:
            raise ConfigError(f"optim.weight_decay={self.weight_decay} with optim.lr={self.lr}: AdamW scales the "
                              f"weights by 1 - lr x weight_decay = {1 - self.lr * self.weight_decay:.3g} each step, "
                              "which zeroes or flips them; lr x weight_decay must be < 1 (the usual weight_decay is "
                              "0.01 to 0.1)")


def lr_lambda(step: int, o: OptimConfig, max_steps: int) -> float:
    """Multiplier of the peak lr at optimizer step `step`: linear warm-up, then cosine/polynomial/constant."""
    if step < o.warmup_steps:
        return (step + 1) / (o.warmup_steps + 1)
    if o.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - o.warmup_steps) / max(1, max_steps - o.warmup_steps))
    if o.schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:  # polynomial (fairseq's polynomial_decay)
        decay = (1.0 - progress) ** o.power
    return o.min_lr_ratio + (1.0 - o.min_lr_ratio) * decay


def fused_adamw_ok(params: list[torch.Tensor]) -> bool:
    """Whether AdamW's fused kernel can take these parameters: plain parameters (not FSDP's flat ones) on a CPU or a
    CUDA GPU (torch >= 2.4, the project's floor, has both kernels). It updates every tensor in one pass: 3.7 against
    16.8 ms per step for the main job's model on a 2-core CPU (for-each kernels). LitGPT leaves it off under FSDP
    and with fp16's grad scaler. A run resumed from a checkpoint saved with the for-each kernel keeps that kernel
    (torch restores an optimizer's kernel choice with its state)."""
    return bool(params) and all(
        type(p) is torch.nn.Parameter and p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)


def build_adamw(model: torch.nn.Module, o: OptimConfig, fused: bool) -> torch.optim.AdamW:
    """AdamW as train.py runs it (LitGPT, and the benchmarks' training step): weight decay on the weights of Linear
    and Embedding layers only, not on biases, LayerNorms, eta, nor multirate_ema's delta/gamma (2-D, but decay rates
    and mixing weights, not weight matrices); `fused`: the fused kernel (see fused_adamw_ok)."""
    params = [p for p in model.parameters() if p.requires_grad]
    weights = {id(m.weight) for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))}
    decay = [p for p in params if id(p) in weights]
    no_decay = [p for p in params if id(p) not in weights]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=fused or None,
    )
