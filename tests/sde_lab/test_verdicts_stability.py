"""Stability is judged by the step map I − ηρJ itself: its eigenvalues (complex ones included) must lie inside the
unit circle wherever the flow contracts, at x0 and along the SDE's paths; the symmetric part of J is not the step.
A user can override the check with a reason, which the result then carries."""

import numpy as np
import pytest
import torch

from pgpo import Multiplier
from sde_lab import Problem, weak_error
from sde_lab.stability import check_ladder, step_limit

F64 = torch.float64
NON_NORMAL = [[1.0, 10.0], [0.0, 1.0]]  # eigenvalues 1, 1: the step contracts for η < 2; its symmetric part has 6
ROTATION = [[0.1, 1.0], [-1.0, 0.1]]  # eigenvalues 0.1 ± i: |1 − ηλ| < 1 only for η < 2·0.1/1.01 = 0.198


def linear_field(matrix, name, x0=(1.0, 1.0)):
    """grad(x) = J x with additive noise: a drift that is no gradient when J is not symmetric."""
    j = torch.tensor(matrix, dtype=F64)
    return Problem(dim=2, x0=list(x0), grad=lambda x: x @ j.T.to(x), noise_sqrt=0.5 * torch.eye(2, dtype=F64), name=name)


def test_step_limit_reads_the_eigenvalues_of_the_jacobian_not_of_its_symmetric_part():
    states = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    lam, eigenvalue = step_limit(lambda x: x @ torch.tensor(NON_NORMAL, dtype=F64).T, states)
    assert lam == pytest.approx(1.0, rel=1e-6) and eigenvalue == pytest.approx(1.0, rel=1e-6)
    lam, eigenvalue = step_limit(lambda x: x @ torch.tensor(ROTATION, dtype=F64).T, states)
    assert lam == pytest.approx(1.01 / 0.1, rel=1e-6)
    assert isinstance(eigenvalue, complex) and eigenvalue.real == pytest.approx(0.1, rel=1e-6)
    assert abs(eigenvalue.imag) == pytest.approx(1.0, rel=1e-6)
    # directions along which the flow does not contract (Re λ ≤ 0: a neutral rotation, a negative curvature) set no
    # limit on the step: the SDE itself does not contract there
    assert step_limit(lambda x: x @ torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=F64).T, states) == (0.0, None)
    assert step_limit(lambda x: -x, states) == (0.0, None)


def test_a_stable_non_normal_drift_is_accepted_from_eta_one_half():
    problem = linear_field(NON_NORMAL, "non_normal")
    r = weak_error(problem, [2.0**-j for j in range(1, 7)], horizon=1.0, reference="em", paths=200, test_fn="norm2")
    assert r.lambda_source == "measured" and np.max(r.stability) == pytest.approx(0.5, rel=1e-6)
    assert r.invalid_reasons == [] and r.verdict() == "order 1 holds", r.verdict()


def test_a_weakly_damped_rotation_is_refused_from_eta_one_half_and_at_its_limit():
    problem = linear_field(ROTATION, "rotation")
    with pytest.raises(ValueError, match=r"eta=0.5 is unstable on 'rotation'.*λ = 0.1[+-]1i.*start the ladder below 0\.198"):
        weak_error(problem, [2.0**-j for j in range(1, 5)], horizon=1.0, reference="em", paths=200, test_fn="norm2")
    assert check_ladder(problem, [0.19, 0.095], 1.0)[0] == pytest.approx(10.1, rel=1e-6)  # |1 − 0.19λ| < 1
    with pytest.raises(ValueError, match=r"eta=0.2 is unstable"):  # |1 − 0.2λ| = 1.002
        check_ladder(problem, [0.2, 0.1], 1.0)
    # PGPO's ρ_max scales the step: η = 0.125 is stable for SGD (0.125 < 0.198), not at ρ_max = 2
    assert check_ladder(problem, [0.125], 1.0)[0] == pytest.approx(10.1, rel=1e-6)
    with pytest.raises(ValueError, match=r"η·ρ_max·λ_max = 2\.53 ≥ 2.*ρ_max = 2"):
        check_ladder(problem, [0.125], Multiplier(1.0, 2.0).rho_max)


def test_a_rotation_that_speeds_up_along_the_paths_makes_the_ladder_invalid():
    # at x0 = 0 the eigenvalues are 0.1 ± 0.2i (λ_max = 0.5, η = 0.125 is stable); where the noise takes the paths,
    # |x| ≈ 1.5, they are 0.1 ± 2.4i (λ_max ≈ 60), while the symmetric part's largest eigenvalue stays near 2.4
    def grad(x):
        turn = 0.2 + (x * x).sum(-1, keepdim=True)
        return 0.1 * x + turn * torch.stack([x[:, 1], -x[:, 0]], dim=-1)

    problem = Problem(dim=2, x0=[0.0, 0.0], grad=grad, noise_sqrt=torch.eye(2, dtype=F64), name="spiral")
    r = weak_error(problem, [2.0**-j for j in range(3, 7)], horizon=1.0, reference="em", paths=200, test_fn="norm2")
    assert r.diverged.sum() == 0 and r.stability[0] >= 2.0
    assert isinstance(r.eigenvalue, complex) and abs(r.eigenvalue.imag) > 1.0
    assert not r.passed() and r.verdict().startswith("invalid: past stability") and "at η = 0.125" in r.verdict()


def test_the_stability_check_can_be_overridden_with_a_reason_that_the_result_carries():
    problem = linear_field(ROTATION, "rotation")
    why = "the rotation's growth is part of what I measure"
    r = weak_error(problem, [2.0**-j for j in range(1, 5)], horizon=1.0, reference="em", paths=200, test_fn="norm2",
                   override_stability=why)
    assert r.stability_override == why and r.stability[0] >= 2.0
    assert not any("past stability" in reason for reason in r.invalid_reasons)
    assert any(why in note and "η = 0.5" in note for note in r.notes)
    assert r.verdict().endswith(f"(stability check overridden: {why})")
    # on a ladder within the limit the override changes nothing, and the notes say so
    r = weak_error(problem, [2.0**-j for j in range(3, 6)], horizon=1.0, reference="em", paths=200, test_fn="norm2",
                   override_stability=why)
    assert "overridden" not in r.verdict() and any("not needed" in note for note in r.notes)


@pytest.mark.parametrize("reason", ["", "   ", True, 1])
def test_an_override_without_a_reason_is_refused_by_name(reason):
    with pytest.raises(ValueError, match="override_stability must be the reason"):
        weak_error(linear_field(ROTATION, "rotation"), [0.5, 0.25], horizon=1.0, override_stability=reason)
