"""Test functions g whose expectations E g(x_k) and E g(X_t) the weak error compares.

Weak order p means |E g(x_k) − E g(X_{kη})| ≤ C η^p for every smooth g of polynomial growth, so a
run should look at several: a coordinate, |x|², L, cos(aᵀx) (bounded, non-polynomial), |x|⁴.
Each maps x (M, d) to (M,).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from sde_lab.problem import expect_output

NAMES = ("loss", "norm2", "coord0", "cos", "norm4")


def cos_direction(dim: int) -> torch.Tensor:
    """a in cos(aᵀx): a fixed direction of norm 1, touching every coordinate."""
    return torch.full((dim,), 1.0 / math.sqrt(dim), dtype=torch.float64)


def resolve(test_fn, problem) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
    """(name, g) for a name in NAMES, a callable (M, d) → (M,), or None (L if known, else |x|²)."""
    if test_fn is None:
        test_fn = "loss" if problem.loss is not None else "norm2"
    if callable(test_fn):
        name = getattr(test_fn, "__name__", "custom")
        x = problem.x0.expand(2, -1).clone()
        expect_output(f"test_fn {name!r}", test_fn(x), ("M",), {"M": 2, "d": problem.dim}, x.dtype)
        return name, test_fn
    if test_fn == "loss":
        if problem.loss is None:
            raise ValueError(f"test_fn='loss' needs a problem with a loss; {problem.name!r} has none")
        return "loss", problem.loss
    if test_fn == "norm2":
        return "norm2", lambda x: (x * x).sum(dim=-1)
    if test_fn == "coord0":
        return "coord0", lambda x: x[:, 0]
    if test_fn == "cos":
        return "cos", lambda x: torch.cos(x @ cos_direction(x.shape[-1]).to(x))
    if test_fn == "norm4":
        return "norm4", lambda x: (x * x).sum(dim=-1) ** 2
    raise ValueError(f"test_fn must be one of {NAMES}, a callable or None, got {test_fn!r}")
