"""Training end to end: every config option composes, smoke runs, loss decreases, resume, sweeps, DDP, W&B."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import hydra
import pytest
import torch
from conftest import ROOT, SMOKE, compose_train, run_cli

from momattn.config import validate_train_config
from momattn.training import run_train

GROUPS = {d.name: sorted(f.stem for f in d.glob("*.yaml")) for d in (ROOT / "conf").iterdir() if d.is_dir()}
OPTIONS = [(g, o) for g, opts in sorted(GROUPS.items()) for o in opts]
NEEDS = {("data", "text_files"): ["data.paths=[x.txt]"], ("data", "hf"): ["data.name=json"],
         ("tokenizer", "file"): ["tokenizer.path=tok.json"]}


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def train_losses(run_dir: Path) -> dict[int, float]:
    return {int(r["step"]): float(r["train/loss"]) for r in read_metrics(run_dir) if r.get("train/loss")}


@pytest.mark.parametrize("group,option", OPTIONS)
def test_every_option_of_every_group_composes_validates_and_instantiates(group, option, tmp_path):
    if group == "hparams_search":
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = compose_train(tmp_path, [f"{group}={option}", *NEEDS.get((group, option), [])])
    typed = validate_train_config(cfg)
    assert typed["model"].n_layer >= 1
    if group in ("trainer", "callbacks") and option not in ("gpu", "ddp", "fsdp"):
        for conf in ([cfg.trainer] if group == "trainer" else list((cfg.callbacks or {}).values())):
            obj = hydra.utils.instantiate(conf, **({"logger": False} if group == "trainer" else {}))
            assert obj is not None
    if group == "logger" and option == "csv":
        assert hydra.utils.instantiate(cfg.logger.csv).save_dir == str(tmp_path)


@pytest.mark.parametrize("attention", ["vanilla", "momentum", "multirate_ema"])
def test_smoke_training_each_attention(attention, tmp_path):
    cfg = compose_train(tmp_path, [*SMOKE, f"attention={attention}"])
    val_loss = run_train(cfg)
    assert val_loss is not None and torch.isfinite(torch.tensor(val_loss))
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 6
    assert ckpt["momattn"]["model_config"]["attention"]["kind"] == attention
    assert ckpt["momattn"]["config"]["attention"]["kind"] == attention  # the resolved config travels along


def test_loss_decreases_on_a_few_hundred_tokens(tmp_path):
    # a fixed 300-token corpus, memorised by a small model: the loss must fall far below its start
    text = tmp_path / "tiny.txt"
    text.write_text(" ".join(f"w{i % 17} x{i % 5}" for i in range(150)) + "\n\n" + "tail " * 20)
    cfg = compose_train(tmp_path, ["debug=smoke", "data=text_files", f"data.paths=[{text}]", "tokenizer.vocab_size=300",
                                   "trainer.max_steps=60", "trainer.val_check_interval=30", "optim.lr=3e-3",
                                   "optim.warmup_steps=5", "model.block_size=16", "data.batch_size=4"])
    run_train(cfg)
    losses = train_losses(tmp_path)
    first, last = losses[min(losses)], losses[max(losses)]
    assert last < 0.5 * first, (first, last)


def test_resume_continues_at_the_right_step(tmp_path):
    first = compose_train(tmp_path / "a", [*SMOKE, "attention=momentum", "trainer.max_steps=6"])
    run_train(first)
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    second = compose_train(tmp_path / "b", [*SMOKE, "attention=momentum", "trainer.max_steps=9", f"ckpt_path={ckpt}"])
    run_train(second)
    steps = sorted(train_losses(tmp_path / "b"))
    assert steps == [6, 7, 8]  # logged at the step being taken: the first run took steps 0..5
    assert torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 9


def test_wandb_offline_run_folder_is_written(tmp_path):
    cfg = compose_train(tmp_path, [*SMOKE, "logger=wandb"])
    run_train(cfg)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert runs, list(tmp_path.iterdir())
    assert list(runs[0].glob("*.wandb"))
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["momattn"]["wandb_run_id"] in runs[0].name  # so a resume continues the same W&B run


def test_logger_none_trains(tmp_path):
    assert run_train(compose_train(tmp_path, [*SMOKE, "logger=none"])) is not None


@pytest.mark.slow
def test_two_job_multirun_from_the_command_line(tmp_path):
    r = run_cli("train.py", ["-m", *SMOKE, "attention=vanilla,momentum", f"hydra.sweep.dir={tmp_path}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    for job in ("0", "1"):
        assert (tmp_path / job / "checkpoints" / "last.ckpt").exists()
    kinds = {json.loads(json.dumps(torch.load(tmp_path / j / "checkpoints" / "last.ckpt", weights_only=False)
                                   ["momattn"]["model_config"]["attention"]["kind"])) for j in ("0", "1")}
    assert kinds == {"vanilla", "momentum"}


@pytest.mark.slow
def test_optuna_sweep_runs_trials(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    r = run_cli("train.py", ["-m", "hparams_search=optuna", *SMOKE, "attention=momentum", "trainer.max_steps=3",
                             "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2",
                             f"hydra.sweep.dir={tmp_path}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "optimization_results.yaml").exists()


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path):
    r = run_cli("train.py", [*SMOKE, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                             "trainer.precision=32-true", "trainer.strategy=ddp", f"hydra.run.dir={tmp_path}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 6
    assert "val/loss" in (tmp_path / "csv" / "metrics.csv").read_text()


def test_wandb_sweep_recipe_arguments_are_accepted_by_train_py():
    import yaml

    from momattn.cli import check_overrides

    sweep = yaml.safe_load((ROOT / "sweeps" / "wandb_sweep.yaml").read_text())
    assert sweep["program"] == "train.py" and "${args_no_hyphens}" in sweep["command"]
    args = []
    for key, spec in sweep["parameters"].items():
        value = spec.get("value", spec.get("values", [spec.get("min")])[0] if "values" in spec else spec.get("min"))
        args.append(f"{key}={value}")
    args += [c for c in sweep["command"] if "=" in c]
    check_overrides("train", sorted(args, key=lambda a: "." in a.split("=")[0]))  # groups first
    cfg = compose_train(Path("/tmp"), args)
    validate_train_config(cfg)


def test_training_ends_with_the_short_evaluation_logged(tmp_path):
    cfg = compose_train(tmp_path, [*SMOKE, "run_eval=true", "eval.icl.tasks=[sst2]", "eval.icl.shots=[0,2]",
                                   "eval.icl.max_examples=5", "eval.ppl.max_windows=3"])
    run_train(cfg)
    assert (tmp_path / "eval" / "results.md").exists() and (tmp_path / "eval" / "results.json").exists()
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "icl/sst2/acc" in header and "eval/ppl@32" in header
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["unigram_val_ppl"] > 1
