"""How much memory the first training step needs, estimated from the config before anything is allocated, so
that a context far beyond the machine is refused in a second instead of dying in the allocator minutes later.

    bytes ~ 4 N w                                  weights, gradients, AdamW's two moments (w: 4 B, or 8 B at
                                                   64-true, 2 B at bf16-true / 16-true, whose moments are bf16)
          + B T L (20 d) a                         activations kept for backward, per layer (a: 4 B fp32, 2 B
                                                   bf16 and fp16, mixed or true, 8 B at 64-true)
          + B T (12 V + 8 d)                       logits, their fp32 copy and gradient; embeddings
          + B L (12 H T^2 + 3 T d)                 off CUDA with dropout: the attention matrix and its dropout
                                                   mask in fp32 per layer (SDPA's math path), dropout masks
with N the parameter count, B the micro-batch, T the context, L layers, d the width, H heads, V the vocabulary.
Flash attention (CUDA, or CPU without dropout) keeps no (T, T) matrix (bf16 CPU training's backward at T <= 512,
momattn/cpu_attention.py, holds at most 64 MiB of them at a time); momentum's EMA is linear in T. Under FSDP
each of W processes holds 16 N / W of the states (a full shard), plus, whole, the weights and gradient of the
largest FSDP unit it gathers (the embeddings; one unit per Block otherwise). Off CUDA the loss is blocked (momattn/loss.py):
one block of rows' logits at a time, 10 V bytes per row of ROWS_PER_BLOCK, plus the hidden states' copies and
gradient and the LM head's gradient (12 B T d + 4 V d) instead of 12 B T V. The estimate is meant to be within about 2x."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
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
    """The model's exact parameter count (tied embeddings once), from a model built on the meta device (no memory)."""
    import torch

    from momattn.model import GPT

    def count(n_layer: int) -> int:
        try:
            with torch.device("meta"):
                return sum(p.numel() for p in GPT(replace(model_config, n_layer=n_layer)).parameters())
        except RuntimeError as e:  # model.n_embd=1e9: "Storage size calculation overflowed", a traceback
            if "overflow" not in str(e):
                raise
            from momattn.errors import ConfigError

            c = model_config
            raise ConfigError(f"the model is too large to exist: a weight of model.n_embd={c.n_embd}, model.n_head="
                              f"{c.n_head}, vocabulary {c.vocab_size} would hold more values than a tensor can; "
                              "choose a smaller model.n_embd") from None

    if model_config.n_layer <= 2:
        return count(model_config.n_layer)
    # the blocks are alike: two small models give the count of any depth (building 100000 blocks, even on the meta
    # device, took minutes before the memory check could refuse them)
    one, two = count(1), count(2)
    return one + (model_config.n_layer - 1) * (two - one)


def bytes_per_value(precision: str) -> tuple[int, int]:
    """(bytes per weight, gradient and AdamW moment; bytes per activation) at a trainer precision."""
    p = str(precision)
    if p.startswith("64"):
        return 8, 8
    half = "bf16" in p or p.startswith("16")
    return (2 if half and p.endswith("-true") else 4), (2 if half else 4)


def blocked_loss_for(precision: str, on_gpu: bool) -> bool:
    """Whether momattn/loss.py's blocked loss (no (B T, V) logits) is the one a run takes: off CUDA, except in
    float16, whose loss builds the full logits (16-true on a CPU was planned 4x under)."""
    return not on_gpu and not str(precision).startswith("16")


def estimate_train_memory(model_config, batch_size: int, precision: str = "32-true",
                          blocked_loss: bool = False, shards: int = 1, off_cuda: bool | None = None) -> MemoryEstimate:
    """Per process. blocked_loss: momattn/loss.py's blocked loss, no (B T, V) logits (blocked_loss_for); off_cuda
    (default: blocked_loss): with dropout, SDPA keeps the (T, T) attention matrix. shards: the processes FSDP shards
    the states over (1: none)."""
    from momattn.loss import ROWS_PER_BLOCK

    c = model_config
    w, act = bytes_per_value(precision)
    tokens = batch_size * c.block_size
    n = n_params(c)
    states = 4 * w * n // max(1, shards)
    if shards > 1:  # FSDP gathers one unit at a time (momattn.strategies: one per Block, the embeddings in the
        # root unit): the largest whole, with its gradient before the reduce-scatter
        root = c.vocab_size * c.n_embd + (c.block_size * c.n_embd if c.pos_emb == "learned" else 0)
        states += 2 * w * max(root, (n - root) // max(1, c.n_layer))
    inner = c.n_inner or 4 * c.n_embd  # the MLP's hidden width and its GELU output (n_inner was left out: 4x under)
    activations = tokens * c.n_layer * (12 * c.n_embd + 2 * inner) * act
    if (blocked_loss if off_cuda is None else off_cuda) and c.dropout > 0:
        # off CUDA, two (B, H, T, T) fp32 tensors per layer saved for backward, and a transient
        activations += batch_size * c.n_layer * (12 * c.n_head * c.block_size ** 2 + 3 * c.block_size * c.n_embd)
    if blocked_loss:
        logits = min(tokens, ROWS_PER_BLOCK) * 10 * c.vocab_size + 4 * c.vocab_size * c.n_embd + tokens * 12 * c.n_embd
    else:
        logits = tokens * (12 * c.vocab_size + 8 * c.n_embd)
    return MemoryEstimate(states + activations + logits, states, activations, logits)


def available_memory(device: str = "cpu") -> int | None:
    """Bytes free for a new allocation: a GPU's free memory; on a CPU, MemAvailable on Linux (or physical memory),
    or less where this process's cgroup (a container's --memory, a SLURM job's --mem) allows less."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info()[0]) if torch.cuda.is_available() else None
    have = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                have = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    if have is None:
        try:
            have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            pass
    limit = cgroup_memory()
    if limit is not None:  # the node's MemAvailable passed, and the kernel's OOM killer ended the run mid-step
        have = limit[0] if have is None else min(have, limit[0])
    return have


def _stat_value(path: Path, key: str) -> int:
    """A field of a cgroup's memory.stat (0 where it cannot be read)."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def cgroup_memory(root: Path = Path("/sys/fs/cgroup"), proc: Path = Path("/proc/self/cgroup")) -> tuple[int, int] | None:
    """(bytes left, the limit) under the tightest memory limit of this process's cgroup and its parents (v2:
    memory.max - (memory.current - inactive_file); v1: the memory controller's limit_in_bytes - (usage_in_bytes -
    total_inactive_file)), or None where no limit is set or none can be read."""
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return None
    best = None
    for line in lines:
        hier, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hier == "0" and controllers == "":  # v2's unified hierarchy
            base, files, cache = root, ("memory.max", "memory.current"), "inactive_file"
        elif "memory" in controllers.split(","):  # v1's memory controller
            base, files, cache = root / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes"), \
                "total_inactive_file"
        else:
            continue
        rel = Path(path.strip() or "/").relative_to("/") if path.strip().startswith("/") else Path(path.strip())
        for folder in [base / rel, *(base / p for p in rel.parents)]:  # the job's cgroup and each one above it
            try:
                limit_text, used = ((folder / f).read_text().strip() for f in files)
                limit, used = int(limit_text), int(used)
            except (OSError, ValueError):  # "max" (no limit), a folder not mounted here
                continue
            if limit >= 1 << 60:  # v1's "no limit" is a page-rounded 2^63
                continue
            # usage counts the page cache, which the kernel reclaims before it kills: the inactive part is free room
            # (the working set, as kubelet counts it; a corpus just read made runs that fit look over: found by review)
            used -= _stat_value(folder / "memory.stat", cache)
            left = max(0, limit - max(0, used))
            if best is None or left < best[0]:
                best = (left, limit)
    return best


DROPOUT_ADVICE = ", or set model.dropout=0 (off CUDA, attention with dropout keeps the T x T matrix)"  # (and plan)


def check_fits(model_config, batch_size: int, precision: str, accelerator: str | None, devices=1,
               world: int = 1, sharded: bool = False, at_least: str | None = None) -> MemoryEstimate:
    """Raise a ConfigError, naming the limit and the fix, when the first training step cannot fit in memory.
    world: the training processes; sharded: FSDP (each holds 1/world of the states); at_least: the model is a lower
    bound (a BPE's smallest vocabulary, before it is trained), said so in the message."""
    from momattn.errors import ConfigError
    from momattn.hardware import runs_on_gpu

    on_gpu = runs_on_gpu(accelerator)
    how = {"blocked_loss": blocked_loss_for(precision, on_gpu), "off_cuda": not on_gpu, "shards": world if sharded else 1}
    need = estimate_train_memory(model_config, batch_size, precision, **how)
    have = available_memory("cuda" if on_gpu else "cpu")
    procs = 1 if on_gpu else (devices if isinstance(devices, int) and devices > 0 else 1)  # CPU DDP: one RAM
    if have is not None and need.total * procs > have:
        limit = None if on_gpu else cgroup_memory()
        where = "GPU memory free" if on_gpu else "RAM available" + (
            f" (this job's cgroup allows {limit[1] / GIB:.1f} GiB)" if limit is not None and limit[0] <= have else "")
        # off CUDA, the processes share one machine's RAM: more of them there shard nothing (found by review)
        more = "over more devices" if on_gpu else "over more machines (trainer.accelerator=cpu trainer.num_nodes=N)"
        dropout = DROPOUT_ADVICE if model_config.dropout > 0 and not on_gpu else ""
        if need.states > need.activations + need.logits:  # a smaller batch or context cannot free the states
            fix = (f"Most of it is the weights and AdamW's state, which a smaller batch cannot free: shard them with "
                   f"trainer=fsdp {more}, or train a smaller model" if not sharded else
                   f"Most of it is the weights and AdamW's state: shard them {more}, or train a smaller model")
        elif (one := estimate_train_memory(model_config, 1, precision, **how)).total * procs > have:
            fix = (f"Even data.batch_size=1 needs {one.describe()}: train a smaller model (model.n_layer, "
                   f"model.n_embd) or a shorter context (model.block_size){dropout}")
        else:
            fix = ("Lower data.batch_size (and raise trainer.accumulate_grad_batches to keep the tokens per step) or "
                   f"model.block_size{dropout}")
        raise ConfigError(
            f"the first training step needs {'at least ' if at_least else ''}{need.describe()}"
            f"{f' x {procs} processes' if procs > 1 else ''}{f' ({at_least})' if at_least else ''}"
            f"{f' (states sharded over {world})' if sharded and world > 1 else ''}, but "
            f"this machine has {have / GIB:.1f} GiB of {where} (model.block_size={model_config.block_size}, "
            f"data.batch_size={batch_size}, model.n_layer={model_config.n_layer}, model.n_embd={model_config.n_embd}, "
            f"vocabulary {model_config.vocab_size})."
            f" {fix}")
    return need
