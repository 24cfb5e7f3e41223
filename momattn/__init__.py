"""momattn: GPT language models with vanilla or momentum attention (Dai et al. 2023), trained with Lightning + Hydra.

    from momattn import load_checkpoint, momentum_ema, GPT, GPTConfig

The names below are imported on first use, so that `import momattn.cli` (a typo on the command line, `--help`)
does not wait for torch.
"""

from __future__ import annotations

import importlib
import importlib.util

_EXPORTS = {"GPT": "momattn.model", "AttentionConfig": "momattn.model", "GPTConfig": "momattn.model",
            "load_checkpoint": "momattn.checkpoint", "momentum_ema": "momattn.ops", "multirate_ema": "momattn.ops"}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif importlib.util.find_spec(f"momattn.{name}") is not None:  # momattn.ops after `import momattn`, as before
        value = importlib.import_module(f"momattn.{name}")
    else:
        raise AttributeError(f"module 'momattn' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
