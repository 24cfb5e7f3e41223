"""momattn: GPT language models with vanilla or momentum attention (Dai et al. 2023), trained with Lightning + Hydra.

    from momattn import load_checkpoint, momentum_ema, GPT, GPTConfig
"""

from momattn.checkpoint import load_checkpoint
from momattn.model import GPT, AttentionConfig, GPTConfig
from momattn.ops import momentum_ema, multirate_ema

__all__ = ["GPT", "AttentionConfig", "GPTConfig", "load_checkpoint", "momentum_ema", "multirate_ema"]
__version__ = "0.1.0"
