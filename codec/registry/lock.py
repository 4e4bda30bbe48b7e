"""One promotion decision at a time: an OS file lock beside the MLflow store.

``codec promote`` holds :func:`registry_lock` from reading the champion to writing
``promotion.json`` (compare, create the version, set the alias), so two promotions never
compare against the same champion and both win. The lock is ``fcntl.flock`` on a file beside
the SQLite database (``mlflow.db`` → ``mlflow.db.lock``) or inside a file store's folder: the
kernel releases it when the holder exits, ``kill -9`` included, so a lock is never stale.
Standard library only; POSIX (``fcntl``).

**A remote tracking server** (``http://…``, PostgreSQL, Databricks) has no file here that every
promoting machine sees, so no lock is taken, unless ``CODEC_REGISTRY_LOCK`` names a lock file
on a file system that all of them share. What protects the registry then:

- :func:`codec.registry.transaction.register` compares-and-sets: just before it moves an alias
  it re-reads the champion and the alias, and refuses (rolling back its version) when either
  moved since the comparison; after setting the alias it reads it back and rolls back if
  another promotion overwrote it. A lost race is an error that says to re-run, never two
  champions. A small window between the re-read and the set remains, which MLflow's API
  (no conditional alias update) cannot close.
- Run promotions one at a time: a Prefect concurrency limit of 1 on the promote task (or a
  global concurrency limit named for the registry), or a single scheduler that runs
  ``dvc repro promote``; or set ``CODEC_REGISTRY_LOCK``.
- A version left ``decision=pending`` by a killed process is cleared by the next promotion only
  once it is older than :data:`codec.registry.consistency.STALE_AFTER_S` (it may still be in
  flight on another machine); ``codec models`` lists it meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import typing as tp
from pathlib import Path
from urllib.parse import unquote, urlparse

from codec.errors import UserError

LOCK_ENV = "CODEC_REGISTRY_LOCK"  # a lock file for stores this module can't place one beside
LOCK_TIMEOUT_S = 900.0  # a promotion that re-evaluates the champion takes minutes, not hours


def lock_file(uri: str) -> Path | None:
    """The lock file for the registry at ``uri``; ``None`` where no local file can stand for it."""
    if os.environ.get(LOCK_ENV):
        return Path(os.environ[LOCK_ENV])
    if uri.startswith("sqlite:///"):
        db = unquote(uri[len("sqlite:///") :].split("?", 1)[0])  # sqlite:////abs/x.db or sqlite:///rel/x.db
        if not db or db == ":memory:":
            return None
        return Path(db).with_name(Path(db).name + ".lock")
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):  # a file store: a folder of runs
        folder = Path(unquote(parsed.path) if parsed.scheme == "file" else uri)
        return folder / ".codec-registry.lock"
    return None


def _holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() or "another process"
    except OSError:
        return "another process"


@contextlib.contextmanager
def registry_lock(
    uri: str, timeout_s: float = LOCK_TIMEOUT_S, say: tp.Callable[[str], None] | None = None
) -> tp.Iterator[bool]:
    """Hold the registry's lock for the ``with`` block; yields whether one was taken (``False``
    for a remote store without ``CODEC_REGISTRY_LOCK``: see the module docstring)."""
    path = lock_file(uri)
    if path is None:
        yield False
        return
    import fcntl  # POSIX only

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise UserError(
            f"can't open the registry lock {path} ({e.strerror}); make {path.parent} writable "
            f"or set {LOCK_ENV} to a writable lock file"
        ) from None
    try:
        deadline = time.monotonic() + timeout_s
        waiting = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting and say is not None:
                    say(f"waiting for the registry lock {path}, held by {_holder(path)}")
                waiting = True
                if time.monotonic() > deadline:
                    raise UserError(
                        f"the registry lock {path} is still held by {_holder(path)} after {timeout_s:.0f} s; "
                        "that process is alive (the lock goes with it): wait for it to finish, or stop it "
                        "and re-run codec promote"
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.write(fd, f"codec promote, pid {os.getpid()} on {socket.gethostname()}\n".encode())
        yield True
    finally:
        os.close(fd)  # releases the lock
