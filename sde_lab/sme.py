"""Stochastic modified equations (SMEs) of SGD and PGPO, each with the weak order it claims.

With t = kη and b the drift of the process's mean motion:

    SGD, order 1:            dX = −∇L dt + √η Σ^{1/2} dW                                   claims 1
    SGD, order 2:            dX = (b − (η/2) J_b b) dt + √η Σ^{1/2} dW,  b = −∇L          claims 2
                             (= −∇(L + (η/4)|∇L|²) dt + …)
    PGPO, state signal, b = −ρ(I(X)) ∇L:
      "scaled" (Li–Tai–E):   dX = b dt + ρ √η Σ^{1/2} dW                                   claims 1
      "paper":               dX = b dt + √η Σ^{1/2} dW      (diffusion unchanged)          claims 1
      order 2, "scaled":     dX = (b − (η/2) J_b b) dt + ρ √η Σ^{1/2} dW                   claims 2 (smooth ρ)
      order 2, "paper":      the same drift, diffusion unchanged                           claims 1
    PGPO, mini-batch signal (ρ_γ = ρ(I_γ) from the gradient's own sample):
      drift="correct":       dX = −E_γ[ρ_γ ∇ℓ_γ] dt + √η Cov_γ(ρ_γ ∇ℓ_γ)^{1/2} dW         claims 1
      drift="naive":         dX = −ρ(I(X)) ∇L dt + ρ √η Σ^{1/2} dW                         claims 0
                             (E[ρ_γ ∇ℓ_γ] ≠ ρ(I)∇L: an O(1) error that does not vanish with η)

The order-2 drift uses J_b b, computed by forward-mode differentiation of b (torch.func.jvp), so a
problem's functions must be written in torch. A hard cap (the linear form's kink) only promises order
1 for the order-2 SDEs; whether it costs order is left to measurement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from pgpo import Multiplier
from sde_lab.problem import Problem, deviation_factor

FORMS = ("scaled", "paper")
DRIFTS = ("correct", "naive")


@dataclass
class SDEModel:
    """dX = drift(X) dt + diffusion(X) dW, with diffusion (M, d, m) or a constant (d, m)."""

    name: str
    claimed_order: int
    drift: Callable[[torch.Tensor], torch.Tensor]
    diffusion: Callable[[torch.Tensor], torch.Tensor]
    noise_dim: int


def sme(problem: Problem, eta: float, multiplier: Multiplier | None = None, form: str = "scaled", order: int = 1,
        signal: str = "state", drift: str = "correct") -> SDEModel:
    """The SME of SGD (multiplier None) or PGPO at step `eta`; see the module docstring."""
    if form not in FORMS:
        raise ValueError(f"sde must be one of {FORMS}, got {form!r}")
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    if drift not in DRIFTS:
        raise ValueError(f"drift must be one of {DRIFTS}, got {drift!r}")
    root_eta = eta**0.5

    if multiplier is not None and signal == "minibatch":
        return _minibatch_sme(problem, eta, multiplier, order, drift)
    if multiplier is None:
        rho = None
        b = lambda x: -problem.grad(x)  # noqa: E731
        name, claimed = "SME", order
    else:
        if problem.info is None:
            raise ValueError(f"PGPO with signal='state' needs problem.info; {problem.name!r} has none")
        rho = lambda x: multiplier(problem.info(x))  # noqa: E731
        b = lambda x: -rho(x)[:, None] * problem.grad(x)  # noqa: E731
        name = f"SME[{form}]"
        smooth = multiplier.form != "linear"
        claimed = 2 if (order == 2 and form == "scaled" and smooth) else 1

    def diffusion(x):
        factor = problem.noise(x)
        if rho is None or form == "paper":
            return root_eta * factor
        scale = root_eta * rho(x)
        return scale[:, None, None] * (factor if factor.dim() == 3 else factor[None])

    drift_fn = b if order == 1 else _second_order(b, eta)
    return SDEModel(f"{name}{'-2' if order == 2 else ''}", claimed, drift_fn, diffusion, problem.noise_dim())


def _second_order(b: Callable, eta: float) -> Callable:
    """x ↦ b(x) − (η/2) J_b(x) b(x), with J_b b by one forward-mode pass."""

    def drift(x):
        value, jvp = torch.func.jvp(b, (x,), (b(x),))
        return value - 0.5 * eta * jvp

    return drift


def _minibatch_sme(problem: Problem, eta: float, multiplier: Multiplier, order: int, drift: str) -> SDEModel:
    if order != 1:
        raise ValueError("the mini-batch-signal SDE is implemented at order 1 only")
    if problem.batches is None:
        raise ValueError(f"the mini-batch-signal SDE needs problem.batches; {problem.name!r} has none")
    if drift == "naive":
        naive = sme(problem, eta, multiplier, "scaled", 1, "state")
        return SDEModel("SME[naive drift]", 0, naive.drift, naive.diffusion, naive.noise_dim)
    root_eta = eta**0.5

    def moments(x):
        grads, infos, weights = problem.batches(x)  # (M, B, d), (M, B), (B,)
        if infos is None:
            raise ValueError(f"problem {problem.name!r}: batches gives no mini-batch signal")
        return multiplier(infos)[:, :, None] * grads, weights  # ρ_γ ∇ℓ_γ: (M, B, d)

    def mean_drift(x):
        v, w = moments(x)
        return -torch.einsum("b,pbd->pd", w, v)

    def diffusion(x):
        v, w = moments(x)
        return root_eta * deviation_factor(v, w)

    batches = problem.batches(problem.x0[None, :])[0].shape[1]
    return SDEModel("SME[correct drift]", 1, mean_drift, diffusion, batches)
