"""A stochastic optimisation problem, as the SDE picture sees it.

SGD on L(x) = E_γ ℓ_γ(x) is described by the full gradient ∇L, a square root of the gradient-noise
covariance Σ(x) = Cov_γ ∇ℓ_γ(x), and, for PGPO, an information signal I. Everything is batched over
M paths, batch first:

    grad(x)        (M, d) → (M, d)        ∇L
    noise_sqrt(x)  (M, d) → (M, d, m)     S with S Sᵀ = Σ (or a constant (d, m) tensor)
    info(x)        (M, d) → (M,)          the state signal I(x)
    sample_grad(x, gen) → (M, d), or ((M, d), (M,))   a real stochastic gradient (and its mini-batch
                                          signal I_γ), drawn with the torch.Generator `gen`
    batches(x)     → grads (M, B, d), infos (M, B) or None, weights (B,)    every mini-batch γ with
                                          its probability, for the exact mini-batch-signal SDE

S may be any factor of Σ, square or not (for a finite sum, the per-sample deviations are one): the
SDE's law depends on Σ only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class Problem:
    """A problem for `weak_error`. Only `dim`, `x0`, `grad` and `noise_sqrt` are required.

    Args:
        dim: d.
        x0: the initial point, shape (d,) (every path starts there).
        grad: ∇L, (M, d) → (M, d).
        noise_sqrt: Σ^{1/2}, (M, d) → (M, d, m), or a constant tensor of shape (d, m).
        info: the state information signal, (M, d) → (M,); needed for PGPO with signal="state".
        sample_grad: real stochastic gradients (and mini-batch signals), see the module docstring.
        name: a label for tables and figures.
        loss: L, (M, d) → (M,), the default test function when given.
        lambda_max: the largest curvature of L when known; ladders with η·ρ_max·λ_max ≥ 2 are refused.
        batches: the enumerated mini-batches, for the mini-batch-signal SDE (see the module docstring).
        oracle: exact moments (see `sde_lab.oracles`), used as the reference when they cover the case.
    """

    dim: int
    x0: torch.Tensor
    grad: Callable[[torch.Tensor], torch.Tensor]
    noise_sqrt: Callable[[torch.Tensor], torch.Tensor] | torch.Tensor
    info: Callable[[torch.Tensor], torch.Tensor] | None = None
    sample_grad: Callable | None = None
    name: str | None = None
    loss: Callable[[torch.Tensor], torch.Tensor] | None = None
    lambda_max: float | None = None
    batches: Callable | None = None
    oracle: object | None = field(default=None, repr=False)

    def __post_init__(self):
        self.x0 = torch.as_tensor(self.x0, dtype=torch.float64).reshape(-1)
        if self.x0.shape != (self.dim,):
            raise ValueError(f"x0 must have shape ({self.dim},), got {tuple(self.x0.shape)}")
        if self.name is None:
            self.name = "problem"

    def noise(self, x: torch.Tensor) -> torch.Tensor:
        """Σ^{1/2} at x: (M, d, m), or the constant (d, m) factor."""
        if isinstance(self.noise_sqrt, torch.Tensor):
            return self.noise_sqrt.to(dtype=x.dtype, device=x.device)
        return self.noise_sqrt(x)

    def noise_dim(self) -> int:
        """m, the number of independent Brownian motions driving the SDE."""
        return self.noise(self.x0[None, :]).shape[-1]

    def sample(self, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A stochastic gradient from `sample_grad`, always as (grads (M, d), infos (M,) or None)."""
        if self.sample_grad is None:
            raise ValueError(f"problem {self.name!r} has no sample_grad: it cannot draw real mini-batches")
        out = self.sample_grad(x, gen)
        return out if isinstance(out, tuple) else (out, None)


def apply_noise(factor: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """S z for a factor (d, m) or (M, d, m) and noise z (M, m) → (M, d)."""
    if factor.dim() == 2:
        return z @ factor.T
    return torch.einsum("pdm,pm->pd", factor, z)


def deviation_factor(per_sample: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A factor S (M, d, B) of the weighted covariance of B vectors (M, B, d): S Sᵀ = Σ_b w_b (v_b − v̄)(v_b − v̄)ᵀ."""
    mean = torch.einsum("b,pbd->pd", weights, per_sample)
    return ((per_sample - mean[:, None, :]) * weights.sqrt()[None, :, None]).transpose(1, 2)
