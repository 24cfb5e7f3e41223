"""The language-modelling loss, LM head included, without a (N, V) float32 logits tensor.

`F.cross_entropy(lm_head(h).float(), y)` makes the logits (N, V) in the compute dtype, copies them to float32, takes
a log-softmax over them, and in backward fills a (N, V) gradient, takes the softmax backward and copies it back:
at the main job's size (N = 4,096 tokens, V = 4,096) that was a quarter of a bf16 training step on the CPU.
`linear_cross_entropy` does the same arithmetic a block of rows at a time (each block's logits fit in cache),
and forms the gradient of the mean loss while the block's softmax is at hand, so backward only scales it.
Precision is that of the plain path: logits in the compute dtype (bf16 under autocast), the log-sum-exp and the
softmax in float32, the gradient of the mean loss rounded to the compute dtype for the two matmuls, as autocast
rounds the float32 log-softmax gradient before the LM head's backward. Two last-bit differences: an upstream
gradient other than 1 (e.g. 1/accumulate) scales the result after that rounding, not before, and the LM head's
weight gradient is summed over blocks in float32 from one rounded matmul per block. float16 is not taken here
(its per-token gradients, ~1/N, would underflow before a grad scaler's factor): lm_loss uses the plain form.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

ROWS_PER_BLOCK = 512  # (512, 4096) float32 logits: 8 MiB, a block that stays in the CPU's caches


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, y, dtype, ignore_index, need_grad, rows):
        # h (N, C), w (V, C), y (N,) -> mean over the rows whose target is not ignore_index
        if y.shape != h.shape[:1]:
            raise ValueError(f"linear_cross_entropy: {tuple(y.shape)} targets for {h.shape[0]} rows of h")
        hc, wc = h.to(dtype), w.to(dtype)
        valid = y != ignore_index  # (N,)
        n_valid = int(valid.sum())
        acc = torch.promote_types(dtype, torch.float32)  # float32 at least, as `.float()` on the logits gives
        total = torch.zeros((), dtype=acc, device=h.device)
        dh = torch.empty_like(h) if need_grad else None  # (N, C)
        dw = torch.zeros(w.shape, dtype=acc, device=w.device) if need_grad else None  # (V, C)
        for s in range(0, h.size(0), rows):
            ok = valid[s : s + rows]  # (n,)
            hs, ys = hc[s : s + rows], torch.where(ok, y[s : s + rows], 0)  # (n, C), (n,): ignored rows read class 0
            z = (hs @ wc.t()).to(acc)  # (n, V) logits, rounded to the compute dtype as the plain LM head rounds them
            picked = z.gather(1, ys[:, None]).squeeze(1)  # (n,) the target's logit
            m = z.amax(dim=1, keepdim=True)  # (n, 1)
            e = z.sub_(m).exp_()  # (n, V), in place: exp(z - max)
            sum_e = e.sum(dim=1)  # (n,)
            lse = m.squeeze(1) + sum_e.log()  # (n,)
            total += torch.where(ok, lse - picked, 0.0).sum()
            if need_grad:  # d(mean loss)/dz = (softmax - onehot) / n_valid on the kept rows, 0 elsewhere
                weight = ok.to(acc) / max(n_valid, 1)  # (n,)
                g = e.mul_((weight / sum_e)[:, None])  # (n, V)
                g[torch.arange(g.size(0), device=g.device), ys] -= weight
                g = g.to(dtype)
                dh[s : s + rows] = g @ wc  # (n, C)
                dw += (g.t() @ hs).to(acc)  # (V, C)
        ctx.save_for_backward(dh, dw)
        ctx.h_dtype, ctx.w_dtype = h.dtype, w.dtype
        return total / n_valid if n_valid else total.fill_(float("nan"))  # F.cross_entropy's nan for no targets

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        dh, dw = ctx.saved_tensors  # formed in forward: backward runs only where forward was told to form them
        return (dh * grad).to(ctx.h_dtype), (dw * grad).to(ctx.w_dtype), None, None, None, None, None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                         rows: int = ROWS_PER_BLOCK) -> torch.Tensor:
    """Mean cross-entropy of `h @ weight.T` against `targets`: h (N, C), weight (V, C), targets (N,) -> scalar.

    Equals `F.cross_entropy((h @ weight.T).float(), targets, ignore_index=ignore_index)` (autocast's compute dtype
    for the matmuls where autocast is on), in value and in gradient up to the roundings the module docstring
    names, without forming (N, V) float32 logits."""
    device = h.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
    need = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    if dtype == torch.float16:
        raise ValueError("linear_cross_entropy: float16 gradients would underflow; use the plain cross-entropy")
    with torch.autocast(device, enabled=False):
        return _LinearCrossEntropy.apply(h, weight, targets, dtype, ignore_index, need, rows)


_eager_loss = None  # linear_cross_entropy under torch.compiler.disable, once before_compile() has run


def before_compile():
    """Keep the blocked loss eager in a compiled model (a Python loop over row blocks that reads a count off the
    data). Done on first use, or at import where torch._dynamo is loaded already (train.py: Lightning loads it):
    torch.compiler.disable imports torch._dynamo, seconds that evaluate.py, generate.py and a config error would
    otherwise wait for. Call it before torch.compile of a model that has not run eagerly yet; else the first trace
    does it (more graph breaks and one recompile, the same result)."""
    global _eager_loss
    if _eager_loss is None:
        _eager_loss = torch.compiler.disable(linear_cross_entropy)
    return _eager_loss


def _blocked_loss(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (_eager_loss or before_compile())(h, weight, targets)


if "torch._dynamo" in sys.modules:
    before_compile()


def lm_loss(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The training loss of hidden states h (N, C) under the LM head `weight` (V, C): mean cross-entropy, targets
    of -100 ignored. Blocked (linear_cross_entropy) off CUDA; on CUDA (and under float16 autocast anywhere) the
    plain form, which torch.compile fuses."""
    device = h.device.type
    fp16 = h.dtype == torch.float16 or (  # a float16 model (precision=16-true), or float16 autocast
        torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16)
    if device == "cuda" or fp16:
        return F.cross_entropy(F.linear(h, weight).float(), targets)
    return _blocked_loss(h, weight, targets)
