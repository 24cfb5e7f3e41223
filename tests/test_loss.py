"""The blocked LM loss (momattn/loss.py) against F.cross_entropy over materialised logits: value and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_gpt

from momattn.loss import linear_cross_entropy


def _inputs(n=37, c=8, v=29, dtype=torch.float64, ignored=(3, 20)):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, c, generator=g, dtype=dtype)
    w = torch.randn(v, c, generator=g, dtype=dtype) * 0.5
    y = torch.randint(0, v, (n,), generator=g)
    y[list(ignored)] = -100
    return h, w, y


def _grads(fn, h, w):
    h, w = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss = fn(h, w)
    loss.backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("rows", [1, 5, 37, 512])  # blocks of one row, uneven blocks, one block, a block > N
def test_value_and_gradients_equal_cross_entropy_over_the_logits(rows):
    h, w, y = _inputs()
    ref = _grads(lambda h, w: F.cross_entropy(h @ w.t(), y), h, w)
    got = _grads(lambda h, w: linear_cross_entropy(h, w, y, rows=rows), h, w)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_gradient_scales_with_the_upstream_gradient():
    h, w, y = _inputs()
    ref = _grads(lambda h, w: 3.5 * F.cross_entropy(h @ w.t(), y), h, w)
    got = _grads(lambda h, w: 3.5 * linear_cross_entropy(h, w, y, rows=8), h, w)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_bf16_autocast_rounds_as_the_plain_path_does():
    h, w, y = _inputs(n=64, c=32, v=100, dtype=torch.float32, ignored=())
    exact = _grads(lambda h, w: F.cross_entropy(h.double() @ w.double().t(), y), h, w)

    def plain(h, w):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return F.cross_entropy(F.linear(h, w).float(), y)

    def blocked(h, w):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return linear_cross_entropy(h, w, y, rows=16)

    p, b = _grads(plain, h, w), _grads(blocked, h, w)
    for got, want in zip(b, p):
        assert got.dtype == want.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=2e-2, atol=1e-4)  # both carry bf16 logits and gradients
    for got, plain_, ex in zip(b, p, exact):  # and the blocked path is no further from float64 than the plain one
        err = (got.double() - ex.double()).norm() / ex.double().norm().clamp_min(1e-30)
        err_plain = (plain_.double() - ex.double()).norm() / ex.double().norm().clamp_min(1e-30)
        assert err <= 1.5 * err_plain + 1e-6
        assert err > 1e-6  # bf16 really was used (not silently float32)


def test_without_gradients_it_only_measures():
    h, w, y = _inputs()
    with torch.no_grad():
        got = linear_cross_entropy(h.requires_grad_(), w, y, rows=4)
    assert not got.requires_grad
    torch.testing.assert_close(got, F.cross_entropy(h.detach() @ w.t(), y), rtol=1e-12, atol=1e-14)


def test_all_targets_ignored_gives_nan_like_cross_entropy():
    h, w, y = _inputs()
    y[:] = -100
    assert torch.isnan(F.cross_entropy(h @ w.t(), y)) and torch.isnan(linear_cross_entropy(h, w, y))


@pytest.mark.parametrize("kind", ["vanilla", "momentum", "multirate_ema"])
def test_gpt_targets_equal_cross_entropy_of_its_logits_with_the_same_parameter_gradients(kind):
    torch.manual_seed(0)
    model = tiny_gpt(kind).double()
    idx = torch.randint(0, model.config.vocab_size, (2, 12))
    y = torch.randint(0, model.config.vocab_size, (2, 12))
    ref = F.cross_entropy(model(idx).flatten(0, 1), y.flatten())
    ref.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    got = model(idx, targets=y)
    got.backward()
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=1e-10, atol=1e-13, msg=n)


def test_select_and_targets_together_are_refused():
    model = tiny_gpt("vanilla")
    idx = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="select= or targets="):
        model(idx, select=(torch.tensor([0]), torch.tensor([3])), targets=idx)


def test_targets_must_match_the_rows_and_be_classes():
    h, w, y = _inputs()
    with pytest.raises(ValueError, match="targets for 37 rows"):
        linear_cross_entropy(h, w, y[:-1])
    y[0] = -5  # negative but not the ignore index: F.cross_entropy refuses it, and so does this
    with pytest.raises((RuntimeError, IndexError)):
        linear_cross_entropy(h, w, y)


def test_float16_takes_the_plain_form():
    from momattn.loss import lm_loss

    h, w, y = _inputs(dtype=torch.float32)
    with pytest.raises(ValueError, match="float16"):
        with torch.autocast("cpu", dtype=torch.float16):
            linear_cross_entropy(h, w, y)
    with torch.autocast("cpu", dtype=torch.float16):
        got = lm_loss(h, w, y)
        want = F.cross_entropy(F.linear(h, w).float(), y)
    torch.testing.assert_close(got, want)


def test_a_compiled_model_keeps_the_blocked_loss_eager_and_equal():
    """torch.compile traces the model but not the blocked loss (a loop over row blocks): the same loss and gradients,
    one graph, whether before_compile ran first or the trace wraps the loss itself."""
    import torch._dynamo

    from momattn import loss
    from momattn.model import GPT, GPTConfig

    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=1, n_head=2, n_embd=32))
    x = torch.randint(0, 64, (2, 32))
    want = m(x, targets=x)
    for primed in (False, True):
        loss._eager_loss = None
        if primed:
            loss.before_compile()
        torch._dynamo.reset()
        explained = torch._dynamo.explain(m)(x, targets=x)
        assert explained.graph_count == 1 and explained.graph_break_count == 0
        assert any("disable" in str(r.reason) for r in explained.break_reasons)  # the loss was skipped, not traced
        got = torch.compile(m, backend="eager")(x, targets=x)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch._dynamo.reset()


def test_the_entry_points_light_modules_load_without_torch_dynamo_or_lightning():
    """`import momattn` and the config check load no torch; the model no torch._dynamo (the blocked loss wraps
    itself on first use): seconds at every evaluate.py start and every command-line typo."""
    import subprocess
    import sys

    code = ("import sys, momattn, momattn.cli; a = 'torch' in sys.modules; import momattn.config, momattn.model; "
            "print(a, 'torch._dynamo' in sys.modules, 'lightning' in sys.modules, momattn.ops.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "False", "momattn.ops"]  # a submodule is still an attribute once asked for
