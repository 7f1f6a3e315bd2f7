"""Brownian increments for the solvers, reproducible from a torch.Generator.

On the CPU they are drawn by numpy's generator on its SFC64 bit generator (seeded once from the torch.Generator):
the draws are most of an Euler–Maruyama step's cost, numpy draws float64 normals about twice as fast as torch's
CPU generator, and SFC64 (Doty-Humphrey's Small Fast Chaotic generator with a 64-bit counter: period at least
2^64, about 2^255 expected, as numpy documents it) feeds them about a third faster than numpy's default PCG64
(`python -m sde_lab bench` prints each). On an accelerator they are drawn by torch on the device, where they are
made. Either way the same generator state gives the same increments.

On the CPU the normals come from `NormalStream`, which draws the next block on a worker thread while the
solver computes with the current one (numpy fills arrays without the GIL), so a step costs about the larger of
its draws and its arithmetic rather than their sum. The stream is the generator's own sequence, cut to the
sizes asked for: numpy's normal samplers keep no state between calls beyond the bit generator's, so n draws
then m equal n + m draws, and the increments are the same numbers, bit for bit, as drawing each request in turn.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import torch

_NUMPY = {torch.float64: np.float64, torch.float32: np.float32}  # the dtypes numpy's normal sampler draws
# Normals per block drawn ahead: the first small (a short run wastes little of the block it never uses), each next
# one 4× larger up to 2^20 (8 MiB in float64), where a hand-off between threads is noise beside the draws.
FIRST_BLOCK, BLOCK = 1 << 14, 1 << 20

_worker: ThreadPoolExecutor | None = None
_worker_lock = threading.Lock()


def _drawer() -> ThreadPoolExecutor:
    """The one worker thread every stream draws ahead on (one at a time per stream, so each stream's order holds)."""
    global _worker
    with _worker_lock:
        if _worker is None:
            _worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sde_lab-normals")
        return _worker


def _forget_worker():
    """A forked child has no worker thread, only its parent's record of one: start afresh when it asks."""
    global _worker, _worker_lock
    _worker, _worker_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_worker)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def core_for_draws(increments: "Increments"):
    """While `increments` draws ahead, torch's own threads leave it a core: torch's idle threads spin, and on a
    machine they fill they would take the drawing thread's core (2 cores: the engine at 1.7× its draws, not 1.0×).
    The arithmetic of a solver step is the cheap part, so one thread fewer for it costs little."""
    threads = torch.get_num_threads()
    share = increments.stream is not None and increments.stream.ahead and 1 < threads and _cores() <= threads
    if share:
        torch.set_num_threads(threads - 1)
    try:
        yield
    finally:
        if share:
            torch.set_num_threads(threads)


class NormalStream:
    """The standard normals of one numpy Generator, in order, served in requests of any size.

    rng: the generator, used by this stream alone from now on; dtype: numpy float64 or float32; ahead: draw the
    next block on the worker thread while the caller computes (False: draw each request in the caller's thread).
    A request of n normals is a view of a block or, where it crosses blocks, their concatenation; blocks are
    fresh arrays, so a view is the caller's to write.
    """

    def __init__(self, rng: np.random.Generator, dtype=np.float64, ahead: bool = True):
        self.rng, self.dtype, self.ahead = rng, dtype, ahead
        self._block = np.empty(0, dtype=dtype)
        self._used = 0
        self._next: Future | None = None
        self._target = FIRST_BLOCK

    def _draw(self, n: int) -> np.ndarray:
        return self.rng.standard_normal(n, dtype=self.dtype)

    def _next_block(self, n: int) -> np.ndarray:
        """The block after the current one, and the one after it started on the worker, sized for requests of n."""
        size = n * max(1, self._target // n)  # a whole number of requests: equal requests never straddle two blocks
        self._target = min(4 * self._target, BLOCK)
        block = self._next.result() if self._next is not None else self._draw(size)
        self._next = _drawer().submit(self._draw, size) if self.ahead else None
        return block

    def take(self, n: int) -> np.ndarray:
        """The next n normals of the stream, shape (n,)."""
        if not self.ahead:
            return self._draw(n)
        left = self._block.size - self._used
        if n <= left:
            self._used += n
            return self._block[self._used - n:self._used]
        parts, need = [self._block[self._used:]], n - left
        while True:
            self._block, self._used = self._next_block(n), 0
            if need <= self._block.size:
                self._used = need
                parts.append(self._block[:need])
                parts = [part for part in parts if part.size]
                return parts[0] if len(parts) == 1 else np.concatenate(parts)  # a view where no block is crossed
            parts.append(self._block)
            need -= self._block.size


class Increments:
    """Standard normals, and ΔW ~ N(0, dt·I), as torch tensors of `dtype` on `device`.

    gen: the torch.Generator they are reproducible from (None: torch's global generator, so torch.manual_seed
    applies). On the CPU one number is drawn from it to seed numpy's generator, once; ahead: draw the next block of
    normals on a worker thread while the caller computes (the same numbers either way).
    """

    def __init__(self, gen: torch.Generator | None = None, device="cpu", dtype=torch.float64, ahead: bool = True):
        self.device, self.dtype, self.gen = torch.device(device), dtype, gen
        self.stream = None
        if self.device.type == "cpu" and dtype in _NUMPY:
            rng = np.random.Generator(np.random.SFC64(int(torch.randint(0, 2**62, (1,), generator=gen))))
            self.stream = NormalStream(rng, _NUMPY[dtype], ahead)

    def normals(self, *shape: int) -> torch.Tensor:
        """Standard normals of `shape`."""
        if self.stream is None:
            return torch.randn(*shape, generator=self.gen, device=self.device, dtype=self.dtype)
        return torch.from_numpy(self.stream.take(int(np.prod(shape))).reshape(shape))

    def brownian(self, dt: float, *shape: int) -> torch.Tensor:
        """Brownian increments ΔW over a step dt: normals of `shape` times √dt."""
        if self.stream is None:
            return self.normals(*shape) * dt**0.5
        draws = self.stream.take(int(np.prod(shape))).reshape(shape)
        draws *= dt**0.5  # in place on the caller's own block: no second array
        return torch.from_numpy(draws)
