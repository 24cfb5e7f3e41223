"""Perplexity and bits per byte on hand-checkable cases."""

import math

import numpy as np
import pytest
import torch
from test_eval_common import CharTokenizer, FakeLM, tiny_gpt, uniform_lm

from momattn.errors import ConfigError, DataError
from momattn.eval.config import PplConfig
from momattn.eval.ppl import PerplexityEvaluator, aggregate, count_bytes, score_windows, window_starts


def test_uniform_model_has_perplexity_vocab_size():
    V = 50
    tok = CharTokenizer(V)
    tokens = np.random.default_rng(0).integers(1, V, size=1000)  # ids 1..49: one ASCII byte each
    res = aggregate(score_windows(uniform_lm(V), tok, tokens, length=32, max_windows=10))
    assert res["ppl"] == pytest.approx(V, rel=1e-6)
    assert res["nll_per_token"] == pytest.approx(math.log(V), rel=1e-6)
    assert res["bpb"] == pytest.approx(math.log2(V), rel=1e-6)  # one byte per token
    assert res["n_windows"] == 10 and res["n_tokens"] == 10 * 31  # the first token of a window is not scored


def test_hand_computed_perplexity_and_bits_per_byte():
    # p = (1/2, 1/4, 1/8, 1/8) for every next token, whatever came before
    logp = torch.tensor([0.5, 0.25, 0.125, 0.125]).log().expand(4, 4).clone()
    tok = CharTokenizer(4)
    tokens = np.array([0, 1, 2, 3, 3, 2, 1, 0])  # two windows of 4; scored: 1 2 3 | 2 1 0
    res = aggregate(score_windows(FakeLM(logp), tok, tokens, length=4, max_windows=10))
    bits = 2 + 3 + 3 + 3 + 2 + 1  # -log2 p of the six scored tokens
    assert res["n_tokens"] == 6 and res["n_bytes"] == 6  # chr(1..3) are one byte; end-of-text counts as one
    assert res["ppl"] == pytest.approx(2 ** (bits / 6), rel=1e-6)
    assert res["bpb"] == pytest.approx(bits / 6, rel=1e-6)


def test_each_position_is_scored_on_the_token_that_follows_it():
    """The hand case above predicts one distribution at every position, so reading the input shifted by one (each
    position seeing the token it predicts) scored the same: here p(next | current) differs by current token, and a
    tiny GPT's window NLL is recomputed by hand from one forward pass."""
    from test_eval_common import bigram_lm

    # after 1 the next token is 2 with p .9, after 2 it is 3 with p .5; anything else: the rest spread evenly
    model = bigram_lm(4, {1: {2: 0.9}, 2: {3: 0.5}})
    tokens = np.array([1, 2, 3, 1])
    res = aggregate(score_windows(model, CharTokenizer(4), tokens, length=4, max_windows=1))
    want = -(math.log(0.9) + math.log(0.5) + math.log(1 / 4))  # 2 after 1, 3 after 2, 1 after 3 (row 3: uniform)
    assert res["ppl"] == pytest.approx(math.exp(want / 3), rel=1e-6)
    gpt = tiny_gpt("momentum", vocab=40)
    window = torch.from_numpy(np.random.default_rng(3).integers(1, 40, size=32))
    (score,) = score_windows(gpt, CharTokenizer(40), window.numpy(), length=32, max_windows=1)
    with torch.no_grad():
        by_hand = torch.nn.functional.cross_entropy(gpt(window[None, :-1])[0].double(), window[1:], reduction="sum")
    assert score.nll == pytest.approx(float(by_hand), rel=1e-5) and score.n_tokens == 31


def test_bytes_count_utf8_of_decoded_text():
    tok = CharTokenizer(300)
    assert count_bytes(tok, tok.encode("aé") + [0] + tok.encode("b")) == 1 + 2 + 1 + 1
    # a 2-byte character as one token: bits per byte divides by 2 bytes, not 1 token
    tokens = np.array([ord("é")] * 9)
    res = aggregate(score_windows(uniform_lm(300), tok, tokens, length=3, max_windows=5))
    assert res["n_tokens"] == 6 and res["n_bytes"] == 12
    assert res["bpb"] == pytest.approx(6 * math.log2(300) / 12)


def test_windows_are_non_overlapping_and_spread_with_a_fixed_stride():
    assert window_starts(100, 10, 3).tolist() == [0, 30, 60]
    assert window_starts(25, 10, 5).tolist() == [0, 10]  # only full windows
    assert window_starts(100, 10, None).tolist() == list(range(0, 100, 10))  # ppl.max_windows=null: every window
    s = window_starts(10_000, 64, 20)
    assert len(s) == 20 and np.all(np.diff(s) >= 64) and s[-1] + 64 <= 10_000
    assert len(set(np.diff(s).tolist())) <= 2  # a fixed (rounded) stride


def test_each_window_is_scored_from_scratch():
    model = tiny_gpt("momentum", vocab=40)
    tokens = np.random.default_rng(1).integers(1, 40, size=64)
    both = score_windows(model, CharTokenizer(40), tokens, length=32, max_windows=10)
    alone = score_windows(model, CharTokenizer(40), tokens[32:], length=32, max_windows=10)
    assert both[1].nll == pytest.approx(alone[0].nll, rel=1e-6)  # what came before the window does not matter


def test_split_shorter_than_a_window_is_a_clear_error():
    with pytest.raises(DataError, match="fewer than one window"):
        score_windows(uniform_lm(10), CharTokenizer(10), np.arange(1, 9), length=16, max_windows=5)


def test_lengths_default_to_the_paper_or_fractions_of_the_context():
    assert PplConfig().resolve_lengths(1024) == [256, 512, 1024]
    assert PplConfig().resolve_lengths(2048) == [256, 512, 1024]
    assert PplConfig().resolve_lengths(256) == [64, 128, 256]
    assert PplConfig(lengths=[128, 64]).resolve_lengths(256) == [64, 128]
    with pytest.raises(ConfigError, match="context is 256"):
        PplConfig(lengths=[512]).resolve_lengths(256)
    with pytest.raises(ConfigError, match="max_windows"):
        PplConfig(max_windows=0)
    assert PplConfig(max_windows=None).max_windows is None  # every window (results.md's bits-per-byte advice)
    assert PplConfig().resolve_lengths(2) == [2]
    # a context of one token: the default lengths were [1, 2], a ZeroDivisionError after training
    with pytest.raises(ConfigError, match=r"context is 1 token: perplexity windows need 2 tokens at least; turn "
                                          r"perplexity off with ppl.enabled=false"):
        PplConfig().resolve_lengths(1)


def test_evaluator_reports_valid_lengths_and_train_at_the_longest(capsys):
    V = 20
    ev = PerplexityEvaluator(uniform_lm(V), CharTokenizer(V), max_windows=4)
    tokens = np.random.default_rng(0).integers(1, V, size=500)
    res = ev.evaluate(tokens, [8, 16], train_tokens=tokens)
    # off a terminal (a log file), where tqdm shows no bar, each part says when it is done: it was silent
    err = capsys.readouterr().err
    assert "[momattn] ppl valid@8: 4 windows (0m0" in err and "[momattn] ppl train@16: 4 windows (" in err
    assert list(res.valid) == ["8", "16"] and list(res.train) == ["16"]
    assert res.valid["8"].ppl == pytest.approx(V) and "first token" in res.protocol
    assert res.valid["16"].n_windows == 4 and res.valid["16"].n_windows_available == 500 // 16


def test_a_diverged_model_has_infinite_perplexity_not_an_overflow_error():
    from momattn.eval.ppl import WindowScore

    res = aggregate([WindowScore(0, 710.0 * 15, 15, 10)])  # 710 nats per token: exp overflows a float
    assert res["ppl"] == float("inf") and res["nll_per_token"] == 710.0
    assert aggregate([WindowScore(0, float("nan"), 15, 10)])["ppl"] != aggregate([WindowScore(0, float("nan"), 15, 10)])["ppl"]  # nan stays nan


def test_bytes_of_windows_cut_inside_a_character_add_up_to_the_text():
    from momattn.tokenizer import gpt2_tokenizer

    tok = gpt2_tokenizer()
    text = "日本語のテキスト 😀 café naïve"
    ids = tok.encode(text)
    for width in (1, 2, 3, 5):  # windows starting or ending inside a multi-byte character
        assert sum(count_bytes(tok, ids[i:i + width]) for i in range(0, len(ids), width)) == len(text.encode())


def test_the_report_names_each_models_window_count_where_they_differ():
    # models with other tokenizers cut the same text into other windows: the line showed the last model's counts
    from momattn.eval.report import ppl_markdown
    from momattn.eval.results import ModelResult, PerplexityResult, WindowNumbers

    def result(label, n_valid):
        w = {"64": WindowNumbers(ppl=10.0, bpb=1.0, nll_per_token=2.3, n_windows=n_valid, n_tokens=64 * n_valid,
                                 n_bytes=100, length=64, split="valid", n_windows_available=n_valid, split_tokens=9)}
        t = {"64": WindowNumbers(**{**w["64"].__dict__, "n_windows": 5, "split": "train"})}
        return ModelResult(label=label, attention="vanilla", model={}, tokenizer={}, eval_config={},
                           ppl=PerplexityResult(protocol="p", lengths=[64], max_windows=50, valid=w, train=t))

    [line] = [x for x in ppl_markdown([result("bpe", 40), result("char", 50)]) if x.startswith("Windows scored")]
    assert line == "Windows scored: train64: 5; valid64: 40 (bpe), 50 (char)."


def test_the_report_says_when_the_models_were_scored_on_different_texts():
    # each checkpoint is scored on its own run's corpus: a GINC model beside a text one, or two runs of other files,
    # sat side by side under "comparable across tokenizers" without a word
    from momattn.eval.report import ppl_markdown
    from momattn.eval.results import ModelResult, PerplexityResult, WindowNumbers

    def result(label, data):
        w = {"64": WindowNumbers(ppl=10.0, bpb=1.0, nll_per_token=2.3, n_windows=5, n_tokens=320, n_bytes=100,
                                 length=64, split="valid", n_windows_available=5, split_tokens=9)}
        return ModelResult(label=label, attention="vanilla", model={}, tokenizer={}, eval_config={},
                           ppl=PerplexityResult(protocol="p", lengths=[64], max_windows=50, valid=w, data=data))

    text = {"source": "text_files", "paths": ["a.txt"], "batch_size": 8, "cache_dir": "/c"}
    same = [result("a", text), result("b", {**text, "batch_size": 2, "cache_dir": "/d"})]  # batching: same text
    assert not [x for x in ppl_markdown(same) if "Different corpora" in x]
    [line] = [x for x in ppl_markdown([result("a", text), result("b", {**text, "paths": ["b.txt"]})])
              if "Different corpora" in x]
    assert "(a: data.paths=['a.txt']; b: data.paths=['b.txt']; " in line
    [line] = [x for x in ppl_markdown([result("t", text), result("g", {"_target_": "momattn.data.ginc.GincCorpus"})])
              if "Different corpora" in x]
    assert "(t: data=text_files; g: data=ginc; " in line
