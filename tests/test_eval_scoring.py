"""Prefix-cached answer scoring equals naive full-prompt scoring, for every attention kind."""

import math

import pytest
import torch
from test_eval_common import CharTokenizer, bigram_lm, tiny_gpt

from momattn.eval.config import IclConfig
from momattn.eval.icl import IclEvaluator
from momattn.eval.scoring import PrefixScorer, score_naive
from momattn.eval.tasks import IclExample, IclTask

KINDS = [("vanilla", {}), ("momentum", {}), ("momentum", {"learnable_eta": True, "include_current": True}),
         ("multirate_ema", {})]


def _rows(g, lengths):
    def ids(n):
        return torch.randint(1, 60, (n,), generator=g).tolist()

    return [(ids(q), ids(a)) for q, a in lengths]


@pytest.mark.parametrize("kind,attn", KINDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_cached_scores_equal_naive_scores(kind, attn, dtype, tol):
    model = tiny_gpt(kind, vocab=60, **attn).to(dtype)
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(1, 60, (23,), generator=g).tolist()
    rows = _rows(g, [(5, 1), (3, 3), (9, 2), (1, 1), (7, 4)])
    cached = PrefixScorer(model, prefix, batch_tokens=70).score(rows)  # several batches of different widths
    naive = [score_naive(model, prefix + q, [a])[0] for q, a in rows]
    for (c, nc), (n, nn_) in zip(cached, naive):
        assert nc == nn_ and abs(c - n) <= tol * max(1.0, abs(n))


@pytest.mark.parametrize("kind", ["vanilla", "momentum", "multirate_ema"])
def test_rows_sharing_a_context_share_a_sequence_with_the_same_scores(kind):
    model = tiny_gpt(kind, vocab=60).double()
    prefix, q1, q2 = [3, 4, 5, 6], [7, 8, 9], [10, 11]
    rows = [(q1, [12]), (q1, [13]), (q1, [14, 15, 16]), (q1, [17, 18]),  # one-token answers ride on q1's rows
            (q2, [12]), (q2, [13]),  # only one-token answers: one bare-context row
            ([], [20]), ([], [21, 22])]  # empty context: the prefix's last logits
    scorer = PrefixScorer(model, prefix, batch_tokens=30)
    assert len(scorer._sequences(rows)) == 4  # q1: 2, q2: 1, empty context: 1
    got = scorer.score(rows)
    for (q, a), (s, n) in zip(rows, got):
        ref, ref_n = score_naive(model, prefix + q, [a])[0]
        assert n == ref_n == len(a) and s == pytest.approx(ref, abs=1e-10)


def test_the_prefix_cache_is_not_modified_by_scoring():
    model = tiny_gpt("momentum", vocab=60)
    scorer = PrefixScorer(model, [5, 6, 7, 8])
    rows = _rows(torch.Generator().manual_seed(1), [(4, 2), (2, 1)])
    first = scorer.score(rows)
    assert scorer.cache.length == 4
    assert scorer.score(rows) == first


def test_empty_prefix_batches_full_prompts():
    model = tiny_gpt("vanilla", vocab=60)
    rows = _rows(torch.Generator().manual_seed(2), [(6, 2), (3, 1)])
    batched = PrefixScorer(model, []).score(rows)
    single = [PrefixScorer(model, [], batch_tokens=1).score([r])[0] for r in rows]
    assert [n for _, n in batched] == [2, 1]
    assert all(abs(a - b) < 1e-5 for (a, _), (b, _) in zip(batched, single))


def test_mean_and_sum_of_log_probs_pick_different_answers():
    tok = CharTokenizer()
    sp, x, y, z, colon = (ord(c) for c in " xyz:")
    # p(' ' | ':') = .9; p(x | ' ') = .3, p(y | ' ') = .25, p(z | y) = .99
    lm = bigram_lm(128, {colon: {sp: 0.9}, sp: {x: 0.3, y: 0.25}, y: {z: 0.99}})
    q = tok.encode("q:")
    scores = PrefixScorer(lm, [0]).score([(q, tok.encode(" x")), (q, tok.encode(" yz"))])
    (sx, nx), (syz, nyz) = scores
    assert sx == pytest.approx(math.log(0.9 * 0.3)) and syz == pytest.approx(math.log(0.9 * 0.25 * 0.99))
    assert sx > syz  # the sum prefers " x"
    assert sx / nx < syz / nyz  # the mean per token prefers " yz"
    # the same case through the ICL evaluator: label " yz" is right under mean, wrong under sum
    ex = IclExample(0, {"text": "q"}, ("x", "yz"), 1)
    task = IclTask("t", "{text}:", ("x", "yz"), "test", lambda seed: None)
    ev = IclEvaluator(lm, tok, IclConfig(tasks=["sst2"], shots=[0], seeds=[1]), split_seed=0)
    test, _ = ev.encode_test(task, [ex])
    run = ev.evaluate_run(task, test, [ex], 0, 1)
    assert run.acc_mean_lp == 1.0 and run.acc_sum_lp == 0.0 and run.acc == 1.0  # score=mean: the headline


@pytest.mark.parametrize("kind", ["vanilla", "momentum", "multirate_ema"])
def test_icl_runs_score_like_full_prompts(kind):
    """End to end through IclEvaluator: each recorded answer score equals naive scoring of the full prompt."""
    model = tiny_gpt(kind, vocab=128, block_size=96).double()
    tok = CharTokenizer()
    answers = ("no", "yes", "maybe")
    pool = [IclExample(i, {"text": f"d{i}"}, answers, i % 3) for i in range(10)]
    test = [IclExample(100 + i, {"text": "t" * (1 + i % 4)}, answers, i % 3) for i in range(6)]
    task = IclTask("t", "In: {text}\nOut:", answers, "test", lambda seed: None)
    cfg = IclConfig(tasks=["sst2"], shots=[3], seeds=[1], separator="\n\n")
    ev = IclEvaluator(model, tok, cfg, split_seed=0)
    enc, _ = ev.encode_test(task, test)
    ev.evaluate_run(task, enc, pool, 3, 1)
    demos = ev.demonstrations(task, pool, 3, 1)
    for rec, e in zip(ev.predictions, enc):
        prompt = [tok.eot_id] + [t for d in demos[: rec["k_used"]] for t in d] + e.query
        naive = score_naive(model, prompt, e.answers)
        assert rec["k_used"] == 3
        assert rec["logprob_sum"] == pytest.approx([s for s, _ in naive], abs=1e-9)


@pytest.mark.parametrize("kind", ["vanilla", "momentum", "multirate_ema"])
def test_batches_of_the_shortest_sequences_score_like_full_prompts(kind):
    # a batch of empty contexts with one-token answers needs no forward pass (only the prefix's last logits); a
    # batch of one-token contexts needs one position each
    model = tiny_gpt(kind, vocab=60).double()
    prefix = [3, 4, 5]
    for rows in ([([], [20]), ([], [21])], [([7], [20]), ([8], [21]), ([9], [22])]):
        got = PrefixScorer(model, prefix).score(rows)
        for (q, a), (s, n) in zip(rows, got):
            ref, ref_n = score_naive(model, prefix + q, [a])[0]
            assert n == ref_n == 1 and s == pytest.approx(ref, abs=1e-10)


class _AllLogits(torch.nn.Module):
    """A model without `select=` (like the tests' fakes): the scorer must index the full logits itself."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config = model, model.config

    def forward(self, idx, cache=None):
        return self.inner(idx, cache=cache)

    def new_cache(self):
        return self.inner.new_cache()


@pytest.mark.parametrize("wrap", [False, True])
@pytest.mark.parametrize("kind", ["vanilla", "momentum", "multirate_ema"])
def test_scores_equal_log_softmax_of_one_forward_pass_over_each_full_prompt(kind, wrap):
    """The reference owes nothing to PrefixScorer: log p(a_j | prompt + a_<j) read off model(prompt + a)."""
    model = tiny_gpt(kind, vocab=60).double()
    g = torch.Generator().manual_seed(5)
    prefix = torch.randint(1, 60, (11,), generator=g).tolist()
    rows = _rows(g, [(4, 3), (4, 1), (2, 2), (6, 1)]) + [([], [7, 8]), ([], [9])]
    rows[1] = (rows[0][0], rows[1][1])  # a one-token answer sharing a context with a three-token one
    scorer = PrefixScorer(_AllLogits(model) if wrap else model, prefix, batch_tokens=40)
    assert scorer.selects is not wrap
    for (q, a), (s, n) in zip(rows, scorer.score(rows)):
        ids = torch.tensor([prefix + q + a])
        logp = torch.log_softmax(model(ids)[0], -1)  # (T, V)
        start = len(prefix) + len(q)
        ref = sum(logp[start + j - 1, t].item() for j, t in enumerate(a))
        assert n == len(a) and s == pytest.approx(ref, abs=1e-10)


def test_rows_of_very_different_lengths_go_in_separate_batches_rather_than_padding():
    model = tiny_gpt("vanilla", vocab=60, block_size=64)
    calls = []

    class Counting(_AllLogits):
        def forward(self, idx, cache=None):
            calls.append(tuple(idx.shape))
            return super().forward(idx, cache)

    g = torch.Generator().manual_seed(9)
    rows = _rows(g, [(10, 1)] * 40 + [(30, 1)] * 40)  # one-token answers: a row is its context
    scorer = PrefixScorer(Counting(model), [1, 2, 3], batch_tokens=4096)
    calls.clear()
    got = scorer.score(rows)
    assert sorted(calls) == [(40, 10), (40, 30)]  # not one (80, 30) batch, two thirds of it padding
    ref = PrefixScorer(model, [1, 2, 3], batch_tokens=4096).score(rows)
    assert [s for s, _ in got] == pytest.approx([s for s, _ in ref], abs=1e-5)
