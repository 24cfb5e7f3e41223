"""Forward hooks: per-model updates of the K/V projections, and what one forward pass shows of each layer.

    Delta       per-layer updates dW (M, 2C, C), db (M, 2C) of the K and V rows [C:3C) of the fused c_attn;
                M models at once (M = 1: one update shared by every row of a batch). Q rows [0:C) have no
                update at all, so Q is frozen by construction.
    kv_delta    context manager: c_attn(x) + [0, x dW^T + db] on every layer, for rows grouped per model
    capture     one forward pass per prompt (a shared prefix is encoded once into the KV cache) recording
                c_attn's output (q, k, v), c_proj's input (the attention output, memory term included) and
                c_proj's output; reduced at once to the last position: Capture(h, h_proj, q, scores, logits)

Scores are computed here from q and k (SDPA exposes no weights): s_j = q_t . k_j / sqrt(D) for every key
j <= t, per head, with rotary applied at the true positions where the model uses it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch


def attn_modules(model) -> list:
    return [b.attn for b in model.blocks]


@dataclass
class Delta:
    """Updates of the K and V rows of every layer's c_attn, for M models."""

    w: list[torch.Tensor]  # per layer (M, 2C, C)
    b: list[torch.Tensor] | None  # per layer (M, 2C); None when c_attn has no bias

    @property
    def n_models(self) -> int:
        return self.w[0].size(0)

    @classmethod
    def zeros(cls, model, n_models: int, dtype=torch.float32) -> Delta:
        mods = attn_modules(model)
        C = mods[0].n_embd
        dev = mods[0].c_attn.weight.device
        w = [torch.zeros(n_models, 2 * C, C, dtype=dtype, device=dev) for _ in mods]
        b = [torch.zeros(n_models, 2 * C, dtype=dtype, device=dev) for _ in mods] \
            if mods[0].c_attn.bias is not None else None
        return cls(w, b)

    def select(self, idx: slice | Sequence[int] | torch.Tensor) -> Delta:
        return Delta([w[idx] for w in self.w], [b[idx] for b in self.b] if self.b is not None else None)

    def norms(self) -> torch.Tensor:
        """(M, L) Frobenius norm of each model's update per layer, weights and biases together (squared in float64:
        float32 overflowed to inf above ~1.8e19, and random_like's baseline took that scale)."""
        out = torch.stack([w.flatten(1).double().square().sum(1) for w in self.w], 1)
        if self.b is not None:
            out = out + torch.stack([b.double().square().sum(1) for b in self.b], 1)
        return out.sqrt()

    def random_like(self, seed: int | Sequence[int]) -> Delta:
        """A Gaussian update with the same norm per model and layer (the paper's random-update baseline). seed: one
        int (one generator draws every model's update in turn), or one seed per model (model m's draw then depends
        on its own seed only, not on which models share its batch)."""
        if isinstance(seed, int):
            gens = [torch.Generator().manual_seed(seed)] * self.n_models
        else:
            gens = [torch.Generator().manual_seed(s) for s in seed]
            if len(gens) != self.n_models:
                raise ValueError(f"{len(gens)} seeds for {self.n_models} models")
        w: list[list[torch.Tensor]] = [[] for _ in self.w]
        b: list[list[torch.Tensor]] = [[] for _ in self.w]
        for g in gens:  # per model: every layer's weights, then every layer's biases
            for i, x in enumerate(self.w):
                w[i].append(torch.randn(x.shape[1:], generator=g, dtype=x.dtype))
            for i, x in enumerate(self.b or []):
                b[i].append(torch.randn(x.shape[1:], generator=g, dtype=x.dtype))
        rnd = Delta([torch.stack(ws).to(x.device) for ws, x in zip(w, self.w)],
                    [torch.stack(bs).to(x.device) for bs, x in zip(b, self.b)] if self.b else None)
        scale = (self.norms() / rnd.norms().clamp_min(1e-30)).to(rnd.w[0].dtype)  # (M, L)
        return Delta([x * scale[:, i, None, None] for i, x in enumerate(rnd.w)],
                     [x * scale[:, i, None] for i, x in enumerate(rnd.b)] if rnd.b else None)

    def apply_to(self, model, m: int = 0) -> None:
        """Add model m's update to the weights of `model` in place (K and V rows only)."""
        with torch.no_grad():
            for i, mod in enumerate(attn_modules(model)):
                C = mod.n_embd
                mod.c_attn.weight[C:] += self.w[i][m].to(mod.c_attn.weight.dtype)
                if self.b is not None:
                    mod.c_attn.bias[C:] += self.b[i][m].to(mod.c_attn.bias.dtype)


@contextmanager
def kv_delta(model, delta: Delta | None):
    """While active, every layer's c_attn output gets [0, x dW^T + db] added (K and V slices). A batch of B rows
    belongs to the M models in contiguous groups of B // M rows; M = 1 serves any batch."""
    if delta is None:
        yield
        return
    handles = []
    for i, mod in enumerate(attn_modules(model)):
        C = mod.n_embd

        def hook(module, inputs, out, i=i, C=C):
            x = inputs[0]  # (B, T, C)
            B, T, _ = x.shape
            w = delta.w[i].to(x.dtype)  # (M, 2C, C)
            M = w.size(0)
            if M == 1:
                upd = x @ w[0].T  # (B, T, 2C)
                if delta.b is not None:
                    upd = upd + delta.b[i][0].to(x.dtype)
            else:
                if B % M:
                    raise ValueError(f"a batch of {B} rows cannot be split among {M} models")
                upd = torch.bmm(x.reshape(M, (B // M) * T, C), w.transpose(1, 2)).view(B, T, 2 * C)
                if delta.b is not None:
                    upd = upd + delta.b[i].to(x.dtype).repeat_interleave(B // M, 0)[:, None, :]
            return torch.cat([out[..., :C], out[..., C:] + upd], dim=-1)  # (B, T, 3C)

        handles.append(mod.c_attn.register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def at_positions(model, idx: torch.Tensor | None):
    """While active, the model's final LayerNorm output is gathered at idx (B, n) positions per row, so the
    LM head computes logits (B, n, V) only where they are needed (GPT.forward ends with lm_head(ln_f(x)))."""
    if idx is None:
        yield
        return

    def hook(module, inputs, out):
        return out.gather(1, idx[..., None].expand(-1, -1, out.size(-1)))  # (B, n, C)

    handle = model.ln_f.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def record(model):
    """Per layer, the c_attn outputs (B, T, 3C), c_proj inputs (B, T, C) and c_proj outputs (B, T, C) of every
    forward pass while active. Registered after kv_delta's hooks, so the recorded q, k, v include the update."""
    qkv: list[list[torch.Tensor]] = [[] for _ in attn_modules(model)]
    y: list[list[torch.Tensor]] = [[] for _ in attn_modules(model)]
    y_proj: list[list[torch.Tensor]] = [[] for _ in attn_modules(model)]

    def on_proj(m, a, out, i):
        y[i].append(a[0].detach())
        y_proj[i].append(out.detach())

    handles = []
    for i, mod in enumerate(attn_modules(model)):
        handles.append(mod.c_attn.register_forward_hook(lambda m, a, out, i=i: qkv[i].append(out.detach())))
        handles.append(mod.c_proj.register_forward_hook(lambda m, a, out, i=i: on_proj(m, a, out, i)))
    try:
        yield qkv, y, y_proj
    finally:
        for h in handles:
            h.remove()


@contextmanager
def record_inputs(model, active: bool = True):
    """Per layer, the c_attn inputs (B, T, C) of every forward pass while active (nothing recorded otherwise)."""
    xs: list[list[torch.Tensor]] = [[] for _ in attn_modules(model)]
    handles = [mod.c_attn.register_forward_hook(lambda m, a, out, i=i: xs[i].append(a[0].detach()))
               for i, mod in enumerate(attn_modules(model))] if active else []
    try:
        yield xs
    finally:
        for h in handles:
            h.remove()


def queries64(model, x: torch.Tensor) -> torch.Tensor:
    """(L, n, C) c_attn inputs -> the queries (before rotary) in float64, W_Q x + b_Q of each layer (W_Q is
    frozen while finetuning). A token's query at layer 0 of a rotary model is then exactly its own: recorded in
    float32 from batched forwards, repeated tokens' queries differed by their row's rounding, and Kendall's tau-b
    counted those ties as ordered pairs (found by review)."""
    return projections64(model, x, 0)


@torch.no_grad()
def projections64(model, x: torch.Tensor, part: int) -> torch.Tensor:
    """(L, n, C) c_attn inputs -> part 0 (queries), 1 (keys) or 2 (values) of every layer, before rotary, in float64
    on the CPU, each distinct input once: a matrix product can round equal rows apart (its blocks' edges sum
    otherwise), which ordered exact ties (queries64)."""
    out = []
    for layer, mod in enumerate(attn_modules(model)):
        C, b = mod.n_embd, mod.c_attn.bias
        rows, inverse = torch.unique(x[layer].cpu(), dim=0, return_inverse=True)  # (recorded on the CPU; the
        # weights on the model's device, a GPU's: diff review)
        W = mod.c_attn.weight[part * C:(part + 1) * C].detach().to("cpu", torch.float64)
        bias = b[part * C:(part + 1) * C].detach().to("cpu", torch.float64) if b is not None else 0.0
        out.append((rows.double() @ W.T + bias)[inverse])
    return torch.stack(out)


def rotate(mod, x: torch.Tensor, start: int) -> torch.Tensor:
    """Rotary at positions start.. of x (..., T, D), where the model uses it."""
    return mod.rotary(x, start) if getattr(mod, "rotary", None) is not None else x


def split_heads(t: torch.Tensor, H: int) -> torch.Tensor:
    T, C = t.shape
    return t.view(T, H, C // H).transpose(0, 1)  # (H, T, D)


@dataclass
class Capture:
    """One model state over N prompts, at each prompt's last position."""

    h: torch.Tensor  # (N, L, C) attention output (c_proj input, memory term included)
    h_proj: torch.Tensor  # (N, L, C) the same after the output projection (c_proj output; the authors' code's)
    q: torch.Tensor  # (N, L, C) query before rotary (the FT side of Kendall)
    scores: list[torch.Tensor]  # per prompt (L, H, T_i): pre-softmax scores q_t . k_j / sqrt(D), j = 0..t
    logits: torch.Tensor  # (N, V) next-token logits


@torch.no_grad()
def capture(model, rows: Sequence[Sequence[int]], prefix: Sequence[int] = (), delta: Delta | None = None,
            batch_tokens: int = 8192) -> Capture:
    """Forward [prefix; row] for every row, recording each layer at the row's last position. The prefix (shared
    by all rows) is encoded once into a KV cache. delta: M = 1 (shared) or M = len(rows) (row i is model i)."""
    mods = attn_modules(model)
    H = mods[0].n_head
    dev = next(model.parameters()).device
    P = len(prefix)
    per_model = delta is not None and delta.n_models > 1
    if per_model and (prefix or delta.n_models != len(rows)):
        raise ValueError("a per-row delta needs one model per row and no shared prefix")
    pk = [None] * len(mods)  # per layer: (H, P, D) rotated prefix keys
    cache = None
    if P:
        cache = model.new_cache()
        with kv_delta(model, delta), record(model) as (qkv, _, _):
            model(torch.tensor([list(prefix)], device=dev), cache=cache)
        for i, mod in enumerate(mods):
            C = mod.n_embd
            pk[i] = rotate(mod, split_heads(qkv[i][0][0, :, C : 2 * C], H), 0)
    hs, hps, qs, logits, scores = [], [], [], [], []
    width = P + max(len(r) for r in rows)
    step = max(1, batch_tokens // width)
    for b0 in range(0, len(rows), step):
        batch = rows[b0 : b0 + step]
        lens = [len(r) for r in batch]
        x = torch.zeros(len(batch), max(lens), dtype=torch.long, device=dev)  # right-padded: causal, unseen
        for r, row in enumerate(batch):
            x[r, : len(row)] = torch.tensor(list(row), device=dev)
        d = delta.select(slice(b0, b0 + len(batch))) if per_model else delta
        last = torch.tensor(lens, device=dev) - 1
        ar = torch.arange(len(batch), device=dev)
        with kv_delta(model, d), record(model) as (qkv, y, yp), at_positions(model, last[:, None]):
            out = model(x, cache=cache.expand(len(batch))) if cache is not None else model(x)  # (B, 1, V)
        logits.append(out[:, 0].float().cpu())
        hs.append(torch.stack([y[i][0][ar, last] for i in range(len(mods))], 1).float().cpu())  # (B, L, C)
        hps.append(torch.stack([yp[i][0][ar, last] for i in range(len(mods))], 1).float().cpu())  # (B, L, C)
        qs.append(torch.stack([qkv[i][0][ar, last, : mod.n_embd] for i, mod in enumerate(mods)], 1).float().cpu())
        per_layer = []
        for i, mod in enumerate(mods):
            C, B, T = mod.n_embd, len(batch), x.size(1)
            qh = qkv[i][0][..., :C].reshape(B, T, H, C // H).transpose(1, 2)  # (B, H, T, D)
            kh = qkv[i][0][..., C : 2 * C].reshape(B, T, H, C // H).transpose(1, 2)
            qh, kh = rotate(mod, qh, P), rotate(mod, kh, P)
            q_last = qh[ar, :, last]  # (B, H, D)
            s = torch.einsum("bhd,bhtd->bht", q_last, kh) / math.sqrt(q_last.size(-1))  # (B, H, T)
            if P:
                sp = torch.einsum("bhd,htd->bht", q_last, pk[i]) / math.sqrt(q_last.size(-1))  # (B, H, P)
                s = torch.cat([sp, s], dim=-1)
            per_layer.append(s.float().cpu())
        scores.extend(torch.stack([pl[r, :, : P + n] for pl in per_layer]) for r, n in enumerate(lens))  # (L, H, P+n)
    return Capture(torch.cat(hs), torch.cat(hps), torch.cat(qs), scores, torch.cat(logits))
