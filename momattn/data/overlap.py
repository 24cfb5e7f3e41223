"""Near-duplicate texts by shared word 8-grams ("shingles"), for what exact, substring and same-ends rules miss:
one AGNews story from two wires with a headline word changed and another ending, or a validation document
that is a training document with a line added.

    q_words = word_lists(texts)                  # normalised words (case, punctuation, escapes ignored)
    held = holders(q_words, corpus_words)        # {corpus doc: the queries it holds SHARE of the 8-grams of}

A query "is held" by a corpus document that contains at least SHARE of the query's distinct word 8-grams.
Queries of fewer than N words have no 8-gram and are never held (the exact rules cover short texts). Hashes
are Python's (salted per process): two different 8-grams collide with probability ~2^-64, so the result is the
same in every process.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

N = 8  # words per shingle
SHARE = 0.5  # a query is held by a document that has at least this share of its shingles


def word_lists(texts: Iterable[str]) -> list[list[str]]:
    """Each text's words under staicc.normalize's rules (letters and digits, case, accents, HTML entities and PTB
    escapes ignored), split where the text has whitespace or punctuation."""
    from momattn.data.staicc import normalize_words

    return [s.split() for s in normalize_words(list(texts))]


def shingles(words: Sequence[str]) -> set[int]:
    return {hash(tuple(words[i : i + N])) for i in range(len(words) - N + 1)}


def holders(queries: Sequence[Sequence[str]], corpus: Iterable[Sequence[str]],
            share: float = SHARE) -> dict[int, set[int]]:
    """{index of a corpus document: indices of the queries whose shingles it holds at least `share` of}."""
    index: dict[int, list[int]] = {}
    need = []
    for q, words in enumerate(queries):
        sh = shingles(words)
        need.append(max(1, math.ceil(share * len(sh))))
        for h in sh:
            index.setdefault(h, []).append(q)
    found: dict[int, set[int]] = {}
    if not index:
        return found
    for c, words in enumerate(corpus):
        counts: Counter = Counter()
        for h in shingles(words):
            qs = index.get(h)
            if qs is not None:
                counts.update(qs)
        held = {q for q, n in counts.items() if n >= need[q]}
        if held:
            found[c] = held
    return found
