"""RMSprop and Adam with any gradient-noise law and with real mini-batches (issue item 4): the laws themselves, the
processes against torch's optimizers, the couplings, the joint law of (n, n²) the v-noise SDEs carry, and the order
each SDE claims for each noise class."""

import itertools
import math

import numpy as np
import pytest
import torch

from pgpo import Multiplier, modulated_step
from sde_lab import Problem, catalog
from sde_lab.adaptive import (ADAPTIVE_FAMILIES, KINDS, NOISE_LAWS, REGIMES, Adaptive, AdaptiveProcess, adaptive_sde,
                              family_named, noise_chaos, skewed)
from sde_lab.problem import apply_noise
from sde_lab.studies.settings import ADAPTIVE

SMOOTH = Multiplier(2.0, 2.0, form="smooth")
F64 = torch.float64


def gaussian_expectation(fn, k: int) -> float:
    """E fn(z)^k for z ~ N(0, 1), by the trapezoid rule on [−12, 12] (a law's tails beyond hold < 1e-30)."""
    z = torch.linspace(-12.0, 12.0, 400001, dtype=F64)
    density = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return torch.trapezoid(fn(z) ** k * density, z).item()


@pytest.mark.parametrize("name", sorted(NOISE_LAWS))
def test_each_law_has_mean_0_variance_1_and_the_skewness_and_kurtosis_it_declares(name):
    law = NOISE_LAWS[name]
    moments = [gaussian_expectation(law.from_normal, k) for k in (1, 2, 3, 4)]
    assert moments[0] == pytest.approx(0.0, abs=1e-4) and moments[1] == pytest.approx(1.0, abs=1e-4)
    assert moments[2] == pytest.approx(law.skewness, abs=1e-3)
    assert moments[3] - 3.0 == pytest.approx(law.excess_kurtosis, abs=1e-3)
    z = torch.linspace(-9.0, 9.0, 1001, dtype=F64)
    assert (torch.diff(law.from_normal(z)) >= 0).all()  # a quantile coupling: it moves with the normals it is fed


def test_the_laws_the_issue_names_are_there_with_their_classes():
    """Symmetric (order 1 in the diffusive regime) and skewed (order ½): the centred exponential is the skewed one."""
    assert {n for n, law in NOISE_LAWS.items() if law.symmetric} == {"gaussian", "rademacher", "laplace"}
    assert NOISE_LAWS["exponential"].skewness == 2.0 and NOISE_LAWS["exponential"].excess_kurtosis == 6.0


def torch_optimizer(kind, params, hp):
    if kind == "adam":
        return torch.optim.Adam(params, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"])
    return torch.optim.RMSprop(params, lr=hp["lr"], alpha=hp["beta2"], eps=hp["eps"])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("noise", ["exponential", "sample"])
@pytest.mark.parametrize("regime", REGIMES)
def test_every_noise_reaches_torchs_optimizer_as_the_gradient_it_steps_with(kind, noise, regime):
    """The process's gradient, ∇L + s·n with n its own noise (a law's draw, or the coupled mini-batch's deviation),
    through torch.optim.Adam / RMSprop at the regime's lr, ε and β (ρ through pgpo.modulated_step): θ and the
    moments agree step for step."""
    problem = catalog.get("logistic_regression")
    setting = Adaptive(kind, sigma0=0.7, eps0=0.05, c1=2.0, c2=3.0, noise=noise, regime=regime)
    eta = 0.125
    hp = setting.hyperparameters(eta)
    assert hp["lr"] == (eta if regime == "diffusive" else eta**2)
    process = AdaptiveProcess(problem, eta, setting, SMOOTH)
    parts = setting.blocks(problem.dim)
    gen = torch.Generator().manual_seed(0)
    state = process.initial_state()[None, :].clone()
    theta = torch.nn.Parameter(problem.x0.clone())
    optimizer = torch_optimizer(kind, [theta], hp)
    for _ in range(12):
        z = torch.randn(1, problem.noise_dim(), generator=gen, dtype=F64)
        with torch.no_grad():
            point = theta.detach()[None, :]
            theta.grad = (problem.grad(point) + hp["sigma"] * process.gradient_noise(point, z))[0]
            rho = float(SMOOTH(problem.info(point))[0])
        modulated_step(optimizer, rho)
        state = process.step(state, z)
        assert torch.allclose(state[0, parts["theta"]], theta.detach(), rtol=1e-10, atol=1e-12)
        moments = optimizer.state[theta]
        v = moments["exp_avg_sq"] if kind == "adam" else moments["square_avg"]
        assert torch.allclose(state[0, parts["u"]] * hp["sigma"] ** 2, v, rtol=1e-9)


def test_a_laws_noise_is_its_factor_times_the_laws_draw_from_the_first_normals():
    problem = catalog.quadratic()
    process = AdaptiveProcess(problem, 0.25, Adaptive("rmsprop", noise="exponential"))
    z = torch.randn(5, 9, dtype=F64, generator=torch.Generator().manual_seed(1))  # 9 columns: a v-noise SDE's normals
    expected = apply_noise(problem.factor(problem.x0[None, :]), -torch.special.log_ndtr(-z[:, :3]) - 1.0)
    assert torch.allclose(process.gradient_noise(problem.x0.expand(5, -1), z), expected)


def test_uncoupled_minibatch_noise_is_a_sampled_gradient_minus_the_full_one():
    problem = catalog.get("logistic_regression")
    process = AdaptiveProcess(problem, 0.25, Adaptive("adam"), noise="sample")
    assert process.setting.noise == "sample" and process.couples
    x = problem.x0.expand(6, -1).clone()
    drawn = process.gradient_noise(x, gen=torch.Generator().manual_seed(3))
    sampled, _ = problem.sample(x, torch.Generator().manual_seed(3))
    assert torch.allclose(drawn, sampled - problem.grad(x))
    with pytest.raises(ValueError, match="no sample_grad"):
        AdaptiveProcess(catalog.quadratic(), 0.25, Adaptive("adam", noise="sample"))


def test_a_coupled_minibatch_is_drawn_with_its_probability_and_moves_with_the_sdes_noise():
    """The batch the normals select: each of the n = 16 with probability 1/16 (a binomial count within 4.5
    standard deviations), and its deviation correlated with the SDE's noise Σ^{1/2}z fed the same normals."""
    problem = catalog.get("logistic_regression")
    process = AdaptiveProcess(problem, 0.25, Adaptive("rmsprop", noise="sample"))
    paths = 32000
    x = problem.x0.expand(paths, -1).clone()
    z = torch.randn(paths, problem.noise_dim(), dtype=F64, generator=torch.Generator().manual_seed(0))
    picked = process.gradient_noise(x, z)
    grads, _, weights = problem.batches(problem.x0[None, :])
    deviations = (grads - torch.einsum("b,pbd->pd", weights, grads)[:, None, :])[0]  # (16, d)
    which = torch.cdist(picked, deviations).argmin(dim=1)
    assert torch.allclose(picked, deviations[which])
    counts = torch.bincount(which, minlength=16).double()
    p = weights.double()
    assert ((counts - paths * p).abs() < 4.5 * (paths * p * (1 - p)).sqrt()).all(), counts
    sde_noise = apply_noise(problem.factor(x), z)
    corr = torch.corrcoef(torch.stack([picked[:, 1], sde_noise[:, 1]]))[0, 1]
    assert corr > 0.5  # the leading direction's coordinate moves with the SDE's


def _law_nodes(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of a rule exact for polynomials of degree < 40 in one coordinate of the law `name`:
    Gauss–Hermite (Gaussian), Gauss–Laguerre on y ~ Exp(1) (ξ = y − 1; Laplace ξ = ±y/√2), the two signs
    (Rademacher)."""
    if name == "rademacher":
        return np.array([-1.0, 1.0]), np.array([0.5, 0.5])
    if name == "gaussian":
        nodes, weights = np.polynomial.hermite_e.hermegauss(20)
        return nodes, weights / math.sqrt(2 * math.pi)
    y, weights = np.polynomial.laguerre.laggauss(20)
    if name == "exponential":
        return y - 1.0, weights
    return np.concatenate([-y, y]) / math.sqrt(2.0), np.concatenate([weights, weights]) / 2.0


def _expectation(name: str, fn, m: int):
    """E fn(ξ) for ξ with m i.i.d. coordinates of the law `name`, exactly for a polynomial fn (a tensor rule of
    `_law_nodes`); fn maps (N, m) to (N, ...)."""
    nodes, weights = _law_nodes(name)
    grid = torch.tensor(list(itertools.product(nodes, repeat=m)), dtype=F64)
    w = torch.tensor([math.prod(c) for c in itertools.product(weights, repeat=m)], dtype=F64)
    return torch.einsum("n,n...->...", w, fn(grid))


@pytest.mark.parametrize("name", sorted(NOISE_LAWS))
def test_the_joint_factor_of_n_and_n_squared_has_their_exact_covariance(name):
    """n = Sξ with a full S (2, 3): (lin, square) of noise_chaos carry Cov(n), Cov(n, n²) and Cov(n²), and the
    moments E n², E n³, as the law's own expectation gives them."""
    factor = torch.tensor([[1.0, 0.4, -0.3], [0.2, -0.7, 0.5]], dtype=F64)
    problem = Problem(dim=2, x0=[0.3, -0.2], grad=lambda x: x, noise_sqrt=factor, name="skew")
    lin, square, second, third = noise_chaos(problem, name, problem.x0[None, :])
    joint = torch.cat([lin, square], dim=1)[0]  # (4, K)

    def centred(xi):  # (N, 4): n and n² − E n²
        n = xi @ factor.T
        return torch.cat([n, n * n - (factor * factor).sum(dim=1)], dim=1)

    expected = _expectation(name, lambda xi: centred(xi)[:, :, None] * centred(xi)[:, None, :], 3)
    assert torch.allclose(joint @ joint.T, expected, atol=1e-10), (joint @ joint.T - expected)
    assert torch.allclose(second[0], _expectation(name, lambda xi: (xi @ factor.T) ** 2, 3), atol=1e-12)
    assert torch.allclose(third[0], _expectation(name, lambda xi: (xi @ factor.T) ** 3, 3), atol=1e-12)
    assert torch.equal(lin[0, :, :3], factor)  # its first columns are n's own: what the process's normals drive


def test_the_joint_factor_of_real_minibatches_is_their_exact_covariance():
    problem = catalog.get("self_distillation")
    theta = problem.x0[None, :] + 0.1
    lin, square, second, third = noise_chaos(problem, "sample", theta)
    grads, _, w = problem.batches(theta)
    n = grads[0] - w @ grads[0]  # (B, d)
    both = torch.cat([n, n * n - w @ (n * n)], dim=1)
    joint = torch.cat([lin, square], dim=1)[0]
    assert torch.allclose(joint @ joint.T, (both * w[:, None]).T @ both, atol=1e-12)
    assert torch.allclose(third[0], w @ n**3) and torch.allclose(second[0], w @ n**2)


def test_the_order_each_sde_claims_follows_the_noise_class():
    """Diffusive regime: order 1 for a symmetric law, ½ for a skewed one and for real mini-batches (skewed on every
    built-in finite sum), 0 for a misplaced ρ whatever the noise; ballistic regime: the law changes nothing."""
    quadratic, logistic = catalog.quadratic(), catalog.logistic_regression()

    def claimed(name, noise, problem=quadratic):
        family = family_named(name)
        kwargs = family.measured_with(SMOOTH, t0=1.0, noise=noise, **ADAPTIVE)
        return adaptive_sde(problem, kwargs["adaptive"], kwargs["multiplier"], kwargs["rho_in"]).claimed_order

    for name in ("RMSprop-SDE", "Adam-SDE", "PGPO-Adam-SDE[ρ in θ's drift only]", "RMSprop-SDE[v-noise]"):
        assert [claimed(name, noise) for noise in ("gaussian", "rademacher", "laplace", "exponential")] == [1, 1, 1, 0.5]
        assert claimed(name, "sample", logistic) == 0.5
    assert claimed("PGPO-RMSprop-SDE[ρ in θ's drift only]", "exponential") == 0
    assert claimed("RMSprop-SDE-2[ballistic]", "exponential") == 2 == claimed("Adam-SDE-2[ballistic]", "sample", logistic)
    assert claimed("RMSprop-SDE-2[ballistic, no v-noise]", "exponential") == 1
    assert all(skewed(catalog.get(p), "sample") for p in ("logistic_regression", "linear_regression", "self_distillation"))
    assert not skewed(quadratic, "laplace") and skewed(quadratic, "exponential")


def test_every_family_is_built_by_the_arguments_it_names():
    for family in ADAPTIVE_FAMILIES:
        kwargs = family.measured_with(SMOOTH, t0=1.0, **ADAPTIVE)
        model = adaptive_sde(catalog.quadratic(), kwargs["adaptive"], kwargs["multiplier"], kwargs["rho_in"])
        assert model.name == family.name and model.claimed_order == family.claims


def test_bad_noise_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="noise must be one of"):
        Adaptive("adam", noise="cauchy")
    with pytest.raises(ValueError, match="regime must be one of"):
        Adaptive("adam", regime="critical")
    with pytest.raises(ValueError, match="ballistic regime only"):
        Adaptive("adam", sde_order=2, t0=1.0)
    with pytest.raises(ValueError, match="needs a warm start"):
        Adaptive("rmsprop", regime="ballistic", sde_order=2)
    with pytest.raises(ValueError, match="needs eta"):
        Adaptive("rmsprop", v_noise=True).initial_state(torch.zeros(3, dtype=F64))
