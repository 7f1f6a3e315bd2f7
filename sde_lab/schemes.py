"""Schemes for dX = b(X) dt + σ(X) dW, each declaring its orders, and Richardson extrapolation, which reads them.

    Euler–Maruyama:  Y_{n+1} = Y_n + b(Y_n) dt + σ(Y_n) ΔW_n,   ΔW_n ~ N(0, dt·I_m)     weak 1, strong ½

A scheme of weak order p has E g(Y^{dt}) = E g(X_T) + C dt^p + O(dt^{p+1}), so two solves at dt and 2dt
combine to remove the leading term (Richardson, step ratio 2):

    E g(X_T) ≈ (2^p·E g(Y^{dt}) − E g(Y^{2dt})) / (2^p − 1)       (p = 1: 2·E g(Y^{dt}) − E g(Y^{2dt}))
"""

from __future__ import annotations

import torch

from sde_lab.problem import add_noise


class EulerMaruyama:
    """Euler–Maruyama: weak order 1, strong order ½."""

    name = "euler_maruyama"
    weak_order = 1
    strong_order = 0.5

    def step(self, model, y: torch.Tensor, dt: float, dw: torch.Tensor) -> torch.Tensor:
        """One step of the `SDEModel` `model`: y (M, d), increments dw (M, m) → (M, d)."""
        fused = model.fused_euler_step()
        if fused is not None:  # the model's own cheaper form of this step
            return fused(y, dt, dw)
        # y + b dt, then + σ ΔW in place on that new tensor: y itself is never written (callers keep it)
        return add_noise(torch.add(y, model.drift(y), alpha=dt), model.diffusion(y), dw)


EULER_MARUYAMA = EulerMaruyama()


def richardson(fine, coarse, order: int):
    """(2^p·fine − coarse) / (2^p − 1): the extrapolation of E g from solves at dt (fine) and 2dt (coarse)
    of a scheme of weak order p; fine and coarse are (M,) tensors (or numbers). For p = 1 this is exactly
    2·fine − coarse (the division is by 1.0)."""
    ratio = 2.0**order
    return (ratio * fine - coarse) / (ratio - 1.0)

