"""Checkpoints: nothing in a file runs as code, malformed files get one clear line, writes are atomic and
durable, and a resume restores the RNG (dropout) exactly."""

from __future__ import annotations

import os
import stat

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from conftest import SMOKE, run_cli

from momattn.callbacks import AtomicCheckpointIO
from momattn.checkpoint import checkpoint_meta, load_checkpoint, read_checkpoint
from momattn.data.datamodule import TokenDataModule
from momattn.errors import CheckpointError
from momattn.lit import LitGPT, OptimConfig
from momattn.model import GPT, GPTConfig
from momattn.tokenizer import train_bpe


class _RunsShell:
    """What an attacker pickles: unpickling it calls os.system(cmd)."""

    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return os.system, (self.cmd,)


def _evil(path, marker) -> None:
    torch.save({"state_dict": {}, "momattn": _RunsShell(f"touch {marker}")}, path)


def test_the_payload_is_real(tmp_path):
    # the control: an unsafe load of such a file does run the command (so the tests below mean something)
    _evil(tmp_path / "evil.ckpt", tmp_path / "ran")
    torch.load(tmp_path / "evil.ckpt", weights_only=False)
    assert (tmp_path / "ran").exists()


def test_a_checkpoint_that_carries_code_is_refused_and_nothing_runs(tmp_path):
    _evil(tmp_path / "evil.ckpt", tmp_path / "ran")
    for load in (read_checkpoint, load_checkpoint, AtomicCheckpointIO().load_checkpoint):  # the last: resume
        with pytest.raises(CheckpointError, match="contains code or objects a safe load refuses") as e:
            load(tmp_path / "evil.ckpt")
        assert "system" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "ran").exists()


TRAIN_SMOKE = pytest.param("train.py", [*SMOKE, "logger=none"], marks=pytest.mark.slow)


@pytest.mark.parametrize("script,args", [("evaluate.py", []), TRAIN_SMOKE])
def test_the_entry_points_refuse_it_with_one_line_and_exit_2(tmp_path, script, args):
    _evil(tmp_path / "evil.ckpt", tmp_path / "ran")
    args = [*args, f"ckpt_path={tmp_path / 'evil.ckpt'}", f"hydra.run.dir={tmp_path / 'out'}"]
    r = run_cli(script, args, tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    [line] = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert "evil.ckpt" in line and "contains code or objects a safe load refuses" in line
    assert not (tmp_path / "ran").exists()


META = {"format": 1, "model_config": {"attention": {}}, "tokenizer": "{}"}


@pytest.mark.parametrize("ckpt,says", [
    ({"state_dict": {}, "momattn": 3}, "'momattn' entry is of type int"),
    ({"state_dict": [1, 2], "momattn": META}, "'state_dict' entry is of type list"),
    ({"state_dict": {"model.w": 1}, "momattn": META}, "not named tensors"),
    ({"state_dict": {}, "momattn": {"format": 1, "model_config": 7, "tokenizer": "{}"}}, "model_config"),
    ({"state_dict": {}, "momattn": {"format": 1, "model_config": {"attention": {}}}}, "tokenizer"),
    ({"state_dict": {}, "momattn": {"format": 9}}, "has format 9"),
])
def test_a_loadable_file_with_the_wrong_structure_gets_a_clear_error(tmp_path, ckpt, says):
    torch.save(ckpt, tmp_path / "odd.ckpt")
    with pytest.raises(CheckpointError, match="odd.ckpt") as e:
        load_checkpoint(tmp_path / "odd.ckpt")
    assert says in str(e.value) and "\n" not in str(e.value)


def test_an_unknown_model_config_field_is_a_checkpoint_error(tmp_path):
    meta = {"format": 1, "model_config": {"attention": {}, "n_wings": 2}, "tokenizer": "{}"}
    torch.save({"state_dict": {}, "momattn": meta}, tmp_path / "future.ckpt")
    with pytest.raises(CheckpointError, match="n_wings"):
        load_checkpoint(tmp_path / "future.ckpt")


# ---------------------------------------------------------------- atomic, durable writes


class _FailsHalfway:
    def __reduce__(self):
        raise RuntimeError("disk full")


def test_a_failed_write_leaves_the_previous_checkpoint_untouched(tmp_path):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.ones(1000)}, path)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):  # fails after the big tensor's record was written
        io.save_checkpoint({"w": torch.zeros(100_000), "z": _FailsHalfway()}, path)
    assert path.read_bytes() == before  # not truncated, not half-overwritten
    assert os.listdir(tmp_path) == ["last.ckpt"]  # and no temp file left behind
    assert torch.load(path, weights_only=True)["step"] == 1


def test_a_write_is_temp_file_fsync_rename_then_fsync_of_the_folder(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync-dir" if stat.S_ISDIR(st.st_mode) else "fsync-file", st.st_size))
        real_fsync(fd)

    def replace(src, dst, *a, **k):
        events.append(("replace", os.path.basename(src), os.path.basename(dst)))
        real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(10)}, tmp_path / "sub" / "last.ckpt")
    assert [e[0] for e in events] == ["fsync-file", "replace", "fsync-dir"]
    assert events[0][1] > 0  # the data was in the temp file before the rename
    assert events[1][1] == f".last.ckpt.tmp{os.getpid()}" and events[1][2] == "last.ckpt"
    assert torch.equal(torch.load(tmp_path / "sub" / "last.ckpt", weights_only=True)["w"], torch.ones(10))


# ---------------------------------------------------------------- exact resume with dropout, via Lightning


MAX_STEPS, STOP_AT = 8, 4


class _Losses(pl.Callback):
    def __init__(self, stop_at: int | None = None, ckpt=None):
        self.losses, self.stop_at, self.ckpt = {}, stop_at, ckpt

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[trainer.global_step - 1] = outputs["loss"].item()
        if trainer.global_step == self.stop_at:  # what PreemptionCheckpoint does on SIGTERM
            trainer.save_checkpoint(self.ckpt)
            trainer.should_stop = True


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(lambda: ["the quick brown fox jumps over the lazy dog"] * 20, 260)


def _fit(tokenizer, callback: _Losses, ckpt_path=None) -> dict[int, float]:
    pl.seed_everything(0, verbose=False)  # as train.py does, also on resume
    config = GPTConfig(block_size=16, vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=16,
                       dropout=0.3)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, 4000).astype(np.uint16)
    lit = LitGPT(GPT(config), OptimConfig(lr=3e-2, warmup_steps=2), MAX_STEPS,
                 checkpoint_meta(config, tokenizer, {"note": "test"}))
    dm = TokenDataModule(tokens[:3000], tokens[3000:], 16, 4, MAX_STEPS, 1, 1, 0)
    trainer = pl.Trainer(max_steps=MAX_STEPS, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0,
                         num_sanity_val_steps=0, plugins=[AtomicCheckpointIO()], callbacks=[callback])
    trainer.fit(lit, datamodule=dm, ckpt_path=ckpt_path)
    return callback.losses


@pytest.fixture(scope="module")
def interrupted(tokenizer, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("resume") / "last.ckpt"
    reference = _fit(tokenizer, _Losses())
    first = _fit(tokenizer, _Losses(stop_at=STOP_AT, ckpt=ckpt))
    return reference, first, ckpt


def test_resume_with_dropout_continues_the_uninterrupted_run_bit_for_bit(tokenizer, interrupted):
    reference, first, ckpt = interrupted
    assert sorted(reference) == list(range(MAX_STEPS)) and sorted(first) == list(range(STOP_AT))
    resumed = _fit(tokenizer, _Losses(), ckpt_path=str(ckpt))
    assert sorted(resumed) == list(range(STOP_AT, MAX_STEPS))
    for step in range(MAX_STEPS):
        assert (first | resumed)[step] == reference[step], step  # exact: same data, weights, optimizer, RNG
    assert len(set(reference.values())) == MAX_STEPS


def test_a_checkpoint_written_by_training_loads_safely(interrupted):
    _, _, ckpt = interrupted
    assert torch.serialization.get_unsafe_globals_in_checkpoint(ckpt) == []  # nothing to allow-list
    raw = read_checkpoint(ckpt)
    assert raw["global_step"] == STOP_AT and raw["momattn"]["config"] == {"note": "test"}
    model, tok = load_checkpoint(ckpt)
    assert tok.vocab_size == model.config.vocab_size and not model.training
    state = {k.removeprefix("model."): v for k, v in raw["state_dict"].items()}
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items() if k in state)
