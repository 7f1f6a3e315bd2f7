"""The weak error of SGD or PGPO against an SDE, over a ladder of learning rates.

    e(η) = E g(x_{T/η}) − E g(X_T)        (signed), with a 95% interval from its standard error

For each η: the discrete process and the SDE *at that η* (the SDE itself depends on η) are run to the
same horizon T. The reference E g(X_T) is exact where the problem's oracle covers the case (SGD on the
exact problems: no Monte Carlo at all), otherwise Euler–Maruyama at dt = η/2^refine with Richardson
extrapolation (weighted by its weak order, `sde_lab.schemes`), coupled to the discrete process through
common random numbers (`sde_lab.coupling`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats
from tqdm.auto import tqdm

from pgpo import Multiplier
from sde_lab import observables, schemes, stability
from sde_lab.adaptive import Adaptive, AdaptiveProcess, adaptive_sde
from sde_lab.discrete import DiscreteProcess
from sde_lab.coupling import coupled_paths
from sde_lab.fit import PolynomialFit, SlopeFit, polynomial_fit, sign_change, slope_fit
from sde_lab.problem import Problem, ScaledFactor, dense_factor, expect_output
from sde_lab.sme import SDEModel, sme

REFERENCES = ("auto", "exact", "em")
SCHEME = schemes.EULER_MARUYAMA  # the "em" reference's scheme: its weak order weights the Richardson step
# no Monte Carlo verdict from fewer paths: only from 51 on is the standard deviation behind every interval known to
# 10% (its relative standard error is 1/√(2(M − 1)) for Gaussian differences)
MIN_PATHS = 51
HALF_WIDTH = 0.2  # the note `paths_needed`: paths for a 95% half-width of 20% of |e| at each η
MAX_CI_WIDTH = 0.3  # and a slope interval narrower than this, whatever the claimed order
MIN_SETTLED = 3  # and this many settled points: two give a slope but no sign that it has settled


@dataclass
class WeakErrorResult:
    """A measured ladder. Arrays are indexed like `etas` (coarsest first)."""

    problem: str
    process: str
    sde: str
    test_fn: str
    claimed_order: int
    horizon: float
    etas: np.ndarray
    errors: np.ndarray  # signed, e = E g(x) − E g(X)
    stderr: np.ndarray  # 0 for exact references
    paths: int  # 0 when nothing was sampled
    diverged: np.ndarray  # paths per η that were non-finite or blew up (see `BLOW_UP`), excluded from the means
    reference: str  # "exact" or "em(dt=η/2^r, richardson)"
    slope_fit: SlopeFit
    poly_fit: PolynomialFit
    checkpoint_times: np.ndarray  # the multiples of the coarsest η up to T
    checkpoint_errors: np.ndarray  # (len(etas), len(checkpoint_times)) signed errors there
    paths_needed: np.ndarray  # M for a 95% t-interval of ±20% of |e| (docs/weak_order.md), ≥ MIN_PATHS; 0 when exact
    notes: list[str] = field(default_factory=list)
    stability: np.ndarray | None = None  # η·ρ_max·λ_max per η (NaN where λ_max is unknown); < 2 is stable
    lambda_source: str = "unknown"  # "declared", "measured" (at x0 and along the SDE's paths) or "unknown"
    eigenvalue: complex | float | None = None  # the eigenvalue of ∂grad/∂x that sets a measured λ_max (`stability`)
    stability_override: str | None = None  # the user's reason for overriding the stability check, if any
    rho_max: float = 1.0  # the multiplier's ρ_max (1 for SGD), which the stability ratios carry
    fit_in: str = "η"  # the step the slope is fitted in: η, or "h = η²" for an adaptive process (its SDE time step)

    @property
    def fit_steps(self) -> np.ndarray:
        """The abscissae of the slope and polynomial fits: η, or h = η² for an adaptive process."""
        return self.etas**2 if self.fit_in.startswith("h") else self.etas

    @property
    def invalid_reasons(self) -> list[str]:
        """Why this ladder is not a measurement of the weak error at all (empty when it is): paths that were
        non-finite or blew up, or a learning rate past the stability limit η·ρ_max·λ_max < 2."""
        reasons = []
        bad = [(float(eta), int(n)) for eta, n in zip(self.etas, self.diverged) if n > 0]
        if bad:
            reasons.append(f"non-finite or blown-up paths (of {self.paths}): "
                           + ", ".join(f"{n} at η = {eta:g}" for eta, n in bad))
        if not np.all(np.isfinite(self.errors)):
            reasons.append("no finite error at η = " + ", ".join(f"{e:g}" for e in self.etas[~np.isfinite(self.errors)]))
        past = self.past_stability
        if past and self.stability_override is None:
            reasons.append(f"past stability (λ_max {self.lambda_source}"
                           f"{stability.explain(self.eigenvalue, past[0][0] * self.rho_max)}): "
                           + ", ".join(f"η·ρ_max·λ_max = {v:.3g} ≥ 2 at η = {eta:g}" for eta, v in past))
        return reasons

    @property
    def past_stability(self) -> list[tuple[float, float]]:
        """(η, η·ρ_max·λ_max) for each η at or past the stability limit (ratio ≥ 2)."""
        if self.stability is None:
            return []
        return [(float(eta), float(v)) for eta, v in zip(self.etas, self.stability) if v >= 2.0]

    @property
    def too_few_paths(self) -> str:
        """Why the paths cannot carry any Monte Carlo verdict ('' when they can, or when nothing was sampled)."""
        if not self.paths or self.paths >= MIN_PATHS:
            return ""
        return (f"too few paths: {self.paths} were run, a verdict needs at least {MIN_PATHS} (from there the standard "
                f"deviation behind each interval is known to 10%)")

    @property
    def max_errors(self) -> np.ndarray:
        """max over checkpoints of |e|: the quantity in the definition of weak order."""
        return np.abs(self.checkpoint_errors).max(axis=1)

    @property
    def slope(self) -> float:
        return self.slope_fit.slope

    @property
    def slope_ci(self) -> tuple[float, float]:
        return self.slope_fit.ci

    @property
    def diagnostics(self) -> dict:
        """What the fit used and why points were dropped, by η."""
        return {
            "range_used": [float(self.etas[i]) for i in self.slope_fit.used],
            "dropped": {float(self.etas[i]): why for i, why in sorted(self.slope_fit.dropped.items())},
            "polynomial": dict(zip(("a", "C1", "C2"), self.poly_fit.coefficients)),
            "polynomial_ci": dict(zip(("a", "C1", "C2"), self.poly_fit.ci)),
            "supports_order_one": self.poly_fit.supports_order_one,
            "diverged": self.diverged.tolist(),
            "stability": None if self.stability is None else self.stability.tolist(),
            "lambda_source": self.lambda_source,
            "max_errors_over_checkpoints": self.max_errors.tolist(),
            "paths_needed": self.paths_needed.tolist(),
        }

    def verdict(self) -> str:
        """Does the measurement bear out the claimed order? (the acceptance rules of `docs/weak_order.md`.)

        In this order: a ladder with any non-finite or blown-up path, or past stability, is "invalid: …" (see
        `invalid_reasons`) whatever its fit says. A Monte Carlo ladder of fewer than MIN_PATHS paths is
        "inconclusive: too few paths". An error that changes sign along the ladder (between two points whose sign
        is resolved, `fit.sign_change`) is "sign change: …", whatever the reference. The slope then needs
        MIN_SETTLED settled points and an interval narrower than MAX_CI_WIDTH, for every order; otherwise
        "inconclusive: …" (the paths a ±20% interval of |e| would need at each η are a note, `paths_needed`).
        Order p holds when |slope − p| < 0.2 (p ≤ 1) or 0.3 (p = 2); a slope clearly above p also bears the claim
        out (weak order p is an upper bound on the error) and says so. A claim of order 0 (no convergence) holds
        when the signed fit's intercept is not 0, or, where it is, when a slope that passes the checks above is
        at most 0.5. A stability check overridden by the user (`weak_error(override_stability=…)`) on a ladder
        past it adds the user's reason to the verdict.
        """
        invalid = self.invalid_reasons
        if invalid:
            return "invalid: " + "; ".join(invalid)
        verdict = self._judge()
        if self.stability_override is not None and self.past_stability:
            verdict += f" (stability check overridden: {self.stability_override})"
        return verdict

    def _judge(self) -> str:
        few = self.too_few_paths
        if few:
            return "inconclusive: " + few
        if self.claimed_order == 0:
            a_lo, a_hi = self.poly_fit.ci[0]
            if not (a_lo <= 0.0 <= a_hi):  # a plateau, read off the signed fit, which a sign change does not upset
                return "no convergence, as claimed"
        unsettled = self._slope_unsettled()
        if unsettled:
            return unsettled
        if self.claimed_order == 0:
            return "no convergence, as claimed" if self.slope <= 0.5 else "FAIL: converges"
        tol = 0.3 if self.claimed_order >= 2 else 0.2  # order 2 is read on shorter settled ranges
        if abs(self.slope - self.claimed_order) < tol:
            return f"order {self.claimed_order} holds"
        if self.slope > self.claimed_order:
            return f"order {self.claimed_order} holds (measured higher)"
        return f"FAIL: slope {self.slope:.2f}"

    def _slope_unsettled(self) -> str:
        """Why the log–log slope carries no verdict ('' when it does): a sign change, no or too short a settled
        range, or too wide an interval."""
        change = sign_change(self.etas, self.errors, self.stderr)
        if change is not None:
            coarse, fine = change
            return (f"sign change: the error changes sign between η = {self.etas[coarse]:g} and η = "
                    f"{self.etas[fine]:g} (e = {self.errors[coarse]:+.3g}, {self.errors[fine]:+.3g}): no slope is read "
                    f"across it; the order shows on a ladder that starts at η = {self.etas[fine]:g} or below")
        used = self.slope_fit.used
        if not np.isfinite(self.slope) or len(used) == 0:
            return "inconclusive: no settled range"
        if len(used) < MIN_SETTLED:
            return (f"inconclusive: {len(used)} settled points (η = {', '.join(f'{self.etas[i]:g}' for i in used)}): "
                    f"a slope needs {MIN_SETTLED} to show it has settled")
        lo, hi = self.slope_ci
        if not hi - lo < MAX_CI_WIDTH:
            return f"inconclusive: CI too wide ({hi - lo:.2f} ≥ {MAX_CI_WIDTH:g})"
        return ""

    def passed(self) -> bool:
        return not self.verdict().startswith(("FAIL", "inconclusive", "invalid", "sign change"))


def weak_error(problem: Problem, etas, horizon: float, multiplier: Multiplier | None = None, sde: str = "scaled",
               order: int = 1, signal: str = "state", test_fn=None, paths: int = 4000, seed: int = 0, *,
               drift: str = "correct", noise: str | None = None, reference: str = "auto", refine: int = 4,
               richardson: bool = True, device="cpu", progress: bool = False, adaptive: Adaptive | None = None,
               rho_in: str = "drift", override_stability: str | None = None) -> WeakErrorResult:
    """Measure e(η) on the ladder `etas` at time `horizon` and fit its order.

    Args:
        problem: a `Problem` (see `sde_lab.catalog` for the built-ins).
        etas: learning rates; each must divide `horizon` into a whole number of steps.
        horizon: T.
        multiplier: a `pgpo.Multiplier` for PGPO, or None for SGD.
        sde: "scaled" (diffusion ×ρ, Li–Tai–E) or "paper" (diffusion unchanged) — PGPO only; or a
            callable η ↦ `SDEModel`, to test an SDE of one's own against the discrete process.
        order: 1 or 2, the SME's order.
        signal: "state" (ρ from I(x)) or "minibatch" (ρ from the sampled batch's own I_γ).
        test_fn: "loss", "norm2", "coord0", "cos", "norm4", a callable (M, d) → (M,), or None.
        paths: Monte Carlo paths per η (unused with an exact reference); a verdict needs at least MIN_PATHS.
        seed: the seed; η number j draws from seed·1000 + j.
        drift: for signal="minibatch": "correct" (E[ρ_γ ∇ℓ_γ]) or "naive" (ρ(I(x))∇L).
        noise: the discrete process's gradient noise: "gaussian" (coupled) or "sample" (the problem's
            real mini-batches, independent of the reference). Default: "sample" for signal="minibatch",
            else "gaussian".
        reference: "auto" (exact where the oracle covers it), "exact" (or an error), or "em".
        refine: r, the reference solves at dt = η/2^r (r ≥ 1; `docs/weak_order.md` asks r ≥ 4).
        richardson: extrapolate the reference in dt.
        device: torch device for the paths.
        progress: show a progress bar over the ladder.
        adaptive: an `sde_lab.adaptive.Adaptive` (RMSprop or Adam in the scaling of Malladi et al.): the
            discrete process is that optimizer at lr η (PGPO on it with a multiplier, state signal), one step
            standing for h = η² of SDE time, so `horizon` takes T/η² steps; the SDE is
            `adaptive.adaptive_sde` with `rho_in`; the test function reads θ from the augmented state.
        rho_in: for PGPO on an adaptive optimizer, where ρ enters the SDE besides θ's drift: "drift" or "both".
        override_stability: the reason the stability check (`sde_lab.stability`: the step I − ηρJ must contract
            where the flow does) does not apply to this ladder, e.g. ρ never reaching ρ_max on it: a ladder past
            the limit is then measured instead of refused or marked invalid, and the reason is kept in the
            result's notes and its verdict. None (the default) keeps the check.
    """
    etas = _ladder(etas)
    if isinstance(horizon, bool) or not isinstance(horizon, (int, float)) or not 0 < horizon < float("inf"):
        raise ValueError(f"horizon must be a positive finite number, got {horizon!r}")
    if override_stability is not None and (not isinstance(override_stability, str) or not override_stability.strip()):
        raise ValueError(f"override_stability must be the reason the stability check does not apply (a non-empty "
                         f"string), got {override_stability!r}")
    for name, value, least in (("paths", paths, 2), ("refine", refine, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    if adaptive is not None and (signal != "state" or order != 1 or callable(sde) or noise not in (None, "gaussian")):
        raise ValueError("adaptive processes are measured with signal='state', order=1, Gaussian noise and their "
                         "own SDE (`rho_in` chooses among the PGPO candidates)")
    time_steps = etas if adaptive is None else etas**2  # the SDE time of one step: η, or η² for RMSprop and Adam
    steps = _steps(time_steps, horizon)
    rho_max = 1.0 if multiplier is None else multiplier.rho_max
    # the stability bound η·ρ_max·λ_max < 2 is SGD's; an adaptive step's size is set by its preconditioner
    lam, eigenvalue = (stability.check_ladder(problem, etas, rho_max, override_stability) if adaptive is None
                       else (None, None))
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
    if noise is None:
        noise = "sample" if signal == "minibatch" else "gaussian"
    test_name, g = observables.resolve(test_fn, problem)
    if adaptive is not None:
        models = [adaptive_sde(problem, adaptive, multiplier, rho_in)] * len(etas)  # the SDE does not depend on η
        processes = [AdaptiveProcess(problem, eta, adaptive, multiplier) for eta in etas]
        on_theta = g
        g = lambda state: on_theta(state[:, :problem.dim])  # noqa: E731  test functions see θ only
    else:
        models = [_user_model(sde, eta, problem) if callable(sde) else sme(problem, eta, multiplier, sde, order, signal,
                                                                            drift) for eta in etas]
        processes = [DiscreteProcess(problem, eta, multiplier, signal, noise) for eta in etas]

    times = time_steps[0] * np.arange(1, steps[0] + 1)  # every multiple of the coarsest step
    exact = _exact_errors(problem, etas, steps, horizon, multiplier, sde, order, noise, test_name, reference, times,
                          adaptive)
    notes = []
    if exact is not None:
        checkpoints = exact
        errors, stderr, used_paths, ref_name = exact[:, -1], np.zeros(len(etas)), 0, "exact"
        diverged, needed = np.zeros(len(etas), int), np.zeros(len(etas), int)
    else:
        if refine < 1:
            raise ValueError("refine must be >= 1: a reference at dt = η measures zero error by construction")
        errors, stderr, needed = np.zeros(len(etas)), np.zeros(len(etas)), np.zeros(len(etas), int)
        diverged = np.zeros(len(etas), int)
        visited = []  # per checkpoint, the SDE path farthest from the origin: where the curvature is measured
        reach, final_norms = np.zeros(len(etas)), []  # the SDE paths' largest norm, and their final norms, per η
        checkpoints = np.zeros((len(etas), len(times)))
        ladder = tqdm(list(enumerate(etas)), desc=f"{problem.name} {processes[0].name} vs {models[0].name}",
                      disable=not progress, leave=False)
        for j, eta in ladder:
            gen = torch.Generator(device=device).manual_seed(seed * 1000 + j)
            seen = []

            def observe(x, y, y_coarse):
                farthest = _farthest(y)
                reach_now = float(farthest.norm()) if len(farthest) else 0.0
                seen.append(_difference(g, x, y, y_coarse, reach_now, SCHEME.weak_order))
                visited.append(farthest)
                reach[j] = max(reach[j], reach_now)

            _, y_final, _ = coupled_paths(processes[j], models[j], steps[j], paths, refine, richardson, gen, device,
                                          every=steps[j] // steps[0], observe=observe, scheme=SCHEME)
            final_norms.append(y_final.norm(dim=-1).double().cpu().numpy())
            checkpoints[j] = [d.mean() if len(d) else np.nan for d, _ in seen]
            d, diverged[j] = seen[-1]
            with np.errstate(over="ignore", invalid="ignore"):  # blown-up ladders: flagged below, not fatal here
                errors[j] = d.mean() if len(d) else np.nan
                stderr[j] = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else np.nan
                if len(d) > 1 and errors[j] != 0:
                    needed[j] = paths_for(d.std(ddof=1), errors[j])
        # the reference itself blown up (Euler–Maruyama at dt = η/2^r past its own stability): its paths reach
        # BLOW_UP times farther than the finest η's, whose reference is the most stable of the ladder
        bound = BLOW_UP * (1.0 + float(problem.x0.norm()) + reach[-1])
        for j in range(len(etas)):
            if reach[j] > bound:
                blown = int((~(final_norms[j] <= bound)).sum())
                diverged[j] = min(paths, max(diverged[j] + blown, 1))
                notes.append(f"the SDE reference blew up at η = {etas[j]:g}: its paths reach |Y| = {reach[j]:.3g}, "
                             f"the finest η's {reach[-1]:.3g}")
        used_paths = paths
        ref_name = f"em(dt=η/{2**refine}{', richardson' if richardson else ''})"
        if needed[-1] > paths:
            notes.append(f"at η = {etas[-1]:g} a 95% half-width of {HALF_WIDTH:.0%} of |e| needs {needed[-1]} paths, "
                         f"{paths} were run")
        if diverged.any():
            notes.append(f"non-finite or blown-up paths excluded per η: {diverged.tolist()} of {paths}")
        if visited and adaptive is None:  # an adaptive run has no SGD stability bound to check
            # the curvature where the SDE went, not only at x0: a non-convex problem steepens away from it
            states = torch.cat(visited)
            states = states[torch.linspace(0, len(states) - 1, min(len(states), 64)).round().long()]
            along = stability.step_limit(problem.grad, torch.cat([problem.x0[None, :], states.to(problem.x0)]))
            if along is not None and (lam is None or along[0] > lam):
                lam, eigenvalue = along
    if adaptive is not None:
        lam, source = None, "unknown"
        notes.append("no stability check: the bound η·ρ_max·λ_max < 2 is SGD's, not an adaptive optimizer's")
    else:
        lam, source = stability.largest(problem.lambda_max, lam)
        if source == "declared":
            eigenvalue = None  # a declared bound has no eigenvalue behind it
        if lam is None:
            notes.append(f"no stability check: the problem declares no lambda_max and its curvature could not be "
                         f"measured (d = {problem.dim} > {stability.MAX_DIM}, or a non-finite Hessian)")
    ratios = np.full(len(etas), np.nan) if lam is None else etas * rho_max * max(lam, 0.0)
    if override_stability is not None:
        past = [f"{eta:g}" for eta, v in zip(etas, ratios) if v >= 2.0]
        notes.append(f"stability check overridden ({override_stability}): " + (
            f"η·ρ_max·λ_max ≥ 2 at η = {', '.join(past)}" if past else "not needed, every η is within the limit"))
    sampled = None if exact is not None else np.maximum(paths - diverged - 1, 1)  # the degrees of freedom of each se
    # order p means e = O(step^p) in the SDE's own time step: η for SGD and PGPO, h = η² for RMSprop and Adam,
    # whose weak order 1 is e = O(η²) (Malladi et al.'s definition, on the time scale t = kη²)
    fit = slope_fit(time_steps, errors, stderr, dof=sampled)
    poly = polynomial_fit(time_steps, errors, stderr, fit.used, dof=sampled)
    return WeakErrorResult(
        problem=problem.name, process=processes[0].name, sde=models[0].name, test_fn=test_name,
        claimed_order=models[0].claimed_order, horizon=float(horizon), etas=etas, errors=errors, stderr=stderr,
        paths=used_paths, diverged=diverged, reference=ref_name, slope_fit=fit, poly_fit=poly,
        checkpoint_times=times, checkpoint_errors=checkpoints, paths_needed=needed, notes=notes,
        stability=ratios, lambda_source=source, fit_in="η" if adaptive is None else "h = η²", eigenvalue=eigenvalue,
        stability_override=override_stability, rho_max=rho_max,
    )


def paths_for(sd: float, error: float, half_width: float = HALF_WIDTH) -> int:
    """The paths M a verdict needs at one η: at least MIN_PATHS, and the least M whose 95% t-interval of the mean,
    t_{M−1}·sd/√M, is at most `half_width`·|error| (docs/weak_order.md's rule, with the t quantile the interval
    uses)."""
    ratio = sd / (half_width * abs(error))
    huge = np.iinfo(np.int64).max
    if not np.isfinite(ratio) or (2 * ratio) ** 2 >= huge / 4:
        return huge

    def enough(m: int) -> bool:  # t_{M−1}/√M falls as M grows: a monotone test, searched by bisection
        return stats.t.ppf(0.975, m - 1) * ratio <= np.sqrt(m)

    if enough(MIN_PATHS):
        return MIN_PATHS
    low = max(MIN_PATHS, int((stats.norm.ppf(0.975) * ratio) ** 2))  # t > z: too few still
    high = 2 * low
    while not enough(high):
        low, high = high, 2 * high
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high


BLOW_UP = 1e3  # a discrete path this many times farther out than every SDE path (plus 1) has blown up


def _difference(g, x, y, y_coarse, reach: float, order: int):
    """Per-path g(x) − reference (Richardson-extrapolated at weak order `order` when y_coarse is given), sound
    paths only; x, y, y_coarse are (M, d).

    A path is dropped when anything in it is non-finite, or when the discrete state has blown up: its
    norm exceeds BLOW_UP·(1 + `reach`, the largest norm of any finite SDE path) — a finite but diverged path
    would otherwise enter the mean with an error of 1e15.
    Returns (differences as a float64 numpy array, number of paths dropped).
    """
    with torch.no_grad():
        ref = schemes.richardson(g(y), g(y_coarse), order) if y_coarse is not None else g(y)
        diff = g(x) - ref
        sound = torch.isfinite(diff) & torch.isfinite(x).all(-1) & torch.isfinite(y).all(-1)
        if y_coarse is not None:
            sound &= torch.isfinite(y_coarse).all(-1)
        sound &= x.norm(dim=-1) <= BLOW_UP * (1.0 + reach)
    return diff[sound].double().cpu().numpy(), int((~sound).sum())


def _farthest(y: torch.Tensor) -> torch.Tensor:
    """The row of y (M, d) with the largest finite norm, as (1, d) on the CPU (empty when no norm is finite)."""
    norms = y.norm(dim=-1)
    finite = torch.isfinite(norms)
    if not finite.any():
        return y[:0].cpu()
    return y[torch.where(finite, norms, -1.0).argmax()][None, :].cpu()


def _ladder(etas) -> np.ndarray:
    """The learning rates, coarsest first; refused unless ≥ 2 distinct, positive and finite."""
    try:
        values = [float(e) for e in np.asarray(etas, dtype=object).reshape(-1)]
    except (TypeError, ValueError):
        raise ValueError(f"etas must be numbers, got {etas!r}") from None
    ladder = np.asarray(sorted(values, reverse=True))
    if len(ladder) < 2 or not np.all(np.isfinite(ladder)) or np.any(ladder <= 0):
        raise ValueError(f"etas must hold at least two positive finite learning rates, got {ladder.tolist()}")
    close = np.isclose(ladder[1:], ladder[:-1], rtol=1e-9, atol=0.0)
    if close.any():
        raise ValueError(f"etas must be distinct: {ladder[1:][close].tolist()} repeated in {ladder.tolist()} "
                         f"(a slope needs errors at different learning rates)")
    return ladder


def _user_model(sde, eta: float, problem: Problem) -> SDEModel:
    """`sde(eta)`, checked once: an SDEModel whose drift is (M, d) and diffusion (M, d, m) or (d, m)."""
    model = sde(eta)
    if not isinstance(model, SDEModel):
        raise TypeError(f"sde(eta) must return an sde_lab.SDEModel, got {type(model).__name__}")
    x = problem.x0.expand(2, -1).clone()
    sizes = {"M": 2, "d": problem.dim, "m": model.noise_dim}
    expect_output(f"SDE {model.name!r}: drift(x)", model.drift(x), ("M", "d"), sizes, x.dtype)
    factor = model.diffusion(x)
    if isinstance(factor, ScaledFactor):
        scale_dims = ("M",) if isinstance(factor.scale, torch.Tensor) and factor.scale.dim() == 1 else ("M", "d")
        expect_output(f"SDE {model.name!r}: diffusion(x).scale", factor.scale, scale_dims, sizes, x.dtype)
    if not isinstance(factor, torch.Tensor):  # every structured form is checked as the matrix it stands for
        factor = dense_factor(factor, x.shape[0])
    dims = ("d", "m") if factor.dim() == 2 else ("M", "d", "m")
    expect_output(f"SDE {model.name!r}: diffusion(x)", factor, dims, sizes, x.dtype)
    return model


def _steps(etas: np.ndarray, horizon: float) -> list[int]:
    steps = []
    for eta in etas:
        k = round(horizon / eta)
        if k < 1 or abs(k * eta - horizon) > 1e-9 * horizon:
            raise ValueError(f"eta={eta:g} does not divide horizon={horizon:g} into whole steps")
        steps.append(k)
    return steps


def _exact_errors(problem, etas, steps, horizon, multiplier, sde, order, noise, test_name, reference, times,
                  adaptive=None):
    """Exact signed errors (len(etas), len(times)) from the oracle, or None when it does not cover the case."""
    oracle = problem.oracle
    covered = oracle is not None and multiplier is None and adaptive is None and noise == "gaussian" and not callable(sde)
    covered = covered and oracle.discrete(etas[0], 1, test_name) is not None
    if reference == "exact" and not covered:
        raise ValueError(f"no exact reference for {problem.name!r} with this process and test_fn={test_name!r}")
    if reference == "em" or not covered:
        return None
    return np.array([[oracle.discrete(eta, int(round(t / eta)), test_name) - oracle.sde(eta, t, test_name, order)
                      for t in times] for eta in etas])
