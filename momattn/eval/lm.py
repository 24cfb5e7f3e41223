"""What the evaluator needs from a model, declared (momattn.model.GPT satisfies it; so do the tests' fakes).

    model.config.block_size                 the context: prompts and windows never exceed it
    model(idx (B, T), cache=None)           -> logits (B, T, V); with a cache, idx continues the cached prefix
    model.new_cache()                       an empty cache; cache.expand(n) shares a batch-1 prefix n times
    optional: model.selects_logits = True    then model(idx, cache, select=(rows, positions)) -> (M, V), only
                                            the logits read (the scorer skips the LM head everywhere else)
    model.parameters() / train() / eval()   the torch.nn.Module basics (device, mode)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch


class ModelConfigLike(Protocol):
    block_size: int


class Cache(Protocol):
    length: int

    def expand(self, n: int) -> Cache: ...


@runtime_checkable
class LanguageModel(Protocol):
    config: Any  # has .block_size (ModelConfigLike); GPTConfig also gives attention, n_layer, ... for reports
    training: bool

    def __call__(self, idx: torch.Tensor, cache: Cache | None = None) -> torch.Tensor: ...

    def new_cache(self) -> Cache: ...

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...


def last_logits(model: LanguageModel, idx: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
    """(B, V): the logits after idx's last position; only those are computed where the model can (GPT)."""
    if hasattr(model, "last_logits"):
        return model.last_logits(idx, cache)
    return model(idx, cache=cache)[:, -1, :]


def describe(model: LanguageModel) -> dict:
    """The model facts a report shows (fields a fake model lacks are left out)."""
    cfg = model.config
    out = {"block_size": cfg.block_size, "n_params": sum(p.numel() for p in model.parameters())}
    for name in ("n_layer", "n_embd", "vocab_size", "pos_emb"):
        if hasattr(cfg, name):
            out[name] = getattr(cfg, name)
    attention = getattr(cfg, "attention", None)
    if attention is not None:
        import dataclasses

        out["attention"] = dataclasses.asdict(attention) if dataclasses.is_dataclass(attention) else vars(attention)
    return out


def attention_kind(model: LanguageModel) -> str:
    attention = getattr(model.config, "attention", None)
    return str(getattr(attention, "kind", "unknown"))
