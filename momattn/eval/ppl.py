"""Perplexity and bits per byte on non-overlapping windows (the paper's Table 6 protocol).

The token stream of a split is cut into windows of L tokens; each window is scored from scratch, so token j
of a window is predicted from tokens 0..j-1 of the same window only. The first token of a window has no
prediction and is not scored: a window contributes L - 1 predictions. Per window we keep (sum NLL, tokens,
bytes) and aggregate at the end (lm-eval-harness style):

    ppl = exp(sum NLL / sum tokens)          bits per byte = sum NLL / ln 2 / sum bytes

Bytes are the UTF-8 bytes of the decoded scored tokens, with each end-of-text token counted as one byte
(a document separator, like a newline), so models with different tokenizers compare.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from momattn.errors import DataError
from momattn.eval.lm import LanguageModel
from momattn.eval.results import PerplexityResult, WindowNumbers
from momattn.utils import done_line, stderr_tty

PROTOCOL = (
    "token-level perplexity on non-overlapping windows of L tokens, each scored from scratch (token j is "
    "predicted from the window's tokens 0..j-1 only; the first token of a window has no prediction and is "
    "not scored, so a window gives L-1 predictions); windows taken with a fixed stride over the split, at "
    "most max_windows per split and length; ppl = exp(total NLL / scored tokens); bits per byte = total NLL "
    "in bits / UTF-8 bytes of the decoded scored tokens (end-of-text counts as 1 byte)"
)


@dataclass(frozen=True)
class WindowScore:
    start: int  # first token of the window in the split's token stream
    nll: float  # sum over scored tokens of -ln p(token | earlier tokens of the window), in nats
    n_tokens: int  # scored tokens (L - 1)
    n_bytes: int  # UTF-8 bytes of the scored tokens


def model_device(model: LanguageModel | nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def window_starts(n_tokens: int, length: int, max_windows: int | None) -> np.ndarray:
    """Starts of at most max_windows non-overlapping full windows, with a fixed stride over the split (None:
    every full window)."""
    n_full = n_tokens // length
    if max_windows is None or n_full <= max_windows:
        idx = np.arange(n_full)
    else:
        idx = (np.arange(max_windows) * n_full) // max_windows
    return idx.astype(np.int64) * length


def count_bytes(tokenizer, ids: Sequence[int]) -> int:
    """UTF-8 bytes of the text of ids; each end-of-text token counts as one byte (a document separator). A
    byte-level tokenizer's own per-token sizes where it has them: decoding a window that starts or ends inside a
    multi-byte character would count 3 bytes (U+FFFD) for a part of it, by a different amount at each length."""
    lengths = getattr(tokenizer, "byte_lengths", lambda: None)()
    if lengths is not None:
        return sum(lengths[int(t)] for t in ids)
    n, chunk = 0, []
    for t in list(ids) + [None]:
        if t is None or t == tokenizer.eot_id:
            if chunk:
                n += len(tokenizer.decode(chunk).encode("utf-8"))
                chunk = []
            n += t is not None
        else:
            chunk.append(int(t))
    return n


@torch.no_grad()
def score_windows(model: LanguageModel, tokenizer, tokens: np.ndarray, length: int, max_windows: int | None,
                  batch_tokens: int = 4096, desc: str = "ppl") -> list[WindowScore]:
    """Per-window (sum NLL, scored tokens, bytes) for windows of `length` tokens of `tokens`."""
    starts = window_starts(len(tokens), length, max_windows)
    if len(starts) == 0:
        raise DataError(f"the split has only {len(tokens)} tokens, fewer than one window of {length}; "
                        "lower ppl.lengths or evaluate on a larger corpus")
    device, batch = model_device(model), max(1, batch_tokens // length)
    was_training = model.training
    model.eval()
    out = []
    for i in tqdm(range(0, len(starts), batch), desc=desc, leave=False, disable=not stderr_tty()):
        s = starts[i : i + batch]
        windows = np.stack([np.asarray(tokens[a : a + length], dtype=np.int64) for a in s])  # (B, L)
        x = torch.from_numpy(windows).to(device)
        logits = model(x[:, :-1])  # (B, L-1, V): position j predicts token j+1
        nll = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten(), reduction="none")
        nll = nll.double().view(len(s), length - 1).sum(1).cpu()  # (B,), summed in float64
        for a, w, n in zip(s, windows, nll.tolist()):
            out.append(WindowScore(int(a), n, length - 1, count_bytes(tokenizer, w[1:].tolist())))
    model.train(was_training)
    return out


def aggregate(scores: Sequence[WindowScore]) -> dict:
    """Corpus-level numbers from per-window scores."""
    nll = math.fsum(s.nll for s in scores)
    n_tok, n_bytes = sum(s.n_tokens for s in scores), sum(s.n_bytes for s in scores)
    return {
        "ppl": math.inf if nll / n_tok > 709.0 else math.exp(nll / n_tok),  # diverged: inf, not OverflowError (nan stays)
        "bpb": nll / math.log(2) / n_bytes if n_bytes else float("nan"),
        "nll_per_token": nll / n_tok,
        "n_windows": len(scores),
        "n_tokens": n_tok,
        "n_bytes": n_bytes,
    }


class PerplexityEvaluator:
    """Table 6 for one model: validation perplexity at each length, train perplexity at the longest."""

    def __init__(self, model: LanguageModel, tokenizer, max_windows: int | None, batch_tokens: int = 4096):
        self.model, self.tokenizer = model, tokenizer
        self.max_windows, self.batch_tokens = max_windows, batch_tokens

    def evaluate_split(self, tokens: np.ndarray, length: int, split: str) -> WindowNumbers:
        t0 = time.perf_counter()
        scores = score_windows(self.model, self.tokenizer, tokens, length, self.max_windows,
                               self.batch_tokens, desc=f"ppl {split}@{length}")
        done_line(f"ppl {split}@{length}: {len(scores)} windows", t0)
        return WindowNumbers(**aggregate(scores), length=length, split=split,
                             n_windows_available=len(tokens) // length, split_tokens=len(tokens))

    def evaluate(self, val_tokens: np.ndarray, lengths: Sequence[int],
                 train_tokens: np.ndarray | None = None) -> PerplexityResult:
        """Validation numbers at every length; train numbers at the longest (when train_tokens is given)."""
        res = PerplexityResult(PROTOCOL, list(lengths), self.max_windows,
                               valid={str(n): self.evaluate_split(val_tokens, n, "valid") for n in lengths})
        if train_tokens is not None:
            n = max(lengths)
            res.train[str(n)] = self.evaluate_split(train_tokens, n, "train")
        return res
