"""The coupled simulation of a discrete process against its SDE (common random numbers).

A reference for E g(X_T) at a fixed η solves the SDE at dt = η/2^r with a scheme (`sde_lab.schemes`,
Euler–Maruyama by default) and extrapolates in dt (Richardson, weighted by the scheme's weak order,
removes the leading O(dt^p) bias). It must never use dt = η: SGD with Gaussian noise *is* Euler–Maruyama
of its SME at dt = η, so that reference measures zero error by construction.

Coupling: the fine increments drive the reference; their pairwise sums drive the 2dt solve; their sum
over one coarse step, −ΣΔW/√h (h = η, or η² for an adaptive process), is the discrete process's standard
normal z_k. The difference
g(x_K) − g(Y_T) then has a far smaller variance than either term.
"""

from __future__ import annotations

import math

import torch

from sde_lab.brownian import Increments, core_for_draws
from sde_lab.discrete import DiscreteProcess
from sde_lab.schemes import EULER_MARUYAMA
from sde_lab.sme import SDEModel


def coupled_paths(process: DiscreteProcess, model: SDEModel, steps: int, paths: int, refine: int = 4,
                  richardson: bool = True, gen: torch.Generator | None = None, device="cpu",
                  dtype=torch.float64, coupled: bool = True, every: int | None = None,
                  observe=None, scheme=EULER_MARUYAMA) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Run `paths` paths of the discrete process for `steps` steps and of the SDE to T = steps·h, h the process's
    `time_step` (η for SGD and PGPO, η² for the adaptive processes of `sde_lab.adaptive`).

    Returns (x_K, Y_T at dt = h/2^refine, Y_T at 2dt or None without Richardson), each (M, D) (D = d, or the
    adaptive processes' augmented state), the SDE
    solved by `scheme` (its `step(model, y, dt, dw)`; extrapolate with `schemes.richardson` at its
    `weak_order`). The discrete process is driven by the reference's own increments when it can be
    (Gaussian noise, or real mini-batches of a problem that enumerates them: a quantile coupling) and
    `coupled` is True; otherwise the two are independent. With `every` and `observe`,
    observe(x, y, y_coarse) is called after every `every`-th step (the checkpoints).
    """
    h = process.time_step  # the SDE time of one discrete step: η for SGD and PGPO, η² for the adaptive processes
    sub = 2**refine
    if richardson and sub < 2:
        raise ValueError("Richardson extrapolation needs refine >= 1")
    dt = h / sub
    x = process.initial_state().to(device=device, dtype=dtype).expand(paths, -1).clone()
    y = x.clone()
    y_coarse = x.clone() if richardson else None
    draws = Increments(gen, device, dtype)  # numpy's generator on the CPU, seeded from gen
    coupled = coupled and process.couples
    noise_dim = process.problem.noise_dim()
    with core_for_draws(draws):
        for k in range(1, steps + 1):
            dw = draws.brownian(dt, sub, paths, model.noise_dim)  # (2^r, M, m)
            for j in range(sub):
                y = scheme.step(model, y, dt, dw[j])
            if richardson:
                pairs = dw[0::2] + dw[1::2]
                for j in range(sub // 2):
                    y_coarse = scheme.step(model, y_coarse, 2 * dt, pairs[j])
            if coupled:
                x = process.step(x, z=-dw.sum(dim=0) / math.sqrt(h))
            elif process.noise == "gaussian":  # independent normals of its own
                x = process.step(x, z=draws.normals(paths, noise_dim))
            else:
                x = process.step(x, gen=gen)
            if observe is not None and k % every == 0:
                observe(x, y, y_coarse)
    return x, y, y_coarse
