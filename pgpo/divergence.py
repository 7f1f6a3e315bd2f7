"""Divergences between categorical distributions given as log-probabilities.

All functions take log-probabilities `log_p`, `log_q` of shape (..., S), each normalised along the
last axis (entries may be −inf: zero mass), and return shape (...). They are differentiable in both
arguments, finite wherever the mathematics is (0·log 0 = 0; an −inf entry never produces NaN, in the
value or in the gradient), and keep the input dtype. A NaN entry is never read as zero mass: it makes
the divergence at its position NaN, so that a broken input reaches the caller as a non-finite value.

    KL(a ‖ b)  = Σ_s a_s (log a_s − log b_s)               (+inf where b_s = 0 < a_s)
    D_β(p, q)  = (1 − β)·KL(p ‖ M) + β·KL(q ‖ M),   M = (1 − β)·p + β·q

D_β is the generalised Jensen–Shannon divergence of SDPO (`docs/method.md` §1): β = 0 gives KL(q ‖ p),
β = 1 gives KL(p ‖ q), β = ½ the Jensen–Shannon divergence (≤ log 2).
"""

from __future__ import annotations

import math

import torch


def kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a ‖ b) = Σ_s a_s (log a_s − log b_s) over the last axis: (..., S), (..., S) → (...)."""
    support = log_a != -math.inf  # NaN counts as support: it must reach the sum, not vanish as zero mass
    # double `where`: masked entries must be finite *before* the product, or backward yields NaN
    safe_a = torch.where(support, log_a, torch.zeros_like(log_a))
    safe_b = torch.where(support, log_b, torch.zeros_like(log_b))
    terms = torch.exp(safe_a) * (safe_a - safe_b)
    return torch.where(support, terms, torch.zeros_like(terms)).sum(dim=-1)


def generalized_jsd(log_p: torch.Tensor, log_q: torch.Tensor, beta: float) -> torch.Tensor:
    """D_β(p, q) over the last axis: (..., S), (..., S) → (...).

    β = 0 and β = 1 are evaluated as the exact KLs (the mixture would otherwise be p or q itself).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta!r}")
    if beta == 0.0:
        return kl(log_q, log_p)
    if beta == 1.0:
        return kl(log_p, log_q)
    # log M = logaddexp(log(1−β) + log p, log β + log q), finite wherever p or q has mass; where
    # neither has, logaddexp(−inf, −inf) has a NaN gradient, so those entries are computed on zeros
    support = (log_p != -math.inf) | (log_q != -math.inf)  # NaN counts as support (see `kl`)
    zeros = torch.zeros_like(log_p)
    log_m = torch.logaddexp(torch.where(support, log_p, zeros) + math.log1p(-beta),
                            torch.where(support, log_q, zeros) + math.log(beta))
    log_m = torch.where(support, log_m, torch.full_like(log_m, -math.inf))
    return (1.0 - beta) * kl(log_p, log_m) + beta * kl(log_q, log_m)
