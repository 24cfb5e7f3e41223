"""Optimizer setup: weight decay only on the matrices of Linear and Embedding layers; the lr schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from momattn.lit import LitGPT, OptimConfig, lr_lambda
from momattn.model import GPT, AttentionConfig, GPTConfig


def _lit(attention: AttentionConfig, optim: OptimConfig | None = None, max_steps: int = 100) -> LitGPT:
    model = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=16, attention=attention))
    return LitGPT(model, optim or OptimConfig(weight_decay=0.1), max_steps)


@pytest.mark.parametrize("attention", [AttentionConfig(kind="momentum", learnable_eta=True),
                                       AttentionConfig(kind="multirate_ema"), AttentionConfig()],
                         ids=["momentum-learnable-eta", "multirate-ema", "vanilla"])
def test_weight_decay_only_on_linear_and_embedding_weights(attention):
    lit = _lit(attention)
    opt = lit.configure_optimizers()["optimizer"]
    names = {id(p): n for n, p in lit.model.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    expected = {f"{m}.weight".lstrip(".") for m, mod in lit.model.named_modules()
                if isinstance(mod, (nn.Linear, nn.Embedding)) and f"{m}.weight".lstrip(".") in names.values()}
    assert decayed == expected
    assert {g["weight_decay"] for g in opt.param_groups if g["params"]} == {0.0, 0.1}
    # every trainable parameter in exactly one group
    grouped = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in lit.model.parameters() if p.requires_grad)
    assert len(grouped) == len(set(grouped))
    # the parameters that must never be pulled to zero
    for n in names.values():
        if n.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight", ".bias", "eta_logit", "delta", "gamma")):
            assert n in plain, n
    kinds = {n.rsplit(".", 1)[-1] for n in plain}
    if attention.kind == "momentum":
        assert "eta_logit" in kinds
    if attention.kind == "multirate_ema":
        assert {"delta", "gamma"} <= kinds


def test_warmup_is_linear_from_near_zero_to_the_peak():
    o = OptimConfig(warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    warm = [lr_lambda(s, o, 100) for s in range(11)]
    assert 0 < warm[0] <= 1 / 10  # starts near zero, not at the peak
    steps = [b - a for a, b in zip(warm, warm[1:], strict=False)]
    assert all(d > 0 for d in steps) and max(steps) - min(steps) < 1e-9  # linear
    assert warm[10] == pytest.approx(1.0)  # the peak, right after warm-up
    assert max(lr_lambda(s, o, 100) for s in range(100)) == pytest.approx(1.0)


@pytest.mark.parametrize("schedule,power,mid", [("cosine", 1.0, 0.5), ("polynomial", 1.0, 0.5),
                                                ("polynomial", 2.0, 0.25)])
def test_decay_reaches_min_lr_ratio_at_max_steps(schedule, power, mid):
    o = OptimConfig(warmup_steps=10, schedule=schedule, power=power, min_lr_ratio=0.1)
    after = [lr_lambda(s, o, 110) for s in range(10, 111)]
    assert all(b <= a + 1e-12 for a, b in zip(after, after[1:], strict=False))  # never goes up after the peak
    assert after[0] == pytest.approx(1.0)
    assert lr_lambda(60, o, 110) == pytest.approx(0.1 + 0.9 * mid)  # halfway through the decay
    assert lr_lambda(110, o, 110) == pytest.approx(0.1)
    assert lr_lambda(500, o, 110) == pytest.approx(0.1)  # past max_steps: stays at the floor


def test_constant_schedule_stays_at_the_peak_after_warmup():
    o = OptimConfig(warmup_steps=5, schedule="constant", min_lr_ratio=0.1)
    assert lr_lambda(0, o, 50) < 1.0
    assert all(lr_lambda(s, o, 50) == 1.0 for s in range(5, 80))


def test_the_optimizer_follows_the_schedule():
    o = OptimConfig(lr=0.01, warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    conf = _lit(AttentionConfig(), o, max_steps=20).configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"
    for step in range(25):
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(0.01 * lr_lambda(step, o, 20)), step
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001)
    assert not math.isnan(opt.param_groups[0]["lr"]) and isinstance(opt, torch.optim.AdamW)


def test_a_resume_restores_every_rng_stream_the_checkpoint_saved():
    """Dropout masks and data order after a resume depend on the torch, numpy and python RNGs: all three come back."""
    import random

    import numpy as np

    lit = _lit(AttentionConfig())
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    saved = {}
    lit.on_save_checkpoint(saved)  # what every checkpoint carries
    expected = (torch.rand(3).tolist(), random.random(), np.random.rand())
    torch.manual_seed(99), random.seed(99), np.random.seed(99)  # a restarted process
    resumed = _lit(AttentionConfig())
    resumed.on_load_checkpoint(saved)
    resumed.on_train_start()  # after Lightning's own restore steps, right before the next batch
    assert (torch.rand(3).tolist(), random.random(), np.random.rand()) == expected
