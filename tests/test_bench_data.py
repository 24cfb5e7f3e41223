"""benchmarks/bench_data.py: its measurements run against today's data pipeline (the token cache's builder became
a generator of chunks, and the benchmark crashed on its len() at every run)."""

import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_data  # noqa: E402


@pytest.mark.slow
def test_the_cache_build_counts_every_token_it_times(tmp_path):
    from momattn.tokenizer import train_bpe

    docs, _ = bench_data.corpus(40, tmp_path)
    tok = train_bpe(lambda: docs, 300)
    r = bench_data.cache_build(docs, tok, 1)
    assert r["tokens"] == sum(len(ids) + 1 for ids in tok.encode_documents(docs))  # each document and its eot
    assert r["seconds"] > 0 and r["tokens_per_s"] == r["tokens"] / r["seconds"]


@pytest.mark.slow
def test_a_resumed_stream_reaches_the_same_window_both_ways(tmp_path):
    from momattn.tokenizer import train_bpe

    docs, path = bench_data.corpus(40, tmp_path)
    r = bench_data.resume(path, train_bpe(lambda: docs, 300), 16, 30)
    assert r["same_window"] and r["point"][0] <= 30 and r["tokens"] == 30 * 16
    assert all(r[how]["seconds"] > 0 for how in ("retokenized", "sought"))
