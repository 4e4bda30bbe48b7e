"""The torch-free runtime: a codec exported by ``codec export`` (:mod:`codec.model.export`) run
with onnxruntime and NumPy.

:class:`OnnxCodec` offers what the inference path needs of a model (``config``,
``source_fingerprint``, and NumPy ``encode_array``/``decode_array``), so ``codec encode/decode``
run the same steps (:mod:`codec.inference.pipeline`: level, chunks with context, energy side
information, bitstream) with it as with the torch model, without importing torch: start-up is
onnxruntime's and the graphs', not torch's (``benchmarks/startup.py``).

Nothing here imports torch, MLflow or the model package's torch modules (tested).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing as tp
from pathlib import Path

import numpy as np
import numpy.typing as npt

from codec.audio import Array
from codec.errors import UserError
from codec.model.config import CodecConfig

EXPORT_FORMAT = 1  # the codec.json format this runtime reads (codec.model.export writes it)
ENCODER_FILE, DECODER_FILE, META_FILE = "encoder.onnx", "decoder.onnx", "codec.json"

Codes = npt.NDArray[np.int64]


def is_export(path: Path) -> bool:
    """Whether ``path`` is a folder ``codec export`` wrote."""
    return path.is_dir() and (path / META_FILE).is_file()


@dataclasses.dataclass
class OnnxCodec:
    """An exported codec; sessions are opened at first use (an encode never loads the decoder)."""

    folder: Path
    config: CodecConfig
    source_fingerprint: bytes
    level: dict[str, tp.Any]
    encoder_input: str
    files: dict[str, str]
    _sessions: dict[str, tp.Any] = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, folder: str | Path) -> OnnxCodec:
        """Read ``folder``'s ``codec.json``; :class:`UserError` for anything but an export this
        runtime reads."""
        folder = Path(folder)
        meta_path = folder / META_FILE
        try:
            meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            raise UserError(f"{folder} is not a codec export (no {META_FILE}); make one with: codec export") from None
        except (OSError, ValueError) as e:
            raise UserError(f"{meta_path} is unreadable ({e}); export the model again (codec export)") from None
        if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
            got = meta.get("format") if isinstance(meta, dict) else None
            raise UserError(
                f"{meta_path}: export format {got!r}, this codec reads format {EXPORT_FORMAT}; "
                "export the model again with this version (codec export)"
            )
        try:
            config = CodecConfig.from_dict(meta["config"])
            config.check(f"{meta_path}: config")
            fingerprint = bytes.fromhex(meta["fingerprint"])
            level = dict(meta["level"])
            encoder_input = str(meta["encoder_input"])
            files = {str(k): str(v) for k, v in dict(meta["files"]).items()}
        except UserError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{meta_path}: a missing or malformed entry ({e}); export the model again") from None
        stft = config.architecture == "frame"
        if len(fingerprint) != 8 or encoder_input != ("stft" if stft else "audio"):
            raise UserError(f"{meta_path}: a malformed fingerprint or encoder input; export the model again")
        if set(files) != {ENCODER_FILE, DECODER_FILE}:
            raise UserError(
                f"{meta_path}: files {sorted(files)} are not the export's two graphs; export the model again"
            )
        return cls(folder, config, fingerprint, level, encoder_input, files)

    def _session(self, name: str) -> tp.Any:
        session = self._sessions.get(name)
        if session is None:
            import onnxruntime as ort

            path = self.folder / name
            try:
                data = path.read_bytes()
            except OSError as e:
                raise UserError(f"{path}: cannot be read ({e.strerror or e}); export the model again") from None
            if hashlib.sha256(data).hexdigest() != self.files[name]:
                raise UserError(f"{path} does not match its checksum in {META_FILE}; export the model again")
            options = ort.SessionOptions()
            options.log_severity_level = 3  # errors only: no notes on stderr
            # No spinning between calls: live coding calls every 100 ms, and a spinning thread
            # pool burned a core doing nothing (compute/real time 1.05 with it, see
            # benchmarks/live_latency.py); a whole file is a few long calls and does not notice.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
            self._sessions[name] = session
        return session

    def encode_array(self, audio: npt.NDArray[np.floating[tp.Any]], n_quantizers: int) -> Codes:
        """Samples ``[T]`` at the model's rate → codes ``[n_quantizers, ceil(T / hop)]``."""
        x = np.asarray(audio, np.float32)
        hop = self.config.hop_length
        x = np.pad(x, (0, (-x.shape[0]) % hop))
        if self.encoder_input == "stft":
            features = stft_features(x, self.config.encoder_strides[0])[None]
        else:
            features = x.reshape(1, 1, -1)
        (codes,) = self._session(ENCODER_FILE).run(None, {"input": features})
        return np.asarray(codes[0, :n_quantizers], np.int64)

    def decode_array(self, codes: npt.NDArray[np.integer[tp.Any]]) -> Array:
        """Codes ``[Q, F]`` → samples ``[F · hop]`` at the model's rate (normalized level)."""
        c = np.ascontiguousarray(codes, np.int64)[None]
        (audio,) = self._session(DECODER_FILE).run(None, {"codes": c})
        return np.asarray(audio[0, 0], np.float32)


COMPRESSION = 0.3  # codec.model.frame.COMPRESSION (tested equal): the analysis' magnitude exponent


def stft_features(audio: Array, hop: int) -> npt.NDArray[np.float32]:
    """:func:`codec.model.frame.analysis` of samples ``[T]`` (``T`` a multiple of ``hop``) with
    NumPy: ``[2 (2h + 1), T / h]``, computed in float64 and rounded to float32 once, as torch
    computes it (equal up to that rounding, tested)."""
    n_fft = 4 * hop
    pad = (n_fft - hop) // 2
    x = np.asarray(audio, np.float64)
    x = np.pad(x, (pad, pad), mode="reflect" if x.shape[0] > pad else "constant")
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    spec = np.fft.rfft(frames * window, axis=1).T  # [bins, frames]
    spec = spec * np.maximum(np.abs(spec), 1e-7) ** (COMPRESSION - 1.0)
    return np.concatenate([spec.real, spec.imag]).astype(np.float32)
