"""The discrete processes: SGD and PGPO with step η.

    SGD:   x_{k+1} = x_k − η g_k
    PGPO:  x_{k+1} = x_k − η ρ_k g_k,   ρ_k = ρ(I(x_k))      (signal="state")
                                        ρ_k = ρ(I_γk(x_k))   (signal="minibatch": the same sample as g_k)

g_k is ∇L(x_k) + Σ^{1/2}(x_k) z_k with z_k standard normal (noise="gaussian", which can share its
normals with an SDE solver), or a real mini-batch gradient from the problem's `sample_grad`
(noise="sample").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pgpo import Multiplier
from sde_lab.problem import Problem, apply_noise

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

    def step(self, x: torch.Tensor, z: torch.Tensor | None = None, gen: torch.Generator | None = None) -> torch.Tensor:
        """x (M, d) → x' (M, d); z (M, m) standard normals for noise="gaussian", else `gen` draws a batch."""
        if self.noise == "gaussian":
            g = self.problem.grad(x) + apply_noise(self.problem.noise(x), z)
            signal = None
        else:
            g, signal = self.problem.sample(x, gen)
        if self.multiplier is None:
            return x - self.eta * g
        if self.signal == "state":
            signal = self.problem.info(x)
        elif signal is None:
            raise ValueError(f"problem {self.problem.name!r}: sample_grad returns no mini-batch signal")
        return x - self.eta * self.multiplier(signal)[:, None] * g
