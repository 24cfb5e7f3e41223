"""Day-one console and resume: quiet output, progress lines in a log file, resume from a run folder as is."""

from __future__ import annotations

import csv
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from conftest import SMOKE, compose_train, read_metrics, run_cli
from omegaconf import OmegaConf

from momattn.checkpoint import read_checkpoint
from momattn.cli import resume_overrides
from momattn.errors import ConfigError
from momattn.progress import TrainProgress
from momattn.training import run_train

NOISE = ("GPU available", "TPU available", "litlogger", "LeafSpec", "anonymous setting", "wandb:", "\r",
         "dirpath has changed", "not resumable", "exists and is not empty", "Epoch 0/")


def test_progress_line_names_step_loss_speed_and_eta():
    line = TrainProgress.line({"step": 50, "total": 200, "loss": 2.5, "rate": 12345.0, "elapsed": 65.0, "eta": 195.0})
    assert line == "[momattn] step 50/200 (25%)  loss 2.5000  12.3K tok/s  elapsed 1m05s  ETA 3m15s"


def test_the_progress_rate_is_trainings_not_lowered_by_a_validation(monkeypatch):
    # a validation inside the rate's window read as a slowdown over the next 20 steps (found by review)
    from types import SimpleNamespace as NS

    import torch

    from momattn import progress

    clock = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    bar = TrainProgress(interval_s=1e9, tty=False)
    trainer = NS(global_step=0, max_steps=100, callback_metrics={}, world_size=1, is_global_zero=True,
                 sanity_checking=False)
    bar.on_train_start(trainer, None)
    batch = (torch.zeros(2, 50, dtype=torch.long),)  # 100 tokens a step, one step a second: 100 tokens/s
    for step in range(1, 6):
        bar.on_train_batch_start(trainer, None, batch, step)
        clock[0] += 1.0
        trainer.global_step = step
        bar.on_train_batch_end(trainer, None, None, batch, step)
        if step == 3:
            bar.on_validation_start(trainer, None)
            clock[0] += 30.0  # a 30 s validation
            bar.on_validation_end(trainer, None)
            clock[0] += 5.0  # and the checkpoint saved after it
    assert bar._status(trainer)["rate"] == pytest.approx(100.0)  # 500 / 35 s over the window before



def test_the_last_step_gets_one_progress_line(capsys):
    # where the periodic line fell on the last step, the end printed the step again (found by review)
    from types import SimpleNamespace as NS

    import torch

    bar = TrainProgress(interval_s=0.0, tty=False)
    trainer = NS(global_step=0, max_steps=2, callback_metrics={}, world_size=1, is_global_zero=True,
                 sanity_checking=False)
    bar.on_train_start(trainer, None)
    for step in (1, 2):
        trainer.global_step = step
        bar.on_train_batch_end(trainer, None, None, (torch.zeros(1, 4, dtype=torch.long),), step)
    bar.on_train_end(trainer, None)
    err = capsys.readouterr().err
    assert err.count("step 2/2") == 1 and err.count("step 1/2") == 1, err
    bar = TrainProgress(interval_s=1e9, tty=False)  # and where none did, the end prints it
    bar.on_train_start(trainer, None)
    bar.on_train_end(trainer, None)
    assert capsys.readouterr().err.count("step 2/2") == 1

def test_a_log_file_gets_progress_lines_not_a_bar(tmp_path, capsys):
    cfg = compose_train(tmp_path, [*SMOKE, "trainer.enable_progress_bar=true", "logger=none"])
    run_train(cfg)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "[momattn] step 6/6 (100%)  loss " in err and " tok/s " in err  # the last line is always printed
    assert "[momattn] step 3: val/loss " in err and "[momattn] step 6: val/loss " in err


def test_the_main_job_console_is_quiet_and_shows_the_tables(tmp_path):
    r = run_cli("train.py", [*SMOKE, "trainer.enable_progress_bar=true", "logger=wandb", "run_eval=true",
                             "eval.ppl.lengths=[16]", "eval.icl.tasks=[trec]", "eval.icl.shots=[0]",
                             "eval.icl.max_examples=4", f"hydra.run.dir={tmp_path}"], tmp_path,
                env={"WANDB_SILENT": None})
    assert r.returncode == 0, r.stderr[-3000:]
    for noise in NOISE:
        assert noise not in r.stderr, (noise, r.stderr)
    assert "[momattn] vanilla attention" in r.stderr and "[momattn] done: 6 steps" in r.stderr
    assert "W&B run:" in r.stderr  # where the run is, said once by momattn
    assert "| trec" in r.stdout or "trec" in r.stdout  # the evaluation tables themselves, not only their path
    assert len(r.stderr.splitlines()) < 25, r.stderr


def _saved(folder, overrides):
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), folder / ".hydra" / "overrides.yaml")


def test_resume_overrides_reuse_the_run_folder_and_today_wins(tmp_path, capsys):
    run = tmp_path / "run"
    _saved(run, ["attention=momentum", "trainer.max_steps=6", "+x.y=1", "ckpt_path=old.ckpt",
                 "+callbacks.fault._target_=momattn.faults.FaultInjection", "+callbacks.fault.spec=kill@3"])
    merged = resume_overrides(["ckpt_path=last", f"hydra.run.dir={run}", "trainer.max_steps=9"])
    # hydra.mode=RUN: one job of a sweep experiment (whose config sets MULTIRUN) resumes as a single run
    assert merged == ["attention=momentum", "+x.y=1", "ckpt_path=last", f"hydra.run.dir={run}", "trainer.max_steps=9",
                      "hydra.mode=RUN"]
    assert "resuming the run in" in capsys.readouterr().err
    # a checkpoint path inside a run folder: the run continues there
    merged = resume_overrides([f"ckpt_path={run}/checkpoints/last.ckpt"])
    assert merged[-1] == f"hydra.run.dir={run}" and "attention=momentum" in merged
    assert resume_overrides(["attention=vanilla"]) == ["attention=vanilla"]  # no resume: unchanged
    assert resume_overrides([f"ckpt_path={tmp_path}/elsewhere.ckpt"]) == [f"ckpt_path={tmp_path}/elsewhere.ckpt"]
    # a sweep keeps its own folders; ckpt_path=last needs the sweep's folder (a new timestamped one, every job from
    # step 0, silently: found by fuzzing)
    assert resume_overrides(["ckpt_path=last", "hydra.sweep.dir=x"], multirun=True) == ["ckpt_path=last",
                                                                                        "hydra.sweep.dir=x"]
    with pytest.raises(ConfigError, match=r"^ckpt_path=last in a sweep .* Name the sweep: hydra.sweep.dir="):
        resume_overrides(["ckpt_path=last", "seed=1,2"], multirun=True)
    swept = resume_overrides([f"ckpt_path={run}/checkpoints/last.ckpt"], multirun=True)
    assert f"hydra.run.dir={run}" not in swept and "hydra.mode=RUN" not in swept
    # a folder quoted as Hydra wants it (a space in the path): its saved command line is found all the same
    spaced = tmp_path / "run two"
    _saved(spaced, ["attention=momentum"])
    merged = resume_overrides(["ckpt_path=last", f"hydra.run.dir='{spaced}'"])
    assert merged[0] == "attention=momentum"
    # a key the run added (+x.y=1) set again today as x.y=2: still an addition (x.y is not in the base config)
    merged = resume_overrides(["ckpt_path=last", f"hydra.run.dir={run}", "x.y=2"])
    assert "+x.y=2" in merged and "+x.y=1" not in merged and "x.y=2" not in merged
    # a callback the run added, dropped today (~k or k=null): its saved additions go, and so does today's deletion,
    # of a key the base config has not (each way was refused by one checker or the other; found by review)
    cb = tmp_path / "cb"
    _saved(cb, ["+callbacks.es._target_=lightning.pytorch.callbacks.EarlyStopping", "+callbacks.es.patience=2", "+callbacks.esx.a=1", "seed=3"])
    for drop in ("~callbacks.es", "callbacks.es=null"):
        capsys.readouterr()
        merged = resume_overrides(["ckpt_path=last", f"hydra.run.dir={cb}", drop])
        assert merged == ["+callbacks.esx.a=1", "seed=3", "ckpt_path=last", f"hydra.run.dir={cb}", "hydra.mode=RUN"]
        assert ("left out, as asked now: +callbacks.es._target_=lightning.pytorch.callbacks.EarlyStopping "
                "+callbacks.es.patience=2"
                in capsys.readouterr().err)
    # a leaf set to null is a value, not a removal: the run's addition is replaced by it
    merged = resume_overrides(["ckpt_path=last", f"hydra.run.dir={cb}", "callbacks.es.patience=null"])
    assert "+callbacks.es.patience=null" in merged and "+callbacks.es.patience=2" not in merged
    # a shipped callback the run added a key below: left out as asked, today's null kept (it was dropped, and the
    # run checkpointed on; found by the diff review)
    shipped = tmp_path / "shipped"
    _saved(shipped, ["+callbacks.model_checkpoint.save_on_train_epoch_end=false", "seed=3"])
    merged = resume_overrides(["ckpt_path=last", f"hydra.run.dir={shipped}", "callbacks.model_checkpoint=null"])
    assert merged[:3] == ["seed=3", "ckpt_path=last", f"hydra.run.dir={shipped}"], merged
    assert "callbacks.model_checkpoint=null" in merged and not any("save_on_train" in o for o in merged)
    merged = resume_overrides(["ckpt_path=last", f"hydra.run.dir={cb}", "~callbacks.es.patience"])
    assert "+callbacks.es._target_=lightning.pytorch.callbacks.EarlyStopping" in merged and "+callbacks.es.patience=2" not in merged
    # a config group switched today: the run's overrides under it that the new option lacks are not carried over
    # (trainer.strategy re-applied to trainer=cpu was "not a config key", a key not typed; found by review)
    ddp = tmp_path / "ddp"
    _saved(ddp, ["trainer=ddp", "trainer.strategy=ddp", "trainer.devices=2", "trainer.max_steps=6"])
    capsys.readouterr()
    merged = resume_overrides(["ckpt_path=last", f"hydra.run.dir={ddp}", "trainer=cpu"])
    assert merged[:1] == ["trainer.max_steps=6"] and "trainer.strategy=ddp" not in merged
    err = capsys.readouterr().err
    assert "not carried over, as the group given now has no such key: trainer.strategy=ddp" in err
    # and those whose value the switch itself changes are the new option's (trainer=cpu is one device; trainer=fsdp
    # on a DDP run trained on with DDP, without a word: found by review); the run's own other values are kept
    assert "trainer.devices=2" not in merged and "sets them itself: trainer.devices=2 (give them again" in err
    _saved(tmp_path / "ddp2", ["trainer=ddp", "trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu"])
    merged = resume_overrides(["ckpt_path=last", f"hydra.run.dir={tmp_path / 'ddp2'}", "trainer=fsdp"])
    assert merged[:2] == ["trainer.devices=2", "trainer.accelerator=cpu"] and "trainer.strategy=ddp" not in merged
    assert "sets them itself: trainer.strategy=ddp (give" in capsys.readouterr().err
    # the run's option chosen by a recipe or an experiment, named again today: no switch, nothing dropped (the
    # group choices alone read data=ginc as a switch from the default data and dropped data.batch_size: review)
    for saved, now in ((["recipe=ginc", "data.batch_size=2", "trainer=cpu"], "data=ginc"),
                       (["experiment=paper_350m", "model.n_layer=2"], "model=gpt_350m")):
        _saved(tmp_path / now.split("=")[1], saved)
        merged = resume_overrides(["ckpt_path=last", f"hydra.run.dir={tmp_path / now.split('=')[1]}", now])
        assert merged[:len(saved)] == saved and "not carried over" not in capsys.readouterr().err
    # a key there whose value needs Hydra's run to resolve (${paths.output_dir}) is there: kept, not a traceback
    logs = tmp_path / "logs"
    _saved(logs, ["logger.csv.save_dir=${paths.output_dir}/logs"])
    merged = resume_overrides(["ckpt_path=last", f"hydra.run.dir={logs}", "logger=csv"])
    assert merged[0] == "logger.csv.save_dir=${paths.output_dir}/logs"
    # a saved override holding an interpolation is read as written (reading resolved it, and failed)
    interp = tmp_path / "interp"
    _saved(interp, ["+logger.csv.save_dir=${paths.output_dir}"])
    merged = resume_overrides(["ckpt_path=last", f"hydra.run.dir={interp}"])
    assert merged[0] == "+logger.csv.save_dir=${paths.output_dir}"
    # ckpt_path=last searches paths.root_dir where one is given (the command line's folder was searched instead)
    other = tmp_path / "elsewhere" / "outputs" / "2026-01-01" / "10-00-00"
    _saved(other, ["attention=multirate_ema"])
    (other / "checkpoints").mkdir()
    (other / "checkpoints" / "last.ckpt").write_bytes(b"")
    merged = resume_overrides(["ckpt_path=last", f"paths.root_dir={tmp_path / 'elsewhere'}"])
    assert merged[0] == "attention=multirate_ema" and merged[-1] == f"hydra.run.dir={other}"
    # the newest run is one job of a sweep: said, with the sweep's own resume (one job went on alone and split the
    # sweep's verdict; found by review)
    job = tmp_path / "elsewhere" / "multirun" / "2026-01-02" / "10-00-00" / "3"
    _saved(job, ["attention=vanilla", "seed=2"])
    (job / "checkpoints").mkdir()
    (job / "checkpoints" / "last.ckpt").write_bytes(b"")
    (job.parent / "multirun.yaml").write_text("hydra: {}\n")
    capsys.readouterr()
    merged = resume_overrides(["ckpt_path=last", f"paths.root_dir={tmp_path / 'elsewhere'}"])
    assert merged[-1] == f"hydra.run.dir={job}"
    assert (f"[momattn] note: {job} is job 3 of the sweep in {job.parent}; this resumes that job alone. To go on "
            f"with the whole sweep: python train.py -m <its overrides> ckpt_path=last hydra.sweep.dir={job.parent}"
            ) in capsys.readouterr().err


def test_command_line_forms_that_hydra_reads_its_own_way(tmp_path):
    from momattn.cli import check_output_dir, command_flags, config_multirun
    from momattn.errors import ConfigError

    assert command_flags(["--cfg=job"]) == (True, False) and command_flags(["-cjob"]) == (True, False)
    assert command_flags(["-m", "seed=1,2"]) == (False, True)
    with pytest.raises(ConfigError, match="--multirun and --cfg cannot be given together"):
        command_flags(["-m", "seed=1", "--cfg", "job"])  # was Hydra's ValueError traceback
    with pytest.raises(ConfigError, match=r"^--shell-completion \(-sc\) takes one of install=SHELL"):
        command_flags(["--shell-completion"])  # (the --help points at it) Hydra's ValueError traceback (review)
    for bad in (["-sc", "install=powershell"], ["-sc", "install=bash", "uninstall=bash"], ["-sc", "install"],
                ["-sc", "seed=1"]):  # each another Hydra traceback (found by the diff review)
        with pytest.raises(ConfigError, match=r"^--shell-completion \(-sc\) takes one of install=SHELL"):
            command_flags(bad)
    assert command_flags(["-sc", "install=bash"]) == (True, False) == command_flags(["-sc", "query=zsh", "seed=1"])
    # experiment=eta_sweep is a sweep without -m: a resume must not take the newest single run's folder
    assert config_multirun("train", ["experiment=eta_sweep"]) and not config_multirun("train", ["experiment=ginc"])
    for bad, says in (("hydra.run.dir=", "is empty"), ("hydra.run.dir=~/x", "Hydra does not expand ~")):
        with pytest.raises(ConfigError, match=says):
            check_output_dir([bad], multirun=False, cwd=tmp_path)
    assert not (tmp_path / "outputs").exists()  # refused before any folder was made
    # a name with ${now:...} inside it: its parent is made, not a stray 'day_' beside the run (found by review)
    probe = tmp_path / "probe"
    probe.mkdir()
    check_output_dir(["hydra.run.dir=runs/day_${now:%Y-%m-%d}"], multirun=False, cwd=probe)
    check_output_dir(["hydra.sweep.dir=sweeps/${now:%Y}/x"], multirun=True, cwd=probe)
    assert sorted(p.relative_to(probe).as_posix() for p in probe.rglob("*")) == ["runs", "sweeps"]
    probe.joinpath("runs").rmdir(), probe.joinpath("sweeps").rmdir(), probe.rmdir()
    # on the command line: the quoted ~ was refused only after the run folder './~/x' had been locked (made);
    # unquoted, Hydra's lexer error
    for arg, says in (("hydra.run.dir='~/x'", "it would make a folder named '~'"),
                      ("hydra.run.dir=~/x", "cannot parse it unquoted"), ("hydra.run.dir=", "is empty"),
                      # its data.paths were looked for in the run folder: "does not exist" (session 57's review)
                      ("hydra.job.chdir=true", "hydra.job.chdir=true: momattn reads the paths you give")):
        r = run_cli("train.py", [arg], cwd=tmp_path)
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # a step file as Lightning names it, given unquoted to a resume: Hydra's traceback (found by review)
    (tmp_path / "steps").mkdir()
    import torch

    torch.save({"momattn": {"overrides": ["seed=1"]}}, tmp_path / "steps" / "epoch=0-step=8.ckpt")  # (its line)
    r = run_cli("train.py", ["ckpt_path=steps/epoch=0-step=8.ckpt"], cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "ckpt_path=steps/epoch=0-step=8.ckpt does not parse as a Hydra override" in r.stderr
    assert "quote the value: \"ckpt_path='steps/epoch=0-step=8.ckpt'\"" in r.stderr
    # a plain value Hydra's lexer stops in: the quoted form that parses, not the lexer's error alone
    from momattn.cli import check_overrides

    with pytest.raises(ConfigError, match=r"^prompt=It's does not parse as a Hydra override \(.*\); quote the value: "
                                          r"\"prompt='It\\'s'\""):
        check_overrides("generate", ["prompt=It's"])
    with pytest.raises(ConfigError, match=re.escape("quote the value: \"prompt='\\'tis the season'\"")):  # a text
        check_overrides("generate", ["prompt='tis the season"])  # starting with a quote got none (flows review)
    with pytest.raises(ConfigError, match="quote the value: \"prompt='日本語'\""):
        check_overrides("generate", ["prompt=日本語"])
    with pytest.raises(ConfigError, match=r"^eval.icl.shots=\[0,2 does not parse as a Hydra override: "):  # a broken
        check_overrides("train", ["eval.icl.shots=[0,2"])  # list: not quoted, but named (it was not: review)
    # a file's text wrapped in quotes, holding a quote itself: how to escape it (it named neither: found by review)
    with pytest.raises(ConfigError, match=re.escape("the ' inside the quoted value ends it; escape each inner ' as "
                                                    "\\': 'prompt='\"'\"'It\\'\"'\"'s a \"great\" film'\"'\"''")):
        check_overrides("generate", ["prompt='It's a \"great\" film'"])
    with pytest.raises(ConfigError, match="quote the value: \"prompt='~hello'\""):  # text, not a home folder
        check_overrides("generate", ["prompt=~hello"])
    # a byte that is not UTF-8: bash's $'...' gives it back (pasted, the advice made a folder named x\udcffy)
    with pytest.raises(ConfigError, match=re.escape("quote the value: $'hydra.run.dir=\\'/tmp/x\\xffy\\''")):
        check_overrides("train", ["hydra.run.dir=/tmp/x\udcffy"])
    # a malformed sweep: quoting (the advice) made it a string, refused as not a float later (found by review)
    for bad in ("optim.lr=choice()", "optim.lr=interval(1e-3)"):
        with pytest.raises(ConfigError, match=rf"^{re.escape(bad)} does not parse as Hydra's (choice|interval)\(\.\.\.\) "
                                              r"\(.*\); e\.g\. optim\.lr=choice\(1e-3,2e-3\), .*a text value, not a "
                                              r"sweep, is quoted"):
            check_overrides("train", [bad])
    # a ~ in a list: the lexer's error alone (found by review); the quoted entries parse, and their ~ is expanded
    with pytest.raises(ConfigError, match=r"^data.paths=\[a.txt, ~/b.txt\]: Hydra cannot parse an unquoted ~ in a "
                                          r"list; quote each such entry: \"data.paths=\[a.txt,'~/b.txt'\]\""):
        check_overrides("train", ["data=text_files", "data.paths=[a.txt, ~/b.txt]"])
    check_overrides("train", ["data=text_files", "data.paths=[a.txt,'~/b.txt']"])
    # two overrides in one argument: quoting the rest as one value is not what was meant (found by review)
    with pytest.raises(ConfigError, match=r"Hydra\); or, if it holds several overrides, pass each as an argument of "
                                          r"its own$"):
        check_overrides("train", ["trainer.devices=2 trainer.accelerator=cpu"])
    with pytest.raises(ConfigError, match=r"folder named '~bob'\); write the path out in full$"):  # not $HOMEbob/runs
        check_output_dir(["hydra.run.dir='~bob/runs'"], multirun=False, cwd=tmp_path)


def test_overrides_before_a_flag_are_checked_like_the_others(tmp_path):
    """`python train.py debug=smoke -m ckpt_path=last` read as `debug=smoke` alone: the overrides after -m skipped
    every check (the sweep retrained its jobs from step 0 in a new folder) and then went to Hydra all the same."""
    from momattn.cli import command_flags, user_overrides

    argv = ["debug=smoke", "-m", "ckpt_path=last", "seed=1,2"]
    assert user_overrides(argv) == ["debug=smoke", "ckpt_path=last", "seed=1,2"]
    assert command_flags(argv) == (False, True)
    assert user_overrides(["a=1", "--cfg", "job", "b=2"]) == ["a=1", "b=2"]
    r = run_cli("train.py", ["debug=smoke", "-m", "ckpt_path=last"], tmp_path)
    assert r.returncode == 2 and "Name the sweep: hydra.sweep.dir=" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not (tmp_path / "multirun").exists()


def test_the_overrides_reach_hydra_after_the_flags_and_a_double_dash(tmp_path):
    """The overrides are handed to Hydra after the flags: without a `--` between them a flag whose value is optional
    took the first override for its value (`python train.py seed=3 --info`: "invalid choice: 'seed=3'", a command
    Hydra itself runs). After a `--` everything is an override, as Hydra reads it (`-- --help` was taken for help,
    `-- -m seed=1,2` for a sweep), and a flag's value equal to an override stays the flag's."""
    from momattn.cli import command_flags, user_overrides

    r = run_cli("train.py", ["seed=3", "--info"], tmp_path)
    assert r.returncode == 0 and "seed: 3" in r.stdout, r.stderr[-2000:]
    assert user_overrides(["--", "--help"]) == ["--help"] and command_flags(["--", "--help"]) == (False, False)
    assert user_overrides(["a=1", "--", "-m", "b=2"]) == ["a=1", "-m", "b=2"]
    assert command_flags(["--", "-m", "seed=1,2"]) == (False, False)
    from momattn.cli import _command_line, hydra_argv

    args, flags = _command_line(["seed=3", "--info"])
    assert args.info == "all" and hydra_argv(flags, args.overrides) == ["--info", "--", "seed=3"]
    args, flags = _command_line(["-p", "seed=1", "seed=1", "-m", "seed=2"])
    assert flags == ["-p", "seed=1", "-m"] and args.overrides == ["seed=1", "seed=2"]
    assert hydra_argv(["-m"], []) == ["-m"]


def test_shell_completion_commands_are_hydras_not_overrides(tmp_path):
    """`python train.py -sc install=bash` (Hydra's documented way to install tab completion) was refused as "'install'
    is not a config key": install=, uninstall= and query= are Hydra's shell-completion commands."""
    r = run_cli("train.py", ["-sc", "install=bash"], tmp_path)
    assert r.returncode == 0 and "hydra_bash_completion" in r.stdout, r.stderr[-2000:]
    r = run_cli("evaluate.py", ["--shell-completion", "query=bash"], tmp_path,
                env={"COMP_LINE": "python evaluate.py ppl.ena"})
    assert r.returncode == 0 and "ppl.enabled=" in r.stdout, r.stderr[-2000:]
    r = run_cli("train.py", ["-sc", "-m", "install=bash"], tmp_path)  # still one mode at a time
    assert r.returncode == 2 and "cannot be given together" in r.stderr


def test_another_primary_config_or_config_folder_is_refused_by_name(tmp_path):
    """`python train.py -cn evaluate ckpt_path=x` said "'ckpt_paths' is not a top-level config key" (the checks read
    train.yaml, Hydra would compose evaluate.yaml for train.py's code); -cp / -cd folders were never read by the
    checks either."""
    from types import SimpleNamespace

    from momattn.cli import check_config_flags
    from momattn.errors import ConfigError

    r = run_cli("train.py", ["-cn", "evaluate", "ckpt_path=x.ckpt"], tmp_path)
    assert r.returncode == 2 and "error: -cn evaluate: evaluate.yaml is evaluate.py's config; run python " \
                                 "evaluate.py instead" in r.stderr and "Traceback" not in r.stderr

    def flags(name=None, path=None, folder=None):
        return SimpleNamespace(config_name=name, config_path=path, config_dir=folder)

    check_config_flags("train", flags("train"))
    check_config_flags("evaluate", flags("evaluate.yaml"))
    with pytest.raises(ConfigError, match=r"^-cn mine: train.py runs on conf/train.yaml only; .* experiment=<name>"):
        check_config_flags("train", flags("mine"))
    with pytest.raises(ConfigError, match=r"^-cd/--config-dir /x: analyze.py reads its configs from .*conf only "
                                          r".*; set what differs with overrides$"):
        check_config_flags("analyze", flags(folder="/x"))
    with pytest.raises(ConfigError, match=r"^-cp/--config-path c: generate.py"):
        check_config_flags("generate", flags(path="c"))
    # a group's option is no entry point's config (it said "experiment/ginc.yaml is experiment/ginc.py's config")
    with pytest.raises(ConfigError, match=r"^-cn experiment/ginc: train.py runs on conf/train.yaml only; .* "
                                          r"experiment=<name>"):
        check_config_flags("train", flags("experiment/ginc"))


@pytest.mark.slow
def test_resume_from_a_run_folder_retypes_nothing(tmp_path):
    run = tmp_path / "run"
    first = run_cli("train.py", [*SMOKE, "attention=momentum", "logger=csv", f"hydra.run.dir={run}"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    r = run_cli("train.py", ["ckpt_path=last", f"hydra.run.dir={run}", "trainer.max_steps=9"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    for noise in NOISE:
        assert noise not in r.stderr, (noise, r.stderr)
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 9 and ckpt["momattn"]["model_config"]["attention"]["kind"] == "momentum"
    steps = sorted({int(row["step"]) for row in read_metrics(run) if row.get("train/loss")})
    assert steps == list(range(9))  # the first run's rows are kept, the resumed ones appended
    with open(run / "csv" / "metrics.csv") as f:
        assert next(csv.reader(f))[0]  # one header


def test_a_checkpoint_outside_its_run_folder_resumes_with_the_overrides_it_recorded(tmp_path, capsys):
    import torch

    ckpt = tmp_path / "moved.ckpt"
    torch.save({"state_dict": {}, "momattn": {"format": 1, "model_config": {"attention": {"kind": "momentum"}},
                                              "tokenizer": "{}", "overrides": ["attention=momentum",
                                                                               "trainer.max_steps=6"]}}, ckpt)
    merged = resume_overrides([f"ckpt_path={ckpt}", "trainer.max_steps=9"])
    assert merged == ["attention=momentum", f"ckpt_path={ckpt}", "trainer.max_steps=9", "hydra.mode=RUN"]  # no folder
    assert f"continuing {ckpt} in a new folder with its own config" in capsys.readouterr().err  # (it said "resuming
    # the run of", and wrote into a new timestamped folder: flows review)


def test_a_moved_checkpoint_of_ones_own_source_resumes_with_todays_command_line_trusted(tmp_path, capsys):
    """Reading its recorded command line checked the classes its config names before train.py trusted those that
    today's command line names: refused with the advice to allow the class (diff review)."""
    import torch

    ckpt = tmp_path / "moved.ckpt"
    own = "data._target_=mypkg.MySource"
    torch.save({"state_dict": {}, "momattn": {"format": 1, "model_config": {"attention": {"kind": "vanilla"}},
                                              "tokenizer": "{}", "config": {"data": {"_target_": "mypkg.MySource"}},
                                              "overrides": [own, "trainer.max_steps=6"]}}, ckpt)
    merged = resume_overrides([f"ckpt_path={ckpt}", own])
    assert own in merged and "trainer.max_steps=6" in merged


def test_the_run_log_keeps_complete_lines_and_a_progress_bars_last_state():
    import io

    from momattn.cli import _Tee

    console, log = io.StringIO(), io.StringIO()
    tee = _Tee(console, log)
    tee.write("[momattn] start\n")
    for i in range(1000):  # a bar redrawn in place: the log gets the line it ends in, once
        tee.write(f"\r step {i}")
    tee.write("\nerror: x\n")
    assert log.getvalue() == "[momattn] start\n step 999\nerror: x\n"
    assert console.getvalue().startswith("[momattn] start\n\r step 0")  # the console gets every update
    assert len(tee._line) == 0


def test_metrics_csv_is_continued_only_by_a_resume(tmp_path, capsys):
    from momattn.loggers import make_loggers

    section = {"csv": {"_target_": "momattn.loggers.CSVLogger", "save_dir": str(tmp_path), "name": "", "version": ""}}

    def log(steps, resumed: bool, start_step: int = 0) -> list[str]:
        (lg,) = make_loggers(section, resumed=resumed, start_step=start_step)
        for step in steps:
            lg.log_metrics({"train/loss": float(step)}, step=step)
        lg.save()
        return (tmp_path / "metrics.csv").read_text().splitlines()

    assert log([0], resumed=False) == ["step,train/loss", "0,0.0"]
    assert log([1], resumed=True, start_step=1) == ["step,train/loss", "0,0.0", "1,1.0"]  # a resume appends
    assert log([0], resumed=False) == ["step,train/loss", "0,0.0"]  # a fresh run starts anew
    # a run killed after its checkpoint (step 2) had logged steps 2-4: the resume logs them again, once
    log([1, 2, 3, 4], resumed=True, start_step=1)
    assert log([2, 3], resumed=True, start_step=2) == ["step,train/loss", "0,0.0", "1,1.0", "2,2.0", "3,3.0"]
    # in one line ending, Lightning's \r\n: the rows kept had \n, the rows appended \r\n (found by review)
    assert (tmp_path / "metrics.csv").read_bytes().count(b"\r\n") == 5
    # a resume from an earlier step stopped before it logged a row (a Ctrl-C in its set-up) cuts nothing: last.ckpt
    # still holds the later steps, whose rows were lost for good (found by review)
    assert log([], resumed=True, start_step=1) == ["step,train/loss", "0,0.0", "1,1.0", "2,2.0", "3,3.0"]
    assert log([1], resumed=True, start_step=1) == ["step,train/loss", "0,0.0", "1,1.0"]  # its first row: cut then
    # a last row cut short (a kill or a full disk mid-append): the resume's first row was glued onto it (review)
    path = tmp_path / "metrics.csv"
    (tmp_path / "metrics.replaced.json").unlink()  # (the rows dropped above: a real run saved a checkpoint since)
    path.write_bytes(path.read_bytes() + b"2,2.12")
    assert log([5], resumed=True, start_step=5) == ["step,train/loss", "0,0.0", "1,1.0", "5,5.0"]
    assert "metrics.csv: 1 row cut short (a kill or a full disk while it was written) left out" in \
        capsys.readouterr().err
    path.write_bytes(path.read_bytes() + b"6,6.0,9\r\n")  # a row wider than the header: left out too
    assert log([7], resumed=True, start_step=7) == ["step,train/loss", "0,0.0", "1,1.0", "5,5.0", "7,7.0"]


def test_rows_a_resume_from_an_earlier_checkpoint_dropped_come_back_while_last_ckpt_continues_them(tmp_path):
    """A run to step 8, resumed from its step-3 checkpoint and stopped before that resume saved one: last.ckpt still
    continues the first run, whose rows 3-7 the resume had dropped; a resume from last.ckpt left a gap for good
    (found by review). They come back, until a checkpoint of the later run replaces last.ckpt."""
    import json

    from momattn.loggers import REPLACED, make_loggers

    section = {"csv": {"_target_": "momattn.loggers.CSVLogger", "save_dir": str(tmp_path), "name": "", "version": ""}}
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / "last.ckpt").write_bytes(b"step 8")

    def log(steps, start_step: int, mark: str) -> list[str]:
        (lg,) = make_loggers(section, resumed=start_step > 0, start_step=start_step, checkpoints=str(ckpts))
        for step in steps:
            lg.log_metrics({"train/loss": float(f"{step}.{mark}")}, step=step)
        lg.save()
        return (tmp_path / "metrics.csv").read_text().splitlines()[1:]

    log(range(9), 0, "1")  # the first run: steps 0-8
    assert log([3, 4, 5], 3, "2") == ["0,0.1", "1,1.1", "2,2.1", "3,3.2", "4,4.2", "5,5.2"]  # from best-step3, killed
    assert (tmp_path / REPLACED).exists()
    # from last.ckpt (step 8, the first run's): its rows 3-7, and the new run's from step 8
    assert log([8, 9], 8, "3") == [f"{s},{s}.1" for s in range(8)] + ["8,8.3", "9,9.3"]
    # from step 3 again, then from last.ckpt once more: still the first run's rows
    log([3], 3, "4")
    assert log([8], 8, "5") == [f"{s},{s}.1" for s in range(8)] + ["8,8.5"]
    # a checkpoint saved by a resume from step 3: last.ckpt is that run's now, and its rows are the ones kept
    log([3, 4], 3, "6")
    (ckpts / "last.ckpt").write_bytes(b"step 4, saved later")
    assert log([4, 5], 4, "7") == ["0,0.1", "1,1.1", "2,2.1", "3,3.6", "4,4.7", "5,5.7"]
    assert json.loads((tmp_path / REPLACED).read_text())["rows"] == [["4", "4.6"]]  # the first run's are gone
    # a checkpoint this run saves makes them no one's to put back: the file goes (it outlived the run: diff review)
    (lg,) = make_loggers(section, resumed=True, start_step=4, checkpoints=str(ckpts))
    (ckpts / "step4.ckpt").write_bytes(b"another callback's step file")  # last.ckpt as it was: still needed (second
    lg.after_save_checkpoint(None)  # diff review: the rows were lost)
    assert (tmp_path / REPLACED).exists()
    (ckpts / "last.ckpt").write_bytes(b"step 5, this run's")
    lg.after_save_checkpoint(None)
    assert not (tmp_path / REPLACED).exists()
    # a resume that logs nothing (a finished run, reported and evaluated) puts the rows back all the same, cutting
    # nothing (it only did at a first logged row: the gap stayed; diff review)
    log(range(9), 0, "1")
    log([3], 3, "2")
    (lg,) = make_loggers(section, resumed=True, start_step=8, checkpoints=str(ckpts), idle=True)
    lg.repair()
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1:] == [f"{s},{s}.1" for s in range(9)]
    assert not (tmp_path / REPLACED).exists()


def test_metrics_csv_survives_a_failure_while_a_new_column_rewrites_it(tmp_path, monkeypatch, capsys):
    """A new column (the first validation, the end-of-run evaluation) rewrites the file whole: in place, a full disk
    at that moment left a header and no rows (found by review). Replaced atomically, and the next save adds the
    column again."""
    import csv
    import errno

    from momattn.loggers import make_loggers

    section = {"csv": {"_target_": "momattn.loggers.CSVLogger", "save_dir": str(tmp_path), "name": "", "version": ""}}
    path = tmp_path / "metrics.csv"
    path.write_text("step,train/loss\n0,9.0\n")  # an earlier attempt that saved no checkpoint
    (lg,) = make_loggers(section)
    for step in range(100):
        lg.log_metrics({"train/loss": float(step)}, step=step)
    lg.save()
    assert "the rows of an earlier attempt without a checkpoint are replaced" in capsys.readouterr().err
    before = path.read_text()
    assert len(before.splitlines()) == 101

    def disk_full(self, rows):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(csv.DictWriter, "writerows", disk_full)
        lg.log_metrics({"val/loss": 1.0}, step=100)
        with pytest.raises(OSError, match="No space left"):
            lg.save()
    assert path.read_text() == before  # every row kept
    lg.log_metrics({"val/loss": 2.0}, step=101)
    lg.save()
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 102 and all(None not in r for r in rows)  # no row wider than the header
    assert [r["val/loss"] for r in rows[-2:]] == ["1.0", "2.0"] and rows[5]["train/loss"] == "5.0"


def test_a_resume_with_csv_version_null_continues_the_newest_version(tmp_path):
    # logger.csv.version=null: Lightning numbers the folders, and a resume logged to a new version_1
    from momattn.loggers import make_loggers

    section = {"csv": {"_target_": "momattn.loggers.CSVLogger", "save_dir": str(tmp_path), "name": "csv", "version": None}}
    for steps, resumed in (([0], False), ([1], True)):
        (lg,) = make_loggers(section, resumed=resumed, start_step=steps[0])
        lg.log_metrics({"train/loss": float(steps[0])}, step=steps[0])
        lg.save()
    assert [p.name for p in (tmp_path / "csv").iterdir()] == ["version_0"]
    assert (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines() == ["step,train/loss", "0,0.0",
                                                                                         "1,1.0"]
    (lg,) = make_loggers(section)  # a fresh run into the same folder still takes the next version
    assert lg.version == 1


def test_the_wandb_key_lists_agree_with_the_logger_and_its_config():
    # two hand-kept lists (read without importing Lightning): wandb_logger's arguments, and what evaluate.py reads
    import inspect

    import yaml

    from momattn.cli import CONF_DIR
    from momattn.eval.config import EVAL_WANDB_KEYS
    from momattn.loggers import wandb_logger
    from momattn.wandb_runs import LOGGER_ARGS

    own = [n for n, p in inspect.signature(wandb_logger).parameters.items() if p.kind is not p.VAR_KEYWORD]
    assert set(LOGGER_ARGS) == {"_target_", *own}
    conf = yaml.safe_load((CONF_DIR / "logger" / "wandb.yaml").read_text())["wandb"]
    assert set(conf) <= set(LOGGER_ARGS) and set(EVAL_WANDB_KEYS) == {*LOGGER_ARGS, "entity"}


def test_a_missing_wandb_package_is_one_line_and_no_error_where_w_and_b_is_disabled(tmp_path, monkeypatch):
    # a ModuleNotFoundError traceback, even with WANDB_MODE=disabled, and an empty train.log (found by review)
    import sys

    from momattn.errors import ConfigError
    from momattn.loggers import wandb_logger
    from momattn.wandb_runs import check_wandb_keys, check_wandb_names, start_run

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed
    monkeypatch.setenv("WANDB_MODE", "offline")
    for call in (lambda: check_wandb_names({"project": "p"}), lambda: check_wandb_keys({"project": "p"}, "logger.wandb"),
                 lambda: start_run(tmp_path, {}, "evaluate.py"), lambda: wandb_logger(str(tmp_path))):
        with pytest.raises(ConfigError, match=r"^logger=wandb needs the wandb package, which cannot be imported .*"
                                              r"pip install wandb .* or log with logger=csv or logger=none$"):
            call()
    monkeypatch.setenv("WANDB_MODE", "disabled")
    check_wandb_names({"project": "p"})
    check_wandb_keys({"project": "p"}, "logger.wandb")


def test_wandb_mode_disabled_makes_no_wandb_run(tmp_path, monkeypatch, capsys):
    from momattn.loggers import make_loggers

    monkeypatch.setenv("WANDB_MODE", "disabled")  # was mapped to offline: an offline run was written all the same
    section = {"wandb": {"_target_": "momattn.loggers.wandb_logger", "save_dir": str(tmp_path)}}
    assert make_loggers(section) == [] and not (tmp_path / "wandb").exists()
    assert "WANDB_MODE=disabled: no W&B run" in capsys.readouterr().err


def test_evaluate_and_analyze_follow_train_pys_wandb_rules(tmp_path, monkeypatch, capsys):
    # they called wandb.init(mode=...) themselves: WANDB_MODE=disabled still wrote an offline run, WANDB_MODE=online
    # stayed offline, an online run without a key or network ended in a traceback after the work (found by review)
    from momattn.errors import ConfigError
    from momattn.eval.config import check_logger
    from momattn.wandb_runs import start_run, wandb_offline

    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert start_run(tmp_path, {"offline": True}, "the evaluation of x") is None and not (tmp_path / "wandb").exists()
    assert "WANDB_MODE=disabled: no W&B run for the evaluation of x" in capsys.readouterr().err
    monkeypatch.setenv("WANDB_MODE", "online")
    assert wandb_offline(True) is False
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="W&B online was asked for .* no W&B API key was found"):
        check_logger({"wandb": {"offline": True}}, "evaluate.py")  # at start-up, before any scoring
    monkeypatch.delenv("WANDB_MODE")
    with pytest.raises(ConfigError, match=r"logger.wandb.offline='no' must be true or false"):
        check_logger({"wandb": {"offline": "no"}}, "evaluate.py")  # 'no' is text, and was truthy: offline
    check_logger({"wandb": {"offline": True}}, "analyze.py")


def test_an_override_that_does_not_parse_is_one_line():
    from momattn.cli import check_overrides
    from momattn.errors import ConfigError

    with pytest.raises(ConfigError, match=r"trainer.max_steps does not parse as a Hydra override: Error parsing "
                                          r"override 'trainer.max_steps' missing EQUAL"):
        check_overrides("train", ["trainer.max_steps"])  # was Hydra's error with exit 1
    with pytest.raises(ConfigError, match=r"attention.eta=\[1,2 does not parse as a Hydra override: no viable "
                                          r"alternative at input '\[1,2'"):
        check_overrides("train", ["attention.eta=[1,2"])
    # a list entry the lexer stops in: each such entry quoted, advice a single value got already (found by review);
    # the caret under the override, joined into the line, pointed at nothing
    for bad, fixed in (("tags=[é]", "\"tags=['é']\""), ("data.paths=[a.txt,b=c.txt]", "\"data.paths=[a.txt,'b=c.txt']\"")):
        with pytest.raises(ConfigError, match=re.escape(f"; quote each list entry that holds other characters than "
                                                        f"letters, digits and / . _ -: {fixed}")) as e:
            check_overrides("train", [bad])
        assert " ^" not in str(e.value)
        check_overrides("train", ["data=text_files", shlex.split(fixed)[0]])  # the advice, as the shell passes it
    # entries holding a quote or a bracket: split at every comma, the advice parsed to other values (diff review)
    with pytest.raises(ConfigError, match="quote each list entry") as e:  # an apostrophe: still advised (review)
        check_overrides("train", ["tags=[it's]"])
    check_overrides("train", shlex.split(str(e.value).rsplit(": ", 1)[1]))  # the advice, as the shell passes it
    for bad in ("tags=['x,y',é]", "+foo=[{a:1,b:é}]"):
        with pytest.raises(ConfigError) as e:
            check_overrides("train", [bad])
        assert "quote each list entry" not in str(e.value)


def test_help_shows_the_entry_points_usage_its_own_groups_and_the_commented_settings(tmp_path):
    from momattn.cli import CONF_DIR
    from momattn.helptext import help_text

    train = help_text("train", "Train.", CONF_DIR)
    assert "  attention: momentum, multirate_ema, vanilla  (default: vanilla)" in train
    assert "  experiment: eta_sweep, eta_sweep_rotary, ginc, paper_350m, reproduce  (default: none)" in train
    ev = help_text("evaluate", "Evaluate.", CONF_DIR)
    assert "attention: momentum" not in ev  # only its groups (Hydra's help listed train's)
    assert "  logger: none, wandb  (default: none)" in ev  # not csv, which it refuses (offered before)
    assert "  logger: csv, none, wandb  (default: wandb)" in train
    assert "ckpt_paths: null      # several, compared side by side" in ev  # the keys' comments
    done = run_cli("evaluate.py", ["--help"], tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("Evaluate momattn checkpoints") and not done.stderr
    assert "Settings (conf/evaluate.yaml" in done.stdout and not list(tmp_path.iterdir())  # ran nothing
    # +key=value is offered only where it adds a key: +attention.x, +optim.x, ... are refused like a typo (it said
    # "add one with +key=value" for every section)
    assert "+key=value adds one, under trainer and callbacks and logger only" in train
    assert "+key=value adds one, under logger only" in ev
    assert "+key" not in help_text("generate", "Generate.", CONF_DIR).split("Settings (")[1].split("\n")[0]


def test_a_terminal_of_no_columns_is_no_terminal_for_a_progress_bar(monkeypatch):
    """A pseudo-terminal that reports 0 columns (script -qc without a size): tqdm drew its bar as nothing, and the
    line every 30 s that a log gets was not written either."""
    import fcntl
    import io
    import pty
    import struct
    import termios

    from momattn.utils import stderr_tty

    parent, child = pty.openpty()  # a new pseudo-terminal's size is 0 x 0
    try:
        with open(child, "w", closefd=False) as tty:
            monkeypatch.setattr(sys, "stderr", tty)
            assert tty.isatty() and not stderr_tty()
            fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
            assert stderr_tty()
        monkeypatch.setattr(sys, "stderr", io.StringIO())
        assert not stderr_tty()
    finally:
        os.close(parent)
        os.close(child)


def test_the_hubs_retries_without_network_are_not_printed(monkeypatch):
    # each retry of huggingface_hub was two lines (its own handler's and Hydra's) before momattn's one-line error
    import logging

    from momattn.console import quiet_console

    monkeypatch.delenv("MOMATTN_VERBOSE", raising=False)
    hub = logging.getLogger("huggingface_hub.utils._http")
    monkeypatch.setattr(logging.getLogger("huggingface_hub"), "level", logging.NOTSET)
    quiet_console()
    assert not hub.isEnabledFor(logging.WARNING) and hub.isEnabledFor(logging.ERROR)


def test_torchs_no_shard_warnings_are_quiet_in_each_spelling(monkeypatch):
    # torch has three copies of it, one reading "willbe": that one came through on a sharded run resumed on one
    # process (found by review)
    import warnings

    from momattn.console import quiet_console

    monkeypatch.delenv("MOMATTN_VERBOSE", raising=False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_console()
        for joined in ("will be", "willbe"):
            warnings.warn(f"When using ``NO_SHARD`` for ``ShardingStrategy``, full_state_dict {joined} returned.",
                          stacklevel=1)
    assert seen == []


def test_the_quiet_console_still_says_why_lightning_killed_a_ddp_process(monkeypatch):
    # another rank ended (out of memory): Lightning said so at INFO, then SIGKILLed this process, whose output ended
    # in a bare "Killed" (found by review)
    import logging

    from momattn.console import quiet_console

    monkeypatch.delenv("MOMATTN_VERBOSE", raising=False)
    quiet_console()
    assert logging.getLogger("lightning.fabric.strategies.launchers.subprocess_script").isEnabledFor(logging.INFO)
    assert not logging.getLogger("lightning.fabric.utilities.distributed").isEnabledFor(logging.INFO)


def test_an_analysis_w_and_b_run_carries_its_settings_and_its_seed(tmp_path, monkeypatch):
    # two analyze.py runs of other seeds or learning-rate grids were one name and one config: {checkpoint, lr, shots}
    from dataclasses import asdict
    from types import SimpleNamespace

    from momattn import wandb_runs
    from momattn.analysis.config import AnalyzeConfig
    from momattn.analysis.report import log_wandb

    started = []
    monkeypatch.setattr(wandb_runs, "start_run", lambda out, cfg, who, **init: started.append(init))
    r = SimpleNamespace(task="sst2", attention="vanilla", checkpoint=None, lr=0.1, shots=2)
    conf = AnalyzeConfig(ckpt_path="x.ckpt", task="sst2", seed=2, lrs=[0.1, 0.01])
    assert log_wandb(r, tmp_path, {}, settings=asdict(conf)) is False  # (no run started: nothing logged)
    (init,) = started
    assert init["name"] == "sst2-vanilla seed 2" and init["job_type"] == "analyze"
    assert init["config"]["seed"] == 2 and init["config"]["lrs"] == conf.lrs and "logger" not in init["config"]
    assert init["config"]["lr"] == 0.1 and "train_run_id" in init["config"]


def test_a_printed_folder_argument_comes_back_as_the_folder_through_the_shell_and_hydra():
    # resume commands were split at a space by the shell, and an unquoted non-ASCII folder or a ${...} in one did not
    # come back from Hydra as typed (found by review)
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from momattn.quoting import hidden, shell_arg

    parser = OverridesParser.create()
    bash = shutil.which("bash")
    # session 55's review: a backslash before ${ came back resolved; a character that does not print (an escape
    # sequence) went to the terminal raw, and now comes as bash's $'\x1b'
    for folder in ("/runs/a", "/runs/a run", "/runs/it's", "/runs/x=1,2", "/runs/$x y", "runs/café", "/runs/a\\'b",
                   "/runs/end\\", "/runs/${oc.env:HOME}", "/runs/a\\b c", '/runs/"q"', "/runs/\\${x}",
                   "/runs/\\\\${x}", "/runs/\x1b[2Kx", "/runs/a\nb", "/runs/\u202ex", "/runs/nb\u00a0sp",
                   "/runs/soft\u00adhyphen", "/runs/caf\u00e9\x85", "/runs/\u2028", "/runs/x\udcffy"):
        typed = shell_arg("hydra.run.dir", folder)
        if hidden(folder):  # (a no-break space, a soft hyphen print as they are: the flows review's pasted
            # $'\xa0' came back as a lone byte, not the character)
            assert typed.isprintable() and typed.startswith("$'") and not hidden(typed)
        else:
            assert "$'" not in typed
        if bash is None and hidden(folder):
            continue
        [arg] = shlex.split(typed) if bash is None else [  # (a byte of a name not UTF-8 comes back as that byte)
            subprocess.run([bash, "-c", f"printf %s {typed}"], capture_output=True, check=True,
                           env={**os.environ, "LC_ALL": "C.UTF-8"}).stdout.decode(errors="surrogateescape")]
        value = parser.parse_override(arg).value()
        assert OmegaConf.create({"v": value}).v == folder, (folder, arg, value)


def test_a_run_folder_whose_name_is_not_utf8_is_checked_without_a_traceback(tmp_path):
    # a byte 0xff in the folder's name (Python's surrogate escape) ended in UnicodeEncodeError (flows review)
    from momattn.config import load_train_config
    from momattn.quoting import hydra_quoted

    folder = tmp_path / "x\udcffy"
    assert load_train_config(compose_train(folder, SMOKE)).paths.output_dir == str(folder)
    # end to end: its start line, written to train.log, was the next traceback (third flows review)
    r = run_cli("train.py", [*SMOKE, "trainer.max_steps=2", "run_eval=false", f"hydra.run.dir={hydra_quoted(folder)}"],
                tmp_path, fresh=True)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "x\\udcffy" in (folder / "train.log").read_text()


def test_a_resumes_carried_over_overrides_are_kept_in_the_runs_log(tmp_path, capsys):
    """Found by review: the resume line (what was carried over, replaced, left out) reached the console only; it
    is said before Hydra opens train.log, which now gets it first."""
    import logging

    from momattn.cli import run_log

    run = tmp_path / "run"
    _saved(run, ["attention=momentum", "trainer.max_steps=6"])
    resume_overrides(["ckpt_path=last", f"hydra.sweep.dir={tmp_path}"], multirun=True)  # a sweep's: not a job's
    resume_overrides(["ckpt_path=last", f"hydra.run.dir={run}", "trainer.max_steps=9"])
    handler = logging.FileHandler(tmp_path / "train.log")
    logging.getLogger().handlers.insert(0, handler)  # before pytest's own (to os.devnull)
    try:
        with run_log():
            print("[momattn] the job", file=sys.stderr)
        with run_log():  # said into one log only
            pass
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    log = (tmp_path / "train.log").read_text().splitlines()
    assert log[0].startswith(f"[momattn] resuming the run in {run} with its own config (attention=momentum")
    assert log[1:] == ["[momattn] the job"]
    assert "resuming the run in" in capsys.readouterr().err  # and on the console, as before
