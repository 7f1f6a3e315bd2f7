"""The ballistic regime (lr = h, noise and ε of O(1)) and the SDEs with v-noise: one step of each SDE against one step
of the process, enumerated exactly over the gradient noise, shows the local order each SDE claims; the drift is
the formula; a short ladder tells the order-2 SDE from the one without u's noise."""

import math

import numpy as np
import pytest
import torch

from pgpo import Multiplier
from sde_lab import catalog
from sde_lab.adaptive import Adaptive, AdaptiveProcess, _along_itself, adaptive_sde, family_named
from sde_lab.problem import dense_factor
from sde_lab.studies.settings import ADAPTIVE, Q1D

from tests.sde_lab.test_adaptive_noise import _law_nodes

SMOOTH = Multiplier(2.0, 2.0, form="smooth")
F64 = torch.float64


def outcomes(problem, noise: str, theta: torch.Tensor):
    """Every value of the gradient noise n at θ (1, d) with its probability: (N, d), (N,) — the mini-batches'
    deviations, or a tensor rule of the law's nodes (`_law_nodes`, exact for polynomials of degree < 40)."""
    if noise == "sample":
        grads, _, weights = problem.batches(theta)
        return grads[0] - weights @ grads[0], weights
    nodes, weights = _law_nodes(noise)
    m = problem.noise_dim()
    grid = torch.tensor(np.stack(np.meshgrid(*[nodes] * m, indexing="ij"), -1).reshape(-1, m), dtype=F64)
    w = torch.tensor(np.prod(np.stack(np.meshgrid(*[weights] * m, indexing="ij"), -1).reshape(-1, m), axis=1))
    return grid @ problem.factor(theta).T, w


def one_step_residuals(family: str, problem, noise: str, h: float, shift: float = 0.1):
    """max |·| of the one-step mismatch in the mean and in the second moment, discrete against the SDE's Itô–Taylor
    expansion to O(h²) (mean h b + ½h² J_b b, second moment h DDᵀ + h² bbᵀ; the rest is O(h³) for a diffusion D of
    O(√h)), at a warm state moved off its start by `shift`."""
    kwargs = family_named(family).measured_with(SMOOTH, t0=1.0, noise=noise, **ADAPTIVE)
    setting = kwargs["adaptive"]
    process = AdaptiveProcess(problem, math.sqrt(h), setting, kwargs["multiplier"])
    model = adaptive_sde(problem, setting, kwargs["multiplier"], kwargs["rho_in"])
    x = process.initial_state()[None, :].clone()
    parts = setting.blocks(problem.dim)
    x[:, parts["theta"]] += shift
    x[:, parts["u"]] *= 1.0 + shift
    n, w = outcomes(problem, noise, x[:, parts["theta"]])
    steps = process.step(x.expand(len(w), -1), n=n) - x  # (N, D)
    mean, second = w @ steps, (steps * w[:, None]).T @ steps
    b, along = _along_itself(model.drift, x)
    d = dense_factor(model.diffusion(x), 1)[0]
    r1 = mean - (h * b + 0.5 * h**2 * along)[0]
    r2 = second - (h * d @ d.T + h**2 * b.T @ b)
    return float(r1.abs().max()), float(r2.abs().max())


def ratios(family, problem, noise):
    """How each residual shrinks from h = 2⁻⁸ to 2⁻⁹: 8 for a local error O(h³) (order 2), 4 for O(h²). (A law
    with exponential tails approaches 8 slowly for RMSprop: E n^{2k} grows like (2k)!, so its expansion in h is only
    asymptotic — 5.5, 6.1, 6.7, 7.2, 7.5, 7.7 from h = 2⁻⁴ on for the centred exponential.)"""
    (a1, a2), (b1, b2) = (one_step_residuals(family, problem, noise, h) for h in (2.0**-8, 2.0**-9))
    return a1 / b1, a2 / b2


@pytest.mark.parametrize("family", ["RMSprop-SDE-2[ballistic]", "Adam-SDE-2[ballistic]",
                                    "PGPO-RMSprop-SDE-2[ballistic, ρ in θ's drift and diffusion]",
                                    "PGPO-Adam-SDE-2[ballistic, ρ in θ's drift]"])
@pytest.mark.parametrize("noise", ["sample", "exponential", "rademacher"])
def test_the_order_two_sdes_match_one_step_of_the_process_to_order_h_cubed(family, noise):
    """Both moments of one step agree to O(h³) for every noise, skewed or not (E n³ is in a₁): local order 2."""
    problem = catalog.logistic_regression() if noise == "sample" else catalog.quadratic(x0=(1.0, -0.5, 0.5))
    mean_ratio, second_ratio = ratios(family, problem, noise)
    assert mean_ratio > 7.0 and second_ratio > 7.0, (mean_ratio, second_ratio)


@pytest.mark.parametrize("family,which", [("RMSprop-SDE[ballistic]", 0), ("Adam-SDE[ballistic]", 0),
                                          ("RMSprop-SDE-2[ballistic, no v-noise]", 1),
                                          ("Adam-SDE-2[ballistic, no v-noise]", 1),
                                          ("PGPO-RMSprop-SDE-2[ballistic, ρ in θ's drift only]", 1)])
def test_the_sdes_that_claim_order_one_miss_one_step_at_order_h_squared(family, which):
    """b₀ alone misses the mean at O(h²); without u's noise (or with ρ off θ's noise) the second moment is missed
    at O(h²): each residual falls 4× per halving, not 8×."""
    problem = catalog.logistic_regression()
    residual = ratios(family, problem, "sample")[which]
    assert 3.5 < residual < 4.5, residual


def test_the_ballistic_drift_is_the_formula():
    """b₀ for RMSprop: θ: −∇L/P, u: c₂(∇L²/σ₀² + diag Σ − u), t: 1, h: 0 — the O(1) part of E(∇L/σ₀ + n)² has
    ∇L²/σ₀² in this regime, which Malladi et al.'s (σ = σ₀/η) drops."""
    problem = catalog.logistic_regression()
    setting = Adaptive("rmsprop", sigma0=0.7, eps0=0.05, c2=3.0, regime="ballistic")
    model = adaptive_sde(problem, setting)
    x = setting.initial_state(problem.x0, problem, eta=0.25)[None, :].repeat(2, 1)
    x[:, 2:4] = torch.tensor([[0.3, 0.6], [1.2, 0.1]], dtype=F64)
    theta, u = x[:, :2], x[:, 2:4]
    grad = problem.grad(theta)
    p = 0.7 * u.sqrt() + 0.05
    expected = torch.cat([-grad / p, 3.0 * ((grad / 0.7) ** 2 + problem.noise(theta).square().sum(-1) - u),
                          torch.ones(2, 1, dtype=F64), torch.zeros(2, 1, dtype=F64)], dim=1)
    assert torch.allclose(model.drift(x), expected)
    assert x[0, -1] == 0.0625 and setting.state_dim(2) == 6  # (θ, u, t, h): the SDE reads h from the state


@pytest.mark.slow
def test_the_order_two_sde_beats_the_one_without_v_noise_on_a_ladder():
    """Measured (coupled, Euler–Maruyama reference at h/16 with Richardson): at h = 1/16 the error of the order-2 SDE
    is a tenth of the one without u's noise, and the latter's falls as h."""
    from sde_lab.weak_error import weak_error

    problem, etas = catalog.quadratic(**Q1D), [0.5, 0.25]
    errors = {}
    for name in ("RMSprop-SDE-2[ballistic]", "RMSprop-SDE-2[ballistic, no v-noise]"):
        r = weak_error(problem, etas, 1.0, paths=4000, test_fn="norm2",
                       **family_named(name).measured_with(None, t0=1.0, **ADAPTIVE))
        errors[name] = r.errors
    full, without = errors["RMSprop-SDE-2[ballistic]"], errors["RMSprop-SDE-2[ballistic, no v-noise]"]
    assert abs(full[1]) < abs(without[1]) / 4
    assert 2.5 < without[0] / without[1] < 6.5  # order 1: 4× per step of h
