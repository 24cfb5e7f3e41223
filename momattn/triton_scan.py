"""The momentum scan as one Triton kernel, for CUDA (issue 11: the momentum term must not be the bottleneck).

`decay_scan(x, a, strict, reverse)` computes what `ops._scan_merged` computes: for x (B, T, C) in G channel
groups with one rate a_g each,

    forward: y_t = sum_{i<=t} a^(t-i) x_i   (i < t if strict)
    reverse: y_t = sum_{i>=t} a^(i-t) x_i   (i > t if strict; the adjoint, for the backward)

One program per (sequence, block of BD channels of one group) walks time in blocks of BT positions: the scan
inside a block is one (BT x BT) @ (BT x BD) product with the group's decay matrix (tl.dot, fp32), plus the
state carried from the previous block times a^(j+1) (reverse: a^(BT-j)). The decay powers are formed in the
kernel as exp2(k log2 a) for 0 < k <= BT (exactly 1 at k = 0 and 0 for a = 0), so a call is one launch with
no small tensors built around it. Where that leaves too few programs for the GPU (few sequences: each program's
blocks wait on each other), time is cut into chunks (`chunk_length`): a first launch finds every chunk's edge
state from zero, and the scan then runs every chunk at once from the state entering it (the earlier chunks'
edge states, decayed). x is read in place in any layout and float dtype (the strided bf16 view of
the qkv projection too); sums and the output are float32. On CUDA the block sizes are autotuned once per
head size; `TRITON_INTERPRET=1` runs the same kernel, untuned, on CPU tensors (tests/test_triton_scan.py).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

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
def _scan_block(X, Y, Lg, pw, carry, t0, b, cols, T, sxb, sxt, sxc, syb, syt, syc,
                STRICT: tl.constexpr, REVERSE: tl.constexpr, BT: tl.constexpr):
    """The block of BT positions from t0: y = Lg @ x + pw * carry, stored; returns the inclusive state carried on
    to the next block (reverse: the state at t0, else at t0 + BT - 1)."""
    r = tl.arange(0, BT)
    t = t0 + r  # (BT,)
    mask = (t < T)[:, None]
    b64, t64 = b.to(tl.int64), t.to(tl.int64)[:, None]  # 64-bit offsets: a qkv view can span > 2^31 elements
    c64 = cols.to(tl.int64)[None, :]
    x = tl.load(X + b64 * sxb + t64 * sxt + c64 * sxc, mask=mask, other=0.0).to(tl.float32)
    y = tl.dot(Lg, x, input_precision="ieee") + pw[:, None] * carry[None, :]  # (BT, BD)
    tl.store(Y + b64 * syb + t64 * syt + c64 * syc, y, mask=mask)
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
def _scan_kernel(X, Y, A, E, T, CH, Dg, sxb, sxt, sxc, syb, syt, syc, seb, sek,
                 STRICT: tl.constexpr, REVERSE: tl.constexpr, CHUNKED: tl.constexpr, BT: tl.constexpr,
                 BD: tl.constexpr, INTERPRET: tl.constexpr):
    """One program per (sequence, BD channels[, chunk]): the blocks of its chunk (CHUNKED: CH positions, the
    state entering it summed from the first pass's E; else the whole sequence, from a zero state) in scan order."""
    b = tl.program_id(0)
    c0 = tl.program_id(1) * BD
    g = c0 // Dg  # the group (head) of this block of channels: BD divides Dg
    cols = c0 + tl.arange(0, BD)  # (BD,)
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
            carry = _scan_block(X, Y, Lg, pw, carry, _block_start(m, TP, REVERSE, BT), b, cols, T, sxb, sxt, sxc,
                                syb, syt, syc, STRICT, REVERSE, BT)
            m += 1
    else:  # a for loop: the compiler pipelines the next block's loads
        for mm in range(m, m_end):
            carry = _scan_block(X, Y, Lg, pw, carry, _block_start(mm, TP, REVERSE, BT), b, cols, T, sxb, sxt, sxc,
                                syb, syt, syc, STRICT, REVERSE, BT)


def _fits(configs, named_args, **kwargs):
    """Autotune only the channel blocks that divide a group's channels (and, chunked, the blocks that tile a chunk)."""
    ch = named_args["CH"]
    return [c for c in configs if named_args["Dg"] % c.kwargs["BD"] == 0 and (ch == 0 or ch % c.kwargs["BT"] == 0)]


# tuned once per head size and scan shape (the first call's length stands for all: ICL prompts of every length
# reuse it)
_tuned = triton.autotune(
    configs=[triton.Config({"BT": bt, "BD": bd}, num_warps=w)
             for bt, bd, w in [(16, 16, 1), (32, 16, 1), (32, 16, 2), (32, 32, 2), (32, 32, 4), (32, 64, 4),
                               (64, 16, 2), (64, 32, 4)]],
    key=["Dg", "CHUNKED"], prune_configs_by={"early_config_prune": _fits},
)(_scan_kernel)
_tuned_state = triton.autotune(
    configs=[triton.Config({"BT": bt, "BD": bd}, num_warps=w)
             for bt, bd, w in [(32, 16, 1), (64, 16, 2), (64, 32, 2), (64, 64, 4)]],
    key=["Dg"], prune_configs_by={"early_config_prune": _fits},
)(_chunk_state_kernel)

CHUNK_UNIT = 64  # chunk lengths are multiples of the largest block (BT) any config uses
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
    env = os.environ.get("MOMATTN_TRITON_CHUNK")
    if env is not None:
        ch = int(env)
        if ch < 0 or ch % CHUNK_UNIT:
            raise ValueError(f"MOMATTN_TRITON_CHUNK must be 0 or a multiple of {CHUNK_UNIT}, got {env!r}")
        return ch if 0 < ch < T else 0
    if device.type != "cuda":
        return 0
    programs = B * (C // 16)
    want = PROGRAMS_PER_SM * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    n = min(-(-want // programs), T // CHUNK_UNIT)  # chunks, each at least CHUNK_UNIT positions
    if n < 3:  # a chunk's positions are walked twice in a row (its edge state, then its scan): no gain below 3
        return 0
    ch = -(-T // n)
    ch = -(-ch // CHUNK_UNIT) * CHUNK_UNIT  # rounded up to a multiple of every block length
    return ch if -(-T // ch) >= 3 else 0


def _launch(plain, tuned, B: int, C: int, programs: int, *args, **constexprs) -> None:
    """One launch over (sequence, block of channels, `programs`): in the interpreter the plain kernel with blocks of
    32 positions x 16 channels, on a GPU the autotuned one."""
    if INTERPRET:
        plain[(B, C // 16, programs)](*args, BT=32, BD=16, INTERPRET=True, **constexprs)
    else:
        tuned[lambda meta: (B, C // meta["BD"], programs)](*args, INTERPRET=False, **constexprs)


def _decay_scan(x: torch.Tensor, a: torch.Tensor, strict: bool, reverse: bool) -> torch.Tensor:
    B, T, C = x.shape
    G = a.shape[0]
    y = torch.empty((B, T, C), dtype=torch.float32, device=x.device)
    a = a.contiguous()
    ch = chunk_length(B, T, C, x.device)
    n = -(-T // ch) if ch else 1
    # the edge states of every chunk but the last (which no chunk follows); unread when not chunked
    e = torch.empty((B, n - 1, C), dtype=torch.float32, device=x.device) if ch else y
    if ch:
        _launch(_chunk_state_kernel, _tuned_state, B, C, n - 1, x, e, a, T, ch, C // G, *x.stride(), e.stride(0),
                e.stride(1), REVERSE=reverse)
    _launch(_scan_kernel, _tuned, B, C, n, x, y, a, e, T, ch, C // G, *x.stride(), *y.stride(), e.stride(0),
            e.stride(1) if ch else 0, STRICT=strict, REVERSE=reverse, CHUNKED=bool(ch))
    return y


# one opaque op, so torch.compile neither traces into Triton nor breaks its graph around the launch. It has no
# autograd formula: ops._MergedScan calls it only with grad mode off (its forward; a backward without create_graph)
_decay_scan = torch.library.custom_op("momattn::decay_scan", mutates_args=())(_decay_scan)


@_decay_scan.register_fake
def _(x, a, strict, reverse):
    return x.new_empty(x.shape, dtype=torch.float32)


def decay_scan(x: torch.Tensor, a: torch.Tensor, strict: bool, reverse: bool) -> torch.Tensor:
    """x (B, T, C), any strides and float dtype; a (G,) float32, the rates, one per group of C // G channels
    (C // G a multiple of 16). Returns y (B, T, C) float32, contiguous."""
    return _decay_scan(x, a, strict, reverse)
