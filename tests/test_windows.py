"""Training targets: every (x, y) window is block_size tokens of the stream and the same shifted by one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from momattn.data.datamodule import TokenWindows


@pytest.mark.parametrize("shuffle", [True, False])
def test_targets_are_the_inputs_shifted_by_exactly_one_token(shuffle):
    block, n = 8, 203
    tokens = np.arange(n, dtype=np.uint16)  # token value == its position in the stream
    ds = TokenWindows(tokens, block, seed=3, shuffle=shuffle)
    assert len(ds) == (n - 1) // block
    starts = []
    for g in range(2 * len(ds)):  # two epochs
        x, y = ds[g]
        assert x.shape == y.shape == (block,) and x.dtype == y.dtype == torch.int64
        start = int(x[0])
        assert start % block == 0  # windows are aligned, non-overlapping
        assert x.tolist() == tokens[start : start + block].tolist()
        assert y.tolist() == tokens[start + 1 : start + block + 1].tolist()  # y[t] == tokens[start + t + 1]
        starts.append(start)
    epoch = sorted(starts[: len(ds)])
    assert epoch == list(range(0, len(ds) * block, block))  # each epoch visits every window once


def test_targets_follow_the_stream_not_the_arithmetic():
    # a stream whose next token is not "this token + 1": y must come from the stream itself
    tokens = np.random.default_rng(0).integers(0, 500, size=129).astype(np.uint16)
    ds = TokenWindows(tokens, 16, seed=0, shuffle=False)
    for g in range(len(ds)):
        x, y = ds[g]
        s = 16 * g
        assert torch.equal(x, torch.from_numpy(tokens[s : s + 16].astype(np.int64)))
        assert torch.equal(y, torch.from_numpy(tokens[s + 1 : s + 17].astype(np.int64)))
        assert torch.equal(y[:-1], x[1:])


# ---------------------------------------------------------------- the sampler and the loaders, directly


def test_stream_sampler_takes_every_world_th_sample_from_start_plus_rank():
    from momattn.data.datamodule import StreamSampler

    s = StreamSampler(start=10, total=20, rank=1, world=2)
    assert len(s) == 10 and list(s) == [11, 13, 15, 17, 19]  # the whole stream's length: Lightning counts from 0
    assert list(StreamSampler(start=10, total=20, rank=0, world=2)) == [10, 12, 14, 16, 18]
    assert list(StreamSampler(start=4, total=7)) == [4, 5, 6]


def test_the_sampler_length_holds_while_workers_prefetch_and_a_new_iterator_continues_from_the_step():
    from torch.utils.data import DataLoader

    from momattn.data.datamodule import StreamSampler

    at = {"step": 0}
    s = StreamSampler(lambda: at["step"] * 4, 48)
    dl = DataLoader(range(100), batch_size=4, sampler=s, num_workers=1, drop_last=True)
    it = iter(dl)
    first = next(it)  # the worker has prefetched further batches by now
    assert len(dl) == 12 and first.tolist() == [0, 1, 2, 3]
    assert [b[0].item() for b in [first, *it]] == list(range(0, 48, 4))  # all twelve, in order
    at["step"] = 5  # e.g. a resume: the stream continues at the restored step's position, and the length stays
    assert len(s) == 48 and list(s)[:2] == [20, 21]  # the whole stream's (Lightning restores its count inside it)


class _Trainer:
    def __init__(self, world_size=1, global_rank=0):
        self.world_size, self.global_rank, self.global_step = world_size, global_rank, 0


def _dm(n_val_windows, batch_size=4, val_batches=3, block_size=8, train=None):
    from momattn.data.datamodule import TokenDataModule

    val = np.arange(n_val_windows * block_size + 1, dtype=np.uint16)
    train = np.arange(200, dtype=np.uint16) if train is None else train
    return TokenDataModule(train, val, block_size, batch_size, max_steps=10, accumulate=1,
                           val_batches=val_batches, seed=0)


@pytest.mark.parametrize("n_val,world,rank,expected", [
    (14, 1, 0, [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12]),  # capped at val_batches * batch_size, spread over all
    (100, 1, 0, [0, 8, 16, 25, 33, 41, 50, 58, 66, 75, 83, 91]),  # the split's end too (was windows 0-11 only)
    (10, 1, 0, [0, 1, 2, 3, 5, 6, 7, 8]),  # whole batches only
    (3, 1, 0, [0, 1, 2]),         # fewer windows than one batch: all of them
    (14, 2, 1, [1, 5, 8, 12]),    # 2 processes: 8 windows (whole global batches), every other one
    (3, 2, 0, [0]),               # fewer than a global batch: an equal share per process
    (3, 2, 1, [1]),
])
def test_validation_reads_whole_batches_of_windows_spread_over_the_split_in_order(n_val, world, rank, expected):
    dm = _dm(n_val, val_batches=3 if world == 1 else 1)
    dm.trainer = _Trainer(world, rank)
    loader = dm.val_dataloader()
    assert list(loader.sampler) == expected
    assert [dm.val_set.window(i) for i in range(n_val)] == list(range(n_val))  # never shuffled
    first = next(iter(loader))[0][0]
    assert first[0].item() == expected[0] * 8  # window i starts at token i * block_size


def test_the_unigram_baseline_is_measured_on_the_targets_validation_reads():
    # the baseline printed beside val/ppl was measured on the whole split, not on the windows val/ppl reads (the
    # default corpus: 1162.3 against 1172.8; found by review)
    import torch

    from momattn.metrics import unigram_ppl

    for world in (1, 2):
        dm = _dm(100, val_batches=3 if world == 1 else 1)
        dm.trainer = _Trainer(world, 0)
        targets = np.concatenate([dm.val_set[i][1].numpy() for i in range(100) if i in dm._val_windows(world)])
        got = dm.validated_targets(world)
        assert len(got) == {1: 12, 2: 8}[world] * 8 and np.array_equal(got, targets)
        ranks = [torch.cat([y.flatten() for _, y in _loader(dm, world, r)]) for r in range(world)]  # every rank's
        assert sorted(torch.cat(ranks).tolist()) == sorted(got.tolist())
    assert unigram_ppl(np.arange(300), got, 1000) != unigram_ppl(np.arange(300), dm.val_set.tokens, 1000)


def _loader(dm, world, rank):
    dm.trainer = _Trainer(world, rank)
    return dm.val_dataloader()


def test_fewer_val_windows_than_processes_is_refused_and_named():
    from momattn.errors import DataError

    dm = _dm(1)
    dm.trainer = _Trainer(2, 1)
    with pytest.raises(DataError, match=r"the val split has 1 window\(s\).*fewer than the 2 training processes"):
        dm.val_dataloader()


def test_a_split_shorter_than_one_window_is_refused_and_named():
    from momattn.errors import DataError

    with pytest.raises(DataError, match=r"the train split has 8 tokens, fewer than one training window"):
        _dm(3, train=np.arange(8, dtype=np.uint16))
    _dm(3, train=np.arange(9, dtype=np.uint16))  # block_size + 1 tokens: one window
    with pytest.raises(DataError, match=r"the val split has 1 tokens, .*; add text, hold out more of it "
                                        r"\(data.val_fraction\) or lower"):
        _dm(0)  # a small val_fraction: the message did not name it


def test_a_ginc_split_shorter_than_one_window_names_ginc_keys(tmp_path):
    """GINC's validation split was advised data.val_fraction, a key GINC refuses (found by review)."""
    from conftest import compose_train

    from momattn.errors import DataError
    from momattn.training import run_train

    with pytest.raises(DataError, match=r"^the val split has 4 tokens, fewer than one training window of "
                                        r"model.block_size \+ 1 = 33; raise data.n_val_docs x data.val_doc_length "
                                        r"\(now 1 x 3\) or lower model.block_size$"):
        run_train(compose_train(tmp_path, ["experiment=ginc", "debug=smoke", "data.n_train_docs=20",
                                           "data.doc_length=1024", "data.n_val_docs=1", "data.val_doc_length=3"]))


def test_a_hub_validation_split_shorter_than_one_window_is_refused_before_the_train_split_is_tokenized(tmp_path):
    """data=hf tokenized the whole train split (hours of a large corpus) before refusing a short validation split,
    and advised data.val_fraction, which it refuses beside a named validation split (found by review)."""
    import json

    from conftest import compose_train

    from momattn.errors import DataError
    from momattn.training import run_train

    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": f"the cat {i} sat"}) + "\n" for i in range(200)))
    (tmp_path / "val.jsonl").write_text(json.dumps({"text": "hi there"}) + "\n")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"^the val split has at most \d+ tokens \(.*\), fewer than one training "
                                        r"window of model.block_size \+ 1 = 33; give the validation split \(data.val_split="
                                        r"'validation'\) more text, or set data.val_split=null to hold out part of "
                                        r"the train split or lower model.block_size$"):
        run_train(compose_train(tmp_path / "run", [
            "debug=smoke", "data=hf", "data.name=json", "tokenizer.vocab_size=300", "model.block_size=32",
            f"data.data_files={{train:{tmp_path / 'train.jsonl'},validation:{tmp_path / 'val.jsonl'}}}",
            f"paths.cache_dir={cache}"]))
    # the train split was never tokenized (the BPE not even trained: the bound of a token per byte says it)
    assert not [json.loads(p.read_text())["split"] for p in (cache / "tokens").glob("*.json")]
    # under a tokenizer trained already (a file): the validation split is tokenized, the train split is not
    from momattn.tokenizer import train_bpe

    (tmp_path / "tok.json").write_text(train_bpe(lambda: ["the cat sat"] * 20, 300).to_json())
    with pytest.raises(DataError, match=r"^the val split has \d+ tokens, fewer than one training window"):
        run_train(compose_train(tmp_path / "run2", [
            "debug=smoke", "data=hf", "data.name=json", "tokenizer=file", f"tokenizer.path={tmp_path / 'tok.json'}",
            "model.block_size=32", f"paths.cache_dir={cache}",
            f"data.data_files={{train:{tmp_path / 'train.jsonl'},validation:{tmp_path / 'val.jsonl'}}}"]))
    assert [json.loads(p.read_text())["split"] for p in (cache / "tokens").glob("*.json")] == ["val"]


def test_a_dataset_of_windows_is_taken_as_is():
    windows = TokenWindows(np.arange(30, dtype=np.uint16), 8, 0, shuffle=False)  # 3 windows, fewer than 9 items
    dm = _dm(3, train=windows)
    assert dm.train_set is windows


@pytest.mark.parametrize("batch_size,world", [(4, 1), (2, 1), (8, 1), (3, 2)])
def test_a_resume_with_other_samples_per_step_continues_where_the_checkpointed_run_stopped(batch_size, world):
    was = _dm(3, batch_size=4)
    was.trainer = _Trainer()
    was.trainer.global_step = 5  # 5 steps of 4 samples: samples 0-19 were trained on
    state = was.state_dict()
    now = _dm(3, batch_size=batch_size)
    now.trainer = _Trainer(world, 0)
    now.load_state_dict(state)
    now.trainer.global_step = 5  # Lightning restores the step
    sampler = now.train_dataloader().sampler
    assert list(sampler)[:2] == [20, 20 + world]  # not 5 x batch_size x world
    steps_left = 10 - 5
    assert len(range(20, 20 + steps_left * batch_size * world)) == sampler.total - 20  # the steps left, whole
    now.trainer.global_step = 6
    assert list(sampler)[0] == 20 + batch_size * world and now.state_dict()["position"] == 20 + batch_size * world


@pytest.mark.parametrize("change", ["seed", "text"])
def test_a_resume_with_another_order_of_windows_starts_it_at_its_beginning(change, capsys):
    # a resume with another seed (or corpus) went on at sample 20 of the new order: with 1000 windows resumed at
    # 500, 24% of the epoch was trained twice and as many windows skipped (found by review)
    from momattn.data.datamodule import TokenDataModule

    def dm(seed=0, train=None):
        train = np.arange(200, dtype=np.uint16) if train is None else train
        return TokenDataModule(train, np.arange(25, dtype=np.uint16), 8, 4, max_steps=10, accumulate=1,
                               val_batches=3, seed=seed)

    was = dm()
    was.trainer = _Trainer()
    was.trainer.global_step = 5
    state = was.state_dict()
    now = dm(seed=1) if change == "seed" else dm(train=np.arange(200, dtype=np.uint16)[::-1].copy())
    now.trainer = _Trainer()
    now.load_state_dict(state)
    now.trainer.global_step = 5
    sampler = now.train_dataloader().sampler
    assert list(sampler)[:2] == [0, 1] and sampler.total == 5 * 4  # the steps left, from the new order's start
    # but its length is the whole run's (10 steps of 4): Lightning counts the 5 restored steps' batches against it,
    # and a length of the 5 steps left ended the restored epoch at once (found by review)
    assert len(sampler) == 10 * 4 and len(list(sampler)) == 5 * 4
    assert "the data starts at the beginning of the new order, not at sample 20" in capsys.readouterr().err
    same = dm()
    same.trainer = _Trainer()
    same.load_state_dict(state)
    same.trainer.global_step = 5
    assert list(same.train_dataloader().sampler)[:1] == [20]  # the same order: where it stopped
    assert "new order" not in capsys.readouterr().err


def test_val_ppl_is_exp_of_val_loss_without_a_cap():
    # capped at e^50, silently: a diverged run's val/loss of 60 read as a val/ppl of 5.2e21 (found by review)
    import math

    from momattn.metrics import perplexity

    assert perplexity(60.0) == math.exp(60.0) and perplexity(2.0) == math.exp(2.0)
    assert perplexity(800.0) == math.inf and perplexity(709.5) == math.exp(709.5)  # past float64's range, and not
    assert math.isnan(perplexity(math.nan))  # a broken validation, not a diverged one


def test_a_validation_split_too_short_at_a_token_per_byte_is_refused_before_the_bpe_is_trained(tmp_path, capsys):
    """The BPE was trained on the whole train split (seconds to minutes of a large corpus) before a validation split
    shorter than one window was refused, and the message said it trained one (found by review)."""
    from conftest import compose_train

    from momattn.errors import DataError
    from momattn.training import run_train

    text = tmp_path / "small.txt"
    text.write_text("\n\n".join(f"document {i} " + "word " * 5 for i in range(40)))
    with pytest.raises(DataError, match=r"^the val split has at most \d+ tokens \(a byte each and one end-of-text "
                                        r"per document, before the BPE is trained\), fewer than one training window "
                                        r"of model.block_size \+ 1 = 401; add text, hold out more of it "
                                        r"\(data.val_fraction\) or lower model.block_size$"):
        run_train(compose_train(tmp_path / "run", ["debug=smoke", "data=text_files", f"data.paths=[{text}]",
                                                   "tokenizer.vocab_size=300", "model.block_size=400",
                                                   f"paths.cache_dir={tmp_path / 'cache'}"]))
    assert "training a BPE" not in capsys.readouterr().err and not (tmp_path / "cache" / "tokenizers").exists()
    (tmp_path / "empty.txt").write_text("")  # nothing to read: no word of a BPE trained before the error
    with pytest.raises(DataError):
        run_train(compose_train(tmp_path / "run2", ["debug=smoke", "data=text_files", f"data.paths=[{tmp_path / 'empty.txt'}]",
                                                    f"paths.cache_dir={tmp_path / 'cache'}"]))
    assert "training a BPE" not in capsys.readouterr().err
