"""sde_lab with Monte Carlo: coupled, seeded, quick. Slopes are held to 1 ± 0.25 (SDE_LAB.md's rules)."""

import numpy as np
import pytest

from pgpo import Multiplier
from sde_lab import problems, weak_error

LADDER = [2.0**-j for j in range(2, 7)]
SMOOTH = Multiplier(2.0, 2.0, form="smooth")


@pytest.mark.parametrize("name", ["logistic_regression", "self_distillation"])
@pytest.mark.parametrize("multiplier", [None, SMOOTH], ids=["SGD", "PGPO"])
def test_order_one_against_the_scaled_sme(name, multiplier):
    r = weak_error(problems.get(name), LADDER, horizon=1.0, multiplier=multiplier, sde="scaled",
                   test_fn="norm2", paths=1000, seed=1)
    assert abs(r.slope - 1.0) < 0.25, (r.slope, r.errors, r.stderr)
    assert r.slope_ci[0] < r.slope < r.slope_ci[1]
    assert np.all(r.diverged == 0)
    # the coupling at work: every point is resolved far above its noise
    assert np.all(np.abs(r.errors) > 5 * r.stderr)


def test_order_one_against_the_papers_sde():
    """The paper's SDE keeps Σ while the process moves ρ times further: coupling helps less, so more paths.

    (On logistic regression the paper form's O(η) error is below the noise of 6000 coupled paths at
    every η of this ladder: its gradient noise is small, so the ρ² variance gap is too. Not asserted.)
    """
    problem = problems.get("self_distillation")
    r = weak_error(problem, LADDER[:4], horizon=1.0, multiplier=Multiplier(4.0, 2.0, form="smooth"), sde="paper",
                   test_fn="norm2", paths=6000, seed=2)
    assert abs(r.slope - 1.0) < 0.25, (r.slope, r.errors, r.stderr)
