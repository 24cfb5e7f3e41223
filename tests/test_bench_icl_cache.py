"""benchmarks/bench_icl_cache.py on a tiny model: naive and cached scoring agree, the attention-free bound is timed
and leaves the model's attention as it was, and results written before the bound existed still render (no timing
is checked)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_icl_cache  # noqa: E402
from harness import Timer  # noqa: E402

import momattn.model as model_module  # noqa: E402
from momattn.model import GPT, AttentionConfig, GPTConfig  # noqa: E402


@pytest.mark.parametrize("kind", ["vanilla", "momentum"])
def test_a_case_times_naive_cached_and_the_attention_free_bound(kind):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=128, vocab_size=64, n_layer=2, n_head=2, n_embd=32,
                          attention=AttentionConfig(kind=kind))).eval()
    prefix, rows = bench_icl_cache.make_case(torch.Generator().manual_seed(2), 64, 2, 5, 2)
    real = model_module.shared_prefix_attention
    r = bench_icl_cache.bench_case(model, prefix, rows, 4096, Timer(repeats=1, warmup=1, min_sample_s=0.0),
                                   torch.device("cpu"))
    assert model_module.shared_prefix_attention is real
    assert r["max_abs_diff"] < 1e-5
    assert r["free_s"] > 0 and r["speedup_attention_free"] == pytest.approx(r["naive_s"] / r["free_s"])
    table = bench_icl_cache.render({"machine": {"describe": "test"}, "settings": {"examples": 5},
                                    "results": [{"attention": kind, "k": 2, "n_answers": 2, "prefix_tokens": len(prefix),
                                                 **r}]})
    assert "5 test queries after each prefix" in table
    assert f"{r['speedup_attention_free']:.1f}x" in table


def test_the_bound_restores_attention_when_scoring_fails():
    real = model_module.shared_prefix_attention

    def fails():
        assert model_module.shared_prefix_attention is not real  # replaced while it runs
        raise RuntimeError("scoring failed")

    with pytest.raises(RuntimeError, match="scoring failed"):
        bench_icl_cache.attention_free(fails)()
    assert model_module.shared_prefix_attention is real


def test_results_from_before_the_bound_render_with_a_dash():
    old = {"attention": "vanilla", "k": 4, "n_answers": 2, "prefix_tokens": 97, "naive_s": 0.2, "cached_s": 0.05,
           "speedup": 4.0, "token_ratio": 5.3, "max_abs_diff": 1e-7}
    table = bench_icl_cache.render({"machine": {"describe": "old"}, "settings": {}, "results": [old]})
    assert "64 test queries after each prefix" in table
    assert "| 4.0x | - | 5.3x | - |" in table  # no samples kept: no spread either
    timed = dict(old, naive={"iqr_pct": 10.2}, cached={"iqr_pct": 20.6})
    table = bench_icl_cache.render({"machine": {"describe": "new"}, "settings": {}, "results": [timed]})
    assert "| 4.0x | 10% / 21% | 5.3x | - |" in table


def test_bad_arguments_and_an_unwritable_output_are_one_line_before_any_timing(tmp_path):
    # were a ConfigError traceback, torch's AssertionError, and a traceback at the write after the whole measurement
    from conftest import run_cli

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for args, said in ((["--kinds", "foo"], "--kinds: unknown foo; the attention kinds are vanilla"),
                       (["--out", str(blocker / "x.json")], "its folder cannot be written")):
        r = run_cli("benchmarks/bench_icl_cache.py", args, tmp_path)
        assert r.returncode == 2 and said in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
