"""Files in, files out: ``codec encode`` (a recording of any length, read in blocks, to a
bitstream) and ``codec decode`` (a bitstream to a WAV at the input's rate, length and level).

Encoding takes the same steps as :func:`codec.inference.pipeline.prepare` and
:func:`codec.inference.pipeline.encode_to_stream` (mix down, resample to the model's rate,
measure BS.1770 loudness, gain to the training loudness, limit peaks, encode chunk by chunk),
but streamed from the file, so a long recording never sits in memory:

1. one pass over the input (``soundfile`` blocks): mix down, resample (soxr, streaming: the
   same samples as a whole-file resample), meter the loudness as the samples go by
   (:class:`codec.audio.loudness.StreamingLoudness`: K-weighting with carried filter state,
   energies summed per 100 ms step; the gating needs only those sums, 10 floats per second),
   and write the mono model-rate samples to an unlinked temporary file (4 bytes per sample: 64
   kB per second at 16 kHz, less than the input file itself for 44.1 kHz 16-bit audio);
2. the gain is known only now (integrated loudness needs the whole file: one pass);
3. :func:`codec.inference.pipeline.encode_codes` reads the temporary file chunk by chunk
   through :class:`PreparedAudio`, which applies the gain and the look-ahead limiter to each
   slice with enough margin that the result equals limiting the whole signal; the codes go to
   :func:`codec.inference.bitstream.write_stream` chunk by chunk.

Memory is bounded by the chunk size (10 s of audio and its codes), not by the file: a
10-minute input is measured in ``tests/test_codec_cli.py``.

Decoding checks the header against the file before decoding anything: the file must hold
exactly the bytes the header's frame count implies, the stream must be at most
``max_seconds`` long, and the WAV it makes at most ``max_output_bytes``
(:data:`DEFAULT_MAX_OUTPUT_MB`, 4 GB, unless raised: ``codec decode --max-output-mb``).

Both write their output under a temporary name beside it (:func:`codec.files.atomic_path`)
and rename it into place, so a failure leaves no partial file. A ``kill -9`` cannot be
cleaned up after, so the next successful run for the same output removes the partial files
such a run left (:func:`remove_stale_partials`): a writer holds an exclusive ``flock`` on
its partial file while it writes, which the kernel drops when the process dies, however
it dies, so a partial file nobody holds a lock on, last modified before this run began,
has no live writer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import math
import os
import re
import stat
import tempfile
import time
import typing as tp
from pathlib import Path

import numpy as np

from codec.audio import Array
from codec.audio.io import TruncatedAudioError, check_riff_data_size, to_mono
from codec.audio.limiter import limit
from codec.audio.loudness import StreamingLoudness, loudness_lufs
from codec.errors import UserError
from codec.files import atomic_path
from codec.inference import bitstream
from codec.inference import energy as side
from codec.inference.bitstream import MAX_SECONDS
from codec.inference.energy import Energy, EnergySettings

if tp.TYPE_CHECKING:
    from codec.inference.bitstream import Header
    from codec.inference.model_source import LoadedModel
    from codec.inference.pipeline import CodecLike


READ_BLOCK = 1 << 16  # input frames per read


SLICE_MARGIN_WINDOWS = 4  # limiter support is 1.5 windows each side; 4 leaves room


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


@dataclasses.dataclass
class Ingested:
    """What :func:`ingest_stream` returns: the mono model-rate samples (``audio``, in a
    temporary file) and what :func:`codec.inference.pipeline.prepare` would have measured."""

    audio: FloatFile
    sample_rate: int
    length: int
    channels: int
    model_rate: int
    input_lufs: float
    silent: bool


def ingest_stream(path: Path, model_rate: int, tmp: tp.BinaryIO) -> Ingested:
    """Pass 1 over ``path``: mono at ``model_rate`` into ``tmp``, loudness metered on the way.

    :class:`UserError` for an unreadable, empty, truncated or non-finite input.
    """
    import soundfile as sf
    import soxr

    check_input_path(path, allow_empty=False)  # libsndfile would say "Format not recognised"
    try:
        f = sf.SoundFile(os.fsencode(path))  # bytes: a name that is not UTF-8 opens too
    except Exception as e:  # libsndfile's message names the problem (format, header, …)
        raise UserError(f"{path}: not an audio file this tool can read ({_one_line(e)})") from None
    with f:
        rate, channels, declared, fmt = int(f.samplerate), int(f.channels), int(f.frames), f.format
        if not bitstream.MIN_SAMPLE_RATE <= rate <= bitstream.MAX_SAMPLE_RATE:
            raise UserError(
                f"{path}: sample rate {rate} Hz is outside the {bitstream.MIN_SAMPLE_RATE}.."
                f"{bitstream.MAX_SAMPLE_RATE} Hz a bitstream carries; resample it first (say to 48000 Hz)"
            )
        if declared > rate * MAX_SECONDS:
            raise UserError(f"{path}: {declared / rate / 3600:.1f} h is longer than the {MAX_SECONDS // 3600} h limit")
        meter = StreamingLoudness(model_rate)
        stream = soxr.ResampleStream(rate, model_rate, 1, dtype="float32", quality="HQ") if rate != model_rate else None
        length = 0
        nonzero = False

        def emit(y: Array) -> None:
            nonlocal nonzero
            if y.shape[0]:
                nonzero = nonzero or bool(np.any(y))
                meter.add(y)
                tmp.write(np.ascontiguousarray(y, dtype="<f4").tobytes())

        try:
            for block in f.blocks(blocksize=READ_BLOCK, dtype="float32", always_2d=True):
                if not np.all(np.isfinite(block)):
                    raise UserError(
                        f"{path}: holds NaN or infinite samples (near {length / rate:.2f} s); fix or re-export it"
                    )
                length += block.shape[0]
                if length > rate * MAX_SECONDS:
                    raise UserError(f"{path}: longer than the {MAX_SECONDS // 3600} h limit")
                mono = to_mono(block)
                emit(stream.resample_chunk(mono, last=False) if stream is not None else mono)
            if stream is not None:
                emit(stream.resample_chunk(np.zeros(0, np.float32), last=True))
        except UserError:
            raise
        except Exception as e:  # a decoder error in the middle of the file
            raise UserError(f"{path}: cannot be decoded after {length / rate:.2f} s ({_one_line(e)})") from None
    if declared > 0 and length < declared and fmt not in ("MP3", "OGG"):
        raise UserError(f"{path}: truncated: the header declares {declared} frames but only {length} could be read")
    if fmt in ("WAV", "WAVEX"):
        try:
            check_riff_data_size(path)
        except TruncatedAudioError as e:
            raise UserError(f"{path}: truncated: {e}") from None
    if length == 0:
        raise UserError(f"{path}: holds no audio samples (an empty file); pass a recording")
    n = meter.samples
    if n == 0:  # a few samples at a high rate resample to nothing: one zero, as prepare does
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
    return Ingested(audio, rate, length, channels, int(model_rate), lufs, not nonzero)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().replace("\n", " ")
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def gain_for(input_lufs: float, silent: bool, target_lufs: float, max_gain_db: float) -> float:
    """The gain :func:`codec.inference.pipeline.prepare` applies, rounded to float32 as there."""
    # Silence, or below BS.1770's absolute gate: nothing to normalize (0 dB).
    quiet = silent or not math.isfinite(input_lufs)
    return float(np.float32(0.0 if quiet else min(target_lufs - input_lufs, max_gain_db)))


class PreparedAudio:
    """The gained, peak-limited samples of a :class:`FloatFile`, sliced on demand.

    ``x[a:b]`` reads ``[a - m, b + m)`` (``m`` a few limiter windows), applies the gain
    and :func:`codec.audio.limiter.limit` as :func:`codec.inference.pipeline.prepare` does to the
    whole signal, and returns ``[a, b)``: the limiter's gain curve at a sample depends
    only on samples within 1.5 windows of it, so the slice equals the whole-signal result.
    """

    def __init__(self, raw: FloatFile, gain_db: float, peak_ceiling_db: float | None, window: int) -> None:
        self._raw = raw
        self.shape = raw.shape
        self._scale = np.float32(10.0 ** (gain_db / 20.0))
        self._ceiling = None if peak_ceiling_db is None else 10.0 ** (peak_ceiling_db / 20.0)
        self._window = int(window)
        self.limiter_db = 0.0

    def __getitem__(self, index: slice) -> Array:

        start, stop, _ = index.indices(self.shape[0])
        stop = max(start, stop)
        margin = SLICE_MARGIN_WINDOWS * self._window + 2
        lo, hi = max(0, start - margin), min(self.shape[0], stop + margin)
        y = (self._raw[lo:hi] * self._scale).astype(np.float32)
        if self._ceiling is not None and y.shape[0]:
            y, reduction = limit(y, self._ceiling, self._window)
            self.limiter_db = max(self.limiter_db, float(-20.0 * np.log10(np.min(reduction))))
        return np.ascontiguousarray(y[start - lo : stop - lo], dtype=np.float32)

    def gained(self, start: int, stop: int) -> Array:
        """Samples ``[start, stop)`` gained but not limited (what the energy side information
        measures: :attr:`codec.inference.pipeline.Prepared.gained`)."""
        return (self._raw[start:stop] * self._scale).astype(np.float32)


def encode_file(
    loaded: LoadedModel,
    src: Path,
    out: Path,
    kbps: float,
    target_lufs: float,
    *,
    fingerprint: bytes,
    allow_silence: bool = False,
    chunk_frames: int | None = None,
    energy: Energy = True,
    replace: bool = True,
) -> Header:
    """Encode the recording ``src`` to the bitstream ``out`` (atomically); returns the header.

    With ``energy`` (the default) the stream carries energy side information (version 2);
    ``False`` writes version 1 without it. With ``replace=False`` an existing ``out`` is left
    as it is (:class:`UserError`)."""
    from codec.inference import pipeline as inf

    started = time.time()
    model = loaded.model
    config = model.config
    n_q = inf.n_quantizers_for(model, kbps)  # an unserved bitrate fails before any work
    chunk = bitstream.DEFAULT_CHUNK_FRAMES if chunk_frames is None else int(chunk_frames)
    model_rate = int(config.sample_rate)
    with tempfile.TemporaryFile(prefix="codec-encode-") as tmp:
        ing = ingest_stream(src, model_rate, tp.cast(tp.BinaryIO, tmp))
        if ing.silent and not allow_silence:
            raise UserError(
                f"{src}: holds only digital silence ({ing.length / ing.sample_rate:.2f} s of zeros); "
                "nothing to encode (pass --allow-silence to encode it anyway)"
            )
        gain_db = gain_for(ing.input_lufs, ing.silent, target_lufs, inf.DEFAULT_MAX_GAIN_DB)
        inf.check_gain(gain_db, ing.input_lufs, target_lufs, str(src))
        window = max(1, round(inf.DEFAULT_LIMITER_WINDOW_MS * 1e-3 * model_rate))
        audio = PreparedAudio(ing.audio, gain_db, inf.DEFAULT_PEAK_CEILING_DB, window)
        header = bitstream.Header(
            fingerprint=fingerprint,
            sample_rate=ing.sample_rate,
            length=ing.length,
            channels=min(ing.channels, bitstream.MAX_CHANNELS),
            model_rate=model_rate,
            hop_length=int(config.hop_length),
            n_quantizers=n_q,
            bits_per_code=int(config.bits_per_code),
            frame_count=inf.n_frames(audio.shape[0], int(config.hop_length)),
            chunk_frames=chunk,
            input_lufs=ing.input_lufs,
            gain_db=gain_db,
            energy=side.resolve(energy, model_rate / int(config.hop_length), chunk),
        )
        header.check(str(src))
        levels = None if header.energy is None else slice_levels(audio, int(config.hop_length), header.energy, chunk)
        blocks = inf.encode_codes(model, tp.cast(Array, audio), kbps, chunk_frames=chunk)
        try:
            with locked_partial(out, started, replace=replace) as part, part.open("wb") as f:
                bitstream.write_stream(tp.cast(tp.BinaryIO, f), header, blocks, levels)
        except OSError as e:
            raise UserError(f"{out}: cannot be written ({e.strerror or e}); check the folder and free space") from None
    return header


def slice_levels(audio: PreparedAudio, hop: int, settings: EnergySettings, chunk_frames: int) -> side.LevelCodes:
    """:func:`codec.inference.energy.level_codes` of ``audio``, read ``chunk_frames`` frames
    at a time (a whole number of blocks: the header check makes blocks divide chunks)."""
    step = chunk_frames * hop
    parts = [
        side.level_codes(audio.gained(start, start + step), hop, settings) for start in range(0, audio.shape[0], step)
    ]
    return np.concatenate([np.zeros(0, np.int64), *parts])


# tempfile.mkstemp's names, as codec.files.atomic_path makes them: ".NAME." + 8 of these + ".partial"
_MKSTEMP_RANDOM = r"[a-z0-9_]{8}"


@contextlib.contextmanager
def locked_partial(out: Path, started: float, *, replace: bool = True) -> tp.Iterator[Path]:
    """:func:`codec.files.atomic_path` for ``out``, with an exclusive ``flock`` held on the
    partial file while the body writes it; once ``out`` is in place, removes the partial
    files of ``out`` that runs killed before ``started`` (a ``time.time()``) left behind.
    ``replace``: as :func:`codec.files.atomic_path`'s."""
    # The lock is on a handle of our own (the writer may reopen the file by name); it is
    # released just before atomic_path renames the file into place.
    with atomic_path(out, replace=replace) as part, part.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        yield part
    remove_stale_partials(out, started)


def remove_stale_partials(out: Path, started: float) -> list[Path]:
    """Remove the partial files :func:`codec.files.atomic_path` leaves beside ``out`` when its
    run is killed (``.{out.name}.XXXXXXXX.partial``); returns the paths removed.

    Only regular files of this user with exactly that name, last modified before
    ``started`` and not locked: a live writer (:func:`locked_partial`) holds an exclusive
    ``flock`` on its partial file, and the kernel releases it when the writer dies, SIGKILL
    included. The age check covers the instant between a writer creating its file and
    locking it. Failures to remove are ignored: the output itself is already in place.
    """
    pattern = re.compile(re.escape(f".{out.name}.") + _MKSTEMP_RANDOM + re.escape(".partial"))
    removed: list[Path] = []
    try:
        entries = list(os.scandir(out.parent))
    except OSError:
        return removed
    for entry in entries:
        if not pattern.fullmatch(entry.name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mtime >= started:
                continue
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError (an OSError): a writer holds it
            if os.fstat(fd).st_ino == os.stat(entry.path, follow_symlinks=False).st_ino:  # still that file
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


# Our encoder writes 500-frame (10 s) chunks; a crafted header may ask for up to 4096, whose
# decode would need ~8x the activations. Refuse more than this before decoding anything.
MAX_CHUNK_FRAMES = 1000


SUBTYPES = ("PCM_16", "PCM_24", "FLOAT")


WAV_LIMIT_BYTES = 2**32 - 1024  # past this a RIFF size field overflows: write RF64
SAMPLE_BYTES = {"PCM_16": 2, "PCM_24": 3, "FLOAT": 4}

# The largest WAV decode writes unless told otherwise (--max-output-mb): a stream's header
# sets the output's length and rate, and 1.5 kbps of codes become up to 768 kB/s of WAV
# (192 kHz FLOAT), so a 16 MB stream could ask for 66 GB. 4 GB (about where WAV must turn
# into RF64) is 17 h of 16 kHz or 5.8 h of 48 kHz FLOAT, twice that in PCM_16.
DEFAULT_MAX_OUTPUT_MB = 4000
MB = 1_000_000


def output_bytes(header: Header, subtype: str) -> int:
    """The size of the samples of the WAV that decoding ``header``'s stream writes."""
    return header.length * SAMPLE_BYTES[subtype]


def check_decode_limits(
    header: Header, subtype: str, max_seconds: float | None, max_output_bytes: int | None, name: str
) -> None:
    """Raise :class:`codec.inference.bitstream.BitstreamError` for chunks larger than
    :data:`MAX_CHUNK_FRAMES`, a stream longer than ``max_seconds`` or one whose WAV would
    be larger than ``max_output_bytes``, saying how to raise the limit."""
    if header.chunk_frames > MAX_CHUNK_FRAMES:
        raise bitstream.BitstreamError(
            f"{name}: chunks of {header.chunk_frames} frames exceed this decoder's limit of {MAX_CHUNK_FRAMES}; "
            "re-encode with codec encode"
        )
    seconds = header.duration_s
    if max_seconds is not None and seconds > max_seconds:
        raise bitstream.BitstreamError(
            f"{name}: {seconds:.1f} s is longer than the --max-seconds limit of {max_seconds:g} s; "
            f"pass --max-seconds {math.ceil(seconds)} to decode it"
        )
    size = output_bytes(header, subtype)
    if max_output_bytes is not None and size > max_output_bytes:
        smaller = " (or a smaller --subtype: PCM_16 is 2 bytes a sample)" if SAMPLE_BYTES[subtype] > 2 else ""
        raise bitstream.BitstreamError(
            f"{name}: the decoded WAV would be {size / MB:,.1f} MB ({seconds:,.1f} s at {header.sample_rate} Hz, "
            f"{subtype}), over the {max_output_bytes / MB:g} MB output limit; pass --max-output-mb "
            f"{math.ceil(size / MB)}{smaller} to decode it"
        )


def decode_file(
    model: CodecLike,
    src: Path,
    out: Path,
    *,
    fingerprint: bytes,
    max_seconds: float | None = None,
    max_output_bytes: int | None = DEFAULT_MAX_OUTPUT_MB * MB,
    subtype: str = "FLOAT",
    replace: bool = True,
) -> Header:
    """Decode the bitstream ``src`` to the WAV ``out`` (atomically); returns the header.

    Before decoding anything, the file's size must be the one its header implies, and the
    stream within ``max_seconds`` (``None``: the format's 24 h) and ``max_output_bytes`` of
    WAV samples (``None``: no limit; see :func:`check_decode_limits`). Raises
    :class:`codec.inference.bitstream.BitstreamError` for a bad stream or a limit (nothing
    is left at ``out``). With ``replace=False`` an existing ``out`` is left as it is.
    """
    import soundfile as sf

    from codec.inference.pipeline import decode_from_stream  # torch: as above

    started = time.time()
    name = str(src)
    with src.open("rb") as f:
        header, blocks = decode_from_stream(
            model, tp.cast(tp.BinaryIO, f), fingerprint=fingerprint, name=name, size=os.fstat(f.fileno()).st_size
        )
        check_decode_limits(header, subtype, max_seconds, max_output_bytes, name)
        fmt = "WAV" if output_bytes(header, subtype) < WAV_LIMIT_BYTES else "RF64"
        pcm = subtype != "FLOAT"
        try:
            with (
                locked_partial(out, started, replace=replace) as part,
                sf.SoundFile(
                    os.fsencode(part), "w", samplerate=header.sample_rate, channels=1, subtype=subtype, format=fmt
                ) as wav,
            ):
                for block in blocks:
                    wav.write(np.clip(block, -1.0, 1.0) if pcm else block)
        except (OSError, sf.LibsndfileError) as e:
            raise UserError(f"{out}: cannot be written ({e}); check the folder and free space") from None
    return header
