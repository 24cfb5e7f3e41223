"""Shared fixtures: everything offline, a per-session cache, configs composed from the real conf/ tree."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.update({"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
                   "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLE_GIT": "true"})
# under pytest-xdist (`pytest -n 2`) the workers share the cores: each one, and every process it starts, gets its
# share of threads instead of all of them (oversubscribed BLAS threads would slow every test down)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(max(1, _cores // _WORKERS))
# Without CUDA the Triton momentum kernel's tests (test_triton_scan.py) run in Triton's CPU interpreter, which
# must be chosen before anything imports triton (its standard library, tl.zeros and the like, is decorated then;
# under xdist another test may import it first). Nothing else here runs Triton on a CPU.
if importlib.util.find_spec("triton") is not None:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
# tiny, fast runs on the TREC rows only (BPE training and tokenisation take about a second)
SMOKE = ["debug=smoke", "data.tasks=[trec]", "trainer.accelerator=cpu"]


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("momattn_cache")
    os.environ["MOMATTN_CACHE"] = str(d)
    return d


def compose_train(tmp_path: Path, overrides: list[str]):
    """The real training config, as Hydra would compose it, writing into tmp_path."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
        cfg.hydra.runtime.cwd = str(tmp_path)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    GlobalHydra.instance().clear()
    return cfg


def run_cli(script: str, args: list[str], cwd: Path, env: dict | None = None, timeout: int = 300):
    """Run train.py / evaluate.py as a user would; returns the CompletedProcess. env: extra variables, None
    removes one."""
    full_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    if full_env.get("MUTANT_UNDER_TEST") == "stats":  # mutmut's coverage pass: its recorder works in-process only
        full_env["MUTANT_UNDER_TEST"] = ""
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of a run's CSVLogger file (logger=csv)."""
    with open(run_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def train_losses(run_dir: Path) -> dict[int, float]:
    """{step: train/loss} of a run logged with logger=csv."""
    return {int(r["step"]): float(r["train/loss"]) for r in read_metrics(run_dir) if r.get("train/loss")}


def tiny_gpt(kind: str = "vanilla", vocab: int = 37, block_size: int = 64, pos_emb: str = "learned", seed: int = 0,
             **attention):
    """A 2-layer, 16-wide GPT in eval mode, the same for the same arguments (seeded)."""
    import torch

    from momattn.model import GPT, AttentionConfig, GPTConfig

    torch.manual_seed(seed)
    cfg = GPTConfig(block_size=block_size, vocab_size=vocab, n_layer=2, n_head=2, n_embd=16, pos_emb=pos_emb,
                    attention=AttentionConfig(kind=kind, **attention))
    return GPT(cfg).eval()
