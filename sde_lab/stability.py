"""Where a ladder of learning rates stops being a measurement: a step that no longer contracts where the flow does.

Linearised at a state, a (PGPO) step is the map I − ηρJ, J = ∂grad/∂x. Along an eigenvector of J with eigenvalue
λ it multiplies the distance to the fixed point by 1 − ηρλ. Where the SDE's flow contracts (Re λ > 0), the
discrete process follows it only while |1 − ηρλ| < 1, that is while ηρ·κ(λ) < 2 with

    κ(λ) = |λ|² / Re λ        (= λ for a real λ; 10.1 for λ = 0.1 ± i, so η < 0.198 there),

and past it the discrete process diverges while the SDE does not: a weak error measured there is the blow-up,
not the discretisation. The eigenvalues are J's own, complex ones included, not those of its symmetric part: a
non-normal J = [[1, 10], [0, 1]] (eigenvalues 1, 1; the step contracts for η < 2) has a symmetric part with
eigenvalue 6, which would refuse η = 0.5, and a weakly damped rotation's symmetric part (0.1·I) would pass
η = 0.5. Eigenvalues with Re λ ≤ 0 are not judged: the flow does not contract along them either (the barrier of
a non-convex loss), so what the step does there is the SDE's own growth, not a step past stability.

The ladder's limit is η·ρ_max·λ_max < 2 with λ_max = max κ(λ) over J's eigenvalues and the states looked at (for
a symmetric J, a Hessian, its largest eigenvalue): a problem that declares `lambda_max` is checked against it;
one that does not has J measured by central differences of `grad`, at x0 before the run and at states the SDE's
paths visit during it.
"""

from __future__ import annotations

import torch

MAX_DIM = 2048  # beyond this, the (2d rows × d) difference batches cost more than the measurement itself
# relative to the largest |J_ij|: central differences are accurate to about 1e-8 there, so an asymmetry or a real
# part below 1e-6 of the spectral radius is the differences' error, not the field's
RESOLVED = 1e-6


def step_limit(grad, states: torch.Tensor, step: float = 1e-4) -> tuple[float, complex | None] | None:
    """(λ_max, the eigenvalue that sets it) over `states` (K, d): λ_max = max |λ|²/Re λ over the eigenvalues λ of
    the central-difference Jacobian of the field `grad` (step `step`·max(1, |x|_∞)) with Re λ > 0, so that
    η·ρ·λ_max < 2 is |1 − ηρλ| < 1 for each of them; (0.0, None) when no eigenvalue has Re λ > 0; None when
    d > MAX_DIM or no state gives a finite Jacobian."""
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
        jacobian = (g[: n * d] - g[n * d:]).reshape(n, d, d) / (2 * h[:, None, None])  # row i: ∂grad/∂x_i (Jᵀ)
        jacobian = jacobian[torch.isfinite(jacobian).flatten(1).all(dim=1)]
        for limit in map(_limit, jacobian):
            if best is None or limit[0] > best[0]:
                best = limit
    return best


def max_curvature(grad, states: torch.Tensor, step: float = 1e-4) -> float | None:
    """λ_max of `step_limit` alone: for a gradient field, the largest Hessian eigenvalue over `states`."""
    limit = step_limit(grad, states, step)
    return None if limit is None else limit[0]


def _limit(jacobian: torch.Tensor) -> tuple[float, complex | None]:
    """(max |λ|²/Re λ over the eigenvalues with Re λ > 0, that λ) of one (d, d) Jacobian."""
    scale = float(jacobian.abs().max())
    if scale == 0.0:
        return 0.0, None
    if float((jacobian - jacobian.T).abs().max()) <= RESOLVED * scale:  # a Hessian: real eigenvalues, from eigvalsh
        eigenvalues = torch.linalg.eigvalsh(0.5 * (jacobian + jacobian.T)).to(torch.complex128)
    else:
        eigenvalues = torch.linalg.eigvals(jacobian).to(torch.complex128)
    radius = float(eigenvalues.abs().max())
    contracting = eigenvalues[eigenvalues.real > RESOLVED * radius]
    if len(contracting) == 0:
        return 0.0, None
    kappa = contracting.abs() ** 2 / contracting.real
    i = int(kappa.argmax())
    value = complex(contracting[i])
    return float(kappa[i]), (value.real if abs(value.imag) <= RESOLVED * radius else value)


def check_ladder(problem, etas, rho_max: float, override: str | None = None) -> tuple[float | None, complex | None]:
    """Refuse a ladder whose coarsest η breaks η·ρ_max·λ_max < 2, with λ_max declared by the problem or measured
    at x0, unless `override` gives the reason the check does not apply. Returns (λ_max as used, the eigenvalue of
    ∂grad/∂x that sets it when measured) — (None, None) when it could not be measured."""
    measured = step_limit(problem.grad, problem.x0[None, :])
    eigenvalue = None if measured is None else measured[1]
    lam, source = largest(problem.lambda_max, None if measured is None else measured[0])
    if source == "declared":
        eigenvalue = None
    if lam is None or lam <= 0:
        return lam, eigenvalue
    worst = max(etas) * rho_max * lam
    if worst >= 2.0 and override is None:
        if source == "declared":
            source = ""
        elif source == "measured":
            source = ", measured at x0 (the problem declares no lambda_max)"
        else:
            source = f", measured at x0: the declared lambda_max = {problem.lambda_max:.3g} is too small"
        raise ValueError(
            f"eta={max(etas):g} is unstable on {problem.name!r}: η·ρ_max·λ_max = {worst:.3g} ≥ 2 "
            f"(λ_max = {lam:.3g}{source}, ρ_max = {rho_max:g}){explain(eigenvalue, max(etas) * rho_max)}; start the "
            f"ladder below {2 / (rho_max * lam):.3g}, or pass override_stability='<why the check does not apply>'")
    return lam, eigenvalue


def explain(eigenvalue: complex | None, step: float) -> str:
    """For a complex eigenvalue λ (a rotation), what λ_max stands for, and |1 − step·λ| at the coarsest η·ρ_max =
    `step`; '' for a real one (λ_max is then the eigenvalue)."""
    if not isinstance(eigenvalue, complex):
        return ""
    return (f"; λ_max is |λ|²/Re λ for the eigenvalue λ = {eigenvalue.real:.3g}{eigenvalue.imag:+.3g}i of ∂grad/∂x, "
            f"where |1 − η·ρ_max·λ| = {abs(1 - step * eigenvalue):.3g} ≥ 1")


def largest(declared: float | None, measured: float | None) -> tuple[float | None, str]:
    """The λ_max to check against, and where it came from: the declared one, unless a measurement exceeds it
    by more than the finite differences' error (1%) — a declared bound that the curvature breaks is wrong."""
    if measured is not None and (declared is None or measured > 1.01 * declared):
        return measured, "measured" if declared is None else "measured (above the declared)"
    return declared, "declared" if declared is not None else "unknown"
