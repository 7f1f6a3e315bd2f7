"""`python -m sde_lab bench`: the Euler–Maruyama engine against its peers, measured in one run.

The same 10-d Ornstein–Uhlenbeck process dX = −AX dt + B dW (A = diag(0.5…2), B = 0.5·I),
1000 steps of dt = 0.01 over ≥ 1000 paths, float64 on the CPU, by:
- this engine (`sde_lab.schemes.EULER_MARUYAMA.step`, all paths at once, increments drawn per step by
  `sde_lab.brownian.Increments`: numpy's generator on SFC64 on the CPU, drawn a block ahead on a second thread,
  torch's on an accelerator), and the same with each step's draws made in line (one core's worth);
- the bare cost of drawing the same increments in the same chunks, and nothing else: the engine's floor;
- torch's own float64 normals (torch.randn) in the same chunks, for comparison;
- the simplest peer, a vectorised numpy Euler–Maruyama loop (y ← y − (y A) dt + z (√dt B)ᵀ with the normals
  of `np.random.default_rng`, PCG64), the same loop on the engine's SFC64, and numpy's bare normal draws (PCG64);
- sdeint's `itoEuler`, looped over paths, one call per path (sdeint has no batching);
- torchsde's `sdeint(method="euler")` with `BrownianInterval(dt=h)`, batched, when torchsde is
  installed (`pip install -e ".[peers]"`).
Throughput is path-steps per second; ratios are this engine's throughput over each peer's.

And PGPO against SGD in `weak_error` on a user problem with a constant noise factor (a d-dimensional
quadratic, Σ^{1/2} = 0.5·I, I = |∇L|²/(1 + |∇L|²), the smooth multiplier), 4 learning rates, 500 paths, at d = 1, 10 and 100: the
ratio of their wall times, which the PGPO diffusion ρ(X)·√η·Σ^{1/2} must not blow up with d.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from sde_lab.brownian import Increments, core_for_draws
from sde_lab.schemes import EULER_MARUYAMA
from sde_lab.sme import SDEModel

DIM, STEPS, DT = 10, 1000, 0.01


def _ou(dtype=torch.float64, device="cpu"):
    a = torch.diag(torch.linspace(0.5, 2.0, DIM, dtype=dtype, device=device))
    b = 0.5 * torch.eye(DIM, dtype=dtype, device=device)
    return a, b


def engine(paths: int, device="cpu", seed=0, ahead: bool = True) -> float:
    """Seconds for this engine's `paths` × STEPS Euler–Maruyama steps (ahead=False: each step's increments drawn
    in the solver's thread, as on one core)."""
    a, b = _ou(device=device)
    model = SDEModel("OU", 1, lambda x: -x @ a, lambda x: b, DIM)
    draws = Increments(torch.Generator(device=device).manual_seed(seed), device, ahead=ahead)
    y = torch.ones(paths, DIM, dtype=torch.float64, device=device)
    with core_for_draws(draws):  # as `coupling.coupled_paths` runs its loop
        start = time.perf_counter()
        for _ in range(STEPS):
            y = EULER_MARUYAMA.step(model, y, DT, draws.brownian(DT, paths, DIM))
        _sync(device)
        return time.perf_counter() - start


def bare_normals(paths: int, device="cpu", seed=0) -> float:
    """Seconds to draw the engine's increments, in the same chunks, and nothing else."""
    draws = Increments(torch.Generator(device=device).manual_seed(seed), device)
    start = time.perf_counter()
    for _ in range(STEPS):
        draws.brownian(DT, paths, DIM)
    _sync(device)
    return time.perf_counter() - start


def bare_torch_normals(paths: int, device="cpu", seed=0) -> float:
    """Seconds for torch.randn to draw the same normals in the same chunks (torch's own generator)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    start = time.perf_counter()
    for _ in range(STEPS):
        torch.randn(paths, DIM, generator=gen, dtype=torch.float64, device=device)
    _sync(device)
    return time.perf_counter() - start


def numpy_loop(paths: int, seed=0, bits=np.random.PCG64) -> float:
    """Seconds for the vectorised numpy Euler–Maruyama loop over the same process, its normals from numpy's
    Generator on the bit generator `bits` (PCG64: `np.random.default_rng`, as the loop is usually written)."""
    a, b = (m.numpy() for m in _ou())
    noise = DT**0.5 * b.T
    rng = np.random.Generator(bits(seed))
    y = np.ones((paths, DIM))
    start = time.perf_counter()
    for _ in range(STEPS):
        y = y - DT * (y @ a) + rng.standard_normal((paths, DIM)) @ noise
    return time.perf_counter() - start


def bare_numpy_normals(paths: int, seed=0) -> float:
    """Seconds for numpy to draw the loop's normals, and nothing else."""
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for _ in range(STEPS):
        rng.standard_normal((paths, DIM))
    return time.perf_counter() - start


def _quadratic(dim: int):
    """A d-dimensional user problem with a constant noise factor: L = ½ Σ λ_i x_i², Σ^{1/2} = 0.5·I."""
    from sde_lab.catalog import check_sizes, gradient_signal
    from sde_lab.problem import FromGradient, Problem

    check_sizes("bench", "dim", dim=dim)  # its noise factor is a d × d matrix
    lam = torch.linspace(0.5, 2.0, dim, dtype=torch.float64)
    factor = 0.5 * torch.eye(dim, dtype=torch.float64)
    grad = lambda x: x * lam  # noqa: E731
    return Problem(dim=dim, x0=torch.ones(dim, dtype=torch.float64), grad=grad,
                   noise_sqrt=factor, info=FromGradient(grad, gradient_signal),
                   name=f"quadratic-{dim}d", lambda_max=2.0)


def pgpo_against_sgd(dim: int, paths: int = 500, repeats: int = 1) -> dict:
    """Seconds of `weak_error` for SGD and for PGPO (smooth ρ, scaled diffusion) on `_quadratic(dim)`, 4 rungs."""
    from sde_lab.sme import SMOOTH
    from sde_lab.weak_error import weak_error

    problem = _quadratic(dim)
    etas, horizon = [2.0**-j for j in range(3, 7)], 0.5

    def timed(multiplier):
        start = time.perf_counter()
        weak_error(problem, etas, horizon, multiplier, paths=paths, reference="em", test_fn="norm2")
        return time.perf_counter() - start

    sgd = pgpo = float("inf")
    for _ in range(repeats):  # interleaved, as in `run`
        sgd, pgpo = min(sgd, timed(None)), min(pgpo, timed(SMOOTH))
    return {"dim": dim, "paths": paths, "rungs": len(etas), "sgd_s": sgd, "pgpo_s": pgpo, "pgpo_over_sgd": pgpo / sgd}


def sdeint_loop(paths: int, seed=0) -> float:
    """Seconds for sdeint.itoEuler over `paths` paths, one call each."""
    import sdeint

    a, b = (m.numpy() for m in _ou())
    tspan = np.linspace(0.0, STEPS * DT, STEPS + 1)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for _ in range(paths):
        sdeint.itoEuler(lambda y, t: -a @ y, lambda y, t: b, np.ones(DIM), tspan, generator=rng)
    return time.perf_counter() - start


def torchsde_batched(paths: int, seed=0) -> float | None:
    """Seconds for torchsde's batched Euler with a BrownianInterval at dt, or None without torchsde."""
    try:
        import torchsde
    except ImportError:
        return None
    a, b = _ou()

    class OU(torch.nn.Module):
        noise_type, sde_type = "additive", "ito"

        def f(self, t, y):
            return -y @ a

        def g(self, t, y):
            return b.expand(y.shape[0], DIM, DIM)

    y0 = torch.ones(paths, DIM, dtype=torch.float64)
    ts = torch.tensor([0.0, STEPS * DT], dtype=torch.float64)
    torch.manual_seed(seed)
    start = time.perf_counter()
    bm = torchsde.BrownianInterval(t0=0.0, t1=STEPS * DT, size=(paths, DIM), dtype=torch.float64, dt=DT)
    torchsde.sdeint(OU(), y0, ts, bm=bm, method="euler", dt=DT)
    return time.perf_counter() - start


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def run(paths: int = 1000, sdeint_paths: int | None = None, device="cpu", repeats: int = 5,
        pgpo_dims: tuple = (1, 10, 100)) -> dict:
    """Measure everything once (the best of `repeats` for the fast ones) and return the numbers."""
    sdeint_paths = paths if sdeint_paths is None else sdeint_paths
    engine(min(paths, 64), device)  # warm-up
    timed = {"engine": lambda: engine(paths, device), "engine_inline": lambda: engine(paths, device, ahead=False),
             "floor": lambda: bare_normals(paths, device),
             "torch_floor": lambda: bare_torch_normals(paths, device), "numpy_em": lambda: numpy_loop(paths),
             "numpy_em_sfc": lambda: numpy_loop(paths, bits=np.random.SFC64),
             "numpy_floor": lambda: bare_numpy_normals(paths)}
    best = dict.fromkeys(timed, float("inf"))
    for _ in range(repeats):  # interleaved, so a burst of load on a shared machine hits every row alike
        for key, run_once in timed.items():
            best[key] = min(best[key], run_once())
    ours, inline, floor, torch_floor = best["engine"], best["engine_inline"], best["floor"], best["torch_floor"]
    numpy_em, numpy_em_sfc, numpy_floor = best["numpy_em"], best["numpy_em_sfc"], best["numpy_floor"]
    peer_sdeint = sdeint_loop(sdeint_paths) * paths / sdeint_paths
    peer_torchsde = torchsde_batched(paths)
    rate = lambda seconds: paths * STEPS / seconds  # noqa: E731
    result = {
        "paths": paths, "steps": STEPS, "dim": DIM, "device": str(device), "sdeint_paths_timed": sdeint_paths,
        "seconds": {"engine": ours, "engine_draws_in_line": inline, "bare_normals": floor, "bare_torch_normals": torch_floor, "numpy_loop": numpy_em,
                    "numpy_loop_sfc64": numpy_em_sfc, "bare_numpy_normals": numpy_floor,
                    "sdeint_itoEuler_loop": peer_sdeint, "torchsde_euler_brownian_interval": peer_torchsde},
        "path_steps_per_s": {"engine": rate(ours), "engine_draws_in_line": rate(inline), "bare_normals": rate(floor), "bare_torch_normals": rate(torch_floor),
                             "numpy_loop": rate(numpy_em), "numpy_loop_sfc64": rate(numpy_em_sfc),
                             "bare_numpy_normals": rate(numpy_floor), "sdeint_itoEuler_loop": rate(peer_sdeint),
                             "torchsde_euler_brownian_interval": None if peer_torchsde is None else rate(peer_torchsde)},
        "ratios": {"engine_vs_sdeint": peer_sdeint / ours, "engine_time_over_bare_normals": ours / floor,
                   "engine_vs_bare_normals": floor / ours, "engine_vs_bare_numpy_normals": numpy_floor / ours,
                   "engine_vs_numpy_loop": numpy_em / ours, "engine_in_line_vs_numpy_loop": numpy_em / inline, "engine_vs_numpy_loop_sfc64": numpy_em_sfc / ours,
                   "engine_vs_torchsde": None if peer_torchsde is None else peer_torchsde / ours},
        "pgpo_against_sgd": [pgpo_against_sgd(d, repeats=repeats) for d in pgpo_dims],
    }
    return result


def report(result: dict) -> str:
    s, r = result["path_steps_per_s"], result["ratios"]
    lines = [f"10-d OU, {result['steps']} Euler steps × {result['paths']} paths, float64, {result['device']}",
             f"{'':<38}{'path-steps/s':>14}"]
    for key, label in [("engine", "sde_lab engine"), ("engine_draws_in_line", "the engine drawing in line"),
                       ("bare_normals", "its bare increment draws (floor)"),
                       ("bare_torch_normals", "bare torch.randn draws"),
                       ("numpy_loop", "numpy Euler–Maruyama loop"),
                       ("numpy_loop_sfc64", "the numpy loop on SFC64 (our generator)"),
                       ("bare_numpy_normals", "bare numpy normal draws"),
                       ("sdeint_itoEuler_loop", "sdeint itoEuler, looped over paths"),
                       ("torchsde_euler_brownian_interval", "torchsde euler + BrownianInterval")]:
        lines.append(f"{label:<38}{s[key]:>14.3g}" if s[key] is not None else f"{label:<38}{'not installed':>14}")
    lines.append(f"engine vs sdeint: {r['engine_vs_sdeint']:.0f}×   (target ≥ 100×)")
    if r["engine_vs_torchsde"] is not None:
        lines.append(f"engine vs torchsde: {r['engine_vs_torchsde']:.1f}×   (target ≥ 10×)")
    lines.append(f"engine vs its bare draws: {r['engine_vs_bare_normals']:.2f}×   (target ≥ 0.9); vs numpy's bare "
                 f"normal draws: {r['engine_vs_bare_numpy_normals']:.2f}×")
    lines.append(f"engine vs the numpy loop: {r['engine_vs_numpy_loop']:.2f}×   (target ≥ 1); against the same loop "
                 f"drawing from the engine's generator (SFC64): {r['engine_vs_numpy_loop_sfc64']:.2f}×; the engine "
                 f"drawing in line vs the numpy loop: {r['engine_in_line_vs_numpy_loop']:.2f}×")
    for row in result.get("pgpo_against_sgd", []):
        lines.append(f"weak_error, {row['dim']}-d quadratic, constant noise factor, {row['rungs']} rungs × {row['paths']} "
                     f"paths: SGD {row['sgd_s']:.2f} s, PGPO {row['pgpo_s']:.2f} s, PGPO / SGD {row['pgpo_over_sgd']:.2f}"
                     f"   (target ≤ 2)")
    if result["sdeint_paths_timed"] != result["paths"]:
        lines.append(f"(sdeint timed on {result['sdeint_paths_timed']} paths and scaled per path)")
    return "\n".join(lines)
