"""Causal softmax attention for CPU training, with a faster backward than SDPA's CPU flash kernel.

    y = cpu_attention.causal(q, k, v)    # q, k, v (B, H, T, D) on the CPU, bf16 or float32 -> (B, H, T, D)

The forward is torch's own CPU flash attention (the op F.scaled_dot_product_attention runs there, which also
returns the rows' log-sum-exp lse). The backward recomputes the scores with batched matmuls in the inputs' dtype
(bf16 ones run on the CPU's AMX tiles, with float32 sums) and does the elementwise part in one float32 pass of a
C++ kernel (`softmax_grad` in momattn/csrc/ema_scan.cpp, the library momattn/cpu_scan.py builds):

    p  = exp(scale q k^T - lse) / its row's sum,   dp = dO v^T,   ds = scale p (dp - rowsum(p * dp))
                                                                                       (0 above the diagonal)
    dv = p^T dO,   dk = ds^T q,   dq = ds k

p and ds are whole (T, T) matrices for as many (batch, head) pairs as fit in BUFFER_BYTES, so each gradient is one
matmul (no sums over blocks). Past WHOLE_T (512) they are blocks of BLOCK_T queries against the keys up to the
block's last (the masked blocks are not formed; dk, dv summed over the blocks in float32): forward and backward at
1.15x SDPA's speed at T 1024 and 1.11x at 2048, where whole matrices ran 0.95x and 0.65x
(benchmarks/results/cpu_attention_blocked_session47.md). The scores are formed less lse / scale (one more column of q and k), so that their
rounding to bf16 is small where p is large. On the main job's model (4 x 256, T 512, batch 8, bf16) SDPA's CPU
flash backward took ~34 ms a layer, six times its forward, and was a third of the step; forward and backward
together ran 1.8x faster with this one, 2.1x at T 256 (`python benchmarks/bench_cpu_attention.py`; README, Benchmarks, goal 1).
p and ds are rounded to bf16 before the matmuls that read them: against float64 SDPA the gradients' error is 1.4-1.9x
SDPA's own in bf16 (dq up to 2.4x at T = 512 with unit-size scores: a review's eight seeds) (benchmarks/results/cpu_attention.md; tested within 2x at logit spreads of 3 and 10), and float32
rounding in float32 (tests/test_cpu_attention.py). p is divided by its row's sum as computed (1 up to the exp's and
the rounding's error), and the row sum in ds is the p's and dp's as rounded (it equals rowsum(dO * O) exactly): each row
of ds then sums to ~0, as the exact one does, and dv reads probabilities that sum to 1 (a float32 rowsum(dO * O)
beside dp rounded to bf16 left dq and dk at 7e-3 at a sequence's first position, where they are 0: session 59's
reviews, which also found the exp's error entering ds and dv on rows near one-hot).

The model (momattn/model.py) takes it where `pays` says: bf16 training on a CPU with AMX, no attention dropout, no
cached prefix, T <= MAX_T (512), eager mode, and the kernel builds; everything else takes SDPA.
MOMATTN_CPU_ATTENTION=sdpa turns it off (the forward is the same either way). A second derivative (create_graph)
goes through SDPA's math path.
"""

from __future__ import annotations

import ctypes
import os

import torch

from momattn import cpu_scan
from momattn.hardware import cpu_has_amx

BUFFER_BYTES = 64 << 20  # the backward's (G, T, T) p and ds together, at most (G >= 1 pair)
# the longest context the model takes it for: forward + backward against SDPA's in bf16 on 2 cores of an AMX Xeon
# (benchmarks/results/cpu_attention.md, session 44) 2.1x at T 256, 1.8x at 512, 0.95x at 1024, 0.65x at 2048 (whole
# (T, T) matrices do the masked half's work too, and outgrow the caches; SDPA's are blocked). Blocks of queries
# (session 47) gave 1.15x at 1024 and 1.11x at 2048 (1.05-1.25x at 1024-4096 in a second run), with the gradients'
# error still twice SDPA's: too little to move the model's rule, whose T = 1024 records were taken with SDPA
MAX_T = 512
WHOLE_T = 512  # up to this length the backward forms whole (T, T) matrices; past it, blocks of BLOCK_T queries
BLOCK_T = 256
_NAMES = {torch.float32: "attn_grad_f32", torch.bfloat16: "attn_grad_bf16"}
_P, _I = ctypes.c_void_p, ctypes.c_int64


def setting_problem() -> str | None:
    """Why MOMATTN_CPU_ATTENTION is not a setting (train.py says it at start-up), or None."""
    setting = os.environ.get("MOMATTN_CPU_ATTENTION", "auto")
    if setting not in ("auto", "sdpa"):
        return f"MOMATTN_CPU_ATTENTION={setting!r} is not a setting; use auto (the default) or sdpa"
    return None


def enabled() -> bool:
    if problem := setting_problem():
        raise ValueError(problem)
    return os.environ.get("MOMATTN_CPU_ATTENTION", "auto") == "auto"


def available() -> bool:
    """Whether bf16 CPU training takes `causal` on this machine at all, before the tensors are asked: the setting
    is auto, the CPU has AMX, and the kernel builds."""
    return enabled() and cpu_has_amx() and cpu_scan.load() is not None


def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether `causal` takes these: CPU tensors of one dtype it has a kernel for (bf16, float32), one shape of
    queries, keys and values (torch's CPU flash op takes one head size: a wider v was claimed, then refused inside
    torch; found by review), outside torch.compile, and the kernel builds."""
    return (q.device.type == "cpu" and q.dtype in _NAMES and k.dtype == v.dtype == q.dtype and q.dim() == 4
            and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")
            and q.shape == k.shape == v.shape and q.size(2) > 0
            and not torch.compiler.is_compiling() and cpu_scan.load() is not None)


def pays(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the model's training step should take `causal` over SDPA: a gradient to take, bf16 on a CPU with AMX
    (where its matmuls run; in float32 it was 0.4-1.0x SDPA's speed), a context of at most MAX_T, and `supports`."""
    # is_compiling first: under torch.compile the rest is not asked (Dynamo cannot trace the CPU flags' file read
    # behind cpu_has_amx's cache, and broke the graph at every layer; found by review)
    return (not torch.compiler.is_compiling() and torch.is_grad_enabled()
            and (q.requires_grad or k.requires_grad or v.requires_grad)
            and q.dtype == torch.bfloat16 and q.size(2) <= MAX_T and available() and supports(q, k, v))


def _softmax_grad(s: torch.Tensor, dp: torch.Tensor, lse: torch.Tensor, scale: float, offset: int = 0) -> None:
    """In place on (G, rows, cols) buffers of the queries offset .. offset + rows - 1 against the keys 0 .. cols - 1:
    scores s -> probabilities, dp -> the scores' gradient (see the kernel); lse (G, rows), contiguous."""
    G, rows, cols = s.shape
    status = getattr(cpu_scan.load(), _NAMES[s.dtype])(
        _P(s.data_ptr()), _P(dp.data_ptr()), _P(lse.data_ptr()), _I(G), _I(rows), _I(cols),
        _I(offset), ctypes.c_float(scale), ctypes.c_int(torch.get_num_threads()))
    if status:
        raise RuntimeError("the CPU attention kernel could not get a thread (out of memory?); "
                           "MOMATTN_CPU_ATTENTION=sdpa uses SDPA's backward")


class _CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True, scale=scale)[:2]
        ctx.scale = scale
        ctx.save_for_backward(q, k, v, lse)  # (the backward's delta comes from p and dp: the output is not kept)
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, lse = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a differentiable backward, through SDPA's math path (the CPU
            from torch.nn.attention import SDPBackend, sdpa_kernel  # flash backward has no derivative)

            qkv = [t.view_as(t) for t in (q, k, v)]  # an alias each: a tensor given as both q and k gets each
            with sdpa_kernel(SDPBackend.MATH):  # gradient once (found by review: it got their sum twice)
                y = torch.nn.functional.scaled_dot_product_attention(*qkv, is_causal=True, scale=ctx.scale)
            want = [t for t, need in zip(qkv, ctx.needs_input_grad) if need]
            grads = iter(torch.autograd.grad(y, want, do, create_graph=True))
            return (*(next(grads) if need else None for need in ctx.needs_input_grad[:3]), None)
        with torch.autocast("cpu", enabled=False):
            return (*_backward(q, k, v, lse.float().contiguous(), do, ctx.scale), None)


def _backward(q, k, v, lse, do, scale):
    """dq, dk, dv (B, H, T, D) from the forward's inputs, its lse (B, H, T), and the output's gradient do."""
    B, H, T, D = q.shape
    q, k, v, do = (t.reshape(B * H, T, t.size(-1)) for t in (q, k, v, do))  # (BH, T, D), copies if strided
    lse = lse.reshape(B * H, T)
    # The scores are formed less each row's c = lse / scale, rounded to q's dtype, by one more column of q (-c) and
    # of k (1), and a zero column so that the inner size stays even (AMX multiplies bf16 in pairs): the matmul sums
    # in float32, and its output, rounded to bf16, is then near 0 where p is large (z = scale s - lse <= 0)
    # instead of at the scores' own size, whose rounding (up to 2^-9 |scale s|) grew the gradients' error with the
    # logits (found by review: 4.3e-2 against flash's 1.8e-2 at a logit spread of 10). lse - scale c is what the
    # kernel then subtracts.
    c = (lse / scale).to(q.dtype)  # (BH, T)
    lse = lse - scale * c.float()
    ones, zeros = torch.ones(B * H, T, 1, dtype=q.dtype), torch.zeros(B * H, T, 1, dtype=q.dtype)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    rows = T if T <= WHOLE_T else BLOCK_T  # queries at a time: past WHOLE_T, blocks (keys up to the block's last)
    G = max(1, min(B * H, BUFFER_BYTES // (2 * rows * T * q.element_size())))  # pairs at a time
    for g0 in range(0, B * H, G):
        g = slice(g0, min(B * H, g0 + G))
        qc = torch.cat([q[g], -c[g].unsqueeze(-1), zeros[g]], dim=-1)  # (G, T, D + 2)
        kc = torch.cat([k[g], ones[g], zeros[g]], dim=-1)
        if rows == T:  # whole (T, T) matrices: each gradient one matmul
            s = torch.bmm(qc, kc.transpose(1, 2))  # (G, T, T) scores less c, unscaled
            dp = torch.bmm(do[g], v[g].transpose(1, 2))  # (G, T, T)
            _softmax_grad(s, dp, lse[g], scale)  # s -> p, dp -> ds
            torch.bmm(s.transpose(1, 2), do[g], out=dv[g])
            torch.bmm(dp.transpose(1, 2), q[g], out=dk[g])
            torch.bmm(dp, k[g], out=dq[g])
            continue
        dk32 = torch.zeros(dk[g].shape, dtype=torch.float32)  # (G, T, D): sums over the query blocks
        dv32 = torch.zeros(dv[g].shape, dtype=torch.float32)
        for r0 in range(0, T, rows):  # the queries r0 .. r1 - 1 against the keys 0 .. r1 - 1 (the rest is masked)
            r1 = min(T, r0 + rows)
            s = torch.bmm(qc[:, r0:r1], kc[:, :r1].transpose(1, 2))  # (G, r1 - r0, r1)
            dp = torch.bmm(do[g][:, r0:r1], v[g][:, :r1].transpose(1, 2))
            _softmax_grad(s, dp, lse[g][:, r0:r1].contiguous(), scale, r0)
            dv32[:, :r1] += torch.bmm(s.transpose(1, 2), do[g][:, r0:r1])
            dk32[:, :r1] += torch.bmm(dp.transpose(1, 2), q[g][:, r0:r1])
            dq[g][:, r0:r1] = torch.bmm(dp, k[g][:, :r1])
        dk[g], dv[g] = dk32, dv32
    return tuple(t.view(B, H, T, -1) for t in (dq, dk, dv))


def causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Causal softmax attention of q, k, v (B, H, T, D) (see `supports`); scale defaults to 1/sqrt(D)."""
    return _CausalAttention.apply(q, k, v, q.size(-1) ** -0.5 if scale is None else float(scale))
