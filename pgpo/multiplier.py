"""The PGPO step-size multiplier ρ = g(I).

PGPO scales each optimizer step by ρ_t = g(I_t), where I_t ≥ 0 is the information signal of the
batch (`docs/method.md` §2). The paper's form is the hard cap

    ρ = min(1 + α·I, ρ_max),        α ≥ 0 (sensitivity),  ρ_max ≥ 1 (cap),

read physically as a viscosity ν = 1/ρ: informative batches flow more freely. The weak-order theory
only needs g bounded, Lipschitz and ≥ 1, so a C^∞ saturating cap with the same slope α at I = 0 and
the same limit ρ_max is offered too:

    ρ = 1 + (ρ_max − 1)·tanh(α·I / (ρ_max − 1)).

Decisions (beyond the paper's text):
- a non-finite I (NaN, ±inf) gives ρ = 1: an untrustworthy signal leaves the baseline step;
- a negative I (only from rounding, or from a user's signed signal) is read as I = 0, so that the
  built-in forms never shrink the step below the baseline (ρ ≥ 1 always).
"""

from __future__ import annotations

import math
import numbers
from typing import Callable

import numpy as np
import torch

FORMS = ("linear", "smooth")


def _check_parameter(name: str, value, lower: float) -> float:
    """Return `value` as a float, or raise ValueError naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if value < lower:
        raise ValueError(f"{name} must be >= {lower:g}, got {value!r}")
    return value


class Multiplier:
    """ρ = g(I): the information-modulated step-size multiplier.

    Args:
        alpha: sensitivity α ≥ 0, the slope dρ/dI at I = 0.
        rho_max: the cap ρ_max ≥ 1 (the supremum of ρ; for a callable form, the bound it promises).
        form: "linear" for min(1 + α·I, ρ_max), "smooth" for 1 + (ρ_max − 1)·tanh(α·I/(ρ_max − 1)),
            or a callable g(I) applied elementwise to an array of the caller's kind (float, numpy
            array or torch tensor) and returning the same kind, with values in [1, ρ_max] (checked:
            anything else raises ValueError naming the value).

    `m(I)` accepts a Python number, a numpy array or a torch tensor of any shape and returns the
    same kind (float, float64 array, floating tensor on I's device). Complex values and meta tensors are
    refused (TypeError, ValueError); a non-finite I gives ρ = 1 (see the module docstring).
    """

    def __init__(self, alpha: float, rho_max: float = 2.0, form: str | Callable = "linear"):
        self.alpha = _check_parameter("alpha", alpha, 0.0)
        self.rho_max = _check_parameter("rho_max", rho_max, 1.0)
        if not callable(form) and form not in FORMS:
            raise ValueError(f"form must be one of {FORMS} or a callable, got {form!r}")
        self.form = form

    def __repr__(self) -> str:
        form = self.form if isinstance(self.form, str) else getattr(self.form, "__name__", "callable")
        return f"Multiplier(alpha={self.alpha:g}, rho_max={self.rho_max:g}, form={form!r})"

    # -- evaluation ---------------------------------------------------------------------------

    def __call__(self, information):
        """ρ(I), elementwise; non-finite I gives 1."""
        return _apply(information, self._rho_torch, self._rho_numpy)

    def viscosity(self, information):
        """ν = 1/ρ(I), the viscosity reading: 1 on uninformative batches, down to 1/ρ_max."""
        return _apply(information, lambda i: 1.0 / self._rho_torch(i), lambda i: 1.0 / self._rho_numpy(i))

    def derivative(self, information):
        """dρ/dI, elementwise (the one-sided value from below at the linear form's kink).

        Needed by the order-2 drift b − (η/2)·J_b·b of the SDE picture. Not available for a
        callable form.
        """
        if callable(self.form):
            raise NotImplementedError("derivative() is not available for a callable form")
        return _apply(information, self._slope_torch, self._slope_numpy)

    # -- one implementation per array library; both follow the same formulas ------------------

    def _rho_numpy(self, i: np.ndarray) -> np.ndarray:
        finite = np.isfinite(i)
        i = np.where(finite, i, 0.0)
        if callable(self.form):
            rho = self._checked(np.broadcast_to(np.asarray(self.form(i), dtype=np.float64), i.shape), i)
        else:
            rho = self._builtin(np.maximum(i, 0.0), np.tanh, np.minimum)
        return np.where(finite, rho, 1.0)

    def _rho_torch(self, i: torch.Tensor) -> torch.Tensor:
        if not callable(self.form):
            # a non-finite I read as 0, where both built-in forms give exactly 1: no mask needed (fewer kernels
            # in the SDE solvers' inner loop)
            i = torch.nan_to_num(i, nan=0.0, posinf=0.0, neginf=0.0)
            if i.requires_grad:  # autograd keeps tanh's output for its backward: no writing over it
                return self._builtin(i.clamp(min=0.0), torch.tanh, lambda x, c: x.clamp(max=c))
            return self._builtin_in_place(i.clamp_(min=0.0))
        finite = torch.isfinite(i)
        i = torch.where(finite, i, torch.zeros_like(i))
        rho = torch.as_tensor(self.form(i), dtype=i.dtype, device=i.device).broadcast_to(i.shape)
        self._checked(rho.detach().cpu().double().numpy(), i.detach().cpu().numpy())
        return torch.where(finite, rho, torch.ones_like(rho))

    def _checked(self, rho: np.ndarray, i: np.ndarray) -> np.ndarray:
        """A callable form's values must keep its promise, 1 ≤ ρ ≤ ρ_max (finite): a step is never shrunk
        below the baseline nor grown past the cap without saying so."""
        bad = ~(np.isfinite(rho) & (rho >= 1.0) & (rho <= self.rho_max))
        if bad.any():
            at = np.argwhere(bad)[0] if rho.ndim else ()
            raise ValueError(f"form returned rho = {float(rho[tuple(at)]):g} at I = {float(np.asarray(i)[tuple(at)]):g}: a callable form "
                             f"must return values in [1, rho_max = {self.rho_max:g}]")
        return rho

    def _builtin(self, i, tanh, minimum):
        """ρ for I ≥ 0 with the library's tanh and min (so numpy and torch share one formula)."""
        excess = self.rho_max - 1.0
        if self.form == "linear":
            return minimum(1.0 + self.alpha * i, self.rho_max)
        if excess == 0.0:  # tanh form's limit as ρ_max → 1
            return 1.0 + 0.0 * i
        return 1.0 + excess * tanh(i * (self.alpha / excess))  # α/(ρ_max − 1) folded: one product per element

    def _builtin_in_place(self, i: torch.Tensor) -> torch.Tensor:
        """`_builtin`'s formulas, operation for operation (the same numbers), in place on i, a tensor the caller owns:
        no allocation per operation in the SDE solvers' inner loop."""
        excess = self.rho_max - 1.0
        if self.form == "linear":
            return i.mul_(self.alpha).add_(1.0).clamp_(max=self.rho_max)
        if excess == 0.0:
            return i.mul_(0.0).add_(1.0)
        return i.mul_(self.alpha / excess).tanh_().mul_(excess).add_(1.0)

    def _slope_numpy(self, i: np.ndarray) -> np.ndarray:
        valid = np.isfinite(i) & (i >= 0)  # ρ is flat where I is clamped or replaced
        i = np.where(valid, i, 0.0)
        return np.where(valid, self._builtin_slope(i, np.tanh), 0.0)

    def _slope_torch(self, i: torch.Tensor) -> torch.Tensor:
        valid = torch.isfinite(i) & (i >= 0)
        i = torch.where(valid, i, torch.zeros_like(i))
        return torch.where(valid, self._builtin_slope(i, torch.tanh), torch.zeros_like(i))

    def _builtin_slope(self, i, tanh):
        """dρ/dI for I ≥ 0, in the library of `i`."""
        excess = self.rho_max - 1.0
        if self.form == "linear":
            # flat above the kink I* = (ρ_max − 1)/α
            return (self.alpha * i < excess) * self.alpha + 0.0 * i
        if excess == 0.0:
            return 0.0 * i
        return self.alpha * (1.0 - tanh(self.alpha * i / excess) ** 2)


def _apply(information, torch_fn, numpy_fn):
    """Evaluate on the caller's kind: float → float, numpy → float64 array, tensor → tensor."""
    if isinstance(information, torch.Tensor):
        if information.is_meta:  # a shape without values: ρ would be a meta tensor, not a number
            raise ValueError("information is a meta tensor (a shape without values); pass a tensor that holds data")
        if information.is_complex():  # I is real; a cast would drop the imaginary part silently
            raise TypeError(f"information must hold real numbers, got {information.dtype}")
        i = information if information.is_floating_point() else information.to(torch.get_default_dtype())
        return torch_fn(i)
    if isinstance(information, np.ndarray):
        if np.iscomplexobj(information):  # as for tensors: astype would drop the imaginary part with a warning
            raise TypeError(f"information must hold real numbers, got {information.dtype}")
        return numpy_fn(information.astype(np.float64, copy=False))
    if isinstance(information, numbers.Real) and not isinstance(information, bool):
        return float(numpy_fn(np.asarray(float(information))))
    raise TypeError(
        f"information must be a real number, a numpy array or a torch tensor, got {type(information).__name__}"
    )
