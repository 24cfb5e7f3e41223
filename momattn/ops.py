"""Exponential moving averages of attention values, in O(T) time and memory.

Two readings of momentum attention (Dai et al. 2023, section 5; see PAPER.md):

- `momentum_ema`: the paper's term  m_t = sum_{i<t} eta^(t-i) v_i  per head (exclusive of the current
  token), or inclusive with `include_current=True`.
- `multirate_ema`: the authors' posted code, a MEGA-style damped EMA per channel with R decay rates p and
  mixing weights gamma, current token included:  y_t = sum_r gamma_r sum_{i<=t} p_r^(t-i) v_i.

Both run a chunked scan: inside a chunk of c positions a small (c x c) lower-triangular decay matrix is
applied by matmul; the state at each chunk end is carried to the next chunks by the same scan, run
recursively over the chunk-end states with rate eta^c. Only non-negative powers of the rates are ever
formed (no eta^-t, no log eta), so rates near 1 and long sequences stay finite, and rate 0 is allowed,
gradients included. Sums are accumulated in float32 (float64 for float64 inputs) with autocast off.

Speed on CPU: each op changes its input's layout with one bulk copy each way (a custom autograd Function,
so backward gets one bulk copy too); multirate_ema moves channels to the front with a plain 2-D transpose
(PyTorch's blocked transpose copy) and right-multiplies by the transposed (c x c) Toeplitz block, built
from windows of the zero-padded kernel. Chunk ends and the carried-in states go through small matmuls
(the latter an in-place rank-1 update), so backward forms no full-size zero or product tensors.

The *_step / *_final_state helpers let a KV cache decode token by token with the same numbers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Rate = float | torch.Tensor


# -----------------------------------------------------------------------------
# small helpers


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and getattr(compiler, "is_compiling", lambda: False)())


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # bf16/fp16/fp32 accumulate in fp32; fp64 stays fp64 (gradcheck)
    return torch.promote_types(dtype, torch.float32)


def _no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


def _fmt(t: torch.Tensor) -> str:
    """A short printout of a (small) tensor's values for error messages."""
    vals = [f"{x:g}" for x in t.detach().float().flatten()[:8].tolist()]
    if t.dim() == 0:
        return vals[0]
    more = ", ..." if t.numel() > 8 else ""
    return "[" + ", ".join(vals) + more + "]"


def _check_rates(fn: str, name: str, x: torch.Tensor) -> None:
    """Raise unless every value of x lies in [0, 1). Skipped under torch.compile (data-dependent)."""
    if _is_compiling():
        return
    x = x.detach()
    if not bool(((x >= 0) & (x < 1)).all()):
        bad = x[~((x >= 0) & (x < 1))]
        got = _fmt(x) if x.numel() <= 8 else f"{bad.numel()} values outside it, e.g. {_fmt(bad[0])}"
        raise ValueError(f"{fn}: {name} must lie in [0, 1), got {got}")


def _check_chunk(fn: str, chunk_size: int) -> None:
    # a chunk of one position would make the scan a python-depth sequential loop in disguise
    if not isinstance(chunk_size, int) or chunk_size < 2:
        raise ValueError(f"{fn}: chunk_size must be an int >= 2, got {chunk_size!r}")


def _eta_per_head(fn: str, eta: Rate, H: int, device, dtype, check_values: bool = True) -> torch.Tensor:
    """eta (float, 0-d, (1,) or (H,)) -> (H,) tensor on device/dtype, differentiable if eta is."""
    if isinstance(eta, torch.Tensor):
        if tuple(eta.shape) not in ((), (1,), (H,)):
            raise ValueError(
                f"{fn}: eta has shape {tuple(eta.shape)} but v has H={H} heads; pass a float, "
                f"a 0-d tensor or one rate per head (shape ({H},))"
            )
        if check_values:
            _check_rates(fn, "eta", eta)
        return eta.to(device=device, dtype=dtype).reshape(-1).expand(H)
    if isinstance(eta, str | bytes) or not hasattr(eta, "__float__"):
        raise TypeError(f"{fn}: eta must be a float or a tensor, got {type(eta).__name__}")
    eta_f = float(eta)
    if check_values and not 0 <= eta_f < 1:
        raise ValueError(f"{fn}: eta must lie in [0, 1), got {eta_f:g}")
    return torch.full((H,), eta_f, device=device, dtype=dtype)


def _check_v4(fn: str, v: torch.Tensor) -> None:
    if not isinstance(v, torch.Tensor) or v.dim() != 4:
        shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise ValueError(f"{fn}: v must be a 4-D tensor (B, H, T, D), got shape {shape}")
    if not v.is_floating_point():
        raise ValueError(f"{fn}: v must be a floating-point tensor, got dtype {v.dtype}")


def _powers(a: torch.Tensor, k: torch.Tensor, strict: bool = False) -> torch.Tensor:
    """a ** k for each a and each integer exponent in k, shape a.shape + k.shape; 1 at k == 0, 0 at k < 0
    (strict=True: 0 at k == 0 too, only k > 0 kept).

    The exponent is clamped to >= 1 before pow so the gradient at a == 0 is finite (the k == 0 entries
    are then replaced by a constant; d/da a^0 would otherwise be 0 * 0^-1 = nan). Powers a^k, k >= 2,
    below the smallest normal number (1.2e-38 in float32) are flushed to 0: they are far below the
    rounding of any sum they enter, and subnormal operands make CPU matmuls several times slower (small
    rates reach them within one chunk: 0.25^64 = 2.9e-39). a^1 = a is kept, so d/da at a == 0 stays 1.
    """
    a = a.reshape(a.shape + (1,) * k.dim())
    pw = a ** k.clamp(min=1).to(a.dtype)
    keep = (k > 0) & ((k == 1) | (pw >= torch.finfo(pw.dtype).tiny))
    return torch.where(
        keep, pw, torch.zeros((), dtype=a.dtype, device=a.device) if strict else (k == 0).to(a.dtype)
    )


class _LayoutCopy(torch.autograd.Function):
    """y = x.permute(dims) copied into a fresh contiguous tensor of dtype `dtype`; backward copies the
    gradient back into x's layout and dtype the same way.

    Plain autograd (permute + contiguous) would hand the next backward op a permuted, non-contiguous
    gradient, and bmm then copies every batch matrix on its own; one bulk copy each way is much cheaper.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, dims: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        ctx.inv = tuple(sorted(range(len(dims)), key=dims.__getitem__))
        ctx.in_dtype = x.dtype
        return _copy_permuted(x, dims, dtype)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return _copy_permuted(g, ctx.inv, ctx.in_dtype), None, None


def _copy_permuted(x: torch.Tensor, dims: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    if dims == (1, 0):
        # a 2-D transpose within one dtype takes PyTorch's blocked transpose copy (several times faster
        # than a general strided copy); a dtype change, if any, then runs on contiguous memory
        return x.t().contiguous().to(dtype)
    xp = x.permute(dims)
    return torch.empty(xp.shape, dtype=dtype, device=x.device).copy_(xp)


def _layout_copy(x: torch.Tensor, dims: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """x.permute(dims) as a contiguous tensor of dtype `dtype` (one copy forward, one backward)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _LayoutCopy.apply(x, dims, dtype)
    return _copy_permuted(x, dims, dtype)


# -----------------------------------------------------------------------------
# the chunked scan
#
# Layout: time is the LAST dim, x (G, N, T): G groups (a head, or a channel-rate pair) with one rate each,
# N independent sequences per group. Split into n chunks of c positions, x is (G, N*n, c) without a copy,
# and the scan within every chunk is one bmm per group with the transposed (c x c) decay matrix:
# X (G, N*n, c) @ L^T (G, c, c). The chunk-end values Y[..., -1] (G, N, n) form a sequence n long, scanned
# the same way with rate a^c; that gives the state entering each chunk.


def _carry_chunk(n: int, N: int, chunk_size: int) -> int:
    """Chunk length for scanning n chunk-end values of N sequences per group.

    n <= N (and <= chunk_size): one chunk of n, so one bmm and no further recursion; the (G, n, n) decay
    matrix is then no larger than the (G, N, n) chunk-end values. Otherwise chunks of ~sqrt(n) keep it
    no larger than them (G can be C*R, thousands of groups, while n is only T/c).
    """
    if n <= min(N, chunk_size):
        return n
    return max(2, min(chunk_size, math.isqrt(n)))


def _carry(ends: torch.Tensor, a: torch.Tensor, c: int, chunk_size: int) -> torch.Tensor:
    """States entering each chunk, (G, N, n), from the inclusive chunk-end values ends (G, N, n).

    The state after chunk m is S_m = sum_{m' <= m} (a^c)^(m-m') ends_m' (a scan with rate a^c); the state
    entering chunk m is S_{m-1} (zero for the first chunk).
    """
    G, N, n = ends.shape
    ac = _powers(a, torch.tensor(c, device=a.device))  # a^c, subnormal values flushed to 0 as in _powers
    S = _scan_last(ends, ac, _carry_chunk(n, N, chunk_size), chunk_size)  # (G, N, n)
    return F.pad(S[..., :-1], (1, 0))


def _scan_last(
    x: torch.Tensor, a: torch.Tensor, c: int, chunk_size: int, inclusive: bool = True
) -> torch.Tensor:
    """Scan along the last dim of x (G, N, T) with one rate per group a (G,), in chunks of c; same shape.

    inclusive: Y_t = sum_{i<=t} a^(t-i) x_i; otherwise the exclusive sum over i < t.
    """
    G, N, T = x.shape
    n = -(-T // c)  # number of chunks
    if n * c != T:
        x = F.pad(x, (0, n * c - T))  # zero tail: does not touch earlier positions
    X = x.reshape(G, N * n, c)
    k = torch.arange(c, device=x.device)
    lag = k[None, :] - k[:, None]  # (c, c) [i, j] = j - i
    LT = _powers(a, lag, strict=not inclusive)  # (G, c, c) [i, j] = a^(j-i) for j >= i (j > i), else 0
    Y = torch.bmm(X, LT)  # (G, N*n, c) scan within each chunk
    if n > 1:
        P = _powers(a, torch.arange(c + 1, device=x.device))  # (G, c+1) a^l for l = 0..c
        ends = torch.bmm(X, P[:, :c].flip(-1)[:, :, None])  # (G, N*n, 1) inclusive chunk ends
        prev = _carry(ends.view(G, N, n), a, c, chunk_size)  # (G, N, n) state entering each chunk
        # + a^(j+1) prev at position j, as an in-place rank-1 update (bmm saved X and LT, not Y)
        Y.baddbmm_(prev.reshape(G, N * n, 1), P[:, None, 1:])
    Y = Y.view(G, N, n * c)
    return Y if n * c == T else Y[..., :T]


# -----------------------------------------------------------------------------
# the paper's reading: one rate per head


def momentum_ema(
    v: torch.Tensor, eta: Rate, include_current: bool = False, chunk_size: int = 64
) -> torch.Tensor:
    """Exponential moving average of the values along time, per head.

        out[b, h, t] = sum_{i<t}  eta_h^(t-i) v[b, h, i]     (include_current=False, the paper's MoAttn)
        out[b, h, t] = sum_{i<=t} eta_h^(t-i) v[b, h, i]     (include_current=True)

    v: (B, H, T, D). eta: float, 0-d tensor, or (H,) tensor (one rate per head), all in [0, 1); may
    require grad. Returns (B, H, T, D) in v's dtype, accumulated in float32. O(T) time and memory.
    """
    fn = "momentum_ema"
    _check_v4(fn, v)
    _check_chunk(fn, chunk_size)
    B, H, T, D = v.shape
    acc = _acc_dtype(v.dtype)
    with _no_autocast(v.device):
        a = _eta_per_head(fn, eta, H, v.device, acc)  # (H,)
        if T == 0:
            return v.clone()
        c = min(chunk_size, T)
        n = -(-T // c)  # number of chunks
        x = v if n * c == T else F.pad(v, (0, 0, 0, n * c - T))  # zero tail: does not touch earlier t
        # chunk-major layout, one copy (contiguous runs of D): (B, H, n, c, D) -> (H, c, n, B, D)
        X = _layout_copy(x.view(B, H, n, c, D), (1, 3, 2, 0, 4), acc).view(H, c, n * B * D)
        k = torch.arange(c, device=v.device)
        lag = k[:, None] - k[None, :]  # (c, c) [j, i] = j - i
        L = _powers(a, lag, strict=not include_current)  # (H, c, c) a^(j-i) on/below (below) the diagonal
        Y = torch.bmm(L, X)  # (H, c, n*B*D) scan within each chunk
        if n > 1:
            P = _powers(a, torch.arange(c + 1, device=v.device))  # (H, c+1) a^l for l = 0..c
            # inclusive chunk ends sum_i a^(c-1-i) x_i by matmul: slicing Y would cost full-size zero
            # gradients in backward
            ends = torch.bmm(P[:, None, :c].flip(-1), X).view(H, n, B * D)
            prev = _carry(ends.transpose(1, 2), a, c, chunk_size)  # (H, B*D, n) state entering each chunk
            # + a^(j+1) prev at position j, as an in-place rank-1 update (bmm saved X and L, not Y)
            Y.baddbmm_(P[:, 1:, None], prev.transpose(1, 2).reshape(H, 1, n * B * D))
        y = _layout_copy(Y.view(H, c, n, B, D), (3, 0, 2, 1, 4), v.dtype).view(B, H, n * c, D)  # and back
    return y if n * c == T else y[:, :, :T]


def momentum_ema_final_state(v: torch.Tensor, eta: Rate) -> torch.Tensor:
    """Inclusive state after the last position, sum_{i<=T-1} eta^(T-1-i) v_i: (B, H, T, D) -> (B, H, 1, D).

    Returned in the accumulation dtype (float32, or float64 for float64 v): it is a running sum that
    `momentum_ema_step` keeps adding to.
    """
    fn = "momentum_ema_final_state"
    _check_v4(fn, v)
    B, H, T, D = v.shape
    acc = _acc_dtype(v.dtype)
    with _no_autocast(v.device):
        a = _eta_per_head(fn, eta, H, v.device, acc)  # (H,)
        w = _powers(a, torch.arange(T - 1, -1, -1, device=v.device))  # (H, T) eta^(T-1-i)
        return torch.einsum("ht,bhtd->bhd", w, v.to(acc))[:, :, None, :]  # (B, H, 1, D)


def momentum_ema_step(
    state: torch.Tensor | None, v_t: torch.Tensor, eta: Rate, include_current: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step of `momentum_ema`.

    state: inclusive state s_{t-1} (B, H, 1, D), or None at t = 0 (zeros). v_t: (B, H, 1, D).
    Returns out_t = eta * s_{t-1} (+ v_t if include_current), in v_t's dtype, and the new state
    s_t = eta * s_{t-1} + v_t, kept in float32 (float64 for float64 v_t). eta's range is not checked
    here (that would sync the device every token); its shape is.
    """
    fn = "momentum_ema_step"
    _check_v4(fn, v_t)
    acc = _acc_dtype(v_t.dtype)
    with _no_autocast(v_t.device):
        a = _eta_per_head(fn, eta, v_t.shape[1], v_t.device, acc, check_values=False)[None, :, None, None]
        x = v_t.to(acc)
        decayed = torch.zeros_like(x) if state is None else a * state.to(acc)  # (B, H, 1, D)
        new_state = decayed + x
        out = new_state if include_current else decayed
    return out.to(v_t.dtype), new_state


# -----------------------------------------------------------------------------
# the authors' code: a multi-rate damped EMA per channel (MEGA-style), current token included


def _check_multirate(fn: str, v: torch.Tensor, p: torch.Tensor, gamma: torch.Tensor | None) -> None:
    if not isinstance(v, torch.Tensor) or v.dim() != 3:
        shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise ValueError(f"{fn}: v must be a 3-D tensor (B, T, C), got shape {shape}")
    if not v.is_floating_point():
        raise ValueError(f"{fn}: v must be a floating-point tensor, got dtype {v.dtype}")
    C = v.shape[-1]
    if not isinstance(p, torch.Tensor) or p.dim() != 2 or p.shape[0] != C:
        shape = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
        raise ValueError(f"{fn}: p must be a (C, R) tensor with C={C} (v's channels), got shape {shape}")
    if gamma is not None and (not isinstance(gamma, torch.Tensor) or gamma.shape != p.shape):
        shape = tuple(gamma.shape) if isinstance(gamma, torch.Tensor) else type(gamma).__name__
        raise ValueError(f"{fn}: gamma must have p's shape {tuple(p.shape)}, got shape {shape}")


def multirate_ema(
    v: torch.Tensor, p: torch.Tensor, gamma: torch.Tensor, chunk_size: int = 64
) -> torch.Tensor:
    """Multi-rate damped EMA per channel (the authors' "rot-momentum" code), current token included.

        y[b, t, c] = sum_r gamma[c, r] sum_{i<=t} p[c, r]^(t-i) v[b, i, c]

    i.e. a causal convolution with kernel k[c, l] = sum_r gamma[c, r] p[c, r]^l. v: (B, T, C),
    p: (C, R) rates in [0, 1), gamma: (C, R) any real. Returns (B, T, C) in v's dtype, accumulated in
    float32. O(T) time and memory; no (B, T, C, R) tensor is formed (per-rate states exist only at chunk
    ends, (B, T/c, C, R)).
    """
    fn = "multirate_ema"
    _check_multirate(fn, v, p, gamma)
    _check_chunk(fn, chunk_size)
    _check_rates(fn, "p", p)
    B, T, C = v.shape
    R = p.shape[1]
    acc = _acc_dtype(v.dtype)
    if T == 0:
        return v.clone()
    with _no_autocast(v.device):
        p, gamma = p.to(v.device, acc), gamma.to(v.device, acc)
        c = min(chunk_size, T)
        n = -(-T // c)  # number of chunks
        P = _powers(p, torch.arange(c + 1, device=v.device))  # (C, R, c+1) p^l for l = 0..c
        kernel = (gamma[:, :, None] * P[..., :c]).sum(1)  # (C, c) sum_r gamma p^l for lags l < c
        # transposed causal Toeplitz block, MT[i, j] = kernel[j - i] for j >= i, else 0: window s of the
        # kernel with c-1 zeros in front is [0]*(c-1-s) + kernel[:s+1], i.e. row c-1-s of MT
        MT = F.pad(kernel, (c - 1, 0)).unfold(1, c, 1).flip(1)  # (C, c, c)
        x = v if n * c == T else F.pad(v, (0, 0, 0, n * c - T))  # zero tail: does not touch earlier t
        # channels to the front with one 2-D transpose: (B*n*c, C) -> (C, B*n*c), time last
        X = _layout_copy(x.reshape(B * n * c, C), (1, 0), acc).view(C, B * n, c)
        Y = torch.bmm(X, MT)  # (C, B*n, c) contribution from inside each chunk
        if n > 1:
            # per-rate state each chunk leaves behind, carried across chunks with rate p^c
            e = torch.bmm(P[..., :c].flip(-1), X.transpose(1, 2))  # (C, R, B*n) sum_i p^(c-1-i) x_i
            prev = _carry(e.view(C * R, B, n), p.reshape(C * R), c, chunk_size)  # (C*R, B, n) entering
            into = gamma[:, :, None] * P[..., 1:]  # (C, R, c) gamma p^(j+1)
            # in place (bmm saved X and MT, not Y): no full-size copy of Y
            Y.baddbmm_(prev.view(C, R, B * n).transpose(1, 2), into)
        y = _layout_copy(Y.view(C, B * n * c), (1, 0), v.dtype).view(B, n * c, C)  # (B, T_padded, C)
    return y if n * c == T else y[:, :T]


def multirate_ema_final_state(v: torch.Tensor, p: torch.Tensor, chunk_size: int = 64) -> torch.Tensor:
    """Per-rate inclusive states after the last position: s[b, c, r] = sum_{i<=T-1} p^(T-1-i) v[b, i, c].

    v: (B, T, C), p: (C, R) -> (B, C, R), in float32 (float64 for float64 v), for `multirate_ema_step`.
    """
    fn = "multirate_ema_final_state"
    _check_multirate(fn, v, p, None)
    _check_chunk(fn, chunk_size)
    _check_rates(fn, "p", p)
    B, T, C = v.shape
    acc = _acc_dtype(v.dtype)
    if T == 0:
        return v.new_zeros(B, *p.shape, dtype=acc)
    with _no_autocast(v.device):
        p = p.to(v.device, acc)
        c = min(chunk_size, T)
        n = -(-T // c)
        k = torch.arange(c, device=v.device)
        # zeros in FRONT leave the final state unchanged; chunks keep the weight tensor at (C, R, T/c)
        x = F.pad(v, (0, 0, n * c - T, 0))  # (B, n*c, C)
        X = _layout_copy(x.reshape(B * n * c, C), (1, 0), acc).view(C, B * n, c)  # (C, B*n, c) time last
        e = torch.bmm(_powers(p, c - 1 - k), X.transpose(1, 2)).view(C, -1, B, n)  # (C, R, B, n) chunk ends
        w = _powers(p**c, torch.arange(n - 1, -1, -1, device=v.device))  # (C, R, n) (p^c)^(n-1-m)
        return torch.einsum("crbn,crn->bcr", e, w)  # (B, C, R)


def multirate_ema_step(
    state: torch.Tensor | None, v_t: torch.Tensor, p: torch.Tensor, gamma: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step of `multirate_ema`.

    state: per-rate inclusive states (B, C, R), or None at t = 0 (zeros). v_t: (B, 1, C).
    new_state = p * state + v_t; out_t = sum_r gamma * new_state, (B, 1, C) in v_t's dtype. The state is
    kept in float32 (float64 for float64 v_t). p's range is not checked here (no per-token device sync).
    """
    _check_multirate("multirate_ema_step", v_t, p, gamma)
    acc = _acc_dtype(v_t.dtype)
    with _no_autocast(v_t.device):
        p, gamma = p.to(v_t.device, acc), gamma.to(v_t.device, acc)
        x = v_t.to(acc)[:, 0, :, None]  # (B, C, 1)
        prev = x.new_zeros(x.shape[0], *p.shape) if state is None else state.to(acc)  # (B, C, R)
        new_state = p * prev + x  # (B, C, R)
        out = (gamma * new_state).sum(-1)[:, None, :]  # (B, 1, C)
    return out.to(v_t.dtype), new_state
