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

The order-2 drift uses J_b b, computed by automatic differentiation of b (reverse mode, twice), so a
problem's functions must be written in torch. A hard cap (the linear form's kink) only promises order
1 for the order-2 SDEs; whether it costs order is left to measurement.

Each row of the table above is one `Family` in `FAMILIES`; `sme` reads its name and claimed order from
there, and `models_and_orders()` lists every SDE it builds with that order (what verify and the tests
measure).
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from pgpo import Multiplier
from sde_lab.problem import (FromGradient, Problem, ScaledFactor, deviation_factor, last_call_cached, once_per_device,
                             scale_factor)

SDES = ("scaled", "paper")
DRIFTS = ("correct", "naive")


@dataclass(frozen=True)
class Family:
    """One SDE that `sme` builds: the arguments that select it, its name and the weak order it claims."""

    process: str  # "SGD", "PGPO[state]" or "PGPO[minibatch]"
    order: int  # sme's `order`
    sde: str | None  # sme's `sde` where it matters (PGPO[state]), else None
    drift: str | None  # sme's `drift` where it matters (PGPO[minibatch]), else None
    name: str  # the SDEModel's name
    claims: int  # the weak order it claims
    kinked_claims: int | None = None  # the claim when ρ has a kink (Multiplier form "linear"), where it differs

    def claimed_order(self, multiplier: Multiplier | None) -> int:
        """The order claimed with this multiplier (None for SGD)."""
        kinked = multiplier is not None and multiplier.form == "linear"
        return self.kinked_claims if kinked and self.kinked_claims is not None else self.claims


FAMILIES = (
    Family("SGD", 1, None, None, "SME", claims=1),
    Family("SGD", 2, None, None, "SME-2", claims=2),
    Family("PGPO[state]", 1, "scaled", None, "SME[scaled]", claims=1),
    Family("PGPO[state]", 1, "paper", None, "SME[paper]", claims=1),
    Family("PGPO[state]", 2, "scaled", None, "SME[scaled]-2", claims=2, kinked_claims=1),  # order 2 needs a smooth ρ
    Family("PGPO[state]", 2, "paper", None, "SME[paper]-2", claims=1),  # its diffusion misses ρ: O(η) off
    Family("PGPO[minibatch]", 1, None, "correct", "SME[correct drift]", claims=1),
    Family("PGPO[minibatch]", 1, None, "naive", "SME[naive drift]", claims=0),  # E[ρ_γ ∇ℓ_γ] ≠ ρ(I)∇L: O(1) off
)


def family(multiplier: Multiplier | None, sde: str, order: int, signal: str, drift: str) -> Family:
    """The row of `FAMILIES` that sme(problem, eta, multiplier, sde, order, signal, drift) builds."""
    if multiplier is None:
        key = ("SGD", order, None, None)
    elif signal == "minibatch":
        key = ("PGPO[minibatch]", order, None, drift)
    else:
        key = ("PGPO[state]", order, sde, None)
    for f in FAMILIES:
        if (f.process, f.order, f.sde, f.drift) == key:
            return f
    raise ValueError(f"no SDE is declared for {key}")


class ModelOrder(NamedTuple):
    """One SDE and its claimed weak order: sme(problem, eta, **kwargs).claimed_order == order."""

    label: str
    kwargs: dict  # multiplier, sde, order, signal, drift: for `sme`, and as they are for `weak_error`
    order: int


SMOOTH = Multiplier(2.0, 2.0, form="smooth")  # the PGPO rows' multiplier
KINKED = Multiplier(2.0, 2.0, form="linear")  # the hard cap, where a kink changes the claim


def models_and_orders() -> list[ModelOrder]:
    """Every SDE of `FAMILIES` with the weak order it claims (PGPO with `SMOOTH`, and again with `KINKED`
    where the kink changes the claim), labelled "process/SDE name"."""
    rows = []
    for f in FAMILIES:
        signal = "minibatch" if f.process == "PGPO[minibatch]" else "state"
        variants = [(None, "")] if f.process == "SGD" else [(SMOOTH, "")]
        if f.kinked_claims is not None:
            variants.append((KINKED, " (kinked ρ)"))
        for multiplier, suffix in variants:
            kwargs = dict(multiplier=multiplier, sde=f.sde or "scaled", order=f.order, signal=signal,
                          drift=f.drift or "correct")
            rows.append(ModelOrder(f"{f.process}/{f.name}{suffix}", kwargs, f.claimed_order(multiplier)))
    return rows


@dataclass
class SDEModel:
    """dX = drift(X) dt + diffusion(X) dW: drift (M, d) → (M, d), diffusion (M, d) → (M, d, m), a constant (d, m),
    `SampleDeviations` (a finite sum's structured factor), or a `ScaledFactor` (a per-path scale times any of them)."""

    name: str
    claimed_order: int
    drift: Callable[[torch.Tensor], torch.Tensor]
    diffusion: Callable[[torch.Tensor], torch.Tensor]
    noise_dim: int
    # y + b dt + σ ΔW in fewer operations, where the model has such a form (the same step up to rounding)
    euler_step: "FusedStep | None" = None

    def fused_euler_step(self) -> Callable | None:
        """(y, dt, ΔW) → the Euler–Maruyama step, if this model has a cheaper form of it for its own drift and
        diffusion (one swapped in by a user afterwards voids it)."""
        f = self.euler_step
        return f.step if f is not None and f.drift is self.drift and f.diffusion is self.diffusion else None


class FusedStep(NamedTuple):
    """A cheaper form of Euler–Maruyama's step for the drift and diffusion it was built with."""

    drift: Callable
    diffusion: Callable
    step: Callable[[torch.Tensor, float, torch.Tensor], torch.Tensor]


def sme(problem: Problem, eta: float, multiplier: Multiplier | None = None, sde: str = "scaled", order: int = 1,
        signal: str = "state", drift: str = "correct") -> SDEModel:
    """The SME of SGD (multiplier None) or PGPO at step `eta`; see the module docstring."""
    if sde not in SDES:
        raise ValueError(f"sde must be one of {SDES}, got {sde!r}")
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    if drift not in DRIFTS:
        raise ValueError(f"drift must be one of {DRIFTS}, got {drift!r}")
    root_eta = eta**0.5

    if multiplier is not None and signal == "minibatch":
        return _minibatch_sme(problem, eta, multiplier, order, drift)
    declared = family(multiplier, sde, order, signal, drift)
    grad = problem.grad
    if multiplier is None:
        rho = None
        b = lambda x: -grad(x)  # noqa: E731
    else:
        if problem.info is None:
            raise ValueError(f"PGPO with signal='state' needs problem.info; {problem.name!r} has none")
        info = problem.info
        if isinstance(info, FromGradient) and info.grad is problem.grad:  # I from the drift's own ∇L
            grad = last_call_cached(problem.grad)
            rho = last_call_cached(lambda x: multiplier(info.signal(grad(x))))
        else:
            rho = last_call_cached(lambda x: multiplier(info(x)))  # the drift's ρ(X) reused by the diffusion
        b = lambda x: (-rho(x))[:, None] * grad(x)  # noqa: E731  (the sign on (M,), not on (M, d))

    noise = _scaled_noise(problem, root_eta)

    def diffusion(x):
        if rho is None or sde == "paper":
            return noise(x)
        return ScaledFactor(rho(x), noise(x))  # ρ applied to √η S z, never to a per-path copy of S

    drift_fn = b if order == 1 else _second_order(b, eta)
    step = None
    if rho is not None and sde == "scaled" and order == 1 and isinstance(problem.noise_sqrt, torch.Tensor):
        step = FusedStep(drift_fn, diffusion, _common_scale_step(problem, multiplier, noise))
    return SDEModel(declared.name, declared.claimed_order(multiplier), drift_fn, diffusion, problem.noise_dim(),
                    euler_step=step)


def _common_scale_step(problem: Problem, multiplier: Multiplier, noise: Callable) -> Callable:
    """PGPO's Euler–Maruyama step when ρ scales drift and diffusion alike and the noise factor S is constant:
    y + ρ⊙(S ΔW − dt ∇L), one multiply-add and one scaled add (its own drift and diffusion take five more tensor
    operations a sub-step, about as costly as the arithmetic on small problems). ∇L is computed once, and I from
    it when the problem says I is read from ∇L (`FromGradient`)."""
    transposed = once_per_device(lambda y: noise(y).T)  # Sᵀ (m, d): √η Σ^{1/2}, made once per dtype and device
    info, grad = problem.info, problem.grad
    signal = info.signal if isinstance(info, FromGradient) and info.grad is grad else None

    def step(y, dt, dw):
        g = grad(y)
        rho = multiplier(signal(g) if signal is not None else info(y))
        return torch.addcmul(y, torch.addmm(g, dw, transposed(y), beta=-dt), rho.unsqueeze(1))

    return step


def _scaled_noise(problem: Problem, c: float) -> Callable:
    """x ↦ c·Σ^{1/2}(x) as the solvers take it; a constant factor is scaled once per dtype and device, not at every
    sub-step (on small problems each tensor operation of a sub-step costs about as much as the arithmetic)."""
    scaled = lambda x: scale_factor(problem.factor(x), c)  # noqa: E731
    return once_per_device(scaled) if isinstance(problem.noise_sqrt, torch.Tensor) else scaled


def _second_order(b: Callable, eta: float) -> Callable:
    """x ↦ b(x) − (η/2) J_b(x) b(x), with J_b b from reverse mode twice: u ↦ J_bᵀu is linear in u, so J_b v is the
    gradient in u of ⟨J_bᵀu, v⟩. (torch.func.jvp gives the same to 4e-15 but took 4× as long on the PGPO drift: under
    its forward mode every product with a constant ran through a Python decomposition, torch 2.13.)"""

    def drift(x):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            value = b(x)
            if not value.requires_grad:  # b does not depend on x: J_b = 0
                return value
            u = torch.zeros_like(value, requires_grad=True)
            (transposed,) = torch.autograd.grad(value, x, u, create_graph=True)  # J_bᵀu: (M, d)
            (jvp,) = torch.autograd.grad(transposed, u, value.detach())  # J_b b: (M, d)
        return value.detach() - 0.5 * eta * jvp

    return drift


def _minibatch_sme(problem: Problem, eta: float, multiplier: Multiplier, order: int, drift: str) -> SDEModel:
    if order != 1:
        raise ValueError("the mini-batch-signal SDE is implemented at order 1 only")
    if problem.batches is None:
        raise ValueError(f"the mini-batch-signal SDE needs problem.batches; {problem.name!r} has none")
    declared = family(multiplier, "scaled", order, "minibatch", drift)
    if drift == "naive":
        naive = sme(problem, eta, multiplier, "scaled", 1, "state")
        return SDEModel(declared.name, declared.claimed_order(multiplier), naive.drift, naive.diffusion, naive.noise_dim)
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
    return SDEModel(declared.name, declared.claimed_order(multiplier), mean_drift, diffusion, batches)


class _CallableModule(types.ModuleType):
    """`sde_lab.sme` is both this module and, called, its function `sme`: `sde_lab.sme(problem, eta)` builds an
    SDE and `sde_lab.sme.models_and_orders()` lists them all (a function of the package's namespace would
    otherwise hide the module's other names)."""

    def __call__(self, *args, **kwargs) -> SDEModel:
        return sme(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
