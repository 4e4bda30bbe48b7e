"""Audio I/O and level measurement shared by the data stages.

Levels:

- ``peak_dbfs``: 20·log10(max |x|), full scale = 1.0.
- ``rms_dbfs``: 20·log10(sqrt(mean(x²))) over the whole clip (a full-scale sine
  reads -3.01 dBFS).
- ``integrated_lufs``: ITU-R BS.1770-4 integrated loudness (K-weighting, 400 ms
  blocks with 75 % overlap, -70 LUFS absolute and -10 LU relative gates).

The K-weighting filters are pyloudnorm's (``pyloudnorm.Meter``); only the block
gating is re-written here, vectorized with a cumulative sum, because pyloudnorm
loops over blocks in Python, which costs more than reading and writing the audio
does. ``tests/test_audio.py`` checks it agrees with ``Meter.integrated_loudness``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyloudnorm
import scipy.signal
import soundfile as sf
import soxr

from codec.files import atomic_path

Array = npt.NDArray[np.float32]

SILENCE_DB = -200.0  # what the level of digital silence reads as (not -inf, so CSVs stay numeric)


def db(x: float) -> float:
    """Amplitude ratio to decibels, with silence clamped to ``SILENCE_DB``."""
    return float(20.0 * np.log10(x)) if x > 0 else SILENCE_DB


def peak_dbfs(x: Array) -> float:
    """Sample peak of ``x`` (any shape) in dBFS."""
    return db(float(np.max(np.abs(x)))) if x.size else SILENCE_DB


def rms_dbfs(x: Array) -> float:
    """RMS level of ``x`` (any shape) in dBFS."""
    if not x.size:
        return SILENCE_DB
    return db(float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))))


def clipped_fraction(x: Array, threshold: float = 0.999) -> float:
    """Fraction of samples whose magnitude is at or above ``threshold``."""
    return float(np.count_nonzero(np.abs(x) >= threshold) / x.size) if x.size else 0.0


@functools.lru_cache(maxsize=16)
def _k_weighting_sos(rate: int) -> npt.NDArray[np.float64]:
    """pyloudnorm's two K-weighting biquads at ``rate`` as one SOS cascade."""
    meter = pyloudnorm.Meter(rate)
    sections = []
    gain = 1.0
    for stage in meter._filters.values():
        b, a = stage.b, stage.a
        sections.append(np.concatenate([np.asarray(b, np.float64) / a[0], np.asarray(a, np.float64) / a[0]]))
        gain *= stage.passband_gain
    sos = np.stack(sections)
    sos[0, :3] *= gain
    return sos


def integrated_lufs(x: Array, rate: int) -> float:
    """BS.1770-4 integrated loudness of mono ``x`` (shape ``[T]``) in LUFS.

    Returns ``-inf`` when no block passes the absolute gate (silence), like pyloudnorm.
    Raises ``ValueError`` when the clip is shorter than one 400 ms block.
    """
    if x.ndim != 1:
        raise ValueError(f"integrated_lufs expects mono audio [T], got shape {x.shape}")
    block_s, step = 0.4, 0.25
    n = x.shape[0]
    if n < block_s * rate:
        raise ValueError(f"audio of {n / rate:.3f} s is shorter than one {block_s} s gating block")
    # float32 filtering is 4x faster than float64 and agrees with pyloudnorm to ~1e-4 LU (tested).
    sos = _k_weighting_sos(rate).astype(np.float32)
    sq = np.square(scipy.signal.sosfilt(sos, x.astype(np.float32, copy=False)))
    # Block j covers samples [int(0.4·j·0.25·rate), int(0.4·(j·0.25+1)·rate)), as in pyloudnorm.
    num_blocks = int(np.round((n / rate - block_s) / (block_s * step))) + 1
    j = np.arange(num_blocks, dtype=np.float64)
    lo = (block_s * (j * step) * rate).astype(np.int64)
    hi = np.minimum((block_s * (j * step + 1) * rate).astype(np.int64), n)
    # Sum the squares once per stretch between block edges (100 ms steps), in float64,
    # then each block's energy is a difference of a short cumulative sum.
    edges = np.unique(np.concatenate([lo, hi]))
    seg = np.add.reduceat(sq[: edges[-1]], edges[:-1], dtype=np.float64) if edges.size > 1 else np.zeros(0)
    csum = np.concatenate([[0.0], np.cumsum(seg)])
    z = (csum[np.searchsorted(edges, hi)] - csum[np.searchsorted(edges, lo)]) / (block_s * rate)
    with np.errstate(divide="ignore"):
        block_lufs = -0.691 + 10.0 * np.log10(z)
    gated = z[block_lufs >= -70.0]
    if gated.size == 0:
        return float("-inf")
    relative = -0.691 + 10.0 * np.log10(np.mean(gated)) - 10.0
    final = z[(block_lufs > relative) & (block_lufs > -70.0)]
    if final.size == 0:
        return float("-inf")
    return float(-0.691 + 10.0 * np.log10(np.mean(final)))


def read_audio(path: str | Path) -> tuple[Array, int]:
    """Read any format libsndfile knows (WAV, FLAC, OGG, MP3, …) as float32 ``[T, C]``.

    Raises ``soundfile.LibsndfileError`` / ``RuntimeError`` for unreadable files
    and ``TruncatedAudioError`` when the file holds fewer frames than its header says.
    """
    with sf.SoundFile(str(path)) as f:
        declared = f.frames
        rate = f.samplerate
        fmt = f.format
        data = f.read(dtype="float32", always_2d=True)
    if declared > 0 and data.shape[0] < declared and fmt not in ("MP3", "OGG"):
        raise TruncatedAudioError(f"header declares {declared} frames but only {data.shape[0]} could be read")
    if fmt in ("WAV", "WAVEX"):
        _check_riff_data_size(Path(path))
    return data, int(rate)


def _check_riff_data_size(path: Path) -> None:
    """Raise ``TruncatedAudioError`` if a RIFF/WAVE 'data' chunk runs past the end of the file.

    libsndfile quietly shortens such files to what is there, which would turn a
    cut-off upload into a shorter, valid-looking clip.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk = f.read(8)
            cid, clen = chunk[:4], int.from_bytes(chunk[4:8], "little")
            if cid == b"data":
                if clen not in (0, 0xFFFFFFFF) and pos + 8 + clen > size:
                    raise TruncatedAudioError(
                        f"the WAV data chunk declares {clen} bytes but the file ends after {size - pos - 8}"
                    )
                return
            pos += 8 + clen + (clen & 1)


class TruncatedAudioError(RuntimeError):
    """The file ends before the number of frames its header declares."""


def to_mono(x: Array) -> Array:
    """Average the channels of ``[T, C]`` audio to ``[T]``."""
    if x.ndim == 1:
        return x
    if x.shape[1] == 1:
        return np.ascontiguousarray(x[:, 0])
    return x.mean(axis=1, dtype=np.float32)


def resample(x: Array, rate_in: int, rate_out: int) -> Array:
    """Resample mono ``[T]`` audio with libsoxr (high quality, linear phase)."""
    if rate_in == rate_out:
        return x
    return np.asarray(soxr.resample(x, rate_in, rate_out, quality="HQ"), dtype=np.float32)


def write_wav(path: str | Path, x: Array, rate: int, subtype: str = "FLOAT") -> None:
    """Write mono ``[T]`` audio as a WAV file, atomically."""
    with atomic_path(path) as tmp:
        sf.write(str(tmp), x, rate, subtype=subtype, format="WAV")
