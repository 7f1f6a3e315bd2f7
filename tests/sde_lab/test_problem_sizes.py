"""A built-in problem's sizes are checked before anything is allocated: a clear error naming the size."""

import pytest

from sde_lab import catalog


@pytest.mark.parametrize("make", [catalog.linear_regression, catalog.logistic_regression, catalog.self_distillation])
@pytest.mark.parametrize("dim", [1e6, 1.5, 0, -3, True, "3"])
def test_a_dim_that_is_not_a_positive_int_is_refused_by_name(make, dim):
    with pytest.raises(ValueError, match=rf"{make.__name__}: dim must be a positive int, got {dim!r}"):
        make(dim=dim, x0=None)


@pytest.mark.parametrize("make", [catalog.linear_regression, catalog.logistic_regression, catalog.self_distillation])
def test_a_dim_whose_curvature_matrix_cannot_fit_is_refused_before_allocating(make):
    with pytest.raises(ValueError, match=r"dim = 1000000000 needs a 1000000000 × 1000000000 float64 matrix"):
        make(dim=10**9, x0=None)


@pytest.mark.parametrize(("make", "size"), [(catalog.linear_regression, "n"), (catalog.self_distillation, "prompts"),
                                            (catalog.self_distillation, "answers")])
def test_the_other_sizes_are_checked_too(make, size):
    with pytest.raises(ValueError, match=rf"{size} must be a positive int, got 2.5"):
        make(**{size: 2.5})


def test_sizes_within_bounds_still_build():
    assert catalog.linear_regression(dim=3).dim == 3 and catalog.self_distillation(dim=4, x0=None).dim == 4
