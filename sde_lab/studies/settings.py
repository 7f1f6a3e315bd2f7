"""What the studies share: the settings of docs/weak_order.md's problems, and the ladders of learning rates."""

from __future__ import annotations

Q1D = dict(hessian=(2.0,), x0=(1.5,), noise_scale=0.5)  # the 1-D PGPO quadratic of docs/weak_order.md
MINIBATCH = dict(n=8, noise=2.0, dim=1)  # ρ(I_γ) and ∇ℓ_γ strongly correlated; 1-D, so the quantile coupling is tight
SPREAD_HESSIAN = (0.5, 1.0, 2.0)  # the stationary spread's quadratic (the diagonal of H)
ADAPTIVE = dict(sigma0=1.0, eps0=0.1, c1=1.0, c2=1.0)  # RMSprop and Adam in Malladi et al.'s scaling (sde_lab.adaptive)
ADAPTIVE_PROBLEMS = [  # (problem, its keyword arguments, the finest rung 2^-j of the full ladder, seed)
    ("quadratic", {}, 4, 11),
    ("logistic_regression", {}, 3, 12),
    ("self_distillation", {}, 3, 13),
]


def ladder(first: int, last: int) -> list[float]:
    """η = 2^-first, …, 2^-last, coarsest first."""
    return [2.0**-j for j in range(first, last + 1)]
