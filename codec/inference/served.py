"""The served model: what ``mlflow models serve`` answers is what ``codec encode`` followed by
``codec decode`` gives for the same samples.

The train stage logs :class:`ServedCodec` (an ``mlflow.pyfunc`` model, :func:`log_model`) with
the plain checkpoint as its one artifact. Loading it reads that checkpoint as ``codec encode``
does (:func:`codec.inference.model_source.codec_from_checkpoint`: ``weights_only``, nothing
unpickled from it) with the level settings it was trained for
(:meth:`codec.audio.level.LevelSettings.from_checkpoint`); each request is coded through the
user's path: :func:`codec.inference.prepare.prepare` and
:func:`codec.inference.pipeline.encode_prepared`, what ``encode_to_stream`` and ``codec encode``
run (loudness to the model's target, peak limiter, codes at the requested bitrate, energy side
information), into a bitstream in memory, then :func:`codec.inference.pipeline.decode_from_stream`
(decode, energy correction, the level given back, the input's rate and length).

Requests (MLflow's scoring protocol, ``POST /invocations`` with JSON): one column ``audio``,
each row one mono recording as float samples (what a FLOAT WAV holds; they are coded as
float32), any length::

    {"inputs": {"audio": [0.01, -0.02, ...]}, "params": {"sample_rate": 16000}}
    {"dataframe_split": {"columns": ["audio"], "data": [[[...]], [[...]]]}, "params": {...}}
    {"inputs": [{"audio": [...]}, {"audio": [...]}]}

``params`` (all optional, for every row of the request):

- ``sample_rate``: the samples' rate in Hz (default: the model's);
- ``kbps``: a bitrate the model serves (default: its highest, as ``codec encode``);
- ``return_bitstream``: also return the bitstream, base64 (default: false); its bytes are
  the file ``codec encode`` writes for the same samples;
- ``allow_silence``: code an all-zero input instead of refusing it (``codec encode
  --allow-silence``; default: false).

Response: ``{"predictions": [{"audio": [...], "bitstream": "..." or null}, ...]}``, one row per
input row, the audio at the input's rate and length. A bad request (empty or non-finite
samples, an unserved bitrate, a bad sample rate, digital silence) is answered with HTTP 400 and
a one-line message saying what is wrong and what to send instead.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import math
import shutil
import tempfile
import typing as tp
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from codec.audio import Array
from codec.audio.level import LevelSettings
from codec.errors import UserError
from codec.inference import bitstream
from codec.inference.model_source import codec_from_checkpoint
from codec.inference.pipeline import decode_from_stream, encode_prepared, n_quantizers_for
from codec.inference.prepare import InferenceError, prepare
from codec.model.checkpoint import model_fingerprint
from codec.tracking import MODEL_ARTIFACT

if tp.TYPE_CHECKING:
    from mlflow.models import ModelSignature

    from codec.model.codec import Codec

AUDIO, BITSTREAM = "audio", "bitstream"  # the request's column; the response's columns
CHECKPOINT = "checkpoint"  # the logged model's artifact key: the plain checkpoint


@dataclasses.dataclass(frozen=True)
class Options:
    """A request's params, checked (see the module docstring)."""

    sample_rate: int
    kbps: float
    return_bitstream: bool = False
    allow_silence: bool = False


class ServedCodec(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]  # mlflow is untyped here
    """The ``mlflow.pyfunc`` model that serves the codec (module docstring)."""

    model: Codec
    levels: LevelSettings
    fingerprint: bytes

    def load_context(self, context: tp.Any) -> None:
        self.model, ckpt = codec_from_checkpoint(context.artifacts[CHECKPOINT])
        self.levels = LevelSettings.from_checkpoint(ckpt)
        self.fingerprint = model_fingerprint(self.model)

    # model_input: a DataFrame as the signature makes it (a hint MLflow infers no schema from).
    def predict(
        self, context: tp.Any, model_input: pd.DataFrame, params: dict[str, tp.Any] | None = None
    ) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        try:
            options = self.options(params)
            clips = recordings(model_input)
            names = ["the input"] if len(clips) == 1 else [f"recording {i + 1}" for i in range(len(clips))]
            rows = [self.code(clip, options, name) for clip, name in zip(clips, names, strict=True)]
        except UserError as e:  # InferenceError, BitstreamError: one line saying what to change
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None
        return pd.DataFrame(rows, columns=[AUDIO, BITSTREAM])

    def options(self, params: tp.Mapping[str, tp.Any] | None) -> Options:
        """The request's params with the model's defaults; :class:`UserError` for a bad one."""
        return check_options(self.model, params or {})

    def code(self, audio: Array, options: Options, name: str = "the input") -> tuple[Array, str | None]:
        """One recording coded and decoded: (decoded audio, the bitstream in base64 if asked for)."""
        decoded, stream = roundtrip(self.model, self.levels, self.fingerprint, audio, options, name)
        return decoded, base64.b64encode(stream).decode("ascii") if options.return_bitstream else None


def check_options(model: Codec, params: tp.Mapping[str, tp.Any]) -> Options:
    """:class:`Options` from a request's ``params`` (defaults: the model's rate, its top bitrate)."""
    config = model.config
    rate = params.get("sample_rate")
    rate = int(config.sample_rate) if rate is None else rate
    if isinstance(rate, float) and rate.is_integer():
        rate = int(rate)
    if (
        isinstance(rate, bool)
        or not isinstance(rate, int)
        or not bitstream.MIN_SAMPLE_RATE <= rate <= bitstream.MAX_SAMPLE_RATE
    ):
        raise InferenceError(
            f"sample_rate {rate!r} is not a sample rate this codec takes; pass the recording's rate in Hz, "
            f'{bitstream.MIN_SAMPLE_RATE}..{bitstream.MAX_SAMPLE_RATE} (params: {{"sample_rate": 16000}})'
        )
    kbps = params.get("kbps")
    kbps = float(max(config.bitrates_kbps)) if kbps is None else kbps
    if isinstance(kbps, bool) or not isinstance(kbps, (int, float)) or not math.isfinite(kbps):
        served = ", ".join(f"{b:g}" for b in config.bitrates_kbps)
        raise InferenceError(f"kbps {kbps!r} is not a bitrate; pass one this model serves: {served}")
    n_quantizers_for(model, float(kbps))  # an unserved bitrate names the served ones
    return Options(rate, float(kbps), bool(params.get("return_bitstream")), bool(params.get("allow_silence")))


def recordings(model_input: tp.Any) -> list[Array]:
    """The request's recordings as float32 arrays: the ``audio`` column of a DataFrame (what
    MLflow makes of every request format the signature allows), a dict with an ``audio`` key,
    or one array/list of samples (a local ``predict`` call)."""
    if isinstance(model_input, pd.DataFrame):
        if AUDIO not in model_input.columns:
            raise InferenceError(f'the request has no {AUDIO!r} column; send {{"inputs": {{"{AUDIO}": [samples]}}}}')
        rows = list(model_input[AUDIO])
    elif isinstance(model_input, dict):
        rows = [model_input[AUDIO]] if AUDIO in model_input else []
    else:
        rows = [model_input]
    if not rows:
        raise InferenceError(f'the request holds no recording; send {{"inputs": {{"{AUDIO}": [samples]}}}}')
    return [as_samples(row) for row in rows]


def as_samples(row: tp.Any) -> Array:
    """One recording as float32 samples (the values a FLOAT WAV of it holds)."""
    try:
        with np.errstate(over="ignore"):  # beyond float32's range: inf, refused below as non-finite
            x = np.asarray(row, dtype=np.float64).astype(np.float32)
    except (TypeError, ValueError):
        raise InferenceError(
            f"a recording must be a list of numbers (mono float samples), got {type(row).__name__}"
        ) from None
    if x.ndim != 1:
        raise InferenceError(f"a recording must be one list of mono samples, got shape {list(x.shape)}")
    return x


def roundtrip(
    model: Codec, levels: LevelSettings, fingerprint: bytes, audio: Array, options: Options, name: str = "the input"
) -> tuple[Array, bytes]:
    """``codec decode(codec encode(audio))``: the decoded audio (float32, ``audio``'s rate and
    length) and the bitstream's bytes. :class:`UserError` for an input ``codec encode`` refuses.

    The steps of :func:`codec.inference.pipeline.encode_to_stream` (prepare, then
    :func:`~codec.inference.pipeline.encode_prepared`), with ``codec encode``'s refusal of
    digital silence between them, as :func:`codec.inference.compress.encode_file` does."""
    prepared = prepare(audio, options.sample_rate, int(model.config.sample_rate), levels, name=name)
    if prepared.silent and not options.allow_silence:
        raise InferenceError(
            f"{name}: holds only digital silence ({prepared.length / prepared.sample_rate:.2f} s of zeros); "
            'nothing to encode (pass params {"allow_silence": true} to code it anyway)'
        )
    buffer = io.BytesIO()
    encode_prepared(model, prepared, options.kbps, buffer, fingerprint=fingerprint, name=name)
    stream = buffer.getvalue()
    _, blocks = decode_from_stream(model, io.BytesIO(stream), fingerprint=fingerprint, size=len(stream))
    decoded = [np.asarray(b, np.float32) for b in blocks]
    return (np.concatenate(decoded) if decoded else np.zeros(0, np.float32)), stream


def signature(model: Codec) -> ModelSignature:
    """Input: the ``audio`` column (arrays of doubles: JSON numbers); output: ``audio`` (float32
    arrays) and ``bitstream`` (base64 text, when asked for); the params with the model's defaults."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array as ArrayType

    config = model.config
    return ModelSignature(
        inputs=Schema([ColSpec(ArrayType(DataType.double), AUDIO)]),
        outputs=Schema(
            [ColSpec(ArrayType(DataType.float), AUDIO), ColSpec(DataType.string, BITSTREAM, required=False)]
        ),
        params=ParamSchema(
            [
                ParamSpec("sample_rate", DataType.long, int(config.sample_rate)),
                ParamSpec("kbps", DataType.double, float(max(config.bitrates_kbps))),
                ParamSpec("return_bitstream", DataType.boolean, False),
                ParamSpec("allow_silence", DataType.boolean, False),
            ]
        ),
    )


# What the served model imports beyond the standard library and ``codec`` (which travels as
# code): the inference path's packages, pinned to the versions that logged it.
REQUIREMENTS = ("torch", "torchaudio", "numpy", "pandas", "soxr", "soundfile", "scipy")


def pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:  # pragma: no cover (all are dependencies of codec)
            pins.append(name)
    return pins


def log_model(checkpoint: str | Path, step: int = 0) -> tp.Any:
    """Log :class:`ServedCodec` for the checkpoint at ``checkpoint`` into the active MLflow run,
    as the model ``codec`` (:data:`codec.tracking.MODEL_ARTIFACT`); returns MLflow's model info.
    ``step``: the run's step it is logged at (MLflow copies the run's metrics of that step to the
    model: pass one no metric has, and log the model's metrics with its ``model_id``).

    - the checkpoint travels as the model's artifact ``checkpoint`` (the run's own copy, which
      ``codec encode --model models:/...`` reads, is ``checkpoint/codec.pt``:
      :data:`codec.tracking.CHECKPOINT_ARTIFACT`, logged by the train stage);
    - the ``codec`` package travels as code (``code_paths``: it is on no package index), its
      requirements pinned to the versions that logged it, so ``mlflow models serve`` (also with
      ``--env-manager local``) can load it;
    - the model is code, not a pickle (MLflow's models from code: :data:`MODEL_CODE`);
    - a signature with params and a 0.25 s input example (MLflow checks it answers).
    """
    model, _ = codec_from_checkpoint(checkpoint)
    rate = int(model.config.sample_rate)
    t = np.arange(rate // 4) / rate
    example = pd.DataFrame({AUDIO: [(0.1 * np.sin(2 * np.pi * 220 * t)).tolist()]})
    with tempfile.TemporaryDirectory(prefix="codec-served-") as tmp:
        # The package's code without its shipped reference model (14 MB the served model never reads).
        package = shutil.copytree(
            Path(__file__).resolve().parents[1],
            Path(tmp) / "codec",
            ignore=shutil.ignore_patterns("__pycache__", "reference"),
        )
        # MLflow's "models from code": the logged model is this file, run at load time, not a pickle.
        code = Path(tmp) / "served_model.py"
        code.write_text(MODEL_CODE, encoding="utf-8")
        return mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=str(code),
            artifacts={CHECKPOINT: str(checkpoint)},
            signature=signature(model),
            input_example=example,
            code_paths=[str(package)],
            pip_requirements=pip_requirements(),
            # Not the repository's uv.lock and pyproject.toml (MLflow copies them from the working
            # directory): they would install the whole project where the requirements above suffice.
            uv_project_path=tmp,
            step=step,
        )


MODEL_CODE = """\
# The served codec (codec/inference/served.py): MLflow runs this file to load the model.
import mlflow.models

from codec.inference.served import ServedCodec

mlflow.models.set_model(ServedCodec())
"""
