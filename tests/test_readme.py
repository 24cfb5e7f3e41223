"""The README's commands are real: every `python train.py ...` line composes and validates."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml
from conftest import ROOT, compose_train

from momattn.cli import check_overrides, user_overrides
from momattn.config import load_train_config

README = (ROOT / "README.md").read_text()
COMMANDS = sorted({m.group(1).split("#")[0].strip() for m in re.finditer(r"python train\.py([^\n`]*)", README)})


def test_readme_has_the_two_quickstart_commands():
    assert "bash scripts/setup.sh && .venv/bin/python train.py" in README
    assert "bash scripts/setup.sh dev && .venv/bin/python -m pytest" in README
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/setup.sh" in ci and "pytest" in ci


@pytest.mark.parametrize("args", COMMANDS)
def test_every_train_command_in_the_readme_composes(args, tmp_path, monkeypatch):
    import momattn.config

    monkeypatch.setattr(momattn.config, "_cuda_available", lambda: True)  # the GPU commands validate here too
    monkeypatch.setenv("SLURM_JOB_ID", "1")  # the multi-node commands run under srun
    tokens = shlex.split(args)
    ends = [i for i, a in enumerate(tokens) if a in ("&", "&&", "||", ";", "|", "\\") or a.endswith(";")]
    tokens = tokens[: ends[0]] if ends else tokens  # a shell line: the command ends at its first operator
    argv = [a for a in tokens if "<" not in a and "..." not in a]
    overrides = user_overrides(argv)
    if "hparams_search=optuna" in overrides:
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    check_overrides("train", overrides)
    plain = [o for o in overrides if "," not in o.split("=", 1)[1] or o.split("=", 1)[1].startswith("[")]
    plain = [o for o in plain if not o.startswith(("ckpt_path=", "hydra."))]
    c = load_train_config(compose_train(tmp_path, plain))
    for key, value in (o.split("=", 1) for o in plain if "." in o.split("=")[0]):  # each value reaches the run
        node = c.resolved
        for part in key.split("."):
            node = node[part]
        assert node == yaml.safe_load(value), (key, node, value)
    if "attention=momentum" in plain:
        assert c.model.attention.kind == "momentum"


PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


@pytest.mark.parametrize("block", PYTHON_BLOCKS)
def test_every_python_block_of_the_readme_runs(block, tmp_path, capsys):
    from test_generate import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "last.ckpt")
    code = re.sub(r'"outputs/[^"]*\.ckpt"', repr(str(ckpt)), block)  # the README's placeholder path
    assert code != block or ".ckpt" not in block, "a checkpoint path in the block was not replaced"
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip()  # the block prints what it promises


def test_the_readme_has_python_blocks():
    assert PYTHON_BLOCKS
