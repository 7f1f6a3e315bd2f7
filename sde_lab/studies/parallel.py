"""Independent studies (verify's claims, the figures' data) on several CPU cores at once.

A Monte Carlo ladder is a chain of small tensor operations that keeps about one core busy (torch splits only
larger tensors over threads), so the studies gain from cores by running several ladders side by side. With
`jobs` > 1 each item runs in a worker process of its own, started by spawning (torch's OpenMP threads do not
survive a fork) and kept to one torch thread, so `jobs` workers keep `jobs` cores busy without oversubscribing
them. Every item seeds its own generators, so its numbers do not depend on where or beside what it ran, up to the
last digits of a reduction that torch splits over its threads (a worker has one)."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Callable, Sequence

from tqdm.auto import tqdm


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity mask
        return os.cpu_count() or 1


def resolve_jobs(jobs: int | None) -> int:
    """`jobs` as a number of workers: None means every available core; anything else must be an int ≥ 1."""
    if jobs is None:
        return available_cores()
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an int >= 1 (or None for every core), got {jobs!r}")
    return jobs


_IN_WORKER = False


def in_worker() -> bool:
    """True in a worker of `run_all`: an item's own progress bars stay off there (several workers' bars would
    write over each other; the caller's bar counts the items)."""
    return _IN_WORKER


def _start_worker() -> None:
    global _IN_WORKER
    _IN_WORKER = True
    import torch

    torch.set_num_threads(1)


def run_all(fn: Callable, items: Sequence, jobs: int | None = 1, desc: str = "", progress: bool = True,
            first: Sequence[int] = ()) -> list:
    """[fn(item) for item in items], in the order of `items`.

    fn must be a module-level function and the items picklable when `jobs` > 1 (they travel to the workers); a
    script that calls this with `jobs` > 1 needs the `if __name__ == "__main__":` guard, since a spawned worker
    imports the script's main module.
    `first`: the indices of the items to start before the others (the longest, so that no long one starts last
    and leaves the other cores idle at the end). A worker's exception is raised here, with the worker's traceback.
    """
    jobs = min(resolve_jobs(jobs), len(items))
    bar = tqdm(total=len(items), desc=desc, disable=not progress)
    if jobs <= 1:
        results = []
        try:
            for item in items:
                results.append(fn(item))
                bar.update()
        finally:
            bar.close()  # before an error is reported, not after it (the bar's last line would follow it)
        return results
    ahead = sorted(set(first))
    order = ahead + [i for i in range(len(items)) if i not in first]
    results = [None] * len(items)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker) as pool:
        pending = {pool.submit(fn, items[i]): i for i in order}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    results[pending.pop(future)] = future.result()
                    bar.update()
        except BaseException:
            for future in pending:  # an error (or ^C) stops the run: nothing more starts
                future.cancel()
            raise
        finally:
            bar.close()
    return results
