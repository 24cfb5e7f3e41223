"""The paper's finetuning baseline, for many models at once (Dai et al. 2023, Section 4).

Each model sees its k demonstrations as k training sequences, in prompt order, one epoch, batch size 1,
plain SGD (no momentum, no weight decay), and only the key and value projections move: the update lives in a
Delta on the K/V rows [C:3C) of every c_attn (weights, and biases where it has them), so Q, the MLPs, embeddings and LayerNorms
are never touched, nor the memory term's own parameters (momentum's eta, multirate_ema's delta and gamma): the
paper's baseline trains the K/V projections alone. Dropout is off (eval mode).

Loss: each sequence is [<eot>] + the demonstration as it appears in the prompt (template + " " + answer; GINC:
the l symbols), and the loss is the mean negative log-likelihood of its ANSWER tokens only (GINC: the last
symbol). That is what the prompt teaches (x -> y) and what the evaluator scores; the LM loss on the template
tokens would train the model on the task's fixed wording instead.

Many models run in one batch (row m is model m; each has its own Delta and learning rate): the losses are
summed, and since model m's loss depends on its own Delta only, the summed gradient is each model's own
gradient. This is how the learning-rate grid (all lrs at once) and GINC (one model per prompt) stay cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from momattn.analysis.capture import Delta, at_positions, kv_delta, record_inputs


@dataclass
class FtSequence:
    tokens: list[int]  # [<eot>] + demonstration tokens
    n_answer: int  # the last n_answer tokens carry the loss


@dataclass
class FtRun:
    delta: Delta  # M models
    losses: torch.Tensor  # (M, k) loss of each step (before its update)
    diverged: torch.Tensor  # (M,) bool: a non-finite loss or update at some step
    queries: list[list[torch.Tensor]] | None  # per model, per step: (L, n_tokens - 1, C) c_attn inputs of the
    # demonstration tokens (after the leading <eot>) in the forward pass that trained on them; their queries in
    # float64: capture.queries64


def paper_lr_grid() -> list[float]:
    """1..9 x 1e-1..1e-4 (36 values), ascending; parsed from text so that each is the float nearest its decimal
    (3 * 10.0 ** -1 is 0.30000000000000004, which results.json would show as the rate's name)."""
    return sorted(float(f"{m}e-{e}") for e in range(1, 5) for m in range(1, 10))


def finetune(model, sequences: Sequence[Sequence[FtSequence]], lrs: torch.Tensor | Sequence[float],
             record_queries: bool = False) -> FtRun:
    """SGD on the K/V update of M models: sequences[m] are model m's k training sequences, lrs[m] its rate."""
    M = len(sequences)
    k = len(sequences[0])
    if any(len(s) != k for s in sequences):
        raise ValueError("every model needs the same number of training sequences")
    lrs = torch.as_tensor(lrs, dtype=torch.float32)
    dev = next(model.parameters()).device
    delta = Delta.zeros(model, M)
    params = delta.w + (delta.b or [])
    for p in params:
        p.requires_grad_(True)
    losses = torch.zeros(M, k)
    diverged = torch.zeros(M, dtype=torch.bool)
    queries: list[list[torch.Tensor]] | None = [[] for _ in range(M)] if record_queries else None
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    model.eval()
    try:
        for p, _ in frozen:
            p.requires_grad_(False)  # no gradients for the base weights: only the Delta learns
        for j in range(k):
            batch = [s[j] for s in sequences]
            lens = [len(s.tokens) for s in batch]
            x = torch.zeros(M, max(lens), dtype=torch.long, device=dev)  # right-padded
            for m, s in enumerate(batch):
                x[m, : lens[m]] = torch.tensor(s.tokens, device=dev)
            # position t predicts token t + 1: the answer's n tokens are predicted from positions len-n-1..len-2
            n_max = max(s.n_answer for s in batch)
            pos = torch.tensor([[max(lens[m] - s.n_answer - 1 + min(a, s.n_answer - 1), 0) for a in range(n_max)]
                                for m, s in enumerate(batch)], device=dev)  # (M, n_max), repeats past n_answer
            tgt = torch.tensor([[s.tokens[lens[m] - s.n_answer + min(a, s.n_answer - 1)] for a in range(n_max)]
                                for m, s in enumerate(batch)], device=dev)
            keep = torch.tensor([[a < s.n_answer for a in range(n_max)] for s in batch], device=dev)
            with kv_delta(model, delta), record_inputs(model, queries is not None) as xs, at_positions(model, pos):
                logits = model(x)  # (M, n_max, V): only where an answer token is predicted
            nll = F.cross_entropy(logits.float().flatten(0, 1), tgt.flatten(), reduction="none").view(M, n_max)
            per_model = (nll * keep).sum(1)
            per_model = per_model / torch.tensor([s.n_answer for s in batch], device=dev)
            losses[:, j] = per_model.detach().cpu()
            bad = ~torch.isfinite(per_model.detach()).cpu()
            total = torch.where(torch.isfinite(per_model), per_model, torch.zeros_like(per_model)).sum()
            grads = torch.autograd.grad(total, params, allow_unused=True)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    if g is None:
                        continue
                    lr = lrs.to(dev).view(-1, *[1] * (p.dim() - 1))
                    p -= lr * g
                    bad |= ~torch.isfinite(p.flatten(1)).all(1).cpu()
            diverged |= bad
            if queries is not None:
                for m in range(M):
                    queries[m].append(torch.stack([x[0][m, 1 : lens[m]] for x in xs]).float().cpu())
    finally:
        for p, req in frozen:
            p.requires_grad_(req)
        model.train(was_training)
    for p in params:
        p.requires_grad_(False)
    return FtRun(delta, losses, diverged, queries)


@torch.no_grad()
def answer_scores(model, delta: Delta | None, contexts: Sequence[Sequence[int]],
                  answers: Sequence[Sequence[Sequence[int]]], batch_tokens: int = 8192) -> torch.Tensor:
    """(M, R, A) mean log-prob of each candidate answer after each context, under each of the M models of
    delta (one per model, the same R contexts for every model): the evaluator's rule, for many models at once.
    answers[r] are context r's candidates (token lists); missing ones (fewer answers) score -inf."""
    dev = next(model.parameters()).device
    M = delta.n_models if delta is not None else 1
    R, A = len(contexts), max(len(a) for a in answers)
    # one sequence per multi-token answer; a context whose answers are all one token needs only itself
    seqs: list[tuple[int, list[int], list[tuple[int, list[int]]]]] = []  # (context, tokens, [(answer, ids)])
    for r in range(R):
        if all(len(a) == 1 for a in answers[r]):
            seqs.append((r, list(contexts[r]), list(enumerate(answers[r]))))
        else:
            seqs.extend((r, list(contexts[r]) + list(a), [(j, a)]) for j, a in enumerate(answers[r]))
    width = max(len(t) for _, t, _ in seqs)
    n_pos = max(len(ids) for _, _, group in seqs for _, ids in group)
    x = torch.zeros(len(seqs), width, dtype=torch.long, device=dev)
    pos = torch.zeros(len(seqs), n_pos, dtype=torch.long, device=dev)
    for s, (r, toks, group) in enumerate(seqs):
        x[s, : len(toks)] = torch.tensor(toks, device=dev)
        n = len(contexts[r])
        pos[s] = torch.tensor([n - 1 + min(t, len(group[0][1]) - 1) for t in range(n_pos)], device=dev)
    out = torch.full((M, R, A), float("-inf"), dtype=torch.float64)
    models_per_batch = max(1, batch_tokens // (width * len(seqs)))
    for m0 in range(0, M, models_per_batch):
        d = delta.select(slice(m0, m0 + models_per_batch)) if delta is not None else None
        g = d.n_models if d is not None else 1
        with kv_delta(model, d), at_positions(model, pos.repeat(g, 1)):
            logp = F.log_softmax(model(x.repeat(g, 1)).float(), dim=-1).view(g, len(seqs), n_pos, -1)
        for s, (r, _, group) in enumerate(seqs):
            for j, ids in group:
                lp = logp[:, s, torch.arange(len(ids), device=dev), torch.tensor(ids, device=dev)]  # (g, n)
                out[m0 : m0 + g, r, j] = lp.double().mean(-1).cpu()
    return out
