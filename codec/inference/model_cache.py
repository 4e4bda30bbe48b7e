"""The local model cache of ``codec encode/decode``: no registry download and no torch on every call.

A registry model used to cost every call an MLflow import, a query and an artifact download
(seconds) before a sample was coded. Now:

- the registry is asked only which version an alias names, and that version's run, with
  the standard library (:func:`lookup_version`): SQLite read-only for a ``sqlite:///`` store,
  MLflow's REST API for an ``http(s)://`` server; any other store, or an answer these cannot
  give, goes through the MLflow client as before;
- a version's checkpoint is downloaded once and kept under its fingerprint (the one every
  bitstream carries), with its ONNX export (:mod:`codec.inference.export`), so the next call
  starts the torch-free runtime (:class:`codec.inference.onnx_codec.OnnxCodec`) from disk;
- a checkpoint file (``--model models/codec.pt``) is known by the SHA-256 of its bytes: the
  same bytes find the same export, changed bytes are a new model.

Versions are immutable in MLflow's registry (a new model is a new version), so a cached
version stays right; moving an alias moves what :func:`lookup_version` answers.

Where: ``$CODEC_CACHE_DIR``, else ``$XDG_CACHE_HOME/telugu-speech-codec``, else
``~/.cache/telugu-speech-codec``; ``CODEC_CACHE_DIR=off`` turns the cache off (every call
loads the checkpoint with torch, as before). Safe to delete at any time. Entries are written
to a temporary name and renamed, so concurrent calls never read half an entry.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from codec.errors import UserError
from codec.files import atomic_path

CACHE_ENV = "CODEC_CACHE_DIR"
EXPORTS, CHECKPOINTS, VERSIONS, FILES = "exports", "checkpoints", "versions", "files"


def cache_root() -> Path | None:
    """The cache folder (see the module docstring), or None when it is turned off."""
    env = os.environ.get(CACHE_ENV)
    if env is not None:
        return None if env.strip().lower() in ("", "off", "none", "0") else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "telugu-speech-codec"


@dataclasses.dataclass(frozen=True)
class VersionRef:
    """A registry model version: its number and the run that made it."""

    version: str
    run_id: str


def lookup_version(
    tracking_uri: str, name: str, *, alias: str | None = None, version: str | None = None
) -> VersionRef | None:
    """The version ``alias`` (or ``version``) of model ``name`` names, asked without MLflow; None
    when this store cannot be asked this way or did not answer (the caller asks MLflow), and
    :class:`LookupError` when the store answered that there is no such version or alias."""
    if tracking_uri.startswith("sqlite:///"):
        return _sqlite_version(Path(tracking_uri[len("sqlite:///") :]), name, alias, version)
    if tracking_uri.startswith(("http://", "https://")):
        return _rest_version(tracking_uri, name, alias, version)
    return None


def _sqlite_version(db: Path, name: str, alias: str | None, version: str | None) -> VersionRef | None:
    if not db.is_file():
        raise LookupError(f"{db} does not exist")
    if alias is not None:
        query = (
            "SELECT v.version, v.run_id FROM registered_model_aliases a JOIN model_versions v "
            "ON a.name = v.name AND a.version = v.version AND a.workspace = v.workspace "
            "WHERE a.workspace = 'default' AND a.name = ? AND a.alias = ?"
        )
        args: tuple[str, ...] = (name, alias)
    else:
        query = "SELECT version, run_id FROM model_versions WHERE workspace = 'default' AND name = ? AND version = ?"
        args = (name, str(version))
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5.0)) as db_conn:
            row = db_conn.execute(query, args).fetchone()
    except sqlite3.Error:  # another schema (an MLflow version of other tables), or a locked file
        return None
    if row is None:
        raise LookupError(f"no {name}@{alias}" if alias else f"no {name} version {version}")
    if not row[1]:  # registered from a logged model: MLflow knows its run
        return None
    return VersionRef(str(row[0]), str(row[1]))


def _rest_version(uri: str, name: str, alias: str | None, version: str | None) -> VersionRef | None:
    if alias is not None:
        path, query = "registered-models/alias", {"name": name, "alias": alias}
    else:
        path, query = "model-versions/get", {"name": name, "version": str(version)}
    url = f"{uri.rstrip('/')}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(query)}"
    request = urllib.request.Request(url, headers=_auth_headers())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise LookupError(f"{url}: not found") from None
        return None
    except (OSError, ValueError):
        return None
    mv = body.get("model_version") if isinstance(body, dict) else None
    if not isinstance(mv, dict) or not mv.get("run_id") or not mv.get("version"):
        return None
    return VersionRef(str(mv["version"]), str(mv["run_id"]))


def _auth_headers() -> dict[str, str]:
    """MLflow's own credentials variables, as its client sends them."""
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {}


# --- entries ---------------------------------------------------------------------------------


def _version_key(tracking_uri: str, name: str, ref: VersionRef) -> Path:
    store = hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]
    return Path(VERSIONS) / store / hashlib.sha256(name.encode()).hexdigest()[:16] / f"{ref.version}-{ref.run_id}.json"


def version_fingerprint(tracking_uri: str, name: str, ref: VersionRef) -> bytes | None:
    """The fingerprint of a version seen before, or None."""
    return _read_fingerprint(_version_key(tracking_uri, name, ref))


def remember_version(tracking_uri: str, name: str, ref: VersionRef, fingerprint: bytes) -> None:
    _write_fingerprint(_version_key(tracking_uri, name, ref), fingerprint)


def file_fingerprint(digest: str) -> bytes | None:
    """The fingerprint of a checkpoint file whose bytes were seen before, or None."""
    return _read_fingerprint(Path(FILES) / f"{digest}.json")


def remember_file(digest: str, fingerprint: bytes) -> None:
    _write_fingerprint(Path(FILES) / f"{digest}.json", fingerprint)


def export_dir(fingerprint: bytes) -> Path | None:
    """Where the export of the model with ``fingerprint`` lives in the cache (it may not exist
    yet), or None when the cache is off."""
    root = cache_root()
    return None if root is None else root / EXPORTS / fingerprint.hex()


def checkpoint_path(fingerprint: bytes) -> Path | None:
    """Where the checkpoint of the model with ``fingerprint`` is kept, or None when the cache is off."""
    root = cache_root()
    return None if root is None else root / CHECKPOINTS / f"{fingerprint.hex()}.pt"


def _read_fingerprint(key: Path) -> bytes | None:
    root = cache_root()
    if root is None:
        return None
    try:
        value = json.loads((root / key).read_text())["fingerprint"]
        fingerprint = bytes.fromhex(value)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return fingerprint if len(fingerprint) == 8 else None


def _write_fingerprint(key: Path, fingerprint: bytes) -> None:
    root = cache_root()
    if root is None:
        return
    with (
        contextlib.suppress(OSError, UserError),
        atomic_path(root / key) as part,
    ):  # a cache it cannot write costs speed
        part.write_text(json.dumps({"fingerprint": fingerprint.hex()}))


def store_checkpoint(fingerprint: bytes, source: Path) -> None:
    """Copy a downloaded checkpoint file into the cache under ``fingerprint``."""
    target = checkpoint_path(fingerprint)
    if target is None or target.is_file():
        return
    with contextlib.suppress(OSError, UserError), atomic_path(target) as part:
        shutil.copyfile(source, part)
