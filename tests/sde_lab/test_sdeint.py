"""sdeint as an independent cross-check of the Euler–Maruyama engine."""

import numpy as np
import pytest
import sdeint
import torch
from scipy import stats

from pgpo import Multiplier
from sde_lab import catalog, sme
from sde_lab.problem import dense_factor
from sde_lab.schemes import EULER_MARUYAMA


def as_sdeint(model):
    """The SDEModel's drift and diffusion for one path, in sdeint's (y, t) → numpy form."""

    def f(y, t):
        return model.drift(torch.from_numpy(y)[None, :])[0].numpy()

    def G(y, t):
        return dense_factor(model.diffusion(torch.from_numpy(y)[None, :]), 1)[0].numpy()

    return f, G


@pytest.mark.parametrize("name,multiplier,sde", [
    ("random_hessian", None, "scaled"),  # multiplicative noise
    ("logistic_regression", Multiplier(2.0, 2.0, form="smooth"), "scaled"),  # PGPO, state-dependent ρ in the diffusion
    ("double_well", Multiplier(1.0, 2.0), "paper"),
])
def test_our_euler_maruyama_path_equals_sdeint_itoeuler(name, multiplier, sde):
    problem = catalog.get(name)
    model = sme(problem, 0.125, multiplier, sde)
    dt, n = 0.01, 200
    dw = np.random.default_rng(0).normal(scale=np.sqrt(dt), size=(n, model.noise_dim))
    theirs = sdeint.itoEuler(*as_sdeint(model), problem.x0.numpy(), np.linspace(0.0, n * dt, n + 1), dW=dw)
    y = problem.x0[None, :].clone()
    ours = [y[0].numpy().copy()]
    for k in range(n):
        y = EULER_MARUYAMA.step(model, y, dt, torch.from_numpy(dw[k])[None, :])
        ours.append(y[0].numpy().copy())
    np.testing.assert_allclose(np.array(ours), theirs, rtol=1e-12, atol=1e-12)


def test_itosri2_reference_agrees_in_distribution():
    """A strong-order-1 SRI2 solution and our Euler–Maruyama paths agree in mean and second moment."""
    problem = catalog.double_well(sigma=0.7)
    model = sme(problem, 0.25)
    t, n, paths = 1.0, 40, 150
    rng = np.random.default_rng(1)
    sri = np.array([sdeint.itoSRI2(*as_sdeint(model), problem.x0.numpy(), np.linspace(0.0, t, n + 1), generator=rng)[-1, 0]
                    for _ in range(paths)])
    gen = torch.Generator().manual_seed(2)
    y = problem.x0.expand(20000, 1).clone()
    for _ in range(4 * n):  # a finer grid: its O(dt) bias is well inside the sampling error of 150 SRI2 paths
        dw = torch.randn(20000, 1, generator=gen, dtype=torch.float64) * np.sqrt(t / (4 * n))
        y = EULER_MARUYAMA.step(model, y, t / (4 * n), dw)
    ours = y[:, 0].numpy()
    se_mean = np.hypot(sri.std() / np.sqrt(paths), ours.std() / np.sqrt(len(ours)))
    assert abs(sri.mean() - ours.mean()) < 4 * se_mean
    se_sq = np.hypot((sri**2).std() / np.sqrt(paths), (ours**2).std() / np.sqrt(len(ours)))
    assert abs((sri**2).mean() - (ours**2).mean()) < 4 * se_sq
    assert stats.ks_2samp(sri, ours).pvalue > 1e-3  # and the whole marginal law
