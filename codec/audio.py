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
import io
import math
import os
import threading
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyloudnorm
import scipy.io.wavfile
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


# BS.1770's -70 LUFS absolute gate as a block energy: ``-0.691 + 10·log10(z) >= -70``.
_ABSOLUTE_GATE_ENERGY = 10.0 ** ((-70.0 + 0.691) / 10.0)


def gate_block_energies(z: npt.NDArray[np.float64]) -> float:
    """BS.1770-4 integrated loudness (LUFS) from mono 400 ms block energies ``z``:
    -70 LUFS absolute gate, then the -10 LU relative gate; ``-inf`` when nothing passes.

    Both gates are compared as energies (the relative gate is a tenth of the mean
    energy of the blocks that pass the absolute one), so only the result takes a log.
    """
    passed = z[z >= _ABSOLUTE_GATE_ENERGY]
    if passed.size == 0:
        return float("-inf")
    final = passed[passed > 0.1 * float(np.mean(passed))]
    if final.size == 0:
        return float("-inf")
    return -0.691 + 10.0 * math.log10(float(np.mean(final)))


def k_filter(sos: npt.NDArray[np.float32], x: Array) -> Array:
    """``scipy.signal.sosfilt(sos, x)`` from rest, for C-contiguous float32 ``sos`` and mono ``x``.

    Calls scipy's compiled cascade directly when this scipy has it: the public
    function's argument handling costs ~75 µs a call, more than filtering the few
    milliseconds around a clip's peaks that the make-up loop re-meters. Same values
    (tested against ``sosfilt``).
    """
    if _sosfilt_kernel is None or sos.dtype != np.float32:
        return np.asarray(scipy.signal.sosfilt(sos, x), np.float32)
    y = np.array(x, dtype=np.float32, copy=True, order="C").reshape(1, -1)
    _sosfilt_kernel(np.ascontiguousarray(sos), y, np.zeros((1, sos.shape[0], 2), np.float32))
    return y[0]


try:  # scipy's private kernel behind sosfilt (scipy is pinned in the lock; the public path is the fallback)
    from scipy.signal._sosfilt import _sosfilt as _sosfilt_kernel
except ImportError:  # pragma: no cover - other scipy layouts
    _sosfilt_kernel = None


class LoudnessMeter:
    """BS.1770-4 integrated loudness of one mono clip, re-measurable after gain or limiting.

    The K-weighted signal and its energy per 100 ms stretch between block edges
    are computed once. Loudness after a gain is then exact arithmetic, and after
    a limiter that touched a few short spans only those spans (plus the filter's
    decay) are filtered again: K-weighting is linear, so for ``y = g·x − d``,
    ``K(y) = g·K(x) − K(d)`` with ``d`` zero outside the spans.
    """

    BLOCK_S, STEP = 0.4, 0.25

    def __init__(self, x: Array, rate: int) -> None:
        if x.ndim != 1:
            raise ValueError(f"loudness metering expects mono audio [T], got shape {x.shape}")
        n = x.shape[0]
        if n < self.BLOCK_S * rate:
            raise ValueError(f"audio of {n / rate:.3f} s is shorter than one {self.BLOCK_S} s gating block")
        self.rate, self.n = rate, n
        # float32 filtering is 4x faster than float64 and agrees with pyloudnorm to ~1e-5 LU (tested).
        self.sos = _k_weighting_sos(rate).astype(np.float32)
        self.kx = k_filter(self.sos, x)
        # Block j covers samples [int(0.4·j·0.25·rate), int(0.4·(j·0.25+1)·rate)), as in pyloudnorm.
        num_blocks = int(np.round((n / rate - self.BLOCK_S) / (self.BLOCK_S * self.STEP))) + 1
        j = np.arange(num_blocks, dtype=np.float64)
        lo = (self.BLOCK_S * (j * self.STEP) * rate).astype(np.int64)
        hi = np.minimum((self.BLOCK_S * (j * self.STEP + 1) * rate).astype(np.int64), n)
        # Energy once per stretch between block edges, so each block's energy is a
        # difference of a short (float64) cumulative sum.
        self.edges = np.unique(np.concatenate([lo, hi]))
        # Stretches are 100 ms long (the hop) except where a block's end is clipped to
        # the clip's end: the regular ones are summed as the rows of a 2-D view in
        # float32 (~1e-6 relative), 15x faster than ``reduceat``, the rest by ``reduceat``.
        widths = np.diff(self.edges)
        step = int(widths[0])
        regular = int(np.argmax(widths != step)) if np.any(widths != step) else len(widths)
        rows = self.kx[: regular * step].reshape(regular, step)
        head = np.einsum("ij,ij->i", rows, rows).astype(np.float64)
        rest = (
            np.add.reduceat(
                np.square(self.kx[regular * step : self.edges[-1]], dtype=np.float64),
                self.edges[regular:-1] - regular * step,
            )
            if regular < len(widths)
            else np.zeros(0)
        )
        self.seg = np.concatenate([head, rest])
        self.energy = float(self.seg.sum())  # of the K-weighted signal, to the last block edge
        self._lo = np.searchsorted(self.edges, lo)
        self._hi = np.searchsorted(self.edges, hi)
        # Energy of the K-filter's impulse response left after 20/30/50 ms: -56/-75/-108 dB
        # (the same at any rate; its slowest pole is the 38 Hz high-pass). Cutting the
        # response to a changed span after 30 ms errs by < 1e-3 LU (tested against a
        # fresh meter): the removed peaks carry a few percent of a block's energy.
        self.tail = int(0.03 * rate)

    def _gate(self, seg: npt.NDArray[np.float64]) -> float:
        csum = np.concatenate([[0.0], np.cumsum(seg)])
        return gate_block_energies((csum[self._hi] - csum[self._lo]) / (self.BLOCK_S * self.rate))

    def lufs(self, gain: float = 1.0) -> float:
        """Integrated loudness of ``gain · x``."""
        return self._gate(self.seg * (gain * gain))

    def lufs_minus(
        self, gain: float, starts: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64], removed: Array
    ) -> float:
        """Integrated loudness of ``gain · x − d``, where ``d`` is ``removed`` laid over the spans
        ``[starts[i], starts[i] + lengths[i])`` back to back (sorted, disjoint) and 0 elsewhere.

        Spans whose filter tails overlap are grouped; the groups, each followed by
        the filter's decay, are laid end to end and K-filtered in one call (a group
        starts after the previous one's response has died away, as if from rest),
        and each sample's change of energy is added to its stretch between block edges.
        """
        seg = self.seg * (gain * gain)
        if len(starts) == 0:
            return self._gate(seg)
        ends = starts + lengths
        # A new group starts where a span begins after the previous span's tail.
        new_group = np.concatenate([[True], starts[1:] > ends[:-1] + self.tail])
        group_of = np.cumsum(new_group) - 1
        g_start = starts[new_group]
        g_end = np.minimum(self.n, np.maximum.reduceat(ends, np.flatnonzero(new_group)) + self.tail)
        g_len = g_end - g_start
        offsets = np.cumsum(g_len) - g_len
        total = int(g_len.sum())
        pos = concat_ranges(g_start, g_len)  # the clip sample in each slot
        d = np.zeros(total, np.float32)
        slot = concat_ranges(offsets[group_of] + starts - g_start[group_of], lengths)
        d[slot] = removed
        old = np.float32(gain) * self.kx[pos]
        new = old - k_filter(self.sos, d)
        delta = np.square(new, dtype=np.float64) - np.square(old, dtype=np.float64)
        # Cut each group where block edges fall, sum the pieces, and add each sum to
        # its stretch (stretch ``len(seg)`` is past the last edge and dropped).
        first = np.searchsorted(self.edges, g_start, side="right") - 1
        pieces = np.searchsorted(self.edges, g_end, side="left") - first
        stretch = concat_ranges(first, pieces)
        owner = np.repeat(np.arange(len(g_start)), pieces)
        cut = offsets[owner] + np.maximum(self.edges[np.minimum(stretch, len(self.edges) - 1)] - g_start[owner], 0)
        sums = np.add.reduceat(delta, cut)
        seg += np.bincount(stretch, weights=sums, minlength=len(seg) + 1)[: len(seg)]
        return self._gate(np.maximum(seg, 0.0))


def concat_ranges(starts: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """``range(starts[i], starts[i] + lengths[i])`` for every ``i``, concatenated, without a Python loop."""
    offsets = np.cumsum(lengths) - lengths
    return np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(starts - offsets, lengths)


def integrated_lufs(x: Array, rate: int) -> float:
    """BS.1770-4 integrated loudness of mono ``x`` (shape ``[T]``) in LUFS.

    Returns ``-inf`` when no block passes the absolute gate (silence), like pyloudnorm.
    Raises ``ValueError`` when the clip is shorter than one 400 ms block.
    """
    return LoudnessMeter(x, rate).lufs()


def read_audio(path: str | Path) -> tuple[Array, int]:
    """Read any format libsndfile knows (WAV, FLAC, OGG, MP3, …) as float32 ``[T, C]``.

    Raises ``soundfile.LibsndfileError`` / ``RuntimeError`` for unreadable files
    and ``TruncatedAudioError`` when the file holds fewer frames than its header says.
    """
    plain = _read_pcm16_wav(Path(path))
    if plain is not None:
        return plain
    with sf.SoundFile(str(path)) as f:
        declared = f.frames
        rate = f.samplerate
        fmt = f.format
        if f.subtype == "PCM_16":
            # Reading 16-bit samples and scaling them here is twice as fast as
            # libsndfile's own float conversion, and gives the same values.
            data = np.multiply(f.read(dtype="int16", always_2d=True), np.float32(1 / 32768), dtype=np.float32)
        else:
            data = f.read(dtype="float32", always_2d=True)
    if declared > 0 and data.shape[0] < declared and fmt not in ("MP3", "OGG"):
        raise TruncatedAudioError(f"header declares {declared} frames but only {data.shape[0]} could be read")
    if fmt in ("WAV", "WAVEX"):
        _check_riff_data_size(Path(path))
    return data, int(rate)


def _read_pcm16_wav(path: Path) -> tuple[Array, int] | None:
    """A plain 16-bit PCM WAV through the standard library's reader, or ``None`` for anything else.

    The common case of the data stages: one open and one read, where libsndfile plus
    the RIFF size check open the file twice (half the time per file). Scaled as the
    libsndfile path scales 16-bit samples, so both give identical arrays. Files the
    reader refuses (other encodings, WAVE_FORMAT_EXTENSIBLE, broken headers) and
    data chunks of unknown length go to libsndfile, which reports its own errors.
    """
    if path.suffix.lower() != ".wav":
        return None
    try:
        with open(path, "rb") as f, wave.open(f, "rb") as w:
            channels, width, rate, frames = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            if width != 2 or rate <= 0 or frames <= 0 or frames * channels * 2 >= 0xFFFFFFFF - 3:
                return None
            # The reader stops at the start of the samples: a header that declares more
            # than the file holds is refused before anything that size is allocated.
            available = (os.fstat(f.fileno()).st_size - f.tell()) // (2 * channels)
            raw = w.readframes(frames) if available >= frames else b""
    except (wave.Error, EOFError, OSError, ValueError):
        return None
    got = len(raw) // (2 * channels) if raw else available
    if got < frames:
        raise TruncatedAudioError(f"header declares {frames} frames but only {got} could be read")
    pcm = np.frombuffer(raw, dtype="<i2").reshape(frames, channels)
    return np.multiply(pcm, np.float32(1 / 32768), dtype=np.float32), rate


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
    """Resample mono ``[T]`` audio with libsoxr (high quality, linear phase).

    The same samples as ``soxr.resample(x, rate_in, rate_out, "HQ")`` (tested), from
    one resampler per rate pair and thread, cleared after each clip: ~8 % faster than
    a new one per call on five-second clips (``clear()`` redoes part of the setup,
    ~0.15 ms a call).
    """
    if rate_in == rate_out:
        return x
    stream = _resampler(rate_in, rate_out)
    try:
        y = stream.resample_chunk(np.asarray(x, np.float32), last=True)
    finally:
        stream.clear()
    return np.asarray(y, dtype=np.float32)


_local = threading.local()


def _resampler(rate_in: int, rate_out: int) -> soxr.ResampleStream:
    streams: dict[tuple[int, int], soxr.ResampleStream] = _local.__dict__.setdefault("resamplers", {})
    if (rate_in, rate_out) not in streams:
        if len(streams) >= 8:
            streams.clear()
        streams[(rate_in, rate_out)] = soxr.ResampleStream(rate_in, rate_out, 1, dtype="float32", quality="HQ")
    return streams[(rate_in, rate_out)]


def write_wav(path: str | Path, x: Array, rate: int, subtype: str = "FLOAT", atomic: bool = True) -> None:
    """Write mono ``[T]`` audio as a WAV file, atomically unless ``atomic=False``.

    The WAV is formatted in memory and written with one system call: libsndfile
    fsyncs every file it closes, which costs more than the rest of a
    normalization. Stages that write into a staging folder swapped in as a whole
    pass ``atomic=False``: the folder's rename already guarantees readers never
    see a partial file, and a temporary name plus a rename per file costs as
    much again as the write.
    """
    if subtype == "PCM_16" and x.ndim == 1:
        # The standard library's writer takes the samples as they are: 4x faster than
        # libsndfile's conversion through Python file callbacks. Scaled by 32768 to
        # mirror ``read_audio``, so what is read back is exactly what was written.
        pcm = np.clip(np.rint(x * np.float32(32768)), -32768, 32767).astype("<i2")

        def emit(target: Path) -> None:
            with wave.open(str(target), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(rate)
                w.writeframes(pcm.data)

    else:
        buf = io.BytesIO()
        if subtype == "FLOAT":
            # scipy's writer, not libsndfile's: libsndfile adds a PEAK chunk stamped with the
            # time of writing to float WAVs, so the same audio gave different bytes (and a
            # new DVC hash for data/raw, re-running every stage after it) on each run.
            scipy.io.wavfile.write(buf, rate, np.asarray(x, dtype=np.float32))
        else:
            sf.write(buf, x, rate, subtype=subtype, format="WAV")

        def emit(target: Path) -> None:
            target.write_bytes(buf.getbuffer())

    if not atomic:
        emit(Path(path))
        return
    with atomic_path(path) as tmp:
        emit(tmp)
