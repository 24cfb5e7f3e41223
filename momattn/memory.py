"""How much memory the first training step needs, estimated from the config before anything is allocated, so
that a context far beyond the machine is refused in a second instead of dying in the allocator minutes later.

    bytes ~ 16 N                                   weights, gradients, AdamW's two moments (fp32)
          + B T L (20 d) a                         activations kept for backward, per layer (a: 4 B fp32, 2 B bf16)
          + B T (12 V + 8 d)                       logits, their fp32 copy and gradient; embeddings
with N the parameter count, B the micro-batch, T the context, L layers, d the width, V the vocabulary. Flash
attention keeps no (T, T) matrix; momentum's EMA is linear in T. Off CUDA the loss is blocked (momattn/loss.py):
one block of rows' logits at a time, 10 V bytes per row of ROWS_PER_BLOCK, plus the hidden states' gradient and
the LM head's (4 B T d + 4 V d) instead of 12 B T V. The estimate is meant to be within about 2x."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30


@dataclass
class MemoryEstimate:
    total: int  # bytes
    states: int  # weights, gradients, optimizer
    activations: int
    logits: int

    def describe(self) -> str:
        return (f"~{self.total / GIB:.1f} GiB (weights+gradients+AdamW {self.states / GIB:.1f}, activations "
                f"{self.activations / GIB:.1f}, logits {self.logits / GIB:.1f})")


def n_params(model_config) -> int:
    c = model_config
    inner = c.n_inner or 4 * c.n_embd
    per_layer = 4 * c.n_embd * c.n_embd + 2 * c.n_embd * inner + 13 * c.n_embd  # qkv+proj, mlp, norms and biases
    pos = c.block_size * c.n_embd if c.pos_emb == "learned" else 0
    return c.n_layer * per_layer + c.vocab_size * c.n_embd + pos


def estimate_train_memory(model_config, batch_size: int, precision: str = "32-true",
                          blocked_loss: bool = False) -> MemoryEstimate:
    """blocked_loss: the loss momattn/loss.py takes off CUDA (no (B T, V) logits); False: the plain form (CUDA)."""
    from momattn.loss import ROWS_PER_BLOCK

    c = model_config
    act = 2 if ("bf16" in str(precision) or str(precision).startswith("16")) else 4
    tokens = batch_size * c.block_size
    states = 16 * n_params(c)
    activations = tokens * c.n_layer * 20 * c.n_embd * act
    if blocked_loss:
        logits = min(tokens, ROWS_PER_BLOCK) * 10 * c.vocab_size + 4 * c.vocab_size * c.n_embd + tokens * 12 * c.n_embd
    else:
        logits = tokens * (12 * c.vocab_size + 8 * c.n_embd)
    return MemoryEstimate(states + activations + logits, states, activations, logits)


def available_memory(device: str = "cpu") -> int | None:
    """Bytes free for a new allocation: MemAvailable on Linux (or physical memory), a GPU's free memory."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info()[0]) if torch.cuda.is_available() else None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(model_config, batch_size: int, precision: str, accelerator: str | None, devices=1) -> MemoryEstimate:
    """Raise a ConfigError, naming the limit and the fix, when the first training step cannot fit in memory."""
    import torch

    from momattn.errors import ConfigError

    acc = str(accelerator or "auto").lower()
    on_gpu = acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available())
    need = estimate_train_memory(model_config, batch_size, precision, blocked_loss=not on_gpu)
    have = available_memory("cuda" if on_gpu else "cpu")
    procs = 1 if on_gpu else (devices if isinstance(devices, int) and devices > 0 else 1)  # CPU DDP: one RAM
    if have is not None and need.total * procs > have:
        where = "GPU memory free" if on_gpu else "RAM available"
        raise ConfigError(
            f"the first training step needs {need.describe()}{f' x {procs} processes' if procs > 1 else ''}, but "
            f"this machine has {have / GIB:.1f} GiB of {where} (model.block_size={model_config.block_size}, "
            f"data.batch_size={batch_size}, model.n_embd={model_config.n_embd}, vocabulary {model_config.vocab_size})."
            " Lower data.batch_size (and raise trainer.accumulate_grad_batches to keep the tokens per step) or "
            "model.block_size")
    return need
