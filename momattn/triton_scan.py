"""The momentum scan as one Triton kernel, for CUDA (issue 11: the momentum term must not be the bottleneck).

`decay_scan(x, a, strict, reverse)` computes what `ops._scan_merged` computes: for x (B, T, C) in G channel
groups with one rate a_g each,

    forward: y_t = sum_{i<=t} a^(t-i) x_i   (i < t if strict)
    reverse: y_t = sum_{i>=t} a^(i-t) x_i   (i > t if strict; the adjoint, for the backward)

One program per (sequence, block of BD channels of one group) walks time in blocks of BT positions: the scan
inside a block is one (BT x BT) @ (BT x BD) product with the group's decay matrix (tl.dot, fp32), plus the
state carried from the previous block times a^(j+1) (reverse: a^(BT-j)). The decay powers are formed in the
kernel as exp2(k log2 a) for 0 < k <= BT (exactly 1 at k = 0 and 0 for a = 0), so a call is one launch with
no small tensors built around it. x is read in place in any layout and float dtype (the strided bf16 view of
the qkv projection too); sums and the output are float32. On CUDA the block sizes are autotuned once per
head size; `TRITON_INTERPRET=1` runs the same kernel, untuned, on CPU tensors (tests/test_triton_scan.py).
"""

from __future__ import annotations

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
def _scan_block(X, Y, Lg, pw, carry, m, n, b, cols, T, sxb, sxt, sxc, syb, syt, syc,
                STRICT: tl.constexpr, REVERSE: tl.constexpr, BT: tl.constexpr):
    """The m-th of n blocks of BT positions (reverse: counted from the end): y = Lg @ x + pw * carry, stored;
    returns the inclusive state carried on to the next block."""
    r = tl.arange(0, BT)
    if REVERSE:
        t = (n - 1 - m) * BT + r  # (BT,)
    else:
        t = m * BT + r
    mask = (t < T)[:, None]
    b64, t64 = b.to(tl.int64), t.to(tl.int64)[:, None]  # 64-bit offsets: a qkv view can span > 2^31 elements
    x = tl.load(X + b64 * sxb + t64 * sxt + cols[None, :] * sxc, mask=mask, other=0.0).to(tl.float32)
    y = tl.dot(Lg, x, input_precision="ieee") + pw[:, None] * carry[None, :]  # (BT, BD)
    tl.store(Y + b64 * syb + t64 * syt + cols[None, :] * syc, y, mask=mask)
    if STRICT:  # the inclusive state at each position
        y = y + x
    if REVERSE:  # the position whose state enters the next block
        edge = 0
    else:
        edge = BT - 1
    return tl.sum(tl.where(r[:, None] == edge, y, 0.0), axis=0)


@triton.jit
def _scan_kernel(X, Y, A, T, n, Dg, sxb, sxt, sxc, syb, syt, syc,
                 STRICT: tl.constexpr, REVERSE: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
                 INTERPRET: tl.constexpr):
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
    if INTERPRET:  # the CPU interpreter cannot loop over a runtime range (numpy 2): n blocks, in order
        m = 0
        while m < n:
            carry = _scan_block(X, Y, Lg, pw, carry, m, n, b, cols, T, sxb, sxt, sxc, syb, syt, syc, STRICT, REVERSE, BT)
            m += 1
    else:  # a for loop: the compiler pipelines the next block's loads
        nb = tl.cdiv(T, BT)
        for m in range(0, nb):
            carry = _scan_block(X, Y, Lg, pw, carry, m, nb, b, cols, T, sxb, sxt, sxc, syb, syt, syc, STRICT, REVERSE, BT)


def _fits(configs, named_args, **kwargs):
    """Autotune only the channel blocks that divide a group's channels."""
    return [c for c in configs if named_args["Dg"] % c.kwargs["BD"] == 0]


# tuned once per head size (the first call's length stands for all: ICL prompts of every length reuse it)
_tuned = triton.autotune(
    configs=[triton.Config({"BT": bt, "BD": bd}, num_warps=w)
             for bt, bd, w in [(16, 16, 1), (32, 16, 1), (32, 16, 2), (32, 32, 2), (32, 32, 4), (32, 64, 4),
                               (64, 16, 2), (64, 32, 4)]],
    key=["Dg"], prune_configs_by={"early_config_prune": _fits},
)(_scan_kernel)


def block_channels(channels_per_group: int) -> int | None:
    """The smallest channel block (16) if it divides a group's channels, else None: no kernel for this size."""
    return 16 if channels_per_group % 16 == 0 else None


def _decay_scan(x: torch.Tensor, a: torch.Tensor, strict: bool, reverse: bool) -> torch.Tensor:
    B, T, C = x.shape
    G = a.shape[0]
    y = torch.empty((B, T, C), dtype=torch.float32, device=x.device)
    if INTERPRET:
        bt = 32
        _scan_kernel[(B, C // 16)](x, y, a.contiguous(), T, -(-T // bt), C // G, *x.stride(), *y.stride(),
                                   STRICT=strict, REVERSE=reverse, BT=bt, BD=16, INTERPRET=True)
    else:
        _tuned[lambda meta: (B, C // meta["BD"])](x, y, a.contiguous(), T, 0, C // G, *x.stride(), *y.stride(),
                                                  STRICT=strict, REVERSE=reverse, INTERPRET=False)
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
