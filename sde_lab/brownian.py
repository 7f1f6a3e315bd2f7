"""Brownian increments for the solvers, reproducible from a torch.Generator.

On the CPU they are drawn by numpy's generator on its SFC64 bit generator (seeded once from the torch.Generator):
the draws are most of an Euler–Maruyama step's cost, numpy draws float64 normals about twice as fast as torch's
CPU generator, and SFC64 (Doty-Humphrey's Small Fast Chaotic generator with a 64-bit counter: period at least
2^64, about 2^255 expected, as numpy documents it) feeds them about a third faster than numpy's default PCG64
(`python -m sde_lab bench` prints each). On an accelerator they are drawn by torch on the device, where they are
made. Either way the same generator state gives the same increments.
"""

from __future__ import annotations

import numpy as np
import torch

_NUMPY = {torch.float64: np.float64, torch.float32: np.float32}  # the dtypes numpy's normal sampler draws


class Increments:
    """Standard normals, and ΔW ~ N(0, dt·I), as torch tensors of `dtype` on `device`.

    gen: the torch.Generator they are reproducible from (None: torch's global generator, so torch.manual_seed
    applies). On the CPU one number is drawn from it to seed numpy's generator, once.
    """

    def __init__(self, gen: torch.Generator | None = None, device="cpu", dtype=torch.float64):
        self.device, self.dtype, self.gen = torch.device(device), dtype, gen
        self.rng = None
        if self.device.type == "cpu" and dtype in _NUMPY:
            self.rng = np.random.Generator(np.random.SFC64(int(torch.randint(0, 2**62, (1,), generator=gen))))

    def normals(self, *shape: int) -> torch.Tensor:
        """Standard normals of `shape`."""
        if self.rng is None:
            return torch.randn(*shape, generator=self.gen, device=self.device, dtype=self.dtype)
        return torch.from_numpy(self.rng.standard_normal(shape, dtype=_NUMPY[self.dtype]))

    def brownian(self, dt: float, *shape: int) -> torch.Tensor:
        """Brownian increments ΔW over a step dt: normals of `shape` times √dt."""
        if self.rng is None:
            return self.normals(*shape) * dt**0.5
        draws = self.rng.standard_normal(shape, dtype=_NUMPY[self.dtype])
        draws *= dt**0.5  # in place: no second array
        return torch.from_numpy(draws)
