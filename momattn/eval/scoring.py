"""Log-likelihood of continuations after a shared prefix, with the prefix encoded once.

    scorer = PrefixScorer(model, prefix_ids)          # one forward pass over the prefix, into a KV cache
    scorer.score([(query_ids, answer_ids), ...])      # -> [(sum log p(answer | prefix + query), n tokens)]

Rows that share a context share one sequence: the logits at the context's last position score every
answer's first token, so a one-token answer costs no extra row (with one-token answers an example is one
row, whatever the number of answers). Sequences are sorted by length and batched (right-padded, which a causal
model never looks at; a batch is cut where padding would waste more than an eighth of it) on `cache.expand(n)`,
which shares the batch-1 prefix cache without a copy (attention reads its keys once for the whole batch); the
forward pass never changes the original cache. The logits that predict the first token after the prefix come from the prefix's LAST
position, so the prefill keeps that row of logits. A sequence stops before its continuation's last token (whose
logits predict nothing scored), and a model that takes `select=` (GPT does) computes the final norm and the LM
head only at the positions read. With an empty prefix the rows are scored as full prompts (the naive reference).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from momattn.eval.lm import last_logits
from momattn.eval.ppl import model_device

MIN_BATCH_TOKENS = 256  # below this many real tokens a batch is not split to save padding
Row = tuple[Sequence[int], Sequence[int]]  # (context ids after the prefix, continuation ids)


@dataclass
class _Sequence:
    context: list[int]
    continuation: list[int]  # the tokens after the context in this sequence (maybe none)
    rows: list[int]  # the rows scored on it: its own continuation's, and one-token ones of the same context

    @property
    def tokens(self) -> list[int]:
        """The input: the context and the continuation but its last token (which predicts nothing read)."""
        return self.context + self.continuation[:-1]


class PrefixScorer:
    def __init__(self, model: nn.Module, prefix: Sequence[int], batch_tokens: int = 4096):
        self.model, self.prefix, self.batch_tokens = model, list(prefix), batch_tokens
        self.device = model_device(model)
        self.selects = bool(getattr(model, "selects_logits", False))  # model(x, select=...) -> only the read logits
        self.cache, self.last_logits = None, None
        if self.prefix:
            self.cache = model.new_cache()
            with torch.no_grad():
                x = torch.tensor([self.prefix], device=self.device)  # (1, P)
                self.last_logits = last_logits(model, x, self.cache)[0]  # (V,): predicts the token after the prefix

    @torch.no_grad()
    def score(self, rows: Sequence[Row]) -> list[tuple[float, int]]:
        """(sum of log-probs, number of tokens) of each row's continuation; rows in any order."""
        for q, a in rows:
            if not a:
                raise ValueError("a continuation must have at least one token")
            if not q and not self.prefix:
                raise ValueError("with no prefix a row needs context tokens to predict its first token from")
        seqs = self._sequences(rows)
        seqs.sort(key=lambda sq: len(sq.tokens))  # neighbours need little padding
        batches, cur, real = [], [], 0
        for sq in seqs:
            # the widest so far: the rows' own tokens (the shared prefix is read once per layer, not copied per row)
            width = len(sq.tokens)
            padded = (len(cur) + 1) * width
            # a new batch when this one is full, or when it is big enough for efficient matmuls and padding it to
            # this width would waste more than an eighth of it
            if cur and (padded > self.batch_tokens or (real >= MIN_BATCH_TOKENS and 8 * (padded - real - width) > padded)):
                batches.append(cur)
                cur, real = [], 0
            cur.append(sq)
            real += width
        if cur:
            batches.append(cur)
        sums = torch.zeros(len(rows), dtype=torch.float64)
        for batch in batches:
            idx, logp = self._score_batch(batch, rows)
            sums.index_add_(0, idx, logp)
        return [(float(v), len(a)) for v, (_, a) in zip(sums.tolist(), rows)]

    @staticmethod
    def _sequences(rows: Sequence[Row]) -> list[_Sequence]:
        """One sequence per multi-token continuation; one-token continuations ride on their context's."""
        by_context: dict[tuple[int, ...], list[int]] = {}
        for i, (q, _) in enumerate(rows):
            by_context.setdefault(tuple(q), []).append(i)
        seqs = []
        for q, idx in by_context.items():
            multi = [_Sequence(list(q), list(rows[i][1]), [i]) for i in idx if len(rows[i][1]) > 1]
            single = [i for i in idx if len(rows[i][1]) == 1]
            if single and multi:
                multi[0].rows.extend(single)
            elif single:
                multi.append(_Sequence(list(q), [], single))
            seqs.extend(multi)
        return seqs

    def _score_batch(self, batch: Sequence[_Sequence],
                     rows: Sequence[Row]) -> tuple[torch.Tensor, torch.Tensor]:
        """(row index, log p(token)) for every continuation token of the rows the batch serves."""
        # position t predicts token t + 1; position -1 is the prefix's last
        row_idx, seq_idx, pos, tgt = [], [], [], []
        for r, sq in enumerate(batch):
            for i in sq.rows:
                a = rows[i][1]
                for j in range(len(a)):
                    row_idx.append(i)
                    seq_idx.append(r)
                    pos.append(len(sq.context) + j - 1)
                    tgt.append(a[j])
        pos_t = torch.tensor(pos, device=self.device)
        seq_t = torch.tensor(seq_idx, device=self.device)
        T = max(len(sq.tokens) for sq in batch)
        if T == 0:  # empty contexts and one-token answers need only the prefix's last logits
            picked = self.last_logits.unsqueeze(0).expand(len(pos), -1)  # (M, V)
        else:
            x = torch.zeros(len(batch), T, dtype=torch.long, device=self.device)  # (R, T), right-padded
            for r, sq in enumerate(batch):
                x[r, : len(sq.tokens)] = torch.tensor(sq.tokens, device=self.device)
            cache = self.cache.expand(len(batch)) if self.cache is not None else None
            inside = pos_t >= 0  # (M,): read from this pass; the others from the prefix's last logits
            if self.selects:  # only the M rows of logits that are read
                logits = self.model(x, cache=cache, select=(seq_t[inside], pos_t[inside]))  # (M', V)
            else:
                logits = self.model(x, cache=cache)[seq_t[inside], pos_t[inside]]  # (R, T, V) -> (M', V)
            if bool(inside.all()):
                picked = logits
            else:
                picked = self.last_logits.to(logits.dtype).unsqueeze(0).repeat(len(pos), 1)  # (M, V)
                picked[inside] = logits
        tgt_t = torch.tensor(tgt, device=self.device)[:, None]  # (M, 1)
        logp = F.log_softmax(picked.double(), dim=-1).gather(1, tgt_t).squeeze(1)  # (M,), in float64
        return torch.tensor(row_idx), logp.cpu()


def score_naive(model: nn.Module, prompt: Sequence[int], continuations: Sequence[Sequence[int]],
                batch_tokens: int = 4096) -> list[tuple[float, int]]:
    """Reference: every continuation scored after the full prompt, no cache."""
    return PrefixScorer(model, [], batch_tokens).score([(prompt, a) for a in continuations])
