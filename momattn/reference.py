"""Naive references for the ops in momattn.ops: the formulas written out as loops, obviously correct and slow.

Tests compare the fast ops with these (in float64); benchmarks time the fast ops against them. Each takes
the same arguments as its op and returns the same (out, final_state) pair.

    momentum_ema_naive      double loop over (t, i) of eta^(t-i) v_i, plus eta^(t+1) times a prefix state
    momentum_ema_recurrent  s = eta s + v one position at a time, in python floats (float64)
    momentum_ema_matrix     one (T, T) decay matrix times v: O(T^2), the quadratic baseline of the benchmark
    multirate_ema_naive     double loop of sum_r gamma_r p_r^(t-i) v_i, plus a prefix state per rate
    causal_attention_naive  softmax(q k^T / sqrt(D)) v with an explicit causal mask
"""

from __future__ import annotations

import math

import torch


def _per_head(eta, H: int, dtype) -> torch.Tensor:
    return torch.as_tensor(eta, dtype=dtype).reshape(-1).expand(H)  # (H,)


def momentum_ema_naive(
    v: torch.Tensor, eta, include_current: bool = False, initial_state: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """out[:, h, t] = sum_{i<t} (i<=t) eta_h^(t-i) v[:, h, i] + eta_h^(t+1) s[:, h]; final state after T-1.

    v (B, H, T, D); eta float or (H,); initial_state s (B, H, D), the inclusive state of a prefix.
    """
    B, H, T, D = v.shape
    e = _per_head(eta, H, v.dtype).reshape(1, H, 1)
    s0 = torch.zeros(B, H, D, dtype=v.dtype) if initial_state is None else initial_state.to(v.dtype)
    out = []
    for t in range(T):
        o = e ** (t + 1) * s0
        for i in range(t + 1 if include_current else t):
            o = o + e ** (t - i) * v[:, :, i]
        out.append(o)
    final = e**T * s0
    for i in range(T):
        final = final + e ** (T - 1 - i) * v[:, :, i]
    return (torch.stack(out, dim=2) if T else v.clone()), final


def momentum_ema_recurrent(v: torch.Tensor, eta: list[float], include_current: bool = False) -> torch.Tensor:
    """s_t = eta s_{t-1} + v_t in python floats (float64), one (b, h, d) sequence at a time: exact for
    rates near 1 and long sequences, where a formula with large powers would not be."""
    B, H, T, D = v.shape
    rows = v.double().permute(0, 1, 3, 2).reshape(B * H * D, T).tolist()
    out = []
    for r, seq in enumerate(rows):
        e, s, ys = eta[(r // D) % H], 0.0, []
        for x in seq:
            ys.append(e * s + x if include_current else e * s)
            s = e * s + x
        out.append(ys)
    return torch.tensor(out, dtype=torch.float64).reshape(B, H, D, T).permute(0, 1, 3, 2)


def momentum_ema_matrix(v: torch.Tensor, eta: float) -> torch.Tensor:
    """sum_{i<t} eta^(t-i) v_i as one (T, T) decay matrix times v: O(T^2) time and memory."""
    T = v.size(2)
    acc = torch.promote_types(v.dtype, torch.float32)
    t = torch.arange(T, device=v.device, dtype=acc)
    lag = t[:, None] - t[None, :]  # (T, T) t - i
    W = torch.where(lag > 0, eta ** lag.clamp(min=0), 0.0)  # eta^(t-i) for i < t
    # subnormal powers flushed to 0: left in, they slow a CPU matmul down ~1.7x, which would flatter the op
    W = torch.where(W < torch.finfo(acc).tiny, 0.0, W).to(v.dtype)
    return W @ v  # (T, T) @ (B, H, T, D) -> (B, H, T, D)


def multirate_ema_naive(
    v: torch.Tensor, p: torch.Tensor, gamma: torch.Tensor, initial_state: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """y[:, t, c] = sum_r gamma[c, r] (sum_{i<=t} p[c, r]^(t-i) v[:, i, c] + p[c, r]^(t+1) s[:, c, r]).

    v (B, T, C); p, gamma (C, R); initial_state s (B, C, R). Final state: per-rate states after T-1.
    """
    B, T, C = v.shape
    s0 = torch.zeros(B, *p.shape, dtype=v.dtype, device=v.device) if initial_state is None else initial_state.to(v.dtype)
    out = []
    for t in range(T):
        o = (gamma * p ** (t + 1) * s0).sum(-1)  # (B, C)
        for i in range(t + 1):
            o = o + (gamma * p ** (t - i)).sum(-1) * v[:, i]
        out.append(o)
    final = p**T * s0
    for i in range(T):
        final = final + p ** (T - 1 - i) * v[:, i, :, None]
    return (torch.stack(out, dim=1) if T else v.clone()), final


def causal_attention_naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v over keys i <= t; (B, H, T, D) each."""
    T = q.size(2)
    att = (q @ k.transpose(-1, -2)) / math.sqrt(q.size(-1))
    att = att.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return att.softmax(-1) @ v
