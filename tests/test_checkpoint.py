"""Checkpoints: nothing in a file runs as code, malformed files get one clear line, writes are atomic and
durable, and a resume restores the RNG (dropout) exactly."""

from __future__ import annotations

import json
import os
import re
import stat
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from conftest import SMOKE, run_cli

from momattn.callbacks import AtomicCheckpointIO
from momattn.checkpoint import checkpoint_meta, load_checkpoint, read_checkpoint
from momattn.data.datamodule import TokenDataModule
from momattn.errors import CheckpointError, ConfigError
from momattn.lit import LitGPT, rng_state
from momattn.model import GPT, GPTConfig
from momattn.optim import OptimConfig
from momattn.tokenizer import train_bpe


def _calls(module: str, name: str, arg: str) -> bytes:
    """A protocol-4 pickle that calls module.name(arg) (STACK_GLOBAL resolves a dotted name through the module)."""
    def text(t: str) -> bytes:
        return b"\x8c" + bytes([len(t.encode())]) + t.encode()  # SHORT_BINUNICODE

    return b"\x80\x04" + text(module) + text(name) + b"\x93" + text(arg) + b"\x85R."  # STACK_GLOBAL, TUPLE1, REDUCE


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


META = {"format": 1, "model_config": {"attention": {"kind": "vanilla"}}, "tokenizer": "{}"}


@pytest.mark.parametrize("ckpt,says", [
    ({"state_dict": {}, "momattn": 3}, "'momattn' entry is of type int"),
    ({"state_dict": [1, 2], "momattn": META}, "'state_dict' entry is of type list"),
    ({"state_dict": {"model.w": 1}, "momattn": META}, "not named tensors"),
    ({"state_dict": {}, "momattn": {"format": 1, "model_config": 7, "tokenizer": "{}"}}, "model_config"),
    ({"state_dict": {}, "momattn": {"format": 1, "model_config": {"attention": {}}}}, "tokenizer"),
    ({"state_dict": {}, "momattn": {"format": 9}}, "has format 9"),
    ({"state_dict": {}, "momattn": {**META, "config": "lr=1"}}, "'momattn.config' entry is of type str"),
    ({"state_dict": {}, "momattn": META, "global_step": "9"}, "'global_step' entry is '9', not a whole number"),
    ({"state_dict": {}, "momattn": META, "global_step": -5}, "'global_step' entry is -5, not a whole number"),  # review
    # found by fuzzing evaluate.py: a KeyError, an AttributeError and int('abc') from inside the evaluation
    ({"state_dict": {}, "momattn": {**META, "model_config": {"attention": {}}}},
     "'momattn.model_config.attention' entry has no 'kind'"),
    ({"state_dict": {}, "momattn": {**META, "model_config": {"attention": {"kind": "momentum"}, "block_size": 0}}},
     "(model.block_size=0 must be a whole number >= 1); the checkpoint is damaged"),  # it read as a command-line error
    ({"state_dict": {}, "momattn": {**META, "config": {"data": [1]}}}, "run config's 'data' entry is of type list"),
    ({"state_dict": {}, "momattn": {**META, "config": {"data": {"split_seed": "abc"}}}},
     "data.split_seed is 'abc', not an integer"),
    # a resume restored these once training had started: a traceback from random.setstate, and int('x')
    ({"state_dict": {}, "momattn": {**META, "rng": {"python": "junk"}}},
     "'momattn.rng' entry (the RNG states a resume restores) is not usable (ValueError: state with version j"),
    ({"state_dict": {}, "momattn": {**META, "rng": {**rng_state(), "torch": torch.zeros(3)}}}, "'momattn.rng' entry"),
    ({"state_dict": {}, "momattn": {**META, "skipped_nonfinite": "x"}}, "'momattn.skipped_nonfinite' entry is 'x'"),
])
def test_a_loadable_file_with_the_wrong_structure_gets_a_clear_error(tmp_path, ckpt, says):
    torch.save(ckpt, tmp_path / "odd.ckpt")
    with pytest.raises(CheckpointError, match="odd.ckpt") as e:
        load_checkpoint(tmp_path / "odd.ckpt")
    assert says in str(e.value) and "\n" not in str(e.value)


def test_an_older_checkpoint_holding_momentum_settings_under_another_kind_still_loads(tmp_path, tokenizer):
    """train.py accepted and ignored attention=vanilla +attention.include_current=true before 2026-12-03, and its
    checkpoints kept it: the model config's new refusal called them damaged (diff review)."""
    model = _save(tmp_path / "a.ckpt", tokenizer)
    ckpt = torch.load(tmp_path / "a.ckpt", weights_only=True)
    assert ckpt["momattn"]["model_config"]["attention"]["kind"] == "vanilla"
    ckpt["momattn"]["model_config"]["attention"].update(include_current=True, learnable_eta=True)
    torch.save(ckpt, tmp_path / "old.ckpt")
    loaded, _ = load_checkpoint(tmp_path / "old.ckpt")
    assert loaded.config.attention.kind == "vanilla" and not loaded.config.attention.include_current
    ids = torch.randint(0, 50, (1, 8))
    assert torch.equal(loaded.eval()(ids), model.eval()(ids))


def test_a_tokenizer_name_from_a_checkpoint_is_escaped_not_obeyed(tmp_path, tokenizer):
    """The stored name reached the console and results.md raw: escapes cleared the screen, a newline broke the
    table (trust review)."""
    _save(tmp_path / "a.ckpt", tokenizer)
    ckpt = torch.load(tmp_path / "a.ckpt", weights_only=True)
    ckpt["momattn"]["tokenizer_name"] = "bpe\x1b[2J\n# owned"
    torch.save(ckpt, tmp_path / "b.ckpt")
    _, tok = load_checkpoint(tmp_path / "b.ckpt")
    assert tok.name == "bpe\\x1b[2J\\x0a# owned" and "\n" not in tok.name


def test_an_unknown_model_config_field_is_a_checkpoint_error(tmp_path):
    meta = {"format": 1, "model_config": {"attention": {"kind": "vanilla"}, "n_wings": 2}, "tokenizer": "{}"}
    torch.save({"state_dict": {}, "momattn": meta}, tmp_path / "future.ckpt")
    with pytest.raises(CheckpointError, match="checkpoint '.*future.ckpt' has a model config .*n_wings"):
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


def test_two_writers_in_one_process_never_share_a_temporary_file(tmp_path):
    import threading

    from momattn.io import atomic_write

    path, inside, release, errors = tmp_path / "tok.json", threading.Event(), threading.Event(), []

    def slow(f):  # writer A: holds its temporary file open until B has written
        f.write(b"A" * 10)
        inside.set()
        release.wait(10)
        f.write(b"A" * 10)

    a = threading.Thread(target=lambda: atomic_write(path, slow))
    a.start()
    inside.wait(10)
    try:
        atomic_write(path, lambda f: f.write(b"B" * 30))  # one PID, so the temporary name held only the PID
    except OSError as e:
        errors.append(e)
    release.set()
    a.join()
    assert not errors and path.read_bytes() == b"A" * 20  # A's whole file, renamed last (was: B's, then A crashed)
    assert os.listdir(tmp_path) == ["tok.json"]


def test_a_name_of_any_valid_length_is_written_through_a_temporary_file_that_fits(tmp_path, monkeypatch):
    import socket

    from momattn.io import NAME_MAX, TEMP_NAME, atomic_write

    monkeypatch.setattr(socket, "gethostname", lambda: "h" * 80)  # a long host name: the longest tail
    real_open = open
    for name in ("x" + "é" * 124 + ".ckpt", "x" * NAME_MAX, "x"):  # 254 bytes, cut inside an é; the longest name
        seen = []

        def spy(file, *a, _seen=seen, **k):
            _seen.append(os.path.basename(file))
            return real_open(file, *a, **k)

        monkeypatch.setattr("builtins.open", spy)
        # a valid name of over ~170 bytes made the temporary name too long: OSError, the checkpoint not written
        atomic_write(tmp_path / name, lambda f: f.write(b"1"))
        monkeypatch.setattr("builtins.open", real_open)
        assert (tmp_path / name).read_bytes() == b"1" and os.listdir(tmp_path) == [name]
        (tmp_path / name).unlink()
        assert len(seen) == 1 and len(seen[0].encode()) <= NAME_MAX and TEMP_NAME.fullmatch(seen[0]), seen
        assert seen[0].startswith("." + name[:10])


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
    assert re.fullmatch(rf"\.last\.ckpt\.[0-9a-f]{{8}}\.tmp{os.getpid()}@[A-Za-z0-9-]+", events[1][1]) and events[1][2] == "last.ckpt"
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
    loaded = model.state_dict()
    assert set(loaded) - set(state) <= {"lm_head.weight"} and set(state) <= set(loaded)  # (tied to the embedding)
    assert all(torch.equal(v, state[k]) for k, v in loaded.items() if k in state)  # every weight, not none


# ---------------------------------------------------------------- the helpers, in-process
# (mutation testing found these reached only through subprocesses or a shared fixture)


def _small(tokenizer):
    config = GPTConfig(block_size=16, vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=16)
    torch.manual_seed(0)
    return config, GPT(config)


def _save(path, tokenizer, drop_meta=(), **extra):
    config, model = _small(tokenizer)
    meta = checkpoint_meta(config, tokenizer, {"seed": 7}, **extra)
    for key in drop_meta:
        del meta[key]
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "momattn": meta,
                "global_step": 3}, path)
    return model


def test_checkpoint_meta_holds_what_evaluation_and_resume_read(tokenizer):
    config, _ = _small(tokenizer)
    meta = checkpoint_meta(config, tokenizer, {"seed": 7}, extra_key=1)
    assert meta["format"] == 1 and meta["config"] == {"seed": 7} and meta["extra_key"] == 1
    assert meta["model_config"]["n_embd"] == 16 and meta["tokenizer_name"] == tokenizer.name
    assert meta["tokenizer"] == tokenizer.to_json()


def test_load_checkpoint_round_trip_and_an_old_file_without_a_tokenizer_name(tmp_path, tokenizer):
    model = _save(tmp_path / "a.ckpt", tokenizer)
    loaded, tok = load_checkpoint(tmp_path / "a.ckpt")
    assert tok.name == tokenizer.name and all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    _save(tmp_path / "old.ckpt", tokenizer, drop_meta=("tokenizer_name",))
    assert load_checkpoint(tmp_path / "old.ckpt")[1].name == "tokenizer"


def test_paths_that_are_no_checkpoint_file_and_damaged_weights_are_one_line_errors(tmp_path, tokenizer):
    # found by fuzzing generate.py, analyze.py and export: tracebacks, hangs, a wrong culprit, silent NaN output
    for path in (1.5, True, ["a"], " "):  # ckpt_path=[a]: a TypeError from pathlib
        with pytest.raises(CheckpointError, match=r"^ckpt_path=.* is not a path"):
            read_checkpoint(path)
    # ckpt_path=123, which Hydra reads as a number: the file named 123 (it was refused as not a path; review)
    with pytest.raises(CheckpointError, match="checkpoint '123' does not exist"):
        read_checkpoint(123)
    os.mkfifo(tmp_path / "fifo.ckpt")  # zipfile.is_zipfile waited for a writer forever
    for path in (tmp_path / "fifo.ckpt", "/dev/zero"):
        with pytest.raises(CheckpointError, match="is not a regular file"):
            read_checkpoint(path)
    model = _save(tmp_path / "w.ckpt", tokenizer)
    raw = torch.load(tmp_path / "w.ckpt", weights_only=True)
    torch.save({k: v for k, v in raw.items() if k != "state_dict"}, tmp_path / "nostate.ckpt")
    with pytest.raises(CheckpointError, match="has no 'state_dict' entry"):  # it said: no 'momattn' entry
        read_checkpoint(tmp_path / "nostate.ckpt")
    raw["state_dict"]["model.blocks.0.mlp.c_fc.weight"][0, 0] = float("nan")  # valid CRCs, a NaN inside
    torch.save(raw, tmp_path / "nan.ckpt")
    with pytest.raises(CheckpointError, match=r"holds non-finite weights \(nan or inf in blocks.0.mlp.c_fc.weight\)"):
        load_checkpoint(tmp_path / "nan.ckpt")
    assert load_checkpoint(tmp_path / "w.ckpt")[0].config == model.config


def test_load_state_into_accepts_a_state_without_the_tied_head_and_names_what_is_missing(tokenizer):
    from momattn.checkpoint import load_state_into

    _, model = _small(tokenizer)
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied to wte
    load_state_into(GPT(model.config), state, "x.ckpt")
    state.pop("ln_f.weight")
    with pytest.raises(CheckpointError, match=r"checkpoint 'x.ckpt' does not fit this model: missing \['ln_f.weight'\]"):
        load_state_into(GPT(model.config), state, "x.ckpt")
    block = [k for k in state if k.startswith("blocks.0.")]  # a list cut at 4 says how many more (review)
    with pytest.raises(CheckpointError, match=rf"missing \[.*\] and {len(block) - 3} more, unexpected \[\]"):
        load_state_into(GPT(model.config), {k: v for k, v in state.items() if k not in block}, "x.ckpt")


def test_first_line_of_an_error():
    from momattn.checkpoint import _first_line

    assert _first_line(ValueError("boom")) == "ValueError: boom"
    assert _first_line(RuntimeError("\n  first\nsecond")) == "RuntimeError: first"
    assert _first_line(OSError()) == "OSError: "
    assert _first_line("no zip index") == "no zip index"


def test_unpickling_errors_name_the_file(tmp_path, monkeypatch):
    from momattn import checkpoint

    _evil(tmp_path / "evil.ckpt", tmp_path / "ran")
    # the opcode scan found nothing to name: the loader's own first line says what was refused
    monkeypatch.setattr(checkpoint, "_refused_globals", lambda p: [])
    with pytest.raises(CheckpointError, match=r"evil.ckpt' contains code .* \(UnpicklingError: Weights only load failed"):
        read_checkpoint(tmp_path / "evil.ckpt")

    def other(*a, **k):  # an unpickling error that is not a refusal: a damaged file
        raise __import__("pickle").UnpicklingError("invalid load key, 'x'.")

    monkeypatch.setattr(torch, "load", other)
    with pytest.raises(CheckpointError, match=r"^checkpoint '.*evil.ckpt' cannot be read \(UnpicklingError: invalid load "
                                              r"key, 'x'.\); it is truncated or not a PyTorch checkpoint. Use another"):
        read_checkpoint(tmp_path / "evil.ckpt")
    assert not (tmp_path / "ran").exists()


OPTIMIZER_0 = {"state": {"0": {"step": torch.tensor(5.0)}}, "param_groups": [{"lr": 0.1, "params": ["0"]}]}


def _sharded_folder(tmp_path, tokenizer, model):
    """What trainer=fsdp writes (momattn.strategies.ShardedFSDP): shards + .metadata by torch.distributed.checkpoint
    (here from one process), and meta.pt beside them."""
    import warnings

    import torch.distributed.checkpoint as dcp

    from momattn.checkpoint import SHARDED_META

    folder = tmp_path / "last.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled ... single process"
        dcp.save({"model": {f"model.{k}": v for k, v in model.state_dict().items()}, "optimizer_0": OPTIMIZER_0},
                 checkpoint_id=folder, no_dist=True)
    torch.save({"momattn": checkpoint_meta(model.config, tokenizer, {"seed": 7}), "global_step": 5},
               folder / SHARDED_META)
    return folder


def test_a_weights_only_sharded_folder_is_known_to_hold_no_optimizer(tmp_path, tokenizer):
    """Only a single file was checked: a sharded weights-only folder resumed into Lightning's KeyError after set-up
    (flows review)."""
    import torch.distributed.checkpoint as dcp

    from momattn.checkpoint import SHARDED_META, holds_optimizer, read_meta

    config, model = _small(tokenizer)
    folder = _sharded_folder(tmp_path, tokenizer, model)
    assert holds_optimizer(folder, read_meta(folder))
    weights = tmp_path / "weights" / "last.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model": {f"model.{k}": v for k, v in model.state_dict().items()}}, checkpoint_id=weights,
                 no_dist=True)
    (weights / SHARDED_META).write_bytes((folder / SHARDED_META).read_bytes())
    assert not holds_optimizer(weights, read_meta(weights))
    _save(tmp_path / "a.ckpt", tokenizer)
    assert not holds_optimizer(tmp_path / "a.ckpt", read_meta(tmp_path / "a.ckpt"))  # no optimizer_states either


def test_a_sharded_folder_reads_like_a_single_file(tmp_path, tokenizer):
    from momattn.checkpoint import read_meta

    config, model = _small(tokenizer)
    folder = _sharded_folder(tmp_path, tokenizer, model)
    ckpt = read_checkpoint(folder)
    assert ckpt["global_step"] == 5 and ckpt["momattn"]["config"] == {"seed": 7}
    assert ckpt["optimizer_states"] == [OPTIMIZER_0]  # its hyper-parameters came through the weights-only loader
    assert all(torch.equal(ckpt["state_dict"][f"model.{k}"], v) for k, v in model.state_dict().items())
    assert read_meta(folder)["global_step"] == 5 and "state_dict" not in read_meta(folder)
    loaded, _ = load_checkpoint(folder)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_ckpt_path_last_with_no_run_to_resume_makes_no_run_folder(tmp_path):
    # refused once Hydra had made outputs/<date>/<time>/ (its train.log, .hydra/, lock) for it: an empty run folder
    r = run_cli("train.py", ["ckpt_path=last", "debug=smoke"], tmp_path)
    assert r.returncode == 2 and f"ckpt_path=last: no run to resume: no checkpoints/last.ckpt under {tmp_path}" \
        in r.stderr, r.stderr[-2000:]
    assert "name the run's folder, ckpt_path=last hydra.run.dir=<run folder>" in r.stderr  # (paths.output_dir=X was
    assert not (tmp_path / "outputs").exists()  # given no word on the form that works: review)
    # given through a resolver of its own, the same: its text named no file, and it resumed another run's
    # checkpoint into a new folder, the settings it did not repeat back at their defaults (found by review)
    r = run_cli("train.py", ["ckpt_path=${oc.env:MOMATTN_TEST_NO_SUCH_VARIABLE,last}", "debug=smoke"], tmp_path)
    assert r.returncode == 2 and f"ckpt_path=last: no run to resume: no checkpoints/last.ckpt under {tmp_path}" \
        in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "outputs").exists()
    from momattn.cli import resolved_ckpt_path

    assert resolved_ckpt_path(["a=1", "ckpt_path='${oc.env:MOMATTN_TEST_NO_SUCH_VARIABLE,/x y/l.ckpt}'"]) == [
        "a=1", "ckpt_path='/x y/l.ckpt'"]
    assert resolved_ckpt_path(["ckpt_path=${oc.env:MOMATTN_TEST_NO_SUCH_VARIABLE,null}"]) == ["ckpt_path=null"]
    kept = ["ckpt_path=${paths.output_dir}/checkpoints/last.ckpt"]  # the config's: Hydra resolves it, as before
    assert resolved_ckpt_path(kept) == kept
    swept = ["ckpt_path=${oc.env:A,a.ckpt},${oc.env:B,b.ckpt}"]  # a sweep's list: each job's, Hydra's
    assert resolved_ckpt_path(swept) == swept


def test_ckpt_path_last_prefers_the_run_folders_own(tmp_path):
    from momattn.checkpoint import newest_last_checkpoint, resolve_ckpt_path

    own = tmp_path / "outputs" / "run" / "checkpoints" / "last.ckpt"
    other = tmp_path / "multirun" / "sweep" / "0" / "checkpoints" / "last.ckpt"
    for p in (own, other):
        p.parent.mkdir(parents=True)
        p.write_bytes(b"x")
    os.utime(own, (1, 1))  # the other one is newer
    assert resolve_ckpt_path("last", own.parents[1], tmp_path) == own
    assert resolve_ckpt_path("last", tmp_path / "new", tmp_path) == other  # a fresh folder: the newest
    os.utime(own, None)  # now outputs/ holds the newest
    assert newest_last_checkpoint(tmp_path) == own
    assert resolve_ckpt_path(None, own.parents[1], tmp_path) is None
    assert resolve_ckpt_path("~/x.ckpt", own.parents[1], tmp_path) == Path("~/x.ckpt").expanduser()
    with pytest.raises(CheckpointError, match="ckpt_path=last: no run to resume: .*/empty/outputs nor .*/empty/multirun"):
        resolve_ckpt_path("last", tmp_path / "new", tmp_path / "empty")
    # a folder the command line chose: never another run's; nothing saved there -> step 0; progress -> an error
    assert resolve_ckpt_path("last", tmp_path / "new", tmp_path, search=False) is None
    best = tmp_path / "new" / "checkpoints" / "best-step40.ckpt"  # e.g. save_last=false
    best.parent.mkdir(parents=True)
    best.write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"has no last.ckpt but holds \['best-step40.ckpt'\]"):
        resolve_ckpt_path("last", tmp_path / "new", tmp_path, search=False)


def test_the_local_ranks_lightning_starts_resume_rank_zeros_choice(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from momattn.cli import HydraJob
    from momattn.training import RESUME_ENV, _resume_from

    c = SimpleNamespace(ckpt_path="last", paths=SimpleNamespace(root_dir=str(tmp_path)))
    other = tmp_path / "outputs" / "old" / "checkpoints" / "last.ckpt"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"x")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert _resume_from(c, HydraJob([]), tmp_path / "run") == other  # rank 0, no folder chosen: the newest
    monkeypatch.setenv("LOCAL_RANK", "1")  # its command line gained hydra.run.dir, which alone would say step 0
    assert _resume_from(c, HydraJob([], run_dir_given=True), tmp_path / "run") == other
    monkeypatch.setenv(RESUME_ENV, json.dumps({"run": str(tmp_path / "run"), "path": ""}))
    assert _resume_from(c, HydraJob([], run_dir_given=True), tmp_path / "run") is None
    # a DDP sweep: Lightning starts rank 1 once, in the first job, and it runs the later jobs of the sweep's command
    # line alongside rank 0's; job 1 took job 0's choice (and was refused as a job trained with other values)
    sweep = tmp_path / "sweep"
    for job in ("0", "1"):
        (sweep / job / "checkpoints").mkdir(parents=True)
        (sweep / job / "checkpoints" / "last.ckpt").write_bytes(b"x")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert _resume_from(c, HydraJob([], sweep_dir=str(sweep)), sweep / "0") == sweep / "0" / "checkpoints" / "last.ckpt"
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert _resume_from(c, HydraJob([], sweep_dir=str(sweep)), sweep / "1") == sweep / "1" / "checkpoints" / "last.ckpt"


def test_last_ckpt_is_not_refreshed_inside_a_gradient_accumulation(monkeypatch, capsys):
    from types import SimpleNamespace

    from momattn.callbacks import ModelCheckpoint

    cb = ModelCheckpoint(dirpath="/nonexistent", save_last=True)
    saved = []
    monkeypatch.setattr(cb, "_should_skip_saving_checkpoint", lambda trainer: False)
    monkeypatch.setattr(cb, "_monitor_candidates", lambda trainer: {})
    monkeypatch.setattr(cb, "_save_last_checkpoint", lambda trainer, m: saved.append(trainer.mid))
    for mid in (True, False):
        cb._refresh_last(SimpleNamespace(mid=mid, fit_loop=SimpleNamespace(
            epoch_loop=SimpleNamespace(_should_accumulate=lambda mid=mid: mid))))
    assert saved == [False]
    # nor a top-k file (Lightning writes last.ckpt with it) after a validation inside an accumulation (a time-based
    # val_check_interval; an int one that is not whole steps is refused at start-up)
    import lightning.pytorch.callbacks as lc

    lightning_saves = []
    monkeypatch.setattr(lc.ModelCheckpoint, "on_validation_end", lambda self, trainer, m: lightning_saves.append(trainer.mid))
    for mid in (True, False, True):
        cb.on_validation_end(SimpleNamespace(mid=mid, sanity_checking=False, is_global_zero=True, fit_loop=SimpleNamespace(
            epoch_loop=SimpleNamespace(_should_accumulate=lambda mid=mid: mid))), None)
    assert lightning_saves == [False] and saved == [False, False]
    err = capsys.readouterr().err  # said once, not at every such validation
    assert err.count("a validation fell inside a gradient accumulation") == 1


def test_a_sharded_folder_with_code_or_damage_in_its_index_is_refused(tmp_path, tokenizer):
    import pickle

    _, model = _small(tokenizer)
    folder = _sharded_folder(tmp_path, tokenizer, model)
    with open(folder / ".metadata", "wb") as f:
        pickle.dump(_RunsShell(f"touch {tmp_path / 'ran'}"), f)
    with pytest.raises(CheckpointError, match=r"last.ckpt' contains code or objects a safe load refuses \(posix.system"):
        read_checkpoint(folder)
    assert not (tmp_path / "ran").exists()
    # a name reached through torch.distributed.checkpoint's own modules: os.system by a dotted name, and a function
    # of theirs that torch.load()s any file unsafely (both ran while every name under those modules was allowed)
    for module, name, arg in (("torch.distributed.checkpoint.filesystem", "os.system", f"touch {tmp_path / 'ran'}"),
                              ("torch.distributed.checkpoint.format_utils", "torch_save_to_dcp", str(tmp_path))):
        (folder / ".metadata").write_bytes(_calls(module, name, arg))
        with pytest.raises(CheckpointError, match=rf"contains code or objects a safe load refuses \({re.escape(module)}"):
            read_checkpoint(folder)
        assert not (tmp_path / "ran").exists()
    (folder / ".metadata").write_bytes(b"not a pickle")  # named, without torch's two logged tracebacks
    with pytest.raises(CheckpointError, match=r"last.ckpt': its shard index \(.metadata\) cannot be read \(.*\); it is "
                                              r"damaged"):
        read_checkpoint(folder)
    (folder / ".metadata").unlink()
    with pytest.raises(CheckpointError, match=r"a sharded checkpoint folder without its shard index"):
        read_checkpoint(folder)


def test_damaged_bytes_inside_a_checkpoint_or_its_tokenizer_are_one_line_errors(tmp_path, tokenizer, monkeypatch):
    _save(tmp_path / "a.ckpt", tokenizer)
    data = bytearray((tmp_path / "a.ckpt").read_bytes())
    start = data.index(b"data.pkl") + 200  # inside the pickled record: a bad memo key surfaces as a KeyError
    data[start:start + 16] = b"X" * 16
    (tmp_path / "bad.ckpt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"bad.ckpt' cannot be read .*truncated or not a PyTorch checkpoint. Use another one, e.g. a best-step\*.ckpt in the run's checkpoints/ folder"):
        load_checkpoint(tmp_path / "bad.ckpt")

    def keyerror(*a, **k):  # what torch.load raised on one such file (a memo key read from damaged bytes)
        raise KeyError(1482184792)

    with monkeypatch.context() as m:
        m.setattr(torch, "load", keyerror)
        with pytest.raises(CheckpointError, match=r"bad.ckpt' cannot be read \(KeyError: 1482184792\)"):
            read_checkpoint(tmp_path / "bad.ckpt")
    ckpt = torch.load(tmp_path / "a.ckpt", weights_only=True)
    ckpt["momattn"]["tokenizer"] = ckpt["momattn"]["tokenizer"][:-40]  # a cut JSON string
    torch.save(ckpt, tmp_path / "tok.ckpt")
    with pytest.raises(CheckpointError, match=r"tok.ckpt': its tokenizer is damaged: not a valid tokenizer JSON"):
        load_checkpoint(tmp_path / "tok.ckpt")


def test_a_record_cut_short_a_rezipped_file_and_an_empty_one_are_named_not_loaded(tmp_path, tokenizer):
    """The memory-mapped load skips torch's check of a record's size and reads compressed bytes as they are: a
    record cut short (CRC valid) loaded the next record's bytes as a weight and evaluated without a word; a
    deflated copy was blamed on its RNG state or 'non-finite weights' (trust review)."""
    import zipfile

    _save(tmp_path / "a.ckpt", tokenizer)
    with zipfile.ZipFile(tmp_path / "a.ckpt") as z:
        entries = [(i, z.read(i)) for i in z.infolist()]
    small = min((i.filename for i, b in entries if "/data/" in i.filename and len(b) > 8),
                key=lambda n: next(len(b) for i, b in entries if i.filename == n))

    def rezip(name, cut=None, how=zipfile.ZIP_STORED):
        with zipfile.ZipFile(tmp_path / name, "w", how) as z:
            for info, data in entries:
                z.writestr(info.filename, data[:-4] if info.filename == cut else data)  # a new, valid CRC
        return tmp_path / name

    same = read_checkpoint(rezip("copy.ckpt"), verify=True)  # a stored copy laid out otherwise: read as it is
    assert all(torch.equal(v, w) for v, w in zip(same["state_dict"].values(),
                                                 torch.load(tmp_path / "a.ckpt", weights_only=True)["state_dict"].values()))
    with pytest.raises(CheckpointError, match=rf"cut.ckpt' is damaged: its entry {small} holds \d+ bytes where its "
                                              r"tensor needs \d+ \(a file cut or edited inside\)"):
        load_checkpoint(rezip("cut.ckpt", cut=small))
    with pytest.raises(CheckpointError, match=r"cut.ckpt' is damaged: its entry"):  # evaluate.py's first look too
        read_checkpoint(tmp_path / "cut.ckpt")
    with pytest.raises(CheckpointError, match=r"zipped.ckpt' has a compressed entry \(.*\): torch.save stores "
                                              r"everything uncompressed"):
        read_checkpoint(rezip("zipped.ckpt", how=zipfile.ZIP_DEFLATED))
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty.ckpt' is empty \(0 bytes\)"):
        read_checkpoint(tmp_path / "empty.ckpt")


@pytest.mark.parametrize("state,said", [
    ({"position": "x", "step": 1, "samples_per_step": 4}, r"'TokenDataModule.position' entry .* is 'x'"),
    ({"step": 1, "samples_per_step": 4}, r"'TokenDataModule.position' entry .* is None"),
    ({"position": -7, "step": 1, "samples_per_step": "four"}, r"'TokenDataModule.position' entry .* is -7"),
    ({"position": 4, "step": 1, "samples_per_step": 4, "stream_point": [0, "a"]}, r"'TokenDataModule.stream_point'"),
    ([1, 2], r"'TokenDataModule' entry .* is of type list"),
])
def test_a_bad_data_position_is_named_when_the_checkpoint_is_read(tmp_path, tokenizer, state, said):
    """It failed after the model and data were built, in the DataLoader, with a traceback (trust review)."""
    _save(tmp_path / "a.ckpt", tokenizer)
    ckpt = torch.load(tmp_path / "a.ckpt", weights_only=True)
    read_checkpoint(tmp_path / "a.ckpt")
    torch.save({**ckpt, "TokenDataModule": {"position": 8, "step": 2, "samples_per_step": 4}}, tmp_path / "ok.ckpt")
    read_checkpoint(tmp_path / "ok.ckpt")
    torch.save({**ckpt, "TokenDataModule": state}, tmp_path / "b.ckpt")
    with pytest.raises(CheckpointError, match=r"b.ckpt' is damaged or was not written by train.py: its " + said):
        read_checkpoint(tmp_path / "b.ckpt")


def test_a_moved_run_folder_keeps_its_best_checkpoint_tracking(tmp_path, capsys):
    """A run folder moved (or mounted elsewhere) before its resume: Lightning dropped the best-k tracking because
    the saved dirpath differed, so a later, worse score became the 'best' and save_top_k=1 left two best files."""
    from momattn.callbacks import ModelCheckpoint

    old, new = tmp_path / "a" / "checkpoints", tmp_path / "b" / "checkpoints"
    new.mkdir(parents=True)
    for name in ("best-step5.ckpt", "last.ckpt"):
        (new / name).touch()
    state = ModelCheckpoint(dirpath=old, monitor="val/loss", mode="max", filename="best-step{step}").state_dict()
    state.update(best_model_score=torch.tensor(2.0), best_model_path=str(old / "best-step5.ckpt"),
                 best_k_models={str(old / "best-step5.ckpt"): torch.tensor(2.0)}, kth_value=torch.tensor(2.0),
                 kth_best_model_path=str(old / "best-step5.ckpt"), last_model_path=str(old / "last.ckpt"))
    cb = ModelCheckpoint(dirpath=new, monitor="val/loss", mode="max", filename="best-step{step}")
    cb.load_state_dict(state)
    assert cb.best_model_path == str(new / "best-step5.ckpt") and cb.best_model_score == 2.0
    assert list(cb.best_k_models) == [str(new / "best-step5.ckpt")] and cb.kth_value == 2.0
    assert cb.last_model_path == str(new / "last.ckpt")
    # another run's checkpoints (a fork into a new folder): fresh tracking, said once. Lightning's own load kept
    # the source's best_model_path, which a fork that trained nothing reported as its best checkpoint
    (new / "best-step5.ckpt").unlink()
    other = ModelCheckpoint(dirpath=new, monitor="val/loss", mode="max", filename="best-step{step}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Lightning's "dirpath has changed" warning is not shown beside ours
        other.load_state_dict(state)
    assert other.best_k_models == {} and other.best_model_score is None
    assert other.best_model_path == "" and other.last_model_path == ""
    assert f"saved in {old}, not in this run's {new}: best-checkpoint tracking starts afresh" in capsys.readouterr().err


# ---------------------------------------------------------------- what a checkpoint may name (momattn/trust.py)


def test_a_checkpoints_config_may_name_only_momattns_classes(tmp_path, tokenizer, monkeypatch):
    """Found by review: a checkpoint of plain data (weights_only loads it) whose run config's data section named
    os.system ran a shell command in evaluate.py and analyze.py; its recorded command line, repeated by a resume
    from the checkpoint alone, did the same through train.py (also behind a momattn function, make_source)."""
    from momattn import trust
    from momattn.checkpoint import read_meta

    monkeypatch.delenv("MOMATTN_TRUSTED_TARGETS", raising=False)
    monkeypatch.setattr(trust, "_OWN", set())  # (a training config run in this process trusts its own classes)
    ran = tmp_path / "ran"
    own = {"data": {"_target_": "momattn.data.sources.TextFiles", "paths": ["a.txt"]},
           "eval": {"ppl": {"data": {"_target_": "momattn.data.ginc.GincCorpus"}}},
           "callbacks": {"lr": {"_target_": "lightning.pytorch.callbacks.LearningRateMonitor"}}}
    _save(tmp_path / "own.ckpt", tokenizer, overrides=["attention=momentum", "+callbacks.fault._target_="
                                                       "momattn.faults.FaultInjection", "+callbacks.fault.spec=nan@9"])
    for name, config, overrides, says in [
        ("data", {**own, "data": {"_target_": "os.system", "command": f"touch {ran}"}}, [],
         "its run config's data section names _target_=os.system, which is not a class momattn takes from a "
         "checkpoint"),
        ("nested", {"eval": {"ppl": {"data": {"_target_": "subprocess.Popen", "args": "x"}}}}, [],
         "its run config's eval section names _target_=subprocess.Popen"),
        ("override", {}, ["data._target_=os.system"], "its recorded command line (data._target_=os.system) names"),
        ("chain", {}, ["+callbacks.p._target_=momattn.data.sources.make_source",
                       f"+callbacks.p.data={{_target_:os.system,command:'touch {ran}'}}"],
         "names _target_=momattn.data.sources.make_source"),
        ("hydra", {}, ["hydra.job.env_set.LD_PRELOAD=/x.so"], "sets Hydra itself, which train.py never records"),
        # found by a second review: a trusted module's attributes walked to other objects (Hydra's _locate), a
        # function given as a data source, LambdaCallback calling what it is given, a resolver building a target
        # out of a string, a sweep
        ("walk", {}, ["+callbacks.x._target_=lightning.pytorch.callbacks.model_checkpoint.Path"],
         "names _target_=lightning.pytorch.callbacks.model_checkpoint.Path"),
        ("function", {"data": {"_target_": "lightning.pytorch.loggers.csv_logs.save_hparams_to_yaml"}}, [],
         "data section names _target_=lightning.pytorch.loggers.csv_logs.save_hparams_to_yaml"),
        ("lambda", {}, ["+callbacks.x._target_=lightning.pytorch.callbacks.LambdaCallback"],
         "names _target_=lightning.pytorch.callbacks.LambdaCallback"),
        ("callback_as_data", {"data": {"_target_": "momattn.callbacks.ModelCheckpoint"}}, [],
         "data section names _target_=momattn.callbacks.ModelCheckpoint"),
        ("resolver", {}, ["+callbacks.x='${oc.create:{_target_:builtins.open,_args_:[x,w]}}'"],
         "calls the resolver oc.create, which train.py's configs never record"),
        ("sweep", {}, ["+callbacks.x=choice({_target_:builtins.print})"], "is a sweep, which train.py never records"),
    ]:
        path = tmp_path / f"{name}.ckpt"
        _save(path, tokenizer, overrides=overrides)
        ckpt = torch.load(path, weights_only=True)
        ckpt["momattn"]["config"] = config
        torch.save(ckpt, path)
        for read in (read_checkpoint, read_meta, load_checkpoint):
            if name in ("chain", "walk", "lambda"):  # callbacks: a class a reader does not build
                read(path)  # a reader builds no callback (a class of your own there needed a trust list: review)
            else:
                with pytest.raises(CheckpointError, match=re.escape(says)):
                    read(path)
        with pytest.raises(CheckpointError, match=re.escape(says)):  # a resume, which repeats them, refuses
            trust.check_overrides(overrides or [], f"checkpoint '{path}': its recorded command line", repeat=True) \
                if overrides else read_meta(path)
    assert not ran.exists()
    # the run's own classes (momattn's, Lightning's callbacks, a test's fault injection) load as before
    ckpt = torch.load(tmp_path / "own.ckpt", weights_only=True)
    ckpt["momattn"]["config"] = own
    torch.save(ckpt, tmp_path / "own.ckpt")
    assert read_meta(tmp_path / "own.ckpt")["momattn"]["config"] == own
    # a class of your own, allowed by name (exactly, or by a prefix ending with '.')
    ckpt["momattn"]["config"] = {"data": {"_target_": "mypkg.data.MySource"}}
    torch.save(ckpt, tmp_path / "mine.ckpt")
    with pytest.raises(CheckpointError, match=r"your own, allow the class by name: MOMATTN_TRUSTED_TARGETS=<module.Class>$"):
        read_meta(tmp_path / "mine.ckpt")
    for allowed in ("mypkg.data.MySource", "mypkg.", "other.X, mypkg.data."):
        monkeypatch.setenv("MOMATTN_TRUSTED_TARGETS", allowed)
        read_meta(tmp_path / "mine.ckpt")
    monkeypatch.setenv("MOMATTN_TRUSTED_TARGETS", "mypkg.dat")  # a prefix must end with '.': not mypkg.data
    with pytest.raises(CheckpointError):
        read_meta(tmp_path / "mine.ckpt")
    # or named by this process's own training config (train.py reads its run's checkpoints back)
    monkeypatch.delenv("MOMATTN_TRUSTED_TARGETS")
    monkeypatch.delenv(trust.UNTRUSTED_RESUME, raising=False)
    trust.check_resumed_config({"data": {"_target_": "mypkg.data.MySource"}, "trainer": {"_target_": "x.Y"}})
    read_meta(tmp_path / "mine.ckpt")


def test_a_resume_whose_command_line_came_from_its_checkpoint_trusts_only_todays_classes(monkeypatch):
    """A resolver or a nested value of the stored command line could still make a target once composed: the
    composed config of such a resume is checked, and only the classes today's command line names are trusted."""
    from momattn import trust

    monkeypatch.setattr(trust, "_OWN", set())
    monkeypatch.delenv("MOMATTN_TRUSTED_TARGETS", raising=False)
    trust.mark_resume_from_checkpoint(["data._target_=mypkg.Mine", "trainer.max_steps=9"], "x.ckpt")
    try:
        trust.check_resumed_config({"ckpt_path": "x.ckpt", "data": {"_target_": "mypkg.Mine"},
                                    "trainer": {"_target_": "lightning.pytorch.Trainer"}})
        with pytest.raises(CheckpointError, match="the config this resume takes from its checkpoint names "
                                                  "_target_=builtins.open"):
            trust.check_resumed_config({"ckpt_path": "x.ckpt", "callbacks": {"x": {"_target_": "builtins.open"}}})
        assert "builtins.open" not in trust._OWN and "mypkg.Mine" in trust._OWN
        # another command's config in this process (a test's run after a resume): its own, as ever
        trust.check_resumed_config({"ckpt_path": None, "data": {"_target_": "mypkg.Other"}})
        assert "mypkg.Other" in trust._OWN
    finally:
        os.environ.pop(trust.UNTRUSTED_RESUME, None)


def test_a_stored_model_checkpoint_state_keeps_only_files_of_its_own_folder(tmp_path):
    """Lightning deletes an old last or top-k file when it saves a new one: a crafted state naming
    local:///<folder> (with no dirpath, which Lightning takes as the current one) removed that folder on resume."""
    from momattn.trust import clean_checkpoint_paths

    run = tmp_path / "run" / "checkpoints"
    ckpt = {"callbacks": {
        "ModelCheckpoint{'a'}": {"last_model_path": f"local://{tmp_path / 'victim'}", "best_k_models": {
            str(tmp_path / "victim"): 1.0}, "best_model_path": str(tmp_path / "victim")},
        "ModelCheckpoint{'b'}": {"dirpath": str(run), "last_model_path": str(run / "last.ckpt"),
                                 "best_model_path": str(run / ".." / ".." / "victim"),
                                 "best_k_models": {str(run / "best-step4.ckpt"): 2.0, f"file://{run}/x.ckpt": 1.0}},
        "Timer": {"time_elapsed": {"train": 3.0}}}}
    clean_checkpoint_paths(ckpt)
    a, b = ckpt["callbacks"]["ModelCheckpoint{'a'}"], ckpt["callbacks"]["ModelCheckpoint{'b'}"]
    assert a["dirpath"] == "<not recorded>" and a["last_model_path"] == a["best_model_path"] == "" \
        and a["best_k_models"] == {}
    assert b["last_model_path"] == str(run / "last.ckpt") and b["best_model_path"] == ""  # '..' out of it
    assert b["best_k_models"] == {str(run / "best-step4.ckpt"): 2.0}
    assert ckpt["callbacks"]["Timer"] == {"time_elapsed": {"train": 3.0}}


def test_the_resume_reads_a_checkpoint_with_its_stored_paths_cleaned(tmp_path, tokenizer):
    _save(tmp_path / "x.ckpt", tokenizer)
    ckpt = torch.load(tmp_path / "x.ckpt", weights_only=True)
    ckpt["callbacks"] = {"ModelCheckpoint{}": {"last_model_path": f"local://{tmp_path}"}}
    torch.save(ckpt, tmp_path / "x.ckpt")
    state = AtomicCheckpointIO().load_checkpoint(tmp_path / "x.ckpt")["callbacks"]["ModelCheckpoint{}"]
    assert state == {"last_model_path": "", "dirpath": "<not recorded>"}


def test_a_data_source_must_be_a_class():
    from momattn.data.sources import make_source
    from momattn.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data._target_=momattn.data.sources.make_source is not a class"):
        make_source({"_target_": "momattn.data.sources.make_source", "data": {}})
    # a class that is no data source is not called (subprocess.Popen ran before failing; found by review)
    for target in ("subprocess.Popen", "collections.OrderedDict"):
        with pytest.raises(ConfigError, match=rf"data._target_={target} is not a data source: a source has"):
            make_source({"_target_": target, "args": ["touch", "x"]})


def test_a_resume_from_a_checkpoint_alone_refuses_its_foreign_command_line(tmp_path, tokenizer):
    _save(tmp_path / "x.ckpt", tokenizer, overrides=["debug=smoke", "data._target_=os.system",
                                                     f"+data.command='touch {tmp_path / 'ran'}'"])
    r = run_cli("train.py", [f"ckpt_path={tmp_path / 'x.ckpt'}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "its recorded command line (data._target_=os.system) names _target_=os.system" in r.stderr
    assert not (tmp_path / "ran").exists()


def test_a_resume_repeats_no_foreign_class_or_folder_from_a_run_folder_or_a_checkpoint(tmp_path, tokenizer,
                                                                                          monkeypatch, capsys):
    """Found by review: a run folder's .hydra/overrides.yaml was trusted, so a downloaded folder resumed by its
    checkpoint ran any class (a data source is called by momattn, past Hydra's blocklist); a checkpoint's recorded
    paths.output_dir and ModelCheckpoint dirpath wrote the run elsewhere and deleted a file there as an old top-k
    checkpoint; a recorded fault injection under another key killed every resume."""
    from momattn import trust
    from momattn.cli import resume_overrides

    monkeypatch.delenv("MOMATTN_TRUSTED_TARGETS", raising=False)
    monkeypatch.setattr(trust, "_OWN", set())
    run = tmp_path / "dl"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    _save(run / "checkpoints" / "last.ckpt", tokenizer)
    (run / ".hydra" / "overrides.yaml").write_text("- debug=smoke\n- data._target_=subprocess.Popen\n"
                                                   f"- +data.args=[touch,{tmp_path / 'ran'}]\n")
    r = run_cli("train.py", [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "trainer.max_steps=7"], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert (f"error: {run}/.hydra/overrides.yaml, the run folder's saved command line, (data._target_="
            "subprocess.Popen) names _target_=subprocess.Popen") in r.stderr
    assert not (tmp_path / "ran").exists()
    last = str(run / "checkpoints" / "last.ckpt")
    for line, key in (("paths.output_dir=/tmp/elsewhere", "paths.output_dir"),
                      ("+callbacks.x.dirpath=/tmp/elsewhere", "callbacks.x.dirpath"),
                      ("+callbacks.x={_target_:lightning.pytorch.callbacks.ModelCheckpoint,dirpath:/x}", "callbacks.x"),
                      ("+logger.w.save_dir=/tmp/elsewhere", "logger.w.save_dir")):
        (run / ".hydra" / "overrides.yaml").write_text(f"- '{line}'\n")
        with pytest.raises(CheckpointError, match=rf"chooses a folder to write into, .* give {re.escape(key)}=\.\.\. "
                                                  "again on today's command line"):
            resume_overrides([f"ckpt_path={last}"])
        given = line.split("=", 1)[0] + "=/tmp/mine" if "{" not in line else line
        assert given in resume_overrides([f"ckpt_path={last}", given])  # given today: the user's own
    (run / ".hydra" / "overrides.yaml").write_text("- logger.csv.save_dir=${paths.output_dir}/logs\n")
    assert resume_overrides([f"ckpt_path={last}"])[0] == "logger.csv.save_dir=${paths.output_dir}/logs"
    (run / ".hydra" / "overrides.yaml").write_text("- +callbacks.f2._target_=momattn.faults.FaultInjection\n"
                                                   "- +callbacks.f2.spec=kill@7\n")
    assert not any("f2" in o for o in resume_overrides([f"ckpt_path={last}"]))  # left out, as callbacks.fault is
    # found by the second review: positional arguments (ModelCheckpoint's first is its dirpath), '..' made of a
    # resolver, links out of the folder that a resume writes through; paths=default is a shipped option, not a path
    for line, says in (
            ("+callbacks.y={_target_:momattn.callbacks.ModelCheckpoint,_args_:[/tmp/elsewhere]}", "positional"),
            ("data.cache_dir=${paths.output_dir}/.${now:.}/.${now:.}/x", "chooses a folder to write into")):
        (run / ".hydra" / "overrides.yaml").write_text(f"- '{line}'\n")
        with pytest.raises(CheckpointError, match=says):
            resume_overrides([f"ckpt_path={last}"])
    (run / ".hydra" / "overrides.yaml").write_text("- paths=default\n")
    assert resume_overrides([f"ckpt_path={last}"])[0] == "paths=default"
    # a run started with ~eval.icl (accepted before session 57, refused now with eval.icl.enabled=false advised):
    # the advice given today drops the saved deletion, which the refusal met again (diff review)
    (run / ".hydra" / "overrides.yaml").write_text("- debug=smoke\n- ~eval.icl\n")
    assert "~eval.icl" in resume_overrides([f"ckpt_path={last}"])
    capsys.readouterr()
    assert "~eval.icl" not in resume_overrides([f"ckpt_path={last}", "eval.icl.enabled=false"])
    assert "; not carried over, as keys below it are set now: ~eval.icl" in capsys.readouterr().err  # (said)
    assert "~eval.icl" in resume_overrides([f"ckpt_path={last}", "~eval.icl.task_dirs"])  # a deletion sets nothing
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    (run / "csv").mkdir()
    (run / "csv" / "hparams.yaml").symlink_to(victim)
    with pytest.raises(CheckpointError, match=rf"holds a symbolic link, .*hparams.yaml -> {victim}: a resume writes "
                                              "through it .* set MOMATTN_TRUST_LINKS=1"):
        resume_overrides([f"ckpt_path={last}"])
    monkeypatch.setenv("MOMATTN_TRUST_LINKS", "1")  # the user's own links
    resume_overrides([f"ckpt_path={last}"])
    monkeypatch.delenv("MOMATTN_TRUST_LINKS")
    (run / "csv" / "hparams.yaml").unlink()
    (run / "checkpoints" / "best-step3.ckpt").write_bytes(b"x")
    (run / "checkpoints" / "latest.ckpt").symlink_to("best-step3.ckpt")  # inside the folder (save_last=link): fine
    resume_overrides([f"ckpt_path={last}"])
    # found by the third review: an environment variable read by a recorded value (sent out in a data URL), a
    # logger's name leading out of its save_dir, a link loop (a traceback); the run's own resume command repeats
    # what a resume does not take from its saved line
    from momattn.trust import unrepeated

    for line, says in (("data.name=${oc.env:HOME}", "reads an environment variable"),
                       ("+logger.tb={_target_:lightning.pytorch.loggers.TensorBoardLogger,save_dir:'${paths.output_dir}',"
                        "name:../../elsewhere}", "chooses a folder to write into")):
        (run / ".hydra" / "overrides.yaml").write_text(f"- \"{line}\"\n")
        with pytest.raises(CheckpointError, match=says):
            resume_overrides([f"ckpt_path={last}"])
    (run / ".hydra" / "overrides.yaml").write_text("- seed=3\n")
    assert unrepeated(["seed=3", "paths.cache_dir=/scratch/c", "data.name=${oc.env:X}", "hydra.run.dir=r",
                       "+callbacks.fault.spec=kill@3"]) == ["paths.cache_dir=/scratch/c", "data.name=${oc.env:X}"]
    from momattn.cli import HydraJob, go_on

    assert go_on(HydraJob(["paths.cache_dir=/scratch/c", "seed=3"]), run) == (
        f"Resume with: python train.py ckpt_path=last hydra.run.dir={run} paths.cache_dir=/scratch/c")
    # a class of the run's own is given again too, though this process (the run's) trusts it (flows review)
    trust.allow_own(["mymod.Cb"])
    assert unrepeated(["+callbacks.mine._target_=mymod.Cb", "seed=3"]) == ["+callbacks.mine._target_=mymod.Cb"]
    assert "finish it as a single run: python train.py ckpt_path=last hydra.run.dir=" in go_on(
        HydraJob(["paths.cache_dir=/scratch/c"], sweep_dir="s", num=0, search=True), run)
    assert go_on(HydraJob(["paths.cache_dir=/scratch/c"], sweep_dir="s", num=0, search=True), run).count(
        "paths.cache_dir=/scratch/c") == 1
    linked = tmp_path / "linked"  # the run's own checkpoints/ on another disk: its printed command says so
    (tmp_path / "disk").mkdir()
    linked.mkdir()
    (linked / "checkpoints").symlink_to(tmp_path / "disk")
    assert go_on(HydraJob([]), linked) == (f"Resume with: MOMATTN_TRUST_LINKS=1 python train.py ckpt_path=last "
                                           f"hydra.run.dir={linked}")
    # found by the DDP review: the full-disk, Ctrl-C and late-SIGTERM commands said no MOMATTN_TRUST_LINKS=1, nor
    # one set for this command alone; a class MOMATTN_TRUSTED_TARGETS named for this command was not given again;
    # a fault injected under another key than callbacks.fault was refused by the resume, with the advice to trust it
    import errno

    from momattn.training import _disk_full, _interrupt_hint

    monkeypatch.setenv("MOMATTN_TRUST_LINKS", "1")
    assert "MOMATTN_TRUST_LINKS=1 python train.py" in go_on(HydraJob([]), linked)
    assert "resume with: MOMATTN_TRUST_LINKS=1 python train.py ckpt_path=last" in _disk_full(
        OSError(errno.ENOSPC, "No space left on device"), linked, HydraJob([]))
    (tmp_path / "disk" / "best-step3.ckpt").write_bytes(b"x")
    assert "Resume from it with: MOMATTN_TRUST_LINKS=1 python train.py ckpt_path=" in _interrupt_hint(linked,
                                                                                                    HydraJob([]))
    monkeypatch.delenv("MOMATTN_TRUST_LINKS")
    monkeypatch.setenv("MOMATTN_TRUSTED_TARGETS", "mypkg.Cb")
    assert unrepeated(["+callbacks.my._target_=mypkg.Cb", "seed=3"]) == ["+callbacks.my._target_=mypkg.Cb"]
    monkeypatch.delenv("MOMATTN_TRUSTED_TARGETS")
    inj = ["+callbacks.inj._target_=momattn.faults.FaultInjection", "+callbacks.inj.spec=kill@4",
           "+callbacks.inj.rank=1", "+callbacks.injx.a=1", "seed=3"]
    assert unrepeated(inj) == []
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in inj))
    assert resume_overrides([f"ckpt_path={last}"])[:2] == ["+callbacks.injx.a=1", "seed=3"]
    # W&B's own links out of its folder (offline-run-*/logs/debug-core.log -> ~/.cache/wandb/...), which it does not
    # write through on a resume: passed over (a W&B run's resume was refused); a wandb/ that is itself a link is not
    (run / "wandb" / "offline-run-1-x" / "logs").mkdir(parents=True)
    (run / "wandb" / "offline-run-1-x" / "logs" / "debug-core.log").symlink_to(victim)
    resume_overrides([f"ckpt_path={last}"])
    (run / "wandb").rename(tmp_path / "wandb-elsewhere")
    (run / "wandb").symlink_to(tmp_path / "wandb-elsewhere")
    with pytest.raises(CheckpointError, match=r"holds a symbolic link, .*/wandb -> "):
        resume_overrides([f"ckpt_path={last}"])
    (run / "wandb").unlink()
    (run / "logs" / "wandb" / "offline-run-2-x" / "logs").mkdir(parents=True)  # W&B under a save_dir in the run
    (run / "logs" / "wandb" / "offline-run-2-x" / "logs" / "debug-core.log").symlink_to(victim)
    resume_overrides([f"ckpt_path={last}"])
    (run / "loopy").symlink_to("loopy")  # a loop leads nowhere to write: passed over (it was a traceback)
    resume_overrides([f"ckpt_path={last}"])
    sweep = tmp_path / "sweep"  # a sweep's resume: its jobs write into their folders in it (it was not checked)
    (sweep / "1" / "wandb" / "offline-run-3-x" / "logs").mkdir(parents=True)  # a job's W&B run: passed over
    (sweep / "1" / "wandb" / "offline-run-3-x" / "logs" / "debug-core.log").symlink_to(victim)
    resume_overrides(["ckpt_path=last", f"hydra.sweep.dir={sweep}"], multirun=True)
    (sweep / "0" / "csv").mkdir(parents=True)
    (sweep / "0" / "csv" / "hparams.yaml").symlink_to(victim)
    with pytest.raises(CheckpointError, match=r"holds a symbolic link, .*0/csv/hparams.yaml -> "):
        resume_overrides(["ckpt_path=last", f"hydra.sweep.dir={sweep}"], multirun=True)
    # a tokenizer whose pre-tokenizer runs away (a Rust panic, which Python's `except Exception` misses: a traceback)
    from tokenizers import Regex, pre_tokenizers

    from momattn.errors import DataError
    from momattn.tokenizer import Tokenizer

    hf = tokenizer.hf.__class__.from_str(tokenizer.hf.to_str())
    hf.pre_tokenizer = pre_tokenizers.Split(Regex("(a|a?)+$"), "isolated")
    with pytest.raises(DataError, match=r"failed on the text .* the tokenizer itself is broken"):
        Tokenizer(hf, "crafted").encode("a" * 50000 + "b")


def test_a_downloaded_run_folder_runs_no_code_and_reads_no_secret_before_its_check(tmp_path, tokenizer, monkeypatch,
                                                                                    capsys):
    """Found by session 55's review: a recorded hydra.searchpath=[pkg://x] was composed (importing x) before the
    check that refused it, where today's command switches a group; a resolver named by an interpolation
    (${oc.${tags.0}:SECRET}) passed the resolver list; a checkpoint's stored config was resolved by the tools that
    build from it (${oc.env:...} in a data URL); a recorded escape sequence reached the terminal raw."""
    import sys

    from momattn import trust
    from momattn.cli import resume_overrides

    marker = tmp_path / "ran"
    (tmp_path / "pwn").mkdir()
    (tmp_path / "pwn" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "dl"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    last = run / "checkpoints" / "last.ckpt"
    _save(last, tokenizer)
    (run / ".hydra" / "overrides.yaml").write_text("- trainer.devices=1\n- hydra.searchpath=[pkg://pwn]\n")
    with pytest.raises(CheckpointError, match=r"\(hydra.searchpath=\[pkg://pwn\]\) sets Hydra itself, which train.py "
                                              r"never records; that file was not written by train.py"):  # not "the
        # checkpoint": the run folder's file is at fault (found by review)
        resume_overrides([f"ckpt_path={last}", "trainer=cpu"])  # (trainer=cpu: composed with what it keeps)
    assert not marker.exists() and "pwn" not in sys.modules
    # a class of the run's own, given again today (as the printed resume command gives it): resumed, as before
    # (the whole line's early check refused it: flows review)
    monkeypatch.setattr(trust, "_OWN", set())
    monkeypatch.delenv("MOMATTN_TRUSTED_TARGETS", raising=False)
    (run / ".hydra" / "overrides.yaml").write_text("- +callbacks.mine._target_=mymod.Cb\n- trainer.devices=1\n")
    mine = "+callbacks.mine._target_=mymod.Cb"
    assert mine in resume_overrides([f"ckpt_path={last}", mine, "trainer=cpu"])
    with pytest.raises(CheckpointError, match="names _target_=mymod.Cb"):  # not given today: refused, as before
        resume_overrides([f"ckpt_path={last}"])
    for line in ("tags=[env,'${oc.${tags.0}:SECRET}']", "data.name='${oc.${x}:y}'", "data.name='${ ${x} }'"):
        (run / ".hydra" / "overrides.yaml").write_text(f"- \"{line}\"\n")
        with pytest.raises(CheckpointError, match=r"calls the resolver named by an interpolation"):
            resume_overrides([f"ckpt_path={last}"])
    (run / ".hydra" / "overrides.yaml").write_text("- tags=[x,'${tags.0}']\n")  # a plain reference reads only
    assert resume_overrides([f"ckpt_path={last}"])[0] == "tags=[x,'${tags.0}']"
    # an escape sequence (erase the line, set the clipboard) is printed escaped, in the line and in an error
    (run / ".hydra" / "overrides.yaml").write_text("- \"tags=['\\e[2K\\e]52;c;cm0K\\aok']\"\n")
    capsys.readouterr()
    resume_overrides([f"ckpt_path={last}"])
    err = capsys.readouterr().err
    assert "tags=['\\x1b[2K\\x1b]52;c;cm0K\\x07ok']" in err and "\x1b" not in err and "\x07" not in err
    (run / ".hydra" / "overrides.yaml").write_text("- \"hydra.x=\\e[2K\"\n")
    with pytest.raises(CheckpointError) as refused:
        resume_overrides([f"ckpt_path={last}"])
    assert "(hydra.x=\\x1b[2K)" in str(refused.value) and "\x1b" not in str(refused.value)
    # a stored config holds no interpolation: evaluate.py resolved it (a data URL read $SECRET and was fetched)
    ckpt = torch.load(last, weights_only=True)
    ckpt["momattn"]["config"] = {"data": {"_target_": "momattn.data.sources.TextFiles",
                                          "paths": ["https://x.example/${oc.env:SECRET}/a.txt"]}}
    torch.save(ckpt, tmp_path / "env.ckpt")
    with pytest.raises(CheckpointError, match=r"its run config's data.paths.0 is 'https://x.example/\$\{oc.env:SECRET"
                                              r"\}/a.txt', an interpolation .* not written by train.py"):
        read_checkpoint(tmp_path / "env.ckpt")


def test_a_checkpoints_tokenizer_is_measured_on_each_probe_it_can_encode(tokenizer, monkeypatch):
    """Found by session 55's review: a crafted tokenizer that failed on the probe alone (a pattern that panics on
    its CJK characters) was accepted unmeasured and then multiplied the corpus; a pattern that backtracks for
    seconds on 288 characters passed (hours per megabyte). Tokenizer.encode refuses a multiplied text too."""
    import json

    from momattn import checkpoint
    from momattn.errors import DataError
    from momattn.tokenizer import Tokenizer

    crafted = json.loads(tokenizer.to_json())
    crafted["normalizer"] = {"type": "Replace", "pattern": {"String": " "}, "content": "x" * 2000}
    crafted["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\u65e5((.|\\n)*)*\\d{11}"}, "behavior": "Isolated", "invert": False},
        crafted["pre_tokenizer"]]}
    with pytest.raises(CheckpointError, match=r"its tokenizer turns \d+ characters of plain text into [\d,]+ tokens"):
        checkpoint.checkpoint_tokenizer({"tokenizer": json.dumps(crafted)}, "c.ckpt")
    with pytest.raises(DataError, match=r"^tokenizer 'x' turns a text of 9 characters into [\d,]+ tokens .* crafted"):
        Tokenizer.from_json(json.dumps({**crafted, "pre_tokenizer": None}), name="x").encode("a b c d e")
    monkeypatch.setattr(checkpoint, "PROBE_S", 0.0)  # (a pattern that takes seconds: every encode is too slow here)
    with pytest.raises(CheckpointError, match=r"its tokenizer takes [\d.]+ s to encode \d+ characters .* crafted or "
                                              "damaged"):
        checkpoint.checkpoint_tokenizer({"tokenizer": tokenizer.to_json()}, "own.ckpt")
    # its CPU time is measured, not the wall clock's: a stall of the machine (a paused VM) is not the tokenizer's
    # (one refused a sound checkpoint as crafted: flows review)
    import time

    class Stalls:  # the library's encode after 0.6 s of the machine's stall (a sleep: no CPU time)
        def __init__(self, hf):
            self.real = hf

        def encode(self, text, add_special_tokens=False):
            time.sleep(0.6)
            return self.real.encode(text, add_special_tokens=add_special_tokens)

    def stalled(s, name="tokenizer"):
        tok = Tokenizer.from_json(s, name)
        tok.hf = Stalls(tok.hf)
        return tok

    monkeypatch.setattr(checkpoint, "PROBE_S", 0.5)
    monkeypatch.setattr(checkpoint, "Tokenizer", type("T", (), {"from_json": staticmethod(stalled)}))
    assert checkpoint.checkpoint_tokenizer({"tokenizer": tokenizer.to_json()}, "own.ckpt").hf.real is not None


def test_a_reordered_sweep_of_fsdp_runs_is_refused_before_any_job_starts(tmp_path, monkeypatch):
    # FSDP's last.ckpt is a folder: the check looked for a file, skipped it, and each job then refused itself inside
    # Hydra's launcher (exit 1) after Hydra had rewritten job 0's .hydra/ with seed 2's values (found by review)
    from momattn import cli
    from momattn.sweep_jobs import Sweep, check_resume

    for num in (0, 1):  # job N trained with seed N + 1
        (tmp_path / "sw" / str(num) / "checkpoints" / "last.ckpt").mkdir(parents=True)  # a sharded folder
    monkeypatch.setattr(cli, "_checkpoint_overrides", lambda ckpt: [f"seed={int(Path(ckpt).parents[1].name) + 1}"])
    with pytest.raises(ConfigError, match=r"job 0 would resume .*sw/0/checkpoints/last.ckpt, trained with seed=1"):
        check_resume(Sweep([["seed=2"], ["seed=1"]], "sw", "${hydra.job.num}"), cwd=tmp_path)
    check_resume(Sweep([["seed=1"], ["seed=2"]], "sw", "${hydra.job.num}"), cwd=tmp_path)  # in its order: resumes


def test_a_tokenizer_that_multiplies_text_is_refused_before_it_reads_a_corpus(tokenizer):
    """A normalizer replacing ' ' by 100,000 characters turned 400 characters of a corpus into 3 GB of ids (found by
    review): a checkpoint's tokenizer is measured on a probe text first."""
    import json

    from momattn.checkpoint import checkpoint_tokenizer

    assert checkpoint_tokenizer({"tokenizer": tokenizer.to_json()}, "own.ckpt").vocab_size == tokenizer.vocab_size
    crafted = json.loads(tokenizer.to_json())
    crafted["normalizer"] = {"type": "Replace", "pattern": {"String": " "}, "content": "x" * 20000}
    with pytest.raises(CheckpointError, match=r"^checkpoint 'c.ckpt': its tokenizer turns \d+ characters of plain "
                                              r"text into [\d,]+ tokens .* it is crafted or damaged"):
        checkpoint_tokenizer({"tokenizer": json.dumps(crafted)}, "c.ckpt")


def test_a_checkpoint_a_kill_left_aside_between_two_renames_is_restored(tmp_path):
    """swap_into renames the checkpoint to .X.old, then the new one (.X.tmp, FSDP's folder, or .X.new) to X: a kill
    in between hid the newest checkpoint, and ckpt_path=last offered older best files only (found by review)."""
    from momattn.checkpoint import newest_checkpoint
    from momattn.io import recover_swaps

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / ".last.ckpt.old").write_text("old")  # a file checkpoint: the new one complete beside it
    (ckpts / ".last.ckpt.new").write_text("new")
    for folder, done in ((".best.ckpt.tmp", True), (".other.ckpt.tmp", False)):  # FSDP folders: one written whole
        (ckpts / folder).mkdir()
        (ckpts / folder / "__0_0.distcp").write_text("shard")
        if done:
            (ckpts / folder / ".metadata").write_text("index")
        (ckpts / (folder[:-len(".tmp")] + ".old")).mkdir()
        (ckpts / (folder[:-len(".tmp")] + ".old") / ".metadata").write_text("old index")
    (ckpts / "kept.ckpt").write_text("done")  # a swap that was done: its .old is left for the next one
    (ckpts / ".kept.ckpt.old").write_text("older")
    restored = {p.name: s.name for p, s in recover_swaps(ckpts)}
    assert restored == {"last.ckpt": ".last.ckpt.new", "best.ckpt": ".best.ckpt.tmp", "other.ckpt": ".other.ckpt.old"}
    assert (ckpts / "last.ckpt").read_text() == "new" and (ckpts / "best.ckpt" / ".metadata").read_text() == "index"
    assert (ckpts / "other.ckpt" / ".metadata").read_text() == "old index"  # the partial new one is not taken
    assert not (ckpts / ".last.ckpt.old").exists() and (ckpts / "kept.ckpt").read_text() == "done"
    assert recover_swaps(ckpts) == []
    # a stop's message names the best files a run without last.ckpt holds (it said nothing was written)
    (ckpts / "last.ckpt").unlink()
    assert newest_checkpoint(tmp_path) == f"no last.ckpt, but {ckpts} holds best.ckpt, kept.ckpt, other.ckpt"


def test_a_checkpoint_another_process_restored_first_is_left_to_it(tmp_path, monkeypatch):
    # without a lock (no flock), another rank can restore it between this one's look and its rename: that rank's
    # file stands, not a FileNotFoundError traceback (second diff review)
    import contextlib

    import momattn.io
    from momattn.io import recover_swaps

    (tmp_path / ".last.ckpt.old").write_text("old")
    (tmp_path / ".last.ckpt.new").write_text("new")
    monkeypatch.setattr(momattn.io, "file_lock", lambda *a, **k: contextlib.nullcontext(False))
    real = Path.rename

    def another_first(self, target):
        real(self, target)  # the other process's rename
        raise FileNotFoundError(2, "No such file or directory", str(self))

    monkeypatch.setattr(Path, "rename", another_first)
    assert recover_swaps(tmp_path) == []
    monkeypatch.setattr(Path, "rename", real)
    assert (tmp_path / "last.ckpt").read_text() == "new"


def test_a_checkpoint_left_aside_is_seen_by_the_checks_before_the_run(tmp_path):
    # `ckpt_path=last` alone resumed an older run instead, and a fresh run went on into the folder (Hydra rewrote its
    # saved command line before the run refused): the flows review
    import os
    import time

    from momattn.checkpoint import newest_last_checkpoint
    from momattn.cli import check_fresh_folder

    older, newer = tmp_path / "outputs" / "b", tmp_path / "outputs" / "c"
    for run in (older, newer):
        (run / "checkpoints").mkdir(parents=True)
    (older / "checkpoints" / "last.ckpt").write_text("b")
    (newer / "checkpoints" / ".last.ckpt.old").write_text("c")
    t = time.time()
    os.utime(older / "checkpoints" / "last.ckpt", (t - 60, t - 60))
    assert newest_last_checkpoint(tmp_path) == newer / "checkpoints" / "last.ckpt"
    (newer / "checkpoints" / "last.ckpt").rename(newer / "checkpoints" / ".last.ckpt.old")
    with pytest.raises(ConfigError, match="holds a run already"):
        check_fresh_folder([f"hydra.run.dir={newer}"], multirun=False, cwd=tmp_path)
    # a folder a live run holds is left to it (it may be between its own two renames), and one that cannot be
    # written is said, not a traceback (third diff review)
    from momattn.io import lock_folder, restore_left_aside

    (newer / "checkpoints" / "last.ckpt").rename(newer / "checkpoints" / ".last.ckpt.old")
    fd, _ = lock_folder(newer)
    try:
        restore_left_aside(newer / "checkpoints", unless_held=True)
        assert not (newer / "checkpoints" / "last.ckpt").exists()
    finally:
        os.close(fd)
    (newer / "checkpoints").chmod(0o555)
    try:
        if os.access(newer / "checkpoints", os.W_OK):  # root with CAP_DAC_OVERRIDE: nothing is read-only
            return
        restore_left_aside(newer / "checkpoints")
    finally:
        (newer / "checkpoints").chmod(0o755)


def test_a_runs_own_last_ckpt_that_is_a_link_is_its_own_checkpoint(tmp_path):
    """MOMATTN_TRUST_LINKS=1 with last.ckpt itself a link elsewhere: the run's own ckpt_path=last was refused as
    another run's checkpoint, with that same command as the fix (the file's link was followed; trust review)."""
    from momattn.cli import same_run

    run, elsewhere = tmp_path / "run", tmp_path / "disk"
    (run / "checkpoints").mkdir(parents=True)
    elsewhere.mkdir()
    (elsewhere / "real.ckpt").write_bytes(b"x")
    (run / "checkpoints" / "last.ckpt").symlink_to(elsewhere / "real.ckpt")
    assert same_run(run / "checkpoints" / "last.ckpt", run)
    assert same_run("run/checkpoints/last.ckpt", Path("run"), cwd=tmp_path)
    assert not same_run(elsewhere / "real.ckpt", run)  # the file it links to, named itself: another folder's
    (tmp_path / "linked").symlink_to(run / "checkpoints")  # a linked folder still resolves to the run's own
    assert same_run(tmp_path / "linked" / "last.ckpt", run)
    (tmp_path / "latest.ckpt").symlink_to(run / "checkpoints" / "last.ckpt")  # a link elsewhere to the run's own
    assert same_run(tmp_path / "latest.ckpt", run)
    # step files a checkpoint callback keeps in another folder of the run (${paths.output_dir}/steps, as
    # ModelCheckpoint's advice has it) are its own; a run folder inside it (a sweep's job) is another run's (review)
    # which it wrote: another run's checkpoint copied into a folder of it is not (it trained on there: diff review)
    from test_generate import tiny_checkpoint

    from momattn.io import atomic_torch_save

    base = torch.load(tiny_checkpoint(tmp_path / "base.ckpt"), weights_only=False)

    def written(path: Path, by: Path) -> Path:
        atomic_torch_save({**base, "momattn": {**base["momattn"], "config": {"paths": {"output_dir": str(by)}}}}, path)
        return path

    for folder, own in (("steps", True), ("a/b", True), ("job/checkpoints", False), ("job/steps", False)):
        (run / folder).mkdir(parents=True)
        assert same_run(written(run / folder / "step2.ckpt", run), run) == own, folder
    assert not same_run(written(run / "steps" / "theirs.ckpt", tmp_path / "theirs"), run)
    # and without hydra.run.dir the step file resumes its run (the refusal's advice forked it: flows review)
    from momattn.cli import run_folder_of

    assert run_folder_of(str(run / "steps" / "step2.ckpt"), None, tmp_path) == run.resolve()
    assert run_folder_of(str(run / "steps" / "theirs.ckpt"), None, tmp_path) is None
    assert not same_run(run / "steps" / "gone.ckpt", run)
    assert not same_run(written(tmp_path / "step2.ckpt", run), run)


def test_a_resume_from_an_unreadable_checkpoint_is_refused_before_any_note_on_settings(tmp_path):
    """Read as 'no recorded command line', it was refused after start-up notes on the defaults that the
    checkpoint's own settings would have replaced (trust review)."""
    (tmp_path / "bad.ckpt").write_bytes(b"PK\x03\x04 cut short")
    r = run_cli("train.py", ["ckpt_path=bad.ckpt", f"hydra.run.dir={tmp_path / 'r'}", "trainer.max_steps=7"], tmp_path)
    assert r.returncode == 2 and "bad.ckpt' cannot be read" in r.stderr, r.stderr[-2000:]
    assert "warning" not in r.stderr and "logged every" not in r.stderr, r.stderr[-2000:]
