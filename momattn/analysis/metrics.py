"""Section 4's measurements (Dai et al. 2023; definitions in PAPER.md), per example and layer, then averaged.

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
Demonstration tokens = each demonstration's tokens in the prompt, separators excluded (GINC: the l symbols).
"""

from __future__ import annotations

import numpy as np
import torch


def kendall_tau_b(x, y) -> float:
    """Kendall's tau-b (ties handled), O(n^2); nan when either side is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    iu = np.triu_indices(len(x), k=1)
    dx = np.sign(x[:, None] - x[None, :])[iu]
    dy = np.sign(y[:, None] - y[None, :])[iu]
    n_x, n_y = np.count_nonzero(dx), np.count_nonzero(dy)  # pairs not tied in x / in y
    if n_x == 0 or n_y == 0:
        return float("nan")
    return float((dx * dy).sum() / np.sqrt(float(n_x) * float(n_y)))


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
                      q_train: torch.Tensor) -> list[float]:
    """Kendall(ICL, FT) per layer. s_icl (L, H, T) ICL scores of the last token; demo_pos the demonstration
    tokens' positions in the prompt; q_ft_last (L, C) the FT model's last query; q_train (L, n_demo, C)."""
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
