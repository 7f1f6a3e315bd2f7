"""The law of a one-dimensional SDE at time T, from its Fokker–Planck equation (no Monte Carlo).

    ∂p/∂t = −∂x(b p) + ∂²x(D p),     D = ½ s²,     for dX = b(X) dt + s(X) dW

Finite volumes on a uniform grid with Scharfetter–Gummel fluxes: writing q = D p, the flux
F = b p − ∂x q = u q − ∂x q with u = b/D is taken exact for u constant between two cell centres,

    F_{i+½} = [B(−z) q_i − B(z) q_{i+1}] / h,     z = u_{i+½} h,     B(z) = z / (eᶻ − 1),

which stays positive and stable however strong the drift is against the diffusion (central
differences need |b| h / D < 2). The walls are closed (no flux), so mass is conserved exactly. The
operator does not depend on time, so p(T) = exp(T A) p(0) via scipy.sparse.linalg.expm_multiply.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import expm_multiply
from scipy.special import exprel


def fokker_planck_1d(drift: Callable[[np.ndarray], np.ndarray], diffusion: Callable[[np.ndarray], np.ndarray],
                     x0: float, horizon: float, lo: float, hi: float, cells: int = 800) -> tuple[np.ndarray, np.ndarray]:
    """The density of X_T started at X_0 = x0 (a point mass on its cell).

    Args:
        drift: b, vectorised over an array of points.
        diffusion: s (not s²), vectorised; must be positive on [lo, hi].
        x0, horizon: the start and T.
        lo, hi, cells: the grid; the mass that would leave [lo, hi] is held at the walls instead, so
            choose them wide enough that p is negligible there.

    Returns:
        (centres (cells,), density (cells,)) with Σ density · h = 1.
    """
    if not lo < x0 < hi:
        raise ValueError(f"x0 = {x0} must lie inside the grid [{lo}, {hi}]")
    if horizon <= 0:
        raise ValueError(f"horizon must be positive, got {horizon}")
    h = (hi - lo) / cells
    centres = lo + h * (np.arange(cells) + 0.5)
    faces = centres[:-1] + h / 2
    d_centre = 0.5 * np.asarray(diffusion(centres), dtype=np.float64) ** 2
    d_face = 0.5 * np.asarray(diffusion(faces), dtype=np.float64) ** 2
    if np.any(d_centre <= 0) or np.any(d_face <= 0):
        raise ValueError("the diffusion must be positive on the whole grid")
    z = np.asarray(drift(faces), dtype=np.float64) / d_face * h
    forward, backward = 1.0 / exprel(-z), 1.0 / exprel(z)  # B(−z), B(z): F = (B(−z) q_i − B(z) q_{i+1}) / h
    # dp_i/dt = −(F_{i+½} − F_{i−½}) / h, with q = D p
    lower = forward * d_centre[:-1] / h**2  # p_i → p_{i+1}
    upper = backward * d_centre[1:] / h**2  # p_{i+1} → p_i
    main = np.zeros(cells)
    main[:-1] -= lower
    main[1:] -= upper
    operator = sparse.diags([lower, main, upper], [-1, 0, 1], format="csr")
    p0 = np.zeros(cells)
    p0[min(int((x0 - lo) / h), cells - 1)] = 1.0 / h
    return centres, expm_multiply(operator * horizon, p0)


def sde_law(model, x0: float, horizon: float, lo: float, hi: float, cells: int = 800) -> tuple[np.ndarray, np.ndarray]:
    """`fokker_planck_1d` for a one-dimensional `SDEModel` (from `sde_lab.sme`): its drift and diffusion,
    written for batches of torch paths, are evaluated on the grid."""
    import torch

    def on_grid(field):
        def values(x):
            out = field(torch.from_numpy(np.asarray(x, dtype=np.float64))[:, None]).reshape(-1).numpy()
            return np.broadcast_to(out if out.size == np.size(x) else out[:1], np.shape(x))  # a constant (1, 1) factor
        return values

    if model.noise_dim != 1:
        raise ValueError(f"sde_law needs a one-dimensional SDE, {model.name!r} has {model.noise_dim} noise dimensions")
    from sde_lab.problem import dense_factor

    def diffusion(x):  # any factor the SDE returns (a per-path scale times a constant, too), as (M, 1, 1)
        return dense_factor(model.diffusion(x), x.shape[0])

    return fokker_planck_1d(on_grid(model.drift), on_grid(diffusion), x0, horizon, lo, hi, cells)
