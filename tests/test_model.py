"""The model: attention variants against naive formulas, cached decoding parity, generation, config errors."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_gpt

from momattn import GPT, AttentionConfig, GPTConfig
from momattn.errors import ConfigError
from momattn.model import MomentumAttention, MultiRateEMAAttention
from momattn.reference import causal_attention_naive, momentum_ema_naive

VARIANTS = [
    ("vanilla", {}),
    ("momentum", {}),
    ("momentum", {"learnable_eta": True, "include_current": True, "eta": 0.7}),
    ("multirate_ema", {"n_rates": 3}),
]


def tiny(kind="vanilla", pos_emb="learned", block_size=64, **att) -> GPT:
    return tiny_gpt(kind, pos_emb=pos_emb, block_size=block_size, **att).double()  # float64 for parity checks


def split_heads(attn, x):
    B, T, C = x.shape
    q, k, v = attn.c_attn(x).split(C, dim=2)
    return [t.view(B, T, attn.n_head, C // attn.n_head).transpose(1, 2) for t in (q, k, v)]


@pytest.mark.parametrize("include_current", [False, True])
@pytest.mark.parametrize("learnable", [False, True])
def test_momentum_layer_equals_per_position_loop_of_the_formula(include_current, learnable):
    model = tiny("momentum", eta=0.6, include_current=include_current, learnable_eta=learnable)
    attn: MomentumAttention = model.blocks[0].attn
    if learnable:  # distinct rates per head, so a head mix-up would show
        attn.eta_logit.data = torch.tensor([-1.0, 1.5], dtype=torch.float64)
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    q, k, v = split_heads(attn, x)
    eta = attn.eta.detach().reshape(-1) * torch.ones(2, dtype=torch.float64)  # (H,)
    y = causal_attention_naive(q, k, v)
    # MoAttn: Attn(q_t) + sum_{i<t} eta^(t-i) v_i   (i <= t with include_current), loops in momattn.reference
    mom, _ = momentum_ema_naive(v, eta, include_current)
    expected = attn.c_proj((y + mom).transpose(1, 2).reshape(2, 11, 16))
    torch.testing.assert_close(attn(x), expected, rtol=1e-9, atol=1e-10)


def test_multirate_layer_equals_loop_of_the_authors_kernel():
    model = tiny("multirate_ema", n_rates=3)
    attn: MultiRateEMAAttention = model.blocks[0].attn
    x = torch.randn(1, 9, 16, dtype=torch.float64)
    q, k, v = split_heads(attn, x)
    vm = v.transpose(1, 2).reshape(1, 9, 16)  # merged values (B, T, C)
    p, g = torch.sigmoid(attn.delta), attn.gamma * math.sqrt(1 / 16)
    kernel = torch.stack([(g * p**lag).sum(-1) for lag in range(9)], dim=-1)  # k[c, l] = sum_n g p^l, l = 0..T-1
    mem = torch.zeros_like(vm)
    for t in range(9):
        for i in range(t + 1):
            mem[:, t] += kernel[:, t - i] * vm[:, i]
    y = causal_attention_naive(q, k, v).transpose(1, 2).reshape(1, 9, 16)
    torch.testing.assert_close(attn(x), attn.c_proj(y + mem), rtol=1e-9, atol=1e-10)


def test_vanilla_adds_nothing_and_momentum_changes_the_output():
    torch.manual_seed(1)
    idx = torch.randint(0, 37, (2, 20))
    a = tiny("vanilla")(idx)
    b = tiny("momentum", eta=0.5)(idx)
    c = tiny("momentum", eta=0.0)(idx)  # eta = 0: the momentum term vanishes
    assert a.shape == (2, 20, 37)
    torch.testing.assert_close(a, c)
    assert (a - b).abs().max() > 1e-4


@pytest.mark.parametrize("pos_emb", ["learned", "rotary"])
@pytest.mark.parametrize("kind,att", VARIANTS)
def test_cached_decoding_equals_full_forward(kind, att, pos_emb):
    model = tiny(kind, pos_emb, **att).float()
    idx = torch.randint(0, 37, (2, 60))
    full = model(idx)
    cache = model.new_cache()
    # a prefix, a block that continues it from the cached state, then one token at a time
    parts = [model(idx[:, :30], cache=cache), model(idx[:, 30:45], cache=cache)]
    parts += [model(idx[:, t : t + 1], cache=cache) for t in range(45, 60)]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 60
    if kind != "vanilla":  # the layer keeps the op's float32 final state: (B, H, D) or (B, C, R)
        state = cache.layers[0].state
        assert state.dtype == torch.float32
        assert state.shape == ((2, 2, 8) if kind == "momentum" else (2, 16, att["n_rates"]))


@pytest.mark.parametrize("kind,att", VARIANTS)
def test_prefix_encoded_once_serves_several_continuations(kind, att):
    model = tiny(kind, **att)
    idx = torch.randint(0, 37, (3, 30))
    idx[:, :18] = idx[0, :18]  # a shared prefix of 18 tokens
    cache = model.new_cache()
    model(idx[:1, :18], cache=cache)
    out = model(idx[:, 18:], cache=cache.expand(3))
    torch.testing.assert_close(out, model(idx)[:, 18:], rtol=1e-9, atol=1e-9)
    assert cache.length == 18  # expand() never modifies the shared prefix
    torch.testing.assert_close(model(idx[:, 18:], cache=cache.expand(3)), out)


@pytest.mark.parametrize("pos_emb", ["learned", "rotary"])
@pytest.mark.parametrize("kind,att", VARIANTS)
def test_rows_continue_a_shared_prefix_over_several_passes(kind, att, pos_emb):
    """cache.expand: a block of each row's own tokens, then one token at a time, all on the shared prefix."""
    model = tiny(kind, pos_emb, **att)
    idx = torch.randint(0, 37, (3, 40))
    idx[:, :17] = idx[0, :17]
    cache = model.new_cache()
    model(idx[:1, :17], cache=cache)
    rows = cache.expand(3)
    parts = [model(idx[:, 17:29], cache=rows)] + [model(idx[:, t : t + 1], cache=rows) for t in range(29, 40)]
    torch.testing.assert_close(torch.cat(parts, 1), model(idx)[:, 17:], rtol=1e-9, atol=1e-9)
    assert rows.length == 40 and cache.length == 17 and cache.layers[0].k.shape[0] == 1
    with pytest.raises(ValueError, match="batch size 1"):
        rows.expand(2)  # an expanded cache is not expanded again


@pytest.mark.parametrize("kind,att", VARIANTS)
def test_a_shared_cache_takes_empty_passes_and_an_empty_prefix(kind, att):
    model = tiny(kind, **att)
    idx = torch.randint(0, 37, (2, 12))
    idx[1, :5] = idx[0, :5]
    cache = model.new_cache()
    model(idx[:1, :5], cache=cache)
    rows = cache.expand(2)
    assert model(idx[:, :0], cache=rows).shape == (2, 0, 37)  # no tokens: nothing to attend with
    torch.testing.assert_close(model(idx[:, 5:], cache=rows), model(idx)[:, 5:], rtol=1e-9, atol=1e-9)
    empty = model.new_cache()
    model(idx[:1, :0], cache=empty)  # a prefix of no tokens
    torch.testing.assert_close(model(idx, cache=empty.expand(2)), model(idx), rtol=1e-9, atol=1e-9)


def test_a_shared_prefix_with_attention_dropout_takes_a_full_copy():
    """In training mode with attention dropout the shared-prefix path falls back to SDPA over a copy (tiny p)."""
    model = tiny("momentum")
    for block in model.blocks:
        block.attn.dropout = 1e-12  # the branch, with (almost surely) nothing dropped
    idx = torch.randint(0, 37, (2, 30))
    idx[1, :12] = idx[0, :12]
    cache = model.new_cache()
    model(idx[:1, :12], cache=cache)
    model.train()
    out = model(idx[:, 12:], cache=cache.expand(2))
    torch.testing.assert_close(out, model(idx)[:, 12:], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.bfloat16, 1e-2)])
def test_shared_prefix_attention_equals_sdpa_over_the_concatenation(dtype, tol):
    from momattn.model import shared_prefix_attention

    g = torch.Generator().manual_seed(3)
    B, H, T, P, S, D = 3, 2, 5, 9, 7, 4  # P own keys (T of them the queries'), S shared
    q = torch.randn(B, H, T, D, generator=g, dtype=torch.float64) * 3
    k, v = (torch.randn(B, H, P, D, generator=g, dtype=torch.float64) * 3 for _ in range(2))
    kp, vp = (torch.randn(1, H, S, D, generator=g, dtype=torch.float64) * 3 for _ in range(2))
    q, k, v, kp, vp = (t.to(dtype).double() for t in (q, k, v, kp, vp))  # the reference gets the same inputs
    K, V = torch.cat([kp.expand(B, -1, -1, -1), k], 2), torch.cat([vp.expand(B, -1, -1, -1), v], 2)
    att = (q @ K.transpose(-1, -2)) / math.sqrt(D)  # (B, H, T, S+P); query i sits at position S + P - T + i
    seen = torch.ones(T, S + P, dtype=torch.bool).tril(diagonal=S + P - T)
    ref = att.masked_fill(~seen, float("-inf")).softmax(-1) @ V
    got = shared_prefix_attention(*(t.to(dtype) for t in (q, k, v, kp, vp)))
    assert got.dtype == dtype and got.shape == (B, H, T, D)
    torch.testing.assert_close(got.double(), ref, rtol=tol, atol=tol)


def test_shared_prefix_attention_ignores_autocast():
    from momattn.model import shared_prefix_attention

    q, k, v = (torch.randn(2, 2, 3, 8) for _ in range(3))
    kp, vp = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = shared_prefix_attention(q, k, v, kp, vp)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, shared_prefix_attention(q, k, v, kp, vp), rtol=0, atol=0)


def test_gradients_through_a_shared_prefix_equal_those_of_the_full_forward():
    model = tiny("momentum")
    idx = torch.randint(0, 37, (2, 20))
    idx[1, :8] = idx[0, :8]
    cache = model.new_cache()
    model(idx[:1, :8], cache=cache)
    model(idx[:, 8:], cache=cache.expand(2)).square().sum().backward()
    shared = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model(idx)[:, 8:].square().sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(shared[n], p.grad, rtol=1e-9, atol=1e-12, msg=n)


@pytest.mark.parametrize("kind,att", VARIANTS)
def test_selected_logits_equal_the_full_logits_there(kind, att):
    model = tiny(kind, **att)
    idx = torch.randint(0, 37, (3, 20))
    rows, pos = torch.tensor([0, 2, 2, 1]), torch.tensor([19, 0, 7, 7])
    torch.testing.assert_close(model(idx, select=(rows, pos)), model(idx)[rows, pos], rtol=1e-12, atol=1e-12)


def test_generate_greedy_matches_argmax_of_full_forward():
    model = tiny("momentum", block_size=24)
    idx = torch.randint(0, 37, (1, 5))
    encoded = []  # tokens fed per forward: 5 (the prompt), 1 per step until the cache holds 24, then a window of 24
    real = model.last_logits
    model.last_logits = lambda x, cache: encoded.append(x.shape[1]) or real(x, cache)
    out = model.generate(idx, max_new_tokens=30, temperature=0)  # runs past the context: a sliding window
    assert encoded == [5] + [1] * 19 + [24] * 10, encoded  # (the old rule re-encoded 23; none after the last token)
    assert out.shape == (1, 35)
    for t in range(5, 35):
        assert out[0, t] == model(out[:, max(0, t - 24):t])[0, -1].argmax()
    g = torch.Generator().manual_seed(0)
    sampled = model.generate(idx, 10, temperature=0.8, top_k=5, generator=g)
    assert sampled.shape == (1, 15) and int(sampled.max()) < 37


def test_sequence_longer_than_context_is_refused():
    with pytest.raises(ValueError, match="exceeds the model's context"):
        tiny(block_size=8)(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize("kwargs,match", [
    ({"n_embd": 30, "n_head": 4}, "does not divide"),
    ({"pos_emb": "alibi"}, "pos_emb"),
    ({"attention": {"kind": "momentum", "eta": 1.0}}, r"outside \[0, 1\)"),
    ({"dropout": 1.5}, "dropout"),
    ({"n_head": 0}, r"model.n_head=0 must be a whole number >= 1"),  # not a ZeroDivisionError from the divisibility check
    ({"n_inner": -5}, r"model.n_inner=-5 must be a whole number >= 1, or null"),
    ({"n_inner": 0}, r"model.n_inner=0 must be a whole number >= 1"),  # was silently 4 x n_embd
    # below 1 in float64, 1 in the float32 the model holds it in (a sum that never decays)
    ({"attention": {"kind": "momentum", "eta": 0.99999999}}, "rounds to 1 in float32.*at most 0.9999999"),
    ({"attention": {"kind": "momentum", "eta": 0.9999999999, "learnable_eta": True}}, "rounds to 1 in float32"),
    ({"attention": {"kind": "momentum", "eta": 1e-320, "learnable_eta": True}}, "rounds to 0 in float32.*at least"),
    ({"attention": {"kind": "momentum", "eta": "0.5"}}, "must be a number"),
    # the Python API (review): a TypeError deep in torch, or settings accepted and ignored
    ({"n_embd": 16.0, "n_head": 2}, r"^model.n_embd=16.0 must be a whole number >= 1$"),
    ({"n_layer": True}, r"^model.n_layer=True must be a whole number"),
    ({"attention": {"kind": "vanilla", "learnable_eta": True}}, r"^attention.learnable_eta=true is read by momentum "
                                                               r"attention only, not attention.kind='vanilla'"),
    ({"attention": {"kind": "multirate_ema", "include_current": True}}, r"^attention.include_current=true is read"),
    ({"attention": {"kind": "multirate_ema", "n_rates": 2.5}}, r"^attention.n_rates=2.5 must be a whole number"),
    ({"n_embd": 30, "n_head": 10, "pos_emb": "rotary"}, r"head size \(n_embd / n_head = 30 / 10 = 3\); pick n_head "
                                                       r"among \[1, 3, 5, 15\]"),
    ({"n_embd": 33, "n_head": 3, "pos_emb": "rotary"}, r"model.n_embd=33 is odd, so no head size is even"),
])
def test_bad_model_config_names_the_culprit(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        GPTConfig(**kwargs)


def test_numpy_numbers_are_taken_as_python_ones():
    """The API's new whole-number check refused np.int64(32) as 'not a whole number' (flows review)."""
    import numpy as np

    cfg = GPTConfig(n_layer=np.int32(2), n_embd=np.int64(32), n_head=np.int64(2), n_inner=np.int64(64),
                    dropout=np.float32(0.25), attention={"kind": "momentum", "eta": np.float32(0.5)})
    assert (cfg.n_layer, cfg.n_embd, cfg.n_inner, cfg.dropout, cfg.attention.eta) == (2, 32, 64, 0.25, 0.5)
    assert type(cfg.n_embd) is int and type(cfg.attention.eta) is float
    assert AttentionConfig(kind="multirate_ema", n_rates=np.int64(4)).n_rates == 4
    with pytest.raises(ConfigError, match=r"^attention.eta=10000000000000000000... is too large a number$"):
        AttentionConfig(kind="momentum", eta=10**400)  # an OverflowError (second diff review)
    with pytest.raises(ConfigError, match=r"^model.dropout=10000000000000000000... is too large"):
        GPTConfig(dropout=10**400)
    with pytest.raises(ConfigError, match=r"model.n_embd=np.float64\(32.5\) must be a whole number"):
        GPTConfig(n_embd=np.float64(32.5))


def test_bad_attention_kind_and_eta():
    with pytest.raises(ConfigError, match="unknown"):
        AttentionConfig(kind="momentun")
    with pytest.raises(ConfigError, match=r"outside \[0, 1\)"):
        AttentionConfig(kind="momentum", eta=-0.1)


def test_learnable_eta_stays_in_range_and_gets_gradients(monkeypatch):
    model = tiny("momentum", eta=0.5, learnable_eta=True).float().train()
    idx = torch.randint(0, 37, (2, 16))
    model(idx).sum().backward()
    attn = model.blocks[0].attn
    assert attn.eta_logit.grad is not None and torch.isfinite(attn.eta_logit.grad).all()
    assert torch.allclose(attn.eta, torch.full((2,), 0.5))
    # in range however far training pushes it (the name's promise: it only checked the start), and the forward
    # stays finite at either end
    with torch.no_grad():
        attn.eta_logit.copy_(torch.tensor([-60.0, 60.0]))
    assert (attn.eta >= 0).all() and (attn.eta < 1).all() and attn.eta[0] < 1e-20 and attn.eta[1] > 1 - 1e-6
    assert torch.isfinite(model(idx)).all()
    torch.optim.SGD([attn.eta_logit], lr=1e6).step()  # a huge step along the gradient taken above
    assert ((attn.eta >= 0) & (attn.eta < 1)).all()
    # float32's sigmoid is exactly 1.0 above a logit of ~16.6 (eta=0.9999999 starts at 16.1): an undamped sum that
    # the checked ops refuse ran unchecked, its logit without a gradient to come back (found by review)
    from momattn.ops import momentum_ema, multirate_ema

    v = torch.randn(1, 2, 8, 4)
    momentum_ema(v, attn.eta, check_rates=True)  # in [0, 1): accepted
    mr = tiny("multirate_ema").float()
    with torch.no_grad():
        mr.blocks[0].attn.delta.fill_(60.0)
    p = torch.sigmoid(mr.blocks[0].attn.delta)
    assert (p == 1).all() and torch.isfinite(mr(idx)).all()
    captured = []
    monkeypatch.setattr("momattn.model.multirate_ema", lambda x, p, *a, **k: captured.append(p) or multirate_ema(
        x, p, *a, **k))
    mr(idx)
    assert (captured[0] < 1).all()
    multirate_ema(torch.randn(1, 8, mr.config.n_embd), captured[0], torch.ones_like(captured[0]), check_rates=True)


# ---------------------------------------------------------------- construction details a parity test cannot see
# (mutation testing found these unguarded)


def test_dropout_of_one_is_refused():
    with pytest.raises(ConfigError, match=r"model.dropout=1.0 must lie in \[0, 1\)"):
        GPTConfig(dropout=1.0)
    GPTConfig(dropout=0.99)


@pytest.mark.parametrize("pos_emb", ["learned", "rotary"])
def test_the_position_encoding_is_built_and_used(pos_emb):
    # without a position signal, attention is a set operation: the last position's output would not change when
    # the tokens before it are reordered
    model = tiny_gpt("vanilla", pos_emb=pos_emb)
    assert (model.wpe is not None) == (pos_emb == "learned")
    assert all((b.attn.rotary is not None) == (pos_emb == "rotary") for b in model.blocks)
    a, b = model(torch.tensor([[3, 7, 11, 5]]))[0, -1], model(torch.tensor([[11, 3, 7, 5]]))[0, -1]  # (V,)
    assert not torch.allclose(a, b, atol=1e-4)


def test_rotary_keeps_the_input_dtype():
    from momattn.model import Rotary

    rot = Rotary(8, 16)
    x = torch.randn(2, 3, 5, 8)
    for dtype in (torch.bfloat16, torch.float64):
        y = rot(x.to(dtype), start=2)
        assert y.dtype == dtype
        assert torch.allclose(y.double(), rot(x.double(), start=2), atol=0.05)


def test_a_float64_model_holds_its_constants_in_float64():
    """model.double() upcast float32 roundings: eta 0.7 read 0.699999988, rotary's cos was 3.6e-5 off at position
    1023 (float32 angles): a float64 reference could not check the model past ~1e-5 (review)."""
    from momattn.model import Rotary

    m = tiny_gpt("momentum", eta=0.7).double()
    assert m.blocks[0].attn.eta.item() == 0.7 and m.blocks[0].attn.eta.dtype == torch.float64
    rot, x = Rotary(64, 1024), torch.randn(1, 1, 1024, 64, dtype=torch.float64)
    pos = torch.arange(1024, dtype=torch.float64)[:, None]
    angles = pos * 10000.0 ** (-torch.arange(0, 64, 2, dtype=torch.float64) / 64)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    exact = torch.stack((x1 * angles.cos() - x2 * angles.sin(), x1 * angles.sin() + x2 * angles.cos()), -1).flatten(-2)
    assert (rot.double()(x, start=0) - exact).abs().max() < 1e-12  # (float32 tables: 3e-5)
    # float32 models keep the float32 angles they trained with (bit-exact resumes), on the default device: a meta
    # model (the planner's, the memory check's) allocated a long context's tables for real (diff review)
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, 64, 2).float() / 64)
    assert torch.equal(rot.cos, torch.outer(torch.arange(1024).float(), inv_freq).cos())
    with torch.device("meta"):
        assert Rotary(64, 4_000_000).cos.is_meta
    with pytest.raises(ValueError, match=r"^idx holds token id 99, outside this model's vocabulary of \d+ ids"):
        m(torch.tensor([[1, 99]]))  # torch's bare "IndexError: index out of range in self" (review)


def test_bias_false_leaves_no_bias_anywhere():
    model = GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=2, n_head=2, n_embd=8, bias=False))
    assert [n for n, _ in model.named_parameters() if n.endswith("bias")] == []
    with_bias = GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=2, n_head=2, n_embd=8))
    names = {n.split(".", 2)[-1] for n, _ in with_bias.named_parameters() if n.endswith("bias")}
    assert {"ln_1.bias", "ln_2.bias", "attn.c_attn.bias", "attn.c_proj.bias", "mlp.c_fc.bias", "mlp.c_proj.bias"} <= names


def test_dropout_is_off_in_eval_mode():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=32, n_layer=2, n_head=2, n_embd=16, dropout=0.5)).eval()
    idx = torch.randint(0, 32, (2, 10))
    assert torch.equal(model(idx), model(idx))
    model.train()
    assert not torch.equal(model(idx), model(idx))


def test_initialisation_scale():
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=64, vocab_size=512, n_layer=4, n_head=4, n_embd=128)
    model = GPT(cfg)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):  # GPT-2: residual projections scaled by 1/sqrt(2 n_layer)
            assert p.std().item() == pytest.approx(0.02 / math.sqrt(2 * cfg.n_layer), rel=0.1), name
        elif name.endswith(("c_attn.weight", "c_fc.weight", "wte.weight", "wpe.weight")):
            assert p.std().item() == pytest.approx(0.02, rel=0.1), name
        elif name.endswith("bias"):
            assert not p.any(), name


@pytest.mark.parametrize("pos_emb", ["learned", "rotary"])
def test_num_params_and_flops_per_token(pos_emb):
    model = tiny_gpt("vanilla", pos_emb=pos_emb, block_size=64)
    total = sum(p.numel() for p in model.parameters())  # lm_head is tied to wte: counted once
    wpe = 64 * 16 if pos_emb == "learned" else 0
    assert model.num_params(non_embedding=False) == total
    assert model.num_params() == total - wpe
    c = model.config
    assert model.flops_per_token() == 6 * (total - wpe) + 12 * c.n_layer * c.n_embd * 64  # PaLM appendix B
    assert model.flops_per_token(T=8) == 6 * (total - wpe) + 12 * c.n_layer * c.n_embd * 8


SYNC_FREE = [AttentionConfig(kind="momentum"), AttentionConfig(kind="momentum", learnable_eta=True),
             AttentionConfig(kind="multirate_ema")]


@pytest.mark.parametrize("attention", SYNC_FREE, ids=["momentum", "learnable", "multirate_ema"])
def test_the_model_never_range_checks_its_own_rates(attention, monkeypatch):
    """The ops' rate check reads a tensor back (on a GPU: waits for the device, once per layer and step); the
    model's rates are valid by construction, so its forward and backward must not run it."""
    from momattn import ops

    monkeypatch.setattr(ops, "_check_rates", lambda *a: pytest.fail("the model range-checked its rates"))
    model = GPT(GPTConfig(block_size=16, vocab_size=32, n_layer=1, n_head=2, n_embd=32, attention=attention))
    model(torch.randint(0, 32, (2, 16))).sum().backward()
    model.generate(torch.randint(0, 32, (1, 4)), max_new_tokens=2)  # the cached paths too


@pytest.mark.parametrize("attention", SYNC_FREE, ids=["momentum", "learnable", "multirate_ema"])
def test_the_gpu_code_path_makes_no_host_to_device_copy_or_read_back(attention, monkeypatch):
    """The CUDA test below, on a CPU: the matmul scans (what CUDA runs without Triton) over several chunks, forward
    and backward, and the cached forward, must neither build a tensor from Python data (torch.tensor(x, device=...): on a GPU a blocking
    host-to-device copy) nor read a tensor back (.item(), bool(t): on a GPU a wait for the device)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from momattn import ops

    class Syncs(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.lift_fresh.default, torch.ops.aten._local_scalar_dense.default):
                self.seen.append(str(func))
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(ops, "SCAN_BACKEND", "torch")
    monkeypatch.setattr(ops, "_rates_divide", lambda a: False)  # as on a GPU: the CPU-only rate check skipped
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=64, n_layer=1, n_head=2, n_embd=32, attention=attention))
    x = torch.randint(0, 64, (2, 64))
    with Syncs() as mode:
        model(x).logsumexp(-1).mean().backward()
        with torch.no_grad():  # the cached paths: a prefix into a cache (final states), then a continuation
            cache = model.new_cache()
            model(x[:, :40], cache=cache)
            model(x[:, 40:], cache=cache)
    assert mode.seen == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("chunk", [None, "64"], ids=["default", "triton-chunked"])
@pytest.mark.parametrize("attention", SYNC_FREE, ids=["momentum", "learnable", "multirate_ema"])
def test_cuda_training_forward_backward_never_waits_for_the_device(attention, chunk, monkeypatch):
    if chunk is not None:  # the Triton scan's chunked launches too (on its own it chunks only longer sequences)
        monkeypatch.setenv("MOMATTN_TRITON_CHUNK", chunk)
    model = GPT(GPTConfig(block_size=128, vocab_size=64, n_layer=2, n_head=2, n_embd=64, attention=attention)).cuda()
    x = torch.randint(0, 64, (2, 128), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model(x).float().logsumexp(-1).mean().backward()

    step()  # first call: kernel autotuning times its candidates (and synchronizes) once
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("learnable", [False, True])
def test_a_model_cast_to_bf16_or_fp16_keeps_its_rates_and_trains(learnable, monkeypatch):
    from momattn import model as model_module

    # precision=bf16-true / 16-true cast the whole module: bf16 rounds eta 0.999 to 1.0 (an undamped sum)
    cfg = GPTConfig(block_size=32, vocab_size=64, n_layer=1, n_head=2, n_embd=32,
                    attention=AttentionConfig(kind="momentum", eta=0.999, learnable_eta=learnable))
    idx = torch.randint(0, 64, (2, 32), generator=torch.Generator().manual_seed(0))
    for dtype in (torch.bfloat16, torch.float16):
        model = GPT(cfg).to(dtype)
        eta = model.blocks[0].attn.eta
        assert eta.dtype == torch.float32 and torch.allclose(eta, torch.tensor(0.999), atol=1e-4), (dtype, eta)
        if not learnable:  # FSDP's mixed precision casts buffers without Module._apply
            fsdp_like = GPT(cfg)
            fsdp_like.blocks[0].attn.eta_fixed.data = fsdp_like.blocks[0].attn.eta_fixed.to(dtype)
            assert fsdp_like.blocks[0].attn.eta.dtype == torch.float32
            assert float(fsdp_like.blocks[0].attn.eta) == pytest.approx(0.999)
        loss = model(idx, targets=idx)  # fp16 weights take the plain cross-entropy (the blocked one refuses fp16)
        loss.backward()
        assert torch.isfinite(loss)
    ema = GPT(GPTConfig(block_size=32, vocab_size=64, n_layer=1, n_head=2, n_embd=32,
                        attention=AttentionConfig(kind="multirate_ema"))).to(torch.bfloat16)
    with torch.no_grad():
        ema.blocks[0].attn.delta.fill_(7.0)  # p = sigmoid(7) = 0.99909: 1.0 if computed in bf16
    seen = []
    real = model_module.multirate_ema
    monkeypatch.setattr(model_module, "multirate_ema", lambda vm, p, *a, **kw: seen.append(p) or real(vm, p, *a, **kw))
    ema(idx)
    assert seen[0].dtype == torch.float32 and float(seen[0].detach().max()) < 1.0
