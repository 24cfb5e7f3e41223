"""GINC (Xie et al. 2022): determinism, the HMMs' structure, sampled statistics, Bayes labels against brute force,
prompt format, tokenizer, max_shots and every bad-config message."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from momattn.data.ginc import GincCorpus, max_shots, prompt_length
from momattn.errors import ConfigError
from momattn.tokenizer import EOT, Tokenizer
from momattn.utils import stable_seed

SMALL = dict(n_train_docs=20, doc_length=512, n_val_docs=4, val_doc_length=64)
# few symbols, entities and properties: symbols collide, so the Bayes label needs real inference
TINY = dict(n_symbols=6, n_entities=3, n_properties=4, n_concepts=4, n_train_concepts=2, **SMALL)


@pytest.fixture(scope="module")
def corpus() -> GincCorpus:
    return GincCorpus(**SMALL)


def test_deterministic_for_a_seed(corpus):
    again = GincCorpus(**SMALL)
    assert again.documents("train") == corpus.documents("train")
    assert again.documents("val") == corpus.documents("val")
    assert again.fingerprint() == corpus.fingerprint()
    other = GincCorpus(**SMALL, seed=7)
    assert other.documents("train") != corpus.documents("train")
    assert other.fingerprint() != corpus.fingerprint()
    assert not np.array_equal(other.hmms.memory, corpus.hmms.memory)
    assert corpus.documents("train") != corpus.documents("val")[: SMALL["n_val_docs"]]


def test_a_value_spelled_as_int_float_or_numpy_gives_the_same_data(corpus):
    # the random streams are keyed by the fields: vic=1 and vic=1.0 were the same HMMs with other documents
    as_float = GincCorpus(vic=1.0, start_temp=10.0, **SMALL)
    for other in (GincCorpus(vic=1, start_temp=10, **SMALL), GincCorpus(vic=np.float32(1), **SMALL),
                  GincCorpus(**{**SMALL, "vic": 1, "n_train_docs": np.int64(SMALL["n_train_docs"])})):
        assert other.fingerprint() == as_float.fingerprint()
        assert other.documents("val") == as_float.documents("val")
        assert [p.symbols for p in other.prompts(5, 2, 10)] == [p.symbols for p in as_float.prompts(5, 2, 10)]
    assert type(GincCorpus(n_symbols=np.int64(50)).n_symbols) is int
    # n_permutations=10 is null's HMMs, with its own documents, as it always was (folding it into null changed the
    # corpus of runs that wrote it out: found by the diff review); the YAML says so
    ten = GincCorpus(n_permutations=10, **SMALL)
    assert np.array_equal(ten.hmms.memory, GincCorpus(**SMALL).hmms.memory) and ten.n_permutations == 10
    for field, value in (("n_symbols", "50"), ("n_concepts", 2.0), ("n_entities", True), ("vic", "0.9"),
                         ("trans_temp", None), ("seed", None)):
        with pytest.raises(ConfigError, match=f"data.{field}=.* must be an? (integer|number)"):
            GincCorpus(**{field: value})


def test_sizes_and_valid_symbols(corpus):
    names = corpus.symbol_names()
    assert names[0] == "/" and names[1] == "x1" and names[-1] == "x49" and len(names) == 50
    for split, n_docs, length in (("train", 20, 512), ("val", 4, 64)):
        docs = corpus.documents(split)
        assert len(docs) == n_docs
        assert corpus.symbols(split).shape == (n_docs, length)
        for doc in docs:
            words = doc.split(" ")  # single spaces, no empty words
            assert len(words) == length and set(words) <= set(names)
    assert corpus.symbols("train").max() < corpus.n_symbols
    with pytest.raises(ConfigError, match="'train' or 'val'"):
        corpus.documents("test")


def test_delimiter_exactly_at_property_zero(corpus):
    s = corpus.sample("train")
    symbols = corpus.symbols("train")
    assert np.array_equal(symbols == 0, s.property == 0)
    assert (s.property == 0).any() and (s.property != 0).any()
    assert set(np.unique(s.concept)) <= set(range(corpus.n_train_concepts))  # pretraining mixture only


def test_hmm_structure(corpus):
    h = corpus.hmms
    assert np.all(h.memory[:, 0] == 0)
    assert h.memory[:, 1:].min() >= 1 and h.memory[:, 1:].max() <= corpus.n_symbols - 1
    assert h.property.shape == (corpus.n_concepts, corpus.n_properties, corpus.n_properties)
    for m in (h.entity, *h.property, h.transition(3)):
        assert m.min() >= 0 and np.allclose(m.sum(axis=1), 1)
    assert np.allclose(h.start.sum(axis=1), 1) and h.start.min() > 0
    assert np.all(np.diag(h.entity) >= corpus.vic - 1e-12)
    assert h.transition(0).shape == (100, 100)
    assert not np.allclose(h.property[0], h.property[1])  # concepts differ
    assert np.allclose(replace(corpus, vic=0.0).hmms.entity.sum(axis=1), 1)


def _assert_frequencies(counts: np.ndarray, probs: np.ndarray) -> None:
    """Transition counts match the matrix: impossible transitions never occur, and every count lies within
    5 standard deviations (plus 3, for the rare cells) of its expectation."""
    assert counts[probs == 0].sum() == 0
    n = counts.sum(axis=1, keepdims=True)
    assert (n[:, 0] > 200).mean() >= 0.5  # enough rows are well populated for the test to mean something
    expected = n * probs
    assert np.all(np.abs(counts - expected) <= 5 * np.sqrt(expected * (1 - probs)) + 3)


def test_sampled_transitions_match_the_matrices():
    c = GincCorpus(n_train_docs=100, doc_length=2000, n_val_docs=1, val_doc_length=1)
    s, h = c.sample("train"), c.hmms
    e, p = s.entity.astype(int), s.property.astype(int)
    counts = np.zeros((c.n_entities, c.n_entities))
    np.add.at(counts, (e[:, :-1], e[:, 1:]), 1)
    _assert_frequencies(counts, h.entity)
    for concept in range(c.n_train_concepts):
        docs = s.concept == concept
        counts = np.zeros((c.n_properties, c.n_properties))
        np.add.at(counts, (p[docs, :-1], p[docs, 1:]), 1)
        _assert_frequencies(counts, h.property[concept])
    # the joint chain is kron(entity, property): check it on one concept's states
    docs = s.concept == 0
    state = e[docs] * c.n_properties + p[docs]
    counts = np.zeros((100, 100))
    np.add.at(counts, (state[:, :-1], state[:, 1:]), 1)
    _assert_frequencies(counts, h.transition(0))


def _brute_force_next(c: GincCorpus, concept: int, start: int, x: list[int]) -> np.ndarray:
    """P(next symbol | x) by summing over every hidden path: the full kron matrix, no forward algorithm."""
    h, n_prop = c.hmms, c.n_properties
    trans = h.transition(concept)
    emit = h.memory.reshape(-1)  # state e * P + p
    probs = np.zeros(c.n_symbols)
    starts = [e * n_prop + start for e in range(c.n_entities)]
    for path in itertools.product(range(len(emit)), repeat=len(x)):
        if path[0] not in starts or any(emit[s] != xs for s, xs in zip(path, x)):
            continue
        weight = 1 / c.n_entities
        for a, b in zip(path, path[1:]):
            weight *= trans[a, b]
        for nxt in range(len(emit)):
            probs[emit[nxt]] += weight * trans[path[-1], nxt]
    return probs


@pytest.mark.parametrize("example_len", [2, 3, 4])
def test_bayes_label_matches_brute_force(example_len):
    c = GincCorpus(**TINY)
    for ood in (False, True):
        for p in c.prompts(example_len, k=1, n=12, ood=ood, seed=3):
            x = list(p.symbols[-(example_len - 1):])
            ref = _brute_force_next(c, p.concept, p.start_property, x)
            assert ref.sum() > 0
            got = c.next_symbol_probs(np.array([p.concept]), np.array([p.start_property]), np.array([x]))[0]
            assert np.allclose(got / got.sum(), ref / ref.sum())
            best = np.flatnonzero(ref >= ref.max() * (1 - 1e-9))
            assert p.label == best[0]  # ties: the lowest symbol id


@pytest.mark.parametrize("example_len,k", [(5, 0), (5, 1), (3, 4), (8, 2)])
def test_prompt_format(corpus, example_len, k):
    prompts = corpus.prompts(example_len, k, n=30, seed=1)
    tok = corpus.tokenizer()
    h = corpus.hmms
    assert len(prompts) == 30
    for p in prompts:
        assert len(p.symbols) == prompt_length(example_len, k) == (example_len + 1) * k + example_len - 1
        assert p.k == k and p.example_len == example_len
        assert p.text == " ".join(corpus.symbol_names()[s] for s in p.symbols)
        assert tok.encode(p.text) == list(p.symbols)
        assert 0 <= p.label < corpus.n_symbols and 0 <= p.concept < corpus.n_train_concepts
        assert 1 <= p.start_property < corpus.n_properties
        for j in range(k):  # each example is followed by "/" and starts at the prompt's start property
            example = p.symbols[j * (example_len + 1): (j + 1) * (example_len + 1)]
            assert example[-1] == 0
            assert example[0] in h.memory[:, p.start_property]
        assert p.symbols[-(example_len - 1)] in h.memory[:, p.start_property]  # the test input x


def test_prompts_deterministic_and_paired_over_k(corpus):
    a = corpus.prompts(5, 4, n=50, seed=1)
    assert a == corpus.prompts(5, 4, n=50, seed=1)
    assert a != corpus.prompts(5, 4, n=50, seed=2)
    b = corpus.prompts(5, 8, n=50, seed=1)  # same test inputs and labels at every k: paired comparisons
    assert [p.symbols[-4:] for p in a] == [p.symbols[-4:] for p in b]
    assert [(p.label, p.concept) for p in a] == [(p.label, p.concept) for p in b]
    # the prompts do not depend on the size of the pretraining set, only on the HMMs
    assert replace(corpus, n_train_docs=3).prompts(5, 4, n=50, seed=1) == a
    assert len({p.concept for p in a}) > 1 and len({p.start_property for p in a}) > 1


def test_ood_prompts_use_held_out_concepts(corpus):
    ood = corpus.prompts(5, 2, n=100, ood=True)
    assert {p.concept for p in ood} == set(range(corpus.n_train_concepts, corpus.n_concepts))
    ind = corpus.prompts(5, 2, n=100)
    assert {p.concept for p in ind} == set(range(corpus.n_train_concepts))


def test_tokenizer(corpus):
    tok = corpus.tokenizer()
    assert tok.vocab_size == corpus.n_symbols + 1 and tok.eot_id == corpus.n_symbols
    assert tok.name == "ginc50"
    assert tok.encode("/ x1 x49") == [0, 1, 49]
    assert tok.encode(f"x3 {EOT} x4") == [3, 50, 4]
    doc = corpus.documents("val")[0]
    assert tok.encode(doc) == corpus.symbols("val")[0].tolist()
    assert tok.decode(tok.encode(doc)) == doc
    again = Tokenizer.from_json(tok.to_json(), name=tok.name)
    assert again.encode(doc) == tok.encode(doc) and again.eot_id == tok.eot_id
    assert again.fingerprint == tok.fingerprint
    with pytest.raises(Exception, match="Missing"):  # noqa: B017 (tokenizers raises a bare Exception)
        tok.encode("x50")  # not a symbol: an error, never a silent unknown token


def test_max_shots():
    assert max_shots(5, 256) == 42
    for length, context in ((3, 256), (5, 256), (8, 256), (10, 1024), (5, 4), (2, 1)):
        k = max_shots(length, context)
        assert prompt_length(length, k) <= context < prompt_length(length, k + 1)
    with pytest.raises(ConfigError, match="does not fit"):
        max_shots(5, 3)
    with pytest.raises(ConfigError, match=">= 2"):
        max_shots(1, 100)


@pytest.mark.parametrize("field,value", [
    ("n_symbols", 1), ("n_entities", 0), ("n_properties", 1), ("n_concepts", 0), ("n_train_concepts", 0),
    ("n_train_concepts", 11), ("vic", 1.5), ("vic", -0.1), ("trans_temp", 0.0), ("start_temp", -1.0),
    ("n_train_docs", 0), ("doc_length", 0), ("n_val_docs", 0), ("val_doc_length", 0), ("n_permutations", 0),
    # found by fuzzing: NaN transition weights (a silent one-cycle corpus), hangs, and a 74.5 GiB allocation
    ("trans_temp", 1e-320), ("start_temp", 1e-9), ("n_symbols", 30_000_000), ("n_entities", 200_000),
    ("n_permutations", 10**9), ("n_concepts", 5000), ("n_train_docs", 10**8), ("doc_length", 10**7),
])
def test_bad_config(field, value):
    with pytest.raises(ConfigError, match=f"data.{field}="):
        GincCorpus(**{field: value})


def test_bad_prompt_requests(corpus):
    with pytest.raises(ConfigError, match="example_len"):
        corpus.prompts(1, 2, 10)
    with pytest.raises(ConfigError, match="k="):
        corpus.prompts(5, -1, 10)
    with pytest.raises(ConfigError, match="n="):
        corpus.prompts(5, 2, 0)
    with pytest.raises(ConfigError, match=r"^GINC n=1000000 prompts must be <= 10,000"):  # ran out of memory
        corpus.prompts(5, 32, 10**6)
    with pytest.raises(ConfigError, match="data.n_train_concepts"):
        GincCorpus(n_concepts=5, n_train_concepts=5, **SMALL).prompts(5, 2, 10, ood=True)


def test_smallest_vocabulary_works():
    c = GincCorpus(n_symbols=2, n_entities=1, n_properties=2, n_concepts=1, n_train_concepts=1, **SMALL)
    assert set(c.documents("train")[0].split()) <= {"/", "x1"}
    assert all(0 <= p.label <= 1 for p in c.prompts(3, 2, 5))


def test_token_ids_equal_tokenized_documents(corpus):
    tok = corpus.tokenizer()
    ref = [i for doc in corpus.documents("val") for i in tok.encode(doc) + [tok.eot_id]]
    ids = corpus.token_ids("val")
    assert ids.dtype == np.uint16 and ids.tolist() == ref


# ---------------------------------------------------------------- the Bayes-optimal reader (the ceiling by k)


def _brute_force_prob(c: GincCorpus, concept: int, start: int, seq: list[int]) -> float:
    """P(seq | concept, start) by summing over every hidden path (entity uniform at property `start`)."""
    h, n_prop = c.hmms, c.n_properties
    trans, emit = h.transition(concept), h.memory.reshape(-1)
    total = 0.0
    for path in itertools.product(range(len(emit)), repeat=len(seq)):
        if path[0] % n_prop != start or any(emit[s] != xs for s, xs in zip(path, seq)):
            continue
        weight = 1 / c.n_entities
        for a, b in zip(path, path[1:]):
            weight *= trans[a, b]
        total += weight
    return total


def test_sequence_logprob_matches_brute_force_and_sums_to_one():
    c = GincCorpus(**TINY)
    seqs = np.array(list(itertools.product(range(c.n_symbols), repeat=3)))  # every sequence of 3 symbols
    for concept, start in [(0, 1), (1, 3), (3, 2)]:
        p = np.exp(c.sequence_logprob(concept, start, seqs))
        assert p.sum() == pytest.approx(1.0)
        for i in (0, 7, 100, 215):
            assert p[i] == pytest.approx(_brute_force_prob(c, concept, start, seqs[i].tolist()), abs=1e-12)


def _brute_force_readers(c: GincCorpus, k: int):
    """Prompts of examples of 3 symbols and, per prompt, the predictive mixture and the label votes, from
    brute-force posteriors over every (pretraining concept, start property) pair."""
    for p in c.prompts(3, k=k, n=6, seed=5):
        sym = list(p.symbols)
        demos, x = [sym[i * 4 : i * 4 + 3] for i in range(k)], sym[4 * k :]  # each example followed by "/"
        mix, vote = np.zeros(c.n_symbols), np.zeros(c.n_symbols)
        for concept in range(c.n_train_concepts):
            for start in range(1, c.n_properties):
                w = np.prod([_brute_force_prob(c, concept, start, d) for d in demos + [x]])
                if w > 0:  # this pair's label, as prompts() makes it: the likeliest next symbol, lowest id on ties
                    nxt = _brute_force_next(c, concept, start, x)
                    mix += w * nxt / nxt.sum()
                    vote[int((nxt >= nxt.max() * (1 - 1e-9)).argmax())] += w
        yield p, mix / mix.sum(), vote / vote.sum()


@pytest.mark.parametrize("k", [0, 1, 2])
def test_bayes_readers_match_brute_force_posteriors(k):
    c = GincCorpus(**TINY)
    for p, mix, vote in _brute_force_readers(c, k):
        for row, ref in ((c.bayes_probs([p])[0], mix), (c.bayes_label_probs([p])[0], vote)):
            assert row.sum() == pytest.approx(1.0) and np.allclose(row, ref, atol=1e-9)


@pytest.mark.parametrize("example_len,k", [(3, 0), (2, 1), (2, 0)])
def test_the_pretraining_reader_matches_brute_force_over_documents(example_len, k):
    """pretraining_probs reads <eot> + prompt as the start of a pretraining document: a uniform pretraining
    concept, its start distribution, every symbol emitted by the chain; checked against sums over every path."""
    c = GincCorpus(**TINY)
    h, emit = c.hmms, c.hmms.memory.reshape(-1)
    prompts = c.prompts(example_len, k=k, n=8, seed=5) + c.prompts(example_len, k=k, n=4, ood=True, seed=5)
    got, possible = c.pretraining_probs(prompts)
    for p, row, ok in zip(prompts, got, possible):
        seq, joint, total = list(p.symbols), np.zeros(c.n_symbols), 0.0
        for concept in range(c.n_train_concepts):
            trans = h.transition(concept)
            for path in itertools.product(range(len(emit)), repeat=len(seq)):
                if any(emit[s] != xs for s, xs in zip(path, seq)):
                    continue
                w = h.start[concept][path[0]] * np.prod([trans[a, b] for a, b in zip(path, path[1:])])
                total += w
                for nxt in range(len(emit)):
                    joint[emit[nxt]] += w * trans[path[-1], nxt]
        assert ok == (total > 0)
        assert np.allclose(row, joint / total if total > 0 else np.full(c.n_symbols, 1 / c.n_symbols), atol=1e-9)
    if k:  # an example's restart is not a pretraining transition: some prompts are impossible as documents
        assert not possible.all()


def test_the_label_vote_beats_the_predictive_argmax_where_pairs_stay_plausible():
    c = GincCorpus()  # the paper's world; l = 3 at k = 0 leaves many (concept, start) pairs plausible
    prompts = c.prompts(3, k=0, n=300, seed=1)
    labels = np.array([p.label for p in prompts])
    vote = np.mean(c.bayes_label_probs(prompts).argmax(1) == labels)
    predictive = np.mean(c.bayes_probs(prompts).argmax(1) == labels)
    assert vote > predictive  # the mixture's likeliest symbol is not always the likeliest label


def test_the_bayes_reader_gains_from_examples(corpus):
    def acc(k):
        prompts = corpus.prompts(5, k=k, n=100, seed=1)
        return np.mean(corpus.bayes_probs(prompts).argmax(1) == [p.label for p in prompts])

    assert acc(0) < acc(8) and acc(8) >= 0.95  # the concept is pinned down by a few examples
    with pytest.raises(ValueError, match="share k and example length"):
        corpus.bayes_probs(corpus.prompts(5, k=1, n=2) + corpus.prompts(5, k=2, n=2))


def test_the_bayes_reader_of_an_impossible_prompt_mixes_uniformly(corpus):
    p = corpus.prompts(5, k=1, n=1)[0]
    # an example opens at a start property in 1..P-1, which never emits the delimiter: no pair can produce this
    bad = type(p)(p.text, (0,) + p.symbols[1:], p.label, p.concept, p.k, p.example_len, p.start_property)
    row = corpus.bayes_probs([bad])[0]
    assert np.isfinite(row).all() and row.sum() == pytest.approx(1.0)


def test_ginc_bayes_benchmark_writes_its_table(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import ginc_bayes

    doc = ginc_bayes.main(["--prompts", "20", "--tasks", "ginc_l3,ginc_l8", "--shots", "0,4,40", "--context", "64",
                           "--out", str(tmp_path), "n_symbols=6", "n_entities=3", "n_properties=4", "n_concepts=4",
                           "n_train_concepts=2"])
    acc = doc["accuracy"]
    assert acc["ginc_l8"]["40"] is None  # 40 examples of 8 do not fit 64 tokens
    assert 0.0 <= acc["ginc_l3"]["0"] <= acc["ginc_l3"]["4"] <= 1.0 and doc["world"]["n_symbols"] == 6
    assert "| label vote | ginc_l8 |" in (tmp_path / "ginc_bayes.md").read_text()
    assert set(doc["accuracy_predictive"]) == {"ginc_l3", "ginc_l8"}  # the idealised in-context reader too
    world = GincCorpus(n_symbols=6, n_entities=3, n_properties=4, n_concepts=4, n_train_concepts=2)
    prompts = world.prompts(3, 4, 20, seed=stable_seed("ginc-prompts", 1))
    probs, possible = world.pretraining_probs(prompts)  # and a perfect model of the pretraining documents
    assert doc["readable_pretraining"]["ginc_l3"]["4"] == pytest.approx(possible.mean())
    assert doc["accuracy_pretraining"]["ginc_l3"]["4"] == pytest.approx(
        np.mean(probs.argmax(1) == [p.label for p in prompts]))
    assert "| pretraining: prompts it can read | ginc_l3 |" in (tmp_path / "ginc_bayes.md").read_text()
    assert ginc_bayes._field("n_permutations=null") == ("n_permutations", None)
    with pytest.raises(SystemExit, match="not field=value with a GincCorpus field"):
        ginc_bayes.main(["--out", str(tmp_path), "n_wings=2"])



@pytest.mark.parametrize("args, says", [
    (["--context", "3"], "--context 3: task ginc's test input"),
    (["n_concepts=0"], "error: n_concepts=0 must be >= 1"),
    (["--prompts", "20000"], "--prompts 20000: at most 10,000"),
    (["--tasks", "ginc_ood", "n_train_concepts=10"], "but n_train_concepts=n_concepts=10; lower n_train_concepts")])
def test_ginc_bayes_names_its_own_arguments_in_its_errors(tmp_path, capsys, args, says):
    """Its errors spoke of data.n_concepts and model.block_size, which the script does not take (found by review)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import ginc_bayes

    with pytest.raises(SystemExit):
        ginc_bayes.main(["--out", str(tmp_path), "--shots", "0", *args])
    err = capsys.readouterr().err
    assert says in err and "data." not in err and "block_size" not in err, err

def test_the_ood_probes_bigram_reader_reads_symbol_pairs_inside_the_examples():
    import sys
    from pathlib import Path

    from momattn.data.ginc import GincPrompt

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import ginc_ood_probe

    def prompt(symbols, k):
        return GincPrompt("", tuple(symbols), 0, 0, k, 3)

    # examples of 3 symbols, each then "/" (0); the test input is 2 symbols
    assert ginc_ood_probe.bigram_reader(prompt([5, 7, 9, 0, 7, 9, 4, 0, 2, 7], 2)) == 9  # 7 -> 9 twice
    assert ginc_ood_probe.bigram_reader(prompt([5, 7, 8, 0, 7, 9, 4, 0, 2, 7], 2)) == 8  # a tie: the lowest id
    assert ginc_ood_probe.bigram_reader(prompt([9, 7, 6, 0, 2, 7], 1)) == 6  # a pair, not the position
    # 4 ends an example and is followed by nothing inside one (4 -> "/" crosses into the delimiter): the most
    # common last symbol of the examples; 8 occurs nowhere: the same, ties to the lowest id
    assert ginc_ood_probe.bigram_reader(prompt([5, 7, 9, 0, 7, 3, 9, 0, 6, 2, 4, 0, 1, 4], 3)) == 9
    assert ginc_ood_probe.bigram_reader(prompt([5, 7, 9, 0, 7, 3, 4, 0, 1, 8], 2)) == 4
    assert ginc_ood_probe.bigram_reader(prompt([2, 4], 0)) == -1  # no examples: no answer
    # the majority-label reader: the most common last symbol of the examples, whatever the test input
    assert ginc_ood_probe.majority_reader(prompt([5, 7, 9, 0, 7, 3, 9, 0, 6, 2, 4, 0, 1, 4], 3)) == 9
    assert ginc_ood_probe.majority_reader(prompt([5, 7, 8, 0, 7, 9, 4, 0, 2, 7], 2)) == 4  # a tie: the lowest id
    assert ginc_ood_probe.majority_reader(prompt([2, 4], 0)) == -1


def test_text_outside_the_ginc_vocabulary_is_a_clear_error(corpus):
    from momattn.errors import DataError

    tok = corpus.tokenizer()
    with pytest.raises(DataError, match=r"cannot encode the text 'a great movie'.*GINC symbols\); its words are / x1 "
                                        r"x2 x3 "):  # what the symbols look like (a newcomer had to decode ids)
        tok.encode("a great movie")
    with pytest.raises(DataError, match=r"cannot encode the text 'Review:'"):
        tok.encode_batch([corpus.symbol_names()[0], "Review:"])


def test_the_readme_states_the_always_delimiter_levels_the_evaluator_scores():
    # the share of "/" labels in the prompts the evaluator scores (seed 1; the test inputs depend on the prompt
    # count): experiment=ginc's 500 prompts per task, and experiment=eta_sweep's 300 (once labelled "chance 8.6")
    from pathlib import Path

    from momattn.eval.ginc import ginc_task
    from momattn.utils import stable_seed

    readme, world = (Path(__file__).parents[1] / "README.md").read_text(), GincCorpus()

    def level(name: str, n: int) -> str:
        t = ginc_task(name)
        labels = [p.label for p in world.prompts(t.example_len, 0, n, ood=t.ood, seed=stable_seed("ginc-prompts", 1))]
        return f"{100 * labels.count(0) / n:.1f}"

    assert (f'always answering "/"\nscores {level("ginc", 500)}% (l=5), {level("ginc_l3", 500)}% (l=3), '
            f'{level("ginc_l8", 500)}% (l=8), {level("ginc_ood", 500)}% (OOD)') in readme
    assert f'OOD k=0 / k=32 (always "/" {level("ginc_ood", 300)}; chance 2.0)' in readme


def test_generation_and_labels_hold_a_bounded_share_of_a_wide_world():
    """Documents and prompts of a wide world the config accepts do not copy its tables once per chain: each chain's
    (P, P) table and permutations took 4-8 GB at sizes inside the bounds (found by review)."""
    import tracemalloc

    w = GincCorpus(n_properties=300, n_val_docs=200, val_doc_length=20)
    tables = w.hmms  # built (and cached) before measuring: about 15 MB of its own
    assert tables.property.nbytes > 5e6
    tracemalloc.start()
    try:
        w.symbols("val")  # 200 chains: 144 MB of permutations copied
        docs = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        w.prompts(3, 1, 200)  # 200 test inputs: 144 MB of transition tables copied
        prompts = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert docs < 20e6 and prompts < 40e6, (docs, prompts)
    w = GincCorpus(n_entities=300, n_properties=300, n_concepts=1, n_train_concepts=1, n_val_docs=200,
                   val_doc_length=5)
    assert w.hmms.start.shape == (1, 90000)  # built (and cached) before measuring
    tracemalloc.start()
    try:
        w.symbols("val")  # each document's start distribution: 200 x 90,000 values, 144 MB (diff review)
        starts = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert starts < 20e6, starts


def test_ginc_trained_through_a_bpe_tokenizer_says_its_checkpoints_cannot_be_scored_on_ginc(tmp_path):
    """Refused only where the run evaluates itself: with run_eval=false (debug=smoke) the run trained without a word
    and evaluate.py then refused every GINC task (GINC review)."""
    from conftest import run_cli

    args = ["data=ginc", "debug=smoke", "data.n_train_docs=40", "data.doc_length=256", "data.n_val_docs=5",
            "trainer.max_steps=1", f"hydra.run.dir={tmp_path / 'r'}", f"paths.cache_dir={tmp_path / 'cache'}"]
    r = run_cli("train.py", args, tmp_path)
    assert r.returncode == 0 and ("data=ginc with tokenizer=bpe trains on GINC as plain text: no GINC task can score "
                                  "this run's checkpoints") in r.stderr, r.stderr[-3000:]
    r = run_cli("train.py", [*args, "tokenizer=source", f"hydra.run.dir={tmp_path / 's'}"], tmp_path)
    assert r.returncode == 0 and "as plain text" not in r.stderr, r.stderr[-3000:]


def test_a_held_out_concept_equal_to_a_pretraining_one_is_refused_for_ood_prompts():
    """n_properties=4 n_permutations=1 draws concept 6's chain again as concept 4's: its OOD prompts were in
    distribution (GINC review)."""
    w = GincCorpus(n_properties=4, n_permutations=1)
    with pytest.raises(ConfigError, match=r"^GINC OOD prompts: in this world, held-out concept 6 is the same chain as "
                                          r"pretraining concept 4 .*raise data.n_properties or data.n_permutations"):
        w.prompts(5, 2, 4, ood=True)
    from momattn.eval.ginc import ginc_world  # evaluate.py's: no data.* keys to change there (flows review)

    data = {"_target_": "momattn.data.ginc.GincCorpus", "n_properties": 4, "n_permutations": 1}
    with pytest.raises(ConfigError, match=r"^icl.tasks: 'ginc_ood' scores concepts held out of pretraining, but in "
                                          r"this checkpoint's GINC world, held-out concept 6 .*; drop the ood tasks "
                                          r"from icl.tasks$"):
        ginc_world(data, "ginc_ood", ood_task="ginc_ood")
    with pytest.raises(ConfigError, match=r"this run's GINC world, .*raise data.n_properties or data.n_permutations"):
        ginc_world(data, "ginc_ood", ood_task="ginc_ood", training=True)
    w.prompts(5, 2, 4)  # in distribution: as it was
    GincCorpus().prompts(5, 2, 4, ood=True)  # the default world's concepts are distinct
