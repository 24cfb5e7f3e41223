"""benchmarks/ginc_curve.py: GINC accuracy scored during training, on train.py's own training step."""

import sys
from pathlib import Path

import torch
from conftest import run_cli

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import ginc_curve  # noqa: E402

from momattn.checkpoint import model_state, read_checkpoint  # noqa: E402

# fp32: bit-level agreement with train.py (in bf16 a last-bit difference anywhere can flip a rounding)
TINY = ["trainer.precision=32-true", "data.n_train_docs=8", "data.doc_length=600", "data.n_val_docs=2", "data.val_doc_length=300",
        "model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.block_size=64", "data.batch_size=4",
        "data.val_batches=1", "trainer.max_steps=3", "trainer.val_check_interval=3", "optim.warmup_steps=1"]


def test_curve_trains_exactly_as_train_py_and_scores_at_every_interval(tmp_path):
    rows = []
    result, model = ginc_curve.run(TINY, every=2, tasks=["ginc", "ginc_ood"], shots=[0, 2, 32], prompts=16,
                                   log=rows.append)
    assert [r["step"] for r in result["rows"]] == [2, 3]  # every 2 steps, and after the last
    assert [r["tokens"] for r in result["rows"]] == [2 * 4 * 64, 3 * 4 * 64]
    last = result["rows"][-1]
    assert 0 <= last["ginc k=0"] <= 100 and 0 <= last["ginc_ood k=2"] <= 100
    assert last["ginc k=32"] is None  # 32 examples of 5 symbols do not fit a 64-token context
    assert len(rows) == 4 and result["precision"] == "32-true"  # a note for each task that 32 does not fit
    assert rows[0].startswith("note: --shots 32: at most 9 examples of task 'ginc' fit the model's 64-token")
    assert rows[1].startswith("note: --shots 32: at most 9 examples of task 'ginc_ood' fit")

    proc = run_cli("train.py", ["experiment=ginc", *TINY, "run_eval=false", "logger=none",
                                f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    trained = model_state(read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt"))
    mine = model.state_dict()
    assert trained.keys() == mine.keys()
    for k in mine:
        torch.testing.assert_close(mine[k], trained[k], rtol=1e-5, atol=1e-6, msg=k)


def test_curve_refuses_a_task_that_is_not_ginc():
    import pytest

    with pytest.raises(SystemExit, match="GINC task"):
        ginc_curve.run(TINY, every=2, tasks=["sst2"], shots=[0], prompts=4)


def test_a_task_or_a_prompt_count_it_cannot_score_is_refused_before_training(monkeypatch, capsys):
    """They were met at the first score, --every steps of training later, in messages naming evaluate.py's keys."""
    import harness

    monkeypatch.setattr(harness, "train_step", lambda *a: (_ for _ in ()).throw(AssertionError("trained")))
    monkeypatch.setattr(ginc_curve, "train_step", harness.train_step)
    assert ginc_curve.main(["--every", "2", "--tasks", "ginc,ginc_l70", *TINY]) == 2
    err = capsys.readouterr().err
    assert "--tasks: 'ginc_l70': a GINC prompt of examples of length 70 needs" in err and "Traceback" not in err
    assert ginc_curve.main(["--every", "2", "--prompts", "20000", *TINY]) == 2
    assert "--prompts=20000 is more prompts than GINC makes at once" in capsys.readouterr().err


def test_a_misspelled_override_is_a_message_and_exit_2(capsys):
    assert ginc_curve.main(["--every", "2", "data.bogus=1"]) == 2
    err = capsys.readouterr().err
    assert "'data.bogus' is not a config key" in err and "Traceback" not in err


def test_curve_trains_at_the_precision_train_py_would(monkeypatch):
    import harness

    seen = []
    real = harness.train_step

    def spy(*args):
        seen.append(args[-1])
        return real(*args)

    monkeypatch.setattr(ginc_curve, "train_step", spy)
    tiny = [o for o in TINY if not o.startswith("trainer.precision")] + ["trainer.precision=bf16-mixed",
                                                                           "trainer.max_steps=1"]
    result, _ = ginc_curve.run(tiny, every=1, tasks=["ginc"], shots=[0], prompts=4, log=lambda r: None)
    assert result["precision"] == "bf16-mixed" and seen == ["bf16-mixed"]
