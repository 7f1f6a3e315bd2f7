"""The adaptive harness's exact reference: the linear-moment oracle answers every Gaussian test function at every
checkpoint and for every noise law, `adaptive_weak_error` uses it as an unbiased reference (the coupled Euler–Maruyama
solve as a control variate), and a skewed law measured against it loses half an order where a symmetric one does
not."""

import numpy as np
import pytest
import torch

from pgpo import Multiplier
from sde_lab import catalog
from sde_lab.adaptive import Adaptive, AdaptiveProcess, adaptive_sde, adaptive_weak_error, exact_oracle
from sde_lab.coupling import coupled_paths
from sde_lab.observables import cos_direction
from sde_lab.oracles import AdaptiveQuadraticOracle
from sde_lab.studies.settings import ADAPTIVE
from sde_lab.weak_error import weak_error


def _full_quadratic():
    hessian = [[1.0, 0.3, 0.0], [0.3, 0.8, 0.2], [0.0, 0.2, 1.5]]
    return catalog.quadratic(hessian=hessian, x0=(1.0, -1.0, 0.5), noise_scale=0.8)


@pytest.mark.parametrize("kind", ["rmsprop", "adam"])
def test_the_oracle_answers_every_gaussian_test_function_as_the_solver_measures_it(kind):
    """θ₀, cos(aᵀθ) and |θ|⁴ of the Euler–Maruyama solution at dt and at three checkpoints, exact, against the coupled
    solver's Monte Carlo mean (20 000 paths, within 4 standard errors)."""
    problem, eta, horizon, paths = _full_quadratic(), 0.25, 0.5, 20000
    setting = Adaptive(kind, t0=0.5, **ADAPTIVE)
    oracle = AdaptiveQuadraticOracle.of(problem, setting)
    h = eta**2
    _, fine, _ = coupled_paths(AdaptiveProcess(problem, eta, setting), adaptive_sde(problem, setting),
                               int(round(horizon / h)), paths, refine=2, richardson=False,
                               gen=torch.Generator().manual_seed(0))
    theta = fine[:, :3]
    a = cos_direction(3).to(theta)
    for test, g in (("coord0", theta[:, 0]), ("cos", torch.cos(theta @ a)), ("norm4", theta.square().sum(1) ** 2)):
        exact = oracle.euler_maruyama(horizon, h / 4, test)
        assert abs(g.mean().item() - exact) < 4 * g.std().item() / paths**0.5, (kind, test)
    times = [0.125, 0.25, 0.5]
    for test in AdaptiveQuadraticOracle.TESTS:
        at_once = oracle.sde(horizon, test, times)
        assert at_once == pytest.approx([oracle.sde(t, test) for t in times], rel=1e-8)
        em = oracle.euler_maruyama(horizon, h / 4, test, times)
        assert em == pytest.approx([oracle.euler_maruyama(t, h / 4, test) for t in times], rel=1e-12)


def test_the_oracle_is_one_for_every_noise_law_and_refuses_the_nonlinear_sdes():
    """The SDE sees Σ alone, so its moments do not depend on the law; with v-noise (u random) or in the ballistic
    regime (∇L² in u's drift) the SDE is not linear and the oracle says so."""
    problem = catalog.quadratic()
    values = {noise: AdaptiveQuadraticOracle.of(problem, Adaptive("adam", t0=1.0, noise=noise, **ADAPTIVE)).sde(1.0)
              for noise in ("gaussian", "laplace", "exponential")}
    assert len(set(values.values())) == 1
    for setting in (Adaptive("rmsprop", v_noise=True), Adaptive("rmsprop", regime="ballistic")):
        with pytest.raises(ValueError, match="not linear"):
            AdaptiveQuadraticOracle.of(problem, setting)
        assert exact_oracle(problem, setting, None, "norm2") is None
    assert exact_oracle(problem, Adaptive("rmsprop"), Multiplier(2.0, 2.0, form="smooth"), "norm2") is None  # PGPO
    assert exact_oracle(catalog.logistic_regression(), Adaptive("rmsprop"), None, "norm2") is None


def test_the_exact_reference_agrees_with_the_em_reference_and_has_none_of_its_bias():
    """On the same ladder and seed: the exact reference (coupled to Euler–Maruyama at h/2, its bias added from the
    oracle) and weak_error's own (h/16, Richardson) agree within their intervals; the bias it adds is the scheme's,
    exactly, and is not small at h/2."""
    problem, setting, etas = catalog.quadratic(), Adaptive("adam", t0=1.0, **ADAPTIVE), [0.5, 0.25]
    exact = adaptive_weak_error(problem, etas, 1.0, setting, paths=4000)
    em = adaptive_weak_error(problem, etas, 1.0, setting, paths=4000, reference="em")
    assert exact.reference.startswith("exact") and em.reference.startswith("em")
    assert np.all(np.abs(exact.errors - em.errors) < 3 * np.hypot(exact.stderr, em.stderr)), (exact.errors, em.errors)
    raw = weak_error(problem, etas, 1.0, adaptive=setting, paths=4000, refine=1, richardson=False, test_fn="norm2")
    oracle = AdaptiveQuadraticOracle.of(problem, setting)
    bias = [oracle.euler_maruyama(1.0, eta**2 / 2) - oracle.sde(1.0) for eta in etas]
    assert exact.errors == pytest.approx(raw.errors + bias, rel=1e-12)
    assert np.all(np.abs(bias) > 3 * exact.stderr)  # uncorrected, the h/2 solve would bias every rung
    assert exact.checkpoint_errors[:, -1] == pytest.approx(exact.errors)
    with pytest.raises(ValueError, match="no exact reference"):
        adaptive_weak_error(catalog.logistic_regression(), etas, 1.0, setting, reference="exact")


@pytest.mark.slow
def test_a_skewed_law_costs_half_an_order_where_a_symmetric_one_does_not():
    """Adam on the quadratic, exact reference, h = 1/16 → 1/64 (16 000 coupled paths): with the centred exponential
    the error halves as h quarters (order ½ in h: e ∝ η, from a step's third moment h^{3/2}E n³), with Gaussian
    noise it falls about fivefold (order 1)."""
    problem, etas = catalog.quadratic(), [0.25, 0.125]
    ratios = {}
    for noise in ("exponential", "gaussian"):
        r = adaptive_weak_error(problem, etas, 1.0, Adaptive("adam", t0=1.0, noise=noise, **ADAPTIVE), paths=16000)
        assert r.reference.startswith("exact")
        ratios[noise] = r.errors[1] / r.errors[0]
    assert 0.35 < ratios["exponential"] < 0.7, ratios
    assert 0 < ratios["gaussian"] < 0.3, ratios
