"""Shared fakes for the evaluation tests: a character tokenizer and models whose probabilities are known."""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import conftest
import torch
import torch.nn as nn

from momattn.model import KVCache

EOT_TEXT = "<|endoftext|>"


class CharTokenizer:
    """One token per character: id = code point; id 0 is end-of-text."""

    name = "chars"
    eot_id = 0

    def __init__(self, vocab_size: int = 128):
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        ids = [ord(c) for c in text]
        assert all(0 < i < self.vocab_size for i in ids), text
        return ids

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        return "".join(EOT_TEXT if i == 0 else chr(i) for i in ids)


class FakeLM(nn.Module):
    """Next-token log-probs from a (V, V) table indexed by the CURRENT token (a bigram model); supports the
    cache interface (it needs no state), so the cached ICL path runs on it."""

    def __init__(self, logp: torch.Tensor, block_size: int = 64):
        super().__init__()
        self.register_buffer("logp", logp)
        self.config = SimpleNamespace(block_size=block_size, attention=SimpleNamespace(kind="fake"))

    def new_cache(self) -> KVCache:
        return KVCache(0)

    def forward(self, idx, cache=None):
        start = cache.length if cache is not None else 0
        assert start + idx.size(1) <= self.config.block_size, "context overflow"
        if cache is not None:
            cache.length = start + idx.size(1)
        return self.logp[idx]  # (B, T, V)


def uniform_lm(vocab: int, block_size: int = 64) -> FakeLM:
    return FakeLM(torch.zeros(vocab, vocab), block_size)


def bigram_lm(vocab: int, probs: dict[int, dict[int, float]], block_size: int = 64) -> FakeLM:
    """p(next | current) as given in probs[current]; the rest of each row's mass spread evenly."""
    table = torch.empty(vocab, vocab, dtype=torch.float64)
    for cur in range(vocab):
        given = probs.get(cur, {})
        rest = (1.0 - sum(given.values())) / (vocab - len(given))
        table[cur] = rest
        for nxt, p in given.items():
            table[cur, nxt] = p
    return FakeLM(table.log(), block_size)


tiny_gpt = functools.partial(conftest.tiny_gpt, vocab=128)  # the shared tiny GPT, with room for CharTokenizer


def test_fakes_are_what_they_say():
    tok = CharTokenizer()
    assert tok.decode(tok.encode("ab:")) == "ab:"
    lm = bigram_lm(8, {1: {2: 0.5}})
    p = lm(torch.tensor([[1]]))[0, 0].exp()
    assert math.isclose(float(p[2]), 0.5) and math.isclose(float(p.sum()), 1.0)
