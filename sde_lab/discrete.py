"""The discrete processes: SGD and PGPO with step η.

    SGD:   x_{k+1} = x_k − η g_k
    PGPO:  x_{k+1} = x_k − η ρ_k g_k,   ρ_k = ρ(I(x_k))      (signal="state")
                                        ρ_k = ρ(I_γk(x_k))   (signal="minibatch": the same sample as g_k)

g_k is ∇L(x_k) + Σ^{1/2}(x_k) z_k with z_k standard normal (noise="gaussian", which can share its
normals with an SDE solver), or a real mini-batch gradient (noise="sample").

Real mini-batches can still share randomness with an SDE solver when the problem enumerates its
batches (`Problem.batches`): a quantile coupling. Project the step's normals z on the leading
direction e of the process's own noise factor S (ζ = eᵀSz / |Sᵀe| ~ N(0, 1), independent of the
past), sort the batches by eᵀ(v_γ − v̄), and take the batch at the weighted quantile Φ(ζ). The batch
is drawn with exactly its probability, and its noise moves with the SDE's along e.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pgpo import Multiplier
from sde_lab.problem import Problem, apply_noise, deviation_factor

SIGNALS = ("state", "minibatch")
NOISES = ("gaussian", "sample")


@dataclass
class DiscreteProcess:
    """One of SGD / PGPO on `problem` at step `eta` (multiplier None = SGD)."""

    problem: Problem
    eta: float
    multiplier: Multiplier | None = None
    signal: str = "state"
    noise: str = "gaussian"

    def __post_init__(self):
        if self.signal not in SIGNALS:
            raise ValueError(f"signal must be one of {SIGNALS}, got {self.signal!r}")
        if self.noise not in NOISES:
            raise ValueError(f"noise must be one of {NOISES}, got {self.noise!r}")
        if self.signal == "minibatch" and self.noise != "sample":
            raise ValueError("signal='minibatch' needs real mini-batches: use noise='sample'")
        if self.multiplier is not None and self.signal == "state" and self.problem.info is None:
            raise ValueError(f"PGPO with signal='state' needs problem.info; {self.problem.name!r} has none")

    @property
    def name(self) -> str:
        return "SGD" if self.multiplier is None else f"PGPO[{self.signal}]"

    @property
    def time_step(self) -> float:
        """The SDE time one step stands for: η (t = kη)."""
        return self.eta

    def initial_state(self) -> torch.Tensor:
        """The state every path starts from, (d,): x0."""
        return self.problem.x0

    def step(self, x: torch.Tensor, z: torch.Tensor | None = None, gen: torch.Generator | None = None) -> torch.Tensor:
        """x (M, d) → x' (M, d); z (M, m) standard normals for noise="gaussian", else `gen` draws a batch."""
        if self.noise == "gaussian":
            g = self.problem.grad(x) + apply_noise(self.problem.factor(x), z)
            signal = None
        elif z is not None:
            return self._quantile_coupled_step(x, z)
        else:
            g, signal = self.problem.sample(x, gen)
        if self.multiplier is None:
            return x - self.eta * g
        if self.signal == "state":
            signal = self.problem.info(x)
        elif signal is None:
            raise ValueError(f"problem {self.problem.name!r}: sample_grad returns no mini-batch signal")
        return x - self.eta * self.multiplier(signal)[:, None] * g

    @property
    def couples(self) -> bool:
        """Whether the process can share the SDE's normals (Gaussian noise, or enumerable batches)."""
        return self.noise == "gaussian" or self.problem.batches is not None

    def _quantile_coupled_step(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """A real mini-batch step whose batch is chosen by the normals z (see the module docstring)."""
        grads, infos, weights = self.problem.batches(x)  # (M, B, d), (M, B), (B,)
        if self.multiplier is None:
            v = grads
        elif self.signal == "minibatch":
            v = self.multiplier(infos)[:, :, None] * grads
        else:
            v = self.multiplier(self.problem.info(x))[:, None, None] * grads
        factor = deviation_factor(v, weights)  # S: (M, d, B), columns √w_b (v_b − v̄)
        e = torch.linalg.eigh(factor @ factor.transpose(1, 2))[1][..., -1]  # leading direction (M, d)
        along = torch.einsum("pd,pdb->pb", e, factor)  # eᵀS: (M, B)
        norm = along.norm(dim=1)
        zeta = (along * z).sum(dim=1) / torch.where(norm > 0, norm, torch.ones_like(norm))
        order = torch.argsort(along / weights.sqrt(), dim=1)  # the batches sorted by eᵀ(v_b − v̄)
        cumulative = torch.cumsum(weights[order], dim=1)
        u = torch.special.ndtr(zeta)[:, None] * cumulative[:, -1:]
        pick = order.gather(1, torch.searchsorted(cumulative, u).clamp(max=v.shape[1] - 1))[:, 0]
        return x - self.eta * v[torch.arange(x.shape[0], device=x.device), pick]
