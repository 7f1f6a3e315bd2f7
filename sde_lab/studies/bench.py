"""`python -m sde_lab bench`: the Euler–Maruyama engine against its peers, measured in one run.

The same 10-d Ornstein–Uhlenbeck process dX = −AX dt + B dW (A = diag(0.5…2), B = 0.5·I),
1000 steps of dt = 0.01 over ≥ 1000 paths, float64 on the CPU, by:
- this engine (`sde_lab.schemes.EULER_MARUYAMA.step`, all paths at once, normals drawn per step);
- the bare cost of drawing the same normals in the same chunks (torch.randn): the floor;
- sdeint's `itoEuler`, looped over paths, one call per path (sdeint has no batching);
- torchsde's `sdeint(method="euler")` with `BrownianInterval(dt=h)`, batched, when torchsde is
  installed (`pip install -e ".[peers]"`).
Throughput is path-steps per second; ratios are this engine's throughput over each peer's.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from sde_lab.schemes import EULER_MARUYAMA
from sde_lab.sme import SDEModel

DIM, STEPS, DT = 10, 1000, 0.01


def _ou(dtype=torch.float64, device="cpu"):
    a = torch.diag(torch.linspace(0.5, 2.0, DIM, dtype=dtype, device=device))
    b = 0.5 * torch.eye(DIM, dtype=dtype, device=device)
    return a, b


def engine(paths: int, device="cpu", seed=0) -> float:
    """Seconds for this engine's `paths` × STEPS Euler–Maruyama steps."""
    a, b = _ou(device=device)
    model = SDEModel("OU", 1, lambda x: -x @ a, lambda x: b, DIM)
    gen = torch.Generator(device=device).manual_seed(seed)
    y = torch.ones(paths, DIM, dtype=torch.float64, device=device)
    start = time.perf_counter()
    for _ in range(STEPS):
        dw = torch.randn(paths, DIM, generator=gen, dtype=torch.float64, device=device) * DT**0.5
        y = EULER_MARUYAMA.step(model, y, DT, dw)
    _sync(device)
    return time.perf_counter() - start


def bare_normals(paths: int, device="cpu", seed=0) -> float:
    """Seconds to draw the engine's normals, in the same chunks, and nothing else."""
    gen = torch.Generator(device=device).manual_seed(seed)
    start = time.perf_counter()
    for _ in range(STEPS):
        torch.randn(paths, DIM, generator=gen, dtype=torch.float64, device=device)
    _sync(device)
    return time.perf_counter() - start


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


def run(paths: int = 1000, sdeint_paths: int | None = None, device="cpu", repeats: int = 3) -> dict:
    """Measure everything once (the best of `repeats` for the fast ones) and return the numbers."""
    sdeint_paths = paths if sdeint_paths is None else sdeint_paths
    engine(min(paths, 64), device)  # warm-up
    ours = min(engine(paths, device) for _ in range(repeats))
    floor = min(bare_normals(paths, device) for _ in range(repeats))
    peer_sdeint = sdeint_loop(sdeint_paths) * paths / sdeint_paths
    peer_torchsde = torchsde_batched(paths)
    rate = lambda seconds: paths * STEPS / seconds  # noqa: E731
    result = {
        "paths": paths, "steps": STEPS, "dim": DIM, "device": str(device), "sdeint_paths_timed": sdeint_paths,
        "seconds": {"engine": ours, "bare_normals": floor, "sdeint_itoEuler_loop": peer_sdeint,
                    "torchsde_euler_brownian_interval": peer_torchsde},
        "path_steps_per_s": {"engine": rate(ours), "bare_normals": rate(floor), "sdeint_itoEuler_loop": rate(peer_sdeint),
                             "torchsde_euler_brownian_interval": None if peer_torchsde is None else rate(peer_torchsde)},
        "ratios": {"engine_vs_sdeint": peer_sdeint / ours, "engine_time_over_bare_normals": ours / floor,
                   "engine_vs_torchsde": None if peer_torchsde is None else peer_torchsde / ours},
    }
    return result


def report(result: dict) -> str:
    s, r = result["path_steps_per_s"], result["ratios"]
    lines = [f"10-d OU, {result['steps']} Euler steps × {result['paths']} paths, float64, {result['device']}",
             f"{'':<38}{'path-steps/s':>14}"]
    for key, label in [("engine", "sde_lab engine"), ("bare_normals", "bare normal draws (floor)"),
                       ("sdeint_itoEuler_loop", "sdeint itoEuler, looped over paths"),
                       ("torchsde_euler_brownian_interval", "torchsde euler + BrownianInterval")]:
        lines.append(f"{label:<38}{s[key]:>14.3g}" if s[key] is not None else f"{label:<38}{'not installed':>14}")
    lines.append(f"engine vs sdeint: {r['engine_vs_sdeint']:.0f}×   (target ≥ 100×)")
    if r["engine_vs_torchsde"] is not None:
        lines.append(f"engine vs torchsde: {r['engine_vs_torchsde']:.1f}×   (target ≥ 10×)")
    lines.append(f"engine time / bare normals: {r['engine_time_over_bare_normals']:.2f}   (target ≤ 1.5)")
    if result["sdeint_paths_timed"] != result["paths"]:
        lines.append(f"(sdeint timed on {result['sdeint_paths_timed']} paths and scaled per path)")
    return "\n".join(lines)
