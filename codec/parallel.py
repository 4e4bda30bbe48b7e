"""Fan a per-file function out over all cores, with a progress bar.

Per-file work in the data stages (decode, resample, meter, gain, write) is
independent, so processes scale it across cores; on a cluster the same per-file
functions are what a Dask or Ray task would call (see README: Growing past one machine).
"""

from __future__ import annotations

import ctypes
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


def keep_freed_memory() -> None:
    """Pool initializer: let glibc's malloc keep and reuse freed memory in the worker.

    By default, arrays over 128 KiB (every clip's audio) are mmapped fresh and returned
    to the OS when freed, so each file's temporaries fault in new zeroed pages: a quarter
    of the normalize stage's CPU time was spent in the kernel. Raising the mmap and trim
    thresholds keeps those pages in the heap (measured: kernel time 2.4 s -> 1.4 s, the
    stage ~15 % faster on an hour of audio). The heap holds at most what one file's work
    peaks at. No-op where there is no glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # <malloc.h>
    mallopt(m_mmap_threshold, 64 << 20)
    mallopt(m_trim_threshold, 256 << 20)
    mallopt(m_top_pad, 16 << 20)


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
        with ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=keep_freed_memory) as pool:
            out = []
            for r in pool.map(fn, items, chunksize=chunksize):
                out.append(r)
                bar.update()
            return out
    finally:
        bar.close()
