"""Leakage between the LM text and the rows reserved for in-context evaluation (momattn.data.staicc).

The tasks share sources (SST-2 phrases are fragments of SST sentences; SST-5 and MR hold the same reviews with
other escapes), so a reserved row can come back as LM text through another task. These tests check, under
`normalize`, that no LM document the corpus yields IS a reserved row, CONTAINS one of 5+ words or, with 5+
words, lies INSIDE one; that no test text sits in a demonstration pool; and that the same checks fail on the
LM text of the old exact-text filter.
"""

from __future__ import annotations

import functools
import math
import random
from collections import Counter

import numpy as np
import pytest

from momattn.data import staicc
from momattn.data.staicc import (
    ICL_DEMO_ROWS,
    ICL_TEST_ROWS,
    MIN_SUBSTRING_WORDS,
    SPLIT_SEED,
    STAICC_FILES,
    docs_containing,
    lm_texts,
    n_words,
    normalize,
    normalize_many,
    read_staicc,
    reserved_texts,
    split_rows,
)
from momattn.utils import stable_seed

# one worker runs these (and test_data's LM-text test): the filtered LM text is built once, not once per worker
pytestmark = pytest.mark.xdist_group("staicc_lm_text")

TASKS = list(STAICC_FILES)

# real rows: the same review in SST-5 (PTB escapes, split clitics, "...") and MR (brackets, "isn't", ". . .")
NEAR_DUPLICATES = [
    ("sst5", "-lrb- woo 's -rrb- most resonant film since the killer .",
     "mr", "[woo's] most resonant film since the killer ."),
    ("sst5", "all of the filmmakers ' calculations ca n't rescue brown sugar from the curse of blandness .",
     "mr", "all of the filmmakers' calculations can't rescue brown sugar from the curse of blandness ."),
    ("sst5", "... a gleefully grungy , hilariously wicked black comedy ...",
     "mr", ". . . a gleefully grungy , hilariously wicked black comedy . . ."),
    ("sst5", "this is not a retread of `` dead poets ' society . ''",
     "mr", "this is not a retread of \" dead poets' society . \""),
    ("sst5", "the movie 's messages are quite admirable , but the story is just too clichéd and too often strains "
     "credulity .", "sst2", "the movie 's messages are quite admirable , but the story is just too clichéd and too "
     "often strains credulity "),
]


@functools.cache
def reserved(seed: int = SPLIT_SEED) -> tuple[set[str], set[str]]:
    """(normalised reserved texts of every task, those of 5+ words), rebuilt here from split_rows."""
    whole, long = set(), set()
    for task in TASKS:
        rows, s = read_staicc(task), split_rows(task, seed)
        for i in np.concatenate([s.icl_test, s.icl_demo]).tolist():
            whole.add(normalize(rows[i][0]))
            if n_words(rows[i][0]) >= MIN_SUBSTRING_WORDS:
                long.add(normalize(rows[i][0]))
    return whole, long


def brute_force(docs: list[str], patterns) -> np.ndarray:
    joined = "\x00".join(docs)
    starts = np.cumsum([0] + [len(d) + 1 for d in docs[:-1]])
    hit = np.zeros(len(docs), bool)
    for p in {p for p in patterns if p}:
        pos = joined.find(p)
        while pos >= 0:
            hit[np.searchsorted(starts, pos, side="right") - 1] = True
            pos = joined.find(p, pos + 1)
    return hit


# the same LM documents are normalised and split into words by several of these tests: each text once
# (normalize_many and word_lists treat each text on its own, so a text's result is the same in any list)
_NORMS: dict[str, str] = {}
_WORDS: dict[str, list[str]] = {}


def norms(texts) -> list[str]:
    """normalize_many(texts), each distinct text computed once per session."""
    texts = list(texts)
    new = [t for t in dict.fromkeys(texts) if t not in _NORMS]
    _NORMS.update(zip(new, normalize_many(new)))
    return [_NORMS[t] for t in texts]


def words(texts) -> list[list[str]]:
    """overlap.word_lists(texts), each distinct text computed once per session."""
    from momattn.data.overlap import word_lists

    texts = list(texts)
    new = [t for t in dict.fromkeys(texts) if t not in _WORDS]
    _WORDS.update(zip(new, word_lists(new)))
    return [_WORDS[t] for t in texts]


def test_normalize_ignores_case_spacing_punctuation_and_escapes():
    same = [
        ["Is n't it -LRB- ok -RRB- ?", "isn't it (ok)", "isnt it ok", "IS N'T IT [OK]"],
        ["i ca n't say", "I can't say", "i cant say"],
        ["was . . . hence", "was ... hence", "was\u2026hence", "was -- hence", "was \x97 hence"],
        ["a mind-blowing , breath-taking mess", "a mind - blowing breath taking mess", "amindblowingbreathtakingmess"],
        ["`` twilight zone '' episode", '"twilight zone" episode', "\u201ctwilight zone\u201d episode"],
        ["lilo &amp; stitch", "lilo & stitch", "Lilo and Stitch".replace(" and ", " ")],
        ["too clichéd", "too cliche\u0301d", "too cliched", "TOO CLICHÉD"],
        ["4\\/5ths of it", "4/5ths of it"],
        ["Blair #39;s  quot;plan quot; &lt;b&gt;", "blair's \"plan\" <>b"],
        ["caf&#233; society", "café society", "cafe society"],
    ]
    for group in same:
        assert len({normalize(t) for t in group}) == 1, group
    assert normalize("a good film") != normalize("a bad film") and normalize("1984") != normalize("1985")
    assert normalize(" -- ; ... ") == "" and normalize("ÆSIR ø") == "æsirø"  # non-ASCII letters stay
    # words: a non-ASCII separator breaks a word as an ASCII one does (a no-break space or em dash joined the words,
    # so a row rewritten with them escaped the 8-gram filter); accents and curly apostrophes do not break one
    from momattn.data.staicc import normalize_words

    words = normalize_words(["good\xa0movie\u2014so\u3000bad\u2026really", "good movie -- so bad ... really",
                             "don\u2019t clich\u00e9 cliche\u0301", "don't cliche cliche"])
    assert [w.split() for w in words] == [["good", "movie", "so", "bad", "really"]] * 2 + [["dont", "cliche", "cliche"]] * 2


def test_real_near_duplicates_are_caught_by_normalize_and_were_missed_before():
    for task_a, a, task_b, b in NEAR_DUPLICATES:
        texts_a, texts_b = {t for t, _ in read_staicc(task_a)}, {t for t, _ in read_staicc(task_b)}
        assert a in texts_a and b in texts_b, (a, b)  # real rows of the data
        assert normalize(a) == normalize(b)
        assert staicc._plain_norm(a) != staicc._plain_norm(b)  # the old exact comparison missed them


def test_normalize_many_equals_normalize_on_real_rows():
    rng = random.Random(0)
    texts = ["", "\x00 x", "#12;", "é\x00é", " quot;a", "-lrb-"]
    for task in TASKS:
        rows = read_staicc(task)
        texts += [rows[i][0] for i in rng.sample(range(len(rows)), 500)]
    assert normalize_many(texts) == [normalize(t) for t in texts]


def test_n_words_counts_words_not_clitics_or_escapes():
    assert n_words("is n't a bad film") == n_words("isn't a bad film") == 4
    assert n_words("-lrb- has -rrb- an immediacy and an intimacy") == 6
    assert n_words("it 's the movie 's best , -- scene") == 5 and n_words(" ... ") == 0
    # a hyphenated word is the words normalize splits it into: counted as one, a row of 6 words escaped rule (b)
    assert n_words("lurches between not-very-funny comedy ") == 6 and n_words("a co-written/directed film") == 5


def test_docs_containing_is_exact():
    docs = ["abcdefghijklmnopqrstuvwxyz", "xyz", "0123456789abcdef", "æøåabcdefgh", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab"]
    cases = {
        ("xyz",): [1, 1, 0, 0, 0],  # short pattern, at the end and as a whole doc
        ("abcdefgh",): [1, 0, 0, 1, 0],  # 8 bytes, after non-ASCII letters
        ("lmnopqrstuvwxyz",): [1, 0, 0, 0, 0],  # 15 bytes, up to the end of a doc
        ("9abcdefghijklmnop",): [0, 0, 0, 0, 0],  # would only match across two docs
        ("0123456789abcdef",): [0, 0, 1, 0, 0],  # 16 bytes = a whole doc
        ("øåabcdefg",): [0, 0, 0, 1, 0],  # non-ASCII in the anchor
        ("aaaaaaaaaaaaaaaaaaab",): [0, 0, 0, 0, 1],  # self-overlapping prefix
        ("zzzzzzzzzzzzzzzzzz", "qqq"): [0, 0, 0, 0, 0],
    }
    for pats, want in cases.items():
        assert docs_containing(docs, pats).astype(int).tolist() == want, pats
        assert brute_force(docs, pats).astype(int).tolist() == want, pats
    # real text: SST-5's LM rows against every long reserved text plus random fragments of the docs themselves
    docs = normalize_many(read_staicc("sst5")[i][0] for i in split_rows("sst5").lm_train.tolist())
    rng = random.Random(1)
    frags = []
    for d in rng.sample(docs, 400):
        a = rng.randrange(len(d))
        frags.append(d[a : a + rng.choice([3, 8, 12, 16, 30])])
    pats = set(rng.sample(sorted(reserved()[1]), 3000)) | set(frags)
    assert np.array_equal(docs_containing(docs, pats), brute_force(docs, pats))
    assert staicc._find(docs, frags)[1] == set(frags)  # which patterns occur: each fragment


@functools.cache
def lm_docs(split: str) -> dict[str, tuple[list[str], list[str]]]:
    """task -> (LM documents as lm_texts yields them, their normalised forms)."""
    out = {}
    for task in TASKS:
        raw = lm_texts([task], split)
        out[task] = (raw, norms(raw))
    return out


def fragments(raw: list[str], docs: list[str], whole: set[str]) -> list[str]:
    """The documents of 5+ words that lie inside a reserved text (only those searched for: whether one text
    occurs does not depend on the others searched with it)."""
    enough = [n_words(r) >= MIN_SUBSTRING_WORDS for r in raw]
    found = staicc._find(sorted(whole), {d for d, ok in zip(docs, enough) if d and ok})[1]
    return [d for d, ok in zip(docs, enough) if ok and d in found]


@pytest.mark.slow
@pytest.mark.parametrize("split", ["train", "val"])
def test_lm_text_holds_no_reserved_row_whole_inside_or_in_part(split):
    whole, long = reserved()
    assert reserved_texts() == frozenset(whole)
    lm = lm_docs(split)
    assert all(docs for _, docs in lm.values())
    same = {t: sum(d in whole for d in docs) for t, (_, docs) in lm.items()}
    inside = {t: int(docs_containing(docs, long).sum()) for t, (_, docs) in lm.items()}
    frags = {t: len(fragments(raw, docs, whole)) for t, (raw, docs) in lm.items()}
    assert not any(same.values()), f"LM documents equal to a reserved row: {same}"
    assert not any(inside.values()), f"LM documents holding a reserved row of {MIN_SUBSTRING_WORDS}+ words: {inside}"
    assert not any(frags.values()), f"LM documents of {MIN_SUBSTRING_WORDS}+ words inside a reserved row: {frags}"
    ends = staicc._reserved_ends(SPLIT_SEED)
    near = {t: sum(staicc.is_near(d, ends) for d in docs) for t, (_, docs) in lm.items()}
    assert not any(near.values()), f"LM documents beginning or ending like a reserved row: {near}"
    # the per-task documents are exactly what the corpus of all tasks yields, but for the val documents that the
    # corpus's train documents hold, whole, with the same ends (rule d) or half of their word 8-grams in one
    # (tasks share sentences: MR, SST-5, Subj; AGNews repeats rows and stories from two wires)
    from momattn.data.overlap import holders

    combined = lm_texts(TASKS, split)
    train_raw = lm_texts(TASKS, "train") if split == "val" else []
    train = set(norms(train_raw))
    train_ends = tuple(frozenset(n[:staicc.NEAR_CHARS] if first else n[-staicc.NEAR_CHARS:] for n in train
                                 if len(n) >= staicc.NEAR_CHARS) for first in (True, False))
    kept = [r for raw, docs in lm.values() for r, d in zip(raw, docs)
            if d not in train and not staicc.is_near(d, train_ends)]
    if split == "val":  # rules (b) and (c) against LM-train: lying inside one of its documents, or holding one
        long_train = {n for r, n in zip(train_raw, norms(train_raw)) if n_words(r) >= MIN_SUBSTRING_WORDS}
        kept_norms = norms(kept)
        inside = set(fragments(kept, kept_norms, train))
        holding = docs_containing(kept_norms, long_train)
        assert len(inside) + int(holding.sum()) > 0  # what the rule is there for (session 55's review: 7)
        kept = [r for r, n, h in zip(kept, kept_norms, holding) if n not in inside and not h]
    held = set().union(*holders(words(kept), words(train_raw)).values()) if split == "val" else set()
    assert [r for j, r in enumerate(kept) if j not in held] == combined
    if split == "val":
        assert not set(norms(combined)) & train
        assert not any(staicc.is_near(d, train_ends) for d in norms(combined))
        assert sum(d in train for _, docs in lm.values() for d in docs) > 100  # what this rule is there for
        # rule (d)'s across tasks (each task's own, AGNews stories from two wires, are gone from its documents
        # already: test_validation_documents_that_a_training_document_mostly_holds_are_dropped)
        assert sum(d not in train and staicc.is_near(d, train_ends) for _, docs in lm.values() for d in docs) > 0


def test_bytes_written_in_cat_v_notation_compare_equal_to_the_characters():
    # Subj writes "exposM-i" and "M-^E" where MR / SST-5 write "exposé" and an ellipsis: one text, not two
    assert normalize("as social exposM-i , skins") == normalize("as social exposé, skins") == "associalexposeskins"
    assert normalize("filmmaking M-^E because") == normalize("filmmaking \x85 because") == "filmmakingbecause"
    assert normalize_many(["expoM-i", "caf\u00e9 M-^E"]) == ["expoe", "cafe"]
    # only there: AGNews and TREC write ordinary "IBM-Lenovo", "RAM-based", "M-16", "200M-Free" (they read
    # "ibienovo", "raaased", "6", "200æree", and no longer matched "IBM Lenovo" and the like)
    assert normalize_many(["IBM-Lenovo", "RAM-based", "an M-16", "200M-Free"]) == normalize_many(
        ["IBM Lenovo", "RAM based", "an M16", "200M Free"]) == ["ibmlenovo", "rambased", "anm16", "200mfree"]


def test_a_nul_entity_does_not_shift_the_texts_normalised_together():
    # &#0; became normalize_many's separator: 3 texts gave 4 forms, each later one its neighbour's (found by review)
    assert normalize_many(["first text", "a&#0;b", "third text"]) == ["firsttext", "ab", "thirdtext"]
    assert normalize("a&#0;b") == "ab"


def test_the_check_fails_on_the_lm_text_of_the_old_filter():
    """Without the filter (with the old exact-text one) the same checks find the leaks that the issue reported."""
    whole, long = reserved()
    rows, norms = read_staicc("mr"), staicc._row_norms("mr")
    old_rows = staicc._old_lm_rows("mr", SPLIT_SEED)  # MR's LM rows that the old filter kept
    old = [norms[i] for i in old_rows]
    sst5 = staicc._row_norms("sst5")
    test_keys = {sst5[i] for i in split_rows("sst5").icl_test.tolist()}
    assert len(test_keys & set(old)) > 0.15 * len(test_keys)  # ~22% of SST-5 test rows were MR LM documents
    assert docs_containing(old, long).sum() > 100
    sst5_rows = staicc._old_lm_rows("sst5", SPLIT_SEED)
    raw5 = [read_staicc("sst5")[i][0] for i in sst5_rows]
    assert len(fragments(raw5, [sst5[i] for i in sst5_rows], whole)) > 100  # SST-5 sentences of MR reviews
    # and the filter removes exactly such documents: what survives is the old text less some documents
    kept = [normalize(t) for t in lm_texts(["mr"], "train") + lm_texts(["mr"], "val")]
    assert len(old) - 1500 < len(kept) < len(old) and set(kept) <= set(old)
    assert len(old_rows) == len(set(old_rows)) and all(rows[i][0].strip() for i in old_rows)


@pytest.mark.slow
def test_near_duplicates_of_reserved_rows_are_dropped_from_the_lm_text():
    """AGNews holds one story from two wires, or with a word changed: ~14% of its test rows begin or end with the
    same 60 normalised characters as a document that the rules (a)-(c) kept; rule (d) drops those documents."""
    ends = staicc._reserved_ends(SPLIT_SEED)
    norms, sp = staicc._row_norms("agnews"), split_rows("agnews")
    drop = staicc.lm_dropped("agnews")
    kept_by_abc = [i for i in np.concatenate([sp.lm_train, sp.lm_val]).tolist()
                   if not any(i in drop[k] for k in ("equal", "contains", "fragment", "empty"))]
    assert sum(staicc.is_near(norms[i], ends) for i in kept_by_abc) > 500
    assert {i for i in kept_by_abc if staicc.is_near(norms[i], ends)} == drop["near"]
    lm_ends = tuple({k[j] for i in kept_by_abc if (k := staicc.near_keys(norms[i]))} for j in (0, 1))
    test = [norms[i] for i in sp.icl_test.tolist()]
    assert sum(staicc.is_near(t, lm_ends) for t in test) > 0.1 * len(test)  # what the test set would have seen
    assert staicc.near_keys("x" * 59) is None and staicc.near_keys("ab" * 40) == ("ab" * 30, "ab" * 30)


@pytest.mark.parametrize("seed", [SPLIT_SEED, 1])
@pytest.mark.parametrize("task", TASKS)
def test_no_test_text_in_the_demonstration_pool(task, seed):
    rows, s = read_staicc(task), split_rows(task, seed)
    test = [normalize(rows[i][0]) for i in s.icl_test.tolist()]
    demo = [normalize(rows[i][0]) for i in s.icl_demo.tolist()]
    assert len(test) == ICL_TEST_ROWS[task] and len(demo) == ICL_DEMO_ROWS
    assert len(set(test)) == len(test) and len(set(demo)) == len(demo)  # each text reserved once
    assert not set(test) & set(demo)
    parts = [s.icl_test, s.icl_demo, s.lm_val, s.lm_train]
    assert len(np.unique(np.concatenate(parts))) == sum(map(len, parts)) == len(rows)  # still a partition


def test_plain_cut_of_the_permutation_had_trec_test_questions_in_the_pool():
    """The rule above matters: TREC has duplicate rows, and the plain cut put test questions in the pool."""
    rows = read_staicc("trec")
    perm = np.random.default_rng(stable_seed("trec", 1)).permutation(len(rows))
    n = ICL_TEST_ROWS["trec"]
    test = {normalize(rows[i][0]) for i in perm[:n]}
    demo = [normalize(rows[i][0]) for i in perm[n : n + ICL_DEMO_ROWS]]
    assert any(d in test for d in demo)
    s = split_rows("trec", 1)
    assert set(s.icl_test.tolist()) == set(perm[:n].tolist())  # no duplicate among these test rows: unchanged
    seen, expected = set(test), []
    for i in perm[n : n + ICL_DEMO_ROWS].tolist():  # the plain pool without copies of reserved texts
        if normalize(rows[i][0]) not in seen:
            seen.add(normalize(rows[i][0]))
            expected.append(i)
    assert len(expected) < ICL_DEMO_ROWS and s.icl_demo.tolist()[: len(expected)] == expected  # then topped up


def test_rows_half_of_whose_word_8grams_one_lm_document_holds_are_dropped_from_the_lm_text():
    """Rule (e): one AGNews story with a headline word changed AND another ending passes rules (a)-(d)."""
    from momattn.data.overlap import holders, shingles

    rows, sp = read_staicc("agnews"), split_rows("agnews")
    test_row, twin = 79745, 50693  # "Texas Instruments Narrows Forecast ..." / "... Cuts Forecast ..."
    assert test_row in sp.icl_test.tolist() and twin in sp.lm_train.tolist()
    a, b = words([rows[test_row][0], rows[twin][0]])
    assert a[:3] == ["texas", "instruments", "narrows"] and len(shingles(a) & shingles(b)) >= len(shingles(a)) / 2
    drop = staicc.lm_dropped("agnews")
    assert twin in drop["overlap"] and not any(twin in drop[k] for k in ("equal", "contains", "fragment", "near"))
    assert normalize(rows[twin][0]) not in set(norms(lm_texts(["agnews"], "train")))
    # what (a)-(d) kept held half the 8-grams of ~50 AGNews test rows: none of those documents is left
    test = sp.icl_test.tolist()
    kept_abcd = [i for i in np.concatenate([sp.lm_train, sp.lm_val]).tolist()
                 if not any(i in drop[k] for k in ("equal", "contains", "fragment", "near", "empty"))]
    held = holders(words(rows[i][0] for i in test), words(rows[i][0] for i in kept_abcd))
    assert len(set().union(*held.values())) > 40
    assert {kept_abcd[c] for c in held} <= drop["overlap"]


def test_a_rewrite_of_a_reserved_story_holding_a_tenth_of_its_own_8grams_is_dropped():
    """At half of a row's 8-grams, 116 AGNews test rows kept another wire's rewrite of their story in the LM text
    (a review): the bar is a tenth of the row's own 8-grams, those that more than BOILERPLATE reserved rows share
    (Reuters quote links) left out, and no LM document (train or val) holds that much of any reserved row."""
    from momattn.data.overlap import holders, shingles

    rows, sp = read_staicc("agnews"), split_rows("agnews")
    demo, rewrite = 120630, 55350  # "Update 1: United Steelworkers OK BF Goodrich Pact ... about 15 months" /
    assert demo in sp.icl_demo.tolist() and rewrite in sp.lm_train.tolist() + sp.lm_val.tolist()  # "Manuafacturing"
    a, b = words([rows[demo][0], rows[rewrite][0]])
    assert 0.1 < len(shingles(a) & shingles(b)) / len(shingles(a)) < 0.5  # kept by the rule of half
    drop = staicc.lm_dropped("agnews")
    assert rewrite in drop["overlap"]
    lm = lm_texts(TASKS, "train") + lm_texts(TASKS, "val")
    assert holders(staicc._reserved_words(SPLIT_SEED), words(lm), staicc.RESERVED_SHARE, staicc.BOILERPLATE) == {}


def test_the_word_8gram_overlap_is_exact_on_small_cases():
    from momattn.data.overlap import holders, word_lists

    q = word_lists(["one two three four five six seven eight nine ten", "a b c", "Isn't it -LRB- x -RRB- 1 2 3 4 5"])
    assert q[2] == ["isnt", "it", "x", "1", "2", "3", "4", "5"]  # escapes and punctuation are not words
    docs = word_lists(["zero one two three four five six seven eight nine", "one two three four five six seven",
                       "ISN'T it (x) 1 2 3 4 5, and more", "a b c a b c a b c"])
    # doc 0 holds 2 of query 0's 3 shingles (>= half), doc 1 none (7 words), doc 2 query 2's one; query 1 (3 words)
    # has no shingle and is never held
    assert holders(q, docs) == {0: {0}, 2: {2}}
    assert holders(q, docs, share=0.9) == {2: {2}}
    # an 8-gram a document repeats counts once: 1 of the query's 9 is not half of them
    query = "a b c d e f g h i j k l m n o p".split()
    assert holders([query], [query[:8] * 6]) == {} and holders([query], [query[:12]]) == {0: {0}}
    # and so does one the query repeats: 5 of its 10 distinct 8-grams are half (with repeats, 9 of 19 would not be)
    query = list("abcdefgh") * 3 + ["x", "y"]
    assert holders([query], [query[-12:]]) == {0: {0}}


def _holders_reference(queries, corpus, share, common=None):
    """holders as a plain loop over tuples of words (no hashing)."""
    def grams(words):
        return {tuple(words[i : i + 8]) for i in range(len(words) - 7)}

    q_grams = [grams(q) for q in queries]
    if common is not None:  # an 8-gram more than `common` queries have is nobody's
        n = Counter(g for qg in q_grams for g in qg)
        q_grams = [{g for g in qg if n[g] <= common} for qg in q_grams]
    found = {}
    for c, words in enumerate(corpus):
        g = grams(words)
        held = {q for q, qg in enumerate(q_grams) if qg and len(qg & g) >= max(1, math.ceil(share * len(qg)))}
        if held:
            found[c] = held
    return found


@pytest.mark.parametrize("seed", range(6))
def test_holders_equals_a_plain_loop_on_random_texts(seed, monkeypatch):
    """The numpy matching (hashed 8-grams, one sort) against a loop over the 8-grams themselves: repeated and
    shared 8-grams, words no query has, documents and queries shorter than 8 words, empty ones; the corpus in
    one part and (odd seeds) in parts of ~40 words."""
    from momattn.data import overlap
    from momattn.data.overlap import holders

    if seed % 2:
        monkeypatch.setattr(overlap, "CHUNK_WORDS", 40)

    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(rng.choice([2, 3, 6, 40]))]  # few words: many shared and repeated 8-grams
    queries = [[rng.choice(vocab) for _ in range(rng.choice([0, 5, 8, 9, 12, 30]))] for _ in range(25)]
    corpus = []
    for _ in range(60):
        doc = [rng.choice(vocab + ["other", "x"]) for _ in range(rng.choice([0, 7, 8, 20, 50]))]
        if queries and rng.random() < 0.5:  # a stretch of a query inside, as near-duplicates have
            q = rng.choice(queries)
            a = rng.randrange(len(q) + 1)
            doc[a:a] = q[a : a + rng.randrange(len(q) + 2)]
        corpus.append(doc)
    for share in (0.5, 0.1, 1.0):
        expected = _holders_reference(queries, corpus, share)
        assert holders(queries, corpus, share) == expected
        assert expected or share > 0.1  # (a draw may hold nothing at the higher shares)
        for common in (1, 3):
            assert holders(queries, corpus, share, common) == _holders_reference(queries, corpus, share, common)
    assert holders(queries, [], 0.5) == {} and holders([], corpus, 0.5) == {}
    for share in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="must lie in"):
            holders(queries, corpus, share)


def test_validation_documents_that_a_training_document_mostly_holds_are_dropped():
    from momattn.data.overlap import holders

    val, train = lm_texts(["agnews"], "val"), lm_texts(["agnews"], "train")
    assert not holders(words(val), words(train))  # no val document has half its 8-grams in one
    train_norms = set(norms(train))
    assert not any(v in train_norms for v in norms(val))
    ends = tuple(frozenset(n[:staicc.NEAR_CHARS] if first else n[-staicc.NEAR_CHARS:] for n in train_norms
                           if len(n) >= staicc.NEAR_CHARS) for first in (True, False))
    assert not any(staicc.is_near(v, ends) for v in norms(val))  # nor one that begins or ends as one does


@pytest.mark.slow
def test_the_leak_report_counts_the_documents_the_corpus_holds():
    """Its 'new docs' were the LM rows minus those lm_dropped names, without the LM-val documents dropped as copies
    of LM-train ones: the README's 'loses 2.9% of its documents' was 3.8% (a review). Every document of the old
    filter is now kept or removed for one named reason, and the default corpus's row is lm_texts' own."""
    lines = []
    rep = staicc.leak_report(lm_tasks=("trec",), out=lines.append)
    reasons = ("equal", "contains", "fragment", "near", "overlap", "val_copies")
    for name, r in rep["removed"].items():
        assert r["docs_old"] - r["docs_new"] == sum(r[k] for k in reasons), name
    default = staicc.DEFAULT_LM_TASKS
    docs = lm_texts(list(default), "train") + lm_texts(list(default), "val")
    assert (rep["removed"]["default"]["docs_new"], rep["removed"]["default"]["chars_new"]) == (
        len(docs), sum(map(len, docs)))
    assert rep["removed"]["default"]["val_copies"] > sum(rep["removed"][t]["val_copies"] for t in default)  # across tasks
    assert any("val copy" in line for line in lines)


def test_the_first_lm_text_build_of_a_process_is_said_once(monkeypatch, capsys):
    """~30 s for the default tasks on first use passed without a word: the quickstart's first line came after it
    (found by review)."""
    monkeypatch.setattr(staicc, "_SAID", [])
    lm_texts(["trec"], "train")
    lm_texts(["trec"], "val")
    assert capsys.readouterr().err.count("[momattn] reading StaICC's LM text (trec) and leaving out every document "
                                         "that holds an ICL test row") == 1
