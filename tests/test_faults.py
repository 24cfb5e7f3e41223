"""Faults: SIGTERM, SIGKILL (also mid-checkpoint), exact resume, non-finite loss, W&B unreachable, token cache races."""

from __future__ import annotations

import csv
import multiprocessing as mp
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMOKE, run_cli

from momattn.data.corpus import load_tokens
from momattn.tokenizer import train_bpe

# dropout on, so that resuming must restore the RNG too; checkpoints every 3 steps
RUN = [*SMOKE, "attention=momentum", "model.dropout=0.1", "trainer.max_steps=9", "trainer.val_check_interval=3",
       "logger=csv"]


def losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def step_of(ckpt: Path) -> int:
    return torch.load(ckpt, weights_only=False)["global_step"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, float]:
    d = tmp_path_factory.mktemp("uninterrupted")
    r = run_cli("train.py", [*RUN, f"hydra.run.dir={d}"], d)
    assert r.returncode == 0, r.stderr[-3000:]
    return losses(d)


@pytest.mark.slow
def test_sigterm_writes_checkpoint_exits_cleanly_and_resume_is_exact(reference, tmp_path):
    r = run_cli("train.py", [*RUN, f"hydra.run.dir={tmp_path}"], tmp_path, env={"MOMATTN_FAULT": "sigterm@4"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    resume_cmd = re.search(r"Resume with: python train.py (.*)", r.stderr).group(1)
    assert step_of(tmp_path / "checkpoints" / "last.ckpt") == 4
    assert f"hydra.run.dir={tmp_path}" in resume_cmd
    # resume as the message says (ckpt_path=last finds the run folder's last.ckpt)
    r2 = run_cli("train.py", [*RUN, "ckpt_path=last", f"hydra.run.dir={tmp_path}"], tmp_path)
    assert r2.returncode == 0, r2.stderr[-3000:]
    resumed = losses(tmp_path)
    assert sorted(s for s in resumed if s >= 4) == list(range(4, 9))
    for step in range(4, 9):  # the resumed trajectory is the uninterrupted one
        assert resumed[step] == pytest.approx(reference[step], rel=1e-6, abs=1e-6), step


@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(reference, tmp_path):
    r = run_cli("train.py", [*RUN, f"hydra.run.dir={tmp_path}"], tmp_path, env={"MOMATTN_FAULT": "kill_during_save@6"})
    assert r.returncode == -9  # killed half-way through writing the step-6 checkpoint
    assert list((tmp_path / "checkpoints").glob(".*.tmp*")), "the fault should have left a half-written temp file"
    assert step_of(tmp_path / "checkpoints" / "last.ckpt") == 3  # the last complete checkpoint is intact
    r2 = run_cli("train.py", [*RUN, "ckpt_path=last", f"hydra.run.dir={tmp_path}"], tmp_path)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert step_of(tmp_path / "checkpoints" / "last.ckpt") == 9
    resumed = losses(tmp_path)
    for step in range(3, 9):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-6, abs=1e-6), step


@pytest.mark.slow
def test_nonfinite_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path):
    r = run_cli("train.py", [*RUN, f"hydra.run.dir={tmp_path}"], tmp_path, env={"MOMATTN_FAULT": "nan@4"})
    assert r.returncode == 2
    assert "loss became nan at step 4" in r.stderr and "Traceback" not in r.stderr
    assert step_of(tmp_path / "checkpoints" / "last.ckpt") == 3


@pytest.mark.slow
def test_nonfinite_loss_can_be_skipped(tmp_path):
    r = run_cli("train.py", [*RUN, "optim.on_nonfinite=skip", f"hydra.run.dir={tmp_path}"], tmp_path,
                env={"MOMATTN_FAULT": "nan@4"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "non-finite loss" in r.stdout + r.stderr
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 9  # training went on to the end
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())  # the NaN batch left no trace


@pytest.mark.slow
def test_wandb_unreachable_in_online_mode_falls_back_to_offline(tmp_path):
    env = {"WANDB_MODE": "online", "WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9",
           "WANDB_INIT_TIMEOUT": "10"}
    r = run_cli("train.py", [*SMOKE, "logger=wandb", "logger.wandb.offline=false", "logger.wandb.init_timeout=10",
                             f"hydra.run.dir={tmp_path}"], tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "W&B is unreachable" in r.stderr and "wandb sync" in r.stderr
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    assert step_of(tmp_path / "checkpoints" / "last.ckpt") == 6


def _build(args):
    cache, tok_json = args
    from momattn.tokenizer import Tokenizer

    tok = Tokenizer.from_json(tok_json)
    return np.asarray(load_tokens({"source": "staicc", "tasks": ["trec"]}, tok, "train", cache)).tolist()


def test_parallel_cache_builds_do_not_corrupt_and_truncation_is_rebuilt(tmp_path):
    from momattn.data.staicc import lm_texts

    tok = train_bpe(lambda: lm_texts(["trec"], "train"), 300)
    with mp.get_context("spawn").Pool(2) as pool:  # two runs building the same cache at once
        a, b = pool.map(_build, [(str(tmp_path), tok.to_json())] * 2)
    assert a == b and len(a) > 1000
    [bin_path] = list((tmp_path / "tokens").glob("*.bin"))
    assert bin_path.stat().st_size == len(a) * 2  # uint16
    with open(bin_path, "r+b") as f:  # a cache truncated on disk
        f.truncate(bin_path.stat().st_size // 3)
    again = load_tokens({"source": "staicc", "tasks": ["trec"]}, tok, "train", tmp_path)
    assert np.asarray(again).tolist() == a
