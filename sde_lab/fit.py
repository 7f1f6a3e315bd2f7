"""Fitting weak-error ladders: the signed polynomial and the log–log slope on the asymptotic range.

Signed:  e_j = a + C₁η_j + C₂η_j²  by weighted least squares. Order 1 is supported when the CI of a
         holds 0 and that of C₁ does not (C₁ ≈ lim e/η, the leading constant).
Slope:   log|e_j| = log C + p·log η_j  by weighted least squares on the asymptotic range only: points
         with |e| < 3·se are dropped as noise, and, walking from the finest η towards coarser ones,
         a point joins while the errors keep their sign and the local slope log(e_j/e_{j+1})/log(η_j/η_{j+1})
         stays within max(0.1, 2·se of the difference) of the running mean of the local slopes so far
         (the successive ratios have settled).

Intervals are 95%: with sampling errors (se > 0) from the variances measured with them, inflated by the
reduced χ² when the scatter exceeds them, as a Student-t interval on the degrees of freedom of the
least-measured point (M − 1 for M paths: a standard deviation from two paths is 30× too small one time in
40, and a normal quantile would take it as exact); with exact errors (se = 0) from the residuals (a
t-interval, the only information about the misfit there is).

The signs of the errors are judged apart from the fits (`sign_change`): an error that changes sign along
the ladder has no log–log slope across the change, and a fit that looks only at the points on one side of
it would judge the same ladder differently with a noisier reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats


@dataclass
class SlopeFit:
    slope: float
    ci: tuple[float, float]
    used: list[int] = field(default_factory=list)  # indices into the ladder
    dropped: dict[int, str] = field(default_factory=dict)  # index → why


@dataclass
class PolynomialFit:
    coefficients: tuple[float, float, float]  # a, C₁, C₂
    ci: tuple[tuple[float, float], ...]
    used: list[int] = field(default_factory=list)

    @property
    def supports_order_one(self) -> bool:
        (a_lo, a_hi), (c_lo, c_hi) = self.ci[0], self.ci[1]
        return a_lo <= 0.0 <= a_hi and not (c_lo <= 0.0 <= c_hi)


def weighted_least_squares(design: np.ndarray, y: np.ndarray, se: np.ndarray | None, dof: float = np.inf):
    """β, 95% half-widths for y ≈ design·β; se (per point) or None for residual-based errors; `dof`: the degrees
    of freedom of the estimated se (the least of the points'; inf where they are known exactly)."""
    n, k = design.shape
    se_dof, dof = dof, n - k
    if se is None:
        w = np.ones(n)
    else:
        w = 1.0 / np.asarray(se) ** 2
    xw = design * np.sqrt(w)[:, None]
    beta, *_ = np.linalg.lstsq(xw, y * np.sqrt(w), rcond=None)
    resid = (y - design @ beta) * np.sqrt(w)
    unscaled = np.linalg.pinv(xw.T @ xw)
    if se is None:
        if dof <= 0:
            return beta, np.full(k, np.inf)
        cov = unscaled * (resid @ resid) / dof
        q = stats.t.ppf(0.975, dof)
    else:
        # measured variances: a t-interval on their degrees of freedom, scaled up by the reduced χ² when the
        # points scatter more than their errors say (the misfit of a not-quite-asymptotic range shows up there)
        chi2 = (resid @ resid) / dof if dof > 0 else 1.0
        cov = unscaled * max(1.0, chi2)
        q = _quantile(se_dof)
    return beta, q * np.sqrt(np.diag(cov))


def slope_fit(etas, errors, stderr, settle: float = 0.1, dof=None) -> SlopeFit:
    """The log–log slope of |e| against η on the asymptotic range of a ladder (any order of η); `dof`: per
    point, the degrees of freedom of its se (M − 1 for M paths; None: known exactly)."""
    etas, errors, stderr = (np.asarray(v, dtype=np.float64) for v in (etas, errors, stderr))
    dof = _dof(dof, len(etas))
    order = np.argsort(etas)  # finest first
    dropped: dict[int, str] = {}
    kept = []
    for i in order:
        if not np.isfinite(errors[i]):
            dropped[int(i)] = "not finite"
        elif errors[i] == 0.0 or abs(errors[i]) < 3 * stderr[i]:
            dropped[int(i)] = "below noise (|e| < 3 se)"
        else:
            kept.append(int(i))
    used = kept[:2]
    if len(used) == 2 and np.sign(errors[used[0]]) != np.sign(errors[used[1]]):
        dropped[used[1]] = "sign change"
        used = used[:1]
    local = [local_slope(etas, errors, stderr, used[0], used[1])] if len(used) == 2 else []
    for i in kept[2:]:
        if len(used) < 2:
            dropped[i] = "pre-asymptotic"
            continue
        s, s_se = local_slope(etas, errors, stderr, used[-1], i)
        mean = np.mean([v for v, _ in local])
        mean_se = np.sqrt(np.sum([v**2 for _, v in local])) / len(local)
        if np.sign(errors[i]) != np.sign(errors[used[-1]]):
            reason = "sign change"
        elif abs(s - mean) > max(settle, 2 * np.hypot(s_se, mean_se)):
            reason = "pre-asymptotic"
        else:
            used.append(i)
            local.append((s, s_se))
            continue
        # the walk stops at the first unsettled point: everything coarser is pre-asymptotic
        dropped[i] = reason
        for j in kept[kept.index(i) + 1:]:
            dropped[j] = "pre-asymptotic"
        break
    if len(used) < 2:
        for i in used:
            dropped[i] = "too few settled points"
        return SlopeFit(float("nan"), (float("nan"), float("nan")), [], dropped)
    used = sorted(used, key=lambda i: -etas[i])
    x = np.log(etas[used])
    y = np.log(np.abs(errors[used]))
    se = stderr[used] / np.abs(errors[used]) if np.all(stderr[used] > 0) else None
    beta, half = weighted_least_squares(np.column_stack([np.ones_like(x), x]), y, se, dof[used].min())
    return SlopeFit(float(beta[1]), (float(beta[1] - half[1]), float(beta[1] + half[1])), used, dropped)


def polynomial_fit(etas, errors, stderr, used=None, dof=None) -> PolynomialFit:
    """e ≈ a + C₁η + C₂η² on the points `used` (default: all finite ones); `dof` as for `slope_fit`."""
    etas, errors, stderr = (np.asarray(v, dtype=np.float64) for v in (etas, errors, stderr))
    dof = _dof(dof, len(etas))
    if used is None or len(used) < 4:
        used = [i for i in range(len(etas)) if np.isfinite(errors[i])]
    used = list(used)
    e = etas[used]
    se = stderr[used] if np.all(stderr[used] > 0) else None
    beta, half = weighted_least_squares(np.column_stack([np.ones_like(e), e, e * e]), errors[used], se,
                                        dof[used].min() if used else np.inf)
    return PolynomialFit(tuple(float(b) for b in beta), tuple((float(b - h), float(b + h)) for b, h in zip(beta, half)), used)


def local_slope(etas, errors, stderr, i, j) -> tuple[float, float]:
    """(slope, se) of log|e| against log η between ladder points i and j (indices into the (n,) arrays)."""
    span = np.log(etas[i] / etas[j])
    s = np.log(abs(errors[i]) / abs(errors[j])) / span
    rel = np.hypot(stderr[i] / abs(errors[i]), stderr[j] / abs(errors[j]))
    return float(s), float(rel / abs(span))


def sign_change(etas, errors, stderr) -> tuple[int, int] | None:
    """The finest pair of ladder points (indices, coarser first) between which the error changes sign, judged on
    the points whose sign is resolved (finite, non-zero, |e| ≥ 3 se, the fits' own noise rule); None if none."""
    etas, errors, stderr = (np.asarray(v, dtype=np.float64) for v in (etas, errors, stderr))
    resolved = [int(i) for i in np.argsort(-etas) if np.isfinite(errors[i]) and errors[i] != 0.0
                and abs(errors[i]) >= 3 * stderr[i]]
    for coarse, fine in reversed(list(zip(resolved, resolved[1:]))):
        if np.sign(errors[coarse]) != np.sign(errors[fine]):
            return coarse, fine
    return None


def _quantile(dof: float) -> float:
    """The two-sided 95% quantile: Student's t on `dof` degrees of freedom, the normal one for dof = inf."""
    return float(stats.norm.ppf(0.975) if not np.isfinite(dof) else stats.t.ppf(0.975, dof))


def _dof(dof, n: int) -> np.ndarray:
    """Per-point degrees of freedom as a float array of length n (inf: an se known exactly, or none given)."""
    if dof is None:
        return np.full(n, np.inf)
    dof = np.asarray(dof, dtype=np.float64).reshape(-1)
    if len(dof) != n or np.any(dof < 1):
        raise ValueError(f"dof must hold one value >= 1 per ladder point ({n}), got {dof.tolist()}")
    return dof
