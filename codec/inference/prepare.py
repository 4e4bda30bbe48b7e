"""Bringing an input to the level the model was trained at: one pass, the same for a file and
for samples in memory (no torch import at module level).

A model was trained on speech at one loudness under one peak ceiling
(:class:`codec.audio.level.LevelSettings`, recorded in its checkpoint), so every input goes
through the same steps before it is encoded, whoever encodes it (``codec encode``, evaluation,
the served model, the benchmarks):

1. one pass over the input in blocks of :data:`READ_BLOCK` frames (``soundfile`` blocks of a
   file, or slices of an array): refuse non-finite samples (naming where), mix down to mono,
   resample to the model's rate (soxr HQ, streaming: the same samples as a whole-signal
   resample), meter BS.1770 loudness as the samples go by
   (:class:`codec.audio.loudness.StreamingLoudness`), and keep the mono model-rate samples in a
   file (an unlinked temporary file for ``codec encode``: 64 kB per second at 16 kHz, so a long
   recording never sits in memory; a ``BytesIO`` for samples already in memory);
2. the gain is known only now (integrated loudness needs the whole input):
   :func:`codec.audio.level.gain_for`; so is the input's DC offset (its mean), which is
   subtracted from every sample (exactly, with no filter's phase shift): the codec does not code
   a constant, and counted as signal by the energy side information it would raise the decoded
   level;
3. :class:`PreparedAudio` serves the gained, peak-limited samples slice by slice: each slice is
   read with a margin of a few limiter windows, so it equals limiting the whole signal.

A file and the same samples in memory give the same blocks in the same order, so the same
bytes downstream: evaluation measures exactly what ``codec encode`` writes.
"""

from __future__ import annotations

import dataclasses
import io
import math
import typing as tp
from pathlib import Path

import numpy as np
import numpy.typing as npt

from codec.audio import Array
from codec.audio.io import (
    TruncatedAudioError,
    check_riff_data_size,
    mixdown_drop_db,
    mixdown_energies,
    open_sound,
    to_mono,
)
from codec.audio.level import Level, LevelSettings, gain_for
from codec.audio.limiter import limit
from codec.audio.loudness import StreamingLoudness, loudness_lufs
from codec.errors import UserError
from codec.inference import bitstream
from codec.inference.bitstream import MAX_SECONDS

READ_BLOCK = 1 << 16  # input frames per block
SLICE_MARGIN_WINDOWS = 4  # limiter support is 1.5 windows each side; 4 leaves room


class InferenceError(UserError):
    """The input cannot be coded (empty, non-finite samples, a bitrate the model does not serve)."""


def check_input_path(path: Path, *, allow_empty: bool = True) -> None:
    """:class:`UserError` unless ``path`` is an existing, readable file (and, unless
    ``allow_empty``, not 0 bytes long)."""
    if not path.exists():
        raise UserError(f"{path}: no such file; pass an existing recording")
    if not path.is_file():
        raise UserError(f"{path}: not a file; pass a recording")
    try:
        with path.open("rb"):
            pass
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror or e}); check its permissions") from None
    if not allow_empty and path.stat().st_size == 0:
        raise UserError(f"{path}: empty file (0 bytes), no audio in it; pass a recording")


class FloatFile:
    """Float32 samples in a binary file, read by slices (``x[a:b]``) without mapping the
    file, so reading it does not grow the resident memory by the file's size."""

    def __init__(self, fileobj: tp.BinaryIO, length: int) -> None:
        self._f = fileobj
        self.shape = (int(length),)

    def __getitem__(self, index: slice) -> Array:
        start, stop, step = index.indices(self.shape[0])
        if step != 1:
            raise ValueError("FloatFile supports contiguous slices only")
        if stop <= start:
            return np.zeros(0, np.float32)
        self._f.seek(4 * start)
        data = self._f.read(4 * (stop - start))
        return np.frombuffer(data, dtype="<f4").astype(np.float32)


class PreparedAudio:
    """The gained, peak-limited samples of a :class:`FloatFile`, sliced on demand.

    ``x[a:b]`` reads ``[a - m, b + m)`` (``m`` a few limiter windows), applies the gain and
    :func:`codec.audio.limiter.limit`, and returns ``[a, b)``: the limiter's gain curve at a
    sample depends only on samples within 1.5 windows of it, so the slice equals the
    whole-signal result. ``limiter_db`` is the largest reduction applied to what was read.
    """

    def __init__(self, raw: FloatFile, gain_db: float, ceiling: float | None, window: int, offset: float = 0.0) -> None:
        self._raw = raw
        self.shape = raw.shape
        self._scale = np.float32(10.0 ** (gain_db / 20.0))
        self._offset = np.float32(offset)
        self._ceiling = ceiling
        self._window = int(window)
        self.limiter_db = 0.0

    def __getitem__(self, index: slice) -> Array:
        start, stop, _ = index.indices(self.shape[0])
        stop = max(start, stop)
        margin = SLICE_MARGIN_WINDOWS * self._window + 2
        lo, hi = max(0, start - margin), min(self.shape[0], stop + margin)
        y = ((self._raw[lo:hi] - self._offset) * self._scale).astype(np.float32)
        if self._ceiling is not None and y.shape[0]:
            y, reduction = limit(y, self._ceiling, self._window)
            self.limiter_db = max(self.limiter_db, float(-20.0 * np.log10(np.min(reduction))))
        return np.ascontiguousarray(y[start - lo : stop - lo], dtype=np.float32)

    def gained(self, start: int, stop: int) -> Array:
        """Samples ``[start, stop)`` gained but not limited: what the energy side information
        measures, so the decoded level is the input's, not the limited signal's."""
        return ((self._raw[start:stop] - self._offset) * self._scale).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """An input at the model's rate and the training level, ready to encode.

    - ``audio``: mono, gained and peak-limited, sliced on demand (:meth:`samples` reads it all)
    - ``sample_rate``, ``length``, ``channels``: the original input's
    - ``model_rate``: the rate of ``audio``
    - ``input_lufs``: integrated loudness of the input (mono, at the model's rate); ``-inf`` for
      digital silence or input below the -70 LUFS gate
    - ``gain_db``: the gain applied (float32-exact); decode divides by it
    - ``level``: which case of the gain rule applied (:func:`codec.audio.level.gain_for`)
    - ``settings``: the level settings it was prepared with
    """

    audio: PreparedAudio
    sample_rate: int
    length: int
    channels: int
    model_rate: int
    input_lufs: float
    gain_db: float
    level: Level
    settings: LevelSettings

    @property
    def silent(self) -> bool:
        return self.level == "silent"

    def samples(self) -> Array:
        """The whole prepared signal ``[T']`` (small inputs and tests; encoding slices it)."""
        return self.audio[0 : self.audio.shape[0]]

    @property
    def limiter_db(self) -> float:
        """The largest gain reduction the peak limiter applied to what has been read so far."""
        return self.audio.limiter_db


def _blocks_of_array(x: Array) -> tp.Iterator[Array]:
    for start in range(0, x.shape[0], READ_BLOCK):
        yield x[start : start + READ_BLOCK]


class _Ingested(tp.NamedTuple):
    raw: FloatFile  # the mono model-rate samples
    length: int  # the input's frames
    lufs: float  # its integrated loudness (-inf: silent or below the gate)
    silent: bool  # digital silence
    offset: float  # its DC offset: the mean of ``raw``


def _ingest(blocks: tp.Iterable[Array], rate: int, model_rate: int, tmp: tp.BinaryIO, name: str) -> _Ingested:
    """Step 1 of the module docstring over ``blocks`` (``[n, C]`` float32 at ``rate``)."""
    import soxr

    meter = StreamingLoudness(model_rate)
    stream = soxr.ResampleStream(rate, model_rate, 1, dtype="float32", quality="HQ") if rate != model_rate else None
    length = 0
    nonzero = False
    mix_energy = channel_energy = 0.0  # sums of squares: the mono mix's, the channels' mean
    total = 0.0  # sum of the mono model-rate samples

    def emit(y: Array) -> None:
        nonlocal nonzero, total
        if y.shape[0]:
            nonzero = nonzero or bool(np.any(y))
            total += float(np.sum(y, dtype=np.float64))
            meter.add(y)
            tmp.write(np.ascontiguousarray(y, dtype="<f4").tobytes())

    for block in blocks:
        finite = np.isfinite(block)
        if not np.all(finite):
            where = (length + int(np.argmin(finite.all(axis=1)))) / rate
            raise InferenceError(f"{name}: holds NaN or infinite samples (at {where:.3f} s); fix or re-export it")
        length += block.shape[0]
        if length > rate * MAX_SECONDS:
            raise UserError(f"{name}: longer than the {MAX_SECONDS // 3600} h limit")
        mono = to_mono(block)
        if block.shape[1] > 1:
            mix, channel = mixdown_energies(block)
            mix_energy, channel_energy = mix_energy + mix, channel_energy + channel
        emit(stream.resample_chunk(mono, last=False) if stream is not None else mono)
    if stream is not None:
        emit(stream.resample_chunk(np.zeros(0, np.float32), last=True))
    if length == 0:
        raise InferenceError(f"{name}: holds no audio samples (an empty file?); pass a recording")
    check_mixdown(mix_energy, channel_energy, length, name)
    n = meter.samples
    if n == 0:  # a few samples at a high rate resample to nothing: one zero
        tmp.write(np.zeros(1, "<f4").tobytes())
        n = 1
    tmp.flush()
    audio = FloatFile(tmp, n)
    if not nonzero:
        lufs = -math.inf
    elif n < StreamingLoudness.BLOCK_S * model_rate:  # short: the whole clip is a few KB
        lufs = loudness_lufs(audio[0:n], model_rate)
    else:
        lufs = meter.integrated()
    return _Ingested(audio, length, lufs, not nonzero, total / n)


def check_mixdown(mix_energy: float, channel_energy: float, length: int, name: str) -> None:
    """:class:`InferenceError` when the channels cancel in the mono mix (one in anti-phase,
    :func:`codec.audio.io.mixdown_drop_db`): coding the near-silent mix would lose the
    recording without a word."""
    drop_db = mixdown_drop_db(mix_energy, channel_energy, length)
    if drop_db is not None:
        raise InferenceError(
            f"{name}: its channels cancel when mixed down to mono (the mix is {drop_db:.0f} dB below the "
            "channels: one is in anti-phase); re-export it with one channel, or with the phase fixed "
            "(e.g. sox in.wav out.wav remix 1)"
        )


def _prepared(ing: _Ingested, rate: int, channels: int, model_rate: int, levels: LevelSettings) -> Prepared:
    gain_db, level = gain_for(ing.lufs, ing.silent, levels.target_lufs, levels.max_gain_db)
    audio = PreparedAudio(ing.raw, gain_db, levels.ceiling, levels.limiter_window(model_rate), ing.offset)
    return Prepared(
        audio, int(rate), ing.length, int(channels), int(model_rate), float(ing.lufs), gain_db, level, levels
    )


def check_rate(rate: int, name: str) -> None:
    """:class:`UserError` unless a bitstream can carry ``rate``."""
    if not bitstream.MIN_SAMPLE_RATE <= rate <= bitstream.MAX_SAMPLE_RATE:
        raise UserError(
            f"{name}: sample rate {rate} Hz is outside the {bitstream.MIN_SAMPLE_RATE}.."
            f"{bitstream.MAX_SAMPLE_RATE} Hz a bitstream carries; resample it first (say to 48000 Hz)"
        )


def prepare(
    audio: npt.NDArray[np.floating[tp.Any]],
    sample_rate: int,
    model_rate: int,
    levels: LevelSettings | None = None,
    *,
    name: str = "the input",
) -> Prepared:
    """Prepare samples in memory (``[T]`` or ``[T, C]`` at ``sample_rate``) for a model at
    ``model_rate``: the same steps, blocks and numbers as :func:`prepare_file` on a FLOAT WAV
    of them. :class:`UserError` for empty input, non-finite samples or an unusable rate."""
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim not in (1, 2):
        raise InferenceError(f"{name}: audio must be [samples] or [samples, channels], got shape {x.shape}")
    x = x.reshape(x.shape[0], -1) if x.ndim == 2 else x[:, None]
    if x.shape[1] == 0:
        raise InferenceError(f"{name}: holds no audio channels; pass a recording")
    check_rate(int(sample_rate), name)
    ing = _ingest(_blocks_of_array(x), int(sample_rate), int(model_rate), io.BytesIO(), name)
    return _prepared(ing, sample_rate, x.shape[1], model_rate, levels or LevelSettings())


def prepare_file(path: Path, model_rate: int, levels: LevelSettings, tmp: tp.BinaryIO) -> Prepared:
    """Prepare the recording at ``path`` (any format libsndfile reads), keeping its mono
    model-rate samples in ``tmp``. :class:`UserError` for an unreadable, empty, truncated,
    too long or non-finite input."""

    check_input_path(path, allow_empty=False)  # libsndfile would say "Format not recognised"
    try:
        f = open_sound(path)  # a name that is not UTF-8 opens too; a streaming WAV is read to its end
    except Exception as e:  # libsndfile's message names the problem (format, header, …)
        raise UserError(f"{path}: not an audio file this tool can read ({_one_line(e)})") from None
    with f:
        rate, channels, declared, fmt = int(f.samplerate), int(f.channels), int(f.frames), f.format
        check_rate(rate, str(path))
        if declared > rate * MAX_SECONDS:
            raise UserError(f"{path}: {declared / rate / 3600:.1f} h is longer than the {MAX_SECONDS // 3600} h limit")
        read = _Reader(f)
        try:
            ing = _ingest(read, rate, int(model_rate), tmp, str(path))
        except UserError:
            raise
        except Exception as e:  # a decoder error in the middle of the file
            raise UserError(f"{path}: cannot be decoded after {read.frames / rate:.2f} s ({_one_line(e)})") from None
    if declared > 0 and ing.length < declared and fmt not in ("MP3", "OGG"):
        raise UserError(f"{path}: truncated: the header declares {declared} frames but only {ing.length} could be read")
    if fmt in ("WAV", "WAVEX"):
        try:
            check_riff_data_size(path)
        except TruncatedAudioError as e:
            raise UserError(f"{path}: truncated: {e}") from None
    return _prepared(ing, rate, channels, model_rate, levels)


class _Reader:
    """A sound file's blocks of :data:`READ_BLOCK` frames, counting the frames read."""

    def __init__(self, f: tp.Any) -> None:
        self._f = f
        self.frames = 0

    def __iter__(self) -> tp.Iterator[Array]:
        for block in self._f.blocks(blocksize=READ_BLOCK, dtype="float32", always_2d=True):
            yield block
            self.frames += block.shape[0]


def _one_line(e: BaseException) -> str:
    text = str(e).strip().replace("\n", " ")
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
