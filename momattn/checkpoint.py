"""Checkpoints: atomic writes, and loading a model + tokenizer from a checkpoint alone (no Lightning needed).

A momattn checkpoint is a Lightning checkpoint (`state_dict` keys prefixed `model.`) plus a `momattn` entry:
    {"format": 1, "model_config": asdict(GPTConfig), "tokenizer": tokenizer.json string,
     "config": the resolved run config (dict), "wandb_run_id": str | None, "rng": RNG states}
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from momattn.errors import CheckpointError
from momattn.model import GPT, AttentionConfig, GPTConfig
from momattn.tokenizer import Tokenizer

FORMAT = 1


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a reader (or a crash at any moment)
    sees either the old complete file or the new complete file, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw checkpoint dict, with a clear error for a missing, truncated or foreign file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"checkpoint '{path}' does not exist; pass the path of a .ckpt written by train.py")
    if p.is_dir():
        raise CheckpointError(f"checkpoint '{path}' is a folder; pass a .ckpt file inside it (e.g. {p}/checkpoints/last.ckpt)")
    try:
        # memory-mapped: reading the metadata (resume, evaluate.py's up-front check) does not pull every
        # tensor into RAM; the weights are paged in only when a model is loaded from them
        ckpt = torch.load(p, map_location="cpu", weights_only=False, mmap=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint '{path}' cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "it is truncated or not a PyTorch checkpoint. Use another one, e.g. the previous last.ckpt or best checkpoint"
        ) from e
    if not isinstance(ckpt, dict) or "momattn" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"'{path}' is a PyTorch file but not a momattn checkpoint (no 'momattn' entry); "
                              "pass a .ckpt written by train.py")
    if ckpt["momattn"].get("format") != FORMAT:
        raise CheckpointError(f"checkpoint '{path}' has format {ckpt['momattn'].get('format')}, this momattn reads {FORMAT}")
    return ckpt


def model_config_from(meta: dict) -> GPTConfig:
    mc = dict(meta["model_config"])
    mc["attention"] = AttentionConfig(**mc["attention"])
    return GPTConfig(**mc)


def model_state(ckpt: dict) -> dict:
    """The GPT's own state_dict from a Lightning checkpoint (keys without the 'model.' prefix)."""
    return {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}


def load_state_into(model: GPT, state: dict, path: str | os.PathLike) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to wte
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint '{path}' does not fit this model: missing {missing[:4]}, unexpected {unexpected[:4]}; "
            "it comes from an incompatible model or attention variant"
        )


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[GPT, Tokenizer]:
    """(model, tokenizer) from a checkpoint alone. model(idx (B, T)) -> logits (B, T, V), in eval mode."""
    ckpt = read_checkpoint(path)
    meta = ckpt["momattn"]
    model = GPT(model_config_from(meta))
    try:
        load_state_into(model, model_state(ckpt), path)
    except RuntimeError as e:  # shape mismatch
        raise CheckpointError(f"checkpoint '{path}' does not fit its own model config: {str(e).splitlines()[0]}") from e
    tokenizer = Tokenizer.from_json(meta["tokenizer"], name=meta.get("tokenizer_name", "tokenizer"))
    if tokenizer.vocab_size > model.config.vocab_size:
        raise CheckpointError(f"checkpoint '{path}': tokenizer has {tokenizer.vocab_size} tokens but the model only "
                              f"{model.config.vocab_size}; the checkpoint was assembled from mismatched parts")
    return model.to(map_location).eval(), tokenizer


def checkpoint_meta(model_config: GPTConfig, tokenizer: Tokenizer, config: dict, **extra) -> dict:
    return {"format": FORMAT, "model_config": asdict(model_config), "tokenizer": tokenizer.to_json(),
            "tokenizer_name": tokenizer.name, "config": config, **extra}
