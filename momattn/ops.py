"""Exponential moving averages of attention values, in O(T) time and memory.

Two readings of momentum attention (Dai et al. 2023, section 5, and the authors' code):

- `momentum_ema`: the paper's term  m_t = sum_{i<t} eta^(t-i) v_i  per head (exclusive of the current
  token), or inclusive with `include_current=True`.
- `multirate_ema`: the authors' posted code, a MEGA-style damped EMA per channel with R decay rates p and
  mixing weights gamma, current token included:  y_t = sum_r gamma_r sum_{i<=t} p_r^(t-i) v_i.

On CPU, both ops' training paths (no states; also evaluation without a cache) in float32, bf16 or float64 run
the C++ kernel of momattn/cpu_scan.py by default: one pass through time in the values' own layout, float32 states, each output
rounded once (bf16 included); it takes about half the time of the chunked matmul scans below for learnable and
multiple rates, the same for one fixed rate (benchmarks/results/compare_kernel_*.md). On CUDA, momentum_ema runs
the Triton kernel of momattn/triton_scan.py in eager mode (with a fixed rate, attention's output added as it
writes, one pass each way). The matmul scans serve everything else (states with a gradient, multirate_ema off
CPU, float16, torch.compile, second derivatives with learned rates, SCAN_BACKEND "torch", or no C++ compiler) and are what the rest of this
docstring describes.

Both run a chunked scan: inside a chunk of c positions a small (c x c) lower-triangular decay matrix is
applied by matmul; the state at each chunk end is carried to the next chunks with rate eta^c: by one small
(n x n) matmul over the n chunk ends (momentum_ema, up to 256 chunks), step by step (up to 16 chunks), or
by the same scan run recursively over the chunk-end states. Only non-negative powers of the rates are ever
formed (no eta^-t, no log eta), so rates near 1 and long sequences stay finite, and rate 0 is allowed,
gradients included. Sums are accumulated in float32 (float64 for float64 inputs) with autocast off.
Training with bf16 values on CPU (what autocast hands the ops, with a gradient to take; without one, in
evaluation and generation, the sums stay float32 and batch-independent) runs the full-size work in bf16: bf16 chunk
matmuls accumulate in float32 and round their results to bf16, as every bf16 matmul of the model does,
while the states carried between chunks stay float32. A term then passes through at most five bf16
roundings (unit roundoff 2^-8 each: the decay block, the chunk's sum, the carried state and its weight
for the update, the updated sum), so the output is within 5 * 2^-8 * sum_i |w_i| |v_i| of the exact sums
(tests/test_ops.py; typically under 2 of those units, and the float32 path rounded once is within 1).
On a CPU with AMX (where `auto` trains in bf16) that is twice as fast as converting to float32 and back (issue 11;
benchmarks/results/compare_ema_bf16_T256.md). On CUDA bf16 values are summed in float32 as before (the
Triton kernel, or float32 matmuls: cuBLAS's bf16 matmuls may reduce in lower precision).

Speed: without states (training), momentum_ema scans the heads-merged values (B, T, H*D) in place with one
rate for every head (a strided view, no layout copy; one rate per head: one bulk copy in and one out, each
head's chunks then one batched matmul with its (c x c) decay matrix, or time-first for heads narrower than a
chunk, so that no matrix is repeated per chunk); and its
backward is the same scan run backward in time over the gradient (the adjoint of a causal decay scan is
the anti-causal one), so fixed rates save nothing full-size for it; the rates' gradient, when they need one, is one
shifted dot product per head (see _MergedScan). Its cached path (initial_state / final_state) is the same scan
plus the prefix's state decaying into every position (a^(t+1) s), the final state read off the last output.
multirate_ema changes its input's layout with one bulk copy each way (a custom autograd Function, so backward
gets one bulk copy too): it moves channels to the
front with a 2-D transpose (two cache-blocked passes on CPU, _transpose_2d) and right-multiplies by the
transposed (c x c) Toeplitz block, built from windows of the zero-padded kernel. Chunk ends and the
carried-in states go through small matmuls (the latter an in-place rank-1 update). multirate_ema's training
path (no states) has a hand-written backward (_MultiRateScan): each step's adjoint, the carry run backward
over the chunks, and closed-form gradients for p and gamma on (C, R, c)-sized tensors.

On CUDA the eager training path's scan is one Triton kernel instead (momattn/triton_scan.py, SCAN_BACKEND
below): the dozen small launches of the matmul scan cost 2x its time at gpt2_124m's shape on an H200
(benchmarks/results/gpu.md); the kernel reads the strided bf16 values in place and sums in float32. Inside
torch.compile the matmul scan is the faster one there (inductor fuses the work around it; the kernel is an
opaque op), so "auto" takes it while compiling.

One signature serves training, prefill and decoding (as in flash-linear-attention and mamba):

    out, final_state = op(v, ..., initial_state=None, output_final_state=False)

`initial_state` is the inclusive state after a prefix (what an earlier call returned as its final state);
`out` then equals the op applied to [prefix; v], restricted to v's positions. The state enters with
non-negative powers only (momentum_ema: a^(t+1) s; multirate_ema: the carry scan of the chunk ends). One new token (T = 1) takes a
short path: the recurrence s = a s + v, without the chunked machinery. Naive references: momattn/reference.py.
"""

from __future__ import annotations

import math
import os
import warnings

import torch
import torch.nn.functional as F

from momattn import cpu_scan

Rate = float | torch.Tensor

# Which implementation scans the training paths (both ops without states): "torch" (the chunked matmul scans
# below, every device), "cpu" (momattn/cpu_scan.py: a C++ kernel stepping through time, CPU tensors; the matmul
# scans elsewhere), "triton" (momattn/triton_scan.py: one kernel for momentum_ema, CUDA or TRITON_INTERPRET=1),
# or "auto" (cpu on CPU where the kernel builds; triton on CUDA where it is installed and the head size is a
# multiple of 16, except inside torch.compile; else torch). benchmarks/gpu_check.py and compare_revisions.py time
# them; set it with MOMATTN_SCAN_BACKEND or by assigning ops.SCAN_BACKEND.
SCAN_BACKEND = os.environ.get("MOMATTN_SCAN_BACKEND", "auto")


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
        a = eta.to(device=device, dtype=dtype)
        if check_values:
            _check_rates(fn, "eta", eta)
            if a.dtype != eta.dtype:  # a float64 rate below 1 that rounds to 1: an undamped sum (found by review)
                _check_rates(fn, f"eta (as {str(dtype).removeprefix('torch.')}, the sums' precision)", a)
        return a.reshape(-1).expand(H)
    if isinstance(eta, str | bytes) or not hasattr(eta, "__float__"):
        raise TypeError(f"{fn}: eta must be a float or a tensor, got {type(eta).__name__}")
    eta_f = float(eta)
    if not 0 <= eta_f < 1:  # a float costs no device sync: always checked (a decoding step took 1.5, and nan)
        raise ValueError(f"{fn}: eta must lie in [0, 1), got {eta_f:g}")
    # rounds to 1 in the sums' dtype (1 - 1e-9 is 1.0 in float32): at or above 1 less half the spacing below 1,
    # ties to even going to 1 (a plain comparison, where a tensor made per call sat on every forward and decoded token)
    if eta_f >= 1 - torch.finfo(dtype).eps / 4:
        raise ValueError(f"{fn}: eta={eta_f!r} rounds to 1 in {str(dtype).removeprefix('torch.')}, the sums' "
                         "precision, where it sums without decay; use a rate below it (at most 0.9999999 in float32)")
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
    rates reach them within one chunk: 0.25^64 = 2.9e-39). a^1 and a^2 are kept, so d/da and d2/da2 at a == 0
    stay exact (1 and 2 times their coefficients).
    """
    a = a.reshape(a.shape + (1,) * k.dim())
    pw = a ** k.clamp(min=1).to(a.dtype)
    keep = (k > 0) & ((k <= 2) | (pw >= torch.finfo(pw.dtype).tiny))
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
        return _transpose_2d(x, dtype)
    xp = x.permute(dims)
    return torch.empty(xp.shape, dtype=dtype, device=x.device).copy_(xp)


_TRANSPOSE_BLOCK = 64  # rows per block of the two-pass CPU transpose (16-128 compared: 64 and 128 best)


def _transpose_2d(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x (M, N) -> x.t() as a contiguous (N, M) tensor of dtype `dtype`.

    On CPU in two passes over blocks of 64 along the longer dim, so every block is cache sized: each block
    transposed on its own, and the runs of 64 contiguous elements moved as wholes. At (4096, 256) float32
    that took 1.9 ms against 2.8 ms for PyTorch's one-pass transpose copy, and 9.0 against 12.6 ms at
    (16384, 256), either way round (medians of 41 interleaved repeats on this project's 2-core AMD EPYC).
    Elsewhere, or when that dim does not split into blocks: PyTorch's transpose copy (a dtype change, if
    any, then runs on contiguous memory).
    """
    M, N = x.shape
    b = _TRANSPOSE_BLOCK
    L = max(M, N)
    if x.device.type != "cpu" or L % b or L < 2 * b:
        return x.t().contiguous().to(dtype)
    if M >= N:  # row blocks (b, N) -> (N, b), then the blocks side by side
        blocks = torch.empty(M // b, N, b, dtype=dtype).copy_(x.reshape(M // b, b, N).transpose(1, 2))
        return blocks.permute(1, 0, 2).reshape(N, M)
    # column blocks: the runs of b first, (M, N/b, b) -> (N/b, M, b), then each (M, b) block transposed
    runs = torch.empty(N // b, M, b, dtype=dtype).copy_(x.reshape(M, N // b, b).transpose(0, 1))
    return runs.transpose(1, 2).reshape(N, M)


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


_CARRY_LOOP_MAX = 16  # _carry runs its recurrence step by step up to this many chunks


def _carry(
    ends: torch.Tensor, a: torch.Tensor, c: int, chunk_size: int, init: torch.Tensor | None = None
) -> torch.Tensor:
    """States entering each chunk, (G, N, n), from the inclusive chunk-end values ends (G, N, n).

    The state after chunk m is S_m = (a^c) S_{m-1} + ends_m (a scan with rate a^c), S_{-1} = init (G, N)
    (zero when None); the state entering chunk m is S_{m-1}.
    """
    G, N, n = ends.shape
    # torch.full, not torch.tensor: a Python number copied to a GPU is a blocking host-to-device copy (a sync)
    ac = _powers(a, torch.full((), c, device=a.device))  # a^c, subnormal values flushed to 0 as in _powers
    if n <= _CARRY_LOOP_MAX:  # few chunks: the recurrence itself, one small multiply-add per chunk (a batched
        # matmul of G tiny matrices costs more where G is large: multirate_ema's C*R groups)
        s = torch.zeros_like(ends[..., 0]) if init is None else init.to(ends.dtype)  # (G, N)
        states = []
        for m in range(n):
            states.append(s)
            s = torch.addcmul(ends[..., m], ac[:, None], s)
        return torch.stack(states, dim=-1)
    if init is None:
        S = _scan_last(ends, ac, _carry_chunk(n, N, chunk_size), chunk_size)  # (G, N, n)
        return F.pad(S[..., :-1], (1, 0))
    S = torch.cat([init[..., None].to(ends.dtype), ends[..., :-1]], dim=-1)  # (G, N, n): init, then ends
    return _scan_last(S, ac, _carry_chunk(n, N, chunk_size), chunk_size)


def _lag_block(pw: torch.Tensor, lag: torch.Tensor, strict: bool) -> torch.Tensor:
    """A decay block gathered from powers: pw (G, K) the powers a^k of _powers, lag an integer matrix; returns
    (G, *lag.shape) a^lag where lag > 0 (strict) or lag >= 0, else 0 (G*K pow calls, not one per entry)."""
    keep = lag > 0 if strict else lag >= 0
    return torch.where(keep, pw[:, lag.clamp(min=0)], torch.zeros((), dtype=pw.dtype, device=pw.device))


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
    P = _powers(a, torch.arange(c + 1, device=x.device))  # (G, c+1) a^l for l = 0..c
    LT = _lag_block(P, lag, strict=not inclusive)  # (G, c, c) [i, j] = a^(j-i) for j >= i (j > i), else 0
    Y = torch.bmm(X, LT)  # (G, N*n, c) scan within each chunk
    if n > 1:
        ends = torch.bmm(X, P[:, :c].flip(-1)[:, :, None])  # (G, N*n, 1) inclusive chunk ends
        prev = _carry(ends.view(G, N, n), a, c, chunk_size)  # (G, N, n) state entering each chunk
        # + a^(j+1) prev at position j, as an in-place rank-1 update (bmm saved X and LT, not Y)
        Y.baddbmm_(prev.reshape(G, N * n, 1), P[:, None, 1:])
    Y = Y.view(G, N, n * c)
    return Y if n * c == T else Y[..., :T]


def _check_state(fn: str, state: torch.Tensor | None, shape: tuple[int, ...], what: str) -> None:
    if state is None:
        return
    if not isinstance(state, torch.Tensor) or tuple(state.shape) != shape:
        got = tuple(state.shape) if isinstance(state, torch.Tensor) else type(state).__name__
        raise ValueError(f"{fn}: initial_state must have shape {shape} ({what}), got {got}")


def _last_state(
    x_last: torch.Tensor, w: torch.Tensor, a_into: torch.Tensor, prev: torch.Tensor | None
) -> torch.Tensor:
    """Inclusive state after the last real position: x_last (G, N, c) @ w (G, c, K) + a_into * prev.

    x_last holds the last chunk (zero tail included), w the powers a^(j_last - i) (0 past j_last), a_into
    (G, 1, K) the decay a^(j_last + 1) of the state prev (G, N, K) that entered the chunk (None: zero).
    """
    s = torch.bmm(x_last, w)  # (G, N, K)
    return s if prev is None else s + a_into * prev


# -----------------------------------------------------------------------------
# the paper's reading: one rate per head


def momentum_ema(
    v: torch.Tensor,
    eta: Rate,
    include_current: bool = False,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 32,  # fastest on CPU for the default model (bench: 16, 32, 64, 128 compared)
    *,
    check_rates: bool = True,
    add: torch.Tensor | None = None,
    link: cpu_scan.ValueLink | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Exponential moving average of the values along time, per head.

        out[b, h, t] = sum_{i<t}  eta_h^(t-i) v[b, h, i]     (include_current=False, the paper's MoAttn)
        out[b, h, t] = sum_{i<=t} eta_h^(t-i) v[b, h, i]     (include_current=True)

    v: (B, H, T, D). eta: float, 0-d tensor, or (H,) tensor (one rate per head), all in [0, 1); may
    require grad. out is a (B, H, T, D) view of (B, T, H, D) memory (heads side by side, as attention
    merges them) for T >= 2, with or without states. initial_state: (B, H, D), the inclusive state s = sum_{i<=-1} eta^(-1-i) v_i of a prefix
    (positions -P..-1), which adds eta^(t+1) s at position t. Returns (out, final_state): out (B, H, T, D)
    in v's dtype, accumulated in float32 (without states, bf16 v takes bf16 chunk matmuls, see the module
    docstring); final_state (B, H, D), the inclusive state after position T-1
    in float32 (float64 for float64 v), or None unless output_final_state. O(T) time and memory.

    A tensor eta's range is not re-checked on a one-token step that continues a state (that would sync
    the device every decoded token); it was checked when the state was started. check_rates=False skips
    the check of a tensor eta altogether (a float's is always checked: it costs nothing), for callers whose rates are valid by construction (the model's:
    a config-checked float or a sigmoid): on a GPU the check waits for the device, once per layer and step.

    add: (B, H, T, D) or None, a tensor added to out (the model's attention output). The CPU kernel, and the Triton
    kernel for fixed rates, add it as they write the output, in float32 before the one rounding (full-size passes
    fewer); elsewhere it is a plain add.
    link: from `link_values(v)`, whose first output attention read to give `add`: the kernels' backward (fixed
    rates) then adds attention's value gradient as it writes its own, in one pass; elsewhere it does nothing.
    """
    fn = "momentum_ema"
    _check_v4(fn, v)
    _check_chunk(fn, chunk_size)
    B, H, T, D = v.shape
    if H < 1:  # (a ZeroDivisionError deep in the scan: found by review)
        raise ValueError(f"{fn}: v has no heads (shape {tuple(v.shape)}, H=0)")
    _check_add(fn, add, v)
    _check_state(fn, initial_state, (B, H, D), "B, H, D")
    acc = _acc_dtype(v.dtype)
    decoding = T == 1 and initial_state is not None
    with _no_autocast(v.device):
        a = _eta_per_head(fn, eta, H, v.device, acc, check_values=check_rates and not decoding)  # (H,)
        s0 = None if initial_state is None else initial_state.to(v.device, acc)  # (B, H, D)
        if T <= 1:
            out, final = _momentum_short(v, a, include_current, s0, output_final_state)
            return _plus(out, add), final
        shared = not isinstance(eta, torch.Tensor) or eta.numel() == 1  # one rate for every head
        rates = a[:1] if shared else a  # (G,)
        if s0 is None and not output_final_state:  # training: the merged layout and a custom backward
            return _momentum_merged(v, rates, include_current, chunk_size, add, link), None
        # with states: the same scan of the merged layout, plus the prefix's state decaying into every position
        x = v.transpose(1, 2).reshape(B, T, H * D)  # (B, T, H*D): no copy for merged-layout values
        if _use_cpu_kernel(x) and not _needs_grad(v, a, s0, add):  # evaluation with a cache: the kernel from s0
            fused, add = _split_add(add, x)
            y, last = cpu_scan.ema_with_states(
                x, a.repeat_interleave(D)[None], a.new_ones(1, H * D), not include_current,
                None if s0 is None else s0.reshape(B, H * D, 1), output_final_state, fused)
            return _plus(y.view(B, T, H, D).transpose(1, 2), add), (None if last is None else last.view(B, H, D))
        if not _use_triton(x, rates.shape[0]):
            x = x.to(acc)
        y = _MergedScan.apply(x, rates, not include_current, chunk_size).view(B, T, H, D)  # float32 (float64)
        if s0 is not None:
            decay = _powers(a, torch.arange(1, T + 1, device=v.device))  # (H, T) a^(t+1)
            y = y + decay.t()[None, :, :, None] * s0[:, None]  # (B, T, H, D)
        final = None
        if output_final_state:  # the inclusive state after T-1: the output there, plus v_{T-1} if it was left out
            final = y[:, -1].clone() if include_current else y[:, -1] + x[:, -1].view(B, H, D).to(acc)  # (B, H, D)
    return _plus(y.to(v.dtype).transpose(1, 2), add), final  # (B, H, T, D), heads side by side in memory


def _bf16_training(x: torch.Tensor) -> bool:
    """Whether the ops' training paths scan x in bf16 (see the module docstring): bf16 values on CPU that take a
    gradient. Without one (evaluation, generation) the sums stay float32: exact, and independent of how rows are
    batched and padded (a bf16 matmul's rounding may follow the batch's shape)."""
    return x.dtype == torch.bfloat16 and x.device.type == "cpu" and torch.is_grad_enabled() and x.requires_grad


def _momentum_merged(
    v: torch.Tensor, a: torch.Tensor, include_current: bool, chunk_size: int, add: torch.Tensor | None = None,
    link: cpu_scan.ValueLink | None = None,
) -> torch.Tensor:
    """momentum_ema without states, on the heads-merged layout (B, T, H*D) as it is: a (1,) one rate for
    every head, or (H,) one per head. The values a model splits from its qkv projection are such a strided
    view, so with one rate nothing is copied in or out (one rate per head: one bulk copy each way, see
    _scan_merged). Returns (B, H, T, D), a view of a (B, T, H, D) tensor."""
    B, H, T, D = v.shape
    x = v.transpose(1, 2).reshape(B, T, H * D)  # (B, T, H*D): no copy for merged-layout values
    # the kernels read any dtype in place and sum in float32; the matmul scan takes bf16 as it is when training
    # on CPU (its matmuls accumulate in float32 there, see _scan_merged) and anything else in the accumulation dtype
    if _use_cpu_kernel(x):  # one pass through time in this layout (momattn/cpu_scan.py): R = 1, g = 1
        p = a.repeat_interleave(H * D // a.shape[0])[None]  # (1, H*D) each channel's rate
        fused, add = _split_add(add, x)
        y = cpu_scan.ema(x, p, torch.ones_like(p), not include_current,
                         lambda xs, ps, _: _scan_merged_autograd(xs, ps[0, :: H * D // a.shape[0]], not include_current,
                                                                 chunk_size), fused, link if fused is not None else None)
    elif _fuses_triton(x, a, add):  # one launch writes scan + add in v's dtype (momattn/triton_scan.py)
        y = _triton_scan().ema(x, a, not include_current, lambda xs, r, strict: _scan_merged_autograd(
            xs, r, strict, chunk_size).to(xs.dtype), add, link)  # (B, T, H*D)
        return y.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
    else:
        y = _scan_merged_autograd(x, a, not include_current, chunk_size)  # (B, T, H*D)
    return _plus(y.to(v.dtype).view(B, T, H, D).transpose(1, 2), add)  # (B, H, T, D)


def link_values(v: torch.Tensor) -> tuple[torch.Tensor, cpu_scan.ValueLink | None]:
    """(the values for attention to read, a link for momentum_ema(v, ..., add=attention's output, link=)), for
    v (B, H, T, D) that a training step's backward will reach: where the CPU kernel (or, outside torch.compile, the
    Triton kernel) will scan them, its backward then writes its value gradient and attention's in one pass (see
    cpu_scan.link_values); elsewhere (v, None).
    The sum then flows back through attention's view of the values: a hook on that view, or gradients asked for
    both views in one call, see both terms there and none on the scan's view (the model's views are locals; a
    gradient asked for the scan's view alone, which the join does not reach, is its own term, tested)."""
    if not (torch.is_grad_enabled() and v.requires_grad):
        return v, None
    # the kernels' choice for the merged values (B, T, H*D), asked of an empty tensor of their width, device and dtype
    merged = v.new_empty((0, 0, v.shape[1] * v.shape[3]))
    if not _use_cpu_kernel(merged) and (_is_compiling() or not _fuses_triton(merged, None, None)):
        return v, None  # (torch.compile cannot trace the link: a weak reference to autograd's node)
    return cpu_scan.link_values(v)


def _check_add(fn: str, add: torch.Tensor | None, out: torch.Tensor) -> None:
    """add has out's shape; for a (B, T, C) out (multirate_ema) also (B, H, T, D) heads with H * D = C."""
    if add is None:
        return
    ok = isinstance(add, torch.Tensor) and add.shape == out.shape
    if isinstance(add, torch.Tensor) and out.dim() == 3 and add.dim() == 4:
        B, T, C = out.shape
        ok = (add.shape[0], add.shape[2], add.shape[1] * add.shape[3]) == (B, T, C)
    if not ok:
        shape = tuple(add.shape) if isinstance(add, torch.Tensor) else type(add).__name__
        heads = " or (B, H, T, D) heads with H * D = C" if out.dim() == 3 else ""
        raise ValueError(f"{fn}: add must have the output's shape {tuple(out.shape)}{heads}, got {shape}")


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd would take a gradient through any of these."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _split_add(add: torch.Tensor | None, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(the addend the CPU kernel adds as it writes its output, the one added after it with _plus): the kernel
    takes an addend of the values' dtype; another dtype is added after, with the usual type promotion."""
    return (add, None) if add is not None and add.dtype == x.dtype else (None, add)


def _plus(out: torch.Tensor, add: torch.Tensor | None) -> torch.Tensor:
    """out + add (None: out); (B, H, T, D) heads added to a (B, T, C) out are merged first."""
    if add is None:
        return out
    if add.dim() == 4 and out.dim() == 3:
        add = add.transpose(1, 2).reshape(out.shape)
    return out + add


def _scan_merged_autograd(x: torch.Tensor, a: torch.Tensor, strict: bool, chunk_size: int) -> torch.Tensor:
    """_MergedScan of x (B, T, C) by rates a (G,), x taken as it is where the scan can read it (see
    _momentum_merged), else in the accumulation dtype."""
    if not _use_triton(x, a.shape[0]) and not _bf16_training(x):
        x = x.to(_acc_dtype(x.dtype))
    return _MergedScan.apply(x, a, strict, chunk_size)


_DIRECT_CARRY_MAX = 256  # up to this many chunks the carry is one (n x n) matmul per group, else _carry's recursion
_BLOCKS: dict = {}  # decay blocks of fixed CPU rates, by (rates, their dtype, _DIRECT_CARRY_MAX, c, n, strict, reverse,
# dtype)


def _decay_blocks(
    a: torch.Tensor, c: int, n: int, strict: bool, reverse: bool, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """The constant matrices of _scan_merged for rates a (G,) in the accumulation dtype, chunks of c, n chunks.

    L (G, c, c) in `dtype`: a^(j-i) on and below the diagonal (strict: below; reverse: on and above), the
    scan inside a chunk. Lc (G, n, n) in a's dtype, or None when n == 1 or n > _DIRECT_CARRY_MAX: a^(c(m-1-m')) for m' < m
    (reverse: m' > m, a^(c(m'-1-m))), which carries the chunk-end sums into every later chunk. coef (G, c) in
    `dtype`: a^(j+1) (reverse: a^(c-j)), how the state entering a chunk reaches its position j.
    Every power comes from one vector a^k, k = 0..max(c, c(n-1)), formed by _powers (non-negative exponents,
    subnormal powers flushed to 0).
    """
    direct = 1 < n <= _DIRECT_CARRY_MAX
    pw = _powers(a, torch.arange(max(c, c * (n - 1) if direct else c) + 1, device=a.device))  # (G, K) a^k
    k = torch.arange(c, device=a.device)
    lag = (k[None, :] - k[:, None]) if reverse else (k[:, None] - k[None, :])  # (c, c)
    L = _lag_block(pw, lag, strict).to(dtype)  # (G, c, c)
    Lc = None
    if direct:
        m = torch.arange(n, device=a.device)
        d = (m[None, :] - m[:, None] - 1) if reverse else (m[:, None] - m[None, :] - 1)  # (n, n) chunks apart - 1
        Lc = _lag_block(pw, c * d, strict=False)  # (G, n, n) a^(c d) for d >= 0
    coef = (pw[:, 1 : c + 1].flip(-1) if reverse else pw[:, 1 : c + 1]).to(dtype)  # (G, c)
    return L, Lc, coef


def _cached_decay_blocks(a: torch.Tensor, fixed: bool, *key) -> tuple:
    """_decay_blocks, kept for fixed rates on CPU (reading the rates there costs no device sync): a model's
    fixed eta builds them once, not twice per layer and step (a dozen small ops each time)."""
    if not fixed or a.device.type != "cpu" or _is_compiling() or torch.is_inference_mode_enabled():
        return _decay_blocks(a, *key)  # (inference tensors cannot be saved for a later backward)
    k = (tuple(a.tolist()), a.dtype, _DIRECT_CARRY_MAX, *key)  # the limit decides whether Lc is formed
    blocks = _BLOCKS.get(k)
    if blocks is None:
        if len(_BLOCKS) >= 64:
            _BLOCKS.clear()
        blocks = _BLOCKS[k] = _decay_blocks(a, *key)
    return blocks


def _scan_merged(
    x: torch.Tensor, a: torch.Tensor, strict: bool, chunk_size: int, reverse: bool = False, fixed: bool = False
) -> torch.Tensor:
    """Scan of x (B, T, C) along time with G rates a (G,), rate g for channels [g*C/G, (g+1)*C/G); (B, T, C) in
    x's dtype.

    forward: y_t = sum_{i<=t} a^(t-i) x_i (i < t if strict). reverse: y_t = sum_{i>=t} a^(i-t) x_i
    (i > t if strict), the adjoint of the forward scan: the gradient of a forward scan is the reverse scan
    of its output gradient. Inside a chunk of c positions: one (c x c) decay matrix per group, applied to the
    chunks as they lie for one group, after one bulk copy for several (time first for groups narrower than a
    chunk). Across chunks: the inclusive chunk-end (reverse: chunk-start) sums, read off the last (first) row of each
    chunk's output, are carried into the later chunks in a's dtype (float32): one (n x n) matmul per group, or
    `_carry`'s recursion past _DIRECT_CARRY_MAX chunks; the state entering a chunk then reaches position j
    with weight a^(j+1) (one in-place multiply-add over the output). With one group nothing is copied; with
    G groups the output goes back to the merged layout in one bulk copy. `fixed`: the rates need no gradient,
    so the decay blocks may be kept (see _cached_decay_blocks).

    Precision: the chunk matmuls run in x's dtype. For float32/float64 x that is the accumulation dtype. For
    bfloat16 x (what autocast hands the op; momentum_ema passes it when training on CPU only, where oneDNN's
    bf16 matmuls accumulate in float32) the decay matrix is rounded to bf16, the matmul rounds its result to bf16, as every
    bf16 matmul of the model does, and the carry between chunks stays float32: see the module docstring for
    the bound. On CPU this is twice as fast as converting to float32 and back.
    """
    B, T, C = x.shape
    G = a.shape[0]
    if _use_triton(x, G) and not torch.is_grad_enabled():  # grad on: a double backward, which needs autograd
        return _scan_merged_triton(x, a, strict, reverse)
    Dg = C // G  # channels per group
    c = min(chunk_size, T)
    n = -(-T // c)  # number of chunks
    if n * c != T:
        x = F.pad(x, (0, 0, 0, n * c - T))  # zero tail: touches no earlier position (reverse: adds 0)
    L, Lc, coef = _cached_decay_blocks(a, fixed, c, n, strict, reverse, x.dtype)
    X = x.reshape(B, n, c, G, Dg).permute(3, 0, 1, 2, 4)  # (G, B, n, c, Dg): group g's channels of every chunk
    if c <= Dg:  # a batched matmul over the chunks; it repeats each (c x c) block per chunk, c/Dg of the values'
        # size. One group: the chunks as they lie, no layout copy; several: one bulk copy in, one out
        Y = torch.matmul(L[:, None, None], X if G == 1 else X.contiguous())  # (G, B, n, c, Dg) scan within chunks
    else:  # narrow groups: one matmul per group over all its chunks and channels, time first (one bulk copy in,
        # one out), so that no block is repeated
        Xt = X.permute(0, 3, 1, 2, 4).contiguous()  # (G, c, B, n, Dg)
        Y = torch.bmm(L, Xt.view(G, c, -1)).view(G, c, B, n, Dg).permute(0, 2, 3, 1, 4)  # (G, B, n, c, Dg) view
        X = Xt.permute(0, 2, 3, 1, 4)
    if n > 1:
        i = 0 if reverse else -1  # the inclusive sum over a chunk sits in its last row (reverse: first)
        ends = Y[..., i, :].to(a.dtype, copy=True)  # (G, B, n, Dg); a copy: Y is updated in place below
        if strict:
            ends += X[..., i, :]
        if Lc is not None:
            prev = torch.matmul(Lc[:, None], ends)  # (G, B, n, Dg) state entering (reverse: after) each chunk
        else:
            e = ends.transpose(2, 3).reshape(G, B * Dg, n)  # (G, B*Dg, n)
            S = _carry(e.flip(-1), a, c, chunk_size).flip(-1) if reverse else _carry(e, a, c, chunk_size)
            prev = S.view(G, B, Dg, n).transpose(2, 3)  # (G, B, n, Dg)
        Y.addcmul_(coef[:, None, None, :, None], prev[:, :, :, None].to(x.dtype))  # + coef[j] prev at j, in place
    Y = Y.permute(1, 2, 3, 0, 4).reshape(B, n * c, C)  # a view for the chunks as they lay, else one bulk copy
    return Y if n * c == T else Y[:, :T]


_TRITON = None  # momattn.triton_scan once looked for; False where Triton is not installed


def _triton_scan():
    """momattn.triton_scan, or None where Triton is not installed (or older than it needs)."""
    global _TRITON
    if _TRITON is None:
        try:
            from momattn import triton_scan
        except ImportError:
            triton_scan = False
        _TRITON = triton_scan
    return _TRITON or None


SCAN_BACKENDS = ("auto", "torch", "triton", "cpu")


def _check_backend() -> None:
    if SCAN_BACKEND not in SCAN_BACKENDS:
        raise ValueError(f"momattn.ops.SCAN_BACKEND must be 'auto', 'torch', 'triton' or 'cpu', got {SCAN_BACKEND!r}")


TRITON_CHUNK_UNIT = 64  # the Triton scan's chunk lengths are multiples of the largest block (BT) any config uses


def triton_chunk_setting() -> int | None:
    """MOMATTN_TRITON_CHUNK (the Triton scan's chunk length; 0: never chunk), None where it is unset; a ValueError
    naming it where it is not 0 or a multiple of TRITON_CHUNK_UNIT."""
    env = os.environ.get("MOMATTN_TRITON_CHUNK")
    if env is None:
        return None
    try:
        ch = int(env)
    except ValueError:
        ch = -1
    if ch < 0 or ch % TRITON_CHUNK_UNIT:
        raise ValueError(f"MOMATTN_TRITON_CHUNK={env!r} must be 0 (never chunk) or a multiple of {TRITON_CHUNK_UNIT}; "
                         "unset it for the chunk length the GPU suits")
    return ch


def backend_problem(kernel: bool = True, on_cpu: bool = True) -> str | None:
    """Why SCAN_BACKEND cannot run here (not a backend, or, with `kernel`, the kernel it names cannot load; the CPU
    kernel only `on_cpu`, where it runs), or None: train.py says it at start-up instead of at the first step."""
    if SCAN_BACKEND not in SCAN_BACKENDS:
        return (f"MOMATTN_SCAN_BACKEND={SCAN_BACKEND!r} is not a scan backend; use auto (the default), torch, "
                "triton or cpu")
    if (openmp := os.environ.get("MOMATTN_SCAN_OPENMP", "1")) not in ("0", "1"):  # (false, off: OpenMP stayed on
        # without a word, where the README offers it against the fork hang; vanilla's bf16 attention backward on
        # an AMX CPU runs in the same library: found by reviews)
        return f"MOMATTN_SCAN_OPENMP={openmp!r} is not a setting; use 0 (the CPU kernel without OpenMP) or 1"
    if not kernel:
        return None
    if not on_cpu:  # read by the Triton scan at the first GPU step: said at start-up instead (found by review)
        try:
            triton_chunk_setting()
        except ValueError as e:
            return str(e)
    if SCAN_BACKEND == "cpu" and on_cpu and cpu_scan.load() is None:
        return ("MOMATTN_SCAN_BACKEND=cpu but the CPU scan kernel cannot be built (see the warning above); install a "
                "C++ compiler, or unset it (auto uses the matmul scans where the kernel does not build)")
    if SCAN_BACKEND == "triton" and (not torch.cuda.is_available() or _triton_scan() is None):
        return ("MOMATTN_SCAN_BACKEND=triton but the Triton scan cannot load: it needs a CUDA GPU, triton >= 3 and "
                "torch >= 2.4; unset it (auto)")
    if SCAN_BACKEND == "triton" and on_cpu and not _triton_interpret():  # (it passed here on a GPU machine running
        # on its CPU, then failed at the first forward with a traceback: flows review)
        return ("MOMATTN_SCAN_BACKEND=triton runs on CUDA (or with TRITON_INTERPRET=1); this run is on the CPU: "
                "unset it (auto)")
    return None


_SAID_CPU: set = set()  # what _use_cpu_kernel has warned of, once each


def _use_cpu_kernel(x: torch.Tensor) -> bool:
    """Whether the training paths (no states) scan x (B, T, C) with the CPU kernel (see SCAN_BACKEND)."""
    _check_backend()
    if SCAN_BACKEND not in ("auto", "cpu") or x.device.type != "cpu" or _is_compiling():
        return False
    if cpu_scan.supports(x):
        return True
    if SCAN_BACKEND == "cpu" and cpu_scan.load() is None:
        raise RuntimeError("momattn.ops.SCAN_BACKEND is 'cpu' but the CPU scan kernel cannot be built (see the "
                           "warning above); install a C++ compiler or use 'auto'")
    if SCAN_BACKEND == "cpu" and x.dtype not in cpu_scan.DTYPES and x.dtype not in _SAID_CPU:  # forced, not taken
        # (found by review: float16 took the matmul scans without a word)
        _SAID_CPU.add(x.dtype)
        warnings.warn(f"momattn.ops.SCAN_BACKEND is 'cpu', but the CPU scan kernel takes float32, bfloat16 and "
                      f"float64 values, not {x.dtype}: the matmul scans run these", stacklevel=3)
    return False


def _triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"  # (triton_scan.INTERPRET, without importing Triton)


def _use_triton(x: torch.Tensor, G: int) -> bool:
    """Whether _scan_merged runs the Triton kernel for x (B, T, C) in G groups (see SCAN_BACKEND)."""
    _check_backend()
    if SCAN_BACKEND in ("torch", "cpu") or x.dtype == torch.float64:
        return False
    # auto: the kernel on CUDA in eager mode only. On an H200 (gpt2_124m, batch 16, bf16; benchmarks/results/gpu.md)
    # a compiled training step took 37.6 ms with the matmul scan and 42.7 ms with the kernel; eager, 68.8 and 50.3
    if SCAN_BACKEND == "auto" and (not x.is_cuda or _is_compiling()):
        return False
    if not x.is_cuda and not _triton_interpret():  # (a direct call of the ops: Triton's own traceback, "0 active
        # drivers", where train.py says backend_problem's line at start-up; found by review)
        raise RuntimeError(f"MOMATTN_SCAN_BACKEND=triton runs on CUDA tensors (or with TRITON_INTERPRET=1); these are "
                           f"on {x.device}: unset it (auto)")
    kernel = _triton_scan()
    if kernel is None:
        if SCAN_BACKEND == "triton":
            raise ImportError("momattn.ops.SCAN_BACKEND is 'triton' but the Triton scan cannot load: it needs "
                              "triton >= 3 and torch >= 2.4 (pip install 'triton>=3')")
        return False
    return kernel.block_channels(x.shape[-1] // G) is not None  # else the matmul scan (any head size)


def _fuses_triton(x: torch.Tensor, a: torch.Tensor | None, add: torch.Tensor | None) -> bool:
    """Whether _momentum_merged scans x (B, T, C) by rates a (G,; None: one rate, not learned) with the Triton
    kernel adding `add` as it writes: the kernel's path (see _use_triton), fixed rates (a learned rate's gradient
    reads the sums alone), an addend of x's dtype or none."""
    G = 1 if a is None else a.shape[0]
    return (_use_triton(x, G) and not (a is not None and _needs_grad(a))
            and (add is None or add.dtype == x.dtype))


def _scan_merged_triton(x: torch.Tensor, a: torch.Tensor, strict: bool, reverse: bool) -> torch.Tensor:
    """_scan_merged by the Triton kernel (momattn/triton_scan.py): one launch, the decay powers formed in it."""
    return _triton_scan().decay_scan(x, a.float(), strict, reverse)


if torch.cuda.is_available() and SCAN_BACKEND != "torch":
    _triton_scan()  # look for Triton now, not inside a torch.compile trace


def _dot_groups(x: torch.Tensor, y: torch.Tensor, G: int) -> torch.Tensor:
    """sum over (b, t, channel in group) of x * y for x, y (B, T, C) in G channel groups: (G,).

    vecdot reduces each (position, group) row without forming the full-size product x * y: on CPU half the
    time of multiply-then-sum at the default model's shape."""
    B, T, C = x.shape
    dots = torch.linalg.vecdot(x.reshape(B, T, G, C // G), y.reshape(B, T, G, C // G))  # (B, T, G)
    return dots.sum((0, 1), dtype=torch.promote_types(dots.dtype, torch.float32))


# _MergedScan's rate gradient divides by a^2 when every rate is at least this (on CPU, where reading the rates
# costs no device sync): relative rounding of y and dx stays relative, and a^2 stays a normal float32
_RATE_DIVIDES = 2.0**-16


def _rates_divide(a: torch.Tensor) -> bool:
    """Whether _MergedScan may divide by a^2: every rate at least _RATE_DIVIDES, asked on CPU only (on a GPU the
    answer is a read-back, a wait for the device; the test of the GPU path turns this off to run it on a CPU)."""
    return a.device.type == "cpu" and not _is_compiling() and bool((a >= _RATE_DIVIDES).all())


class _MergedScan(torch.autograd.Function):
    """`_scan_merged` forward in time, with a backward that is the reverse scan of the gradient: nothing is
    saved for it when the rates need no gradient, and no matmul gradients are formed.

    The rates' gradient needs no matmul either: with s the inclusive state and u_j = sum_{t>=j} a^(t-j) g_t
    the reverse scan of the output gradient g, dL/da = sum_j <u_j, s_{j-1}>. For i <= t the output is s and
    u = dx; for i < t the output is a s_{j-1}, so s_{j-1} = x_{j-1} + y_{j-1} and u = dx + g. So it is one
    shifted dot product per head, with no division by a (exact for a = 0 and tiny a, and twice differentiable).
    For i < t and rates of at least _RATE_DIVIDES on CPU, s_{j-1} = y_j / a and u_j = dx_{j-1} / a turn it into
    a^-2 sum_j <dx_{j-1}, y_j>: the same value without forming the two full-size sums.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, a: torch.Tensor, strict: bool, chunk_size: int) -> torch.Tensor:
        ctx.fixed = not ctx.needs_input_grad[1]
        y = _scan_merged(x, a, strict, chunk_size, fixed=ctx.fixed)
        ctx.strict, ctx.chunk_size, ctx.x_dtype = strict, chunk_size, x.dtype
        if ctx.needs_input_grad[1]:  # the rates' gradient reads the output and the values
            ctx.save_for_backward(a, x, y)
        else:
            ctx.save_for_backward(a)
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        a, *rest = ctx.saved_tensors
        with _no_autocast(g.device):  # a backward run inside autocast would get bf16 matmuls
            dx = _scan_merged(g, a, ctx.strict, ctx.chunk_size, reverse=True, fixed=ctx.fixed)  # g's dtype
            da = None
            if ctx.needs_input_grad[1]:
                x, y = rest
                G = a.shape[0]
                if ctx.strict and _rates_divide(a):
                    # y_j = a s_{j-1} and dx_{j-1} = a u_j: one dot product of tensors at hand, no full-size sums
                    da = _dot_groups(dx[:, :-1], y[:, 1:], G) / (a * a)
                elif ctx.strict:  # u = dx + g, s_{j-1} = x_{j-1} + y_{j-1}
                    da = _dot_groups((dx + g)[:, 1:], (x + y)[:, :-1], G)
                else:  # u = dx, s_{j-1} = y_{j-1}
                    da = _dot_groups(dx[:, 1:], y[:, :-1], G)
        return dx.to(ctx.x_dtype), da, None, None


def _momentum_short(
    v: torch.Tensor, a: torch.Tensor, include_current: bool, s0: torch.Tensor | None, output_final_state: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """momentum_ema for T <= 1 (a decoding step): out = a s0 (+ v), final = a s0 + v."""
    B, H, T, D = v.shape
    if T == 0:
        s = s0 if s0 is not None else v.new_zeros(B, H, D, dtype=a.dtype)
        return v.clone(), (s if output_final_state else None)
    x = v.to(a.dtype)[:, :, 0]  # (B, H, D)
    decayed = None if s0 is None else a[:, None] * s0  # (B, H, D)
    s = x if decayed is None else decayed + x
    out = s if include_current else (decayed if decayed is not None else x * 0)  # 0, still on the graph
    return out[:, :, None].to(v.dtype), (s if output_final_state else None)


# -----------------------------------------------------------------------------
# the authors' code: a multi-rate damped EMA per channel (MEGA-style), current token included


def _check_multirate(fn: str, v: torch.Tensor, p: torch.Tensor, gamma: torch.Tensor) -> None:
    if not isinstance(v, torch.Tensor) or v.dim() != 3:
        shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise ValueError(f"{fn}: v must be a 3-D tensor (B, T, C), got shape {shape}")
    if not v.is_floating_point():
        raise ValueError(f"{fn}: v must be a floating-point tensor, got dtype {v.dtype}")
    C = v.shape[-1]
    if not isinstance(p, torch.Tensor) or p.dim() != 2 or p.shape[0] != C:
        shape = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
        raise ValueError(f"{fn}: p must be a (C, R) tensor with C={C} (v's channels), got shape {shape}")
    if p.shape[1] < 1:  # no rate: zeros without a word (found by review)
        raise ValueError(f"{fn}: p has no rates (shape {tuple(p.shape)}); give each channel R >= 1 of them")
    if not isinstance(gamma, torch.Tensor) or gamma.shape != p.shape:
        shape = tuple(gamma.shape) if isinstance(gamma, torch.Tensor) else type(gamma).__name__
        raise ValueError(f"{fn}: gamma must have p's shape {tuple(p.shape)}, got shape {shape}")


def multirate_ema(
    v: torch.Tensor,
    p: torch.Tensor,
    gamma: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 32,  # fastest on CPU at T = 256 (16, 32, 64, 128 compared), tied with 64 at T = 1024
    *,
    check_rates: bool = True,
    add: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Multi-rate damped EMA per channel (the authors' "rot-momentum" code), current token included.

        y[b, t, c] = sum_r gamma[c, r] sum_{i<=t} p[c, r]^(t-i) v[b, i, c]

    i.e. a causal convolution with kernel k[c, l] = sum_r gamma[c, r] p[c, r]^l. v: (B, T, C),
    p: (C, R) rates in [0, 1), gamma: (C, R) any real. initial_state: (B, C, R), the per-rate inclusive
    states s[b, c, r] = sum_{i<=-1} p^(-1-i) v_i of a prefix, which add sum_r gamma p^(t+1) s at position t.
    Returns (out, final_state): out (B, T, C) in v's dtype, accumulated in float32 (without states, bf16 v
    takes bf16 chunk matmuls, see the module docstring); final_state (B, C, R)
    after position T-1, in float32 (float64 for float64 v), or None unless output_final_state.
    O(T) time and memory; no (B, T, C, R) tensor is formed (per-rate states exist only at chunk ends,
    (B, T/c, C, R)). p's range is not re-checked on a one-token step that continues a state, nor at all with
    check_rates=False (rates valid by construction, e.g. a sigmoid: the check would wait for a GPU). add: (B, T, C),
    or (B, H, T, D) heads (an attention output, merged as it is added), or None: added to out, as momentum_ema's
    (the CPU kernel adds it as it writes).
    """
    fn = "multirate_ema"
    _check_multirate(fn, v, p, gamma)
    _check_add(fn, add, v)
    _check_chunk(fn, chunk_size)
    B, T, C = v.shape
    R = p.shape[1]
    _check_state(fn, initial_state, (B, C, R), "B, C, R")
    if check_rates and not (T == 1 and initial_state is not None):
        _check_rates(fn, "p", p)
    acc = _acc_dtype(v.dtype)
    with _no_autocast(v.device):
        p, gamma = p.to(v.device, acc), gamma.to(v.device, acc)
        s0 = None if initial_state is None else initial_state.to(v.device, acc)  # (B, C, R)
        if T <= 1:
            out, final = _multirate_short(v, p, gamma, s0, output_final_state)
            return _plus(out, add), final
        if s0 is None and not output_final_state and v.numel() and not _is_compiling():  # training: custom backward
            if _use_cpu_kernel(v):  # one pass through time in this layout (momattn/cpu_scan.py)
                fused, add = _split_add(add, v)
                y = cpu_scan.ema(v, p.t(), gamma.t(), False, lambda xs, ps, gs: multirate_ema(
                    xs, ps.t(), gs.t(), None, True, chunk_size, check_rates=False)[0], fused)
                return _plus(y, add), None
            return _plus(_MultiRateScan.apply(v, p, gamma, chunk_size, _bf16_training(v)), add), None
        if _use_cpu_kernel(v) and not _needs_grad(v, p, gamma, s0, add):  # evaluation with a cache: the kernel
            fused, add = _split_add(add, v)
            y, final = cpu_scan.ema_with_states(v, p.t(), gamma.t(), False, s0, output_final_state, fused)
            return _plus(y, add), final
        c = min(chunk_size, T)
        n = -(-T // c)  # number of chunks
        # contiguous: a state shared by a batch (cache.expand) has stride 0 in B, which would make the batched
        # matmuls below fall back to one small matmul per channel
        init = None if s0 is None else s0.permute(1, 2, 0).reshape(C * R, B).contiguous()  # (C*R, B)
        y, X, _, prev = _multirate_chunks(v, p, gamma, chunk_size, init)  # y (B, T_padded, C)
        final = None
        if output_final_state:
            j = T - 1 - (n - 1) * c  # the last real position inside the last chunk
            x_last = X.view(C, B, n, c)[:, :, n - 1]  # (C, B, c)
            w = _powers(p, j - torch.arange(c, device=v.device)).transpose(1, 2)  # (C, c, R) p^(j-i)
            a_into = _powers(p, torch.full((), j + 1, device=v.device))[:, None]  # (C, 1, R); full: no host-to-device copy
            last_prev = (
                None if prev is None else prev[..., n - 1].reshape(C, R, B).transpose(1, 2)
            )  # (C, B, R)
            final = _last_state(x_last, w, a_into, last_prev).transpose(0, 1)  # (B, C, R)
    return _plus(y if n * c == T else y[:, :T], add), final


def _multirate_chunks(
    v: torch.Tensor, p: torch.Tensor, gamma: torch.Tensor, chunk_size: int, init: torch.Tensor | None,
    compute: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The chunked scan of multirate_ema (both paths): v (B, T, C), p and gamma (C, R) in the accumulation dtype,
    chunks of c = min(chunk_size, T), init (C*R, B) the per-rate states of a prefix or None. Returns (y, X, MT,
    prev): y (B, n*c, C)
    in v's dtype (zero-padded tail), X (C, B*n, c) the values channels first, MT (C, c, c) the transposed Toeplitz
    block of the kernel, prev (C*R, B, n) the per-rate state entering each chunk (None when nothing is carried).

    compute: the dtype of the full-size work (X, MT and the chunk matmuls; default the accumulation dtype). The
    training path passes bfloat16 for bf16 values on CPU, as momentum_ema does: bf16 matmuls accumulate in float32
    there and round their results, the per-rate states carried between chunks (prev) stay in the accumulation
    dtype.
    """
    acc = p.dtype
    cd = compute or acc
    B, T, C = v.shape
    R = p.shape[1]
    c = min(chunk_size, T)
    n = -(-T // c)  # number of chunks
    P = _powers(p, torch.arange(c + 1, device=v.device))  # (C, R, c+1) p^l for l = 0..c
    kernel = (gamma[:, :, None] * P[..., :c]).sum(1)  # (C, c) sum_r gamma p^l for lags l < c
    # transposed causal Toeplitz block, MT[i, j] = kernel[j - i] for j >= i, else 0: window s of the
    # kernel with c-1 zeros in front is [0]*(c-1-s) + kernel[:s+1], i.e. row c-1-s of MT
    MT = F.pad(kernel, (c - 1, 0)).unfold(1, c, 1).flip(1)  # (C, c, c)
    x = v if n * c == T else F.pad(v, (0, 0, 0, n * c - T))  # zero tail: does not touch earlier t
    # channels to the front with one 2-D transpose: (B*n*c, C) -> (C, B*n*c), time last
    MT = MT.to(cd)
    X = _layout_copy(x.reshape(B * n * c, C), (1, 0), cd).view(C, B * n, c)
    Y = torch.bmm(X, MT)  # (C, B*n, c) contribution from inside each chunk
    prev = None  # (C*R, B, n) per-rate state entering each chunk
    if n > 1:
        # per-rate state each chunk leaves behind, carried across chunks with rate p^c
        e = torch.bmm(P[..., :c].flip(-1).to(cd), X.transpose(1, 2))  # (C, R, B*n) sum_i p^(c-1-i) x_i
        prev = _carry(e.view(C * R, B, n).to(acc), p.reshape(C * R), c, chunk_size, init)
    elif init is not None:
        prev = init[..., None]  # (C*R, B, 1)
    if prev is not None:
        into = gamma[:, :, None] * P[..., 1:]  # (C, R, c) gamma p^(j+1)
        # in place (bmm saved X and MT, not Y): no full-size copy of Y
        Y.baddbmm_(prev.reshape(C, R, B * n).transpose(1, 2).to(cd), into.to(cd))
    y = _layout_copy(Y.view(C, B * n * c), (1, 0), v.dtype).view(B, n * c, C)
    return y, X, MT, prev


def _toeplitz_diag_sums(M: torch.Tensor) -> torch.Tensor:
    """d[..., l] = sum_i M[..., i, i + l] for M (G, c, c): the adjoint of building a transposed Toeplitz block
    MT[i, j] = k[j - i] (j >= i) from a kernel k (G, c). The diagonals become columns of a skewed view."""
    G, c, _ = M.shape
    M2 = F.pad(M, (0, c))  # (G, c, 2c), contiguous: M2[g, i, i + l] sits at g*2c^2 + i*(2c+1) + l
    return torch.as_strided(M2, (G, c, c), (2 * c * c, 2 * c + 1, 1)).sum(1)  # (G, c)


class _MultiRateScan(torch.autograd.Function):
    """multirate_ema without states (training), with a hand-written backward.

    Forward is the chunked scan of multirate_ema: X (C, B*n, c) the values, channels first; Y = X @ MT, MT the
    (c x c) transposed Toeplitz block of the kernel k[l] = sum_r gamma_r p_r^l; the per-rate chunk ends
    e = Pf @ X^T (Pf[r, i] = p_r^(c-1-i)) carried across chunks with rate p^c (prev, the state entering each
    chunk) and added as Y += prev^T @ into (into[r, j] = gamma_r p_r^(j+1)).

    Backward takes the adjoint of each step: dX = dY @ MT^T + d_e^T @ Pf; the kernel's gradient is the
    diagonal sums of X^T dY; the carry's adjoint is the same carry run backward over the chunks,
    d_e_j = sum_{m>j} (p^c)^(m-1-j) d_prev_m, and its rate's gradient the dot product <d_e, prev>; p and gamma
    then get their gradients in closed form from d(p^l)/dp = l p^(l-1), on (C, R, c)-sized tensors. Autograd
    through the same steps formed the Toeplitz block's and the chunk views' gradients (flip, unfold, pad
    backward) and took about twice as long as this (benchmarks/bench_attention.py, part layer). A second
    derivative (backward with create_graph) recomputes through autograd, which is why v itself is saved (a
    view keeps its base alive, and modifying v in place before backward is an error, as for most ops); forward-
    mode AD (jvp) is not implemented here: multirate_ema(..., output_final_state=True) takes the autograd path.
    """

    @staticmethod
    def forward(ctx, v: torch.Tensor, p: torch.Tensor, gamma: torch.Tensor, chunk_size: int, bf16: bool
                ) -> torch.Tensor:
        T = v.shape[1]
        # bf16 values in training on CPU: bf16 chunk matmuls (see _multirate_chunks); the states stay float32
        cd = torch.bfloat16 if bf16 else None
        y, X, MT, prev = _multirate_chunks(v, p, gamma, chunk_size, None, cd)  # grad is off here: plain copies
        ctx.chunk_size = chunk_size
        ctx.save_for_backward(v, p, gamma, X, MT, prev)
        return y if y.shape[1] == T else y[:, :T]

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        v, p, gamma, X, MT, prev = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: X and the rest were formed without a graph; recompute
            # through autograd, from the saved inputs, so the graph reaches them (asking for the final state
            # takes the autograd path)
            y = multirate_ema(v, p, gamma, None, True, ctx.chunk_size, check_rates=False)[0]
            want = [t for t, need in zip((v, p, gamma), ctx.needs_input_grad) if need]
            grads = iter(torch.autograd.grad(y, want, gy, create_graph=True))
            return (*(next(grads) if need else None for need in ctx.needs_input_grad[:3]), None, None)
        B, T, C = v.shape
        R = p.shape[1]
        c = MT.shape[-1]
        n = -(-T // c)  # number of chunks
        acc = p.dtype
        with _no_autocast(gy.device):
            cd = X.dtype  # the chunk matmuls' dtype (bf16 for bf16 values), see forward
            g = gy if n * c == T else F.pad(gy, (0, 0, 0, n * c - T))
            dY = _copy_permuted(g.reshape(B * n * c, C), (1, 0), cd).view(C, B * n, c)
            dX = torch.bmm(dY, MT.transpose(1, 2))  # (C, B*n, c)
            rates = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]  # else only dv is formed
            lags = torch.arange(c + 1, device=v.device)
            Pw = _powers(p, lags)  # (C, R, c+1) p^l
            Dw = lags * _powers(p, lags - 1)  # (C, R, c+1) d(p^l)/dp = l p^(l-1) (0 at l = 0)
            dPw = torch.zeros_like(Pw)  # (C, R, c+1) the gradient of every power p^l
            dgamma = torch.zeros_like(gamma)  # (C, R)
            if rates:
                dkernel = _toeplitz_diag_sums(torch.bmm(X.transpose(1, 2), dY).to(acc))  # (C, c)
                dgamma += (dkernel[:, None, :] * Pw[..., :c]).sum(-1)
                dPw[..., :c] += gamma[:, :, None] * dkernel[:, None, :]
            if prev is not None:
                if rates:
                    d_into = torch.bmm(prev.view(C, R, B * n).to(cd), dY).to(acc)  # (C, R, c)
                    dgamma += (d_into * Pw[..., 1:]).sum(-1)
                    dPw[..., 1:] += gamma[:, :, None] * d_into
                into = gamma[:, :, None] * Pw[..., 1:]  # (C, R, c)
                d_prev = torch.bmm(dY, into.transpose(1, 2).to(cd)).transpose(1, 2).reshape(C * R, B, n).to(acc)
                # the carry's adjoint: the same carry backward over the chunks; then its rate p^c's gradient
                d_e = _carry(d_prev.flip(-1), p.reshape(-1), c, ctx.chunk_size).flip(-1)  # (C*R, B, n)
                d_e3 = d_e.view(C, R, B * n)
                dX.baddbmm_(d_e3.transpose(1, 2).to(cd), Pw[..., :c].flip(-1).to(cd))  # + d_e^T Pf
                if rates:
                    dPw[..., c] += (d_e * prev).sum((1, 2)).view(C, R)
                    dPw[..., :c] += torch.bmm(d_e3.to(cd), X).to(acc).flip(-1)  # d Pf, back in power order
            dp = (dPw * Dw).sum(-1)  # (C, R)
            dv = _copy_permuted(dX.view(C, B * n * c), (1, 0), v.dtype).view(B, n * c, C)
        return (dv if n * c == T else dv[:, :T]), dp, dgamma, None, None


def _multirate_short(
    v: torch.Tensor, p: torch.Tensor, gamma: torch.Tensor, s0: torch.Tensor | None, output_final_state: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """multirate_ema for T <= 1 (a decoding step): s = p s0 + v per rate, out = sum_r gamma s."""
    B, T, C = v.shape
    if T == 0:
        s = s0 if s0 is not None else v.new_zeros(B, *p.shape, dtype=p.dtype)
        return v.clone(), (s if output_final_state else None)
    x = v.to(p.dtype)[:, 0, :, None]  # (B, C, 1)
    s = x.expand(B, *p.shape) if s0 is None else p * s0 + x  # (B, C, R)
    out = (gamma * s).sum(-1)[:, None, :]  # (B, 1, C)
    return out.to(v.dtype), (s.contiguous() if output_final_state else None)
