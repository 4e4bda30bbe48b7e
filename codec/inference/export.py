"""Exporting a codec to ONNX (``codec export``) and checking the export against the model.

The graphs are :mod:`codec.model.export`'s; the runtime that reads the folder is
:class:`codec.inference.onnx_codec.OnnxCodec`. :func:`export_model` writes the folder beside its
place and renames it in (never half an export), after :func:`verify` ran both on a test signal:
codes may differ only at near-ties of the nearest-code search (at most
:data:`MAX_CODE_MISMATCH` of frames) and decoded audio by at most :data:`MAX_AUDIO_ERROR_DB`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import typing as tp
from pathlib import Path

import numpy as np
import torch

from codec.errors import UserError
from codec.files import sha256_file
from codec.inference.onnx_codec import DECODER_FILE, ENCODER_FILE, EXPORT_FORMAT, META_FILE, OnnxCodec
from codec.model.codec import Codec
from codec.model.export import OPSET, encoder_input, write_graphs


@dataclasses.dataclass(frozen=True)
class Exported:
    """What :func:`export_model` wrote: the folder, its fingerprint, and the check's figures."""

    folder: Path
    fingerprint: bytes
    code_mismatch: float
    audio_error_db: float


def export_model(
    model: Codec,
    fingerprint: bytes,
    levels: dict[str, tp.Any],
    out: Path,
    *,
    source: str = "",
    replace: bool = False,
) -> Exported:
    """Export ``model`` (an inference copy with plain convolutions: :func:`codec.model.serving.
    inference_codec` with ``channels_last=False``) to the folder ``out`` (written beside it, then
    renamed into place: never half a folder), check it (:func:`verify`) and return what was written.
    ``levels``: the checkpoint's level settings (``LevelSettings.to_checkpoint()``)."""
    if out.exists() and not replace:
        raise UserError(f"{out} exists; pass --overwrite to replace it, or choose another folder")
    config = model.config
    if config.frame_causal:  # its analysis pads differently: the runtime's NumPy STFT does not yet
        raise UserError("the causal frame model (frame_causal) is an experiment without an ONNX export")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        folder = Path(tmp) / "export"
        folder.mkdir()
        write_graphs(model, folder)
        meta = {
            "format": EXPORT_FORMAT,
            "fingerprint": fingerprint.hex(),
            "config": config.to_dict(),
            "level": dict(levels),
            "encoder_input": encoder_input(config),
            "source": source,
            "opset": OPSET,
            "files": {name: sha256_file(folder / name) for name in (ENCODER_FILE, DECODER_FILE)},
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        mismatch, error_db = verify(model, folder)
        if out.exists() and replace:
            shutil.rmtree(out, ignore_errors=True)
        try:
            os.replace(folder, out)
        except OSError:
            if not (out / META_FILE).is_file():  # not another process's export of the same model
                raise
    return Exported(out, fingerprint, mismatch, error_db)


def export_checkpoint(ckpt: tp.Mapping[str, tp.Any], out: Path, *, source: str = "", replace: bool = False) -> Exported:
    """:func:`export_model` of a checkpoint dict (``codec.model.checkpoint.read_checkpoint``'s)."""
    from codec.audio.level import LevelSettings
    from codec.model.config import CodecConfig
    from codec.model.serving import inference_codec

    config = CodecConfig.from_dict(ckpt["model_config"])
    model = inference_codec(config, ckpt["model"], channels_last=False)
    fingerprint = tp.cast(bytes, model.source_fingerprint)
    levels = LevelSettings.from_checkpoint(ckpt).to_checkpoint()
    return export_model(model, fingerprint, levels, out, source=source, replace=replace)


def verify(model: Codec, folder: Path, seconds: float = 3.0, seed: int = 0) -> tuple[float, float]:
    """Run the export in ``folder`` and ``model`` on the same noise-excited test signal (speech-like
    spectra are not needed: the graphs are checked op for op) at every served bitrate; returns
    (share of frames whose codes differ, worst decoded-audio difference in dB below the signal).
    :class:`UserError` past :data:`MAX_CODE_MISMATCH` or :data:`MAX_AUDIO_ERROR_DB`."""
    config = model.config
    rng = np.random.default_rng(seed)
    n = int(seconds * config.sample_rate) // config.hop_length * config.hop_length
    t = np.arange(n) / config.sample_rate
    audio = 0.1 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(n)
    audio = audio.astype(np.float32)
    runtime = OnnxCodec.load(folder)
    with torch.no_grad():
        x = torch.from_numpy(audio).view(1, 1, -1)
        torch_codes = model.encode(x).numpy()[0]
    onnx_codes = runtime.encode_array(audio, config.n_codebooks)
    mismatch = float(np.mean(np.any(torch_codes != onnx_codes, axis=0)))
    worst = -math.inf
    for n_q in config.served_n_quantizers:
        with torch.no_grad():
            want = model.decode(torch.from_numpy(torch_codes[:n_q])[None]).numpy()[0, 0]
        got = runtime.decode_array(torch_codes[:n_q])
        error = float(np.sqrt(np.mean((got - want) ** 2)) / max(np.sqrt(np.mean(want**2)), 1e-12))
        worst = max(worst, 20 * math.log10(max(error, 1e-12)))
    if mismatch > MAX_CODE_MISMATCH or worst > MAX_AUDIO_ERROR_DB:
        raise UserError(
            f"the ONNX export differs from the model: codes of {mismatch:.2%} of frames, decoded audio "
            f"{worst:.1f} dB (limits {MAX_CODE_MISMATCH:.1%} and {MAX_AUDIO_ERROR_DB:g} dB); report this with "
            "the checkpoint"
        )
    return mismatch, worst


MAX_CODE_MISMATCH = 0.001  # share of frames whose codes may differ (near-ties of the code search)
MAX_AUDIO_ERROR_DB = -60.0  # decoded audio, RMS of the difference against the RMS of the audio
