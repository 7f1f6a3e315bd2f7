"""`python -m sde_lab verify`: the claims of `docs/weak_order.md`, measured on the built-in problems.

Each claim is one row: problem, process, SDE, the claim, the measurement (slope with its 95% CI, or
a ratio), and the verdict. Claims marked `must_hold` come from theory; the run exits non-zero if one
of them fails. The others (does the hard cap's kink cost order?) are measurements to report.

`--quick` runs the rows that a minute can resolve. The rest need many more paths, because their
discrete process cannot be coupled tightly to the SDE (the paper's diffusion differs from the
process's noise by ρ; real mini-batch noise is not Gaussian), so the standard error of the error falls
only like √(η/M): they run in the full mode only.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
from scipy import stats

from pgpo import Multiplier
from sde_lab import catalog
from sde_lab.adaptive import adaptive_weak_error, family_named
from sde_lab.fit import local_slope
from sde_lab.oracles import stationary_spread
from sde_lab.sme import models_and_orders
from sde_lab.studies.parallel import run_all
from sde_lab.studies.settings import ADAPTIVE, MINIBATCH, Q1D, SPREAD_HESSIAN, ladder
from sde_lab.weak_error import weak_error

MODELS = {m.label: m for m in models_and_orders()}  # every SDE with its claimed order: each is measured below
SMOOTH_ADAPTIVE = Multiplier(2.0, 2.0, form="smooth")  # PGPO on RMSprop and Adam


@dataclass
class Row:
    problem: str
    process: str
    sde: str
    claim: str
    measured: str
    verdict: str
    ok: bool
    must_hold: bool
    seconds: float = 0.0

    def __post_init__(self):
        self.ok, self.must_hold = bool(self.ok), bool(self.must_hold)  # numpy bools are not JSON


@dataclass
class Claim:
    label: str
    measure: Callable[[bool], Row]  # quick → Row
    quick: bool = True  # part of the --quick run
    model: str | None = None  # the label in `MODELS` whose claimed order it measures (None: not an order claim)
    adaptive: str | None = None  # the name in `ADAPTIVE_FAMILIES` whose claimed order it measures
    long: bool = False  # among the longest rows of the full run: started first when claims run side by side


def _order_row(must_hold: bool, problem, etas, horizon, judge=None, model: str | None = None, measure=weak_error,
               **kwargs) -> Row:
    """Measure one ladder of the SDE `MODELS[model]` (its sme arguments, updated by `kwargs`) against its
    claimed order, with `measure` (weak_error's signature); `judge(result) → (verdict, ok)` replaces the default
    order verdict."""
    if model is not None:
        kwargs = {**MODELS[model].kwargs, **kwargs}
    r = measure(problem, etas, horizon, **kwargs)
    if model is not None and r.claimed_order != MODELS[model].order:
        raise ValueError(f"{model}: the SDE claims order {r.claimed_order}, the table order {MODELS[model].order}")
    lo, hi = r.slope_ci
    claim = "no convergence" if r.claimed_order == 0 else f"order {r.claimed_order}"
    if r.fit_in != "η" and r.claimed_order:
        claim += f" in {r.fit_in.split(' = ')[0]}"  # RMSprop and Adam: order in their SDE's step h = η²
    measured = f"{r.slope:.2f} [{lo:.2f}, {hi:.2f}]"
    if r.claimed_order == 0:
        measured += f", plateau {r.poly_fit.coefficients[0]:.3g}"
    if r.paths:
        measured += f", {r.paths} paths"
    # a broken measurement (non-finite or blown-up paths, past stability), one of too few paths to carry any verdict,
    # or an error that changes sign (no slope reads across it) fails whatever the judge reads
    verdict, ok = r.verdict(), r.passed()
    if judge is not None and not r.too_few_paths and not verdict.startswith(("invalid", "sign change")):
        verdict, ok = judge(r)
    if judge is not None:
        claim = getattr(judge, "claim", claim)
    multiplier = kwargs.get("multiplier")
    process = r.process if multiplier is None else f"{r.process} {multiplier.form} α={multiplier.alpha:g}"
    setting = kwargs.get("adaptive")
    if setting is not None and setting.t0:
        process += f", warm t₀={setting.t0:g}"
    return Row(problem.name, process, r.sde, claim, measured, verdict, ok, must_hold)


def _not_order_two(r) -> tuple[str, bool]:
    """The paper's diffusion with the order-2 drift: the local slope at the finest pair stays clear of 2.

    Its errors approach order 1 from above only on deep ladders (`docs/weak_order.md`), so the fitted slope
    over a short one is a mix; the finest local slope, with its own interval, is the sharper test.
    """
    local, se = local_slope(r.etas, r.errors, r.stderr, -2, -1)
    half = (stats.t.ppf(0.975, r.paths - 1) if r.paths > 1 else 1.96) * se  # t on the paths' degrees of freedom
    where = f"local slope {local:.2f} ± {half:.2f} at η = {r.etas[-1]:g}"
    if local + half < 1.7:
        return f"order 2 excluded ({where})", True
    if local - half > 1.7:
        return f"FAIL: reaches order 2 ({where})", False
    return f"inconclusive ({where})", False


_not_order_two.claim = "order 1, not 2"


def _converges(r) -> tuple[str, bool]:
    """The mini-batch correct drift: no plateau (the signed fit's intercept holds 0) and falling errors."""
    a_lo, a_hi = r.poly_fit.ci[0]
    if r.passed():
        return r.verdict(), True
    ok = a_lo <= 0.0 <= a_hi and r.slope > 0.5
    return ("converges, order not resolved at this path count" if ok else "FAIL: " + r.verdict()), ok


_converges.claim = "order 1"


def _kink(r) -> tuple[str, bool]:
    """The hard cap against the order-2 SDE: a measurement of whether the kink costs order."""
    if abs(r.slope - 2.0) < 0.3:
        return "kink keeps order 2 here", True
    return f"kink costs order (slope {r.slope:.2f})", True


_kink.claim = "order 1 (2 if the kink is harmless?)"


def _cold_start(r) -> tuple[str, bool]:
    """Adam from θ₀ with zero moments against its SDE, whose drift m/γ₁ ~ W_t/t is singular at t = 0: a
    measurement of what the start costs (docs/weak_order.md predicts an extra h·log(1/h))."""
    e_over_h = ", ".join(f"{v:.2g}" for v in r.errors / r.fit_steps)
    if r.passed():
        return f"{r.verdict()} here; e/h = {e_over_h}", True
    return f"below order 1 from the start (slope {r.slope:.2f}); e/h = {e_over_h}", True


_cold_start.claim = "order 1 up to log(1/h)?"


def _stationary_spread(quick: bool) -> Row:
    """Exact, on the quadratic with a constant ρ: SGD with step ηρ against both SDE forms."""
    eta, rho = 2.0**-6, 1.5
    discrete, scaled, paper = stationary_spread(np.diag(SPREAD_HESSIAN), eta, rho)
    r_scaled, r_paper = discrete / scaled, discrete / paper
    ok = abs(r_scaled - 1) < 0.05 and abs(r_paper / rho**2 - 1) < 0.05
    return Row("quadratic", f"PGPO ρ={rho:g} (constant)", "scaled | paper", "Var ratio → 1 | → ρ²",
               f"{r_scaled:.3f} | {r_paper:.3f} (ρ² = {rho**2:g})", "as claimed" if ok else "FAIL", ok, True)


def _order_claim(label: str, model: str, problem: Callable, rungs: tuple[int, int], horizon: float,
                 paths: int | None = None, deeper: bool = False, must_hold: bool = True, quick: bool = True,
                 long: bool = False, **kwargs) -> Claim:
    """A claim on the order of `MODELS[model]`: problem() on ladder(*rungs) (one rung finer in the full mode
    when `deeper`), `paths` paths in the quick mode and 4× in the full one; kwargs go to `_order_row`."""

    def measure(q: bool) -> Row:
        first, last = rungs
        more = {} if paths is None else {"paths": paths if q else 4 * paths}
        return _order_row(must_hold, problem(), ladder(first, last if q or not deeper else last + 1), horizon,
                          model=model, **more, **kwargs)

    return Claim(label, measure, quick, model, long=long)


def _adaptive_measure(problem, etas, horizon, adaptive, **kwargs):
    """weak_error's signature onto `adaptive_weak_error`: the exact reference wherever an oracle covers the row."""
    return adaptive_weak_error(problem, etas, horizon, adaptive, **kwargs)


def _adaptive_claim(label: str, family: str, problem: Callable, rungs: tuple[int, int], paths: int,
                    quick: bool = False, must_hold: bool = True, t0: float = 0.0, multiplier=SMOOTH_ADAPTIVE,
                    horizon: float = 1.0, long: bool = False, noise: str = "gaussian", **kwargs) -> Claim:
    """A claim on the order of the adaptive SDE `family` (a name in `ADAPTIVE_FAMILIES`): problem() on ladder(*rungs)
    with `paths` paths in either mode (its η's are few and coarse, so the quick and full runs differ only in which
    claims they hold); the optimizer in the scaling `settings.ADAPTIVE` (in the family's regime) started at `t0`,
    with the gradient noise `noise`, PGPO with `multiplier`; the test function |θ|² unless kwargs name another (the
    row then says which); the reference exact where an oracle covers the row (`adaptive_weak_error`)."""
    measured_with = family_named(family).measured_with(multiplier, t0=t0, noise=noise, **ADAPTIVE)

    def measure(q: bool) -> Row:
        row = _order_row(must_hold, problem(), ladder(*rungs), horizon, paths=paths, measure=_adaptive_measure,
                         **{"test_fn": "norm2", **measured_with, **kwargs})
        if kwargs.get("test_fn", "norm2") != "norm2":  # the adaptive rows measure |θ|² unless they say otherwise
            row.measured += f", g = {kwargs['test_fn']}"
        row.process += "".join([f", {noise} noise" if noise != "gaussian" else "",
                                ", ballistic" if measured_with["adaptive"].regime == "ballistic" else ""])
        return row

    return Claim(label, measure, quick, adaptive=family, long=long)


def _order_half(r) -> tuple[str, bool]:
    """A skewed gradient noise in the diffusive regime: order ½ in h, held to order 1's tolerance (|p − ½| < 0.2)
    once the default checks (settled range, paths, interval width) pass."""
    verdict = r.verdict()
    if not verdict.startswith("order"):
        return verdict, r.passed()
    if abs(r.slope - 0.5) < 0.2:
        return "order ½ holds", True
    return f"FAIL: slope {r.slope:.2f}", False


_order_half.claim = "order ½ in h"


def _local(r, pair: tuple[int, int]) -> tuple[float, float, str]:
    """The local slope in h between ladder points pair (indices), its 95% half-width, and where it was read."""
    local, se = local_slope(r.fit_steps, r.errors, r.stderr, *pair)
    half = (stats.t.ppf(0.975, r.paths - 1) if r.paths > 1 else 1.96) * se
    coarse, fine = r.fit_steps[pair[0]], r.fit_steps[pair[1]]
    return local, half, f"local slope {local:.2f} ± {half:.2f} from h = {coarse:g} to {fine:g}"


def _order_one_excluded(r) -> tuple[str, bool]:
    """A skewed gradient noise on a short ladder: the finest local slope in h with its interval stays clear of
    order 1 (below 0.8) and of no convergence (above 0)."""
    local, half, where = _local(r, (-2, -1))
    if 0.0 < local - half and local + half < 0.8:
        return f"order 1 excluded ({where})", True
    if local - half > 0.8:
        return f"FAIL: order 1 not excluded ({where})", False
    return f"inconclusive ({where})", False


_order_one_excluded.claim = "order < 1 in h (½ predicted)"


def _faster_than_order_one(r) -> tuple[str, bool]:
    """The ballistic order-2 SDEs, a measurement: what Monte Carlo resolves of their order. Their errors fall below
    the coupled difference's noise within a rung or two (the part n² − E n² of u's noise cannot be coupled to the
    process's own draw), so the row asks the one-sided question a short ladder answers: does the error fall faster
    than order 1 would let it, |e(h/4)| + 1.96 s.e. < (|e(h)| − 1.96 s.e.)/4? (Local order 2 is checked exactly,
    one step at a time, in tests/sde_lab/test_adaptive_ballistic.py.)"""
    e, se = np.abs(r.errors), r.stderr
    first = ", ".join(f"|e| = {v:.2g} ± {1.96 * s:.1g} at h = {h:g}" for v, s, h in zip(e, se, r.fit_steps))
    if e[0] - 1.96 * se[0] <= 0:
        return f"unresolved: the coarsest error is within its noise ({first})", True
    if e[1] + 1.96 * se[1] < (e[0] - 1.96 * se[0]) / 4:
        return f"faster than order 1 ({first}); finer h below the Monte Carlo floor", True
    return f"not shown faster than order 1 ({first})", True


_faster_than_order_one.claim = "order 2 in h (MC: faster than 1?)"


def claims() -> list[Claim]:
    smooth4 = Multiplier(4.0, 2.0, form="smooth")  # the paper rows' multiplier: a larger α, so the ρ² gap shows
    q1d, mb = (lambda: catalog.quadratic(**Q1D)), (lambda: catalog.linear_regression(**MINIBATCH))
    return [
        # 1. SGD against its SMEs (exact oracles, then Monte Carlo)
        _order_claim("quadratic SGD/SME-1", "SGD/SME", catalog.quadratic, (9, 14), 2.0),
        _order_claim("quadratic SGD/SME-2", "SGD/SME-2", catalog.quadratic, (4, 9), 2.0),
        _order_claim("random_hessian SGD/SME-1", "SGD/SME", catalog.random_hessian, (9, 14), 2.0),
        _order_claim("random_hessian SGD/SME-2", "SGD/SME-2", catalog.random_hessian, (4, 9), 2.0),
        _order_claim("logistic SGD/SME-1", "SGD/SME", catalog.logistic_regression, (2, 6), 1.0, paths=1000,
                     deeper=True, test_fn="norm2"),
        _order_claim("self_distillation SGD/SME-1", "SGD/SME", catalog.self_distillation, (2, 6), 1.0, paths=1000,
                     deeper=True, test_fn="norm2", seed=1),
        # 2. PGPO with a state signal: both order-1 forms; order 2 only for the scaled form
        _order_claim("logistic PGPO/scaled", "PGPO[state]/SME[scaled]", catalog.logistic_regression, (2, 6), 1.0,
                     paths=1000, deeper=True, test_fn="norm2"),
        _order_claim("self_distillation PGPO/scaled", "PGPO[state]/SME[scaled]", catalog.self_distillation, (2, 6),
                     1.0, paths=1000, deeper=True, test_fn="norm2", seed=1),
        _order_claim("logistic x2 PGPO/paper", "PGPO[state]/SME[paper]",
                     lambda: catalog.logistic_regression(feature_scale=2.0), (3, 6), 1.0, paths=2000,
                     multiplier=smooth4, test_fn="norm2", seed=2),
        _order_claim("self_distillation PGPO/paper", "PGPO[state]/SME[paper]", catalog.self_distillation, (2, 5),
                     1.0, paths=6000, quick=False, multiplier=smooth4, test_fn="norm2", seed=2, long=True),  # 24 000 paths
        _order_claim("quadratic-1d PGPO/scaled-2", "PGPO[state]/SME[scaled]-2", q1d, (2, 6), 1.0, paths=4000,
                     test_fn="norm2"),
        _order_claim("quadratic-1d PGPO/paper-2", "PGPO[state]/SME[paper]-2", q1d, (2, 6), 1.0, paths=16000,
                     judge=_not_order_two, test_fn="norm2"),  # its finest local slope (≈ 1.4) needs ±0.15 to clear 1.7
        # 3. the hard cap's kink against the order-2 SDE: a measurement, not a claim
        _order_claim("quadratic-1d PGPO hard cap/scaled-2", "PGPO[state]/SME[scaled]-2 (kinked ρ)", q1d, (2, 6), 1.0,
                     paths=2000, must_hold=False, judge=_kink, test_fn="norm2"),
        # 4. a mini-batch signal: the naive drift leaves an O(1) error; the correct one converges
        _order_claim("linear_regression PGPO[minibatch]/naive", "PGPO[minibatch]/SME[naive drift]", mb, (2, 6), 2.0,
                     paths=1000, test_fn="norm2"),
        _order_claim("linear_regression PGPO[minibatch]/correct", "PGPO[minibatch]/SME[correct drift]", mb, (2, 6),
                     2.0, paths=2000, judge=_converges, test_fn="norm2"),
        # 5. stationary spread
        Claim("quadratic stationary spread", _stationary_spread),
        # 6. RMSprop, Adam and PGPO on each against their SDEs (sde_lab.adaptive), order in h = η²: ρ where the
        # discrete step carries it converges, anywhere else leaves an O(1) error; the order claims start warm
        # (t₀ = 1), past Adam's singular start, which a cold-start row measures
        _adaptive_claim("quadratic PGPO-RMSprop/ρ in drift only", "PGPO-RMSprop-SDE[ρ in θ's drift only]",
                        catalog.quadratic, (1, 3), 1000, quick=True),
        _adaptive_claim("quadratic PGPO-Adam/ρ on m's noise", "PGPO-Adam-SDE[ρ also on m's noise]",
                        catalog.quadratic, (1, 3), 1000, quick=True),
        _adaptive_claim("logistic PGPO-Adam/ρ in θ's drift", "PGPO-Adam-SDE[ρ in θ's drift only]",
                        catalog.logistic_regression, (1, 3), 2000, quick=True, t0=1.0),
        # exact reference (adaptive_weak_error): deep and wide enough for three settled points, its error falls
        # faster than h first (local slopes 1.4, 1.25, then 1.05, 0.97)
        _adaptive_claim("quadratic Adam", "Adam-SDE", catalog.quadratic, (1, 5), 32000, t0=1.0),
        _adaptive_claim("logistic Adam", "Adam-SDE", catalog.logistic_regression, (1, 3), 2000, t0=1.0),
        _adaptive_claim("self_distillation Adam", "Adam-SDE", catalog.self_distillation, (1, 3), 2000, t0=1.0,
                        seed=1),
        _adaptive_claim("self_distillation PGPO-Adam/ρ in θ's drift", "PGPO-Adam-SDE[ρ in θ's drift only]",
                        catalog.self_distillation, (1, 3), 2000, t0=1.0, seed=1),
        _adaptive_claim("quadratic Adam, cold start", "Adam-SDE", catalog.quadratic, (2, 5), 8000, must_hold=False,
                        judge=_cold_start, long=True),
        # on the quadratic RMSprop's error in |θ|² changes sign on the ladder and stays in the noise; in the mean of
        # θ₀ it is clear of it
        _adaptive_claim("quadratic RMSprop", "RMSprop-SDE", catalog.quadratic, (1, 4), 4000, t0=1.0, test_fn="coord0"),
        _adaptive_claim("logistic RMSprop", "RMSprop-SDE", catalog.logistic_regression, (1, 3), 8000, t0=1.0),
        _adaptive_claim("logistic PGPO-RMSprop/ρ in drift and diffusion",
                        "PGPO-RMSprop-SDE[ρ in θ's drift and diffusion]", catalog.logistic_regression, (1, 3), 8000,
                        t0=1.0, must_hold=False),  # its errors fall into the noise early: the order stays unresolved
        # 7. the gradient noise's law (diffusive regime): a symmetric law keeps order 1, a skewed one (the centred
        # exponential, real mini-batches) costs half an order; exact references on the quadratic
        _adaptive_claim("quadratic RMSprop, Laplace noise", "RMSprop-SDE", catalog.quadratic, (1, 3), 96000, t0=1.0,
                        noise="laplace", test_fn="coord0"),
        _adaptive_claim("quadratic RMSprop, Rademacher noise", "RMSprop-SDE", catalog.quadratic, (1, 3), 160000,
                        t0=1.0, noise="rademacher", test_fn="coord0", must_hold=False),  # unsettled at 160 000 paths
        _adaptive_claim("quadratic Adam, Laplace noise", "Adam-SDE", catalog.quadratic, (1, 3), 96000, t0=1.0,
                        noise="laplace", test_fn="coord0"),
        _adaptive_claim("quadratic Adam, exponential noise, short", "Adam-SDE", catalog.quadratic, (1, 3), 16000,
                        t0=1.0, noise="exponential", quick=True, judge=_order_one_excluded),
        _adaptive_claim("quadratic Adam, exponential noise", "Adam-SDE", catalog.quadratic, (2, 4), 64000, t0=1.0,
                        noise="exponential", judge=_order_half, long=True),
        _adaptive_claim("quadratic RMSprop, exponential noise", "RMSprop-SDE", catalog.quadratic, (2, 5), 48000,
                        t0=1.0, noise="exponential", judge=_order_half, test_fn="coord0", long=True),
        _adaptive_claim("quadratic PGPO-Adam/ρ in θ's drift, exponential noise", "PGPO-Adam-SDE[ρ in θ's drift only]",
                        catalog.quadratic, (2, 4), 32000, t0=1.0, noise="exponential", judge=_order_half, long=True),
        # real mini-batches: on the 1-D linear regression the batch's quantile coupling is tight; on the 2-D logistic
        # regression it is not, and three rungs at 32 000 paths read 0.38 or 0.74 by the seed: a measurement
        _adaptive_claim("linear_regression-1d RMSprop, mini-batch noise", "RMSprop-SDE", mb, (1, 4), 16000, t0=1.0,
                        noise="sample", judge=_order_half, test_fn="coord0", long=True),
        _adaptive_claim("linear_regression-1d Adam, mini-batch noise", "Adam-SDE", mb, (1, 4), 16000, t0=1.0,
                        noise="sample", judge=_order_half, long=True),
        _adaptive_claim("logistic RMSprop, mini-batch noise", "RMSprop-SDE", catalog.logistic_regression, (1, 3),
                        32000, t0=1.0, noise="sample", judge=_order_half, long=True, must_hold=False),
        # 8. u's own noise in the diffusive regime: O(√h), it moves the O(h) error's constant, not its order
        _adaptive_claim("quadratic RMSprop with v-noise", "RMSprop-SDE[v-noise]", catalog.quadratic, (1, 4), 8000,
                        t0=1.0, test_fn="coord0"),
        # 9. the ballistic regime (lr = h, noise and ε of O(1)) on the 1-D quadratic: b₀ alone is order 1; the order-2
        # SDEs need a₁, J b₀ and u's noise — without that noise (or with ρ off θ's noise) they fall back to order 1;
        # the order-2 ladders start at h = 1/16: at 1/4 the Gaussian u-noise reaches u ≈ 0, where a₁ ∝ 1/√u
        _adaptive_claim("quadratic-1d RMSprop, ballistic", "RMSprop-SDE[ballistic]", q1d, (1, 3), 16000, t0=1.0,
                        quick=True),
        _adaptive_claim("quadratic-1d Adam, ballistic", "Adam-SDE[ballistic]", q1d, (1, 4), 64000, t0=1.0),
        _adaptive_claim("quadratic-1d RMSprop-2 without v-noise, ballistic", "RMSprop-SDE-2[ballistic, no v-noise]",
                        q1d, (1, 3), 16000, t0=1.0),
        _adaptive_claim("quadratic-1d Adam-2 without v-noise, ballistic", "Adam-SDE-2[ballistic, no v-noise]", q1d,
                        (1, 4), 64000, t0=1.0, long=True),
        _adaptive_claim("quadratic-1d PGPO-RMSprop-2/ρ in drift only, ballistic",
                        "PGPO-RMSprop-SDE-2[ballistic, ρ in θ's drift only]", q1d, (1, 3), 16000, t0=1.0),
        _adaptive_claim("quadratic-1d RMSprop-2, ballistic", "RMSprop-SDE-2[ballistic]", q1d, (2, 3), 64000, t0=1.0,
                        must_hold=False, judge=_faster_than_order_one, long=True),
        _adaptive_claim("quadratic-1d Adam-2, ballistic", "Adam-SDE-2[ballistic]", q1d, (2, 3), 64000, t0=1.0,
                        must_hold=False, judge=_faster_than_order_one, long=True),
        _adaptive_claim("quadratic-1d PGPO-RMSprop-2/ρ in drift and diffusion, ballistic",
                        "PGPO-RMSprop-SDE-2[ballistic, ρ in θ's drift and diffusion]", q1d, (2, 3), 64000, t0=1.0,
                        must_hold=False, judge=_faster_than_order_one, long=True),
        _adaptive_claim("quadratic-1d PGPO-Adam-2/ρ in θ's drift, ballistic",
                        "PGPO-Adam-SDE-2[ballistic, ρ in θ's drift]",
                        q1d, (2, 3), 64000, t0=1.0, must_hold=False, judge=_faster_than_order_one, long=True),
    ]


def _measure(task: tuple[str, bool]) -> Row:
    """The row of the claim labelled task[0], quick or full (task[1]), with its wall time: what a worker runs."""
    label, quick = task
    claim = next(c for c in claims() if c.label == label)
    start = time.perf_counter()
    row = claim.measure(quick)
    row.seconds = time.perf_counter() - start
    return row


def select(quick: bool = False, only: str | None = None) -> list[Claim]:
    """The claims a run measures: those of the quick run (or all), whose label contains `only` when given; a
    ValueError, saying which labels there are, when that leaves none (a table of no rows proves nothing)."""
    matching = [c for c in claims() if only is None or only in c.label]
    if not matching:
        raise ValueError(f"--only {only!r} matches no claim; the claims are: {'; '.join(c.label for c in claims())}")
    selected = [c for c in matching if c.quick or not quick]
    if not selected:
        raise ValueError(f"--only {only!r} matches only claims of the full run ({'; '.join(c.label for c in matching)});"
                         f" drop --quick to measure them")
    return selected


def run(quick: bool = False, json_path: str | None = None, progress: bool = True, only: str | None = None,
        jobs: int | None = 1) -> list[Row]:
    """The rows of the selected claims, in the table's order; `jobs` claims at a time, each in a process of its
    own (None: one per core; `sde_lab.studies.parallel`), the longest started first."""
    selected = select(quick, only)
    rows = run_all(_measure, [(c.label, quick) for c in selected], jobs, desc="verify", progress=progress,
                   first=[i for i, c in enumerate(selected) if c.long])
    if json_path:
        with open(json_path, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=2)
    return rows


def table(rows: list[Row]) -> str:
    head = ("problem", "process", "SDE", "claim", "measured slope [95% CI]", "verdict")
    body = [(r.problem, r.process, r.sde, r.claim, r.measured, r.verdict + ("" if r.must_hold else " (measurement)"))
            for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])
