"""Section 4's measurements (Dai et al. 2023, Section 4: the definitions), per example and layer, then averaged.

    Rec2FTP      N(FT right, ZSL wrong, ICL right) / N(FT right, ZSL wrong)
    SimAOU(dFT)  cos(h_ICL - h_ZSL, h_FT - h_ZSL), h = attention output (c_proj input, memory term included)
                 of the last token, normalised to unit length; baseline SimAOU(random): h_RND from a random
                 K/V update of the same norm per layer (seeded) in place of the FT update
    SimAM        per head, cos of the last token's pre-softmax scores to the QUERY tokens only (the test
                 input, not the <eot> / separator before it): ICL vs ZSL ("before FT") and ICL vs FT ("after
                 FT"), averaged over heads
    Kendall      tau-b between ICL's attention weights (post-softmax, summed over heads) from the last token to
                 each demonstration token, and FT's "attention to training tokens" sum_h q'_i . q = q'_i . q:
                 q'_i the query of training token i recorded in the finetuning step that trained on it, q the
                 last token's query in the finetuned model's zero-shot pass (both before rotary: positions of
                 different sequences are not comparable); baseline: Kendall(ICL, seeded uniform noise).
                 The authors' reading of the ICL side, reported beside it: the pre-softmax scores summed over
                 heads, then a softmax over the demonstration tokens only (a ranking of the summed scores). The
                 two rank alike where the heads agree, and can differ by as much as the effects measured where
                 they do not.
Demonstration tokens = each demonstration's tokens in the prompt, separators excluded (GINC: the l symbols).
"""

from __future__ import annotations

import numpy as np
import torch


def kendall_tau_b(x, y) -> float:
    """Kendall's tau-b (ties handled) in O(n log n): sorted by x (ties by y), the discordant pairs are y's
    inversions (Knight's method); nan when either side is constant or holds a non-finite value (a diverged model's).
    tau-b = (n0 - n1 - n2 + n3 - 2 D) / sqrt((n0 - n1)(n0 - n2)): n0 pairs, n1 / n2 tied in x / y, n3 in both."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    rx, ry = np.unique(x, return_inverse=True)[1], np.unique(y, return_inverse=True)[1]  # (n,) dense ranks
    n0, n1, n2 = len(x) * (len(x) - 1) // 2, _tied_pairs(rx), _tied_pairs(ry)
    if n0 == n1 or n0 == n2:
        return float("nan")
    order = np.lexsort((ry, rx))
    n3 = _tied_pairs(np.unique(rx * (int(ry.max()) + 1) + ry, return_inverse=True)[1])
    concordant_less_discordant = n0 - n1 - n2 + n3 - 2 * _inversions(ry[order])
    return float(concordant_less_discordant / np.sqrt(float(n0 - n1) * float(n0 - n2)))


def _tied_pairs(ranks: np.ndarray) -> int:
    counts = np.bincount(ranks).astype(np.int64)
    return int((counts * (counts - 1) // 2).sum())


def _inversions(r: np.ndarray) -> int:
    """Pairs i < j with r[i] > r[j] (r: ranks >= 0), by bottom-up merging: at width w the array is sorted within
    blocks of w, and each right block's elements count the larger ones in the left block beside it."""
    n, m = len(r), int(r.max()) + 1
    idx, cur, total, w = np.arange(n), r.astype(np.int64), 0, 1
    while w < n:
        pair, left = idx // (2 * w), (idx // w) % 2 == 0  # (n,): pair of blocks; in its left block
        keys = pair * m + cur  # sorted within each block; pairs in order
        lk, rk, rp = keys[left], keys[~left], pair[~left]
        end = np.searchsorted(lk, (rp + 1) * m, side="left")  # where the left block of each right element's pair ends
        total += int((end - np.searchsorted(lk, rk, side="right")).sum())
        cur = np.sort(keys) - pair * m  # merged: sorted within blocks of 2w
        w *= 2
    return total


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine along the last dim, in float64; 0 where a vector is zero, nan where one is not finite (a diverged
    model's: layer_mean then leaves it out rather than averaging in a 0)."""
    a, b = a.double(), b.double()
    den = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(den == 0, torch.zeros_like(den), (a * b).sum(-1) / den.clamp_min(1e-300))


def unit(h: torch.Tensor) -> torch.Tensor:
    return h.double() / h.double().norm(dim=-1, keepdim=True).clamp_min(1e-300)


def simaou(h_zsl, h_icl, h_ft) -> torch.Tensor:
    """(N, L) SimAOU from (N, L, C) attention outputs."""
    z = unit(h_zsl)
    return cosine(unit(h_icl) - z, unit(h_ft) - z)


def simam(s_icl: torch.Tensor, s_other: torch.Tensor, n_query: int) -> torch.Tensor:
    """(L,) mean over heads of the cosine between two (L, H, T) score maps over their last n_query keys."""
    return cosine(s_icl[..., -n_query:], s_other[..., -n_query:]).mean(-1)


def kendall_per_layer(s_icl: torch.Tensor, demo_pos: np.ndarray, q_ft_last: torch.Tensor,
                      q_train: torch.Tensor, authors: bool = False) -> list[float]:
    """Kendall(ICL, FT) per layer. s_icl (L, H, T) ICL scores of the last token; demo_pos the demonstration
    tokens' positions in the prompt; q_ft_last (L, C) the FT model's last query; q_train (L, n_demo, C).
    authors: the ICL side as the authors' code reads it, the scores summed over heads with a softmax over the
    demonstration tokens, which ranks them as the summed scores do."""
    if authors:
        w = s_icl.double().sum(1)[:, demo_pos]  # (L, n_demo): a softmax over these keeps their order
    else:
        w = torch.softmax(s_icl.double(), dim=-1).sum(1)[:, demo_pos]  # (L, n_demo) summed over heads
    ft = torch.einsum("lnc,lc->ln", q_train.double(), q_ft_last.double())  # (L, n_demo)
    return [kendall_tau_b(w[i].numpy(), ft[i].numpy()) for i in range(w.size(0))]


def kendall_random(s_icl: torch.Tensor, demo_pos: np.ndarray, rng: np.random.Generator) -> list[float]:
    w = torch.softmax(s_icl.double(), dim=-1).sum(1)[:, demo_pos]
    return [kendall_tau_b(w[i].numpy(), rng.random(len(demo_pos))) for i in range(w.size(0))]


def rec2ftp(zsl_right, icl_right, ft_right) -> tuple[float | None, int]:
    """(Rec2FTP, its denominator N(FT right, ZSL wrong)); None when the denominator is 0."""
    z, i, f = (np.asarray(a, dtype=bool) for a in (zsl_right, icl_right, ft_right))
    den = int((f & ~z).sum())
    return (float((f & ~z & i).sum() / den) if den else None), den


def layer_mean(per_example: np.ndarray) -> tuple[list[float], float]:
    """(N, L) values -> (per-layer mean over examples, overall mean), ignoring nan."""
    a = np.asarray(per_example, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        per_layer = [float(np.nanmean(a[:, i])) if np.isfinite(a[:, i]).any() else float("nan")
                     for i in range(a.shape[1])]
    finite = [v for v in per_layer if np.isfinite(v)]
    return per_layer, (float(np.mean(finite)) if finite else float("nan"))
