"""trainer=fsdp: sharded checkpoint folders, written atomically, that resume on another number of processes."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import SMOKE, run_cli, train_losses

from momattn.checkpoint import load_checkpoint, read_checkpoint
from momattn.errors import CheckpointError

BASE = [*SMOKE, "trainer.precision=32-true", "logger=csv"]
FSDP = [*BASE, "trainer=fsdp", "trainer.accelerator=cpu"]


@pytest.mark.slow
def test_a_two_process_sharded_checkpoint_resumes_on_one_process_with_or_without_fsdp(tmp_path):
    # 4 steps, off the validation interval (3): the final model is validated on the sharded weights too
    two = run_cli("train.py", [*FSDP, "trainer.devices=2", "trainer.max_steps=4", f"hydra.run.dir={tmp_path / 'two'}",
                               "run_eval=true", "eval.ppl.lengths=[16]", "eval.icl.tasks=[trec]", "eval.icl.shots=[0]",
                               "eval.icl.max_examples=4"], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert (tmp_path / "two" / "eval" / "results.json").is_file()  # evaluated on the gathered, full weights
    assert "ShardedTensor" not in two.stderr and "Traceback" not in two.stderr
    folder = tmp_path / "two" / "checkpoints" / "last.ckpt"
    assert folder.is_dir() and sorted(p.name for p in folder.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not list(folder.parent.glob(".*.tmp*")) and not list(folder.parent.glob(".*.old"))  # renamed into place
    ckpt = read_checkpoint(folder)  # consolidated in memory: every weight whole, the optimizer state per parameter
    assert ckpt["global_step"] == 4
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["steps"] == 4 and math.isfinite(summary["val/loss"])
    model, _ = load_checkpoint(folder)
    assert all(torch.equal(model.state_dict()[k[len("model."):]], v) for k, v in ckpt["state_dict"].items())
    state = ckpt["optimizer_states"][0]["state"]
    assert len(state) == sum(1 for _ in model.parameters()) and all("exp_avg" in s for s in state.values())

    runs = {}
    # a resume reuses the checkpoint's command line (trainer=fsdp, devices=2, run_eval=true): today's values win
    for name, how in (("fsdp1", [*FSDP, "trainer.devices=1"]), ("plain", [*BASE, "trainer=cpu", "trainer.devices=1"])):
        r = run_cli("train.py", [*how, "trainer.max_steps=6", "run_eval=false", f"ckpt_path={folder}",
                                 f"hydra.run.dir={tmp_path / name}"], tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        ran = read_checkpoint(tmp_path / name / "checkpoints" / "last.ckpt")
        assert (tmp_path / name / "checkpoints" / "last.ckpt").is_dir() == (name == "fsdp1"), ran["global_step"]
        runs[name] = train_losses(tmp_path / name)
        assert sorted(runs[name]) == [4, 5]
    # the shards resharded onto one FSDP process and the consolidated file give the same training
    assert all(runs["plain"][s] == pytest.approx(runs["fsdp1"][s], rel=1e-5) for s in (4, 5)), runs

    # an FSDP resume reads the shard index without running code from it (Lightning's reader unpickled it)
    import os
    import pickle
    import shutil

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    evil = tmp_path / "evil" / "last.ckpt"
    shutil.copytree(folder, evil)
    (evil / ".metadata").write_bytes(pickle.dumps(Evil()))
    r = run_cli("train.py", [*FSDP, "trainer.devices=1", "trainer.max_steps=6", "run_eval=false", f"ckpt_path={evil}",
                             f"hydra.run.dir={tmp_path / 'evilrun'}"], tmp_path)
    assert r.returncode == 2 and "refuses" in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert not (tmp_path / "pwned").exists()
    # a single-file checkpoint under FSDP: one line (Lightning's path for it crashed the process), before a second
    # process is launched (refused inside fit, each process said it)
    single = tmp_path / "plain" / "checkpoints" / "last.ckpt"
    r = run_cli("train.py", [*FSDP, "trainer.devices=2", "trainer.max_steps=8", "run_eval=false", f"ckpt_path={single}",
                             f"hydra.run.dir={tmp_path / 'plain2fsdp'}"], tmp_path)
    assert r.returncode == 2 and r.stderr.count("is a single file, written without FSDP") == 1, r.stderr[-3000:]
    # resumed in its own folder without FSDP: the file takes the sharded folder's place (a file cannot be renamed
    # over a folder: the run trained its steps, then failed at its first save with "Is a directory")
    r = run_cli("train.py", [*BASE, "trainer=cpu", "trainer.devices=1", "trainer.max_steps=6", "run_eval=false",
                             "ckpt_path=last", f"hydra.run.dir={tmp_path / 'two'}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert folder.is_file() and read_checkpoint(folder)["global_step"] == 6
    assert not list(folder.parent.glob(".last.ckpt.*"))
    assert all(train_losses(tmp_path / "two")[s] == pytest.approx(runs["plain"][s], rel=1e-5) for s in (4, 5))


def test_a_sharded_folder_whose_index_carries_code_is_refused_unrun(tmp_path):
    import os
    import pickle

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    folder = tmp_path / "last.ckpt"
    folder.mkdir()
    torch.save({"global_step": 1, "momattn": {}}, folder / "meta.pt")
    (folder / ".metadata").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match="refuses.*os.system|posix.system"):
        read_checkpoint(folder)
    assert not (tmp_path / "pwned").exists()


def test_replacing_a_last_ckpt_link_removes_the_link_not_the_checkpoint_it_points_at(tmp_path):
    from momattn.strategies import _remove

    best = tmp_path / "best-step3.ckpt"
    best.mkdir()
    (best / "meta.pt").write_bytes(b"x")
    link = tmp_path / ".last.ckpt.old"  # save_last=link: last.ckpt, renamed aside, is a link to a sharded folder
    link.symlink_to(best, target_is_directory=True)
    _remove(link)  # was shutil.rmtree on the link: OSError, and the save died between its renames
    assert not link.is_symlink() and (best / "meta.pt").is_file()


@pytest.mark.slow
def test_a_skipped_non_finite_step_under_single_process_fsdp_saves_as_usual(tmp_path):
    # the skip's zero loss bypassed the forward's output: FSDP's backward hooks never ran and the next save failed
    fault = ["+callbacks.fault._target_=momattn.faults.FaultInjection", "+callbacks.fault.spec=nan@2"]
    r = run_cli("train.py", [*FSDP, "trainer.devices=1", "trainer.max_steps=5", "run_eval=false", *fault,
                             "optim.on_nonfinite=skip", f"hydra.run.dir={tmp_path}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "step skipped" in r.stdout + r.stderr
    assert "Warning" not in r.stderr, r.stderr  # torch's two NO_SHARD warnings of one process (found by review)
    ckpt = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 5 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_bf16_mixed_under_fsdp_on_a_cpu_autocasts_as_a_run_without_it():
    """Lightning's FSDP precision autocasts on CUDA alone: on a CPU "bf16-mixed" ran without autocast ("Disabling
    autocast", once per process), LayerNorm, softmax, the residual stream and the loss in FSDP's bf16 parameters
    (found by review)."""
    from lightning.pytorch.plugins.precision import FSDPPrecision

    from momattn.strategies import CPUShardedFSDP

    strategy = CPUShardedFSDP()
    strategy.precision_plugin = FSDPPrecision("bf16-mixed")
    with strategy.precision_plugin.forward_context():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert strategy.precision_plugin.mixed_precision_config.param_dtype == torch.float32
    strategy.precision_plugin = FSDPPrecision("bf16-true")  # a true precision: Lightning's, as before
    assert strategy.precision_plugin.mixed_precision_config.param_dtype == torch.bfloat16


@pytest.mark.slow
def test_a_bf16_mixed_fsdp_run_on_a_cpu_trains_as_one_without_fsdp(tmp_path):
    bf16 = [t.replace("32-true", "bf16-mixed") for t in FSDP]
    r = run_cli("train.py", [*bf16, "trainer.devices=1", "trainer.max_steps=3", "run_eval=false",
                             f"hydra.run.dir={tmp_path / 'fsdp'}"], tmp_path)
    assert r.returncode == 0 and "autocast" not in r.stderr, r.stderr[-3000:]
    plain = [t.replace("32-true", "bf16-mixed") for t in BASE]
    r = run_cli("train.py", [*plain, "trainer.max_steps=3", "run_eval=false", f"hydra.run.dir={tmp_path / 'plain'}"],
                tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert train_losses(tmp_path / "fsdp") == pytest.approx(train_losses(tmp_path / "plain"), rel=0, abs=1e-6)
