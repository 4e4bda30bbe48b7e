"""Fan a per-file function out over all cores, with a progress bar.

Per-file work in the data stages (decode, resample, meter, gain, write) is
independent, so processes scale it across cores; on a cluster the same per-file
functions are what a Dask or Ray task would call (see README: Growing past one machine).
"""

from __future__ import annotations

import multiprocessing
import os
import typing as tp
from concurrent.futures import ProcessPoolExecutor

from tqdm import tqdm

T = tp.TypeVar("T")
R = tp.TypeVar("R")


def resolve_workers(workers: int) -> int:
    """``0`` means every core this process may use."""
    if workers > 0:
        return workers
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def parallel_map(fn: tp.Callable[[T], R], items: tp.Sequence[T], workers: int, desc: str) -> list[R]:
    """``[fn(x) for x in items]`` in ``workers`` processes, order kept.

    ``fn`` must be a module-level function. Exceptions propagate (the pool is
    shut down first, so Ctrl-C or a failure leaves no worker running).
    """
    n = min(resolve_workers(workers), max(1, len(items)))
    bar = tqdm(total=len(items), desc=desc, unit="file", disable=None, leave=False)
    try:
        if n == 1:
            out = []
            for x in items:
                out.append(fn(x))
                bar.update()
            return out
        # fork: workers inherit imported modules instead of importing them again.
        ctx = multiprocessing.get_context("fork")
        chunksize = max(1, min(16, len(items) // (n * 8)))
        with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as pool:
            out = []
            for r in pool.map(fn, items, chunksize=chunksize):
                out.append(r)
                bar.update()
            return out
    finally:
        bar.close()
