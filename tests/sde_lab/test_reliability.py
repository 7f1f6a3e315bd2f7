"""sde_lab never calls a broken measurement a pass: non-finite or blown-up paths, degenerate ladders, user
functions of the wrong shape or dtype, and ladders past stability whether or not the problem declares λ_max."""

import numpy as np
import pytest
import torch

from pgpo import Multiplier
from sde_lab import Problem, SDEModel, catalog, sme, weak_error
from sde_lab.stability import MAX_DIM, max_curvature
from sde_lab.studies.verify import _order_row

F64 = torch.float64


def constant_noise(d, scale=0.5, m=None):
    return scale * torch.ones(d, m or d, dtype=F64) if m else scale * torch.eye(d, dtype=F64)


def linear(lam=1.0, d=1, **kwargs):
    """L = ½λ|x|², additive noise: a problem every test can bend one piece of."""
    spec = dict(dim=d, x0=torch.ones(d), grad=lambda x: lam * x, noise_sqrt=constant_noise(d),
                loss=lambda x: 0.5 * lam * (x * x).sum(-1), name="linear")
    spec.update(kwargs)
    return Problem(**spec)


# ------------------------------------------------------------------------------------------------
# non-finite and blown-up paths


def test_a_ladder_with_non_finite_paths_never_passes_and_says_how_many_at_which_eta():
    # ∇L turns NaN past x = 0.6: finite at x0 = 0.5, NaN on the paths the noise carries there
    problem = Problem(dim=1, x0=[0.5], grad=lambda x: torch.where(x > 0.6, torch.full_like(x, float("nan")), x),
                      noise_sqrt=constant_noise(1, 1.0), name="nan_past_0.6")
    r = weak_error(problem, [2**-j for j in range(3, 7)], horizon=1.0, paths=2000, test_fn="norm2")
    assert r.diverged[0] > 0 and r.diverged.sum() > 0
    assert not r.passed()
    verdict = r.verdict()
    assert verdict.startswith("invalid") and f"{r.diverged[0]} at η = 0.125" in verdict and "of 2000" in verdict


def test_finite_but_blown_up_paths_are_caught_without_any_stability_information():
    # d > MAX_DIM: no curvature is measured; the discrete process at ηλ = 10 blows up to ~1e8 while its SDE
    # (Euler–Maruyama at dt = η/16, λ·dt = 0.6) stays near 0
    d = MAX_DIM + 1
    problem = linear(lam=40.0, d=d, noise_sqrt=constant_noise(d, 0.5, m=1))
    r = weak_error(problem, [0.25, 0.125, 2**-5], horizon=1.0, paths=64, reference="em")
    assert r.lambda_source == "unknown" and any("no stability check" in n for n in r.notes)
    assert r.diverged[0] == 64 and r.diverged[1] == 64  # ηλ = 10 and 5
    assert r.diverged[2] == 0  # ηλ = 1.25: stable, measured
    assert not r.passed() and "64 at η = 0.25" in r.verdict()


def test_a_reference_that_blows_up_too_is_caught_and_extreme_blow_ups_raise_nothing():
    # λ = 400: at the coarse η even Euler–Maruyama at dt = η/16 is unstable (λ·dt = 12.5), so discrete and
    # reference blow up together (relative to each other nothing looks wrong); at λ = 1e5 the paths overflow
    d = MAX_DIM + 1
    for lam in (400.0, 1e5):
        problem = linear(lam=lam, d=d, noise_sqrt=constant_noise(d, 0.5, m=1))
        r = weak_error(problem, [2**-j for j in range(1, 5)], horizon=1.0, paths=32, reference="em")
        assert np.all(r.diverged > 0), (lam, r.diverged, r.notes)
        assert not r.passed() and r.verdict().startswith("invalid")
        assert r.paths_needed.dtype.kind == "i"


# ------------------------------------------------------------------------------------------------
# stability without (or against) a declared λ_max


def test_a_ladder_past_stability_is_refused_without_lambda_max_by_the_curvature_measured_at_x0():
    with pytest.raises(ValueError, match=r"eta=0.25 is unstable.*λ_max = 40, measured at x0.*declares no lambda_max"):
        weak_error(linear(lam=40.0), [0.25, 0.125], horizon=1.0, paths=10)
    # with the multiplier's ρ_max counted: ηρλ = 0.04·2·40 = 3.2
    problem = linear(lam=40.0, info=lambda x: torch.zeros(x.shape[0], dtype=x.dtype))
    with pytest.raises(ValueError, match=r"η·ρ_max·λ_max = 3\.2"):
        weak_error(problem, [0.04, 0.02], horizon=0.08, multiplier=Multiplier(1.0, 2.0), paths=10)


def test_a_declared_lambda_max_below_the_curvature_is_not_believed():
    with pytest.raises(ValueError, match=r"declared lambda_max = 1 is too small"):
        weak_error(linear(lam=40.0, lambda_max=1.0), [0.25, 0.125], horizon=1.0, paths=10)


def test_curvature_that_grows_along_the_paths_flags_the_ladder():
    # L = x⁴/4: λ = 3x² is 0.75 at x0 = 0.5 (η = 0.5 passes there) but ~7 where the noise takes the paths
    problem = Problem(dim=1, x0=[0.5], grad=lambda x: x**3, noise_sqrt=constant_noise(1, 1.0), name="quartic")
    r = weak_error(problem, [2**-j for j in range(1, 5)], horizon=1.0, paths=500, test_fn="norm2")
    assert r.lambda_source == "measured" and r.stability[0] >= 2.0 > r.stability[-1]
    assert not r.passed() and "past stability" in r.verdict() and "at η = 0.5" in r.verdict()
    # verify's own judges (here: the order-2 check) cannot pass it either
    row = _order_row(True, problem, [2**-j for j in range(1, 5)], 1.0, judge=lambda _: ("judged fine", True),
                     paths=200, test_fn="norm2")
    assert not row.ok and row.verdict.startswith("invalid")


def test_max_curvature_measures_the_hessian_of_a_field():
    h = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, -3.0]], dtype=F64)
    states = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    assert max_curvature(lambda x: x @ h, states) == pytest.approx(float(torch.linalg.eigvalsh(h)[-1]), rel=1e-8)
    assert max_curvature(lambda x: x**3, torch.tensor([[2.0]], dtype=F64)) == pytest.approx(12.0, rel=1e-6)
    assert max_curvature(lambda x: x, torch.zeros(1, MAX_DIM + 1, dtype=F64)) is None
    # the built-ins' declared λ_max are bounds the measurement respects
    for name in ("quadratic", "random_hessian", "linear_regression", "logistic_regression", "self_distillation"):
        p = catalog.get(name)
        assert max_curvature(p.grad, p.x0[None, :]) <= 1.01 * p.lambda_max, name


# ------------------------------------------------------------------------------------------------
# degenerate ladders


@pytest.mark.parametrize("etas", [[0.1, 0.1, 0.1], [0.1, 0.05, 0.05], [0.1, 0.1 * (1 + 1e-12)], [0.1], [0.1, float("nan")],
                                  [0.1, float("inf")], [0.1, -0.05], [0.1, 0.0]])
def test_degenerate_ladders_are_refused(etas):
    with pytest.raises(ValueError, match="etas must"):
        weak_error(catalog.quadratic(), etas, horizon=0.3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(horizon=float("nan")), "horizon must be a positive finite"), (dict(horizon=-1.0), "horizon must be"),
    (dict(paths=1), "paths must be an int >= 2"), (dict(paths=10.5), "paths must be an int"),
    (dict(refine=-1), "refine must be an int >= 0"),
])
def test_bad_measurement_parameters_are_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        weak_error(catalog.double_well(), [0.1, 0.05], **{"horizon": 1.0, **kwargs})


def test_a_ladder_of_strings_is_refused_by_name():
    with pytest.raises(ValueError, match="etas must be numbers"):
        weak_error(catalog.quadratic(), ["fast", "slow"], horizon=1.0)


# ------------------------------------------------------------------------------------------------
# user functions of the wrong shape, dtype or value


@pytest.mark.parametrize("change, match", [
    (dict(noise_sqrt=lambda x: 0.5 * torch.ones(x.shape[0], 1, dtype=x.dtype)), r"noise_sqrt\(x\) returned shape \(2, 1\), expected \(M, d, m\)"),
    (dict(noise_sqrt=torch.ones(1, dtype=F64)), r"constant noise_sqrt must be a floating \(d, m\)"),
    (dict(noise_sqrt=torch.ones(3, 1, dtype=F64)), r"constant noise_sqrt must be a floating \(d, m\) = \(1, m\)"),
    (dict(noise_sqrt=[[0.5]]), r"noise_sqrt must be a callable"),
    (dict(grad=lambda x: x[:, 0]), r"grad\(x\) returned shape \(2,\), expected \(M, d\)"),
    (dict(grad=lambda x: x.float()), r"grad\(x\) returned torch.float32, expected torch.float64"),
    (dict(grad=lambda x: x.numpy()), r"grad\(x\) must return a torch.Tensor"),
    (dict(grad=lambda x: x / 0.0), r"grad\(x\) is not finite"),
    (dict(info=lambda x: x), r"info\(x\) returned shape \(2, 1\), expected \(M,\)"),
    (dict(loss=lambda x: (x * x).sum()), r"loss\(x\) returned shape \(\), expected \(M,\)"),
    (dict(sample_grad=lambda x, gen: (x, x, x)), r"sample_grad\(x, gen\) must return grads"),
    (dict(sample_grad=lambda x, gen: (x, x)), r"sample_grad\(x, gen\)\[1\] returned shape \(2, 1\)"),
    (dict(sample_grad=lambda x, gen: x[:1]), r"sample_grad\(x, gen\) returned shape \(1, 1\), expected \(M, d\) = \(2, 1\)"),
    (dict(batches=lambda x: (x[:, None, :].expand(-1, 3, -1), None, torch.ones(4, dtype=F64) / 4)),
     r"batches\(x\)\[2\] returned shape \(4,\), expected \(B,\) = \(3,\)"),
    (dict(batches=lambda x: x), r"batches\(x\) must return"),
    (dict(dim=0), r"dim must be a positive int"),
    (dict(x0=[float("nan")]), r"x0 must be finite"),
    (dict(lambda_max=float("nan")), r"lambda_max must be a positive finite number"),
    (dict(lambda_max=-1.0), r"lambda_max must be a positive finite number"),
])
def test_user_functions_of_the_wrong_kind_are_refused_at_construction_saying_what_was_expected(change, match):
    with pytest.raises((ValueError, TypeError), match=match):
        linear(**change)


def test_a_well_formed_user_problem_with_every_function_is_accepted():
    def sample_grad(x, gen):
        return x + torch.randn(x.shape, generator=gen, dtype=x.dtype), (x * x).sum(-1)

    def batches(x):
        grads = torch.stack([x - 1.0, x + 1.0], dim=1)  # (M, 2, d)
        return grads, (grads * grads).sum(-1), torch.full((2,), 0.5, dtype=x.dtype)

    p = linear(d=2, info=lambda x: (x * x).sum(-1), sample_grad=sample_grad, batches=batches,
               noise_sqrt=lambda x: torch.eye(2, dtype=x.dtype).expand(x.shape[0], 2, 2))
    assert p.noise_dim() == 2


def test_a_user_test_function_and_a_user_sde_are_checked_once_up_front():
    with pytest.raises(ValueError, match=r"test_fn 'g' returned shape \(2, 3\), expected \(M,\)"):
        def g(x):
            return x * x
        weak_error(catalog.quadratic(), [0.1, 0.05], horizon=0.2, test_fn=g)
    problem = catalog.quadratic()

    def wrong_drift(eta):
        right = sme(problem, eta)
        return SDEModel("mine", 1, lambda x: right.drift(x)[:, :1], right.diffusion, right.noise_dim)

    with pytest.raises(ValueError, match=r"SDE 'mine': drift\(x\) returned shape \(2, 1\), expected \(M, d\) = \(2, 3\)"):
        weak_error(problem, [0.1, 0.05], horizon=0.2, sde=wrong_drift, reference="em", paths=10)
    with pytest.raises(TypeError, match=r"sde\(eta\) must return an sde_lab.SDEModel"):
        weak_error(problem, [0.1, 0.05], horizon=0.2, sde=lambda eta: None, reference="em", paths=10)
