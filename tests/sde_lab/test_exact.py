"""sde_lab on the exact oracles: no Monte Carlo, so the slopes are held to ±0.05."""

import math

import numpy as np
import pytest
import torch

from pgpo import Multiplier
from sde_lab import catalog, weak_error
from sde_lab import schemes
from sde_lab.coupling import coupled_paths
from sde_lab.discrete import DiscreteProcess
from sde_lab.fit import slope_fit
from sde_lab.sme import SDEModel, models_and_orders, sme
from sde_lab.studies.verify import claims

DEEP = [2.0**-j for j in range(9, 15)]  # docs/weak_order.md: the asymptotic range of the quadratic starts late
LADDERS = {1: DEEP, 2: [2.0**-j for j in range(4, 10)]}  # by claimed order: where each range is asymptotic
SGD = [m for m in models_and_orders() if m.kwargs["multiplier"] is None]  # SGD vs its order-1 and order-2 SMEs


@pytest.mark.parametrize("model", models_and_orders(), ids=lambda m: m.label)
def test_every_sde_of_the_order_table_claims_its_order_and_verify_measures_it(model):
    problem = catalog.linear_regression() if model.kwargs["signal"] == "minibatch" else catalog.quadratic()
    built = sme(problem, 0.125, **model.kwargs)
    assert built.claimed_order == model.order
    assert model.label.split("/", 1)[1].split(" (")[0] == built.name
    assert model.label in {c.model for c in claims()}


def test_richardson_reads_the_scheme_order():
    em = schemes.EULER_MARUYAMA
    assert (em.weak_order, em.strong_order) == (1, 0.5)
    fine, coarse = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    assert torch.equal(schemes.richardson(fine, coarse, em.weak_order), 2 * fine - coarse)  # bit for bit
    dt, a, c = 0.01, 0.3, 7.0  # E = a + c·dt^p at dt and 2dt: the extrapolation removes c exactly
    for p in (1, 2):
        assert schemes.richardson(a + c * dt**p, a + c * (2 * dt) ** p, p) == pytest.approx(a, abs=1e-15)


@pytest.mark.parametrize("model,test_fn", [(m, g) for m in SGD for g in
                                           (["loss"] if m.order == 1 else ["loss", "norm2", "coord0", "cos", "norm4"])],
                         ids=lambda v: getattr(v, "label", v))
def test_sgd_vs_its_smes_on_the_quadratic_shows_the_claimed_order(model, test_fn):
    r = weak_error(catalog.quadratic(), LADDERS[model.order], horizon=2.0, test_fn=test_fn, **model.kwargs)
    assert r.reference == "exact" and r.paths == 0 and np.all(r.stderr == 0)
    assert abs(r.slope - model.order) < 0.05, (r.slope, r.errors)
    assert r.slope_ci[0] < r.slope < r.slope_ci[1]
    assert r.claimed_order == model.order and r.verdict() == f"order {model.order} holds"
    if model.order == 1:
        assert r.poly_fit.supports_order_one


def test_e_over_eta_tends_to_the_exact_constant():
    """lim e/η = −½ Σ λ³ t u₀² e^{−2λt} = −0.0886… for the quadratic of docs/weak_order.md (g = L, T = 2)."""
    lam, u0, t = np.array([0.5, 1.0, 2.0]), np.array([2.0, -1.0, 1.0]), 2.0
    constant = float(np.sum(-0.5 * lam**3 * t * u0**2 * np.exp(-2 * lam * t)))
    assert constant == pytest.approx(-0.0886670, abs=1e-6)
    problem = catalog.quadratic()
    assert problem.oracle.first_order_constant(t, "loss") == pytest.approx(constant, rel=1e-12)
    r = weak_error(problem, DEEP, horizon=t)
    ratios = r.errors / r.etas
    assert abs(ratios[-1] - constant) < abs(ratios[-2] - constant) < abs(ratios[0] - constant)
    assert ratios[-1] == pytest.approx(constant, rel=2e-3)
    assert r.poly_fit.coefficients[1] == pytest.approx(constant, rel=1e-4)  # C₁ of the signed fit


@pytest.mark.parametrize("model", SGD, ids=lambda m: m.label)
def test_random_hessian_orders(model):
    r = weak_error(catalog.random_hessian(), LADDERS[model.order], horizon=2.0, **model.kwargs)
    assert abs(r.slope - model.order) < 0.05 and r.claimed_order == model.order


def test_a_wrong_diffusion_shows_against_the_order_two_sme():
    """docs/weak_order.md: doubling Σ in the SME keeps slope 1 against order 1 but breaks slope 2."""
    problem = catalog.quadratic()

    def doubled(eta, order):
        model = sme(problem, eta, order=order)
        return SDEModel(model.name + "[2Σ]", order, model.drift, lambda x: math.sqrt(2.0) * model.diffusion(x), model.noise_dim)

    etas = [2.0**-j for j in range(2, 6)]
    right = weak_error(problem, etas, horizon=1.0, order=2, reference="em", paths=2000, test_fn="norm2")
    wrong = weak_error(problem, etas, horizon=1.0, sde=lambda eta: doubled(eta, 2), paths=2000, test_fn="norm2")
    assert abs(right.slope - 2.0) < 0.3
    assert wrong.slope < 1.3 and not wrong.passed()


def test_monte_carlo_pipeline_agrees_with_the_exact_errors():
    """Coupled Euler–Maruyama with Richardson reproduces the oracle's signed errors within their CIs."""
    problem = catalog.quadratic()
    etas = [2.0**-2, 2.0**-3, 2.0**-4]
    exact = weak_error(problem, etas, horizon=1.0, order=2, test_fn="norm2")
    mc = weak_error(problem, etas, horizon=1.0, order=2, test_fn="norm2", reference="em", paths=4000, seed=3)
    assert mc.reference.startswith("em") and mc.paths == 4000
    z = (mc.errors - exact.errors) / mc.stderr
    assert np.all(np.abs(z) < 4), z
    assert np.all(mc.stderr < 0.2 * np.abs(exact.errors))  # coupling makes the differences cheap


def test_the_dt_equals_eta_trap_is_refused():
    with pytest.raises(ValueError, match="refine"):
        weak_error(catalog.double_well(), [0.1, 0.05], horizon=1.0, refine=0, richardson=False)


def test_sgd_is_euler_maruyama_of_its_sme_at_dt_eta():
    """Why the trap is a trap: with the same normals, SGD and EM at dt = η are the same numbers."""
    problem = catalog.logistic_regression()
    eta = 0.125
    process, model = DiscreteProcess(problem, eta), sme(problem, eta)
    x, y, _ = coupled_paths(process, model, steps=8, paths=50, refine=0, richardson=False,
                            gen=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def test_unstable_ladders_are_refused_with_the_numbers():
    with pytest.raises(ValueError, match=r"eta=0.6 is unstable.*λ_max = 2"):
        weak_error(catalog.quadratic(), [0.6, 0.3], horizon=1.2, multiplier=Multiplier(1.0, 2.0))


def test_ladders_must_divide_the_horizon():
    with pytest.raises(ValueError, match="eta=0.3 does not divide"):
        weak_error(catalog.quadratic(), [0.3, 0.25], horizon=1.0)


def test_slope_fit_drops_noise_sign_changes_and_the_pre_asymptotic_range():
    etas = np.array([2.0**-j for j in range(2, 10)])
    errors = 0.3 * etas + 5.0 * etas**2
    errors[0] = -0.05  # a sign change far out
    stderr = np.full_like(etas, 1e-6)
    stderr[-1] = errors[-1]  # the finest point drowns in noise
    fit = slope_fit(etas, errors, stderr)
    assert fit.dropped[len(etas) - 1].startswith("below noise")
    assert fit.dropped[0] in ("sign change", "pre-asymptotic")
    assert abs(fit.slope - 1.0) < 0.2 and fit.ci[0] < fit.slope < fit.ci[1]


def test_checkpoints_follow_the_definition_of_weak_order():
    """Errors at every multiple of the coarsest η, and their maximum (the quantity in the definition)."""
    etas = [2.0**-j for j in range(3, 7)]
    r = weak_error(catalog.quadratic(), etas, horizon=1.0)
    assert r.checkpoint_errors.shape == (4, 8) and np.allclose(r.checkpoint_times, np.arange(1, 9) / 8)
    np.testing.assert_allclose(r.checkpoint_errors[:, -1], r.errors, rtol=1e-12)
    assert np.all(r.max_errors >= np.abs(r.errors))
    # the max over checkpoints is itself first order on this ladder's tail
    assert abs(np.log2(r.max_errors[-2] / r.max_errors[-1]) - 1.0) < 0.2
    mc = weak_error(catalog.quadratic(), etas, horizon=1.0, reference="em", paths=500, test_fn="norm2")
    assert mc.checkpoint_errors.shape == (4, 8)
    np.testing.assert_allclose(mc.checkpoint_errors[:, -1], mc.errors)
    assert np.all(mc.paths_needed > 0) and "paths_needed" in mc.diagnostics


@pytest.mark.parametrize("name", ["quadratic", "random_hessian", "logistic_regression", "self_distillation"])
@pytest.mark.parametrize("multiplier", [None, Multiplier(2.0, 2.0, form="smooth")], ids=["SGD", "PGPO"])
def test_the_order_two_drift_is_b_minus_half_eta_jacobian_times_b(name, multiplier):
    """b − (η/2) J_b b from two reverse-mode passes equals the same from forward mode (torch.func.jvp), and leaves
    the state untouched and without a graph."""
    problem, eta = catalog.get(name), 0.1
    first = sme(problem, eta, multiplier, order=1)
    second = sme(problem, eta, multiplier, order=2)
    x = problem.x0 + 0.3 * torch.randn(5, problem.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    before = x.clone()
    b, jvp = torch.func.jvp(first.drift, (x,), (first.drift(x),))
    drift = second.drift(x)
    assert torch.allclose(drift, b - 0.5 * eta * jvp, rtol=1e-12, atol=1e-14)
    assert torch.equal(x, before) and not drift.requires_grad and not x.requires_grad


def test_the_order_two_drift_of_a_constant_field_is_the_field():
    problem = catalog.quadratic(hessian=(1.0,), x0=(0.5,))
    problem.grad = lambda x: torch.full_like(x, 0.25)  # ∇L independent of x: J_b = 0
    assert torch.equal(sme(problem, 0.1, order=2).drift(torch.ones(3, 1, dtype=torch.float64)),
                       torch.full((3, 1), -0.25, dtype=torch.float64))
