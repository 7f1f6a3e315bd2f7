"""PGPO's Euler–Maruyama step in its fused form, y + ρ⊙(S ΔW − dt ∇L), is the scheme's own step to rounding."""

import dataclasses

import pytest
import torch

from sde_lab.catalog import gradient_signal, quadratic
from sde_lab.problem import FromGradient
from sde_lab.schemes import EULER_MARUYAMA
from sde_lab.sme import KINKED, SMOOTH, sme


def _states(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(300, d, generator=g, dtype=torch.float64), 0.1 * torch.randn(300, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("multiplier", [SMOOTH, KINKED])
@pytest.mark.parametrize("hessian", [(0.5, 1.0, 2.0), [[2.0, 0.3, 0.0], [0.3, 1.0, 0.1], [0.0, 0.1, 0.5]]])
def test_the_fused_step_is_the_drift_and_diffusion_step(multiplier, hessian):
    problem = quadratic(hessian=hessian, x0=(2.0, -1.0, 1.0))
    model = sme(problem, 0.1, multiplier)
    assert model.fused_euler_step() is not None
    plain = dataclasses.replace(model, euler_step=None)
    y, dw = _states(3)
    fused, want = EULER_MARUYAMA.step(model, y, 0.01, dw), EULER_MARUYAMA.step(plain, y, 0.01, dw)
    torch.testing.assert_close(fused, want, rtol=0, atol=1e-14)
    assert (fused - y).abs().max() > 1e-3  # the step moved the state


def test_an_info_not_read_from_the_gradient_is_called_as_given():
    problem = quadratic()
    calls = []

    def info(x):
        calls.append(x)
        return gradient_signal(problem.grad(x)) * 0.5
    problem = dataclasses.replace(problem, info=info)
    model = sme(problem, 0.1, SMOOTH)
    y, dw = _states(3, seed=1)
    calls.clear()
    fused = EULER_MARUYAMA.step(model, y, 0.01, dw)
    assert len(calls) == 1 and calls[0] is y
    torch.testing.assert_close(fused, EULER_MARUYAMA.step(dataclasses.replace(model, euler_step=None), y, 0.01, dw),
                               rtol=0, atol=1e-14)


def test_a_drift_or_diffusion_swapped_in_afterwards_voids_the_fused_step():
    model = sme(quadratic(), 0.1, SMOOTH)
    swapped = dataclasses.replace(model, drift=lambda x: torch.zeros_like(x))
    assert swapped.fused_euler_step() is None
    y, dw = _states(3, seed=2)
    diffusion = model.diffusion(y)  # ρ(y) scaling √η S
    want = y + diffusion.scale[:, None] * (dw @ diffusion.factor.T)  # a zero drift: the noise alone
    torch.testing.assert_close(EULER_MARUYAMA.step(swapped, y, 0.01, dw), want, rtol=0, atol=1e-14)
    assert dataclasses.replace(model, diffusion=model.diffusion).fused_euler_step() is not None


def test_only_the_scaled_order_one_state_sde_with_a_constant_factor_has_it():
    problem = quadratic()
    assert sme(problem, 0.1, None).fused_euler_step() is None  # SGD: nothing to fuse
    assert sme(problem, 0.1, SMOOTH, sde="paper").fused_euler_step() is None  # ρ on the drift only
    assert sme(problem, 0.1, SMOOTH, order=2).fused_euler_step() is None
    assert isinstance(problem.info, FromGradient) and problem.info.grad is problem.grad
