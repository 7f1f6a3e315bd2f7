"""The solvers' Brownian increments: reproducible from a torch.Generator, and of the right law."""

import os

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


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_drawing_ahead_gives_the_same_numbers_as_drawing_each_request_in_turn(dtype):
    """The stream is the generator's own sequence cut to the sizes asked for, whatever they are: equal requests,
    requests of every size crossing block boundaries, empty ones, normals and increments mixed."""
    sizes = np.random.default_rng(0).integers(0, 70_000, size=40)
    ahead = Increments(torch.Generator().manual_seed(9), dtype=dtype)
    in_line = Increments(torch.Generator().manual_seed(9), dtype=dtype, ahead=False)
    requests = [(3, 5000)] * 30 + [(int(n),) for n in sizes] + [(0, 4), (2, 100, 3)]
    for i, shape in enumerate(requests):
        if i % 3:
            first, second = ahead.brownian(0.25, *shape), in_line.brownian(0.25, *shape)
        else:
            first, second = ahead.normals(*shape), in_line.normals(*shape)
        assert first.shape == second.shape == shape and first.dtype == second.dtype == dtype
        assert torch.equal(first, second), (i, shape)


def test_an_increment_is_the_callers_to_write():
    """A request is a view of a block no later request shares: writing it changes no other increment."""
    draws = Increments(torch.Generator().manual_seed(1))
    first = draws.brownian(0.1, 1000, 3)
    second = draws.brownian(0.1, 1000, 3)
    copy = second.clone()
    first.add_(1e6)
    assert torch.equal(second, copy)


def test_the_solver_leaves_the_drawing_thread_a_core_and_gives_it_back(monkeypatch):
    from sde_lab import brownian

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(brownian, "_cores", lambda: 2)
        with brownian.core_for_draws(Increments(torch.Generator().manual_seed(0))):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with brownian.core_for_draws(Increments(torch.Generator().manual_seed(0), ahead=False)):
            assert torch.get_num_threads() == 2  # no thread draws ahead: torch keeps both
        monkeypatch.setattr(brownian, "_cores", lambda: 8)
        with brownian.core_for_draws(Increments(torch.Generator().manual_seed(0))):
            assert torch.get_num_threads() == 2  # cores to spare: nothing to give up
    finally:
        torch.set_num_threads(before)


def _stream_sum(seed: int) -> float:
    from sde_lab.brownian import NormalStream

    stream = NormalStream(np.random.Generator(np.random.SFC64(seed)))
    return float(sum(stream.take(30_000).sum() for _ in range(10)))


def _draw_in_child(queue):
    queue.put(_stream_sum(4))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")
def test_a_forked_child_draws_after_its_parent_has():
    """The drawing thread does not survive a fork; a child that draws starts its own instead of waiting forever.
    (numpy only in the child: torch itself may hang in a child forked after its threads ran.)"""
    import multiprocessing

    expected = _stream_sum(4)  # the parent's drawing thread is running now
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_draw_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    if child.exitcode is None:
        child.kill()
    assert child.exitcode == 0
    assert queue.get(timeout=5) == expected
