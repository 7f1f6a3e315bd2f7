"""RMSprop and Adam, and PGPO on each, as discrete processes and as SDEs, in the scaling under which the SDEs
are their limits (Malladi, Lyu, Panigrahi & Arora, "On the SDEs and Scaling Rules for Adaptive Gradient
Algorithms", NeurIPS 2022, arXiv 2205.10287).

The scaling: as η → 0 with σ₀, ε₀, c₁, c₂ fixed,

    g = ∇L(θ) + σ Σ^{1/2}(θ) z,  z ~ N(0, I),  σ = σ₀/η      (the gradient noise grows as η shrinks)
    ε = ε₀/η,   1 − β₁ = c₁η²,   1 − β₂ = c₂η²,   one step = h = η² of SDE time

and the second moment is carried in units of the noise, u = v/σ². The state of a path is the concatenation
(θ, u, t) for RMSprop and (θ, m, u, t) for Adam, each block of width d except the time t = k·h (width 1),
which Adam's bias corrections read. Test functions see θ only.

Discrete (ρ = 1 without PGPO; PGPO scales the θ-update alone, the moments untouched):

    RMSprop:  v' = β₂v + (1 − β₂)g²,   θ' = θ − ρ·η·g / (√v' + ε)
    Adam:     m' = β₁m + (1 − β₁)g,  v' = β₂v + (1 − β₂)g²,
              θ' = θ − ρ·η·m̂ / (√v̂ + ε),  m̂ = m'/(1 − β₁^{k+1}),  v̂ = v'/(1 − β₂^{k+1})

(torch.optim.RMSprop(alpha=β₂, eps=ε) and torch.optim.Adam(betas=(β₁, β₂), eps=ε) take these steps; the
tests check it.) In the scaled variables one RMSprop step is θ' = θ − ρ·h·(∇L + (σ₀/η)Σ^{1/2}z)/(σ₀√u' + ε₀)
and one Adam step θ' = θ − ρ·h·(m'/γ₁)·√γ₂/(σ₀√u' + ε₀√γ₂) with γᵢ = 1 − βᵢ^{k+1}. Their SDEs (with
γᵢ(t) = 1 − e^{−cᵢt}, P = diag(σ₀√u + ε₀√γ₂), γ₂ ≡ 1 for RMSprop):

    RMSprop:  dθ = −ρ P⁻¹ (∇L dt + σ₀ Σ^{1/2} dW),         du = c₂ (diag Σ − u) dt
    Adam:     dθ = −ρ (√γ₂/γ₁) P⁻¹ m dt,                     dm = c₁ (∇L − m) dt + c₁σ₀ Σ^{1/2} dW,
              du = c₂ (diag Σ − u) dt

ρ = ρ(I(θ)) for a state signal. For RMSprop the noise reaches θ directly, so ρ scales θ's diffusion with its
drift; for Adam θ has no diffusion (the noise reaches it through m), so ρ can only scale the drift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pgpo import Multiplier
from sde_lab.problem import (BlockFactor, Problem, ScaledFactor, apply_noise, last_call_cached, noise_variances,
                             once_per_device, scale_factor)
from sde_lab.sme import SDEModel

KINDS = ("rmsprop", "adam")
RHO_IN = ("drift", "both")


@dataclass(frozen=True)
class AdaptiveFamily:
    """One SDE that `adaptive_sde` builds: its arguments, its name and the weak order it claims (in h = η²)."""

    kind: str
    pgpo: bool
    rho_in: str | None  # where ρ enters besides θ's drift (PGPO only)
    name: str
    claims: int

    def measured_with(self, multiplier: Multiplier, **setting) -> dict:
        """The keyword arguments of `weak_error` that measure this SDE: the optimizer `Adaptive(kind, **setting)`,
        `multiplier` for PGPO (none otherwise) and `rho_in`."""
        return {"adaptive": Adaptive(self.kind, **setting), "multiplier": multiplier if self.pgpo else None,
                "rho_in": self.rho_in or "drift"}


# The claims follow where the discrete step carries ρ: on the whole θ-update, which for RMSprop holds the noise
# (so ρ scales θ's diffusion too) and for Adam holds m, whose noise ρ never touches. Putting ρ anywhere else
# changes the SDE's O(1) noise in this scaling (σ = σ₀/η), an error that does not shrink with η: order 0.
ADAPTIVE_FAMILIES = (
    AdaptiveFamily("rmsprop", False, None, "RMSprop-SDE", 1),
    AdaptiveFamily("adam", False, None, "Adam-SDE", 1),
    AdaptiveFamily("rmsprop", True, "both", "PGPO-RMSprop-SDE[ρ in θ's drift and diffusion]", 1),
    AdaptiveFamily("rmsprop", True, "drift", "PGPO-RMSprop-SDE[ρ in θ's drift only]", 0),
    AdaptiveFamily("adam", True, "drift", "PGPO-Adam-SDE[ρ in θ's drift only]", 1),
    AdaptiveFamily("adam", True, "both", "PGPO-Adam-SDE[ρ also on m's noise]", 0),
)


def family_named(name: str) -> AdaptiveFamily:
    """The row of `ADAPTIVE_FAMILIES` called `name`."""
    for f in ADAPTIVE_FAMILIES:
        if f.name == name:
            return f
    raise ValueError(f"no adaptive SDE named {name!r}; they are {[f.name for f in ADAPTIVE_FAMILIES]}")


def adaptive_family(kind: str, pgpo: bool, rho_in: str) -> AdaptiveFamily:
    """The row of `ADAPTIVE_FAMILIES` that adaptive_sde builds for these arguments."""
    for f in ADAPTIVE_FAMILIES:
        if (f.kind, f.pgpo, f.rho_in) == (kind, pgpo, rho_in if pgpo else None):
            return f
    raise ValueError(f"no adaptive SDE for kind={kind!r}, pgpo={pgpo}, rho_in={rho_in!r}")


@dataclass(frozen=True)
class Adaptive:
    """An adaptive optimizer in the SDE scaling: `kind` and the η-free constants σ₀, ε₀, c₁, c₂."""

    kind: str = "adam"
    sigma0: float = 1.0  # the gradient noise is σ₀/η times Σ^{1/2} z
    eps0: float = 0.1  # ε = ε₀/η
    c1: float = 1.0  # 1 − β₁ = c₁η² (Adam)
    c2: float = 1.0  # 1 − β₂ = c₂η²
    t0: float = 0.0  # start warm: at SDE time t₀ (step t₀/η²) with the moments of t₀ spent at x₀ (see initial_state)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("sigma0", "eps0", "c1", "c2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if isinstance(self.t0, bool) or not isinstance(self.t0, (int, float)) or not 0 <= self.t0 < math.inf:
            raise ValueError(f"t0 must be a finite number >= 0, got {self.t0!r}")

    def hyperparameters(self, eta: float) -> dict:
        """The discrete optimizer's settings at step η: lr, β₁, β₂, ε, σ (the gradient noise's scale)."""
        return {"lr": eta, "beta1": 1.0 - self.c1 * eta**2, "beta2": 1.0 - self.c2 * eta**2, "eps": self.eps0 / eta,
                "sigma": self.sigma0 / eta}

    def blocks(self, d: int) -> dict[str, slice]:
        """Where each part of the state lies: θ, (m,) u, t."""
        names = ["theta", "u"] if self.kind == "rmsprop" else ["theta", "m", "u"]
        parts = {n: slice(i * d, (i + 1) * d) for i, n in enumerate(names)}
        parts["t"] = slice(len(names) * d, len(names) * d + 1)
        return parts

    def state_dim(self, d: int) -> int:
        return (2 if self.kind == "rmsprop" else 3) * d + 1

    def initial_state(self, x0: torch.Tensor, problem: Problem | None = None) -> torch.Tensor:
        """The state at the start, (D,): (θ₀, 0, …, 0) at t₀ = 0, as torch's optimizers start. With t₀ > 0 (the
        `problem` is then needed), the moments are those of t₀ of SDE time spent at x₀, m = (1 − e^{−c₁t₀})∇L(x₀)
        and u = (1 − e^{−c₂t₀}) diag Σ(x₀), and the clock reads t₀: the optimizer met mid-run, past the start where Adam's
        bias corrections are 0/0."""
        state = torch.cat([x0, x0.new_zeros(self.state_dim(x0.shape[0]) - x0.shape[0])])
        if self.t0 == 0:
            return state
        if problem is None:
            raise ValueError("a warm start (t0 > 0) needs the problem, for ∇L(x₀) and Σ(x₀)")
        parts = self.blocks(x0.shape[0])
        point = x0[None, :]
        # the SDE's moments after t₀ at a standing x₀ (dm = c₁(∇L − m)dt, du = c₂(diag Σ − u)dt from 0)
        state[parts["u"]] = -math.expm1(-self.c2 * self.t0) * noise_variances(problem.factor(point)).reshape(-1)
        if self.kind == "adam":
            state[parts["m"]] = -math.expm1(-self.c1 * self.t0) * problem.grad(point).reshape(-1)
        state[parts["t"]] = self.t0
        return state


def _gammas(setting: Adaptive, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """γ₁(t), γ₂(t) = 1 − e^{−cᵢt} for Adam's bias corrections, (M, 1) each; ones for RMSprop."""
    if setting.kind == "rmsprop":
        return torch.ones_like(t), torch.ones_like(t)
    return -torch.expm1(-setting.c1 * t), -torch.expm1(-setting.c2 * t)


@dataclass
class AdaptiveProcess:
    """RMSprop or Adam (PGPO on it with a `multiplier`, state signal) on `problem` at step `eta`, in the scaling
    of `setting`; its state (M, D) is laid out as `setting.blocks` says. One step is h = η² of SDE time."""

    problem: Problem
    eta: float
    setting: Adaptive
    multiplier: Multiplier | None = None
    noise: str = "gaussian"

    def __post_init__(self):
        if self.noise != "gaussian":
            raise ValueError("the adaptive processes take Gaussian gradient noise (noise='gaussian') only")
        if self.multiplier is not None and self.problem.info is None:
            raise ValueError(f"PGPO needs problem.info; {self.problem.name!r} has none")
        start = self.setting.t0 / self.eta**2  # the step count t₀ stands for: Adam's bias corrections read it
        if abs(start - round(start)) > 1e-9 * max(1.0, start):
            raise ValueError(f"t0 = {self.setting.t0:g} is not a whole number of steps of h = η² = {self.eta**2:g}")

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
        return self.setting.initial_state(self.problem.x0, self.problem)

    couples = True  # its Gaussian noise is the reference's increments (sde_lab.coupling)

    def step(self, state: torch.Tensor, z: torch.Tensor | None = None, gen=None) -> torch.Tensor:
        """state (M, D) → state' (M, D); z (M, m) standard normals."""
        s, d, h = self.setting, self.problem.dim, self.eta**2
        parts = s.blocks(d)
        theta, u, t = state[:, parts["theta"]], state[:, parts["u"]], state[:, parts["t"]]
        # g/σ = (η/σ₀)∇L + Σ^{1/2}z: the gradient in units of its noise
        scaled_grad = (self.eta / s.sigma0) * self.problem.grad(theta) + apply_noise(self.problem.factor(theta), z)
        u_next = u + s.c2 * h * (scaled_grad.square() - u)
        rho = 1.0 if self.multiplier is None else self.multiplier(self.problem.info(theta))[:, None]
        t_next = t + h
        if s.kind == "rmsprop":
            update = h * (s.sigma0 / self.eta) * scaled_grad / (s.sigma0 * u_next.sqrt() + s.eps0)
            return torch.cat([theta - rho * update, u_next, t_next], dim=1)
        m = state[:, parts["m"]]
        m_next = m + s.c1 * h * ((s.sigma0 / self.eta) * scaled_grad - m)
        # the bias corrections of step k + 1: 1 − β^{k+1}, with k + 1 = t'/h
        k1 = torch.round(t_next / h)
        g1 = -torch.expm1(k1 * math.log1p(-s.c1 * h))
        g2 = -torch.expm1(k1 * math.log1p(-s.c2 * h))
        update = h * (m_next / g1) * g2.sqrt() / (s.sigma0 * u_next.sqrt() + s.eps0 * g2.sqrt())
        return torch.cat([theta - rho * update, m_next, u_next, t_next], dim=1)


def adaptive_sde(problem: Problem, setting: Adaptive, multiplier: Multiplier | None = None,
                 rho_in: str = "drift") -> SDEModel:
    """The SDE of `setting`'s optimizer (PGPO on it with a `multiplier`, state signal) on the state (M, D).

    rho_in, where PGPO's ρ enters besides θ's drift: "drift" (nowhere else) or "both" (the noise's way into θ
    too, as in SGD's scaled SME: θ's diffusion for RMSprop, m's diffusion for Adam — which the discrete Adam
    does not do, since ρ leaves the moments untouched). Ignored without a multiplier."""
    if rho_in not in RHO_IN:
        raise ValueError(f"rho_in must be 'drift' or 'both', got {rho_in!r}")
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

    declared = adaptive_family(s.kind, multiplier is not None, rho_in)
    return SDEModel(declared.name, declared.claims, drift, diffusion, noise_dim)
