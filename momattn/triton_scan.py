"""The momentum scan as one Triton kernel, for CUDA (issue 11: the momentum term must not be the bottleneck).

`decay_scan(x, a, strict, reverse)` computes what `ops._scan_merged` computes: for x (B, T, C) in G channel
groups with one rate a_g each,

    forward: y_t = sum_{i<=t} a^(t-i) x_i   (i < t if strict)
    reverse: y_t = sum_{i>=t} a^(i-t) x_i   (i > t if strict; the adjoint, for the backward)

One program per (sequence, block of BD channels of one group) walks time in blocks of BT positions: the scan
inside a block is one (BT x BT) @ (BT x BD) product with the group's decay matrix, plus the state carried from
the previous block times a^(j+1) (reverse: a^(BT-j)). float32 values take an IEEE float32 dot; bf16 values, exact
in bf16, take three tensor-core dots with the decay matrix split into three bf16 parts (24 significant bits, as
float32's), summed in float32. The decay powers are formed in the kernel as exp2(k log2 a) for 0 < k <= BT
(exactly 1 at k = 0 and 0 for a = 0), so a call is one launch with no small tensors built around it. Where that
leaves too few programs for the GPU (few sequences: each program's blocks wait on each other), time is cut into
chunks (`chunk_length`): a first launch finds every chunk's edge state from zero, and the scan then runs every
chunk at once from the state entering it (the earlier chunks' edge states, decayed). x is read in place in any
layout and float dtype (the strided bf16 view of the qkv projection too); sums are float32, and so is the output,
or x's dtype (`keep_dtype`, rounded once), with an addend (attention's output) added as it is written.

`ema` is the model's path with a fixed rate (ops.momentum_ema on CUDA): forward, one launch reads the values
and attention's output and writes their sum in the values' dtype; backward, one launch reads the output's
gradient and writes the values' gradient, joined with attention's (cpu_scan.link_values) where it is linked.
On CUDA the block sizes are autotuned once per head size; `TRITON_INTERPRET=1` runs the same kernel, untuned, on
CPU tensors (tests/test_triton_scan.py), with two of the interpreter's gaps filled (bf16 dots, and rounding to
bf16, which it truncates).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from momattn import cpu_scan
from momattn.ops import TRITON_CHUNK_UNIT, triton_chunk_setting

if int(triton.__version__.split(".")[0]) < 3 or not hasattr(torch.library, "custom_op"):
    # tl.dot(input_precision=...) needs Triton 3; torch.library.custom_op (torch >= 2.4) keeps torch.compile
    # from tracing into the autotuner. ops.py treats this like a missing Triton and uses the matmul scan.
    raise ImportError(f"momattn's Triton scan needs triton >= 3 and torch >= 2.4 (found triton {triton.__version__}, "
                      f"torch {torch.__version__})")

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # read once: Triton itself reads it at decoration


@triton.jit
def _decay(la, k):
    """a^k for integer k (any shape) from la = log2(a): 1 at k == 0, 0 for k < 0 (and for a == 0, k > 0)."""
    kf = k.to(tl.float32)
    return tl.where(k == 0, 1.0, tl.where(k > 0, tl.exp2(tl.maximum(kf, 1.0) * la), 0.0))


@triton.jit
def _rounded(v, ty: tl.constexpr, INTERPRET: tl.constexpr):
    """float32 v in dtype ty, rounded to nearest even as a GPU converts; the interpreter truncates to bfloat16,
    so there the rounding is done on the bits first (the tests' bf16 outputs are then the GPU's)."""
    if INTERPRET and ty == tl.bfloat16:
        u = v.to(tl.uint32, bitcast=True)
        v = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
    return v.to(ty)


@triton.jit
def _scan_block(X, Y, ADD, Lg, Lg_mid, Lg_lo, pw, carry, t0, b, cols, acols, T, sxb, sxt, sxc, syb, syt, syc, sab, sat,
                STRICT: tl.constexpr, REVERSE: tl.constexpr, HAS_ADD: tl.constexpr, BT: tl.constexpr,
                INTERPRET: tl.constexpr):
    """The block of BT positions from t0: y = Lg @ x + pw * carry (bf16 x: (Lg + Lg_mid + Lg_lo) @ x; plus the addend's
    block: HAS_ADD, its columns' offsets acols), stored in Y's dtype; returns the inclusive state carried on to the next block (reverse: the
    state at t0, else at t0 + BT - 1)."""
    r = tl.arange(0, BT)
    t = t0 + r  # (BT,)
    mask = (t < T)[:, None]
    b64, t64 = b.to(tl.int64), t.to(tl.int64)[:, None]  # 64-bit offsets: a qkv view can span > 2^31 elements
    c64 = cols.to(tl.int64)[None, :]
    xv = tl.load(X + b64 * sxb + t64 * sxt + c64 * sxc, mask=mask, other=0.0)
    x = xv.to(tl.float32)
    if INTERPRET and X.dtype.element_ty == tl.bfloat16:  # the interpreter multiplies bf16 bits as integers: the
        # same products in float32, where they are exact (INTERPRET first: before Triton 3.4 a dtype comparison is a
        # Python bool, which a compiled `and` cannot take as its left side)
        y = tl.dot(Lg.to(tl.float32), x, input_precision="ieee")
        y = tl.dot(Lg_mid.to(tl.float32), x, acc=y, input_precision="ieee")
        y = tl.dot(Lg_lo.to(tl.float32), x, acc=y, input_precision="ieee")
    elif X.dtype.element_ty == tl.bfloat16:  # three tensor-core dots, the decay's bf16 parts (see the kernel)
        y = tl.dot(Lg_lo, xv, acc=tl.dot(Lg_mid, xv, acc=tl.dot(Lg, xv, out_dtype=tl.float32)))
    else:
        y = tl.dot(Lg, x, input_precision="ieee")
    y += pw[:, None] * carry[None, :]  # (BT, BD)
    out = y
    if HAS_ADD:  # summed in float32 before the one rounding to Y's dtype
        out = y + tl.load(ADD + b64 * sab + t64 * sat + acols[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + b64 * syb + t64 * syt + c64 * syc, _rounded(out, Y.dtype.element_ty, INTERPRET), mask=mask)
    if STRICT:  # the inclusive state at each position
        y = y + x
    if REVERSE:  # the position whose state enters the next block
        edge = 0
    else:
        edge = BT - 1
    return tl.sum(tl.where(r[:, None] == edge, y, 0.0), axis=0)


@triton.jit
def _block_start(m, TP, REVERSE: tl.constexpr, BT: tl.constexpr):
    """The first position of the m-th block in scan order; reverse scans run from the padded end TP down."""
    if REVERSE:
        return TP - (m + 1) * BT
    else:
        return m * BT


@triton.jit
def _chunk_blocks(k, CH, T, TP, REVERSE: tl.constexpr, BT: tl.constexpr):
    """The range of block indices (scan order) of chunk k, less the blocks wholly past T (forward: the last
    chunk's tail; reverse: the padded first chunk's start), whose values are all zero."""
    m, m_end = k * (CH // BT), (k + 1) * (CH // BT)
    if REVERSE:
        m = tl.maximum(m, (TP - T) // BT)
    else:
        m_end = tl.minimum(m_end, tl.cdiv(T, BT))
    return m, m_end


@triton.jit
def _block_state(X, state, w, a_bt, t0, b64, cols, T, sxb, sxt, sxc, BT: tl.constexpr):
    """The state at a block's far edge: the state at the near edge's neighbour decayed across the block (a^BT),
    plus the block's values weighted by their distance to the edge (w)."""
    t = t0 + tl.arange(0, BT)
    x = tl.load(X + b64 * sxb + t.to(tl.int64)[:, None] * sxt + cols.to(tl.int64)[None, :] * sxc, mask=(t < T)[:, None],
                other=0.0).to(tl.float32)
    return a_bt * state + tl.sum(w[:, None] * x, axis=0)


@triton.jit
def _chunk_state_kernel(X, E, A, T, CH, Dg, sxb, sxt, sxc, seb, sek,
                        REVERSE: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, INTERPRET: tl.constexpr):
    """E[b, k]: the inclusive state at the far edge of chunk k (CH positions; k counted in scan order) when the
    chunk is scanned from a zero state: the first pass of the chunked scan, all chunks at once."""
    b = tl.program_id(0)
    c0 = tl.program_id(1) * BD
    k = tl.program_id(2)
    cols = c0 + tl.arange(0, BD)
    r = tl.arange(0, BT)
    la = tl.log2(tl.load(A + c0 // Dg).to(tl.float32))
    if REVERSE:  # weight of each row toward the block's edge: a^(distance)
        w = _decay(la, r)
    else:
        w = _decay(la, BT - 1 - r)
    a_bt = tl.exp2(la * BT)  # a^BT: the state carried across a whole block
    TP = tl.cdiv(T, CH) * CH
    b64 = b.to(tl.int64)
    state = tl.zeros((BD,), dtype=tl.float32)
    m, m_end = _chunk_blocks(k, CH, T, TP, REVERSE, BT)
    if INTERPRET:  # a while loop: the interpreter cannot loop over a runtime range
        while m < m_end:
            state = _block_state(X, state, w, a_bt, _block_start(m, TP, REVERSE, BT), b64, cols, T, sxb, sxt, sxc, BT)
            m += 1
    else:  # a for loop: the compiler pipelines the next block's loads
        for mm in range(m, m_end):
            state = _block_state(X, state, w, a_bt, _block_start(mm, TP, REVERSE, BT), b64, cols, T, sxb, sxt, sxc,
                                 BT)
    tl.store(E + b64 * seb + k * sek + cols, state)


@triton.jit
def _scan_kernel(X, Y, A, E, ADD, T, CH, Dg, sxb, sxt, sxc, syb, syt, syc, seb, sek, sab, sat, sah, sac, DH,
                 STRICT: tl.constexpr, REVERSE: tl.constexpr, CHUNKED: tl.constexpr, HAS_ADD: tl.constexpr,
                 BT: tl.constexpr, BD: tl.constexpr, INTERPRET: tl.constexpr):
    """One program per (sequence, BD channels[, chunk]): the blocks of its chunk (CHUNKED: CH positions, the
    state entering it summed from the first pass's E; else the whole sequence, from a zero state) in scan order.
    HAS_ADD: ADD's channel c (heads of DH channels, head stride sah, channel stride sac) is added to the output."""
    b = tl.program_id(0)
    c0 = tl.program_id(1) * BD
    g = c0 // Dg  # the group (head) of this block of channels: BD divides Dg
    cols = c0 + tl.arange(0, BD)  # (BD,)
    acols = (cols // DH).to(tl.int64) * sah + (cols % DH).to(tl.int64) * sac  # (BD,) the addend's columns
    r = tl.arange(0, BT)
    la = tl.log2(tl.load(A + g).to(tl.float32))  # -inf for a == 0
    if REVERSE:  # (BT, BT) decay matrix [j, i] = a^(i-j) on/above the diagonal; carried state: a^(BT-j)
        lag = r[None, :] - r[:, None]
        pw = _decay(la, BT - r)
    else:  # [j, i] = a^(j-i) on/below the diagonal; carried state: a^(j+1)
        lag = r[:, None] - r[None, :]
        pw = _decay(la, r + 1)
    if STRICT:
        lag = tl.where(lag == 0, -1, lag)  # the diagonal off: sums over i != t
    Lg = _decay(la, lag)
    if X.dtype.element_ty == tl.bfloat16:
        # bf16 values are exact in bf16: the decay matrix as three bf16 parts, Lg + Lg_mid + Lg_lo to float32's 24
        # significant bits, makes the block's product three tensor-core dots (products exact, sums float32) instead
        # of an IEEE float32 dot on the CUDA cores
        hi = Lg.to(tl.bfloat16)
        rest = Lg - hi.to(tl.float32)
        Lg_mid = rest.to(tl.bfloat16)
        Lg_lo = (rest - Lg_mid.to(tl.float32)).to(tl.bfloat16)
        Lg = hi
    else:
        Lg_mid, Lg_lo = Lg, Lg  # unread
    carry = tl.zeros((BD,), dtype=tl.float32)  # the inclusive state before (reverse: after) the block
    if CHUNKED:
        k = tl.program_id(2)
        TP = tl.cdiv(T, CH) * CH
        a_ch = tl.exp2(la * CH)  # a^CH: the state carried across a whole chunk
        # the state entering chunk k: the earlier chunks' edge states, each decayed across the chunks after it
        if INTERPRET:
            j = 0
            while j < k:
                carry = a_ch * carry + tl.load(E + b.to(tl.int64) * seb + j * sek + cols)
                j += 1
        else:
            for j in range(0, k):
                carry = a_ch * carry + tl.load(E + b.to(tl.int64) * seb + j * sek + cols)
        m, m_end = _chunk_blocks(k, CH, T, TP, REVERSE, BT)
    else:
        TP = tl.cdiv(T, BT) * BT
        m, m_end = 0, TP // BT
    if INTERPRET:  # the CPU interpreter cannot loop over a runtime range (numpy 2): the blocks, in order
        while m < m_end:
            carry = _scan_block(X, Y, ADD, Lg, Lg_mid, Lg_lo, pw, carry, _block_start(m, TP, REVERSE, BT), b, cols, acols, T, sxb,
                                sxt, sxc, syb, syt, syc, sab, sat, STRICT, REVERSE, HAS_ADD, BT, INTERPRET)
            m += 1
    else:  # a for loop: the compiler pipelines the next block's loads
        for mm in range(m, m_end):
            carry = _scan_block(X, Y, ADD, Lg, Lg_mid, Lg_lo, pw, carry, _block_start(mm, TP, REVERSE, BT), b, cols, acols, T, sxb,
                                sxt, sxc, syb, syt, syc, sab, sat, STRICT, REVERSE, HAS_ADD, BT, INTERPRET)


def _fits(configs, named_args, **kwargs):
    """Autotune only the channel blocks that divide a group's channels (and, chunked, the blocks that tile a chunk)."""
    ch = named_args["CH"]
    return [c for c in configs if named_args["Dg"] % c.kwargs["BD"] == 0 and (ch == 0 or ch % c.kwargs["BT"] == 0)]


# tuned once per head size and scan shape (the first call's length stands for all: ICL prompts of every length
# reuse it). (16, 64, 2) and (64, 64, 4): wider rows per load, for the tensor-core dots of bf16 values (session 34)
_tuned = triton.autotune(
    configs=[triton.Config({"BT": bt, "BD": bd}, num_warps=w)
             for bt, bd, w in [(16, 16, 1), (32, 16, 1), (32, 16, 2), (32, 32, 2), (32, 32, 4), (32, 64, 4),
                               (64, 16, 2), (64, 32, 4), (16, 64, 2), (64, 64, 4)]],
    key=["Dg", "CHUNKED", "HAS_ADD"], prune_configs_by={"early_config_prune": _fits},
)(_scan_kernel)
_tuned_state = triton.autotune(
    configs=[triton.Config({"BT": bt, "BD": bd}, num_warps=w)
             for bt, bd, w in [(32, 16, 1), (64, 16, 2), (64, 32, 2), (64, 64, 4)]],
    key=["Dg"], prune_configs_by={"early_config_prune": _fits},
)(_chunk_state_kernel)

PROGRAMS_PER_SM = 32  # chunk a scan when (sequences x 16-channel blocks) would leave fewer programs than this per SM


def block_channels(channels_per_group: int) -> int | None:
    """The smallest channel block (16) if it divides a group's channels, else None: no kernel for this size."""
    return 16 if channels_per_group % 16 == 0 else None


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def chunk_length(B: int, T: int, C: int, device: torch.device) -> int:
    """Positions per chunk for a scan of x (B, T, C), or 0: one program walks the whole sequence.

    One program per (sequence, 16 channels) walks time block after block, each block's state waiting on the last:
    with few sequences (gpt2_124m: 16 x 48 programs for 132 SMs) most of the GPU idles. Chunked, a first pass
    finds each chunk's edge state (all chunks at once) and the second scans every chunk from the state entering
    it: T / CH times the programs for one more read of x. MOMATTN_TRITON_CHUNK sets the length (0: never chunk)."""
    if (ch := triton_chunk_setting()) is not None:
        return ch if 0 < ch < T else 0
    if device.type != "cuda":
        return 0
    programs = B * (C // 16)
    if programs == 0:  # an empty batch: nothing to scan, nothing to chunk
        return 0
    want = PROGRAMS_PER_SM * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    n = min(-(-want // programs), T // TRITON_CHUNK_UNIT)  # chunks, each at least TRITON_CHUNK_UNIT positions
    if n < 3:  # a chunk's positions are walked twice in a row (its edge state, then its scan): no gain below 3
        return 0
    ch = -(-T // n)
    ch = -(-ch // TRITON_CHUNK_UNIT) * TRITON_CHUNK_UNIT  # rounded up to a multiple of every block length
    return ch if -(-T // ch) >= 3 else 0


def _launch(plain, tuned, B: int, C: int, programs: int, *args, **constexprs) -> None:
    """One launch over (sequence, block of channels, `programs`): in the interpreter the plain kernel with blocks of
    32 positions x 16 channels, on a GPU the autotuned one."""
    if INTERPRET:
        plain[(B, C // 16, programs)](*args, BT=32, BD=16, INTERPRET=True, **constexprs)
    else:
        tuned[lambda meta: (B, C // meta["BD"], programs)](*args, INTERPRET=False, **constexprs)


def _add_layout(add: torch.Tensor | None, C: int) -> tuple[int, int, int, int, int]:
    """Strides (batch, time, head, channel) and head size of an addend: (B, T, C), or (B, H, T, D) heads (as
    attention returns them, H * D = C); zeros for none."""
    if add is None:
        return 0, 0, 0, 0, C
    if add.dim() == 3:
        return add.stride(0), add.stride(1), 0, add.stride(2), C
    return add.stride(0), add.stride(2), add.stride(1), add.stride(3), add.shape[3]


def _decay_scan(x: torch.Tensor, a: torch.Tensor, strict: bool, reverse: bool, add: torch.Tensor | None = None,
                keep_dtype: bool = False) -> torch.Tensor:
    B, T, C = x.shape
    G = a.shape[0]
    y = torch.empty((B, T, C), dtype=x.dtype if keep_dtype else torch.float32, device=x.device)
    a = a.contiguous()
    ch = chunk_length(B, T, C, x.device)
    n = -(-T // ch) if ch else 1
    # the edge states of every chunk but the last (which no chunk follows); unread when not chunked
    e = torch.empty((B, n - 1, C), dtype=torch.float32, device=x.device) if ch else y
    if ch:
        _launch(_chunk_state_kernel, _tuned_state, B, C, n - 1, x, e, a, T, ch, C // G, *x.stride(), e.stride(0),
                e.stride(1), REVERSE=reverse)
    _launch(_scan_kernel, _tuned, B, C, n, x, y, a, e, add if add is not None else y, T, ch, C // G, *x.stride(),
            *y.stride(), e.stride(0), e.stride(1) if ch else 0, *_add_layout(add, C), STRICT=strict, REVERSE=reverse,
            CHUNKED=bool(ch), HAS_ADD=add is not None)
    return y


# one opaque op, so torch.compile neither traces into Triton nor breaks its graph around the launch. It has no
# autograd formula: ops._MergedScan and _Scan below call it only with grad mode off (their forward; a backward
# without create_graph). Eager calls skip its dispatch (about 30 us of Python per call, two per layer and step)
_decay_scan_op = torch.library.custom_op("momattn::decay_scan", mutates_args=())(_decay_scan)


@_decay_scan_op.register_fake
def _(x, a, strict, reverse, add=None, keep_dtype=False):
    return x.new_empty(x.shape, dtype=x.dtype if keep_dtype else torch.float32)


def decay_scan(x: torch.Tensor, a: torch.Tensor, strict: bool, reverse: bool, add: torch.Tensor | None = None,
               keep_dtype: bool = False) -> torch.Tensor:
    """x (B, T, C), any strides and float dtype; a (G,) float32, the rates, one per group of C // G channels
    (C // G a multiple of 16). Returns y (B, T, C), contiguous: float32, or x's dtype with `keep_dtype` (summed in
    float32, rounded once). add: None, or (B, T, C) or (B, H, T, D) heads with H * D = C (any strides and float
    dtype), added to the sums in float32 as they are written."""
    scan = _decay_scan_op if torch.compiler.is_compiling() else _decay_scan
    return scan(x, a, strict, reverse, add, keep_dtype)


class _Scan(torch.autograd.Function):
    """The scan of x (B, T, C) by fixed rates a (G,), plus an addend, written in x's dtype: one pass each way.

    Forward, one launch reads x and the addend (attention's output) and writes their sum: no float32 output to
    round and add afterwards (three full-size passes). Backward, the reverse scan of the output's gradient reads it
    in place and writes the values' gradient in x's dtype; with a link (cpu_scan.link_values) it waits for
    attention's value gradient and writes the two gradients' sum in the same pass. The addend's gradient is the
    output's, in its shape. A backward with create_graph runs the reverse scan through autograd (ops._MergedScan)."""

    @staticmethod
    def forward(ctx, x, a, strict, add, link, fallback):
        ctx.save_for_backward(a)
        ctx.strict, ctx.link, ctx.fallback = strict, link, fallback
        ctx.add_shape = None if add is None else add.shape
        return decay_scan(x, a, strict, False, add, keep_dtype=True)

    @staticmethod
    def backward(ctx, gy):
        (a,) = ctx.saved_tensors
        d_add = cpu_scan.addend_grad(gy, ctx.add_shape) if ctx.needs_input_grad[3] else None
        if ctx.link is not None:
            ctx.link.pending = None  # nothing left from an earlier pass that stopped short of the join
        if not ctx.needs_input_grad[0]:
            return None, None, None, d_add, None, None
        if torch.is_grad_enabled():  # create_graph: the reverse scan is the forward scan of the flipped gradient
            return ctx.fallback(gy.flip(1), a, ctx.strict).flip(1), None, None, d_add, None, None
        if ctx.link is not None and ctx.needs_input_grad[3] \
                and ctx.link.defer(functools.partial(_joined_backward, gy, a, ctx.strict)):
            # attention (whose output was the addend) has yet to give its value gradient: finish there (_Join)
            return None, None, None, d_add, None, None
        return decay_scan(gy, a, ctx.strict, True, keep_dtype=True), None, None, d_add, None, None


def _joined_backward(gy: torch.Tensor, a: torch.Tensor, strict: bool, dv: torch.Tensor) -> torch.Tensor:
    """The scan's value gradient plus attention's dv (B, H, T, D), in one pass: a (B, H, T, D) view of one
    (B, T, H*D) tensor in gy's dtype (dv's dtype where the two differ: then added after)."""
    B, H, T, D = dv.shape
    if gy.shape != (B, T, H * D):
        raise RuntimeError(f"triton_scan: a linked scan of {tuple(gy.shape)} values got attention's gradient of "
                           f"{tuple(dv.shape)}: link_values must take the heads view of the scanned values")
    if dv.dtype == gy.dtype:
        return decay_scan(gy, a, strict, True, add=dv, keep_dtype=True).view(B, T, H, D).transpose(1, 2)
    return dv + decay_scan(gy, a, strict, True, keep_dtype=True).view(B, T, H, D).transpose(1, 2)


def ema(x: torch.Tensor, a: torch.Tensor, strict: bool, fallback, add: torch.Tensor | None = None,
        link=None) -> torch.Tensor:
    """The scan of x (B, T, C) by fixed rates a (G,) (no gradient for them), plus `add` ((B, T, C) or (B, H, T, D)
    heads, x's dtype) when given: (B, T, C) in x's dtype, summed in float32 and rounded once. fallback(x, a, strict)
    is the same scan through autograd, for a second derivative. link: from cpu_scan.link_values on the heads view
    of x, whose attention output is `add`: the backward then writes both value gradients in one pass."""
    if add is not None and add.dtype != x.dtype:
        raise ValueError(f"triton_scan.ema: add must have the values' dtype {x.dtype}, got {add.dtype}")
    return _Scan.apply(x, a.float(), strict, add, link, fallback)
