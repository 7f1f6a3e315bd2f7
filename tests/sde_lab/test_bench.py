"""`python -m sde_lab bench` runs and reports its ratios (no timing is asserted: machines are noisy)."""

import math

from sde_lab.studies import bench


def test_bench_reports_every_peer_it_can_find():
    result = bench.run(paths=16, sdeint_paths=2, repeats=1)
    seconds, ratios = result["seconds"], result["ratios"]
    assert all(seconds[k] > 0 for k in ("engine", "bare_normals", "sdeint_itoEuler_loop"))
    assert math.isclose(ratios["engine_vs_sdeint"], seconds["sdeint_itoEuler_loop"] / seconds["engine"])
    text = bench.report(result)
    assert "engine vs sdeint" in text and "timed on 2 paths" in text
    # the loop on the engine's generator is a row of its own, so the generator's share of the ratio is visible
    assert math.isclose(ratios["engine_vs_numpy_loop_sfc64"], seconds["numpy_loop_sfc64"] / seconds["engine"])
    assert "SFC64" in text


def test_the_engine_integrates_the_ou_process():
    """The benchmarked loop is a real solver: its mean decays like e^{−at} (exact for OU's mean under EM: (1 − a dt)^n)."""
    import torch

    from sde_lab.schemes import EULER_MARUYAMA
    from sde_lab.sme import SDEModel

    a, b = bench._ou()
    model = SDEModel("OU", 1, lambda x: -x @ a, lambda x: b, bench.DIM)
    y = torch.ones(4000, bench.DIM, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):
        dw = torch.randn(4000, bench.DIM, generator=gen, dtype=torch.float64) * bench.DT**0.5
        y = EULER_MARUYAMA.step(model, y, bench.DT, dw)
    expected = (1 - torch.diagonal(a) * bench.DT) ** 100
    assert torch.allclose(y.mean(0), expected, atol=4 * 0.5 * (bench.DT * 100) ** 0.5 / 4000**0.5)
