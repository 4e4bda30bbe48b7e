"""Atomic files and folders: a reader never sees a half-written output.

A stage writes each output under a temporary name beside the final one and
renames it into place when complete (``os.replace`` is atomic on one file
system). A stage that writes a whole folder builds it in a staging folder of its own
(``.NAME.partial.PID.RANDOM``, locked while the run lives) and swaps it in at the end,
under a lock, only once it holds what the run completed; an interrupted run removes its
own staging folder (SIGINT and SIGTERM unwind through ``finally``), and the next run
removes the stagings of runs that died (nobody holds their lock). Two runs on one
output never share or delete each other's staging.

Replacing a folder as a whole is only safe when the folder is the stage's own, so
:func:`staged_dir` refuses, before a byte is written, an output folder that equals,
contains or lies inside one of the stage's inputs, and an existing folder that holds
anything the stage did not write (see :func:`check_output_folder`).

Files are created with the permissions the process's umask gives (``0666 & ~umask``,
as ``open()`` would), not the ``0600`` of :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
import tempfile
import time
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


def check_replaceable(path: Path) -> None:
    """:class:`UserError` when ``path`` exists and is neither a regular file nor a symbolic
    link: a rename over a device node, a FIFO, a socket or a folder would replace it (as root,
    ``/dev/null`` itself). Such outputs are written through (:mod:`codec.cli.batch`) or refused."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise UserError(f"{path}: cannot be inspected ({e.strerror or e}); check the folder") from None
    if stat.S_ISDIR(mode):
        raise UserError(f"{path} is a folder, not a file; name a file to write")
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise UserError(f"{path} is not a regular file (a device, FIFO or socket); it is never replaced. Name a file")


@contextlib.contextmanager
def atomic_path(path: str | Path, *, replace: bool = True) -> tp.Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` at once.

    On any exception the temporary file is removed, so readers never see a
    half-written file under the final name. The final file has the umask's mode.
    A ``path`` that is a device, a FIFO, a socket or a folder is refused
    (:func:`check_replaceable`). With ``replace=False`` nothing that exists is replaced:
    the file is published with a hard link, which fails if ``path`` appeared meanwhile.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    check_replaceable(final)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, default_file_mode())
        check_replaceable(final)
        if replace:
            os.replace(tmp, final)
        else:
            try:
                os.link(tmp, final)  # atomic, and fails if final exists: never replaces
            except FileExistsError:
                raise UserError(f"{final} appeared while it was being written; it was left as it is") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (hex)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


STALE_STAGING = ".partial."  # staging folders are ".NAME.partial.PID.RANDOM"


def try_lock_dir(path: str | Path) -> int | None:
    """An open descriptor of the folder ``path`` with an exclusive ``flock`` on it, or ``None``
    when another process holds the lock (or it is not a folder we can open)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def remove_stale_dirs(parent: Path, prefix: str, started: float) -> list[Path]:
    """Remove the folders in ``parent`` whose names start with ``prefix`` that runs which died
    left behind; returns them.

    A live run holds an exclusive ``flock`` on its folder (:func:`locked_dir`; the kernel
    drops it when the run dies, SIGKILL included), so a folder of this user nobody holds,
    last modified before ``started`` (which covers the instant between creating and locking
    it), is stale."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mtime >= started:
            continue
        fd = try_lock_dir(entry.path)
        if fd is None:
            continue  # a live run's
        try:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def locked_dir(prefix: str, parent: str | Path | None = None) -> tp.Iterator[Path]:
    """A new folder ``parent/PREFIX…`` (default: the temporary folder), locked while this run
    lives and removed at the end, after the stale ones of runs that died
    (:func:`remove_stale_dirs`): a ``kill -9`` leaves its folder for the next run to remove."""
    started = time.time()
    where = Path(tempfile.gettempdir() if parent is None else parent)
    remove_stale_dirs(where, prefix, started)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=where))
    held = try_lock_dir(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if held is not None:
            os.close(held)


def remove_stale_stagings(final: Path, started: float) -> list[Path]:
    """Remove the staging folders of ``final`` that runs which died left behind (see
    :func:`remove_stale_dirs`); returns them."""
    return remove_stale_dirs(final.parent, f".{final.name}{STALE_STAGING}", started)


@contextlib.contextmanager
def _publish_lock(final: Path) -> tp.Iterator[None]:
    """An exclusive ``flock`` on the folder that holds ``final``: one run swaps an output in there
    at a time (a swap takes milliseconds; a lock file would be one more file beside the data)."""
    fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def staged_dir(
    out: str | Path,
    inputs: tp.Sequence[str | Path] = (),
    owned: tp.Callable[[Path], bool] | None = None,
    complete: tp.Callable[[Path], None] | None = None,
) -> tp.Iterator[Path]:
    """Yield an empty staging folder of this run's own; on success it replaces ``out`` as a whole.

    ``out`` is checked first (:func:`check_output_folder` with ``inputs`` and
    ``owned``). The staging folder (``.NAME.partial.PID.RANDOM``) is locked while the run
    lives, so no other run deletes it, and the stagings of runs that died are removed
    (:func:`remove_stale_stagings`). The swap happens under a lock (one run at a time), after
    ``complete(staging)`` (a :class:`UserError` when the staging does not hold a whole
    output) and ``owned`` pass again. On failure or interruption this run's staging folder
    is removed and ``out`` is left as it was before the run.
    """
    started = time.time()
    final = check_output_folder(out, inputs, owned)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_stagings(final, started)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}{STALE_STAGING}{os.getpid()}.", dir=final.parent))
    held = try_lock_dir(staging)
    try:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's 0700 would become the published folder's mode
        yield staging
        if complete is not None:
            complete(staging)
        with _publish_lock(final):
            check_output_folder(out, inputs, owned)  # another run may have published meanwhile: still ours?
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}{STALE_STAGING}old.", dir=final.parent))
            try:
                if final.exists():
                    os.replace(final, old)
                os.replace(staging, final)
            finally:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if held is not None:
            os.close(held)
