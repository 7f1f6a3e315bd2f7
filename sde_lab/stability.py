"""Where a ladder of learning rates stops being a measurement: η·ρ_max·λ_max ≥ 2.

Along an eigenvector of the Hessian with eigenvalue λ, a (PGPO) step multiplies the distance to the
minimum by (1 − ηρλ): past ηρλ = 2 the discrete process diverges while its SDE does not, and a weak
error measured there is the blow-up, not the discretisation. A problem that declares `lambda_max` is
checked against it; one that does not has its curvature measured — the largest eigenvalue of the
central-difference Hessian of `grad` (symmetrised), at x0 before the run and at states the SDE's
paths visit during it.
"""

from __future__ import annotations

import torch

MAX_DIM = 2048  # beyond this, the (2d rows × d) difference batches cost more than the measurement itself


def max_curvature(grad, states: torch.Tensor, step: float = 1e-4) -> float | None:
    """The largest Hessian eigenvalue of the field `grad` over `states` (K, d), from central differences
    with a step of `step`·max(1, |x|_∞); None when d > MAX_DIM or no state gives a finite Hessian."""
    states = states[torch.isfinite(states).all(dim=1)]
    k, d = states.shape
    if k == 0 or d > MAX_DIM:
        return None
    best = None
    per_call = max(1, (1 << 22) // (2 * d * d))  # states per call: about 4M numbers of perturbed inputs
    for chunk in states.split(per_call):
        n = chunk.shape[0]
        h = step * chunk.abs().amax(dim=1).clamp(min=1.0)  # (n,)
        shift = h[:, None, None] * torch.eye(d, dtype=chunk.dtype, device=chunk.device)  # (n, d, d)
        points = torch.cat([(chunk[:, None, :] + shift).reshape(n * d, d), (chunk[:, None, :] - shift).reshape(n * d, d)])
        g = grad(points)
        jacobian = (g[: n * d] - g[n * d:]).reshape(n, d, d) / (2 * h[:, None, None])  # row i: ∂grad/∂x_i
        hessian = 0.5 * (jacobian + jacobian.transpose(1, 2))
        finite = torch.isfinite(hessian).flatten(1).all(dim=1)
        if finite.any():
            top = float(torch.linalg.eigvalsh(hessian[finite])[:, -1].max())
            best = top if best is None else max(best, top)
    return best


def check_ladder(problem, etas, rho_max: float) -> float | None:
    """Refuse a ladder whose coarsest η breaks η·ρ_max·λ_max < 2, with λ_max declared by the problem or
    measured at x0. Returns λ_max as used (None when it could not be measured)."""
    lam, source = largest(problem.lambda_max, max_curvature(problem.grad, problem.x0[None, :]))
    if lam is None or lam <= 0:
        return lam
    worst = max(etas) * rho_max * lam
    if worst >= 2.0:
        if source == "declared":
            source = ""
        elif source == "measured":
            source = ", measured at x0 (the problem declares no lambda_max)"
        else:
            source = f", measured at x0: the declared lambda_max = {problem.lambda_max:.3g} is too small"
        raise ValueError(
            f"eta={max(etas):g} is unstable on {problem.name!r}: η·ρ_max·λ_max = {worst:.3g} ≥ 2 "
            f"(λ_max = {lam:.3g}{source}, ρ_max = {rho_max:g}); start the ladder below {2 / (rho_max * lam):.3g}")
    return lam


def largest(declared: float | None, measured: float | None) -> tuple[float | None, str]:
    """The λ_max to check against, and where it came from: the declared one, unless a measurement exceeds it
    by more than the finite differences' error (1%) — a declared bound that the curvature breaks is wrong."""
    if measured is not None and (declared is None or measured > 1.01 * declared):
        return measured, "measured" if declared is None else "measured (above the declared)"
    return declared, "declared" if declared is not None else "unknown"
