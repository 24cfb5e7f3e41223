"""Near-duplicate texts by shared word 8-grams ("shingles"), for what exact, substring and same-ends rules miss:
one AGNews story from two wires with a headline word changed and another ending, or a validation document
that is a training document with a line added.

    q_words = word_lists(texts)                  # normalised words (case, punctuation, escapes ignored)
    held = holders(q_words, corpus_words)        # {corpus doc: the queries it holds SHARE of the 8-grams of}

A query "is held" by a corpus document that contains at least SHARE of the query's distinct word 8-grams.
Queries of fewer than N words have no 8-gram and are never held (the exact rules cover short texts). The
8-grams are hashed to 64 bits with fixed random tables (two different 8-grams collide with probability 2^-64),
and the matching runs in numpy: the default corpus's checks take seconds, not the ~15 s of a Python loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import chain, repeat

import numpy as np

N = 8  # words per shingle
SHARE = 0.5  # a query is held by a document that has at least this share of its shingles
CHUNK_WORDS = 2_000_000  # corpus words matched at a time by holders (~100 MB of arrays)


def word_lists(texts: Iterable[str]) -> list[list[str]]:
    """Each text's words under staicc.normalize's rules (letters and digits, case, accents, HTML entities and PTB
    escapes ignored), split where the text has whitespace or punctuation."""
    from momattn.data.staicc import normalize_words

    return [s.split() for s in normalize_words(list(texts))]


def shingles(words: Sequence[str]) -> set[int]:
    """A text's distinct word 8-grams, hashed (Python's hash: for looking at one pair of texts; `holders` hashes
    its own way)."""
    return {hash(tuple(words[i : i + N])) for i in range(len(words) - N + 1)}


def _hashed(docs: Sequence[Sequence[str]], vocab: dict[str, int], table: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, document indices) of the documents' 8-grams whose words are all in `vocab` (repeats included),
    in document order: word ids through one random 64-bit table per position, XORed (tabulation hashing: two
    different 8-grams collide with probability 2^-64)."""
    lengths = np.fromiter(map(len, docs), np.int64, len(docs))
    ids = np.fromiter(map(vocab.get, chain.from_iterable(docs), repeat(-1)), np.int64, int(lengths.sum()))
    n_pos = len(ids) - N + 1
    if n_pos <= 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    doc = np.repeat(np.arange(len(docs)), lengths)  # (W,) the document of each word
    # an 8-gram starts at i when words i..i+7 lie in one document and every one is known (-1: not in vocab)
    unknown = np.concatenate([[0], np.cumsum(ids < 0)])
    start = np.flatnonzero((doc[:n_pos] == doc[N - 1 :]) & (unknown[N : N + n_pos] == unknown[:n_pos]))
    h = np.zeros(len(start), np.uint64)
    for j in range(N):
        h ^= table[j, ids[start + j]]
    return h, doc[start]


def _distinct(h: np.ndarray, doc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (hash, document) pairs without repeats, sorted by hash."""
    order = np.lexsort((doc, h))
    h, doc = h[order], doc[order]
    new = np.ones(len(h), bool)
    new[1:] = (h[1:] != h[:-1]) | (doc[1:] != doc[:-1])
    return h[new], doc[new]


def holders(queries: Sequence[Sequence[str]], corpus: Iterable[Sequence[str]],
            share: float = SHARE, common: int | None = None) -> dict[int, set[int]]:
    """{index of a corpus document: indices of the queries whose shingles it holds at least `share` of}.
    common: a shingle that more than this many queries have is left out of every query's count and of the matching
    (AGNews's Reuters quote links: two stories that share a link are not one story). A query all of whose
    shingles are common is never held."""
    if not 0 <= share <= 1:  # (also nan)
        raise ValueError(f"share={share!r} must lie in [0, 1]")
    queries, corpus = list(queries), list(corpus)
    vocab: dict[str, int] = {}
    for words in queries:
        for w in words:
            vocab.setdefault(w, len(vocab))
    table = np.random.default_rng(0).integers(0, 2**64, size=(N, len(vocab)), dtype=np.uint64)  # fixed: same result
    qh, qi = _distinct(*_hashed(queries, vocab, table))  # (S,) each: every query's distinct shingles, by hash
    if common is not None and len(qh):
        _, first, n = np.unique(qh, return_inverse=True, return_counts=True)  # queries per shingle (pairs distinct)
        own = n[first] <= common
        qh, qi = qh[own], qi[own]
    if not len(qh):
        return {}
    need = np.maximum(1, np.ceil(share * np.bincount(qi, minlength=len(queries)))).astype(np.int64)
    found: dict[int, set[int]] = {}
    start, words = 0, 0
    for end, doc in enumerate(corpus, 1):  # in parts of ~CHUNK_WORDS words: memory stays bounded
        words += len(doc)
        if words >= CHUNK_WORDS or end == len(corpus):
            for c, held in _held(corpus[start:end], vocab, table, qh, qi, need).items():
                found[start + c] = held
            start, words = end, 0
    return found


def _held(corpus, vocab, table, qh, qi, need) -> dict[int, set[int]]:
    """holders for one part of the corpus, given the queries' distinct shingles (qh sorted, qi) and needs."""
    ch, ci = _hashed(corpus, vocab, table)
    if not len(ch):
        return {}
    pos = np.minimum(np.searchsorted(qh, ch), len(qh) - 1)
    shared = qh[pos] == ch  # most of the corpus's shingles are no query's: dropped before anything else
    ch, ci = _distinct(ch[shared], ci[shared])
    if not len(ch):
        return {}
    lo, hi = np.searchsorted(qh, ch, "left"), np.searchsorted(qh, ch, "right")
    hits = hi - lo
    # every (corpus document, query) pair per shared shingle, then how many shingles each pair shares
    offsets = np.repeat(lo - np.concatenate([[0], np.cumsum(hits)[:-1]]), hits) + np.arange(int(hits.sum()))
    pair_c, pair_q = np.repeat(ci, hits), qi[offsets]
    key, counts = np.unique(pair_c * len(need) + pair_q, return_counts=True)
    c, q = np.divmod(key, len(need))
    held = counts >= need[q]
    found: dict[int, set[int]] = {}
    for cc, qq in zip(c[held].tolist(), q[held].tolist()):
        found.setdefault(cc, set()).add(qq)
    return found
