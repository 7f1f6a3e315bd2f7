"""No verdict from too few paths, the same interval-width rule for every order, and an error that changes sign along
the ladder read as such whatever the reference (exact or Monte Carlo)."""

import numpy as np
import pytest
from scipy import stats

from sde_lab import catalog, weak_error
from sde_lab.fit import polynomial_fit, sign_change, slope_fit, weighted_least_squares
from sde_lab.studies.settings import ladder
from sde_lab.studies.verify import _order_row
from sde_lab.weak_error import MIN_PATHS, WeakErrorResult, paths_for


def measured(etas, errors, stderr, paths, order=1, needed=None):
    """A WeakErrorResult from given errors (a Monte Carlo ladder of `paths` paths; 0: exact), fitted as
    weak_error fits them, so that the verdict rules can be read on ladders chosen to sit on their edges."""
    etas, errors, stderr = (np.asarray(v, dtype=np.float64) for v in (etas, errors, stderr))
    dof = np.full(len(etas), paths - 1) if paths else None
    fit = slope_fit(etas, errors, stderr, dof=dof)
    needed = np.zeros(len(etas), int) if needed is None else np.asarray(needed)
    return WeakErrorResult(
        problem="made", process="SGD", sde="SME", test_fn="norm2", claimed_order=order, horizon=1.0, etas=etas,
        errors=errors, stderr=stderr, paths=paths, diverged=np.zeros(len(etas), int), reference="given",
        slope_fit=fit, poly_fit=polynomial_fit(etas, errors, stderr, fit.used, dof=dof),
        checkpoint_times=np.ones(1), checkpoint_errors=errors[:, None], paths_needed=needed)


# ------------------------------------------------------------------------------------------------
# path counts


@pytest.mark.parametrize("order, rungs, paths, seed", [
    (1, (3, 7), 2, 1), (1, (3, 7), 3, 0), (1, (3, 7), 5, 1), (2, (2, 6), 5, 2),  # each "held" before
    (1, (3, 7), 50, 0), (2, (2, 6), 50, 0),
])
def test_no_verdict_from_fewer_paths_than_an_interval_needs(order, rungs, paths, seed):
    r = weak_error(catalog.quadratic(), ladder(*rungs), 1.0, order=order, reference="em", paths=paths, seed=seed,
                   test_fn="norm2")
    assert not r.passed()
    assert r.verdict() == (f"inconclusive: too few paths: {paths} were run, a verdict needs at least {MIN_PATHS} "
                           f"(from there the standard deviation behind each interval is known to 10%)")


def test_the_interval_of_a_fit_on_measured_variances_is_students_t_on_their_degrees_of_freedom():
    design = np.column_stack([np.ones(4), np.arange(4.0)])
    y, se = np.array([0.1, 1.2, 1.9, 3.1]), np.full(4, 0.1)
    _, normal = weighted_least_squares(design, y, se)
    for dof in (1, 2, 4, 30):
        _, half = weighted_least_squares(design, y, se, dof)
        np.testing.assert_allclose(half / normal, stats.t.ppf(0.975, dof) / stats.norm.ppf(0.975), rtol=1e-12)
    # the slope fit takes the least-measured point it uses
    etas = np.array([0.4, 0.2, 0.1, 0.05])
    errors = 0.5 * etas
    stderr = 0.01 * errors * (1 + np.array([0.1, -0.1, 0.1, -0.1]))  # a little scatter, so the interval is not 0
    wide = slope_fit(etas, errors, stderr, dof=[99, 99, 2, 99])
    narrow = slope_fit(etas, errors, stderr, dof=[99, 99, 99, 99])
    ratio = (wide.ci[1] - wide.ci[0]) / (narrow.ci[1] - narrow.ci[0])
    assert ratio == pytest.approx(stats.t.ppf(0.975, 2) / stats.t.ppf(0.975, 99), rel=1e-9)


@pytest.mark.parametrize("sd, error", [(1.0, 0.01), (1.0, 0.5), (3.0, 0.2), (1.0, 100.0)])
def test_paths_for_is_the_least_count_whose_t_interval_is_twenty_percent_of_the_error(sd, error):
    m = paths_for(sd, error)

    def half(n):
        return stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n)

    assert m >= MIN_PATHS and half(m) <= 0.2 * abs(error)
    assert m == MIN_PATHS or half(m - 1) > 0.2 * abs(error)


def test_from_min_paths_the_interval_decides_and_the_paths_a_tighter_one_needs_are_a_note():
    """At MIN_PATHS or more, the t interval is valid: a narrow one carries the verdict, even where a ±20% interval
    of |e| at the finest η would need more paths (`paths_needed`, reported beside it)."""
    etas = np.array([0.4, 0.2, 0.1, 0.05])
    errors = 0.5 * etas
    r = measured(etas, errors, 0.01 * errors, paths=MIN_PATHS, needed=[60, 60, 60, 4000])
    assert r.verdict() == "order 1 holds" and r.diagnostics["paths_needed"][-1] == 4000
    assert measured(etas, errors, 0.01 * errors, paths=MIN_PATHS - 1, needed=[60, 60, 60, 4000]).verdict() == (
        f"inconclusive: too few paths: {MIN_PATHS - 1} were run, a verdict needs at least {MIN_PATHS} (from there the "
        f"standard deviation behind each interval is known to 10%)")


@pytest.mark.parametrize("order", [1, 2])
def test_the_interval_width_rule_holds_for_every_order(order):
    etas = np.array([0.4, 0.2, 0.1, 0.05])
    errors = etas**order  # the slope is the order exactly; a relative se of 15% makes its interval 0.38 wide
    r = measured(etas, errors, 0.15 * errors, paths=10_000, order=order, needed=np.full(4, 100))
    lo, hi = r.slope_ci
    assert r.slope == pytest.approx(order) and r.slope_fit.used == [0, 1, 2, 3] and hi - lo >= 0.3
    assert r.verdict() == f"inconclusive: CI too wide ({hi - lo:.2f} ≥ 0.3)" and not r.passed()


def test_two_settled_points_give_no_verdict_with_either_reference():
    etas = np.array([0.4, 0.2, 0.1])
    errors = np.array([0.5, 0.1, 0.05])  # the coarsest point is off the settled range
    exact = measured(etas, errors, np.zeros(3), paths=0)
    mc = measured(etas, errors, 0.01 * errors, paths=1000, needed=np.full(3, 100))
    assert exact.slope_fit.used == mc.slope_fit.used == [1, 2]
    for r in (exact, mc):
        assert r.verdict() == "inconclusive: 2 settled points (η = 0.2, 0.1): a slope needs 3 to show it has settled"


# ------------------------------------------------------------------------------------------------
# sign changes


def test_sign_change_reads_only_the_points_whose_sign_is_resolved():
    etas = np.array([0.4, 0.2, 0.1, 0.05])
    assert sign_change(etas, [0.3, 0.1, -0.02, -0.01], np.zeros(4)) == (1, 2)
    # the point next to the change is noise (|e| < 3 se): the change is between the resolved points around it
    assert sign_change(etas, [0.3, 0.1, -0.001, -0.01], [0.01, 0.01, 0.001, 0.001]) == (1, 3)
    assert sign_change(etas, [0.3, 0.1, -0.001, 0.01], [0.01, 0.01, 0.001, 0.001]) is None
    assert sign_change(etas, [0.3, -0.1, 0.05, 0.02], np.zeros(4)) == (1, 2)  # the finest change
    assert sign_change(etas, [np.nan, 0.1, 0.05, 0.0], np.zeros(4)) is None


@pytest.mark.parametrize("x0, starts", [(0.3, 0.03125), (0.5, 0.0625)])
def test_an_error_that_changes_sign_gets_the_same_verdict_with_the_exact_and_a_monte_carlo_reference(x0, starts):
    # 1-D OU, g = x²: e ≈ −A·η + B·η² with A ∝ x0², so the error changes sign inside the ladder; with the exact
    # reference the fit used to find no settled range ("inconclusive"), with Monte Carlo it fitted the points on one
    # side ("FAIL: slope 0.65" at x0 = 0.3, "order 1 holds" at 0.5)
    problem = catalog.quadratic(hessian=(1.0,), x0=(x0,), noise_scale=1.0)
    etas = ladder(1, 7)
    exact = weak_error(problem, etas, 1.0, test_fn="norm2")
    mc = weak_error(problem, etas, 1.0, test_fn="norm2", reference="em", paths=500)
    assert exact.reference == "exact" and mc.paths == 500
    for r in (exact, mc):
        assert r.verdict().startswith("sign change: the error changes sign between η = ")
        assert r.verdict().endswith(f"the order shows on a ladder that starts at η = {starts:g} or below")
        assert not r.passed()


def test_a_claim_of_no_convergence_needs_a_plateau_or_a_slope_that_can_carry_a_verdict():
    etas = np.array([0.4, 0.2, 0.1, 0.05])
    # errors indistinguishable from 0 at every η: no plateau (the intercept's interval holds 0) and no slope either
    r = measured(etas, [0.001, -0.001, 0.0005, 0.0002], np.full(4, 0.01), paths=1000, order=0, needed=np.full(4, 100))
    a_lo, a_hi = r.poly_fit.ci[0]
    assert a_lo <= 0.0 <= a_hi and r.verdict() == "inconclusive: no settled range"
    # a plateau: the intercept is clear of 0 (and no verdict under MIN_PATHS paths)
    plateau = measured(etas, 0.5 + 0.1 * etas, np.full(4, 0.01), paths=1000, order=0, needed=np.full(4, 100))
    assert plateau.verdict() == "no convergence, as claimed"
    short = measured(etas, 0.5 + 0.1 * etas, np.full(4, 0.01), paths=MIN_PATHS - 1, order=0, needed=np.full(4, 100))
    assert short.verdict().startswith("inconclusive: too few paths") and f"at least {MIN_PATHS}" in short.verdict()


def test_verify_judges_cannot_pass_a_ladder_of_too_few_paths_or_one_whose_error_changes_sign():
    def judge(_):
        return "judged fine", True

    few = _order_row(True, catalog.quadratic(), ladder(3, 6), 1.0, judge=judge, reference="em", paths=5,
                     test_fn="norm2")
    assert not few.ok and few.verdict.startswith("inconclusive: too few paths: 5 were run")
    ou = catalog.quadratic(hessian=(1.0,), x0=(0.3,), noise_scale=1.0)
    changing = _order_row(True, ou, ladder(1, 7), 1.0, judge=judge, test_fn="norm2")
    assert not changing.ok and changing.verdict.startswith("sign change")
