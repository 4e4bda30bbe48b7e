"""Fan a per-file function out over all cores, with a progress bar; and processes that die
with what started them.

Per-file work in the data stages (decode, resample, meter, gain, write) is
independent, so processes scale it across cores; on a cluster the same per-file
functions are what a Dask or Ray task would call (see README: Growing past one machine).

A worker dies with its stage (:func:`die_with_parent`), and a stage run by a pipeline dies
with the pipeline (:func:`die_with_pipeline`): a ``kill -9`` of ``dvc repro`` used to leave
``codec normalize`` and its workers running, re-parented to PID 1, publishing over the re-run.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
import typing as tp
from concurrent.futures import InvalidStateError, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from tqdm import tqdm

from codec.errors import UserError

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


def _libc_function(name: str) -> tp.Any:
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):  # not glibc / not Linux
        return None


# Resolved here, in the parent: a worker must not dlopen() after fork, since a thread of
# the parent may have held the loader's lock at the fork (a worker hung so in testing).
_PRCTL = _libc_function("prctl")
_MALLOPT = _libc_function("mallopt")


def die_with_parent() -> None:
    """Pool initializer: the kernel sends this worker SIGKILL when its parent process dies.

    Without it a ``kill -9`` of a stage left its workers running (blocked, ~126 MB each)
    for minutes. Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere a no-op. If the
    parent died before the call, the worker exits at once. Only for workers forked by
    the parent's main thread (the death signal follows the thread that forked), which is
    how :func:`parallel_map`'s pool starts them.
    """
    if _PRCTL is None:
        return
    pr_set_pdeathsig = 1  # <sys/prctl.h>
    _PRCTL(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != _PARENT_PID:
        os._exit(1)


_PARENT_PID = os.getpid()  # set again in the parent before each pool (see parallel_map)


PIPELINE_MARKER = "DVC_STAGE"  # DVC sets it in the environment of every stage command it runs


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """``(state, parent pid, start time)`` of ``pid`` from ``/proc``, or ``None`` when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()  # the name (field 2) may hold spaces and ')'
    return fields[0].decode(), int(fields[1]), int(fields[19])


def _has_marker(pid: int) -> bool | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return any(v.startswith(PIPELINE_MARKER.encode() + b"=") for v in f.read().split(b"\0"))
    except OSError:
        return None


def pipeline_pid() -> int | None:
    """The pipeline process that started this stage: the nearest ancestor whose environment lacks
    :data:`PIPELINE_MARKER` (DVC sets it for the stage's shell and what that runs, not for itself),
    or ``None`` (not under a pipeline, or ``/proc`` cannot tell)."""
    if PIPELINE_MARKER not in os.environ:
        return None
    pid = os.getppid()
    for _ in range(32):
        if pid <= 1:
            return None
        marked = _has_marker(pid)
        if marked is None:
            return None
        if not marked:
            return pid
        info = _proc_stat(pid)
        if info is None:
            return None
        pid = info[1]
    return None


def _alive(pid: int, started: int) -> bool:
    info = _proc_stat(pid)
    return info is not None and info[0] not in ("Z", "X") and info[2] == started


def die_with_pipeline(poll_s: float = 0.5, grace_s: float = 10.0) -> int | None:
    """Stop this process when the pipeline that started it dies; returns that pipeline's PID
    (``None``: not under a pipeline, nothing watched).

    A ``kill -9`` of ``dvc repro`` reaches neither the stage's shell nor the stage, and the
    stage's parent may be that shell, which lives on, so neither ``PR_SET_PDEATHSIG`` nor the
    process group (the killer chooses whether to signal it) is enough. A daemon thread checks
    every ``poll_s`` that the pipeline process (the same one: its start time is compared, so a
    reused PID does not count) and this process's parent still live; when either is gone it
    sends this process SIGTERM, which unwinds through ``finally`` (staging removed, pool shut
    down; the workers die with it by :func:`die_with_parent`), and exits after ``grace_s``
    if the unwinding hangs. Linux only; elsewhere a no-op.
    """
    if not sys.platform.startswith("linux"):
        return None
    root = pipeline_pid()
    info = None if root is None else _proc_stat(root)
    if root is None or info is None:
        return None
    started, parent = info[2], os.getppid()

    def watch() -> None:
        while os.getppid() == parent and _alive(root, started):
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(128 + int(signal.SIGTERM))

    threading.Thread(target=watch, name="die-with-pipeline", daemon=True).start()
    return root


def worker_init() -> None:
    """The data stages' pool initializer: die with the parent, keep freed memory."""
    die_with_parent()
    keep_freed_memory()


def keep_freed_memory() -> None:
    """Pool initializer: let glibc's malloc keep and reuse freed memory in the worker.

    By default, arrays over 128 KiB (every clip's audio) are mmapped fresh and returned
    to the OS when freed, so each file's temporaries fault in new zeroed pages: a quarter
    of the normalize stage's CPU time was spent in the kernel. Raising the mmap and trim
    thresholds keeps those pages in the heap (measured: kernel time 2.4 s -> 1.4 s, the
    stage ~15 % faster on an hour of audio). The heap holds at most what one file's work
    peaks at. No-op where there is no glibc.
    """
    if _MALLOPT is None:
        return
    mallopt = _MALLOPT
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # <malloc.h>
    mallopt(m_mmap_threshold, 64 << 20)
    mallopt(m_trim_threshold, 256 << 20)
    mallopt(m_top_pad, 16 << 20)


_THREAD_HOOK = threading.excepthook


def _quiet_cancelled_futures(args: threading.ExceptHookArgs) -> None:
    """``threading.excepthook`` that drops one known, harmless exception: the pool's manager
    thread, finding the workers that :func:`_stop_workers` terminated, sets an error on futures
    already cancelled, and CPython 3.11's ``terminate_broken`` raises
    InvalidStateError there. It printed a traceback under a user's error message (1 run in 3
    when a file failed in a worker). ``Executor.map``'s own iterator cancels them as the error
    leaves it (with ``cancel_futures=False`` in the shutdown it still printed), so the pool cannot
    avoid them. Everything else goes to the hook that was installed before."""
    manager = type(args.thread).__name__ == "_ExecutorManagerThread" if args.thread is not None else False
    if manager and isinstance(args.exc_value, InvalidStateError):
        return
    _THREAD_HOOK(args)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and SIGTERM the workers (they exit at once, see
    :mod:`codec.cli.main`), so leaving the pool's ``with`` does not wait on a worker that is
    stuck (a read that blocks: a FIFO, a hung network mount)."""
    if threading.excepthook is not _quiet_cancelled_futures:
        global _THREAD_HOOK
        _THREAD_HOOK = threading.excepthook
        threading.excepthook = _quiet_cancelled_futures
    workers = list((getattr(pool, "_processes", None) or {}).values())  # no public handle on them
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in workers:
        with contextlib.suppress(OSError, ValueError, AttributeError):  # already gone / closed
            proc.terminate()


def parallel_map(
    fn: tp.Callable[[T], R],
    items: tp.Sequence[T],
    workers: int,
    desc: str,
    done: tp.Callable[[int, R], None] | None = None,
    unit: str = "file",
) -> list[R]:
    """``[fn(x) for x in items]`` in ``workers`` processes, order kept.

    ``fn`` must be a module-level function. Exceptions propagate (the pool is
    shut down first, so Ctrl-C or a failure leaves no worker running). ``done(i, result)``,
    when given, hears each result as it arrives (``i``: its index in ``items``), in place of
    the progress bar. ``unit``: what an item is, in the bar and in the message when a worker dies.
    """
    n = min(resolve_workers(workers), max(1, len(items)))
    bar = tqdm(total=len(items), desc=desc, unit=unit, disable=True if done else None, leave=False)

    def arrived(i: int, r: R) -> None:
        bar.update()
        if done is not None:
            done(i, r)

    try:
        if n == 1:
            out = []
            for i, x in enumerate(items):
                out.append(fn(x))
                arrived(i, out[-1])
            return out
        # fork: workers inherit imported modules instead of importing them again.
        ctx = multiprocessing.get_context("fork")
        chunksize = max(1, min(16, len(items) // (n * 8)))
        global _PARENT_PID
        _PARENT_PID = os.getpid()
        with ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=worker_init) as pool:
            out = []
            try:
                for r in pool.map(fn, items, chunksize=chunksize):
                    out.append(r)
                    arrived(len(out) - 1, r)
            except BrokenProcessPool:
                raise UserError(
                    f"{desc}: a worker process died (killed, or out of memory) after {len(out)} of {len(items)} "
                    f"{unit}s; nothing was written. Re-run; if it happens again, lower the stage's workers param "
                    "or check the system log (dmesg) for the out-of-memory killer"
                ) from None
            except BaseException:
                _stop_workers(pool)  # SIGTERM, Ctrl-C or a failure: don't wait for the files in progress
                raise
            return out
    finally:
        bar.close()
