"""A finite sum's noise factor kept in its per-sample structure (`SampleDeviations`) acts as the dense factor of
the per-sample deviations does, in every place a solver uses it."""

import numpy as np
import pytest
import torch

from sde_lab import catalog
from sde_lab.problem import (BlockFactor, SampleDeviations, ScaledFactor, add_noise, apply_noise, deviation_factor,
                             noise_variances, scale_factor)
from sde_lab.studies.settings import MINIBATCH

FINITE_SUMS = [catalog.logistic_regression, catalog.self_distillation,
               lambda: catalog.linear_regression(**MINIBATCH), lambda: catalog.logistic_regression(n=5, dim=4)]


def _random_deviations(paths=6, n=5, k=3, d=4, seed=0, weights=None):
    gen = torch.Generator().manual_seed(seed)
    draw = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    if weights is None:
        weights = torch.rand(n, generator=gen, dtype=torch.float64) + 0.1
        weights /= weights.sum()
    return SampleDeviations(draw(paths, k, n), draw(k, n, d), weights, gain=0.7), draw(paths, n), draw(paths, d)


@pytest.mark.parametrize("k", [1, 3])
def test_structured_factor_is_the_dense_deviation_factor(k):
    factor, z, y = _random_deviations(k=k)
    per_sample = torch.einsum("pkn,knd->pnd", factor.coef, factor.features)
    dense = 0.7 * deviation_factor(per_sample, factor.weights)  # (M, d, n), columns √w_b (g_b − ḡ)
    assert factor.shape == dense.shape
    assert torch.allclose(factor.dense(), dense)
    assert torch.allclose(apply_noise(factor, z), torch.einsum("pdn,pn->pd", dense, z))
    assert torch.allclose(add_noise(y.clone(), factor, z), y + torch.einsum("pdn,pn->pd", dense, z))
    assert torch.allclose(noise_variances(factor), dense.square().sum(-1))
    # wrapped as the SDEs wrap it: a per-path scale (PGPO's ρ), a block of an augmented state (Adam's m)
    scale = torch.rand(6, dtype=torch.float64) + 0.5
    scaled = ScaledFactor(scale, scale_factor(factor, 2.0))
    assert torch.allclose(apply_noise(scaled, z), 2.0 * scale[:, None] * torch.einsum("pdn,pn->pd", dense, z))
    assert torch.allclose(add_noise(y.clone(), scaled, z), y + 2.0 * scale[:, None] * torch.einsum("pdn,pn->pd", dense, z))
    block = BlockFactor(9, slice(5, 9), factor)
    out = add_noise(torch.zeros(6, 9, dtype=torch.float64), block, z)
    assert torch.equal(out[:, :5], torch.zeros(6, 5, dtype=torch.float64))
    assert torch.allclose(out[:, 5:], torch.einsum("pdn,pn->pd", dense, z))


def test_a_term_common_to_every_sample_cancels():
    """Adding the same vector to every per-sample gradient (weight decay) changes no deviation."""
    factor, z, _ = _random_deviations(k=1)
    per_sample = torch.einsum("pkn,knd->pnd", factor.coef, factor.features)
    shifted = per_sample + torch.randn(6, 1, 4, dtype=torch.float64)
    assert torch.allclose(factor.dense(), 0.7 * deviation_factor(shifted, factor.weights))


@pytest.mark.parametrize("make", FINITE_SUMS)
def test_built_in_finite_sums_grad_noise_and_samples_agree_with_their_per_sample_gradients(make):
    """grad, the factor and the sampled gradients of each built-in finite sum against its dense per-sample gradients."""
    problem = make()
    x = problem.x0 + torch.randn(7, problem.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads, _, weights = problem.batches(x)  # (M, n, d): every sample's gradient, weight decay included
    factor = problem.factor(x)
    assert isinstance(factor, SampleDeviations)
    assert torch.allclose(problem.grad(x), torch.einsum("b,pbd->pd", weights, grads))
    assert torch.allclose(problem.noise(x), deviation_factor(grads, weights))  # the public, dense form
    assert problem.noise_dim() == grads.shape[1]
    sampled, _ = problem.sample(x, torch.Generator().manual_seed(2))
    pick = torch.randint(grads.shape[1], (7,), generator=torch.Generator().manual_seed(2))
    assert torch.allclose(sampled, grads[torch.arange(7), pick])


def test_a_user_factor_with_the_wrong_shapes_is_refused_by_name():
    from sde_lab.problem import Problem

    features = torch.randn(1, 4, 3, dtype=torch.float64)
    bad = lambda x: SampleDeviations(torch.ones(x.shape[0], 1, 5, dtype=torch.float64), features,  # noqa: E731
                                     torch.full((4,), 0.25, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"noise_sqrt\(x\).features"):
        Problem(dim=3, x0=torch.zeros(3), grad=lambda x: x, noise_sqrt=bad)


def test_self_distillation_signal_is_the_kl_of_pgpo():
    """The toy's per-prompt signal, computed over its answers-first layout, is pgpo's KL(q ‖ p) of the same logits."""
    from pgpo import kl

    problem = catalog.self_distillation()
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    rng = np.random.default_rng(0)  # the toy's own draws, in its order: features, then the correct answers
    features = torch.from_numpy(rng.normal(scale=0.5, size=(8, 4, 3)))
    correct = torch.from_numpy(rng.integers(4, size=8))
    logits = torch.einsum("nkd,pd->pnk", features, x)
    teacher = logits + 2.0 * torch.nn.functional.one_hot(correct, 4)
    expected = kl(teacher.log_softmax(-1), logits.log_softmax(-1))  # (M, n)
    _, infos, _ = problem.batches(x)
    assert torch.allclose(infos, expected)
    assert torch.allclose(problem.info(x), expected.mean(dim=1))


def test_a_user_sde_may_return_every_diffusion_form_the_built_in_ones_use():
    """`weak_error(sde=...)` checks a user SDE's diffusion as the matrix it stands for, whatever its form: the same
    ladder through the plain SME and through the SME rebuilt from structured forms reads the same errors (to rounding)."""
    from sde_lab.sme import SDEModel, sme
    from sde_lab.weak_error import weak_error

    problem = catalog.logistic_regression()
    etas = [0.25, 0.125]

    def rebuilt(eta, wrap):
        plain = sme(problem, eta)
        return SDEModel("mine", 1, plain.drift, lambda x: wrap(x, plain.diffusion(x)), plain.noise_dim)

    ones = lambda x: torch.ones(x.shape[0], x.shape[1], dtype=x.dtype)  # noqa: E731  a (M, d) scale of 1
    run = lambda sde: weak_error(problem, etas, 0.5, sde=sde, paths=200, reference="em", test_fn="norm2",  # noqa: E731
                                 progress=False).errors
    expected = run("scaled")
    for wrap in (lambda x, f: f, lambda x, f: ScaledFactor(ones(x), f), lambda x, f: BlockFactor(2, slice(0, 2), f)):
        assert np.allclose(run(lambda eta: rebuilt(eta, wrap)), expected, rtol=1e-9, atol=0)  # fused adds round apart
    with pytest.raises(ValueError, match=r"diffusion\(x\).scale returned shape \(2, 5\)"):
        run(lambda eta: rebuilt(eta, lambda x, f: ScaledFactor(torch.ones(x.shape[0], 5, dtype=x.dtype), f)))


def _per_sample_losses(name):
    """The built-in finite sums' per-sample losses ℓ_i(w) (d,) → (n,), written out here from their definitions and
    their data drawn as the catalog draws them (seed 0, default sizes): an oracle independent of their structure."""
    rng = np.random.default_rng(0)
    if name == "linear_regression":
        a = torch.from_numpy(rng.normal(size=(16, 2)))
        b = a @ torch.from_numpy(rng.normal(size=2)) + 0.5 * torch.from_numpy(rng.normal(size=16))
        return lambda w: 0.5 * (a @ w - b) ** 2
    a = torch.from_numpy(rng.normal(size=(16, 2)))
    margin = a @ torch.from_numpy(rng.normal(size=2)) + 0.5 * torch.from_numpy(rng.normal(size=16))
    y = torch.where(margin >= 0, 1.0, -1.0).double()
    return lambda w: torch.nn.functional.softplus(-y * (a @ w)) + 0.05 * (w * w).sum()


@pytest.mark.parametrize("name", ["linear_regression", "logistic_regression"])
def test_per_sample_gradients_are_the_gradients_of_the_per_sample_losses(name):
    problem = catalog.get(name)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    expected = torch.stack([torch.func.jacrev(_per_sample_losses(name))(w) for w in x])  # (M, n, d) by autograd
    grads, _, _ = problem.batches(x)
    assert torch.allclose(grads, expected)
    assert torch.allclose(problem.grad(x), expected.mean(dim=1))


def test_self_distillation_field_is_f_transpose_student_minus_teacher():
    """The toy's per-prompt direction F_iᵀ(p_i − q_i), from logits in the prompts-first layout it was defined in."""
    problem = catalog.self_distillation()
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    rng = np.random.default_rng(0)
    features = torch.from_numpy(rng.normal(scale=0.5, size=(8, 4, 3)))
    correct = torch.from_numpy(rng.integers(4, size=8))
    logits = torch.einsum("nkd,pd->pnk", features, x)
    p, q = logits.softmax(-1), (logits + 2.0 * torch.nn.functional.one_hot(correct, 4)).softmax(-1)
    grads, _, _ = problem.batches(x)
    assert torch.allclose(grads, torch.einsum("nkd,pnk->pnd", features, p - q))
