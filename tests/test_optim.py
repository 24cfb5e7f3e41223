"""Optimizer setup: weight decay only on the matrices of Linear and Embedding layers; the lr schedule."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from momattn.lit import LitGPT
from momattn.model import GPT, AttentionConfig, GPTConfig
from momattn.optim import OptimConfig, lr_lambda


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


def test_the_python_defaults_are_train_yamls():
    # the Python API (OptimConfig()) trained at lr 1e-3 with 100 warm-up steps, train.py at 2e-3 and 40
    from dataclasses import asdict

    from omegaconf import OmegaConf

    yaml = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[1] / "conf" / "train.yaml").optim)
    assert yaml == asdict(OptimConfig())


def test_optim_config_bounds():
    from momattn.errors import ConfigError

    with pytest.raises(ConfigError, match=r"optim.lr=0(.0)? must be finite and > 0"):
        OptimConfig(lr=0.0)
    OptimConfig(warmup_steps=0)  # no warm-up is allowed
    with pytest.raises(ConfigError, match=r"^optim.warmup_steps=-1 must be >= 0"):
        OptimConfig(warmup_steps=-1)
    # inf passed: eps=inf made every step 0, power=inf dropped the lr to its floor, weight_decay=inf blamed the lr
    for key in ("eps", "power", "weight_decay", "grad_clip"):
        for bad in (math.inf, math.nan):
            with pytest.raises(ConfigError, match=rf"optim\.{key}={bad} must be finite"):
                OptimConfig(**{key: bad})
    OptimConfig(grad_clip=None), OptimConfig(grad_clip=0.0), OptimConfig(weight_decay=0.0)
    # finite but as absurd (found by fuzzing): eps=1e30 trained nothing in silence, weight_decay=1000 flipped the
    # weights' sign each step, 1e30 made the loss nan and blamed the learning rate
    with pytest.raises(ConfigError, match=r"^optim.eps=1e\+30 must be < 1"):
        OptimConfig(eps=1e30)
    with pytest.raises(ConfigError, match=r"^optim.weight_decay=1000(.0)? with optim.lr=0.002: AdamW scales the weights "
                                          r"by 1 - lr x weight_decay = -1 each step"):
        OptimConfig(weight_decay=1000.0)
    OptimConfig(eps=1e-3), OptimConfig(lr=1.0, weight_decay=0.5)  # unusual, not absurd


def test_the_optimizer_takes_betas_eps_and_lr_from_the_config():
    lit = _lit(AttentionConfig(), OptimConfig(lr=1e-3, betas=(0.8, 0.91), eps=1e-6, warmup_steps=10))
    for g in lit.configure_optimizers()["optimizer"].param_groups:
        assert g["betas"] == (0.8, 0.91) and g["eps"] == 1e-6 and g["lr"] == pytest.approx(1e-3 / 11)  # warm-up 10


# ---------------------------------------------------------------- LitGPT's steps and logs, without a Trainer


class _FakeTrainer:
    def __init__(self, world_size=1, optimizer=None, loggers=()):
        self.world_size, self.global_rank, self.global_step, self.is_global_zero = world_size, 0, 0, True
        self.sanity_checking = False
        self.optimizers, self.loggers = [optimizer] if optimizer else [], list(loggers)
        self.lr_scheduler_configs = []


def _logging_lit(monkeypatch, world_size=1, loggers=(), **optim):
    lit = _lit(AttentionConfig(), OptimConfig(**optim))
    opt = lit.configure_optimizers()["optimizer"]
    lit.trainer = _FakeTrainer(world_size, opt, loggers)
    logged = {}
    monkeypatch.setattr(lit, "log", lambda name, value, **kw: logged.__setitem__(name, (value, kw)))
    monkeypatch.setattr(lit, "print", lambda *a, **k: None)
    return lit, opt, logged


def _batch(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 64, (n, 17), generator=g)
    return x[:, :-1], x[:, 1:]


def test_training_step_returns_the_loss_and_the_step_logs_the_mean_over_its_micro_batches(monkeypatch):
    lit, opt, logged = _logging_lit(monkeypatch)
    batches = [_batch(3), _batch(3, 1)]
    losses = [lit.training_step(b, i) for i, b in enumerate(batches)]  # gradient accumulation: two micro-batches
    x, y = batches[0]
    assert losses[0].item() == pytest.approx(
        torch.nn.functional.cross_entropy(lit.model(x).flatten(0, 1), y.flatten()).item())
    assert logged == {}  # nothing per micro-batch: Lightning would log the last one's as the step's loss
    lit.on_before_optimizer_step(opt)
    assert logged["train/loss"][0] == pytest.approx((losses[0].item() + losses[1].item()) / 2, rel=1e-9)
    assert logged["train/loss"][1] == {"prog_bar": True} and logged["train/lr"][0] == opt.param_groups[0]["lr"]
    logged.clear()
    lit.training_step(batches[1], 2)  # the next step starts from zero
    lit.on_before_optimizer_step(opt)
    assert logged["train/loss"][0] == pytest.approx(losses[1].item(), rel=1e-9)


def _nan_step(lit, opt, batch_idx=0):
    out = lit.training_step(_batch(2, batch_idx), batch_idx)
    out.backward()
    lit.on_before_optimizer_step(opt)
    return out


def test_a_non_finite_loss_skips_the_whole_step_and_is_counted_or_stops_training(monkeypatch):
    from momattn.errors import NonFiniteLossError

    lit, opt, logged = _logging_lit(monkeypatch, on_nonfinite="skip")
    with torch.no_grad():
        lit.model.lm_head.weight[0, 0] = float("nan")
    before = {k: v.clone() for k, v in lit.model.state_dict().items()}
    lit._step_loss, lit._step_finite = torch.tensor(3.0, dtype=torch.float64), 1  # a finite micro-batch before
    out = _nan_step(lit, opt, 1)
    assert out.item() == 0.0  # a zero with a gradient for every parameter (DDP all-reduces them as usual)
    assert all(p.grad is None for p in lit.model.parameters())  # the step is skipped whole
    opt.step()
    assert all(torch.equal(v.nan_to_num(), before[k].nan_to_num()) for k, v in lit.model.state_dict().items())
    assert not opt.state  # AdamW kept no moments: nothing was updated
    assert logged["train/skipped_nonfinite"][0] == 1.0 and logged["train/loss"][0] == 3.0  # the finite one's
    _nan_step(lit, opt, 2)
    assert logged["train/skipped_nonfinite"][0] == 2.0  # a running count, not 1.0 repeated
    checkpoint = {}
    lit.on_save_checkpoint(checkpoint)
    resumed, _, _ = _logging_lit(monkeypatch, on_nonfinite="skip")
    resumed.on_load_checkpoint(checkpoint)
    assert resumed._skipped == 2  # the count runs on across a resume (it restarted at 0)
    lit.optim = OptimConfig(on_nonfinite="stop")
    with pytest.raises(NonFiniteLossError, match=r"the training loss became nan at step 1 \(metrics.csv's step 0, batch 3\)"):
        _nan_step(lit, opt, 3)


def test_a_non_finite_gradient_of_a_finite_loss_skips_the_step_or_stops_training(monkeypatch):
    """Found by review: a gradient that overflowed in the backward of a finite loss passed the check, clipping
    scaled every gradient by nan and AdamW wrote nan into every weight, which the next validation saved as
    last.ckpt, the checkpoint the stop then called good."""
    from momattn.errors import NonFiniteLossError

    lit, opt, logged = _logging_lit(monkeypatch, on_nonfinite="skip")
    before = {k: v.clone() for k, v in lit.model.state_dict().items()}
    for step in (1, 2):
        loss = lit.training_step(_batch(2), 0)
        assert torch.isfinite(loss)
        loss.backward()
        next(lit.model.parameters()).grad.view(-1)[0] = float("inf")
        lit.on_before_optimizer_step(opt)
        assert all(p.grad is None for p in lit.model.parameters())  # skipped whole
        opt.step()
        assert logged["train/skipped_nonfinite"][0] == float(step) and logged["train/loss"][0] == loss.item()
    assert all(torch.equal(v, before[k]) for k, v in lit.model.state_dict().items())
    lit.optim = OptimConfig(on_nonfinite="stop")
    lit.training_step(_batch(2), 0).backward()
    next(lit.model.parameters()).grad.view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"^the training gradient norm \(of a finite loss\) became nan at "
                                                 r"step 1 \(metrics.csv's step 0\); training stopped.*clipping cannot mend an infinite norm"):
        lit.on_before_optimizer_step(opt)
    opt.zero_grad()
    lit.training_step(_batch(2), 0).backward()  # a finite one goes through
    lit.on_before_optimizer_step(opt)
    assert all(p.grad is not None for p in lit.model.parameters())
    # float16 gradients, each finite, whose norm passes float16's 65504: finite (summed in float32: flows review)
    param = torch.nn.Parameter(torch.zeros(10, dtype=torch.float16))
    param.grad = torch.full((10,), 3e4, dtype=torch.float16)
    monkeypatch.setattr(lit, "parameters", lambda: [param])
    assert math.isfinite(lit._grad_norm(torch.zeros((), dtype=torch.float64)).item())
    # and clipped by that norm: torch's clip_grad_norm_ sums them in float16, got inf, and multiplied every one by 0
    lit.trainer.strategy = object()
    lit.configure_gradient_clipping(opt, 1.0, "norm")
    assert param.grad.float().norm().item() == pytest.approx(1.0, rel=1e-3)
    param.grad = None  # a skipped step: nothing to clip (FSDP warned of clipping no gradients on each rank)
    del lit.trainer.strategy
    lit.configure_gradient_clipping(opt, 1.0, "norm")  # (no strategy here: it returns before asking for one)


def test_a_non_finite_loss_on_another_ddp_rank_stops_or_skips_this_rank_too(monkeypatch):
    """Returning None to skip a batch is refused by Lightning under DDP (the run crashed); now every rank learns
    of it in the step's one all-reduce and skips or stops at the same step."""
    from momattn.errors import NonFiniteLossError

    lit, opt, logged = _logging_lit(monkeypatch, world_size=2, on_nonfinite="skip")

    class Strategy:  # the other rank: one micro-batch of loss 4.0 and one non-finite one (nan, its batch 7)
        def reduce(self, t, reduce_op):
            assert reduce_op == "sum" and t.shape == (4 + 3 * 2,)  # (loss, finite, non-finite, gradient norm)
            return t + torch.tensor([4.0, 1.0, 1.0, 0.0, 0, 0, 0, 1.0, float("nan"), 7.0], dtype=t.dtype)

    lit.trainer.strategy = Strategy()
    loss = lit.training_step(_batch(2), 0)
    loss.backward()
    lit.on_before_optimizer_step(opt)
    assert all(p.grad is None for p in lit.model.parameters())
    assert logged["train/skipped_nonfinite"][0] == 1.0
    assert logged["train/loss"][0] == pytest.approx((loss.item() + 4.0) / 2, rel=1e-9)  # over both ranks
    lit.optim = OptimConfig(on_nonfinite="stop")
    lit.training_step(_batch(2), 1).backward()
    # the rank and batch that met it, said alike on every rank (it was "non-finite ... on another process")
    with pytest.raises(NonFiniteLossError, match=r"became nan at step 1 \(metrics.csv's step 0, rank 1, batch 7\)"):
        lit.on_before_optimizer_step(opt)


def test_validation_loss_is_the_mean_over_sequences_of_all_batches(monkeypatch):
    lit, _, logged = _logging_lit(monkeypatch)
    lit.on_validation_epoch_end()  # no batches: nothing to log
    assert logged == {}
    batches = [_batch(1, 1), _batch(3, 2)]
    for i, b in enumerate(batches):
        lit.validation_step(b, i)
    lit.on_validation_epoch_end()
    losses = [lit._loss(b).item() for b in batches]
    mean = (losses[0] * 1 + losses[1] * 3) / 4
    assert logged["val/loss"][0] == pytest.approx(mean, rel=1e-6)
    assert logged["val/ppl"][0] == pytest.approx(math.exp(mean), rel=1e-6)
    assert logged["val/loss"][1]["rank_zero_only"] and logged["val/ppl"][1]["rank_zero_only"]
    logged.clear()
    lit.validation_step(_batch(1, 1), 0)  # a new epoch starts from zero, and one sequence is enough
    lit.on_validation_epoch_end()
    assert logged["val/loss"][0] == pytest.approx(losses[0], rel=1e-6)


def test_validation_loss_adds_up_every_process(monkeypatch):
    lit, _, logged = _logging_lit(monkeypatch, world_size=2)
    other = torch.tensor([6.0, 2.0], dtype=torch.float64)  # the other process: 2 sequences of mean loss 3
    monkeypatch.setattr(lit, "all_gather", lambda t: torch.stack([t, other]))
    b = _batch(2, 3)
    lit.validation_step(b, 0)
    lit.on_validation_epoch_end()
    assert logged["val/loss"][0] == pytest.approx((lit._loss(b).item() * 2 + 6.0) / 4, rel=1e-6)


def test_checkpoints_carry_the_wandb_run_id_and_the_rng(monkeypatch, tmp_path):
    from lightning.pytorch.loggers import WandbLogger

    wandb = WandbLogger(offline=True, id="run123", save_dir=str(tmp_path))
    lit, _, _ = _logging_lit(monkeypatch, loggers=[wandb])
    ckpt = {}
    lit.on_save_checkpoint(ckpt)
    assert ckpt["momattn"]["wandb_run_id"] == "run123" and set(ckpt["momattn"]["rng"]) >= {"python", "numpy", "torch"}


def test_the_rng_is_restored_once_at_train_start(monkeypatch):
    from momattn.lit import rng_state

    lit, _, _ = _logging_lit(monkeypatch)
    torch.manual_seed(5)
    lit.on_load_checkpoint({"momattn": {"rng": rng_state()}})
    expected = torch.rand(3)
    lit.on_train_start()
    assert torch.equal(torch.rand(3), expected)
    assert lit._rng_to_restore is None
    state = torch.get_rng_state()
    lit.on_train_start()  # a later start (another fit) leaves the RNG alone
    assert torch.equal(torch.get_rng_state(), state)


def test_lit_forward_is_the_models():
    lit = _lit(AttentionConfig(kind="momentum"))
    x = _batch(2)[0]
    assert torch.equal(lit(x), lit.model(x))


def test_adamw_is_fused_for_plain_parameters_and_steps_as_the_for_each_kernel():
    from momattn.optim import fused_adamw_ok

    lit = _lit(AttentionConfig(kind="momentum", learnable_eta=True))
    opt = lit.configure_optimizers()["optimizer"]
    assert opt.defaults["fused"] is True
    twin = _lit(AttentionConfig(kind="momentum", learnable_eta=True))
    twin.model.load_state_dict(lit.model.state_dict())
    ref = torch.optim.AdamW([{**{k: v for k, v in g.items() if k != "params"}, "fused": None, "foreach": True,
                              "params": [dict(twin.model.named_parameters())[n] for n in
                                         [{id(p): n for n, p in lit.model.named_parameters()}[id(p)]
                                          for p in g["params"]]]} for g in opt.param_groups])
    before = {n: p.detach().clone() for n, p in lit.model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p, q in zip(lit.model.parameters(), twin.model.parameters()):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        opt.step()
        ref.step()
    for (n, p), q in zip(lit.model.named_parameters(), twin.model.parameters()):
        assert not torch.equal(p, before[n]), n  # the step moved it
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=n)
    flat = torch.nn.Parameter(torch.zeros(3))
    assert fused_adamw_ok([flat]) and not fused_adamw_ok([]) and not fused_adamw_ok([flat.detach()])


def test_a_warm_up_as_long_as_the_run_is_warned_about_with_the_highest_rate_it_reaches():
    from momattn.training import warmup_warning

    assert warmup_warning(99, 100, 3e-4) is None
    o = OptimConfig(lr=3e-4, warmup_steps=100)
    highest = max(lr_lambda(s, o, 60) for s in range(60))  # the schedule over a 60-step run
    warning = warmup_warning(100, 60, 3e-4)
    assert f"at most {highest:.0%} of optim.lr=0.0003" in warning and "trainer.max_steps=60" in warning
    assert lr_lambda(59, o, 60) == highest  # still rising at the last step: it never decays


def test_under_fsdp_clipping_by_value_clips_values_and_by_norm_takes_the_global_norm(monkeypatch):
    from lightning.pytorch.strategies import FSDPStrategy

    lit, opt, _ = _logging_lit(monkeypatch)
    lit.trainer.strategy = FSDPStrategy()
    norms = []
    lit.trainer.model = type("Wrapped", (), {"clip_grad_norm_": lambda self, v: norms.append(v)})()
    for p in lit.model.parameters():
        p.grad = torch.full_like(p, 3.0)
    lit.configure_gradient_clipping(opt, 0.5, "value")  # was clipped by norm whatever the algorithm
    assert norms == [] and all(float(p.grad.abs().max()) == 0.5 for p in lit.model.parameters())
    lit.configure_gradient_clipping(opt, 0.5, "norm")
    assert norms == [0.5]  # FSDP's own clip_grad_norm_: the norm over every shard


def test_a_divergence_says_what_the_run_keeps_and_how_to_go_on(tmp_path):
    # it said "the last good checkpoint is kept ... resume with ckpt_path=last" in a folder that held none
    from types import SimpleNamespace

    from momattn.lit import LitGPT

    def said(ckpt_path=None):
        trainer = SimpleNamespace(checkpoint_callback=SimpleNamespace(dirpath=str(tmp_path)), ckpt_path=ckpt_path)
        return LitGPT._what_is_kept(SimpleNamespace(trainer=trainer))

    assert said() == (" before its first checkpoint", "train again")
    assert said("/runs/a/checkpoints/last.ckpt")[1] == \
        "resume from the checkpoint it started from again (ckpt_path=/runs/a/checkpoints/last.ckpt)"
    for i, step in enumerate((100, 150, 50, 200)):  # save_last=false: best files only, named in order of time
        (tmp_path / f"best-step{step}.ckpt").write_bytes(b"x")
        os.utime(tmp_path / f"best-step{step}.ckpt", (i, i))
    assert said() == (f" ({tmp_path} keeps best-step150.ckpt, best-step50.ckpt, best-step200.ckpt and 1 more; no "
                      "last.ckpt, save_last is off)",
                      f"resume from one of them, e.g. the newest (ckpt_path={tmp_path / 'best-step200.ckpt'})")
    (tmp_path / "last.ckpt").write_bytes(b"x")
    assert said() == (" and the last good checkpoint is kept", "resume with ckpt_path=last")
