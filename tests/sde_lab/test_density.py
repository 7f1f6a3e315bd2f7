"""The Fokker–Planck solver behind the double-well density figure, against laws known in closed form."""

import numpy as np
import pytest

from sde_lab.density import fokker_planck_1d


def test_ornstein_uhlenbeck_law_at_time_t():
    """dX = −θX dt + s dW from x0: X_T ~ N(x0 e^{−θT}, s²(1 − e^{−2θT}) / 2θ); the error falls with the grid."""
    theta, s, x0, horizon = 2.0, 0.3, 1.0, 0.7
    mean = x0 * np.exp(-theta * horizon)
    var = s**2 / (2 * theta) * (1 - np.exp(-2 * theta * horizon))
    errors = []
    for cells in (200, 800):
        x, p = fokker_planck_1d(lambda x: -theta * x, lambda x: np.full_like(x, s), x0, horizon, -2.0, 2.5, cells)
        h = x[1] - x[0]
        exact = np.exp(-((x - mean) ** 2) / (2 * var)) / np.sqrt(2 * np.pi * var)
        assert p.sum() * h == pytest.approx(1.0, abs=1e-10)  # closed walls conserve mass
        assert p.min() >= -1e-12  # Scharfetter–Gummel fluxes keep the density non-negative
        errors.append(np.abs(p - exact).max() / exact.max())
    assert errors[1] < 0.005 and errors[1] < errors[0] / 3


def test_state_dependent_diffusion_reaches_the_ito_stationary_law():
    """dX = −X dt + ½√(1 + X²) dW: the Itô equation ∂t p = −∂x(bp) + ∂²x(Dp) has p∞ ∝ (1 + x²)⁻⁵.

    (Reading the noise as Stratonovich, or putting D outside the derivative, gives another exponent.)
    """
    # T = 8 leaves e⁻⁸ of the start; the tails beyond ±3 hold ~1e-5 of the mass
    x, p = fokker_planck_1d(lambda x: -x, lambda x: 0.5 * np.sqrt(1 + x**2), 0.0, 8.0, -3.0, 3.0, 240)
    h = x[1] - x[0]
    target = (1 + x**2) ** -5.0
    target /= target.sum() * h
    assert np.abs(p - target).max() / target.max() < 0.001
    wrong = (1 + x**2) ** -4.0  # the law with D outside the second derivative
    wrong /= wrong.sum() * h
    assert np.abs(p - wrong).max() / wrong.max() > 0.05


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="x0"):
        fokker_planck_1d(lambda x: -x, lambda x: np.ones_like(x), 3.0, 1.0, -1.0, 1.0)
    with pytest.raises(ValueError, match="diffusion must be positive"):
        fokker_planck_1d(lambda x: -x, lambda x: np.zeros_like(x), 0.5, 1.0, -1.0, 1.0)
