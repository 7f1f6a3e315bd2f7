"""A stochastic optimisation problem, as the SDE picture sees it.

SGD on L(x) = E_γ ℓ_γ(x) is described by the full gradient ∇L, a square root of the gradient-noise
covariance Σ(x) = Cov_γ ∇ℓ_γ(x), and, for PGPO, an information signal I. Everything is batched over
M paths, batch first:

    grad(x)        (M, d) → (M, d)        ∇L
    noise_sqrt(x)  (M, d) → (M, d, m)     S with S Sᵀ = Σ (or a constant (d, m) tensor, or, for a finite
                                          sum, its per-sample structure as `SampleDeviations`)
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
from typing import Callable, NamedTuple

import torch


@dataclass(frozen=True)
class FromGradient:
    """An information signal read from ∇L alone, I(x) = signal(∇L(x)): called like any `info` (x (M, d) → (M,)),
    and the SDE solvers hand `signal` the gradient their drift has already computed (one ∇L a sub-step, not two)."""

    grad: Callable[[torch.Tensor], torch.Tensor]
    signal: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.signal(self.grad(x))


@dataclass
class Problem:
    """A problem for `weak_error`. Only `dim`, `x0`, `grad` and `noise_sqrt` are required.

    Args:
        dim: d.
        x0: the initial point, shape (d,) (every path starts there).
        grad: ∇L, (M, d) → (M, d).
        noise_sqrt: Σ^{1/2}, (M, d) → (M, d, m) (or `SampleDeviations`), or a constant tensor of shape (d, m).
        info: the state information signal, (M, d) → (M,); needed for PGPO with signal="state". A `FromGradient`
            (I read from ∇L alone) lets the solvers reuse the drift's gradient.
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
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"dim must be a positive int, got {self.dim!r}")
        self.x0 = torch.as_tensor(self.x0, dtype=torch.float64).reshape(-1)
        if self.x0.shape != (self.dim,):
            raise ValueError(f"x0 must have shape ({self.dim},), got {tuple(self.x0.shape)}")
        if not torch.isfinite(self.x0).all():
            raise ValueError(f"x0 must be finite, got {self.x0.tolist()}")
        if self.lambda_max is not None and not (isinstance(self.lambda_max, (int, float)) and 0 < self.lambda_max < float("inf")):
            raise ValueError(f"lambda_max must be a positive finite number or None, got {self.lambda_max!r}")
        if self.name is None:
            self.name = "problem"
        self.check_functions()

    def check_functions(self, paths: int = 2) -> None:
        """Call every function once at x0 (a batch of `paths` rows, float64) and refuse any output whose
        type, shape, dtype or finiteness is not the documented one, saying what was expected: a wrong
        shape broadcasts silently in the solvers (a (M, 1) noise factor read as a constant matrix)."""
        x = self.x0.expand(paths, -1).clone()
        sizes = {"M": paths, "d": self.dim}
        expect_output(f"problem {self.name!r}: grad(x)", self.grad(x), ("M", "d"), sizes, x.dtype)
        if isinstance(self.noise_sqrt, torch.Tensor):
            if self.noise_sqrt.dim() != 2 or self.noise_sqrt.shape[0] != self.dim or not self.noise_sqrt.is_floating_point():
                raise ValueError(f"problem {self.name!r}: a constant noise_sqrt must be a floating (d, m) = "
                                 f"({self.dim}, m) tensor, got {self.noise_sqrt.dtype} {tuple(self.noise_sqrt.shape)}")
            expect_output(f"problem {self.name!r}: noise_sqrt", self.noise(x), ("d", "m"), sizes, x.dtype)
        elif callable(self.noise_sqrt):
            factor, what = self.noise_sqrt(x), f"problem {self.name!r}: noise_sqrt(x)"
            if isinstance(factor, SampleDeviations):
                expect_output(what + ".coef", factor.coef, ("M", "K", "n"), sizes, x.dtype)
                expect_output(what + ".features", factor.features, ("K", "n", "d"), sizes, x.dtype)
                expect_output(what + ".weights", factor.weights, ("n",), sizes, x.dtype)
            else:
                expect_output(what, factor, ("M", "d", "m"), sizes, x.dtype)
        else:
            raise TypeError(f"problem {self.name!r}: noise_sqrt must be a callable (M, d) → (M, d, m) or a (d, m) "
                            f"tensor, got {type(self.noise_sqrt).__name__}")
        for name in ("info", "loss"):
            fn = getattr(self, name)
            if fn is not None:
                expect_output(f"problem {self.name!r}: {name}(x)", fn(x), ("M",), sizes, x.dtype)
        if self.sample_grad is not None:
            out = self.sample_grad(x, torch.Generator().manual_seed(0))
            what = f"problem {self.name!r}: sample_grad(x, gen)"
            if isinstance(out, tuple):
                if len(out) != 2:
                    raise ValueError(f"{what} must return grads (M, d) or a pair (grads (M, d), infos (M,)), "
                                     f"got a tuple of {len(out)}")
                expect_output(what + "[0]", out[0], ("M", "d"), sizes, x.dtype)
                if out[1] is not None:
                    expect_output(what + "[1]", out[1], ("M",), sizes, x.dtype)
            else:
                expect_output(what, out, ("M", "d"), sizes, x.dtype)
        if self.batches is not None:
            out = self.batches(x)
            what = f"problem {self.name!r}: batches(x)"
            if not isinstance(out, tuple) or len(out) != 3:
                raise ValueError(f"{what} must return (grads (M, B, d), infos (M, B) or None, weights (B,))")
            expect_output(what + "[0]", out[0], ("M", "B", "d"), sizes, x.dtype)
            if out[1] is not None:
                expect_output(what + "[1]", out[1], ("M", "B"), sizes, x.dtype)
            expect_output(what + "[2]", out[2], ("B",), sizes, x.dtype)

    def noise(self, x: torch.Tensor) -> torch.Tensor:
        """Σ^{1/2} at x as a tensor: (M, d, m), or the constant (d, m) factor."""
        factor = self.factor(x)
        return factor.dense() if isinstance(factor, SampleDeviations) else factor

    def factor(self, x: torch.Tensor):
        """Σ^{1/2} at x as the solvers use it: `noise`, or the `SampleDeviations` a finite sum keeps it in."""
        if isinstance(self.noise_sqrt, torch.Tensor):
            return self.noise_sqrt.to(dtype=x.dtype, device=x.device)
        return self.noise_sqrt(x)

    def noise_dim(self) -> int:
        """m, the number of independent Brownian motions driving the SDE."""
        return self.factor(self.x0[None, :]).shape[-1]

    def sample(self, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A stochastic gradient from `sample_grad`, always as (grads (M, d), infos (M,) or None)."""
        if self.sample_grad is None:
            raise ValueError(f"problem {self.name!r} has no sample_grad: it cannot draw real mini-batches")
        out = self.sample_grad(x, gen)
        return out if isinstance(out, tuple) else (out, None)


class ScaledFactor(NamedTuple):
    """A diffusion c·S kept in its two parts, c (M,) per path or (M, d) per path and row, and S (d, m) or
    (M, d, m): applied as c·(S z), so a factor shared by every path is never copied once per path (PGPO's
    ρ(X)·√η·Σ^{1/2} with a constant Σ; RMSprop's ρ·σ₀P⁻¹Σ^{1/2})."""

    scale: torch.Tensor
    factor: torch.Tensor


class BlockFactor(NamedTuple):
    """A diffusion whose only nonzero rows are `rows` of a state of width `dim` (an augmented state whose noise
    enters one block: θ's for RMSprop, m's for Adam): `factor` is any factor apply_noise takes, for those rows."""

    dim: int
    rows: slice
    factor: object


class SampleDeviations(NamedTuple):
    """The factor S (M, d, n) of a finite sum's gradient covariance, columns S_b = √w_b (g_b − ḡ), kept in the
    structure its per-sample gradients have: g_b = Σ_k C_kb F_kb + r (a generalised linear model: logistic and
    linear regression have K = 1, F_1b = a_b; a softmax over K answers has K logits), r common to every sample.

        coef      C  (M, K, n)   per path and sample (samples last: torch reduces a short axis of K
                                 fastest when it is not the last)
        features  F  (K, n, d)   shared by every path
        weights   w  (n,)        the samples' probabilities (Σ w = 1)
        gain      a number S is multiplied by (√η)

    S z = gain · Σ_b (s_b − w_b Σ_b' s_b') Σ_k C_kb F_kb with s = √w ∘ z: one (M, Kn) × (Kn, d) product,
    where the dense S would cost an (M, d, n) tensor per evaluation (r cancels in g_b − ḡ).
    """

    coef: torch.Tensor
    features: torch.Tensor
    weights: torch.Tensor
    gain: float = 1.0

    @property
    def shape(self) -> tuple[int, int, int]:
        """(M, d, n), the dense factor's shape."""
        return (self.coef.shape[0], self.features.shape[-1], self.coef.shape[2])

    def scaled(self, c: float) -> "SampleDeviations":
        """c·S."""
        return self._replace(gain=self.gain * c)

    def mixed(self, z: torch.Tensor) -> torch.Tensor:
        """The coefficients S z applies to the features: z (M, n) → (M, Kn), S z = gain · mixed @ F.flatten(0, 1)."""
        s = z * self.weights.sqrt()
        centred = s - self.weights * s.sum(dim=1, keepdim=True)  # Σ_b s_b (g_b − ḡ) = Σ_b centred_b g_b: (M, n)
        return (self.coef * centred[:, None, :]).flatten(1)

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        """S z: z (M, n) → (M, d)."""
        return (self.mixed(z) @ self.features.flatten(0, 1)).mul_(self.gain)

    def per_sample(self) -> torch.Tensor:
        """The gradients without their common part, Σ_k C_kb F_kb: (M, n, d)."""
        return torch.einsum("pkn,knd->pnd", self.coef, self.features)

    def dense(self) -> torch.Tensor:
        """S itself, (M, d, n)."""
        return self.gain * deviation_factor(self.per_sample(), self.weights)

    def variances(self) -> torch.Tensor:
        """diag Σ = diag(S Sᵀ) = gain² Σ_b w_b (g_b − ḡ)²: (M, d)."""
        g = self.per_sample()
        mean = torch.einsum("b,pbd->pd", self.weights, g)
        return self.gain**2 * (torch.einsum("b,pbd->pd", self.weights, g * g) - mean * mean).clamp_(min=0.0)


def scale_factor(factor, c: float):
    """c·S for any factor apply_noise takes, c a number."""
    if isinstance(factor, SampleDeviations):
        return factor.scaled(c)
    if isinstance(factor, ScaledFactor):
        return factor._replace(scale=c * factor.scale)
    if isinstance(factor, BlockFactor):
        return factor._replace(factor=scale_factor(factor.factor, c))
    return c * factor


def apply_noise(factor, z: torch.Tensor) -> torch.Tensor:
    """S z for a factor (d, m), (M, d, m), a `ScaledFactor`, a `BlockFactor` or `SampleDeviations`, and noise
    z (M, m) → (M, d)."""
    if isinstance(factor, SampleDeviations):
        return factor.apply(z)
    if isinstance(factor, ScaledFactor):
        scale = factor.scale if factor.scale.dim() == 2 else factor.scale[:, None]
        return scale * apply_noise(factor.factor, z)
    if isinstance(factor, BlockFactor):
        out = z.new_zeros(z.shape[0], factor.dim)
        out[:, factor.rows] = apply_noise(factor.factor, z)
        return out
    if factor.dim() == 2:
        return z @ factor.T
    return torch.einsum("pdm,pm->pd", factor, z)


def add_noise(out: torch.Tensor, factor, z: torch.Tensor) -> torch.Tensor:
    """out += S z in place, for any factor apply_noise takes; returns out (M, d). The solvers' step ends with it, so
    the common case (a constant (d, m) factor) is one fused multiply-add, with no (M, d) temporary."""
    if isinstance(factor, torch.Tensor) and factor.dim() == 2:
        return out.addmm_(z, factor.T)
    if isinstance(factor, BlockFactor):
        add_noise(out[:, factor.rows], factor.factor, z)  # a view: the rows of out are updated in place
        return out
    if isinstance(factor, SampleDeviations):
        return out.addmm_(factor.mixed(z), factor.features.flatten(0, 1), alpha=factor.gain)
    if isinstance(factor, ScaledFactor):
        if factor.scale.dim() == 1:  # a per-path c: c_p (S z_p) = S (c_p z_p), so S's own fused multiply-add applies
            return add_noise(out, factor.factor, z * factor.scale[:, None])
        return out.addcmul_(factor.scale, apply_noise(factor.factor, z))  # per row: one fused multiply-add
    return out.add_(apply_noise(factor, z))


def dense_factor(factor, paths: int) -> torch.Tensor:
    """Any factor apply_noise takes, as one (M, d, m) tensor (for consumers that need the matrix itself)."""
    if isinstance(factor, SampleDeviations):
        return factor.dense()
    if isinstance(factor, ScaledFactor):
        scale = factor.scale[:, :, None] if factor.scale.dim() == 2 else factor.scale[:, None, None]
        return scale * dense_factor(factor.factor, paths)
    if isinstance(factor, BlockFactor):
        inner = dense_factor(factor.factor, paths)
        out = inner.new_zeros(paths, factor.dim, inner.shape[2])
        out[:, factor.rows] = inner
        return out
    return factor.expand(paths, -1, -1) if factor.dim() == 2 else factor


def noise_variances(factor) -> torch.Tensor:
    """diag Σ = diag(S Sᵀ) of a factor S (d, m), (M, d, m) or `SampleDeviations`: (d,) or (M, d), never forming Σ."""
    if isinstance(factor, SampleDeviations):
        return factor.variances()
    return factor.square().sum(dim=-1)


def deviation_factor(per_sample: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A factor S (M, d, B) of the weighted covariance of B vectors (M, B, d): S Sᵀ = Σ_b w_b (v_b − v̄)(v_b − v̄)ᵀ."""
    mean = torch.einsum("b,pbd->pd", weights, per_sample)
    return ((per_sample - mean[:, None, :]) * weights.sqrt()[None, :, None]).transpose(1, 2)


def expect_output(what: str, value, dims: tuple[str, ...], sizes: dict, dtype: torch.dtype) -> torch.Tensor:
    """Refuse `value` unless it is a finite `dtype` tensor whose shape matches `dims` (names of sizes; a
    name not yet in `sizes` is bound by its first use, e.g. m or B). Returns it."""
    expected = _shape_text(dims, {})
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{what} must return a torch.Tensor of shape {expected}, got {type(value).__name__}")
    if value.dim() != len(dims):
        raise ValueError(f"{what} returned shape {tuple(value.shape)}, expected {expected} = "
                         f"{_shape_text(dims, sizes)} ({value.dim()} dimensions instead of {len(dims)})")
    for name, size in zip(dims, value.shape):
        if name in sizes and sizes[name] != size:
            raise ValueError(f"{what} returned shape {tuple(value.shape)}, expected {expected} = {_shape_text(dims, sizes)}")
        sizes.setdefault(name, size)
        if size < 1:
            raise ValueError(f"{what} returned shape {tuple(value.shape)}: {name} must be at least 1")
    if value.dtype != dtype:
        raise TypeError(f"{what} returned {value.dtype}, expected {dtype}, the dtype of x (a lower precision "
                        f"rounds away the weak errors being measured)")
    if not torch.isfinite(value).all():
        raise ValueError(f"{what} is not finite at the problem's x0: {value.flatten()[:8].tolist()}")
    return value


def _shape_text(dims, sizes) -> str:
    """("M", "d") → "(M, d)" or, with sizes, "(2, 3)"; one dimension reads "(M,)" as Python writes it."""
    return str(tuple(sizes.get(n, n) for n in dims)).replace("'", "")


def last_call_cached(fn: Callable) -> Callable:
    """fn, remembering its last argument and result: a solver asks for the drift and the diffusion at the same
    state object, so fn runs once per sub-step (the argument is matched by identity, never by value)."""
    last = [None, None]

    def cached(x):
        if last[0] is not x:
            last[0], last[1] = x, fn(x)
        return last[1]

    return cached


def once_per_device(make: Callable) -> Callable:
    """x ↦ make(x) for a value that depends on x only through its dtype and device (a constant factor, uniform
    weights): made once for each, since the solvers ask for it at every sub-step."""
    made = {}

    def cached(x):
        key = (x.dtype, x.device)
        if key not in made:
            made[key] = make(x)
        return made[key]

    return cached
