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

"auto" (default) picks "lr" for the built-in optimizers known to be linear in lr and "delta" otherwise.
"""

from __future__ import annotations

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


def modulated_step(optimizer: torch.optim.Optimizer, rho, closure=None, method: str = "auto"):
    """Run `optimizer.step(closure)` so that the parameter update is ρ times the plain one.

    Args:
        optimizer: any torch optimizer (or an object exposing `step` and `param_groups`).
        rho: the multiplier ρ ≥ 0, a Python number or a one-element tensor or numpy array (read once with `.item()`).
        closure: passed on to `optimizer.step`.
        method: "auto", "lr" or "delta" (see the module docstring).

    Returns what `optimizer.step` returns. ρ = 1 is exactly `optimizer.step(closure)`, bit for bit.
    Learning rates are restored even if the step raises, so LR schedulers keep working.
    """
    rho = _check_rho(rho)
    if not callable(getattr(optimizer, "step", None)) or not isinstance(getattr(optimizer, "param_groups", None), list):
        raise TypeError(f"optimizer must be a torch optimizer (an object with step() and a param_groups list), "
                        f"got {type(optimizer).__name__}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if rho == 1.0:
        return _step(optimizer, closure)
    if method == "auto":
        method = "lr" if type(optimizer) in _LINEAR_IN_LR else "delta"
    if method == "lr":
        return _step_with_scaled_lr(optimizer, rho, closure)
    return _step_extrapolated(optimizer, rho, closure)


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
    for p, old in zip(params, before):
        # θ_old + ρ·(θ_new − θ_old), written into the buffer we already hold
        p.copy_(old.lerp_(p, rho))
    return result


def _check_rho(rho) -> float:
    if isinstance(rho, (torch.Tensor, np.ndarray)):  # a one-element tensor or array (a 0-d numpy result too)
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
