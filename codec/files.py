"""Atomic files and folders: a reader never sees a half-written output.

A stage writes each output under a temporary name beside the final one and
renames it into place when complete (``os.replace`` is atomic on one file
system). A stage that writes a whole folder builds it as ``.NAME.partial`` and
swaps it in at the end; an interrupted run removes its staging folder (SIGINT and
SIGTERM unwind through ``finally``; after a SIGKILL the next run clears it).

Replacing a folder as a whole is only safe when the folder is the stage's own, so
:func:`staged_dir` refuses, before a byte is written, an output folder that equals,
contains or lies inside one of the stage's inputs, and an existing folder that holds
anything the stage did not write (see :func:`check_output_folder`).

Files are created with the permissions the process's umask gives (``0666 & ~umask``,
as ``open()`` would), not the ``0600`` of :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import typing as tp
from pathlib import Path, PurePosixPath

from codec.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: ``0o666`` less the umask."""
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> tp.Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` at once.

    On any exception the temporary file is removed, so readers never see a
    half-written file under the final name. The final file has the umask's mode.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file atomically (manifests, summaries)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def resolved(path: str | Path, what: str) -> Path:
    """``path`` made absolute with symlinks resolved, or a clear error (a symlink loop)."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as e:  # RuntimeError: symlink loop (Python < 3.13)
        raise UserError(f"{what} {path}: cannot resolve the path ({e})") from None


def inside(root: Path, rel: tp.Any, where: str) -> Path:
    """``root / rel`` when ``rel`` (from a manifest) is a relative path that stays inside
    ``root``, symbolic links resolved; else a :class:`UserError` naming ``where``."""
    if not isinstance(rel, str) or not rel:
        raise UserError(f"{where}: path {rel!r} is empty; re-run the stage that writes the manifest")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or Path(rel).is_absolute() or ".." in pure.parts or "\\" in rel:
        raise UserError(
            f"{where}: path {rel!r} leaves the manifest's folder; paths must be relative to it, "
            "with no '..'. Re-run the stage that writes the manifest"
        )
    root = resolved(root, "folder")
    target = resolved(root / rel, "path")
    if not target.is_relative_to(root):
        raise UserError(f"{where}: path {rel!r} leads outside {root} through a symbolic link; refused")
    return target


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def check_output_folder(
    out: str | Path,
    inputs: tp.Sequence[str | Path] = (),
    owned: tp.Callable[[Path], bool] | None = None,
    what: str = "--out",
) -> Path:
    """Check that ``out`` may be replaced as a whole; return it resolved.

    Refused with a :class:`UserError`, before anything is written:

    - ``out`` equals, contains or lies inside one of ``inputs`` (a stage would
      replace the data it is reading, or a folder around it);
    - ``out`` is the file-system root, or exists and is not a folder;
    - ``out`` exists, is not empty and ``owned(out)`` is false (it holds files the
      stage did not write: the user's, which the swap would delete).
    """
    final = resolved(out, what)
    if final.parent == final:
        raise UserError(f"{what} {out}: the file-system root cannot be an output folder; name a new folder")
    for item in inputs:
        src = resolved(item, "input")
        if _overlap(final, src):
            relation = "is" if final == src else ("is inside" if final.is_relative_to(src) else "contains")
            raise UserError(
                f"{what} {out} {relation} the input {item}: the stage replaces its output folder as a whole, "
                "which would destroy the input. Choose an output folder outside the input (e.g. data/raw for ingest)"
            )
    if final.exists() or final.is_symlink():
        if not final.is_dir():
            raise UserError(f"{what} {out} exists and is not a folder; remove it or choose another output folder")
        if any(final.iterdir()) and not (owned is not None and owned(final)):
            example = next(iter(sorted(p.name for p in final.iterdir())))
            raise UserError(
                f"{what} {out} already holds files this stage did not write (e.g. {example!r}); it would be "
                "replaced as a whole and they would be lost. Choose a new or empty folder, or move them away first"
            )
    return final


def manifest_owned(columns: tp.Sequence[str]) -> tp.Callable[[Path], bool]:
    """``owned`` for :func:`check_output_folder`: the folder holds a ``manifest.csv`` whose
    header is exactly ``columns`` (what the stage writes)."""
    header = ",".join(columns)

    def owned(folder: Path) -> bool:
        path = folder / "manifest.csv"
        try:
            with path.open(encoding="utf-8") as f:
                return f.readline().rstrip("\r\n") == header
        except (OSError, UnicodeDecodeError):
            return False

    return owned


@contextlib.contextmanager
def staged_dir(
    out: str | Path,
    inputs: tp.Sequence[str | Path] = (),
    owned: tp.Callable[[Path], bool] | None = None,
) -> tp.Iterator[Path]:
    """Yield an empty staging folder; on success it replaces ``out`` as a whole.

    ``out`` is checked first (:func:`check_output_folder` with ``inputs`` and
    ``owned``). On failure or interruption the staging folder is removed and ``out``
    is left as it was before the run.
    """
    final = check_output_folder(out, inputs, owned)
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
