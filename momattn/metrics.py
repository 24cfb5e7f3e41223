"""Reference numbers a trained model is compared with."""

from __future__ import annotations

import math

import numpy as np


def unigram_ppl(train_tokens, val_tokens, vocab_size: int) -> float:
    """Perplexity on val of the add-one-smoothed unigram distribution of train: the bar any LM must clear."""
    counts = np.bincount(np.asarray(train_tokens), minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(np.exp(-logp[np.asarray(val_tokens)].mean()))


def perplexity(mean_loss: float) -> float:
    """exp(mean loss in nats), exact to float64's range and inf past it, NaN for NaN (val/ppl was capped at e^50,
    silently: a diverged run's val/loss of 60 read as 5.2e21)."""
    try:
        return math.exp(mean_loss)
    except OverflowError:
        return math.inf
