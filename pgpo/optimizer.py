"""Scale one optimizer step by ρ without touching the optimizer's state.

PGPO acts on the *final update* of a step, θ ← θ + ρ·Δθ, where Δθ is the update the optimizer would
have made (`docs/method.md` §2). Not on the loss: Adam's direction is invariant to the gradient's scale and
clipping would undo it. The state buffers (momentum, Adam's exp_avg and exp_avg_sq, step counts) must
be bit-for-bit those of the unmodulated step, so that PGPO changes how far the parameters move and
nothing else.

Two ways to get there, both exact up to floating-point rounding of the update:

- "lr": multiply every param group's learning rate by ρ for the duration of `step()` and restore it
  afterwards. For the torch optimizers whose update is linear in lr and whose state never sees lr
  (SGD, Adam, AdamW, ...), this is free. AdamW's decoupled weight decay, θ ← θ·(1 − lr·λ), is part
  of the update and is scaled by ρ as well (a decision, `docs/method.md` §2): the whole step, decay included,
  is ρ times longer.
- "delta": keep a copy of the parameters, take the plain step, then move to θ_old + ρ·(θ_new − θ_old).
  Correct for any optimizer (Rprop, ASGD, LBFGS, Adafactor, user-written ones) at the cost of one
  copy of the parameters in memory; the optimizer itself runs unmodified, so its state is exactly the
  unmodulated one.

"auto" (default) picks "lr" for the torch optimizers known to be linear in lr, and for their subclasses that
keep the base class's `step`, and "delta" otherwise. `step_method` says which one runs. Wrappers that hold the
real optimizer (accelerate's `AcceleratedOptimizer`, Lightning's `LightningOptimizer`: `.optimizer` or
`._optimizer`) are looked through to pick the method, and their own `step` still runs (it may skip a step
during gradient accumulation, or unscale gradients). DeepSpeed steps its optimizer inside `engine.step()`,
out of reach of any wrapper: refused, with the reason.

A ρ that could break the parameters is refused before anything changes (`modulated_step`'s docstring):
not a finite real number ≥ 0, or beyond 1/ε of the parameters' floating-point type (ε: its machine
epsilon; 2^23 ≈ 8.4e6 for float32, 128 for bfloat16, 1024 for float16, 2^52 for float64). Within that
bound the scaling cannot by itself make a parameter non-finite: |θ| ≤ max/2 and a plain step
|Δθ| ≤ ε·max/2 give |θ + ρ·Δθ| ≤ max, so an overflow there needs a plain step that is itself within
a factor ε of overflowing — the optimizer's own failure, as at ρ = 1. The check reads no tensor: no
host sync, no copy. The "delta" method, which holds θ_old and θ_new anyway, also checks the
extrapolated parameters themselves for ρ > 1 before keeping them (one host sync).
"""

from __future__ import annotations

import inspect
import math
import numbers

import numpy as np
import torch

# Built-in optimizers whose parameter update is lr × (something independent of lr) and whose state
# never depends on lr. Not here: Rprop (lr only seeds its per-weight step sizes), ASGD (its eta and
# averaging state depend on lr), LBFGS (line search), Adafactor (min(lr, 1/√t) clips the step).
_LINEAR_IN_LR = tuple(
    getattr(torch.optim, name)
    for name in ("SGD", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Adagrad", "Adadelta", "SparseAdam", "Muon")
    if hasattr(torch.optim, name)
)

METHODS = ("auto", "lr", "delta")


def modulated_step(optimizer: torch.optim.Optimizer, rho, closure=None, method: str = "auto",
                   return_method: bool = False):
    """Run `optimizer.step(closure)` so that the parameter update is ρ times the plain one.

    Args:
        optimizer: any torch optimizer (or an object exposing `step` and `param_groups`), possibly wrapped
            (accelerate, Lightning: see the module docstring).
        rho: the multiplier ρ ≥ 0, a Python number or a one-element tensor or numpy array (read once with `.item()`).
            Refused with a ValueError, before any parameter or state changes: a non-real, complex, meta,
            non-finite or negative ρ, and a ρ above 1/ε of the parameters' floating-point type (the module
            docstring says why that bound). With the "delta" method and ρ > 1, extrapolated parameters that
            are not finite are refused too, and every parameter is put back to its value before the step
            (the optimizer's state has then taken its plain step, as it does at any ρ).
        closure: passed on to `optimizer.step`.
        method: "auto", or the one the caller requires: "lr" (refused for an optimizer not known to be linear
            in lr, where it would be silently wrong) or "delta" (any optimizer).
        return_method: also return the method that ran ("lr" or "delta"; at ρ = 1 the plain step runs, which
            both methods reduce to).

    Returns what `optimizer.step` returns (with the method, if asked). ρ = 1 is exactly
    `optimizer.step(closure)`, bit for bit. Learning rates are restored even if the step raises, so LR
    schedulers keep working.
    """
    rho = _check_rho(rho)
    if not callable(getattr(optimizer, "step", None)) or not isinstance(getattr(optimizer, "param_groups", None), list):
        raise TypeError(f"optimizer must be a torch optimizer (an object with step() and a param_groups list), "
                        f"got {type(optimizer).__name__}")
    chosen = step_method(optimizer, method)
    _check_rho_fits(optimizer, rho)
    if rho == 1.0:
        result = _step(optimizer, closure)
    elif chosen == "lr":
        result = _step_with_scaled_lr(optimizer, rho, closure)
    else:
        result = _step_extrapolated(optimizer, rho, closure)
    return (result, chosen) if return_method else result


def step_method(optimizer, method: str = "auto") -> str:
    """The method `modulated_step(optimizer, ρ, method=method)` runs: "lr" or "delta" (see the module docstring).
    Raises for an unknown method, for "lr" on an optimizer not known to be linear in lr, and for DeepSpeed."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    inner = unwrap(optimizer)
    if any(type(x).__module__.split(".")[0] == "deepspeed" or type(x).__name__ == "DeepSpeedOptimizerWrapper"
           for x in (optimizer, inner)):
        raise TypeError("DeepSpeed steps the optimizer inside engine.step(), where no wrapper can scale the update "
                        "by ρ; use DDP or FSDP (accelerate's FSDP plugin) for PGPO")
    linear = linear_in_lr(type(inner))
    if method == "lr" and not linear:
        raise ValueError(f"method='lr' needs an optimizer whose update is linear in lr and whose state never sees "
                         f"lr; {type(inner).__name__} is not known to be: use method='delta' (exact for any optimizer)")
    if method == "auto":
        return "lr" if linear else "delta"
    return method


def unwrap(optimizer):
    """The optimizer inside wrappers that hold it as `.optimizer` or `._optimizer` (accelerate, Lightning)."""
    for _ in range(8):  # wrappers of wrappers, but never a cycle
        inner = next((getattr(optimizer, name) for name in ("optimizer", "_optimizer")
                      if isinstance(getattr(optimizer, name, None), torch.optim.Optimizer)), None)
        if inner is None or inner is optimizer:
            break
        optimizer = inner
    return optimizer


def linear_in_lr(cls: type) -> bool:
    """Whether `cls` is one of the torch optimizers linear in lr, or a subclass that keeps its base's `step`
    (a subclass that only changes defaults); a subclass with its own `step` may do anything with lr."""
    for base in _LINEAR_IN_LR:
        if issubclass(cls, base):
            # torch wraps `step` in hooks per class (functools.wraps): compare the functions underneath
            return inspect.unwrap(cls.step) is inspect.unwrap(base.step)
    return False


def _step(optimizer, closure):
    return optimizer.step() if closure is None else optimizer.step(closure)


def _step_with_scaled_lr(optimizer, rho: float, closure):
    groups = optimizer.param_groups
    saved = [group["lr"] for group in groups]
    try:
        for group, lr in zip(groups, saved):
            # a new object, never in place: a tensor lr may be shared with a scheduler or a CUDA graph
            group["lr"] = lr * rho
        return _step(optimizer, closure)
    finally:
        for group, lr in zip(groups, saved):
            group["lr"] = lr


@torch.no_grad()
def _step_extrapolated(optimizer, rho: float, closure):
    params = [p for group in optimizer.param_groups for p in group["params"]]
    before = [p.detach().clone() for p in params]
    if closure is None:
        result = optimizer.step()
    else:
        with torch.enable_grad():
            result = optimizer.step(closure)
    if rho <= 1.0:
        for p, old in zip(params, before):
            # θ_old + ρ·(θ_new − θ_old), between the two (finite where they are), into the buffer we already hold
            p.copy_(old.lerp_(p, rho))
        return result
    finite = []
    for p, old in zip(params, before):
        # beyond θ_new: keep θ_old intact until every extrapolated parameter is known to be finite
        moved = torch.lerp(old, p, rho)
        finite.append(torch.isfinite(_local(moved)).all())
        p.copy_(moved)
    if finite and not bool(torch.stack([ok.to(finite[0].device) for ok in finite]).all()):  # one host sync
        at = next(k for k, ok in enumerate(finite) if not ok)
        for p, old in zip(params, before):
            p.copy_(old)
        raise ValueError(f"rho = {rho:g} makes parameter {at} ({params[at].dtype}, shape {tuple(params[at].shape)}) "
                         "non-finite: rho times the optimizer's update overflows there, or that update is not finite "
                         "itself; the parameters are left as they were before the step")
    return result


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's shard on this rank (a reduction over the whole would be one collective per parameter)."""
    return t.to_local() if hasattr(t, "to_local") else t


def _check_rho_fits(optimizer, rho: float) -> None:
    """Refuse a ρ above 1/ε of a parameter's floating-point type (see the module docstring), before the step."""
    if rho <= 1.0:  # never longer than the plain step: nothing the plain step would not do itself
        return
    dtypes = {p.dtype for group in optimizer.param_groups for p in group["params"]
              if isinstance(p, torch.Tensor) and (p.is_floating_point() or p.is_complex())}
    for dtype in sorted(dtypes, key=lambda d: torch.finfo(d).eps, reverse=True):  # the coarsest type first
        limit = 1.0 / torch.finfo(dtype).eps
        if rho > limit:
            raise ValueError(f"rho = {rho:g} is above 1/eps = {limit:g} of the {dtype} parameters: a step that many "
                             "times the optimizer's could overflow them; refused before any parameter changed")


def _check_rho(rho) -> float:
    if isinstance(rho, (torch.Tensor, np.ndarray)):  # a one-element tensor or array (a 0-d numpy result too)
        if isinstance(rho, torch.Tensor) and rho.is_meta:  # a shape without a value: nothing to read
            raise ValueError("rho is a meta tensor (a shape without a value); pass a number")
        if np.iscomplexobj(rho) if isinstance(rho, np.ndarray) else rho.is_complex():
            raise ValueError(f"rho must be a real number, got a complex {rho.dtype}")
        size = rho.numel() if isinstance(rho, torch.Tensor) else rho.size
        if size != 1:
            raise ValueError(f"rho must be a single number, got an array of shape {tuple(rho.shape)}")
        rho = rho.item()
    if isinstance(rho, bool) or not isinstance(rho, numbers.Real):
        raise ValueError(f"rho must be a real number, got {rho!r}")
    rho = float(rho)
    if not math.isfinite(rho) or rho < 0.0:
        raise ValueError(f"rho must be finite and >= 0, got {rho!r}")
    return rho
