"""Where ``codec encode``/``codec decode`` get their model, and loading it safely.

A model is named by ``--model``:

- a checkpoint path (``models/codec.pt``, written by ``codec train``), or
- a registry URI, ``models:/telugu-speech-codec@champion`` (an alias) or
  ``models:/telugu-speech-codec/3`` (a version).

Without ``--model``: the registry's champion when a registry with one exists
(``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` at the repository root, the
train stage's default), else ``models/codec.pt`` when it exists, else the reference model
shipped with the package (``codec/model/reference/codec.pt``, docs/reference_model.md), so a
fresh clone codes speech before any training.

Checkpoints are untrusted (a registry or a file can come from anywhere):

- never unpickled: the train stage logs the plain checkpoint ``checkpoint/codec.pt``
  (``state_dict`` + config) and, beside it, the served model (:mod:`codec.inference.served`:
  code plus a copy of that checkpoint). A registry URI is resolved to the version's run and
  that checkpoint is read with ``torch.load(weights_only=True)``;
- built without allocating from the config: the inference module is created on the
  ``meta`` device and takes its tensors (weight norm folded) from the checkpoint
  (``load_state_dict(assign=True)``, which also refuses shapes that do not match the
  config), so a checkpoint whose config claims a huge model costs no more memory than the
  file's own tensors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import re
import sys
import tempfile
import typing as tp
from pathlib import Path

from codec.audio.level import LevelSettings
from codec.errors import UserError, renamed
from codec.files import sha256_file
from codec.inference import model_cache
from codec.inference.onnx_codec import OnnxCodec, is_export
from codec.model.config import REFERENCE_CHECKPOINT, CodecConfig
from codec.tracking import CHAMPION, CHECKPOINT_ARTIFACT, MODEL_NAME, tracking_uri

if tp.TYPE_CHECKING:
    from codec.inference.pipeline import CodecLike
    from codec.model.codec import Codec

# torch and the model package are imported where a checkpoint is read, not here: the ONNX
# runtime's start-up (codec encode/decode with an export) never imports them.
# What codec encode/decode run a model with: "auto" takes the ONNX export when there is one (and
# makes it, once, in the model cache), "onnx" insists on it, "torch" loads the checkpoint.
RUNTIMES = ("auto", "onnx", "torch")

DEFAULT_URI = f"models:/{MODEL_NAME}@{CHAMPION}"
DEFAULT_CHECKPOINT = Path("models") / "codec.pt"

_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A codec ready for inference and where it came from.

    - ``model``: the :class:`Codec`, eval mode, on the CPU, converted for fast inference
      (:func:`codec.model.serving.for_inference`; same outputs and fingerprint as the checkpoint's),
      or its ONNX export (:class:`codec.inference.onnx_codec.OnnxCodec`, ``runtime == "onnx"``)
    - ``source``: what to print (a path, or ``models:/name@alias (version 3, run …)``)
    - ``params``: the checkpoint's resolved training params (``{}`` if it has none)
    - ``levels``: the level settings the model was trained for (loudness target, peak ceiling,
      limiter window: :meth:`codec.audio.level.LevelSettings.from_checkpoint`), which every
      input is brought to
    """

    model: CodecLike
    source: str
    params: dict[str, tp.Any]
    levels: LevelSettings
    runtime: str = "torch"

    @property
    def target_lufs(self) -> float:
        return self.levels.target_lufs

    @property
    def fingerprint(self) -> bytes:
        """The fingerprint every bitstream of this model carries."""
        from codec.inference.pipeline import fingerprint_of

        return fingerprint_of(self.model)


def codec_from_checkpoint(path: str | Path) -> tuple[Codec, dict[str, tp.Any]]:
    """The :class:`Codec` in the checkpoint at ``path`` (read with ``weights_only=True``), ready for
    inference (:func:`codec.model.serving.inference_codec`: weight norm folded, channels-last), and
    the checkpoint dict; :class:`UserError` for anything that is not a codec checkpoint."""
    import torch

    from codec.model.checkpoint import read_checkpoint
    from codec.model.serving import inference_codec

    ckpt = read_checkpoint(path, "cpu")
    where = f"{path}: model_config"
    config_dict = ckpt["model_config"]
    if not isinstance(config_dict, dict) or not isinstance(ckpt["model"], dict):
        raise UserError(f"{path} is not a codec checkpoint (model_config and model must be dicts)")
    known = {f.name for f in dataclasses.fields(CodecConfig)}
    unknown = sorted(set(config_dict) - known)
    if unknown:
        raise UserError(
            f"{where} has unknown field(s) {', '.join(map(str, unknown))}; it was written by another codec version"
        )
    state = ckpt["model"]
    odd = next((k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if odd is not None:
        raise UserError(f"{path}: model entry {odd!r} is not a named tensor; retrain or restore it")
    try:
        config = CodecConfig.from_dict(config_dict)
        config.check(where)
        # Built on the meta device from the config, given the checkpoint's own tensors.
        model = inference_codec(config, state)
    except UserError:
        raise
    except KeyError as e:
        raise UserError(f"{path}: tensor {e} is missing; retrain or restore it") from None
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: the weights do not fit the model config ({first}); retrain or restore it") from None
    for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
        if tensor.is_meta:  # a tensor the module has but the checkpoint did not give it
            raise UserError(f"{path}: tensor {name} is missing; retrain or restore it")
    return model, ckpt


def load_model(spec: str | None, runtime: str = "torch") -> LoadedModel:
    """Resolve ``--model`` (``None``: the default, see the module docstring) and load it for
    ``runtime`` (:data:`RUNTIMES`; evaluation and promotion load the torch model, the default)."""
    if runtime not in RUNTIMES:
        raise UserError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    if spec is None:
        spec = default_model_spec()
    if spec.startswith("models:/"):
        return _load_registered(spec, runtime)
    path = Path(spec)
    if not path.exists():
        raise UserError(
            f"model checkpoint {path} not found; pass --model PATH or --model {DEFAULT_URI} "
            "(train one with: dvc repro train)"
        )
    if is_export(path):
        if runtime == "torch":
            raise UserError(
                f"{path} is an ONNX export (codec export), which runs without torch; drop --runtime torch, "
                "or pass the checkpoint it was exported from"
            )
        return _from_export(path, str(path))
    digest = sha256_file(path) if runtime != "torch" and model_cache.cache_root() else None
    if digest is not None:
        cached = _cached_export(model_cache.file_fingerprint(digest), str(path))
        if cached is not None:
            return cached
    model, ckpt = codec_from_checkpoint(path)
    params = ckpt.get("params") if isinstance(ckpt.get("params"), dict) else {}
    loaded = LoadedModel(model, str(path), dict(params or {}), LevelSettings.from_checkpoint(ckpt))
    if digest is not None:
        model_cache.remember_file(digest, loaded.fingerprint)
    return loaded if runtime == "torch" else _exported(loaded, ckpt, strict=runtime == "onnx")


def _from_export(folder: Path, source: str) -> LoadedModel:
    model = OnnxCodec.load(folder)
    levels = LevelSettings.from_checkpoint({"level": model.level})
    return LoadedModel(model, source, {}, levels, runtime="onnx")


def _cached_export(fingerprint: bytes | None, source: str) -> LoadedModel | None:
    """The cached export of the model with ``fingerprint``, if the cache has a good one."""
    folder = None if fingerprint is None else model_cache.export_dir(fingerprint)
    if folder is None or not is_export(folder):
        return None
    try:
        loaded = _from_export(folder, f"{source} (ONNX export {folder})")
    except UserError:  # damaged: made again from the checkpoint
        return None
    return loaded if loaded.fingerprint == fingerprint else None


def _exported(loaded: LoadedModel, ckpt: dict[str, tp.Any], *, strict: bool) -> LoadedModel:
    """``loaded`` as its ONNX export, made now in the model cache (once per model: later calls
    find it). Without ``strict`` (``--runtime auto``) a model that cannot be exported is run with
    torch, with a note; with it (``--runtime onnx``), :class:`UserError`."""
    fingerprint = loaded.fingerprint
    folder = model_cache.export_dir(fingerprint)
    if folder is None:
        if strict:
            raise UserError(
                f"--runtime onnx needs an export: the model cache is off ({model_cache.CACHE_ENV}); "
                "make one with codec export and pass it as --model"
            )
        return loaded
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        writable = os.access(folder.parent, os.W_OK)
    except OSError:
        writable = False
    if not writable:  # say so, rather than export into nowhere on every call
        message = f"the model cache {folder.parent} cannot be written; set {model_cache.CACHE_ENV} to a writable folder"
        if strict:
            raise UserError(f"--runtime onnx: {message}, or pass an export (codec export) as --model")
        print(f"note: {loaded.source} runs with torch: {message} (or to off)", file=sys.stderr)
        return loaded
    from codec.inference.export import export_checkpoint

    try:
        export_checkpoint(ckpt, folder, source=loaded.source, replace=True)
    except (UserError, OSError, RuntimeError) as e:
        if strict:
            raise UserError(f"{loaded.source}: the ONNX export failed ({e}); use --runtime torch") from None
        print(f"note: {loaded.source} runs with torch: the ONNX export failed ({e})", file=sys.stderr)
        return loaded
    return _cached_export(fingerprint, loaded.source) or loaded


def _sqlite_file(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :])
    return None


def default_model_spec() -> str:
    """The registry's champion if there is one, else ``models/codec.pt`` if it exists, else the
    shipped reference model."""
    uri = tracking_uri()
    db = _sqlite_file(uri)
    # Opening a missing sqlite store would create an empty registry as a side effect.
    if db is None or db.is_file():
        try:
            # Asked without MLflow where the store allows it (codec.inference.model_cache).
            if model_cache.lookup_version(uri, MODEL_NAME, alias=CHAMPION) is None:
                _client(uri).get_model_version_by_alias(MODEL_NAME, CHAMPION)
            return DEFAULT_URI
        except Exception as e:  # no such model or alias, or the server is unreachable
            reason = type(e).__name__
            fallback = DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT.is_file() else REFERENCE_CHECKPOINT
            if fallback.is_file():
                print(f"note: no {DEFAULT_URI} at {uri} ({reason}); using {fallback}", file=sys.stderr)
    if DEFAULT_CHECKPOINT.is_file():
        return str(DEFAULT_CHECKPOINT)
    if REFERENCE_CHECKPOINT.is_file():
        return str(REFERENCE_CHECKPOINT)
    raise UserError(
        f"no model: no {DEFAULT_URI} in the registry at {uri}, no {DEFAULT_CHECKPOINT} here and no reference "
        f"model at {REFERENCE_CHECKPOINT}; train and promote one (dvc repro), or pass --model PATH|models:/NAME@ALIAS"
    )


def _client(uri: str) -> tp.Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextlib.contextmanager
def no_artifact_progress_bar() -> tp.Iterator[None]:
    """MLflow draws a "Downloading artifacts" bar (tqdm, on standard error, terminal or not) for
    every download unless ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` is false (read at each download):
    off while a model loads, so ``codec encode``/``decode`` print only their own lines."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def _parse_uri(uri: str) -> tuple[str, str | None, str | None]:
    match = _URI.match(uri)
    if match is None:
        raise UserError(f"model URI {uri!r} is not models:/NAME@ALIAS or models:/NAME/VERSION")
    return match["name"], match["alias"], match["version"]


@dataclasses.dataclass(frozen=True)
class _Registered:
    """A registry URI resolved once: its parts, the store, and the version and run the registry
    names for it (None where only MLflow can say, :func:`codec.inference.model_cache.lookup_version`)."""

    uri: str
    name: str
    alias: str | None
    version: str | None
    tracking: str
    ref: model_cache.VersionRef | None

    @property
    def source(self) -> str:
        assert self.ref is not None
        return f"{self.uri} (version {self.ref.version}, run {self.ref.run_id})"

    @property
    def fingerprint(self) -> bytes | None:
        """The fingerprint of this version when it was loaded before."""
        return None if self.ref is None else model_cache.version_fingerprint(self.tracking, self.name, self.ref)


def _resolve(uri: str) -> _Registered:
    name, alias, version = _parse_uri(uri)
    tracking = tracking_uri()
    try:
        ref = model_cache.lookup_version(tracking, name, alias=alias, version=version)
    except LookupError:
        raise _not_found(uri, tracking, "LookupError") from None
    return _Registered(uri, name, alias, version, tracking, ref)


def _load_registered(uri: str, runtime: str) -> LoadedModel:
    """A registry model: its cached export when this version was exported before, else its
    checkpoint (:func:`_registered_checkpoint`: cached, or downloaded once)."""
    registered = _resolve(uri)
    if runtime != "torch" and registered.ref is not None:
        cached = _cached_export(registered.fingerprint, registered.source)
        if cached is not None:
            return cached
    with _registered_checkpoint(registered) as (path, source, remember):
        loaded = _from_checkpoint(path, source, runtime)
        remember(loaded.fingerprint)
    return loaded


@contextlib.contextmanager
def checkpoint_of(spec: str | None) -> tp.Iterator[tuple[dict[str, tp.Any], str]]:
    """The checkpoint dict ``--model`` names (as :func:`load_model` resolves it) and its source,
    for ``codec export``."""
    from codec.model.checkpoint import read_checkpoint

    spec = default_model_spec() if spec is None else spec
    if spec.startswith("models:/"):
        with _registered_checkpoint(_resolve(spec)) as (path, source, _):
            try:
                yield read_checkpoint(path), source
            except UserError as e:
                raise renamed(e, str(path), f"{source} {CHECKPOINT_ARTIFACT}") from None
        return
    path = Path(spec)
    if is_export(path):
        raise UserError(f"{path} is an ONNX export already; pass the checkpoint it came from")
    yield read_checkpoint(path), str(path)


def _not_found(uri: str, tracking: str, reason: str) -> UserError:
    return UserError(
        f"{uri} not found in the registry at {tracking} ({reason}); list versions with: codec models, "
        "or pass --model PATH"
    )


def _from_checkpoint(path: Path, source: str, runtime: str) -> LoadedModel:
    """The checkpoint at ``path`` (a download or the cache's copy), named ``source`` in messages."""
    try:
        model, ckpt = codec_from_checkpoint(path)
    except UserError as e:  # named by the URI the user passed, not the temporary download
        raise renamed(e, str(path), f"{source} {CHECKPOINT_ARTIFACT}") from None
    params = ckpt.get("params") if isinstance(ckpt.get("params"), dict) else {}
    loaded = LoadedModel(model, source, dict(params or {}), LevelSettings.from_checkpoint(ckpt))
    return loaded if runtime == "torch" else _exported(loaded, ckpt, strict=runtime == "onnx")


@contextlib.contextmanager
def _registered_checkpoint(registered: _Registered) -> tp.Iterator[tuple[Path, str, tp.Callable[[bytes], None]]]:
    """The checkpoint of a registry version: the model cache's copy when this version was loaded
    before (the registry asked only which version and run the URI names, without MLflow where
    the store allows: :func:`codec.inference.model_cache.lookup_version`), else downloaded with
    MLflow into a temporary folder. Yields (path, source, remember): call ``remember`` with the
    model's fingerprint to keep a download in the cache."""
    uri, name, alias, version, tracking = (
        registered.uri,
        registered.name,
        registered.alias,
        registered.version,
        registered.tracking,
    )
    fingerprint = registered.fingerprint
    kept = None if fingerprint is None else model_cache.checkpoint_path(fingerprint)
    if kept is not None and kept.is_file():
        yield kept, registered.source, lambda _: None
        return
    client = _client(tracking)
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except Exception as e:
        raise _not_found(uri, tracking, type(e).__name__) from None
    run_id = mv.run_id
    if not run_id and getattr(mv, "model_id", None):  # registered from a logged model
        try:
            run_id = client.get_logged_model(mv.model_id).source_run_id
        except Exception:
            run_id = None
    if not run_id:
        raise UserError(f"{uri} (version {mv.version}) has no source run, so no checkpoint to load; pass --model PATH")
    import mlflow.artifacts

    with tempfile.TemporaryDirectory(prefix="codec-model-") as tmp:
        try:
            with no_artifact_progress_bar():
                local = Path(
                    mlflow.artifacts.download_artifacts(
                        run_id=run_id, artifact_path=CHECKPOINT_ARTIFACT, dst_path=tmp, tracking_uri=tracking
                    )
                )
        except Exception as e:
            raise UserError(
                f"{uri} (version {mv.version}, run {run_id}) has no {CHECKPOINT_ARTIFACT} artifact "
                f"({type(e).__name__}); this tool reads that plain checkpoint, never a logged model: "
                "retrain with codec train (it logs the checkpoint) or pass --model PATH"
            ) from None

        def remember(fingerprint: bytes) -> None:
            model_cache.store_checkpoint(fingerprint, local)
            ref = model_cache.VersionRef(str(mv.version), str(run_id))
            model_cache.remember_version(tracking, name, ref, fingerprint)

        yield local, f"{uri} (version {mv.version}, run {run_id})", remember
