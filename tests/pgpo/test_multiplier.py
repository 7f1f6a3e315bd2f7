import math

import numpy as np
import pytest
import torch

from pgpo import Multiplier

GRID = np.concatenate([np.linspace(0.0, 5.0, 501), [10.0, 100.0, 1e6]])


@pytest.mark.parametrize("alpha,rho_max", [(0.5, 2.0), (1.0, 2.0), (2.0, 3.0), (0.0, 2.0), (4.0, 1.0)])
def test_linear_is_the_papers_formula(alpha, rho_max):
    rho = Multiplier(alpha, rho_max)(GRID)
    np.testing.assert_array_equal(rho, np.minimum(1.0 + alpha * GRID, rho_max))


@pytest.mark.parametrize("alpha,rho_max", [(0.5, 2.0), (1.0, 2.0), (2.0, 3.0), (3.0, 1.5)])
def test_smooth_cap_has_slope_alpha_at_zero_and_limit_rho_max(alpha, rho_max):
    m = Multiplier(alpha, rho_max, form="smooth")
    h = 1e-7
    assert (m(h) - m(0.0)) / h == pytest.approx(alpha, rel=1e-5)
    assert m(0.0) == 1.0
    assert m(1e6) == pytest.approx(rho_max, abs=1e-12)
    rho = m(GRID)
    assert np.all(rho < rho_max + 1e-15) and np.all(rho >= 1.0)
    np.testing.assert_allclose(rho, 1 + (rho_max - 1) * np.tanh(alpha * GRID / (rho_max - 1)), rtol=1e-15)


@pytest.mark.parametrize("form", ["linear", "smooth"])
def test_monotone_bounded_and_capped(form):
    m = Multiplier(1.5, 2.5, form=form)
    rho = m(GRID)
    assert np.all(np.diff(rho) >= 0)
    assert rho.min() == 1.0 and rho.max() <= 2.5
    assert rho[-1] == pytest.approx(2.5)
    # a larger α is never smaller
    assert np.all(Multiplier(3.0, 2.5, form=form)(GRID) >= rho)


@pytest.mark.parametrize("form", ["linear", "smooth"])
def test_returns_the_kind_it_was_given(form):
    m = Multiplier(1.0, 2.0, form=form)
    assert type(m(0.3)) is float and type(m(1)) is float and type(m(np.float32(0.3))) is float
    arr = m(np.array([[0.1, 0.2], [0.3, 0.4]], dtype=np.float32))
    assert isinstance(arr, np.ndarray) and arr.dtype == np.float64 and arr.shape == (2, 2)
    for dtype in (torch.float32, torch.float64):
        t = m(torch.tensor([0.1, 0.7], dtype=dtype))
        assert isinstance(t, torch.Tensor) and t.dtype == dtype and t.shape == (2,)
    scalar = m(torch.tensor(0.25, dtype=torch.float64))
    assert scalar.shape == () and scalar.item() == pytest.approx(m(0.25))
    assert m(torch.tensor([1, 2])).is_floating_point()
    # the three kinds agree
    values = np.array([0.0, 0.3, 0.9, 2.0])
    np.testing.assert_allclose(m(torch.from_numpy(values)).numpy(), m(values), rtol=1e-15)
    assert [m(float(v)) for v in values] == pytest.approx(list(m(values)), rel=1e-15)


@pytest.mark.parametrize("form", ["linear", "smooth", "callable"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_information_gives_one(form, bad):
    m = Multiplier(2.0, 3.0, form=(lambda i: 1 + i * i) if form == "callable" else form)
    assert m(bad) == 1.0
    np.testing.assert_array_equal(m(np.array([bad, 0.5])), [1.0, m(0.5)])
    t = m(torch.tensor([bad, 0.5], dtype=torch.float64))
    assert t[0].item() == 1.0 and t[1].item() == m(0.5)
    assert m.viscosity(bad) == 1.0


@pytest.mark.parametrize("form", ["linear", "smooth"])
def test_negative_information_never_shrinks_the_step(form):
    m = Multiplier(2.0, 3.0, form=form)
    assert m(-0.4) == 1.0
    assert np.all(m(np.array([-1e-12, -5.0])) == 1.0)
    assert torch.all(m(torch.tensor([-1.0, -1e-9])) == 1.0)


def test_viscosity_is_the_reciprocal():
    m = Multiplier(1.0, 2.0)
    np.testing.assert_allclose(m.viscosity(GRID), 1.0 / m(GRID), rtol=1e-15)
    assert m.viscosity(10.0) == 0.5 and m.viscosity(0.0) == 1.0
    assert torch.allclose(m.viscosity(torch.tensor([0.5])), torch.tensor([1 / 1.5]))


def test_user_callable_is_applied():
    m = Multiplier(1.0, 4.0, form=lambda i: 1.0 + i**2)
    assert m(0.5) == 1.25
    np.testing.assert_allclose(m(np.array([0.0, 1.0])), [1.0, 2.0])
    assert torch.allclose(m(torch.tensor([1.5])), torch.tensor([3.25]))
    with pytest.raises(NotImplementedError):
        m.derivative(0.1)


@pytest.mark.parametrize("form", ["linear", "smooth"])
def test_derivative_matches_finite_differences(form):
    m = Multiplier(1.3, 2.2, form=form)
    kink = (2.2 - 1) / 1.3
    points = np.array([0.05, 0.3, 0.7, kink - 0.01, kink + 0.01, 2.0, 4.0])
    h = 1e-6
    fd = (m(points + h) - m(points - h)) / (2 * h)
    np.testing.assert_allclose(m.derivative(points), fd, rtol=1e-6, atol=1e-9)
    t = m.derivative(torch.from_numpy(points))
    np.testing.assert_allclose(t.numpy(), fd, rtol=1e-6, atol=1e-9)
    assert m.derivative(-1.0) == 0.0 and m.derivative(math.nan) == 0.0


def test_rho_max_one_switches_modulation_off():
    for form in ("linear", "smooth"):
        m = Multiplier(5.0, 1.0, form=form)
        assert np.all(m(GRID) == 1.0)
        assert np.all(m.derivative(GRID) == 0.0)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"alpha": -0.1}, "alpha"),
        ({"alpha": math.nan}, "alpha"),
        ({"alpha": math.inf}, "alpha"),
        ({"alpha": "1"}, "alpha"),
        ({"alpha": True}, "alpha"),
        ({"alpha": 1.0, "rho_max": 0.99}, "rho_max"),
        ({"alpha": 1.0, "rho_max": math.inf}, "rho_max"),
        ({"alpha": 1.0, "rho_max": math.nan}, "rho_max"),
        ({"alpha": 1.0, "form": "cubic"}, "form"),
    ],
)
def test_bad_parameters_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Multiplier(**kwargs)


def test_bad_information_type_is_named():
    with pytest.raises(TypeError, match="information"):
        Multiplier(1.0)("0.5")
    with pytest.raises(TypeError, match="information"):
        Multiplier(1.0)([0.5])


@pytest.mark.parametrize("kind", ["float", "numpy", "torch"])
def test_a_callable_form_must_keep_within_one_and_the_cap(kind):
    wrap = {"float": float, "numpy": lambda x: np.array([0.1, x]), "torch": lambda x: torch.tensor([0.1, x])}[kind]
    with pytest.raises(ValueError, match="rho = 6.*rho_max = 2"):
        Multiplier(1.0, 2.0, form=lambda i: 1 + 5 * i)(wrap(1.0))
    with pytest.raises(ValueError, match="rho = 0.5"):
        Multiplier(1.0, 2.0, form=lambda i: 0.5 + 0 * i)(wrap(0.3))
    rho = Multiplier(1.0, 2.0, form=lambda i: 1 + 0.5 * i)(wrap(0.2))  # within its promise: applied as given
    assert np.allclose(np.asarray(rho, dtype=float), 1 + 0.5 * np.asarray(wrap(0.2), dtype=float))
