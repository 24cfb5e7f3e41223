"""Data: the StaICC split, text/jsonl/hub sources, tokenizers, the token cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from momattn.data.corpus import load_tokens
from momattn.data.sources import HubCorpus, TextFiles, make_source
from momattn.data.staicc import STAICC_FILES, _norm, lm_texts, read_staicc, reserved_texts, split_rows
from momattn.errors import DataError
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


def test_hub_loader_offline_says_what_to_do():
    with pytest.raises(DataError, match="Without network, use local files"):
        HubCorpus(name="surely-not/a-dataset-here").documents("train")


def test_bpe_roundtrip_and_cache(tmp_path):
    docs = lm_texts(["trec"], "train")
    tok = train_bpe(lambda: docs, 400, tmp_path / "tok.json")
    assert tok.vocab_size == 400 and tok.decode(tok.encode("What is the capital of France?")) == "What is the capital of France?"
    assert tok.encode(EOT) == [tok.eot_id]
    again = train_bpe(lambda: pytest.fail("should come from the cache"), 400, tmp_path / "tok.json")
    assert again.fingerprint == tok.fingerprint
    assert Tokenizer.from_json(tok.to_json()).encode("hello there") == tok.encode("hello there")


def test_gpt2_tokenizer_is_gpt2s_bpe():
    tok = gpt2_tokenizer()
    assert tok.vocab_size == 50257 and tok.eot_id == 50256
    assert tok.encode("Hello world") == [15496, 995]  # GPT-2's published ids
    assert tok.decode(tok.encode(" naïve café")) == " naïve café"


def test_token_cache_is_reused_and_documents_are_separated(tmp_path):
    tok = train_bpe(lambda: lm_texts(["trec"], "train"), 300)
    cfg = {"source": "staicc", "tasks": ["trec"]}
    a = load_tokens(cfg, tok, "val", tmp_path)
    assert (np.asarray(a) == tok.eot_id).sum() == len(lm_texts(["trec"], "val"))
    mtime = next((tmp_path / "tokens").glob("*.bin")).stat().st_mtime_ns
    b = load_tokens(cfg, tok, "val", tmp_path)
    assert np.array_equal(a, b) and next((tmp_path / "tokens").glob("*.bin")).stat().st_mtime_ns == mtime
