"""Atomic files and folders: a reader never sees a half-written output.

A stage writes each output under a temporary name beside the final one and
renames it into place when complete (``os.replace`` is atomic on one file
system). A stage that writes a whole folder builds it as ``.NAME.partial`` and
swaps it in at the end; an interrupted run removes its staging folder (SIGINT and
SIGTERM unwind through ``finally``; after a SIGKILL the next run clears it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import typing as tp
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> tp.Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` at once.

    On any exception the temporary file is removed, so readers never see a
    half-written file under the final name.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file atomically (manifests, summaries)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def staged_dir(out: str | Path) -> tp.Iterator[Path]:
    """Yield an empty staging folder; on success it replaces ``out`` as a whole.

    On failure or interruption the staging folder is removed and ``out`` is left
    as it was before the run.
    """
    final = Path(out)
    staging = final.with_name(f".{final.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed run
    staging.mkdir(parents=True)
    try:
        yield staging
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
