"""momattn.ops: the chunked EMA scans against the naive float64 loops of momattn.reference: values, gradients,
stability, dtypes, and the initial_state / final_state signature that serves prefill and decoding."""

from __future__ import annotations

import pytest
import torch

from momattn import ops
from momattn.ops import momentum_ema, multirate_ema
from momattn.reference import momentum_ema_naive, momentum_ema_recurrent, multirate_ema_naive

F64 = torch.float64


@pytest.fixture(autouse=True)
def matmul_scans(monkeypatch):
    """These tests are the chunked matmul scans' (SCAN_BACKEND "torch"); tests/test_cpu_scan.py runs those of the
    training paths again with the CPU kernel, which SCAN_BACKEND "auto" takes on CPU."""
    monkeypatch.setattr(ops, "SCAN_BACKEND", "torch")


def naive_momentum(v: torch.Tensor, eta: torch.Tensor, include_current: bool) -> torch.Tensor:
    return momentum_ema_naive(v, eta, include_current)[0]


def naive_multirate(v: torch.Tensor, p: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    return multirate_ema_naive(v, p, gamma)[0]


def mom(*args, **kwargs) -> torch.Tensor:
    """momentum_ema's output alone (no state in, none out)."""
    return momentum_ema(*args, **kwargs)[0]


def mr(*args, **kwargs) -> torch.Tensor:
    """multirate_ema's output alone."""
    return multirate_ema(*args, **kwargs)[0]


def training(op, v: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """op's output for values that take a gradient, as in training (bf16 values on CPU then take the ops' bf16
    matmuls; without a gradient they are summed in float32)."""
    return op(v.detach().requires_grad_(), *args, **kwargs).detach()


def make_eta(kind: str, H: int, dtype=F64):
    """The same rates in the three accepted forms; returns (eta argument, (H,) reference tensor)."""
    if kind == "float":
        return 0.7, torch.full((H,), 0.7, dtype=dtype)
    if kind == "0d":
        return torch.tensor(0.6, dtype=dtype), torch.full((H,), 0.6, dtype=dtype)
    rates = torch.tensor([0.0, 0.5, 0.95], dtype=dtype)[:H]  # a zero rate and one near 1
    return rates, rates


# -----------------------------------------------------------------------------
# momentum_ema: values

# (T, chunk): shorter than a chunk, exact multiple, ragged tail with two recursion levels (37 -> 10 -> 3),
# and T > chunk^3 so the carry scan recurses three times (70 -> 18 -> 5 -> 2)
SHAPES = [(5, 64), (1, 4), (64, 8), (37, 4), (70, 4)]


@pytest.fixture(params=["direct", "recursive"])
def carry(request, monkeypatch):
    """momentum_ema carries chunk-end sums by one (n x n) matmul up to ops._DIRECT_CARRY_MAX chunks, by _carry's
    recursion beyond: "recursive" lowers the limit so that every multi-chunk shape above takes the recursion."""
    if request.param == "recursive":
        monkeypatch.setattr(ops, "_DIRECT_CARRY_MAX", 1)
    return request.param


@pytest.mark.parametrize("T,chunk", SHAPES)
@pytest.mark.parametrize("kind", ["float", "0d", "per_head"])
@pytest.mark.parametrize("include_current", [False, True])
def test_momentum_matches_naive(T, chunk, kind, include_current, carry):
    torch.manual_seed(T)
    v = torch.randn(2, 3, T, 4, dtype=F64)
    eta, eta_ref = make_eta(kind, 3)
    out = mom(v, eta, include_current=include_current, chunk_size=chunk)
    assert out.shape == v.shape and out.dtype == F64
    torch.testing.assert_close(out, naive_momentum(v, eta_ref, include_current), rtol=1e-12, atol=1e-12)


def test_momentum_float32_matches_naive():
    torch.manual_seed(0)
    v = torch.randn(2, 3, 37, 4)
    eta = torch.tensor([0.0, 0.5, 0.95])
    out = mom(v, eta, chunk_size=4)
    assert out.dtype == torch.float32
    torch.testing.assert_close(
        out.double(), naive_momentum(v.double(), eta.double(), False), rtol=1e-5, atol=1e-5
    )


def test_momentum_default_chunk_and_eta_shape_1():
    torch.manual_seed(1)
    v = torch.randn(1, 2, 150, 3, dtype=F64)  # 5 chunks of the default 32, ragged tail
    out = mom(v, torch.tensor([0.8], dtype=F64), include_current=True)
    torch.testing.assert_close(out, naive_momentum(v, torch.full((2,), 0.8, dtype=F64), True))


# -----------------------------------------------------------------------------
# momentum_ema: gradients


@pytest.mark.parametrize("rates", [[0.3, 0.8], 0.6])  # per head, and one rate shared by every head
@pytest.mark.parametrize("include_current", [False, True])
def test_momentum_gradcheck(include_current, rates, carry):
    torch.manual_seed(0)
    v = torch.randn(1, 2, 11, 3, dtype=F64, requires_grad=True)
    eta = torch.tensor(
        rates, dtype=F64, requires_grad=True
    )  # away from 0 so finite differences stay in range
    assert torch.autograd.gradcheck(
        lambda v, eta: mom(v, eta, include_current=include_current, chunk_size=4), (v, eta)
    )


@pytest.mark.parametrize("T,chunk", SHAPES)
@pytest.mark.parametrize("kind", ["float", "0d"])  # a rate without a gradient: the custom backward
@pytest.mark.parametrize("include_current", [False, True])
def test_momentum_fixed_rate_gradients_match_naive(T, chunk, kind, include_current, carry):
    torch.manual_seed(T)
    v0 = torch.randn(2, 3, T, 4, dtype=F64)
    w = torch.randn(2, 3, T, 4, dtype=F64)  # a random cotangent
    eta, eta_ref = make_eta(kind, 3)
    grads = []
    for fn in (
        lambda v: mom(v, eta, include_current=include_current, chunk_size=chunk),
        lambda v: naive_momentum(v, eta_ref, include_current),
    ):
        v = v0.clone().requires_grad_()
        out = fn(v)
        if out.requires_grad:  # the naive loop's out is a constant 0 at T = 1, i < t
            (out * w).sum().backward()
        grads.append(torch.zeros_like(v) if v.grad is None else v.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("include_current", [False, True])
def test_momentum_fixed_rate_gradgradcheck(include_current, carry):
    torch.manual_seed(0)
    v = torch.randn(1, 2, 19, 3, dtype=F64, requires_grad=True)  # 5 chunks of 4, ragged, carry recursing
    fn = lambda v: mom(v, 0.7, include_current=include_current, chunk_size=4)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (v,))
    assert torch.autograd.gradgradcheck(fn, (v,))


@pytest.mark.parametrize("eta", [0.5, torch.tensor([0.3, 0.5, 0.7, 0.9])])  # shared; per head, no gradient
def test_momentum_fixed_rates_save_no_activation_for_backward(eta):
    """Backward is the reverse scan of the gradient: no full-size tensor is kept for it (autograd's
    matmuls would keep the values and the decay matrices); a learnable rate keeps just the output."""

    def saved_sizes(eta):
        sizes = []
        v = torch.randn(2, 4, 150, 8, requires_grad=True)  # 5 chunks of 32
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            out = mom(v, eta)
        out.sum().backward()
        assert v.grad is not None and v.grad.shape == v.shape
        return sizes, v.numel()

    sizes, full = saved_sizes(eta)
    assert all(s < full for s in sizes)
    learnable = torch.tensor([0.3, 0.5, 0.7, 0.9], requires_grad=True)
    sizes, full = saved_sizes(learnable)  # the rates, the input (a view), the output
    assert sum(s >= full for s in sizes) == 2


@pytest.mark.parametrize("include_current", [False, True])
def test_momentum_grad_parity_with_naive(include_current):
    torch.manual_seed(0)
    v0 = torch.randn(2, 3, 23, 2, dtype=F64)
    w = torch.randn(2, 3, 23, 2, dtype=F64)  # a random cotangent
    grads = []
    for fn in (
        lambda v, e: mom(v, e, include_current=include_current, chunk_size=4),
        lambda v, e: naive_momentum(v, e, include_current),
    ):
        v = v0.clone().requires_grad_()
        eta = torch.tensor([0.2, 0.5, 0.9], dtype=F64, requires_grad=True)
        (fn(v, eta) * w).sum().backward()
        grads.append((v.grad, eta.grad))
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("include_current", [False, True])
def test_momentum_eta_exactly_zero(include_current):
    torch.manual_seed(0)
    v = torch.randn(2, 3, 37, 4, dtype=F64, requires_grad=True)
    eta = torch.zeros(3, dtype=F64, requires_grad=True)
    w = torch.randn(2, 3, 37, 4, dtype=F64)
    out = mom(v, eta, include_current=include_current, chunk_size=4)
    # exclusive: nothing earlier survives; inclusive: only the current value
    torch.testing.assert_close(out, v if include_current else torch.zeros_like(v), rtol=0, atol=0)
    (out * w).sum().backward()
    assert torch.isfinite(v.grad).all() and torch.isfinite(eta.grad).all()
    torch.testing.assert_close(v.grad, w if include_current else torch.zeros_like(w))
    # d/deta sum_{i<t} eta^(t-i) v_i at eta = 0 keeps only the lag-1 term: v_{t-1}
    expected = (w[:, :, 1:] * v.detach()[:, :, :-1]).sum(dim=(0, 2, 3))
    torch.testing.assert_close(eta.grad, expected)
    # a python float 0 works too
    torch.testing.assert_close(mom(v.detach(), 0.0, include_current=include_current), out.detach())


# -----------------------------------------------------------------------------
# momentum_ema: stability for rates near 1 over long sequences


@pytest.mark.parametrize("include_current", [False, True])
def test_momentum_long_sequence_eta_near_one(include_current):
    torch.manual_seed(0)
    T, rates = 32768, [0.999, 0.9]
    v = torch.randn(1, 2, T, 2)
    ref = momentum_ema_recurrent(v, rates, include_current)
    out = mom(v, torch.tensor(rates), include_current=include_current)
    assert torch.isfinite(out).all()
    # fp32 sums of ~1/(1-eta) terms: a plain fp32 recurrence is off by ~7e-6 of the largest value here too
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=2e-5 * ref.abs().max().item())
    out64 = mom(v.double(), torch.tensor(rates, dtype=F64), include_current=include_current)
    torch.testing.assert_close(out64, ref, rtol=1e-10, atol=1e-10)


# -----------------------------------------------------------------------------
# dtypes and autocast: accumulate in float32, return v's dtype


# bf16 chunk matmuls round a carried term at most five times (the decay block, the chunk's sum, the carried state
# and its weight for the update, the updated sum; ops.py's module docstring)
BF16_ROUNDINGS = 5


def assert_within_bf16_roundings(out: torch.Tensor, v: torch.Tensor, eta, include_current=False, chunk=32):
    """|out - exact| <= 5 * 2^-8 * sum_i eta^(t-i) |v_i|, the exact sums of the bf16 values v in float64:
    five bf16 roundings (unit roundoff 2^-8) of the terms."""
    e64 = torch.as_tensor(eta, dtype=F64)
    exact = mom(v.double(), e64, include_current, chunk_size=chunk)
    scale = mom(v.double().abs(), e64, include_current, chunk_size=chunk)
    err = (out.double() - exact).abs()
    assert (err <= BF16_ROUNDINGS * 2.0**-8 * scale).all(), (err / scale).max().item() * 2**8


def test_momentum_bf16_input_within_five_roundings():
    """bf16 values (what autocast hands the op) are scanned by bf16 matmuls that accumulate in float32, the
    carry between chunks in float32: within five bf16 roundings of the exact sums, at every rate and length
    (positive values: no cancellation to hide behind; 2048 rates in one call), and the ops' float32 path rounded
    once is within one."""
    torch.manual_seed(0)
    v = torch.rand(1, 2048, 128, 16).bfloat16()
    eta = torch.linspace(0.02, 0.98, 2048)
    out = training(mom, v, eta, chunk_size=32)
    assert_within_bf16_roundings(out, v, eta, chunk=32)
    # without a gradient (evaluation): float32 sums rounded once, not the bf16 matmuls
    once = mom(v.float(), eta, chunk_size=32).bfloat16()
    assert torch.equal(mom(v, eta, chunk_size=32), once) and not torch.equal(out, once)
    for T, chunk in [(100, 16), (256, 32), (1000, 32), (3000, 8)]:  # 3000 / 8: the recursive carry
        for eta in ([0.5, 0.9, 0.99], [0.999, 0.3, 0.0]):
            v = torch.randn(2, 3, T, 8).bfloat16()
            for include_current in (False, True):
                out = training(mom, v, torch.tensor(eta), include_current, chunk_size=chunk)
                assert out.dtype == torch.bfloat16
                assert_within_bf16_roundings(out, v, eta, include_current, chunk)
                once = mom(v.float(), torch.tensor(eta), include_current, chunk_size=chunk).bfloat16()
                e64 = torch.tensor(eta, dtype=F64)
                err = (once.double() - mom(v.double(), e64, include_current, chunk_size=chunk)).abs()
                assert (err <= 2.0**-8 * mom(v.double().abs(), e64, include_current, chunk_size=chunk)).all()


@pytest.mark.parametrize("include_current", [False, True])
def test_momentum_bf16_gradients(include_current):
    """bf16 values and a bf16 output gradient: the values' gradient is the reverse scan, within five bf16
    roundings like the forward; the rates' gradient (float32) is within 5% of the largest head's exact one (the
    decay matrix's bf16 rounding is the same in every chunk, so its error does not average out). Rates of 1e-6
    take the exact form of the rate gradient (no division by the rate)."""
    torch.manual_seed(0)
    for rates in ([0.3, 0.9, 0.99], [1e-6, 0.5, 0.9]):
        v, w = torch.randn(4, 3, 300, 16).bfloat16(), torch.randn(4, 3, 300, 16).bfloat16()
        grads = {}
        for dtype in (F64, torch.bfloat16):
            eta = torch.tensor(rates, dtype=F64 if dtype == F64 else torch.float32, requires_grad=True)
            x = v.to(dtype).requires_grad_()
            momentum_ema(x, eta, include_current, chunk_size=32)[0].backward(w.to(dtype))
            assert x.grad.dtype == dtype and eta.grad.dtype == eta.dtype
            grads[dtype] = x.grad, eta.grad.double()
        # the values' gradient is the reverse scan of w: bounded like the forward scan of the time-reversed w
        flip = w.flip(2)
        assert_within_bf16_roundings(grads[torch.bfloat16][0].flip(2), flip, rates, include_current, chunk=32)
        exact = grads[F64][1]
        assert (grads[torch.bfloat16][1] - exact).abs().max() <= 0.05 * exact.abs().max()


def test_momentum_float16_input_sums_in_float32():
    torch.manual_seed(0)
    v = torch.randn(2, 3, 100, 8).half()
    eta = torch.tensor([0.5, 0.9, 0.99])
    out = mom(v, eta, include_current=True, chunk_size=16)
    assert out.dtype == torch.float16
    # float16 (no fp32-accumulating matmul to lean on): the fp32 sums of the fp32 call, rounded once at the end
    ref = mom(v.float(), eta, include_current=True, chunk_size=16)
    torch.testing.assert_close(out, ref.half())


def test_momentum_under_autocast():
    torch.manual_seed(0)
    v = torch.randn(2, 3, 100, 8)
    eta = torch.tensor([0.5, 0.9, 0.99])
    ref = mom(v, eta, chunk_size=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mom(v, eta, chunk_size=16)
        out_bf16 = training(mom, v.bfloat16(), eta, chunk_size=16)
    assert out.dtype == torch.float32 and out_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref)  # autocast did not push float32 sums into bf16
    assert_within_bf16_roundings(out_bf16, v.bfloat16(), eta, chunk=16)


def test_multirate_low_precision_and_autocast():
    torch.manual_seed(0)
    v = torch.randn(2, 50, 6)
    p, gamma = torch.rand(6, 3) * 0.99, torch.randn(6, 3)
    out = training(mr, v.bfloat16(), p, gamma, chunk_size=8)
    assert out.dtype == torch.bfloat16
    # bf16 chunk matmuls, float32 states between chunks: within five bf16 roundings of the exact sums, measured
    # against sum_r |gamma_r| p_r^l |v| (the float32 path rounded once is within one)
    exact = mr(v.bfloat16().double(), p.double(), gamma.double(), chunk_size=8)
    scale = mr(v.bfloat16().double().abs(), p.double(), gamma.double().abs(), chunk_size=8)
    assert ((out.double() - exact).abs() <= BF16_ROUNDINGS * 2.0**-8 * scale).all()
    once = mr(v.bfloat16().float(), p, gamma, chunk_size=8).bfloat16()
    assert ((once.double() - exact).abs() <= 2.0**-8 * scale).all()
    assert torch.equal(mr(v.bfloat16(), p, gamma, chunk_size=8), once)  # no gradient: float32 sums, rounded once
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out32 = mr(v, p, gamma, chunk_size=8)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32, mr(v, p, gamma, chunk_size=8))


def multirate_bf16_grads() -> dict:
    """{dtype: the gradients of (v, p, gamma), in float64} of multirate_ema (chunks of 32) on the same bf16 values
    and output gradient, taken in float64 and in bf16 (float32 rates)."""
    torch.manual_seed(0)
    v, w = torch.randn(4, 300, 16).bfloat16(), torch.randn(4, 300, 16).bfloat16()
    p, gamma = torch.sigmoid(torch.randn(16, 8) * 1.5), torch.randn(16, 8) * 0.3
    grads = {}
    for dtype in (F64, torch.bfloat16):
        acc = F64 if dtype == F64 else torch.float32
        args = [v.to(dtype).requires_grad_(), p.to(acc).requires_grad_(), gamma.to(acc).requires_grad_()]
        mr(*args, chunk_size=32).backward(w.to(dtype))
        grads[dtype] = [a.grad.double() for a in args]
    return grads


def test_multirate_bf16_gradients():
    """The training path's hand-written backward with bf16 values: every gradient within 2% of the largest exact
    one (float64), the rates' included (bf16 chunk matmuls, float32 states and rate sums)."""
    grads = multirate_bf16_grads()
    assert [g.dtype for g in grads[torch.bfloat16]] == [F64] * 3
    for low, exact in zip(grads[torch.bfloat16], grads[F64]):
        assert (low - exact).abs().max() <= 0.02 * exact.abs().max()


# -----------------------------------------------------------------------------
# multirate_ema


@pytest.mark.parametrize("T", [3, 16, 23, 70])  # < chunk, multiple, ragged, carry scan recursing
def test_multirate_matches_naive(T):
    torch.manual_seed(T)
    C, R = 3, 4
    v = torch.randn(2, T, C, dtype=F64)
    p = torch.rand(C, R, dtype=F64) * 0.99
    p[0, 0] = 0.0  # a zero rate
    p[1, 1] = 0.999  # a rate near 1
    gamma = torch.randn(C, R, dtype=F64)
    out = mr(v, p, gamma, chunk_size=4)
    assert out.shape == v.shape
    torch.testing.assert_close(out, naive_multirate(v, p, gamma), rtol=1e-12, atol=1e-12)


def test_multirate_default_chunk_float32():
    torch.manual_seed(0)
    v = torch.randn(2, 150, 4)
    p, gamma = torch.rand(4, 8) * 0.99, torch.randn(4, 8)
    out = mr(v, p, gamma)
    assert out.dtype == torch.float32
    ref = naive_multirate(v.double(), p.double(), gamma.double())
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)


def test_multirate_gradcheck():
    torch.manual_seed(0)
    v = torch.randn(1, 13, 2, dtype=F64, requires_grad=True)
    p = (0.2 + 0.6 * torch.rand(2, 3, dtype=F64)).requires_grad_()
    gamma = torch.randn(2, 3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, p, g: mr(v, p, g, chunk_size=4), (v, p, gamma))


def multirate_grads(inputs, w, want=(True, True, True)):
    """Gradients of sum(w * out) for (v, p, gamma) = inputs from multirate_ema (chunks of 4) and from the naive
    loop: two lists, None where `want` asks for no gradient."""
    grads = []
    for fn in (lambda *a: mr(*a, chunk_size=4), naive_multirate):
        ins = [t.clone().requires_grad_(r) for t, r in zip(inputs, want)]
        (fn(*ins) * w).sum().backward()
        grads.append([t.grad for t in ins])
    return grads


def test_multirate_grad_parity_with_naive():
    torch.manual_seed(0)
    v0, p0, g0 = (
        torch.randn(2, 19, 3, dtype=F64),
        torch.rand(3, 2, dtype=F64) * 0.9,
        torch.randn(3, 2, dtype=F64),
    )
    got, ref = multirate_grads((v0, p0, g0), torch.randn(2, 19, 3, dtype=F64))
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("T", [3, 16, 23, 70])  # one chunk (nothing carried), several, ragged, deep carry
@pytest.mark.parametrize("needs", ["all", "v", "rates"])
def test_multirate_custom_backward_matches_naive(T, needs):
    # the training path (no states) runs _MultiRateScan's hand-written backward: every gradient it returns
    # equals autograd through the naive float64 loop, whichever inputs ask for one
    torch.manual_seed(T)
    C, R = 3, 4
    v0, p0, g0 = torch.randn(2, T, C, dtype=F64), torch.rand(C, R, dtype=F64) * 0.99, torch.randn(C, R, dtype=F64)
    p0[0, 0], p0[1, 1] = 0.0, 0.999
    w = torch.randn(2, T, C, dtype=F64)
    want = {"all": (True, True, True), "v": (True, False, False), "rates": (False, True, True)}[needs]
    for got, ref, r in zip(*multirate_grads((v0, p0, g0), w, want), want):
        if r:
            torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
        else:
            assert got is None


@pytest.mark.parametrize("shape", [(0, 70, 3, 2), (2, 70, 0, 2), (0, 5, 3, 2)])
def test_multirate_empty_batch_or_channels(shape):
    # an empty batch or no channels: an empty output and empty or zero gradients, as the autograd path gives
    B, T, C, R = shape
    v = torch.randn(B, T, C, dtype=F64, requires_grad=True)
    p, gamma = (torch.rand(C, R, dtype=F64) * 0.9).requires_grad_(), torch.randn(C, R, dtype=F64, requires_grad=True)
    out = mr(v, p, gamma, chunk_size=4)
    assert out.shape == (B, T, C)
    out.sum().backward()
    assert v.grad.shape == v.shape and not p.grad.abs().sum() and not gamma.grad.abs().sum()


def test_multirate_second_derivatives():
    # backward with create_graph recomputes through autograd: second derivatives are right too
    torch.manual_seed(0)
    v = torch.randn(1, 11, 2, dtype=F64, requires_grad=True)
    p = (0.2 + 0.6 * torch.rand(2, 2, dtype=F64)).requires_grad_()
    gamma = torch.randn(2, 2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda v, p, g: mr(v, p, g, chunk_size=4), (v, p, gamma))
    # at a rate of 0 too: p^2 is kept where tiny powers are flushed, so d2y/dp2 = 2 gamma v_(t-2), not 0
    p0 = torch.tensor([[0.0, 0.3], [0.5, 0.0]], dtype=F64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda v, p, g: mr(v, p, g, chunk_size=4, check_rates=False), (v, p0, gamma))


@pytest.mark.parametrize("shape", [(4096, 256), (256, 4096), (128, 128), (100, 64), (64, 4096), (192, 8)])
def test_transpose_2d_equals_pytorch_transpose(shape):
    # the two-pass CPU transpose (blocks along the longer dim) against x.t().contiguous(), every dtype, and a
    # non-contiguous input (the model's values are a slice of the fused qkv projection)
    from momattn.ops import _transpose_2d

    torch.manual_seed(0)
    x = torch.randn(*shape)
    for dt in (torch.float32, F64, torch.bfloat16):
        got = _transpose_2d(x, dt)
        assert got.is_contiguous() and got.dtype == dt
        assert torch.equal(got, x.t().contiguous().to(dt))
    wide = torch.randn(shape[0], 3 * shape[1])[:, shape[1] : 2 * shape[1]]  # rows strided, as a qkv slice
    assert torch.equal(_transpose_2d(wide, torch.float32), wide.t().contiguous())


def test_multirate_p_exactly_zero():
    torch.manual_seed(0)
    v = torch.randn(2, 21, 3, dtype=F64, requires_grad=True)
    p = torch.zeros(3, 2, dtype=F64, requires_grad=True)
    gamma = torch.randn(3, 2, dtype=F64, requires_grad=True)
    out = mr(v, p, gamma, chunk_size=4)
    torch.testing.assert_close(out, gamma.sum(-1) * v)  # only the current token survives
    out.sum().backward()
    for t in (v, p, gamma):
        assert torch.isfinite(t.grad).all()
    # d/dp at p = 0 keeps the lag-1 term: gamma[c, r] * sum_{b, t>=1} v[b, t-1, c]
    torch.testing.assert_close(p.grad, gamma.detach() * v.detach()[:, :-1].sum(dim=(0, 1))[:, None])


def test_multirate_single_sequence_deep_carry():
    # B = 1 and T = 70, chunk 4: 18 chunk ends, carried by a scan that recurses (18 -> 5 -> 3 -> 2)
    torch.manual_seed(1)
    v = torch.randn(1, 70, 3, dtype=F64)
    p = torch.rand(3, 2, dtype=F64) * 0.99
    p[0, 0], p[1, 1] = 0.0, 0.999
    gamma = torch.randn(3, 2, dtype=F64)
    ref = naive_multirate(v, p, gamma)
    torch.testing.assert_close(mr(v, p, gamma, chunk_size=4), ref, rtol=1e-12, atol=1e-12)
    state = multirate_ema(v, p, gamma, output_final_state=True, chunk_size=4)[1]
    torch.testing.assert_close(state, multirate_ema_naive(v, p, gamma)[1], rtol=1e-12, atol=1e-12)


def test_small_rates_float32_match_float64():
    # 0.2^l and 0.3^l pass through the subnormal range inside one chunk (flushed to 0 there): same sums
    torch.manual_seed(0)
    v64, x64 = torch.randn(2, 4, 200, 3, dtype=F64), torch.randn(2, 200, 4, dtype=F64)
    eta64 = torch.tensor([0.2, 0.3, 0.0, 0.5], dtype=F64)
    p64, g64 = (
        torch.tensor([[0.2, 0.3], [0.25, 0.0], [0.01, 0.9], [0.3, 0.35]], dtype=F64),
        torch.randn(4, 2, dtype=F64),
    )
    grads = []
    for dt in (F64, torch.float32):
        v, x = (t.detach().to(dt).clone().requires_grad_() for t in (v64, x64))
        eta, p, g = (t.detach().to(dt).clone().requires_grad_() for t in (eta64, p64, g64))
        out = (mom(v, eta).sum(), mr(x, p, g).sum())
        sum(out).backward()
        grads.append([t.grad.double() for t in (v, x, eta, p, g)])
        if dt == F64:
            ref = (naive_momentum(v64, eta64, False), naive_multirate(x64, p64, g64))
            torch.testing.assert_close(mom(v64, eta64), ref[0], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(mr(x64, p64, g64), ref[1], rtol=1e-12, atol=1e-12)
    for a, b in zip(*grads, strict=True):
        assert torch.isfinite(a).all() and torch.isfinite(b).all()
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("eta_kind", ["per_head", "shared"])  # shared: the copy-free merged-layout path
def test_strided_inputs_match_contiguous(eta_kind):
    # the model hands momentum_ema a (B, T, 3C) slice viewed as (B, H, T, D): strided, not contiguous
    torch.manual_seed(0)
    B, T, H, D = 2, 37, 3, 4
    C = H * D
    base = torch.randn(B, T, 3 * C, dtype=F64)
    eta = (
        torch.tensor([0.0, 0.6, 0.95], dtype=F64) if eta_kind == "per_head" else torch.tensor(0.7, dtype=F64)
    )
    grads = []
    for make in (
        lambda b: b[..., 2 * C :].view(B, T, H, D).transpose(1, 2),
        lambda b: b[..., 2 * C :].view(B, T, H, D).transpose(1, 2).contiguous(),
    ):
        b = base.clone().requires_grad_()
        v = make(b)
        out = mom(v, eta, chunk_size=8)
        ref = naive_momentum(v.detach(), eta.expand(H), False)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        (out * torch.arange(out.numel(), dtype=F64).view_as(out).sin()).sum().backward()
        grads.append(b.grad)
    torch.testing.assert_close(grads[0], grads[1])
    x = torch.randn(B, C, T, dtype=F64).transpose(1, 2)  # (B, T, C), channels-first in memory
    p, gamma = torch.rand(C, 2, dtype=F64) * 0.99, torch.randn(C, 2, dtype=F64)
    out = mr(x, p, gamma, chunk_size=8)
    torch.testing.assert_close(out, naive_multirate(x, p, gamma), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        multirate_ema(x, p, gamma, output_final_state=True, chunk_size=8)[1],
        multirate_ema(x.contiguous(), p, gamma, output_final_state=True)[1],
    )


def test_low_precision_inputs_get_grads_of_their_dtype():
    torch.manual_seed(0)
    v = torch.randn(2, 3, 40, 4).bfloat16().requires_grad_()
    x = torch.randn(2, 40, 6).bfloat16().requires_grad_()
    p, gamma = (torch.rand(6, 3) * 0.99).requires_grad_(), torch.randn(6, 3, requires_grad=True)
    eta = torch.tensor([0.0, 0.5, 0.9], requires_grad=True)
    (mom(v, eta, chunk_size=8).float().sum() + mr(x, p, gamma, chunk_size=8).float().sum()).backward()
    assert v.grad.dtype == x.grad.dtype == torch.bfloat16
    assert eta.grad.dtype == p.grad.dtype == gamma.grad.dtype == torch.float32
    for t in (v, x, p, gamma, eta):
        assert torch.isfinite(t.grad.float()).all()
    # the same gradients as from float32 copies of the inputs, up to bf16 rounding of the result
    v32, x32 = v.detach().float().requires_grad_(), x.detach().float().requires_grad_()
    (
        mom(v32, eta.detach(), chunk_size=8).sum() + mr(x32, p.detach(), gamma.detach(), chunk_size=8).sum()
    ).backward()
    torch.testing.assert_close(v.grad.float(), v32.grad, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(x.grad.float(), x32.grad, rtol=1e-2, atol=1e-2)


# -----------------------------------------------------------------------------
# initial_state / final_state: one signature for training, prefill and decoding


def _split_points(g: torch.Generator, T: int, pieces: int) -> list[int]:
    """Random cut points 0 = c_0 <= ... <= c_k = T (empty pieces and single tokens included)."""
    cuts = sorted(torch.randint(0, T + 1, (pieces - 1,), generator=g).tolist())
    return [0, *cuts, T]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("include_current", [False, True])
def test_momentum_chained_states_equal_one_pass(seed, include_current):
    g = torch.Generator().manual_seed(seed)
    T = 40
    v = torch.randn(2, 3, T, 4, dtype=F64, generator=g)
    eta = torch.tensor([0.0, 0.5, 0.95], dtype=F64)
    full, final = momentum_ema(v, eta, include_current, output_final_state=True, chunk_size=4)
    ref, ref_final = momentum_ema_naive(v, eta, include_current)
    torch.testing.assert_close(full, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final, ref_final, rtol=1e-12, atol=1e-12)
    cuts, state, outs = _split_points(g, T, 2 + seed), None, []
    for lo, hi in zip(cuts, cuts[1:]):
        out, state = momentum_ema(
            v[:, :, lo:hi], eta, include_current, state, output_final_state=True, chunk_size=4
        )
        assert state.shape == (2, 3, 4) and state.dtype == F64
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=2), full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, final, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_multirate_chained_states_equal_one_pass(seed):
    g = torch.Generator().manual_seed(seed)
    T, C, R = 40, 3, 4
    v = torch.randn(2, T, C, dtype=F64, generator=g)
    p, gamma = torch.rand(C, R, dtype=F64, generator=g) * 0.99, torch.randn(C, R, dtype=F64, generator=g)
    p[0, 0], p[1, 1] = 0.0, 0.999
    full, final = multirate_ema(v, p, gamma, output_final_state=True, chunk_size=4)
    ref, ref_final = multirate_ema_naive(v, p, gamma)
    torch.testing.assert_close(full, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final, ref_final, rtol=1e-12, atol=1e-12)
    cuts, state, outs = _split_points(g, T, 2 + seed), None, []
    for lo, hi in zip(cuts, cuts[1:]):
        out, state = multirate_ema(v[:, lo:hi], p, gamma, state, output_final_state=True, chunk_size=4)
        assert state.shape == (2, C, R) and state.dtype == F64
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, final, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("T,chunk", [(1, 4), (3, 4), (4, 4), (37, 4), (70, 4), (150, 64)])
@pytest.mark.parametrize("include_current", [False, True])
def test_momentum_initial_state_matches_naive(T, chunk, include_current):
    torch.manual_seed(T)
    # any state, not only one a prefix left
    v, s0 = torch.randn(2, 3, T, 4, dtype=F64), torch.randn(2, 3, 4, dtype=F64)
    eta = torch.tensor([0.0, 0.6, 0.99], dtype=F64)
    out, final = momentum_ema(v, eta, include_current, s0, output_final_state=True, chunk_size=chunk)
    ref, ref_final = momentum_ema_naive(v, eta, include_current, s0)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final, ref_final, rtol=1e-12, atol=1e-12)
    assert momentum_ema(v, eta, include_current, s0, chunk_size=chunk)[1] is None  # only when asked


@pytest.mark.parametrize("T", [1, 3, 16, 23, 70])
def test_multirate_initial_state_matches_naive(T):
    torch.manual_seed(T)
    C, R = 3, 4
    v, s0 = torch.randn(2, T, C, dtype=F64), torch.randn(2, C, R, dtype=F64)
    p, gamma = torch.rand(C, R, dtype=F64) * 0.99, torch.randn(C, R, dtype=F64)
    p[0, 0], p[1, 1] = 0.0, 0.999
    out, final = multirate_ema(v, p, gamma, s0, output_final_state=True, chunk_size=4)
    ref, ref_final = multirate_ema_naive(v, p, gamma, s0)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final, ref_final, rtol=1e-12, atol=1e-12)
    assert multirate_ema(v, p, gamma, s0, chunk_size=4)[1] is None


@pytest.mark.parametrize("eta", [[0.3, 0.8], [0.6]])  # one rate per head; one for all
@pytest.mark.parametrize("T", [1, 3, 11])  # the one-token path, one chunk, several chunks
@pytest.mark.parametrize("include_current", [False, True])
def test_momentum_gradcheck_through_states(T, include_current, eta):
    torch.manual_seed(0)
    v = torch.randn(2, 2, T, 3, dtype=F64, requires_grad=True)
    eta = torch.tensor(eta, dtype=F64, requires_grad=True)
    s0 = torch.randn(2, 2, 3, dtype=F64, requires_grad=True)

    def fn(v, eta, s0):
        return momentum_ema(v, eta, include_current, s0, output_final_state=True, chunk_size=4)

    assert torch.autograd.gradcheck(fn, (v, eta, s0))
    if T == 11:  # second derivatives of the chunked path (the one-token path is plain autograd)
        assert torch.autograd.gradgradcheck(fn, (v, eta, s0))


@pytest.mark.parametrize("T", [1, 3, 13])
def test_multirate_gradcheck_through_states(T):
    torch.manual_seed(0)
    v = torch.randn(1, T, 2, dtype=F64, requires_grad=True)
    p = (0.2 + 0.6 * torch.rand(2, 3, dtype=F64)).requires_grad_()
    gamma = torch.randn(2, 3, dtype=F64, requires_grad=True)
    s0 = torch.randn(1, 2, 3, dtype=F64, requires_grad=True)

    def fn(v, p, g, s0):
        return multirate_ema(v, p, g, s0, output_final_state=True, chunk_size=4)

    assert torch.autograd.gradcheck(fn, (v, p, gamma, s0))


@pytest.mark.parametrize("include_current", [False, True])
def test_momentum_token_by_token_after_prefix(include_current):
    torch.manual_seed(0)
    T, T0 = 13, 6
    v = torch.randn(2, 3, T, 4, dtype=F64)
    eta = torch.tensor([0.0, 0.5, 0.9], dtype=F64)
    full = mom(v, eta, include_current=include_current, chunk_size=4)
    for start in (0, T0):  # from scratch, and after a prefix in one pass
        state, outs = None, []
        if start:
            out, state = momentum_ema(v[:, :, :start], eta, include_current, output_final_state=True)
            outs.append(out)
        for t in range(start, T):
            out, state = momentum_ema(
                v[:, :, t : t + 1], eta, include_current, state, output_final_state=True
            )
            outs.append(out)
        torch.testing.assert_close(torch.cat(outs, dim=2), full)


def test_multirate_token_by_token_after_prefix():
    torch.manual_seed(0)
    T, T0, C, R = 23, 9, 3, 4
    v = torch.randn(2, T, C, dtype=F64)
    p, gamma = torch.rand(C, R, dtype=F64) * 0.99, torch.randn(C, R, dtype=F64)
    full = mr(v, p, gamma, chunk_size=4)
    for start in (0, T0):
        state, outs = None, []
        if start:
            out, state = multirate_ema(v[:, :start], p, gamma, output_final_state=True)
            outs.append(out)
        for t in range(start, T):
            out, state = multirate_ema(v[:, t : t + 1], p, gamma, state, output_final_state=True)
            outs.append(out)
        torch.testing.assert_close(torch.cat(outs, dim=1), full)


def test_states_stay_float32_for_low_precision_inputs():
    torch.manual_seed(0)
    v = torch.randn(2, 3, 40, 4).bfloat16()
    eta = torch.tensor([0.5, 0.9, 0.999])
    out, state = momentum_ema(v, eta, True, output_final_state=True, chunk_size=8)
    assert out.dtype == torch.bfloat16 and state.dtype == torch.float32  # the running sum stays fp32
    torch.testing.assert_close(state, momentum_ema(v.float(), eta, True, output_final_state=True)[1])
    step, state2 = momentum_ema(v[:, :, :1], eta, True, state, output_final_state=True)
    assert step.dtype == torch.bfloat16 and state2.dtype == torch.float32
    torch.testing.assert_close(state2, eta[:, None] * state + v[:, :, 0].float())
    x, p, gamma = torch.ones(3, 5, 4).bfloat16(), torch.full((4, 2), 0.5), torch.ones(4, 2)
    out, state = multirate_ema(x, p, gamma, output_final_state=True)
    assert out.dtype == torch.bfloat16 and state.dtype == torch.float32 and state.shape == (3, 4, 2)
    out, state = multirate_ema(x[:, :1], p, gamma, state, output_final_state=True)
    torch.testing.assert_close(
        out.float(), torch.full((3, 1, 4), 2 * (2 - 0.5**5))
    )  # 2 rates x sum_{l<6} 0.5^l


def test_one_token_step_skips_the_rate_check_but_not_the_first_call():
    # continuing a state is a decoding step: no device sync per token for a tensor rate's range
    v, s = torch.zeros(1, 2, 1, 3), torch.zeros(1, 2, 3)
    bad = torch.tensor([0.5, 1.5])
    momentum_ema(v, bad, initial_state=s)
    with pytest.raises(ValueError, match="eta must lie"):
        momentum_ema(v, bad)


def test_empty_sequence():
    v, x, p = torch.zeros(2, 3, 0, 4), torch.zeros(2, 0, 5), torch.full((5, 2), 0.5)
    assert mom(v, 0.5).shape == v.shape
    out, state = momentum_ema(v, 0.5, output_final_state=True)
    assert out.shape == v.shape and state.shape == (2, 3, 4) and state.abs().sum() == 0
    assert mr(x, p, p).shape == x.shape
    out, state = multirate_ema(x, p, p, output_final_state=True)
    assert out.shape == x.shape and state.shape == (2, 5, 2) and state.abs().sum() == 0
    # an empty continuation hands its initial state through
    s = torch.randn(2, 3, 4)
    assert momentum_ema(v, 0.5, initial_state=s, output_final_state=True)[1] is s


# -----------------------------------------------------------------------------
# validation: clear ValueErrors that name the problem and the offending value


def _v(*shape):
    return torch.zeros(*shape)


P_OK = torch.full((4, 2), 0.5)

BAD_CALLS = [
    (lambda: mom(_v(1, 4, 5, 2), 1.2), r"eta must lie in \[0, 1\), got 1\.2"),
    (lambda: mom(_v(1, 4, 5, 2), 1.0), r"eta must lie in \[0, 1\), got 1"),
    (lambda: mom(_v(1, 4, 5, 2), -0.1), r"eta must lie in \[0, 1\), got -0\.1"),
    (lambda: mom(_v(1, 4, 5, 2), float("nan")), r"eta must lie in \[0, 1\), got nan"),
    (lambda: mom(_v(1, 4, 5, 2), torch.tensor(1.5)), r"eta must lie in \[0, 1\), got 1\.5"),
    # a float on a decoding step, or with check_rates=False: it costs no device sync (taken without a word: review)
    (lambda: mom(_v(1, 4, 1, 2), 1.5, initial_state=torch.zeros(1, 4, 2), output_final_state=True),
     r"eta must lie in \[0, 1\), got 1\.5"),
    (lambda: mom(_v(1, 4, 5, 2), -2.0, check_rates=False), r"eta must lie in \[0, 1\), got -2"),
    # a rate below 1 that rounds to 1 in the sums' float32: an undamped cumulative sum (found by review)
    (lambda: mom(_v(1, 4, 5, 2), 1 - 1e-9), r"eta=0\.999999999 rounds to 1 in float32, the sums' precision"),
    (lambda: mom(_v(1, 4, 5, 2), torch.tensor(1 - 1e-9, dtype=torch.float64)),
     r"eta \(as float32, the sums' precision\) must lie in \[0, 1\), got 1"),
    (lambda: mom(_v(1, 0, 5, 2), 0.5), r"momentum_ema: v has no heads \(shape \(1, 0, 5, 2\), H=0\)"),
    (lambda: mr(_v(2, 5, 4), P_OK[:, :0], P_OK[:, :0]), r"multirate_ema: p has no rates \(shape \(4, 0\)\)"),
    (
        lambda: mom(_v(1, 2, 5, 2), torch.tensor([0.5, 1.0], requires_grad=True)),
        r"eta must lie in \[0, 1\), got \[0\.5, 1\]",
    ),
    (
        lambda: mom(_v(1, 4, 5, 2), torch.full((3,), 0.5)),
        r"eta has shape \(3,\) but v has H=4 heads; .* one rate per head \(shape \(4,\)\)",
    ),
    (lambda: mom(_v(1, 4, 5, 2), torch.full((4, 1), 0.5)), r"eta has shape \(4, 1\) but v has H=4"),
    (lambda: mom(_v(4, 5, 2), 0.5), r"v must be a 4-D tensor \(B, H, T, D\), got shape \(4, 5, 2\)"),
    (lambda: mom(torch.zeros(1, 4, 5, 2, dtype=torch.long), 0.5), r"v must be a floating-point"),
    (lambda: mom(_v(1, 4, 5, 2), 0.5, chunk_size=1), r"chunk_size must be an int >= 2, got 1"),
    (
        lambda: momentum_ema(_v(1, 4, 1, 2), torch.full((3,), 0.5), initial_state=_v(1, 4, 2)),
        r"eta has shape \(3,\)",
    ),
    (
        lambda: momentum_ema(_v(1, 4, 5, 2), 0.5, initial_state=_v(1, 4, 1, 2)),
        r"momentum_ema: initial_state must have shape \(1, 4, 2\) \(B, H, D\), got \(1, 4, 1, 2\)",
    ),
    (
        lambda: mr(_v(2, 5, 4), P_OK + 0.6, P_OK),
        r"multirate_ema: p must lie in \[0, 1\), got .*1\.1",
    ),
    (lambda: mr(_v(2, 5, 4), -P_OK, P_OK), r"p must lie in \[0, 1\), got .*-0\.5"),
    (
        lambda: mr(_v(2, 5, 3), P_OK, P_OK),
        r"p must be a \(C, R\) tensor with C=3 .*got shape \(4, 2\)",
    ),
    (lambda: mr(_v(2, 5, 4), P_OK[:, 0], P_OK), r"p must be a \(C, R\) tensor with C=4"),
    (
        lambda: mr(_v(2, 5, 4), P_OK, P_OK[:, :1]),
        r"gamma must have p's shape \(4, 2\), got shape \(4, 1\)",
    ),
    (lambda: mr(_v(2, 4), P_OK, P_OK), r"v must be a 3-D tensor \(B, T, C\), got shape \(2, 4\)"),
    (lambda: multirate_ema(_v(2, 1, 4), P_OK * 2, P_OK), r"multirate_ema: p must lie"),
    (
        lambda: multirate_ema(_v(2, 1, 3), P_OK, P_OK, initial_state=_v(2, 3, 2)),
        r"multirate_ema: p must be a \(C, R\)",
    ),
    (
        lambda: multirate_ema(_v(2, 5, 4), P_OK, P_OK, initial_state=_v(2, 2, 4)),
        r"multirate_ema: initial_state must have shape \(2, 4, 2\) \(B, C, R\), got \(2, 2, 4\)",
    ),
]


@pytest.mark.parametrize("call,match", BAD_CALLS, ids=range(len(BAD_CALLS)))
def test_bad_arguments_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_eta_of_wrong_type_raises_type_error():
    with pytest.raises(TypeError, match="eta must be a float or a tensor, got str"):
        mom(_v(1, 4, 5, 2), "0.5")


# -----------------------------------------------------------------------------
# linear cost: no op in the forward or backward pass produces anything T x T sized


class _LargestOutput(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the largest number of elements of any tensor an aten op allocates (views and expands of its
    inputs, which share their storage, allocate nothing and are not counted)."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.max_numel = max(self.max_numel, t.numel())
        return out


def test_memory_is_linear_in_T():
    torch.manual_seed(0)
    T = 8192
    v = torch.randn(1, 2, T, 1, requires_grad=True)  # heads of one channel: no (c x c) block may be repeated per chunk
    for eta in (torch.tensor([0.9, 0.5], requires_grad=True), torch.tensor(0.9, requires_grad=True)):
        with _LargestOutput() as mode:
            mom(v, eta, chunk_size=64).sum().backward()
        # a T x T matrix would be 67M elements per head; chunking keeps every tensor at about v's size
        assert mode.max_numel <= 2 * v.numel(), mode.max_numel

    x = torch.randn(1, T // 2, 16, requires_grad=True)
    p = torch.full((16, 8), 0.9, requires_grad=True)
    gamma = torch.randn(16, 8, requires_grad=True)
    with _LargestOutput() as mode:
        mr(x, p, gamma, chunk_size=64).sum().backward()
    # no (B, T, C, R) tensor either (that would be 8 x x's size)
    assert mode.max_numel <= 2 * x.numel(), mode.max_numel


# -----------------------------------------------------------------------------
# device-agnostic: the same numbers on CUDA (skipped without a GPU)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    v, eta = torch.randn(2, 4, 300, 8), torch.tensor([0.0, 0.5, 0.9, 0.999])
    x, p, gamma = torch.randn(2, 300, 6), torch.rand(6, 8) * 0.99, torch.randn(6, 8)
    torch.testing.assert_close(mom(v.cuda(), eta.cuda()).cpu(), mom(v, eta), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mom(v.cuda(), 0.9).cpu(), mom(v, 0.9), rtol=1e-4, atol=1e-4)
    out = mr(x.cuda(), p.cuda(), gamma.cuda()).cpu()
    torch.testing.assert_close(out, mr(x, p, gamma), rtol=1e-4, atol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = mom(v.cuda(), eta.cuda())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.cpu(), mom(v, eta), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- what the parity tests do not reach
# (mutation testing found these unguarded: messages, dtypes at T <= 1, the rate check on short inputs)


def test_fmt_shows_at_most_eight_values():
    from momattn.ops import _fmt

    assert _fmt(torch.tensor(0.25)) == "0.25"
    assert _fmt(torch.arange(8.0)) == "[0, 1, 2, 3, 4, 5, 6, 7]"
    assert _fmt(torch.arange(10.0)) == "[0, 1, 2, 3, 4, 5, 6, 7, ...]"


def test_errors_name_the_function_and_the_bad_values():
    v = torch.zeros(1, 2, 4, 3)
    with pytest.raises(ValueError, match=r"^momentum_ema: chunk_size must be an int >= 2, got 1$"):
        momentum_ema(v, 0.5, chunk_size=1)
    with pytest.raises(ValueError, match=r"^momentum_ema: eta must lie in \[0, 1\), got \[0.5, 1.5\]$"):
        momentum_ema(v, torch.tensor([0.5, 1.5]))
    x = torch.zeros(1, 4, 4)  # (B, T, C); p: (C, R) = 8 rates, all shown
    p = torch.full((4, 2), 0.5)
    p[3, 1] = 1.0
    with pytest.raises(ValueError, match=r"^multirate_ema: p must lie in \[0, 1\), got \[0.5, 0.5, 0.5, 0.5, 0.5, 0.5, "
                                         r"0.5, 1\]$"):
        multirate_ema(x, p, torch.ones(4, 2))
    p = torch.full((5, 2), 0.5)  # 10 rates: a count and the first bad one
    p[3, 0], p[4, 1] = 1.0, 2.0
    with pytest.raises(ValueError, match=r"^multirate_ema: p must lie in \[0, 1\), got 2 values outside it, e\.g\. 1$"):
        multirate_ema(torch.zeros(1, 4, 5), p, torch.ones(5, 2))
    with pytest.raises(ValueError, match=r"p must be a \(C, R\) tensor with C=4 .* got shape list$"):
        multirate_ema(x, [[0.5, 0.5]] * 4, torch.ones(4, 2))
    with pytest.raises(ValueError, match=r"gamma must have p's shape \(4, 2\), got shape list$"):
        multirate_ema(x, torch.full((4, 2), 0.5), [[1.0, 1.0]] * 4)


def test_rates_are_checked_whenever_the_input_is_not_a_single_decoding_step():
    p, gamma = torch.full((3, 2), 0.5), torch.ones(3, 2)
    p[0, 0] = 1.5
    state = torch.zeros(1, 3, 2)
    for T in (2, 5):  # a cached state does not exempt a multi-token call
        with pytest.raises(ValueError, match="p must lie in"):
            multirate_ema(torch.zeros(1, T, 3), p, gamma, initial_state=state)
    multirate_ema(torch.zeros(1, 1, 3), p, gamma, initial_state=state)  # one decoding step: checked at prefill


@pytest.mark.parametrize("T", [0, 1, 5])
def test_final_states_stay_in_the_accumulation_dtype_at_every_length(T):
    v = torch.randn(2, 3, T, 4).to(torch.bfloat16)  # (B, H, T, D)
    y, s = momentum_ema(v, 0.5, output_final_state=True)
    assert y.dtype == torch.bfloat16 and y.shape == v.shape
    assert s.dtype == torch.float32 and s.shape == (2, 3, 4)
    x = torch.randn(2, T, 4).to(torch.bfloat16)  # (B, T, C)
    y, s = multirate_ema(x, torch.full((4, 2), 0.5), torch.ones(4, 2), output_final_state=True)
    assert y.dtype == torch.bfloat16 and s.dtype == torch.float32 and s.shape == (2, 4, 2)


@pytest.mark.parametrize("T", [0, 1, 5])
def test_no_final_state_unless_asked(T):
    assert momentum_ema(torch.randn(1, 2, T, 3), 0.5)[1] is None
    assert multirate_ema(torch.randn(1, T, 3), torch.full((3, 2), 0.5), torch.ones(3, 2))[1] is None


def test_is_compiling_follows_torch_compiler(monkeypatch):
    from momattn import ops

    assert ops._is_compiling() is False
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert ops._is_compiling() is True
    monkeypatch.delattr(torch.compiler, "is_compiling")  # a torch without it (pyproject allows >= 2.2)
    assert ops._is_compiling() is False


@pytest.mark.parametrize("eta", [0.5, "learnable"])
def test_momentum_compiles_as_one_graph_with_the_same_gradients(eta):
    """torch.compile (fullgraph: no graph break, the custom backward included) gives eager's values and
    gradients; aot_eager traces forward and backward without generating code (seconds, any machine)."""
    torch.manual_seed(0)
    v0 = torch.randn(2, 3, 70, 4)
    results = []
    for fn in (mom, torch.compile(mom, fullgraph=True, backend="aot_eager")):
        v = v0.clone().requires_grad_()
        e = torch.tensor([0.2, 0.5, 0.9], requires_grad=True) if eta == "learnable" else eta
        (fn(v, e) * torch.linspace(-1, 1, 70)[:, None]).sum().backward()
        results.append((v.grad, e.grad if eta == "learnable" else None))
    torch.testing.assert_close(results[0], results[1])


@pytest.mark.parametrize("include_current", [False, True])
@pytest.mark.parametrize("rate", [1e-30, 1e-15, 1e-7, 1e-5, 0.3, 0.999])
def test_learnable_rate_gradient_is_accurate_in_float32_at_every_rate(include_current, rate):
    """The rate's gradient in float32 matches float64 to float32 accuracy, tiny rates included (a formula that
    divided by the rate, or subtracted the values from an inclusive output, would lose it there)."""
    torch.manual_seed(0)
    v, w = torch.randn(2, 3, 40, 4, dtype=F64), torch.randn(2, 3, 40, 4, dtype=F64)
    grads = []
    for dtype in (F64, torch.float32):
        eta = torch.tensor(rate, dtype=dtype, requires_grad=True)
        (mom(v.to(dtype), eta, include_current=include_current, chunk_size=8) * w.to(dtype)).sum().backward()
        grads.append(eta.grad.double())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("eta", [0.6, "learnable"])
def test_backward_inside_autocast(eta):
    """A training step whose backward runs inside torch.autocast (as some loops do) works and matches fp32."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(12, 36)
    x = torch.randn(2, 37, 12)
    grads = []
    for autocast in (True, False):
        lin.zero_grad()
        e = torch.tensor([0.2, 0.5, 0.9], requires_grad=True) if eta == "learnable" else eta
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            v = lin(x)[..., 24:].view(2, 37, 3, 4).transpose(1, 2)
            mom(v, e, chunk_size=8).float().sum().backward()
        grads.append(lin.weight.grad.clone())
    assert ((grads[0] - grads[1]).norm() / grads[1].norm()).item() < 0.02  # bf16 matmuls: ~1% apart


def test_check_rates_false_skips_only_the_range_check():
    v = torch.randn(1, 2, 6, 4)
    with pytest.raises(ValueError, match="eta must lie in"):
        momentum_ema(v, torch.tensor(1.5))
    with pytest.raises(ValueError, match="p must lie in"):
        multirate_ema(v[0], torch.full((4, 2), 1.5), torch.ones(4, 2))
    out, _ = momentum_ema(v, torch.tensor(0.5), check_rates=False)  # valid rates: the same result as checked
    torch.testing.assert_close(out, momentum_ema(v, torch.tensor(0.5))[0])
    assert torch.isfinite(momentum_ema(v, torch.tensor(1.5), check_rates=False)[0]).all()  # unchecked, computed
    with pytest.raises(ValueError, match="v must be a 4-D tensor"):  # the other checks stay
        momentum_ema(v[0], 0.5, check_rates=False)
