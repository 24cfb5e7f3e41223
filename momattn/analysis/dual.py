"""The dual form (Dai et al. 2023, Section 3), checked numerically on a layer's real weights, in float64.

Relaxed linear attention (no softmax, no 1/sqrt(d)) of the last token t over [demonstrations X'; query side X],
per head h, with v = W_V x + b_V, k = R_j (W_K x + b_K) (R_j: rotary at position j, identity without it):

    F(q) = sum_j v_j k_j^T q = (W_ZSL + dW_ICL) q,   W_ZSL = sum_{j in X} v_j k_j^T,   dW_ICL = sum_{i in X'} v'_i k'_i^T

i.e. the demonstrations add an update dW_ICL = sum_i (W_V x'_i)(W_K x'_i)^T to the zero-shot weights.

Momentum attention adds m_t = sum_{i<t} eta^(t-i) v_i (the paper; i <= t with include_current). It is linear in
the values with weights that decay with distance, so it splits the same way:

    m_t = m_ZSL + dm_ICL,   dm_ICL = sum_{i in X'} eta^(t-i) v'_i = eta^(t-P+1) s_P,   s_P = sum_{i<P} eta^(P-1-i) v'_i

dm_ICL is the demonstrations' own EMA state s_P (P demonstration tokens) decayed by the distance to the query:
as a dual update dW_mom = sum_i eta^(t-i) v'_i u^T applied to a constant unit input u (u^T u = 1), the values
(meta-gradients) enter with momentum-style weights eta^(t-i) and do not depend on q. multirate_ema (the authors'
code) has weights w(l) = sum_r gamma_r p_r^l over lags l >= 0, per channel, and splits the same way.
Checked: the model's own memory op (module.memory) against the naive float64 sums, and the split.
"""

from __future__ import annotations

import torch

from momattn.analysis.capture import attn_modules, rotate


def _qkv64(mod, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (T, C) -> q, k, v (H, T, D) in float64, rotary applied from position 0."""
    W, b = mod.c_attn.weight.double(), mod.c_attn.bias
    out = x.double() @ W.T + (b.double() if b is not None else 0.0)  # (T, 3C)
    H, C = mod.n_head, mod.n_embd
    q, k, v = (t.reshape(-1, H, C // H).transpose(0, 1) for t in out.split(C, dim=-1))
    return rotate(mod, q, 0), rotate(mod, k, 0), v


@torch.no_grad()
def linear_attention_check(mod, x: torch.Tensor, n_demo: int, start: int = 0) -> dict:
    """x (T, C): the layer's c_attn input over [zero-shot side (start tokens, e.g. <eot>); demonstrations (n_demo
    tokens); zero-shot side (the query)]. Returns the naive relaxed linear attention of the last token, the dual
    form (W_ZSL + dW_ICL) q, and their largest difference."""
    q, k, v = _qkv64(mod, x)  # (H, T, D)
    H, T, D = q.shape
    qt = q[:, -1]  # (H, D)
    naive = torch.zeros(H, D, dtype=torch.float64)
    for j in range(T):  # the attention side: every token's value weighted by k_j . q
        naive += v[:, j] * (k[:, j] * qt).sum(-1, keepdim=True)
    w_zsl = torch.zeros(H, D, D, dtype=torch.float64)
    dw_icl = torch.zeros(H, D, D, dtype=torch.float64)
    for j in range(T):  # the weight side: outer products of values and keys
        outer = v[:, j, :, None] * k[:, j, None, :]  # (H, D, D)
        if start <= j < start + n_demo:
            dw_icl += outer
        else:
            w_zsl += outer
    dual = torch.einsum("hde,he->hd", w_zsl + dw_icl, qt)
    zsl_only = torch.einsum("hde,he->hd", w_zsl, qt)
    err = float((naive - dual).abs().max())
    return {"max_abs_err": err, "rel_err": err / max(float(naive.abs().max()), 1e-300),
            "icl_update_rel_norm": float(dw_icl.norm() / w_zsl.norm().clamp_min(1e-300)),
            "zsl_vs_full_rel_diff": float((naive - zsl_only).norm() / naive.norm().clamp_min(1e-300))}


def memory_weights(mod, T: int) -> torch.Tensor | None:
    """(T, H or C) weight of the value at position i for the last position t = T - 1, float64; None: vanilla."""
    lag = torch.arange(T - 1, -1, -1, dtype=torch.float64)  # t - i
    if hasattr(mod, "eta"):  # momentum: per head
        eta = mod.eta.detach().double().reshape(-1).expand(mod.n_head)  # (H,)
        w = eta[None, :] ** lag[:, None]  # (T, H)
        if not mod.include_current:
            w[-1] = 0.0
        return w
    if hasattr(mod, "gamma"):  # multirate_ema: per channel, current token included
        p, g = torch.sigmoid(mod.delta.detach().double()), mod.gamma.detach().double() * mod.scale  # (C, R)
        return (g[None] * p[None] ** lag[:, None, None]).sum(-1)  # (T, C)
    return None


@torch.no_grad()
def memory_check(mod, x: torch.Tensor, n_demo: int, start: int = 0) -> dict | None:
    """The memory term at the last position: the model's op vs the naive float64 sum, and its split into
    zero-shot-side and demonstration parts (demonstrations at [start, P = start + n_demo); momentum:
    dm_ICL = eta^(t-P+1) s_P). None for vanilla attention."""
    T = x.size(0)
    w = memory_weights(mod, T)
    if w is None:
        return None
    _, _, v = _qkv64(mod, x)  # (H, T, D)
    H, C = mod.n_head, mod.n_embd
    vm = v.transpose(0, 1).reshape(T, C)  # (T, C) merged values
    w_c = w.repeat_interleave(C // H, dim=1) if w.size(1) == H else w  # (T, C)
    naive = (w_c * vm).sum(0)  # (C,)
    demo = torch.zeros(T, dtype=torch.bool)
    demo[start : start + n_demo] = True
    m_zsl, dm_icl = (w_c[~demo] * vm[~demo]).sum(0), (w_c[demo] * vm[demo]).sum(0)
    with torch.no_grad():
        x32 = x.to(mod.c_attn.weight)[None]
        v_model = mod.c_attn(x32)[..., 2 * C :]  # (1, T, C)
        op = mod.memory(v_model, None)[0, -1].double().cpu()  # the model's own op
    out = {"op_max_abs_err": float((op - naive).abs().max()),
           "op_rel_err": float((op - naive).abs().max() / naive.abs().max().clamp_min(1e-300)),
           "split_max_abs_err": float((m_zsl + dm_icl - naive).abs().max()),
           "icl_share": float(dm_icl.norm() / naive.norm().clamp_min(1e-300))}
    if hasattr(mod, "eta") and n_demo:  # dm_ICL = eta^(t-P+1) * (the demonstrations' inclusive EMA state)
        eta = mod.eta.detach().double().reshape(-1).expand(H).repeat_interleave(C // H)  # (C,)
        lag = torch.arange(n_demo - 1, -1, -1, dtype=torch.float64)
        s_p = (eta[None] ** lag[:, None] * vm[demo]).sum(0)
        out["state_max_abs_err"] = float((eta ** (T - start - n_demo) * s_p - dm_icl).abs().max())
    return out


@torch.no_grad()
def dual_form_report(model, prompt: list[int], n_demo: int, start: int = 0) -> dict:
    """Both checks on every layer of `model` (on the CPU) for one ICL prompt (its tokens [start, start + n_demo)
    are demonstrations; the rest is what the zero-shot prompt holds too)."""
    mods = attn_modules(model)
    inputs: list[torch.Tensor] = []
    handles = [m.c_attn.register_forward_hook(lambda m_, a, o: inputs.append(a[0][0].detach())) for m in mods]
    try:
        model(torch.tensor([prompt], device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    layers = []
    for mod, x in zip(mods, inputs):
        entry = {"linear_attention": linear_attention_check(mod, x.cpu(), n_demo, start)}
        mem = memory_check(mod, x.cpu(), n_demo, start)
        if mem is not None:
            entry["memory"] = mem
        layers.append(entry)
    worst = max(e["linear_attention"]["rel_err"] for e in layers)
    mem_worst = [e["memory"]["op_rel_err"] for e in layers if "memory" in e]
    return {"layers": layers, "linear_attention_max_rel_err": worst,
            "memory_op_max_rel_err": max(mem_worst) if mem_worst else None,
            "n_demo_tokens": n_demo, "prompt_tokens": len(prompt)}
