"""sde_lab on a GPU through torch (skipped without CUDA)."""

import pytest
import torch

from pgpo import Multiplier
from sde_lab import DiscreteProcess, catalog, sme, weak_error
from sde_lab.coupling import coupled_paths

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_paths_live_on_the_device():
    problem = catalog.self_distillation()
    process = DiscreteProcess(problem, 0.125, Multiplier(2.0, 2.0, form="smooth"))
    model = sme(problem, 0.125, process.multiplier)
    gen = torch.Generator(device="cuda").manual_seed(0)
    x, y, y2 = coupled_paths(process, model, steps=8, paths=256, gen=gen, device="cuda")
    assert x.is_cuda and y.is_cuda and y2.is_cuda and torch.isfinite(x).all()


@pytest.mark.parametrize("name", ["logistic_regression", "self_distillation"])
def test_order_one_on_the_gpu(name):
    r = weak_error(catalog.get(name), [2.0**-j for j in range(2, 7)], 1.0, multiplier=Multiplier(2.0, 2.0, form="smooth"),
                   test_fn="norm2", paths=4000, device="cuda")
    assert abs(r.slope - 1.0) < 0.25 and r.passed(), (r.slope, r.slope_ci)
