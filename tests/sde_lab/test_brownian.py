"""The solvers' Brownian increments: reproducible from a torch.Generator, and of the right law."""

import numpy as np
import pytest
import torch
from scipy import stats

from sde_lab.brownian import Increments


def test_the_same_generator_state_gives_the_same_increments_and_another_seed_others():
    first = Increments(torch.Generator().manual_seed(5)).brownian(0.01, 3, 100, 4)
    again = Increments(torch.Generator().manual_seed(5)).brownian(0.01, 3, 100, 4)
    other = Increments(torch.Generator().manual_seed(6)).brownian(0.01, 3, 100, 4)
    assert first.shape == (3, 100, 4) and first.dtype == torch.float64
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_without_a_generator_torch_manual_seed_governs_them():
    torch.manual_seed(3)
    first = Increments().normals(50)
    torch.manual_seed(3)
    assert torch.equal(first, Increments().normals(50))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_increments_are_normal_with_variance_dt(dtype):
    dt = 0.04
    draws = Increments(torch.Generator().manual_seed(0), dtype=dtype).brownian(dt, 20000, 2)
    assert draws.dtype == dtype
    sample = draws.double().numpy().ravel() / dt**0.5
    assert stats.kstest(sample, "norm").pvalue > 1e-3
    assert abs(sample.mean()) < 4 / np.sqrt(sample.size)
    assert abs(sample.var() - 1) < 4 * np.sqrt(2 / sample.size)
    # successive draws are independent of each other (lag-one correlation at noise level)
    assert abs(np.corrcoef(sample[:-1], sample[1:])[0, 1]) < 4 / np.sqrt(sample.size)
