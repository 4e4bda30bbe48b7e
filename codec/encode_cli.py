"""``codec encode IN OUT --kbps K [--model M]``: a recording → a bitstream (:mod:`codec.bitstream`).

The same steps as :func:`codec.inference.prepare` and :func:`codec.inference.encode_to_stream`
(mix down, resample to the model's rate, measure BS.1770 loudness, gain to the training
loudness, limit peaks, encode chunk by chunk), but streamed from the file, so a long
recording never sits in memory:

1. one pass over the input (``soundfile`` blocks): mix down, resample (soxr, streaming:
   the same samples as a whole-file resample), meter the loudness as the samples go by
   (:class:`StreamingLoudness`: K-weighting with carried filter state, energies summed
   per 100 ms step; the gating needs only those sums, 10 floats per second), and write
   the mono model-rate samples to an unlinked temporary file (4 bytes per sample: 64 kB
   per second at 16 kHz, less than the input file itself for 44.1 kHz 16-bit audio);
2. the gain is known only now (integrated loudness needs the whole file: one pass);
3. :func:`codec.inference.encode_codes` reads the temporary file chunk by chunk through
   :class:`PreparedAudio`, which applies the gain and the look-ahead limiter to each
   slice with enough margin that the result equals limiting the whole signal; the codes
   go to :func:`codec.bitstream.write_stream` chunk by chunk.

Memory is bounded by the chunk size (10 s of audio and its codes), not by the file: a
10-minute input is measured in ``tests/test_codec_cli.py``. The output is written under a
temporary name and renamed into place, so a failure leaves no partial file.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
import typing as tp
from pathlib import Path

import numpy as np
import numpy.typing as npt
import scipy.signal

from codec.errors import UserError

if tp.TYPE_CHECKING:
    from codec.bitstream import Header
    from codec.model_source import LoadedModel

Array = npt.NDArray[np.float32]

READ_BLOCK = 1 << 16  # input frames per read
SLICE_MARGIN_WINDOWS = 4  # limiter support is 1.5 windows each side; 4 leaves room


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN", help="a recording: any format libsndfile reads (WAV, FLAC, OGG, MP3, …)")
    parser.add_argument("output", metavar="OUT", help="the bitstream to write (conventionally .tscb)")
    parser.add_argument("--kbps", type=float, default=None, help="bitrate, one the model serves (default: its highest)")
    parser.add_argument(
        "--model",
        default=None,
        help="checkpoint path or registry URI (models:/telugu-speech-codec@champion); default: the registry's "
        "champion if there is one, else models/codec.pt",
    )
    parser.add_argument(
        "--target-lufs",
        type=float,
        default=None,
        help="loudness the input is brought to before coding (default: the model's training loudness, or -16)",
    )
    parser.add_argument("--allow-silence", action="store_true", help="encode an all-zero input instead of refusing it")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")


def run(args: argparse.Namespace) -> int:
    from codec.model import model_fingerprint
    from codec.model_source import load_model

    src, out = Path(args.input), Path(args.output)
    check_input_path(src)
    if out.exists() and out.resolve() == src.resolve():
        raise UserError(f"{out}: the output would overwrite the input; choose another OUT")
    loaded = load_model(args.model)
    kbps = float(args.kbps) if args.kbps is not None else max(loaded.model.config.bitrates_kbps)
    target = loaded.target_lufs if args.target_lufs is None else float(args.target_lufs)
    header = encode_file(
        loaded, src, out, kbps, target, fingerprint=model_fingerprint(loaded.model), allow_silence=args.allow_silence
    )
    if not args.quiet:
        size = out.stat().st_size
        lufs = f"{header.input_lufs:.1f} LUFS" if math.isfinite(header.input_lufs) else "silent"
        print(
            f"encoded {src} ({header.duration_s:.2f} s, {header.sample_rate} Hz, {header.channels} ch, {lufs}, "
            f"gain {header.gain_db:+.1f} dB) at {kbps:g} kbps with {loaded.source} -> {out}: {size} bytes "
            f"({size * 8 / header.duration_s / 1000:.2f} kbps with header)",
            file=sys.stderr,
        )
    return 0


def check_input_path(path: Path) -> None:
    """:class:`UserError` unless ``path`` is an existing, readable file."""
    if not path.exists():
        raise UserError(f"{path}: no such file; pass an existing recording")
    if not path.is_file():
        raise UserError(f"{path}: not a file; pass a recording")
    try:
        with path.open("rb"):
            pass
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror or e}); check its permissions") from None


# --- streaming loudness ---------------------------------------------------------------------


class StreamingLoudness:
    """BS.1770-4 integrated loudness of a mono signal fed in pieces; the same number as
    :func:`codec.audio.integrated_lufs` on the whole signal (same K-weighting filters, in
    float32, and the same 400 ms blocks at 100 ms steps, as pyloudnorm places them).

    Keeps the filter state and one float64 energy per 100 ms step, so memory grows by
    80 bytes per second of audio.
    """

    BLOCK_S = 0.4
    STEP = 0.25

    def __init__(self, rate: int) -> None:
        from codec.audio import _k_weighting_sos  # the meter's own filters, shared on purpose

        self.rate = int(rate)
        self._sos = _k_weighting_sos(self.rate).astype(np.float32)
        self._zi = np.zeros((self._sos.shape[0], 2), np.float32)
        self._n = 0
        self._grid = np.zeros(1, np.int64)  # block edges (starts and ends), sorted; grown on demand
        self._j = 0  # blocks whose edges are on the grid
        self._sums: list[float] = []  # K-weighted energy between consecutive grid edges

    def _edges(self, j: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        # Exactly codec.audio.integrated_lufs's arithmetic (int() of the same float expressions).
        lo = (self.BLOCK_S * (j * self.STEP) * self.rate).astype(np.int64)
        hi = (self.BLOCK_S * (j * self.STEP + 1) * self.rate).astype(np.int64)
        return lo, hi

    def _grow(self, upto: int) -> None:
        while self._grid[-1] < upto:
            j = np.arange(self._j, self._j + 1024, dtype=np.float64)
            lo, hi = self._edges(j)
            self._grid = np.unique(np.concatenate([self._grid, lo, hi]))
            self._j += 1024

    def add(self, x: Array) -> None:
        """Feed the next ``x`` ``[n]`` samples."""
        if not x.shape[0]:
            return
        y, self._zi = scipy.signal.sosfilt(self._sos, np.asarray(x, np.float32), zi=self._zi)
        sq = np.square(y.astype(np.float32, copy=False))
        start, end = self._n, self._n + x.shape[0]
        self._grow(end)
        first = int(np.searchsorted(self._grid, start, side="right")) - 1
        inner = self._grid[(self._grid > start) & (self._grid < end)] - start
        sums = np.add.reduceat(sq, np.concatenate([[0], inner]), dtype=np.float64)
        need = first + sums.shape[0]
        if len(self._sums) < need:
            self._sums.extend([0.0] * (need - len(self._sums)))
        for i, s in enumerate(sums.tolist()):
            self._sums[first + i] += s
        self._n = end

    @property
    def samples(self) -> int:
        return self._n

    def integrated(self) -> float:
        """Integrated loudness in LUFS (``-inf`` below the absolute gate). ``ValueError`` for
        less than one 400 ms block, like :func:`codec.audio.integrated_lufs`."""
        n, rate, block = self._n, self.rate, self.BLOCK_S
        if n < block * rate:
            raise ValueError(f"audio of {n / rate:.3f} s is shorter than one {block} s gating block")
        num_blocks = int(np.round((n / rate - block) / (block * self.STEP))) + 1
        lo, hi = self._edges(np.arange(num_blocks, dtype=np.float64))
        self._grow(int(hi[-1]))
        sums = np.zeros(self._grid.shape[0] - 1)
        sums[: len(self._sums)] = self._sums[: sums.shape[0]]
        csum = np.concatenate([[0.0], np.cumsum(sums)])
        # Energies past the last sample are zero, so [lo, hi) = [lo, min(hi, n)) as there.
        z = (csum[np.searchsorted(self._grid, hi)] - csum[np.searchsorted(self._grid, lo)]) / (block * rate)
        from codec.audio import gate_block_energies

        return gate_block_energies(z)


# --- pass 1: read, mix down, resample, meter --------------------------------------------------


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
    temporary file) and what :func:`codec.inference.prepare` would have measured."""

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

    from codec.audio import TruncatedAudioError, _check_riff_data_size, to_mono
    from codec.bitstream import MAX_SECONDS
    from codec.inference import loudness_lufs

    try:
        f = sf.SoundFile(str(path))
    except Exception as e:  # libsndfile's message names the problem (format, header, …)
        raise UserError(f"{path}: not an audio file this tool can read ({_one_line(e)})") from None
    with f:
        rate, channels, declared, fmt = int(f.samplerate), int(f.channels), int(f.frames), f.format
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
            _check_riff_data_size(path)
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


# --- pass 2: gain, limiter, encode -------------------------------------------------------------


def gain_for(input_lufs: float, silent: bool, target_lufs: float, max_gain_db: float) -> float:
    """The gain :func:`codec.inference.prepare` applies, rounded to float32 as there."""
    # Silence, or below BS.1770's absolute gate: nothing to normalize (0 dB).
    quiet = silent or not math.isfinite(input_lufs)
    return float(np.float32(0.0 if quiet else min(target_lufs - input_lufs, max_gain_db)))


class PreparedAudio:
    """The gained, peak-limited samples of a :class:`FloatFile`, sliced on demand.

    ``x[a:b]`` reads ``[a - m, b + m)`` (``m`` a few limiter windows), applies the gain
    and :func:`codec.normalize.limit` as :func:`codec.inference.prepare` does to the
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
        from codec.normalize import limit

        start, stop, _ = index.indices(self.shape[0])
        stop = max(start, stop)
        margin = SLICE_MARGIN_WINDOWS * self._window + 2
        lo, hi = max(0, start - margin), min(self.shape[0], stop + margin)
        y = (self._raw[lo:hi] * self._scale).astype(np.float32)
        if self._ceiling is not None and y.shape[0]:
            y, reduction = limit(y, self._ceiling, self._window)
            self.limiter_db = max(self.limiter_db, float(-20.0 * np.log10(np.min(reduction))))
        return np.ascontiguousarray(y[start - lo : stop - lo], dtype=np.float32)


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
) -> Header:
    """Encode the recording ``src`` to the bitstream ``out`` (atomically); returns the header."""
    from codec import bitstream
    from codec import inference as inf
    from codec.files import atomic_path

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
        )
        header.check(str(src))
        blocks = inf.encode_codes(model, tp.cast(Array, audio), kbps, chunk_frames=chunk)
        try:
            with atomic_path(out) as part, part.open("wb") as f:
                bitstream.write_stream(tp.cast(tp.BinaryIO, f), header, blocks)
        except OSError as e:
            raise UserError(f"{out}: cannot be written ({e.strerror or e}); check the folder and free space") from None
    return header
