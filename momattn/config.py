"""Typed schemas of the training config (litgpt-style dataclasses), checked once at start-up.

Hydra composes YAML from conf/; `validate_train_config` merges each section into its dataclass so that a
misspelled key or a wrong type stops the run at once with a message naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from momattn.data.staicc import SPLIT_SEED
from momattn.errors import ConfigError, did_you_mean
from momattn.model import AttentionConfig


@dataclass
class ModelConfig:
    block_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    n_inner: int | None = None
    dropout: float = 0.0
    bias: bool = True
    pos_emb: str = "learned"  # learned | rotary
    vocab_multiple: int = 64  # the tokenizer's vocabulary is padded up to a multiple of this (faster matmuls)


@dataclass
class OptimConfig:
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio (cosine, polynomial)
    weight_decay: float = 0.1  # AdamW, on 2-D weights only
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine | polynomial | constant
    power: float = 1.0  # polynomial decay power (fairseq's default 1.0 = linear)
    grad_clip: float = 1.0  # 0 disables
    on_nonfinite: str = "stop"  # stop | skip: what a NaN/inf loss does


@dataclass
class DataCommon:
    source: str = "staicc"
    batch_size: int = 16  # sequences per micro-batch per device
    val_batches: int = 20  # validation micro-batches per validation run
    num_workers: int = 0
    cache_dir: str | None = None  # token and tokenizer cache; default $MOMATTN_CACHE or ~/.cache/momattn


@dataclass
class StaiccData(DataCommon):
    tasks: list[str] = field(default_factory=lambda: ["agnews", "mr", "subj", "sst5", "trec"])
    split_seed: int = SPLIT_SEED


@dataclass
class TextFilesData(DataCommon):
    source: str = "text_files"
    paths: list[str] = field(default_factory=list)
    val_fraction: float = 0.05
    text_field: str = "text"
    seed: int = SPLIT_SEED


@dataclass
class HubData(DataCommon):
    source: str = "hf"
    name: str = ""
    config: str | None = None
    train_split: str = "train"
    val_split: str | None = "validation"
    text_field: str = "text"
    data_files: dict[str, Any] | None = None
    val_fraction: float = 0.01
    seed: int = SPLIT_SEED


DATA_SCHEMAS = {"staicc": StaiccData, "text_files": TextFilesData, "hf": HubData}


@dataclass
class TokenizerConfig:
    kind: str = "bpe"  # bpe | gpt2 | file
    vocab_size: int = 4096  # bpe only
    path: str | None = None  # file only


@dataclass
class PathsConfig:
    root_dir: str = "."
    output_dir: str = "."
    cache_dir: str | None = None


SECTIONS = {"model": ModelConfig, "attention": AttentionConfig, "optim": OptimConfig, "tokenizer": TokenizerConfig,
            "paths": PathsConfig}
TOP_LEVEL = {"task_name", "tags", "seed", "ckpt_path", "compile", "optimized_metric", "run_eval", "model", "attention",
             "optim", "data", "tokenizer", "trainer", "logger", "callbacks", "paths", "eval", "extras", "hydra"}


def _merge(name: str, schema: type, node: Any) -> DictConfig:
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), node)
    except ConfigKeyError as e:
        key = str(e.key) if getattr(e, "key", None) else str(e).split("'")[1]
        known = [f.name for f in fields(schema)]
        raise ConfigError(f"{name}.{key} is not a known key.{did_you_mean(key, known)} Known keys of {name}: "
                          f"{', '.join(known)}") from None
    except ValidationError as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", "?")
        raise ConfigError(f"{name}.{key}: {str(e).splitlines()[0]}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{name}: {str(e).splitlines()[0]}") from None


def validate_train_config(cfg: DictConfig) -> dict[str, Any]:
    """Typed, validated sections of the run config (plain objects), or a ConfigError naming the culprit."""
    try:
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    except OmegaConfBaseException as e:
        raise ConfigError(f"config interpolation failed at {getattr(e, 'full_key', '?')}: {str(e).splitlines()[0]}") from None
    for key in cfg.keys():
        if key not in TOP_LEVEL:
            raise ConfigError(f"'{key}' is not a top-level config key.{did_you_mean(key, TOP_LEVEL)}")
    out: dict[str, Any] = {}
    for name, schema in SECTIONS.items():
        out[name] = OmegaConf.to_object(_merge(name, schema, cfg.get(name) or {}))
    source = (cfg.get("data") or {}).get("source", "staicc")
    if source not in DATA_SCHEMAS:
        raise ConfigError(f"data.source='{source}' is unknown.{did_you_mean(source, DATA_SCHEMAS)} "
                          f"Choose one of {', '.join(DATA_SCHEMAS)}")
    out["data"] = OmegaConf.to_object(_merge("data", DATA_SCHEMAS[source], cfg.data))
    if cfg.get("eval") is not None:  # checked now, not after hours of training
        from momattn.eval.config import EvalConfig

        out["eval"] = EvalConfig.from_mapping(cfg.eval, "eval")
    o, t, d = out["optim"], out["tokenizer"], out["data"]
    if o.schedule not in ("cosine", "polynomial", "constant"):
        raise ConfigError(f"optim.schedule='{o.schedule}' is unknown; choose cosine, polynomial or constant")
    if o.on_nonfinite not in ("stop", "skip"):
        raise ConfigError(f"optim.on_nonfinite='{o.on_nonfinite}' is unknown; choose stop or skip")
    if o.lr <= 0 or o.warmup_steps < 0 or len(o.betas) != 2:
        raise ConfigError(f"optim: need lr > 0 (got {o.lr}), warmup_steps >= 0 (got {o.warmup_steps}), two betas")
    if t.kind not in ("bpe", "gpt2", "file"):
        raise ConfigError(f"tokenizer.kind='{t.kind}' is unknown.{did_you_mean(t.kind, ['bpe', 'gpt2', 'file'])}")
    if t.kind == "bpe" and t.vocab_size < 257:
        raise ConfigError(f"tokenizer.vocab_size={t.vocab_size} must be > 256 (a byte-level BPE starts with 256 bytes)")
    if d.batch_size < 1 or d.val_batches < 1:
        raise ConfigError(f"data.batch_size={d.batch_size} and data.val_batches={d.val_batches} must be >= 1")
    return out
