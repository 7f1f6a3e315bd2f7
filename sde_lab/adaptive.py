"""RMSprop and Adam, and PGPO on each, as discrete processes and as SDEs, in two scalings under which SDEs are
their limits, with any gradient-noise law.

The diffusive regime (Malladi, Lyu, Panigrahi & Arora, "On the SDEs and Scaling Rules for Adaptive Gradient
Algorithms", NeurIPS 2022, arXiv 2205.10287): as η → 0 with σ₀, ε₀, c₁, c₂ fixed,

    g = ∇L(θ) + s·n,  s = σ₀/η      (the gradient noise grows as η shrinks)
    lr = η,   ε = ε₀/η,   1 − β₁ = c₁η²,   1 − β₂ = c₂η²,   one step = h = η² of SDE time

The ballistic regime (the other non-trivial limit of Callisti, Romito & Triggiano, "Effective continuous equations
for adaptive SGD", arXiv 2509.21614, as this module reads it): the noise and ε stay O(1) and the learning rate is
the step itself,

    g = ∇L(θ) + s·n,  s = σ₀,   lr = h = η²,   ε = ε₀,   1 − βᵢ = cᵢh

so θ moves along its ODE with fluctuations of O(√h), as SGD under Li–Tai–E's scaling. In both, the ladder variable
is η and the SDE's time step h = η² (`weak_error` fits slopes in h).

n is the gradient noise in units of Σ^{1/2}: `Adaptive.noise` = "gaussian" (n = Σ^{1/2}ξ, ξ ~ N(0, I)), a law of
`NOISE_LAWS` ("rademacher", "laplace", "exponential": ξ with i.i.d. coordinates of that law, mean 0, variance 1,
drawn from the coupled normals by their quantile), or "sample" (n = ∇ℓ_γ − ∇L, the problem's real mini-batch γ).

The second moment is carried in units of the noise, u = v/s². The state of a path is (θ, u, t) for RMSprop and
(θ, m, u, t) for Adam, each block of width d except the clock t = k·h (width 1), which Adam's bias corrections
read, and, for the SDEs that depend on h (the ballistic ones, and those with v-noise), a last column holding h
itself (`Adaptive.carries_step`). Test functions see θ only.

Discrete (ρ = 1 without PGPO; PGPO scales the θ-update alone, the moments untouched), in both regimes:

    RMSprop:  u' = u + c₂h((∇L/s + n)² − u),   θ' = θ − ρ·h·(∇L + s·n)/(σ₀√u' + ε₀)
    Adam:     m' = m + c₁h(∇L + s·n − m),  u' as RMSprop's,
              θ' = θ − ρ·h·(m'/γ₁)·√γ₂/(σ₀√u' + ε₀√γ₂),   γᵢ = 1 − βᵢ^{k+1}

which are torch.optim.RMSprop(alpha=β₂, eps=ε) and torch.optim.Adam(betas=(β₁, β₂), eps=ε) at lr (the tests check
it). With γᵢ(t) = 1 − e^{−cᵢt} and P = σ₀√u + ε₀√γ₂ (γ₂ ≡ 1 for RMSprop), the SDEs, diffusive regime (Malladi):

    RMSprop:  dθ = −ρ P⁻¹ (∇L dt + σ₀ Σ^{1/2} dW),         du = c₂ (diag Σ − u) dt
    Adam:     dθ = −ρ (√γ₂/γ₁) P⁻¹ m dt,                     dm = c₁ (∇L − m) dt + c₁σ₀ Σ^{1/2} dW,
              du = c₂ (diag Σ − u) dt

optionally with v-noise (`v_noise`): u's own diffusion, √h·c₂ times a factor of Cov(n²) (and of its covariance
with θ's or m's noise, which vanishes for a symmetric law), as Callisti et al.'s equations carry it. Ballistic
regime, order 1 (b₀, the mean of one step's increment over h at h = 0):

    RMSprop:  dθ = −ρ P⁻¹∇L dt + √h·(θ's noise),     du = c₂ (∇L²/σ₀² + diag Σ − u) dt [+ √h·(u's noise)]
    Adam:     dθ = −ρ (√γ₂/γ₁) P⁻¹ m dt,   dm = c₁(∇L − m) dt + √h·(m's noise),   du as RMSprop's

and order 2: the drift b₀ + h(a₁ − ½ J_{b₀} b₀), a₁ the O(h) part of the step's mean (from u' and m' inside the
θ-update, and from the discrete bias corrections), with the whole one-step covariance as the diffusion — θ's (m's)
noise and u's, jointly (`sde_order`=2). ρ = ρ(I(θ)) for a state signal. For RMSprop the noise reaches θ directly,
so ρ scales θ's diffusion with its drift; for Adam θ has no diffusion (the noise reaches it through m), so ρ can
only scale the drift.

Which SDE claims which order, for which noise (`ADAPTIVE_FAMILIES`, `AdaptiveFamily.claimed_order`): in the
diffusive regime the noise is O(1) per unit of SDE time, so a step's third moment, h^{3/2}·E n³, is not O(h²): a
skewed law (E n³ ≠ 0; real mini-batches generically) makes every SDE there order ½ in h, a symmetric one leaves
order 1. In the ballistic regime a step's third moment is O(h³) whatever the law, and E n³ enters a₁, so the
order-2 SDE holds order 2 for every law; without u's noise it is O(h) off, order 1.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from pgpo import Multiplier
from sde_lab.problem import (BlockFactor, Problem, SampleDeviations, ScaledFactor, apply_noise, dense_factor,
                             last_call_cached, noise_variances, once_per_device, scale_factor)
from sde_lab.sme import SDEModel

KINDS = ("rmsprop", "adam")
RHO_IN = ("drift", "both")
REGIMES = ("diffusive", "ballistic")


@dataclass(frozen=True)
class NoiseLaw:
    """A law for the coordinates of ξ in n = Σ^{1/2}ξ: i.i.d., mean 0, variance 1, drawn from standard normals z by
    its quantile, ξ = F⁻¹(Φ(z)) (so it moves with the SDE's Brownian increments: a comonotone coupling)."""

    name: str
    skewness: float  # E ξ³
    excess_kurtosis: float  # E ξ⁴ − 3
    from_normal: Callable[[torch.Tensor], torch.Tensor]  # z (M, m) → ξ (M, m)

    @property
    def symmetric(self) -> bool:
        return self.skewness == 0.0


NOISE_LAWS = {
    "gaussian": NoiseLaw("gaussian", 0.0, 0.0, lambda z: z),
    # ±1 with probability ½ each: Φ(z) ≥ ½ ⇔ z ≥ 0
    "rademacher": NoiseLaw("rademacher", 0.0, -2.0, lambda z: torch.where(z >= 0, 1.0, -1.0).to(z)),
    # Laplace of scale 1/√2 (variance 1): F⁻¹(Φ(z)) = −sign(z)·(log 2 + log Φ(−|z|))/√2, in log space for the tails
    "laplace": NoiseLaw("laplace", 0.0, 3.0,
                        lambda z: -torch.sign(z) * (math.log(2.0) + torch.special.log_ndtr(-z.abs())) / math.sqrt(2.0)),
    # centred Exp(1): F⁻¹(Φ(z)) − 1 = −log(1 − Φ(z)) − 1 = −log Φ(−z) − 1
    "exponential": NoiseLaw("exponential", 2.0, 6.0, lambda z: -torch.special.log_ndtr(-z) - 1.0),
}
NOISES = (*NOISE_LAWS, "sample")


def skewed(problem: Problem, noise: str) -> bool:
    """Whether the gradient noise has a third moment at x0 (relative to its variance^{3/2}, above 1e-9): a law's
    skewness, or, for real mini-batches, the samples' own (`noise_chaos`)."""
    if noise != "sample":
        return not NOISE_LAWS[noise].symmetric
    _, _, second, third = noise_chaos(problem, noise, problem.x0[None, :])
    return bool((third.abs() > 1e-9 * second.clamp(min=1e-300) ** 1.5).any())


@dataclass(frozen=True)
class AdaptiveFamily:
    """One SDE that `adaptive_sde` builds: its arguments, its name and the weak order it claims (in h = η²) for a
    symmetric gradient noise; `claimed_order` gives it for any."""

    kind: str
    pgpo: bool
    rho_in: str | None  # where ρ enters besides θ's drift (PGPO only)
    name: str
    claims: int
    regime: str = "diffusive"
    order: int = 1  # the SDE's construction: b₀ (1) or b₀ + h(a₁ − ½J b₀) (2)
    v_noise: bool = False  # u's own diffusion

    def claimed_order(self, skew: bool) -> float:
        """The order claimed for a skewed (skew=True) or a symmetric gradient noise: in the diffusive regime a
        step's third moment h^{3/2}E n³ caps every SDE at ½; in the ballistic one it is O(h³) and changes nothing."""
        if skew and self.regime == "diffusive":
            return min(self.claims, 0.5)
        return self.claims

    def measured_with(self, multiplier: Multiplier, **setting) -> dict:
        """The keyword arguments of `weak_error` that measure this SDE: the optimizer `Adaptive(kind, **setting)` in
        this family's regime (with the SDE's order and v-noise), `multiplier` for PGPO (none otherwise), `rho_in`."""
        adaptive = Adaptive(self.kind, regime=self.regime, sde_order=self.order, v_noise=self.v_noise, **setting)
        return {"adaptive": adaptive, "multiplier": multiplier if self.pgpo else None, "rho_in": self.rho_in or "drift"}


# The claims follow where the discrete step carries ρ: on the whole θ-update, which for RMSprop holds the noise
# (so ρ scales θ's diffusion too) and for Adam holds m, whose noise ρ never touches. In the diffusive regime putting ρ
# anywhere else changes the SDE's O(1) noise (σ = σ₀/η), an error that does not shrink with η: order 0; in the
# ballistic one the noise is O(√h), so a misplaced ρ costs O(h): order 1, as SGD's paper-form SDE.
ADAPTIVE_FAMILIES = (
    AdaptiveFamily("rmsprop", False, None, "RMSprop-SDE", 1),
    AdaptiveFamily("adam", False, None, "Adam-SDE", 1),
    AdaptiveFamily("rmsprop", True, "both", "PGPO-RMSprop-SDE[ρ in θ's drift and diffusion]", 1),
    AdaptiveFamily("rmsprop", True, "drift", "PGPO-RMSprop-SDE[ρ in θ's drift only]", 0),
    AdaptiveFamily("adam", True, "drift", "PGPO-Adam-SDE[ρ in θ's drift only]", 1),
    AdaptiveFamily("adam", True, "both", "PGPO-Adam-SDE[ρ also on m's noise]", 0),
    # u's own noise in the diffusive regime: O(√h) there, so it moves the O(h) error's constant, not its order
    AdaptiveFamily("rmsprop", False, None, "RMSprop-SDE[v-noise]", 1, v_noise=True),
    # the ballistic regime: order 1 from b₀ alone; order 2 needs a₁, J b₀ and u's noise
    AdaptiveFamily("rmsprop", False, None, "RMSprop-SDE[ballistic]", 1, "ballistic"),
    AdaptiveFamily("rmsprop", False, None, "RMSprop-SDE-2[ballistic]", 2, "ballistic", 2, True),
    AdaptiveFamily("rmsprop", False, None, "RMSprop-SDE-2[ballistic, no v-noise]", 1, "ballistic", 2, False),
    AdaptiveFamily("adam", False, None, "Adam-SDE[ballistic]", 1, "ballistic"),
    AdaptiveFamily("adam", False, None, "Adam-SDE-2[ballistic]", 2, "ballistic", 2, True),
    AdaptiveFamily("adam", False, None, "Adam-SDE-2[ballistic, no v-noise]", 1, "ballistic", 2, False),
    AdaptiveFamily("rmsprop", True, "both", "PGPO-RMSprop-SDE-2[ballistic, ρ in θ's drift and diffusion]", 2,
                   "ballistic", 2, True),
    AdaptiveFamily("rmsprop", True, "drift", "PGPO-RMSprop-SDE-2[ballistic, ρ in θ's drift only]", 1, "ballistic", 2,
                   True),
    AdaptiveFamily("adam", True, "drift", "PGPO-Adam-SDE-2[ballistic, ρ in θ's drift]", 2, "ballistic", 2, True),
)


def family_named(name: str) -> AdaptiveFamily:
    """The row of `ADAPTIVE_FAMILIES` called `name`."""
    for f in ADAPTIVE_FAMILIES:
        if f.name == name:
            return f
    raise ValueError(f"no adaptive SDE named {name!r}; they are {[f.name for f in ADAPTIVE_FAMILIES]}")


def adaptive_family(kind: str, pgpo: bool, rho_in: str, regime: str = "diffusive", order: int = 1,
                    v_noise: bool = False) -> AdaptiveFamily:
    """The row of `ADAPTIVE_FAMILIES` that adaptive_sde builds for these arguments."""
    key = (kind, pgpo, rho_in if pgpo else None, regime, order, v_noise)
    for f in ADAPTIVE_FAMILIES:
        if (f.kind, f.pgpo, f.rho_in, f.regime, f.order, f.v_noise) == key:
            return f
    raise ValueError(f"no adaptive SDE for kind={kind!r}, pgpo={pgpo}, rho_in={rho_in!r}, regime={regime!r}, "
                     f"order={order}, v_noise={v_noise}")


@dataclass(frozen=True)
class Adaptive:
    """An adaptive optimizer in one of the SDE scalings: `kind`, the η-free constants σ₀, ε₀, c₁, c₂, the gradient
    noise, and which of its SDEs `adaptive_sde` builds (`sde_order`, `v_noise`; `weak_error` reads the SDE from
    here)."""

    kind: str = "adam"
    sigma0: float = 1.0  # the gradient noise is s·n: s = σ₀/η (diffusive) or σ₀ (ballistic)
    eps0: float = 0.1  # ε = ε₀/η (diffusive) or ε₀ (ballistic)
    c1: float = 1.0  # 1 − β₁ = c₁η² (Adam)
    c2: float = 1.0  # 1 − β₂ = c₂η²
    t0: float = 0.0  # start warm: at SDE time t₀ (step t₀/η²) with the moments of t₀ spent at x₀ (see initial_state)
    noise: str = "gaussian"  # a name in NOISE_LAWS, or "sample" (the problem's real mini-batches)
    regime: str = "diffusive"  # "diffusive" (Malladi et al.) or "ballistic"
    sde_order: int = 1  # 2: the ballistic order-2 SDE
    v_noise: bool = False  # u's own diffusion in the SDE

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("sigma0", "eps0", "c1", "c2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if isinstance(self.t0, bool) or not isinstance(self.t0, (int, float)) or not 0 <= self.t0 < math.inf:
            raise ValueError(f"t0 must be a finite number >= 0, got {self.t0!r}")
        if self.noise not in NOISES:
            raise ValueError(f"noise must be one of {NOISES}, got {self.noise!r}")
        if self.regime not in REGIMES:
            raise ValueError(f"regime must be one of {REGIMES}, got {self.regime!r}")
        if self.sde_order not in (1, 2) or isinstance(self.sde_order, bool):
            raise ValueError(f"sde_order must be 1 or 2, got {self.sde_order!r}")
        if self.sde_order == 2 and self.regime != "ballistic":
            # a step there is Euler–Maruyama-like for an SDE with O(1) diffusion: no O(h) drift correction alone
            # makes it order 2 (docs/weak_order.md)
            raise ValueError("an order-2 SDE is built in the ballistic regime only")
        if self.sde_order == 2 and self.t0 <= 0:
            raise ValueError("the order-2 SDE needs a warm start (t0 > 0): its h-correction divides by √u, 0 at t = 0")
        if not isinstance(self.v_noise, bool):
            raise ValueError(f"v_noise must be True or False, got {self.v_noise!r}")

    @property
    def carries_step(self) -> bool:
        """Whether the state ends with a column holding h: the SDE depends on it (ballistic, or with v-noise)."""
        return self.regime == "ballistic" or self.v_noise

    def noise_scale(self, eta: float) -> float:
        """s, the gradient noise's scale at step η: σ₀/η (diffusive) or σ₀ (ballistic)."""
        return self.sigma0 / eta if self.regime == "diffusive" else self.sigma0

    def hyperparameters(self, eta: float) -> dict:
        """The discrete optimizer's settings at step η: lr, β₁, β₂, ε, σ (the gradient noise's scale)."""
        diffusive = self.regime == "diffusive"
        return {"lr": eta if diffusive else eta**2, "beta1": 1.0 - self.c1 * eta**2, "beta2": 1.0 - self.c2 * eta**2,
                "eps": self.eps0 / eta if diffusive else self.eps0, "sigma": self.noise_scale(eta)}

    def blocks(self, d: int) -> dict[str, slice]:
        """Where each part of the state lies: θ, (m,) u, t (and h, where the SDE reads it)."""
        names = ["theta", "u"] if self.kind == "rmsprop" else ["theta", "m", "u"]
        parts = {n: slice(i * d, (i + 1) * d) for i, n in enumerate(names)}
        parts["t"] = slice(len(names) * d, len(names) * d + 1)
        if self.carries_step:
            parts["h"] = slice(len(names) * d + 1, len(names) * d + 2)
        return parts

    def state_dim(self, d: int) -> int:
        return (2 if self.kind == "rmsprop" else 3) * d + 1 + int(self.carries_step)

    def initial_state(self, x0: torch.Tensor, problem: Problem | None = None, eta: float | None = None) -> torch.Tensor:
        """The state at the start, (D,): (θ₀, 0, …, 0) at t₀ = 0, as torch's optimizers start. With t₀ > 0 (the
        `problem` is then needed), the moments are those of t₀ of SDE time spent at x₀ on the SDE's mean motion,
        m = (1 − e^{−c₁t₀})∇L(x₀) and u = (1 − e^{−c₂t₀})·E(∇L/s + n)² (diag Σ in the diffusive regime, where
        ∇L/s = O(η)), and the clock reads t₀: the optimizer met mid-run, past the start where Adam's bias
        corrections are 0/0. Where the state carries h, `eta` gives it (h = η²)."""
        state = torch.cat([x0, x0.new_zeros(self.state_dim(x0.shape[0]) - x0.shape[0])])
        parts = self.blocks(x0.shape[0])
        if self.carries_step:
            if eta is None:
                raise ValueError("this SDE depends on h: the initial state needs eta")
            state[parts["h"]] = eta**2
        if self.t0 == 0:
            return state
        if problem is None:
            raise ValueError("a warm start (t0 > 0) needs the problem, for ∇L(x₀) and Σ(x₀)")
        point = x0[None, :]
        target = noise_variances(problem.factor(point)).reshape(-1)
        if self.regime == "ballistic":
            target = target + (problem.grad(point).reshape(-1) / self.sigma0) ** 2
        # the SDE's moments after t₀ at a standing x₀ (dm = c₁(∇L − m)dt, du = c₂(target − u)dt from 0)
        state[parts["u"]] = -math.expm1(-self.c2 * self.t0) * target
        if self.kind == "adam":
            state[parts["m"]] = -math.expm1(-self.c1 * self.t0) * problem.grad(point).reshape(-1)
        state[parts["t"]] = self.t0
        return state


def _gammas(setting: Adaptive, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """γ₁(t), γ₂(t) = 1 − e^{−cᵢt} for Adam's bias corrections, (M, 1) each; ones for RMSprop."""
    if setting.kind == "rmsprop":
        return torch.ones_like(t), torch.ones_like(t)
    return -torch.expm1(-setting.c1 * t), -torch.expm1(-setting.c2 * t)


def _coupled_batch(grads: torch.Tensor, weights: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The deviation g_b − ḡ (M, d) of the mini-batch b that the normals z (M, B) select: projected on the leading
    direction e of the deviations' covariance, ζ = eᵀSz/|Sᵀe| ~ N(0, 1) with S's columns √w_b(g_b − ḡ) (the SDE's
    factor, so ζ moves with its noise); the batches sorted by eᵀ(g_b − ḡ), b is the one at the weighted quantile
    Φ(ζ). Each b is drawn with exactly its probability w_b. grads (M, B, d), weights (B,)."""
    deviations = grads - torch.einsum("b,pbd->pd", weights, grads)[:, None, :]
    factor = (deviations * weights.sqrt()[None, :, None]).transpose(1, 2)  # (M, d, B)
    e = torch.linalg.eigh(factor @ factor.transpose(1, 2))[1][..., -1]  # (M, d)
    along = torch.einsum("pd,pdb->pb", e, factor)  # (M, B)
    norm = along.norm(dim=1)
    zeta = (along * z).sum(dim=1) / torch.where(norm > 0, norm, torch.ones_like(norm))
    order = torch.argsort(along / weights.sqrt(), dim=1)
    cumulative = torch.cumsum(weights[order], dim=1)
    quantile = torch.special.ndtr(zeta)[:, None] * cumulative[:, -1:]
    pick = order.gather(1, torch.searchsorted(cumulative, quantile).clamp(max=grads.shape[1] - 1))[:, 0]
    return deviations[torch.arange(grads.shape[0], device=grads.device), pick]


@dataclass
class AdaptiveProcess:
    """RMSprop or Adam (PGPO on it with a `multiplier`, state signal) on `problem` at step `eta`, in the scaling
    and with the gradient noise of `setting` (`noise`, when given, replaces the setting's); its state (M, D) is laid
    out as `setting.blocks` says. One step is h = η² of SDE time."""

    problem: Problem
    eta: float
    setting: Adaptive
    multiplier: Multiplier | None = None
    noise: str | None = None

    def __post_init__(self):
        if self.noise is not None and self.noise != self.setting.noise:
            self.setting = dataclasses.replace(self.setting, noise=self.noise)
        self.noise = self.setting.noise
        if self.noise == "sample" and self.problem.sample_grad is None and self.problem.batches is None:
            raise ValueError(f"noise='sample' needs real mini-batches; {self.problem.name!r} has no sample_grad")
        if self.multiplier is not None and self.problem.info is None:
            raise ValueError(f"PGPO needs problem.info; {self.problem.name!r} has none")
        start = self.setting.t0 / self.eta**2  # the step count t₀ stands for: Adam's bias corrections read it
        if abs(start - round(start)) > 1e-9 * max(1.0, start):
            raise ValueError(f"t0 = {self.setting.t0:g} is not a whole number of steps of h = η² = {self.eta**2:g}")
        self._noise_dim = self.problem.noise_dim()

    @property
    def name(self) -> str:
        base = {"rmsprop": "RMSprop", "adam": "Adam"}[self.setting.kind]
        return base if self.multiplier is None else f"PGPO-{base}[state]"

    @property
    def time_step(self) -> float:
        """The SDE time one step stands for: h = η²."""
        return self.eta**2

    def initial_state(self) -> torch.Tensor:
        """The start (D,): see `Adaptive.initial_state`."""
        return self.setting.initial_state(self.problem.x0, self.problem, self.eta)

    @property
    def couples(self) -> bool:
        """Whether it can take the SDE's normals (sde_lab.coupling): a law, by its quantile; real mini-batches when
        the problem enumerates them, by the batch at the quantile of their projection."""
        return self.noise != "sample" or self.problem.batches is not None

    def gradient_noise(self, theta: torch.Tensor, z: torch.Tensor | None = None, gen=None) -> torch.Tensor:
        """n (M, d), the gradient noise in units of Σ^{1/2}: from the normals z (M, ≥ m; the first m columns are
        the SDE's θ noise), or, for real mini-batches without z, a batch drawn with `gen`."""
        if self.noise == "sample":
            if z is None:
                grads, _ = self.problem.sample(theta, gen)
                return grads - self.problem.grad(theta)
            grads, _, weights = self.problem.batches(theta)
            return _coupled_batch(grads, weights, z[:, :weights.shape[0]])
        return apply_noise(self.problem.factor(theta), NOISE_LAWS[self.noise].from_normal(z[:, :self._noise_dim]))

    def step(self, state: torch.Tensor, z: torch.Tensor | None = None, gen=None,
             n: torch.Tensor | None = None) -> torch.Tensor:
        """state (M, D) → state' (M, D); z (M, K) standard normals (K ≥ m), or `gen` for uncoupled mini-batches, or
        the gradient noise n (M, d) itself (to enumerate a step's outcomes)."""
        s, d, h = self.setting, self.problem.dim, self.eta**2
        parts = s.blocks(d)
        theta, u, t = state[:, parts["theta"]], state[:, parts["u"]], state[:, parts["t"]]
        scale = s.noise_scale(self.eta)
        grad = self.problem.grad(theta)
        noise = self.gradient_noise(theta, z, gen) if n is None else n
        scaled_grad = grad / scale + noise  # g/s: the gradient in units of its noise
        u_next = u + s.c2 * h * (scaled_grad.square() - u)
        rho = 1.0 if self.multiplier is None else self.multiplier(self.problem.info(theta))[:, None]
        tail = [t + h] + ([state[:, parts["h"]]] if s.carries_step else [])
        if s.kind == "rmsprop":
            update = h * scale * scaled_grad / (s.sigma0 * u_next.sqrt() + s.eps0)
            return torch.cat([theta - rho * update, u_next, *tail], dim=1)
        m = state[:, parts["m"]]
        m_next = m + s.c1 * h * (scale * scaled_grad - m)
        # the bias corrections of step k + 1: 1 − β^{k+1}, with k + 1 = t'/h
        k1 = torch.round((t + h) / h)
        g1 = -torch.expm1(k1 * math.log1p(-s.c1 * h))
        g2 = -torch.expm1(k1 * math.log1p(-s.c2 * h))
        update = h * (m_next / g1) * g2.sqrt() / (s.sigma0 * u_next.sqrt() + s.eps0 * g2.sqrt())
        return torch.cat([theta - rho * update, m_next, u_next, *tail], dim=1)


def noise_chaos(problem: Problem, noise: str, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                            torch.Tensor]:
    """The joint law of one step's gradient noise n and of its square, to second order: factors `lin`, `square`
    (M, d, K) with (n, n² − E n²) having the covariance of (lin·w, square·w), w ~ N(0, I_K), and the moments
    E n², E n³ (M, d) — at θ (M, d).

    For a law, n = Sξ with S (d, m) or (M, d, m) and ξ i.i.d. of skewness κ₃, excess kurtosis κ₄: in the variables
    ζ = (ξ_k; ξ_k² − 1; ξ_kξ_l for k < l), n_i = Σ_k S_ik ξ_k and n_i² − E n_i² = Σ_k S_ik²(ξ_k² − 1)
    + 2Σ_{k<l} S_ik S_il ξ_kξ_l, and Cov ζ has the 2×2 blocks [[1, κ₃], [κ₃, κ₄ + 2]] (the pairs: I), whose
    factor [[1, 0], [κ₃, r]], r = √(κ₄ + 2 − κ₃²), puts w_k on ξ_k itself: K = 2m + m(m − 1)/2, and the first m
    columns are n's. For real mini-batches the columns are the samples', √w_b(n_b, n_b² − E n²): K = B, exact."""
    if noise == "sample":
        grads, _, weights = problem.batches(theta)
        deviations = grads - torch.einsum("b,pbd->pd", weights, grads)[:, None, :]  # n_b: (M, B, d)
        squares = deviations.square()
        second = torch.einsum("b,pbd->pd", weights, squares)
        root = weights.sqrt()[None, :, None]
        lin = (deviations * root).transpose(1, 2)
        square = ((squares - second[:, None, :]) * root).transpose(1, 2)
        return lin, square, second, torch.einsum("b,pbd->pd", weights, squares * deviations)
    law = NOISE_LAWS[noise]
    factor = problem.factor(theta)
    factor = factor.dense() if isinstance(factor, SampleDeviations) else factor
    factor = factor.expand(theta.shape[0], -1, -1) if factor.dim() == 2 else factor  # (M, d, m)
    m = factor.shape[-1]
    sq = factor.square()
    r = math.sqrt(max(law.excess_kurtosis + 2.0 - law.skewness**2, 0.0))
    k, l = torch.triu_indices(m, m, offset=1, device=theta.device)
    pairs = 2.0 * factor[..., k] * factor[..., l]  # (M, d, m(m − 1)/2)
    lin = torch.cat([factor, torch.zeros_like(factor), torch.zeros_like(pairs)], dim=-1)
    square = torch.cat([law.skewness * sq, r * sq, pairs], dim=-1)
    return lin, square, sq.sum(dim=-1), law.skewness * (sq * factor).sum(dim=-1)


def _along_itself(b: Callable, x: torch.Tensor, rel: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """b(x) and J_b(x)·b(x), (M, D) each: the derivative of b along b itself, by a central difference with the step
    δ = rel/(1 + max|b|) per path (its error, O(δ²) plus rounding 1e-16/δ, is far below the h·J b it enters at; two
    evaluations of b cost a tenth of reverse mode twice on these small states)."""
    value = b(x)
    delta = rel / (1.0 + value.abs().amax(dim=1, keepdim=True))  # (M, 1)
    shift = delta * value
    return value, (b(x + shift) - b(x - shift)) / (2.0 * delta)


def adaptive_sde(problem: Problem, setting: Adaptive, multiplier: Multiplier | None = None,
                 rho_in: str = "drift") -> SDEModel:
    """The SDE of `setting`'s optimizer (PGPO on it with a `multiplier`, state signal) on the state (M, D), in the
    setting's regime, of its `sde_order`, with or without v-noise; its claimed order is the family's for the
    setting's noise (`AdaptiveFamily.claimed_order`).

    rho_in, where PGPO's ρ enters besides θ's drift: "drift" (nowhere else) or "both" (the noise's way into θ
    too, as in SGD's scaled SME: θ's diffusion for RMSprop, m's diffusion for Adam — which the discrete Adam
    does not do, since ρ leaves the moments untouched). Ignored without a multiplier."""
    if rho_in not in RHO_IN:
        raise ValueError(f"rho_in must be 'drift' or 'both', got {rho_in!r}")
    if setting.noise == "sample" and problem.batches is None:
        raise ValueError(f"the SDE of real mini-batch noise needs problem.batches; {problem.name!r} has none")
    declared = adaptive_family(setting.kind, multiplier is not None, rho_in, setting.regime, setting.sde_order,
                               setting.v_noise)
    claimed = declared.claimed_order(skewed(problem, setting.noise))
    if setting.carries_step:
        drift, diffusion, noise_dim = _joint_sde(problem, setting, multiplier, rho_in)
        return SDEModel(declared.name, claimed, drift, diffusion, noise_dim)
    s, d = setting, problem.dim
    parts = s.blocks(d)
    dim = s.state_dim(d)
    noise_dim = problem.noise_dim()

    # one θ view per state, so the drift and the diffusion at the same state share the problem's cached work
    # (a finite sum's per-sample coefficients) and ρ(θ), instead of each computing them again
    theta_of = last_call_cached(lambda state: state[:, parts["theta"]])
    variances = lambda theta: noise_variances(problem.factor(theta))  # noqa: E731  diag Σ: (d,) or (M, d)
    m_noise = lambda theta: scale_factor(problem.factor(theta), -s.c1 * s.sigma0)  # noqa: E731  −c₁σ₀Σ^{1/2}
    if isinstance(problem.noise_sqrt, torch.Tensor):  # a constant Σ^{1/2}: both made once, not at every sub-step
        variances, m_noise = once_per_device(variances), once_per_device(m_noise)

    @last_call_cached
    def rho(theta):  # (M, 1)
        return multiplier(problem.info(theta))[:, None]

    rho_on_noise = multiplier is not None and rho_in == "both"

    def preconditioner(u, root_g2=None):  # P = σ₀√u + ε₀√γ₂, (M, d); RMSprop has γ₂ = 1
        p = s.sigma0 * u.clamp(min=0.0).sqrt()
        return p + s.eps0 if root_g2 is None else p + s.eps0 * root_g2

    def minus_rho_times(theta, x):  # −ρ(θ)·x, or −x for the optimizer alone
        return -x if multiplier is None else x * -rho(theta)

    def drift(state):
        theta, u, t = theta_of(state), state[:, parts["u"]], state[:, parts["t"]]
        grad = problem.grad(theta)
        du = s.c2 * (variances(theta) - u)
        if s.kind == "rmsprop":
            return torch.cat([minus_rho_times(theta, grad / preconditioner(u)), du, torch.ones_like(t)], dim=1)
        m = state[:, parts["m"]]
        g1, g2 = _gammas(s, t)
        root_g2 = g2.sqrt()
        # at t = 0, m/γ₁ and √γ₂/P are both 0/0 (m = u = 0, γ₁ = γ₂ = 0): nothing has moved yet, so θ's drift
        # there is taken as 0; for t > 0 it is finite (√γ₂/P → 1/(σ₀√diag Σ + ε₀), m/γ₁ ~ t^{-1/2} integrable)
        ratio = torch.where(g1 > 0, m * (root_g2 / g1) / preconditioner(u, root_g2), 0.0)
        return torch.cat([minus_rho_times(theta, ratio), s.c1 * (grad - m), du, torch.ones_like(t)], dim=1)

    def diffusion(state):
        theta, u = theta_of(state), state[:, parts["u"]]
        # Σ^{1/2}: (d, m), (M, d, m) or SampleDeviations, never padded to (M, D, m); signs as the coupling needs them
        # (the process's normals are z = −ΣΔW/√h); the law is the same either way
        if s.kind == "rmsprop":
            scale = s.sigma0 / preconditioner(u)  # (M, d)
            scale = rho(theta) * scale if rho_on_noise else scale
            return BlockFactor(dim, parts["theta"], ScaledFactor(scale, problem.factor(theta)))
        noise = m_noise(theta)
        return BlockFactor(dim, parts["m"], ScaledFactor(rho(theta)[:, 0], noise) if rho_on_noise else noise)

    return SDEModel(declared.name, claimed, drift, diffusion, noise_dim)


def _joint_sde(problem: Problem, s: Adaptive, multiplier: Multiplier | None, rho_in: str):
    """(drift, diffusion, noise_dim) of the SDEs that read h from the state: the ballistic ones and those with
    v-noise. The diffusion is one step's covariance over h, as a dense factor of θ's (RMSprop) or m's (Adam) rows
    and u's, in the normals of `noise_chaos` (so the process's own noise takes their first columns)."""
    d = problem.dim
    parts = s.blocks(d)
    dim = s.state_dim(d)
    ballistic = s.regime == "ballistic"
    rows = slice(0, 2 * d) if s.kind == "rmsprop" else slice(d, 3 * d)  # (θ, u) or (m, u): contiguous
    noise_dim = noise_chaos(problem, s.noise, problem.x0[None, :])[0].shape[-1] if s.v_noise else (
        problem.batches(problem.x0[None, :])[2].shape[0] if s.noise == "sample" else problem.noise_dim())
    theta_of = last_call_cached(lambda state: state[:, parts["theta"]])
    chaos = last_call_cached(lambda theta: noise_chaos(problem, s.noise, theta))
    if isinstance(problem.noise_sqrt, torch.Tensor) and s.noise != "sample":
        # a constant Σ^{1/2} and a law: the factors and moments are the same at every state, made once per device
        fixed = once_per_device(lambda theta: noise_chaos(problem, s.noise, theta[:1]))
        chaos = last_call_cached(lambda theta: tuple(v.expand(theta.shape[0], *v.shape[1:]) for v in fixed(theta)))
    rho_on_noise = multiplier is not None and rho_in == "both"

    def rho(theta):  # (M, 1)
        return torch.ones_like(theta[:, :1]) if multiplier is None else multiplier(problem.info(theta))[:, None]

    def scale_of(state):  # s (M, 1): σ₀/√h (diffusive) or σ₀ (ballistic)
        return s.sigma0 / state[:, parts["h"]].sqrt() if not ballistic else torch.full_like(state[:, :1], s.sigma0)

    def drift0(state):
        """b₀: the mean of one step's increment over h, at h = 0 (Malladi's drift in the diffusive regime)."""
        theta, u, t = theta_of(state), state[:, parts["u"]], state[:, parts["t"]]
        grad, second = problem.grad(theta), chaos(theta)[2]
        target = second + (grad / s.sigma0).square() if ballistic else second  # E(∇L/s + n)², at O(1)
        du = s.c2 * (target - u)
        g1, g2 = _gammas(s, t)
        root_g2 = g2.sqrt()
        p = s.sigma0 * u.clamp(min=0.0).sqrt() + s.eps0 * root_g2
        ones, zeros = torch.ones_like(t), torch.zeros_like(t)
        if s.kind == "rmsprop":
            return torch.cat([-rho(theta) * grad / p, du, ones, zeros], dim=1)
        m = state[:, parts["m"]]
        ratio = torch.where(g1 > 0, m * (root_g2 / g1) / p, 0.0)  # 0/0 at t = 0: see adaptive_sde
        return torch.cat([-rho(theta) * ratio, s.c1 * (grad - m), du, ones, zeros], dim=1)

    def correction(state):
        """a₁ (M, D): the O(h) part of one step's mean increment over h (ballistic regime, s = σ₀)."""
        theta, u, t = theta_of(state), state[:, parts["u"]], state[:, parts["t"]]
        grad = problem.grad(theta)
        _, _, second, third = chaos(theta)
        root_u = u.clamp(min=0.0).sqrt()
        out = torch.zeros_like(state)
        if s.kind == "rmsprop":
            p = s.sigma0 * root_u + s.eps0
            # θ' = θ − ρh(∇L + σ₀n)/(σ₀√u' + ε₀), u' = u + c₂h(q − u): 1/(σ₀√u' + ε₀) = 1/P − σ₀c₂h(q − u)/(2√u P²),
            # and E[(∇L + σ₀n)(q − u)] = ∇L(∇L²/σ₀² + 3E n² − u) + σ₀E n³
            mean = grad * ((grad / s.sigma0).square() + 3.0 * second - u) + s.sigma0 * third
            out[:, parts["theta"]] = rho(theta) * s.sigma0 * s.c2 * mean / (2.0 * root_u * p.square())
            return out
        m = state[:, parts["m"]]
        g1, g2 = _gammas(s, t)
        root_g2 = g2.sqrt()
        p = s.sigma0 * root_u + s.eps0 * root_g2
        # θ' = θ − ρh F(m', u', γ₁', γ₂') with F = (m/γ₁)√γ₂/P: to O(h), E m' = m + c₁h(∇L − m), E u' = u + c₂h(E q − u)
        # and the discrete γᵢ' = 1 − (1 − cᵢh)^{t/h + 1} = γᵢ(t) + h e^{−cᵢt}(cᵢ + cᵢ²t/2)
        d_m = root_g2 / (g1 * p)
        d_u = -(m / g1) * root_g2 * s.sigma0 / (2.0 * root_u * p.square())
        d_g1 = -(m / g1.square()) * root_g2 / p
        d_g2 = (m / g1) * s.sigma0 * root_u / (2.0 * root_g2 * p.square())
        step_g1 = torch.exp(-s.c1 * t) * (s.c1 + 0.5 * s.c1**2 * t)
        step_g2 = torch.exp(-s.c2 * t) * (s.c2 + 0.5 * s.c2**2 * t)
        target = second + (grad / s.sigma0).square()
        change = (d_m * s.c1 * (grad - m) + d_u * s.c2 * (target - u) + d_g1 * step_g1 + d_g2 * step_g2)
        out[:, parts["theta"]] = -rho(theta) * change
        return out

    def drift(state):
        if s.sde_order == 1:
            return drift0(state)
        value, along = _along_itself(drift0, state)
        return value + state[:, parts["h"]] * (correction(state) - 0.5 * along)

    def diffusion(state):
        theta, u = theta_of(state), state[:, parts["u"]]
        root_h = state[:, parts["h"]].sqrt()[:, :, None]  # (M, 1, 1)
        lin, square, _, _ = chaos(theta)
        if not s.v_noise:
            lin = lin[..., :noise_dim]
        scale = scale_of(state)[:, :, None]
        # −√h × (the process's coefficient of (n, n² − E n²)): its normals are z = −ΣΔW/√h
        if s.kind == "rmsprop":
            p = s.sigma0 * u.clamp(min=0.0).sqrt() + s.eps0
            top = root_h * scale * lin / p[:, :, None]
            top = rho(theta)[:, :, None] * top if rho_on_noise else top
        else:
            top = -s.c1 * root_h * scale * lin
            top = rho(theta)[:, :, None] * top if rho_on_noise else top
        if not s.v_noise:
            return BlockFactor(dim, parts["theta"] if s.kind == "rmsprop" else parts["m"], top)
        grad = problem.grad(theta)
        bottom = -s.c2 * root_h * (2.0 * (grad[:, :, None] / scale) * lin + square)
        return BlockFactor(dim, rows, torch.cat([top, bottom], dim=1))

    return drift, diffusion, noise_dim


def exact_oracle(problem: Problem, setting: Adaptive, multiplier: Multiplier | None, test: str):
    """The exact oracle of this measurement (`sde_lab.oracles.AdaptiveQuadraticOracle`), or None where there is none:
    a quadratic with a constant noise factor, no PGPO (ρ(I(θ)) makes the drift nonlinear), the diffusive regime's
    linear SDEs, Adam warm, and a test function it covers."""
    from sde_lab.oracles import AdaptiveQuadraticOracle, QuadraticOracle

    covered = (isinstance(problem.oracle, QuadraticOracle) and isinstance(problem.noise_sqrt, torch.Tensor)
               and multiplier is None and setting.regime == "diffusive" and not setting.v_noise
               and (setting.kind == "rmsprop" or setting.t0 > 0) and test in AdaptiveQuadraticOracle.TESTS)
    return AdaptiveQuadraticOracle.of(problem, setting) if covered else None


def adaptive_weak_error(problem: Problem, etas, horizon: float, setting: Adaptive, multiplier: Multiplier | None = None,
                        rho_in: str = "drift", test_fn="norm2", paths: int = 4000, seed: int = 0,
                        reference: str = "auto", refine: int | None = None, progress: bool = False):
    """The weak error of `setting`'s optimizer against its SDE on the ladder `etas` (h = η²), as `weak_error`
    measures it, with an exact reference where one exists.

    reference: "exact" (or an error), "em" (`weak_error`'s: Euler–Maruyama at h/2^refine, refine 4 by default,
    with Richardson, coupled), or "auto" (exact where `exact_oracle` covers the case). The exact reference keeps
    the coupling as a control variate: each path's g(x_K) − g(Y_T) against Euler–Maruyama at dt = h/2^refine
    (refine 1 by default, no Richardson), plus that scheme's bias E g(Y_T) − E g(X_T), which the oracle gives
    exactly at every checkpoint. The variance is the coupled one, the reference has no bias at all, and the solve is
    twelve times cheaper than the "em" one. Returns a `WeakErrorResult` (`reference` says which)."""
    from sde_lab import observables
    from sde_lab.fit import polynomial_fit, slope_fit
    from sde_lab.weak_error import weak_error  # it imports this module

    if reference not in ("auto", "exact", "em"):
        raise ValueError(f"reference must be 'auto', 'exact' or 'em', got {reference!r}")
    test, _ = observables.resolve(test_fn, problem)
    oracle = None if reference == "em" else exact_oracle(problem, setting, multiplier, test)
    if reference == "exact" and oracle is None:
        raise ValueError(f"no exact reference for {problem.name!r} with this optimizer, SDE and test_fn={test!r}")
    common = dict(multiplier=multiplier, paths=paths, seed=seed, test_fn=test_fn, adaptive=setting, rho_in=rho_in,
                  progress=progress)
    if oracle is None:
        return weak_error(problem, etas, horizon, refine=4 if refine is None else refine, **common)
    refine = 1 if refine is None else refine
    r = weak_error(problem, etas, horizon, refine=refine, richardson=False, reference="em", **common)
    times = r.checkpoint_times
    exact = oracle.sde(horizon, test, times)
    bias = np.array([oracle.euler_maruyama(horizon, eta**2 / 2**refine, test, times) - exact for eta in r.etas])
    checkpoints = r.checkpoint_errors + bias
    errors = checkpoints[:, -1]
    spread = r.stderr * np.sqrt(max(r.paths, 1))  # the coupled difference's standard deviation, per η
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        needed = np.where(errors != 0, np.ceil((1.96 * spread / (0.2 * np.abs(errors))) ** 2), 0.0)
    needed = np.nan_to_num(needed, nan=0.0, posinf=np.iinfo(np.int64).max).astype(np.int64)
    fit = slope_fit(r.fit_steps, errors, r.stderr)
    notes = [n for n in r.notes if "half-width" not in n]
    if needed[-1] > r.paths:
        notes.append(f"at η = {r.etas[-1]:g} a 95% half-width of 20% of |e| needs {needed[-1]} paths, "
                     f"{r.paths} were run")
    return dataclasses.replace(
        r, errors=errors, checkpoint_errors=checkpoints, slope_fit=fit, paths_needed=needed, notes=notes,
        poly_fit=polynomial_fit(r.fit_steps, errors, r.stderr, fit.used),
        reference=f"exact (coupled to em(dt=h/{2**refine}), its bias from the oracle)")


def one_step_mismatch(problem: Problem, setting: Adaptive, multiplier: Multiplier | None = None, rho_in: str = "drift",
                      eta: float = 0.25, shift: float = 0.1) -> tuple[float, float]:
    """The local error of a ballistic SDE: max |·| of the mismatch between one step of the process and the SDE's
    Itô–Taylor expansion to O(h²) — mean h·b + ½h²·J_b b, second moment h·DDᵀ + h²·bbᵀ (the rest is O(h³) for a
    diffusion D of O(√h)) — with the expectation over the gradient noise taken exactly, over the problem's
    mini-batches (noise "sample"). O(h³) is local order 2, O(h²) order 1. At the warm start with θ and u moved by
    `shift`, h = η²."""
    if setting.regime != "ballistic" or setting.noise != "sample":
        raise ValueError("one_step_mismatch takes a ballistic setting with real mini-batch noise (noise='sample')")
    process = AdaptiveProcess(problem, eta, setting, multiplier)
    model = adaptive_sde(problem, setting, multiplier, rho_in)
    h = eta**2
    x = process.initial_state()[None, :].clone()
    parts = setting.blocks(problem.dim)
    x[:, parts["theta"]] += shift
    x[:, parts["u"]] *= 1.0 + shift
    grads, _, weights = problem.batches(x[:, parts["theta"]])
    outcomes = grads[0] - weights @ grads[0]  # every mini-batch's deviation n_b: (B, d)
    steps = process.step(x.expand(len(weights), -1), n=outcomes) - x
    mean, second = weights @ steps, (steps * weights[:, None]).T @ steps
    b, along = _along_itself(model.drift, x)
    d = dense_factor(model.diffusion(x), 1)[0]
    return (float((mean - (h * b + 0.5 * h**2 * along)[0]).abs().max()),
            float((second - (h * d @ d.T + h**2 * b.T @ b)).abs().max()))
