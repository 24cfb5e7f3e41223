"""Log-likelihood of continuations after a shared prefix, with the prefix encoded once.

    scorer = PrefixScorer(model, prefix_ids)          # one forward pass over the prefix, into a KV cache
    scorer.score([(query_ids, answer_ids), ...])      # -> [(sum log p(answer | prefix + query), n tokens)]

Rows are batched (right-padded, which a causal model never looks at) on `cache.expand(n_rows)`, a view of
the batch-1 prefix cache: no copy, and the forward pass never changes the original cache. The logits that
predict a row's first token come from the LAST prefix position, so the prefill keeps that row of logits.
With an empty prefix the rows are scored as full prompts (the naive reference).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from momattn.eval.ppl import model_device

Row = tuple[Sequence[int], Sequence[int]]  # (context ids after the prefix, continuation ids)


class PrefixScorer:
    def __init__(self, model: nn.Module, prefix: Sequence[int], batch_tokens: int = 4096):
        self.model, self.prefix, self.batch_tokens = model, list(prefix), batch_tokens
        self.device = model_device(model)
        self.cache, self.last_logits = None, None
        if self.prefix:
            self.cache = model.new_cache()
            with torch.no_grad():
                logits = model(torch.tensor([self.prefix], device=self.device), cache=self.cache)  # (1, P, V)
            self.last_logits = logits[0, -1]  # (V,): predicts the token right after the prefix

    @torch.no_grad()
    def score(self, rows: Sequence[Row]) -> list[tuple[float, int]]:
        """(sum of log-probs, number of tokens) of each row's continuation; rows in any order."""
        for q, a in rows:
            if not a:
                raise ValueError("a continuation must have at least one token")
            if not q and not self.prefix:
                raise ValueError("with no prefix a row needs context tokens to predict its first token from")
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))  # little padding
        batches, cur = [], []
        for i in order:
            # the widest so far (rows are sorted); the prefix counts: every row attends to it, keeps its keys
            width = len(self.prefix) + len(rows[i][0]) + len(rows[i][1])
            if cur and (len(cur) + 1) * width > self.batch_tokens:
                batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            batches.append(cur)
        out: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
        for batch in batches:
            for i, res in zip(batch, self._score_batch([rows[i] for i in batch])):
                out[i] = res
        return out

    def _score_batch(self, rows: Sequence[Row]) -> list[tuple[float, int]]:
        seqs = [list(q) + list(a) for q, a in rows]
        T = max(len(s) for s in seqs)
        x = torch.zeros(len(seqs), T, dtype=torch.long, device=self.device)  # (R, T), right-padded with 0
        for r, s in enumerate(seqs):
            x[r, : len(s)] = torch.tensor(s, device=self.device)
        cache = self.cache.expand(len(seqs)) if self.cache is not None else None
        logits = self.model(x, cache=cache) if cache is not None else self.model(x)  # (R, T, V)
        # gather the logits that predict each continuation token: position t predicts t + 1
        r_idx, pos, tgt = [], [], []
        for r, (q, a) in enumerate(rows):
            for j in range(len(q), len(q) + len(a)):
                r_idx.append(r)
                pos.append(j - 1)  # -1: the prefix's last position
                tgt.append(seqs[r][j])
        r_idx_t = torch.tensor(r_idx, device=self.device)
        pos_t = torch.tensor(pos, device=self.device)
        picked = logits[r_idx_t, pos_t.clamp(min=0)]  # (M, V)
        if self.last_logits is not None:
            first = (pos_t < 0).unsqueeze(1)  # (M, 1)
            picked = torch.where(first, self.last_logits.to(picked.dtype).unsqueeze(0), picked)
        tgt_t = torch.tensor(tgt, device=self.device)[:, None]  # (M, 1)
        logp = F.log_softmax(picked.double(), dim=-1).gather(1, tgt_t).squeeze(1)  # (M,)
        sums = torch.zeros(len(rows), dtype=torch.float64, device=self.device).index_add_(0, r_idx_t, logp)
        return [(float(s), len(a)) for s, (_, a) in zip(sums.tolist(), rows)]


def score_naive(model: nn.Module, prompt: Sequence[int], continuations: Sequence[Sequence[int]],
                batch_tokens: int = 4096) -> list[tuple[float, int]]:
    """Reference: every continuation scored after the full prompt, no cache."""
    return PrefixScorer(model, [], batch_tokens).score([(prompt, a) for a in continuations])
