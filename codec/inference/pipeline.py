"""The one inference path: level-normalize, encode, decode, restore the level.

The codec was trained on speech brought to one loudness (``normalize.target_lufs``,
-16 LUFS, under a -1 dBFS peak ceiling), so at inference the input must be brought
there too, and the decoded audio given back its level: a whisper must come back a
whisper and a shout a shout. Evaluation and ``codec encode``/``codec decode`` all go
through these functions.

Encode side (:func:`prepare`, then :func:`encode_codes`):

1. mix down to mono, resample to the model's rate (soxr HQ);
2. measure BS.1770-4 integrated loudness (:func:`codec.audio.loudness.loudness_lufs`,
   pyloudnorm's K-weighting, the same meter ``codec encode`` streams a file through);
3. gain to ``target_lufs``, with quiet input handled so noise is not amplified:

   - digital silence: gain 0 dB (there is nothing to normalize);
   - no 400 ms block above BS.1770's -70 LUFS absolute gate: gain 0 dB (by the
     standard's definition this is silence plus noise; raising it would only bring
     up the noise);
   - otherwise ``target - loudness``, but at most ``max_gain_db`` (+30 dB), so a
     faint recording's hiss is not pushed to speech level;

   the gain is rounded to float32, the precision the bitstream carries, so encoder
   and decoder use the very same number; a bitstream carries -60..+60 dB
   (:func:`check_gain`), so :func:`encode_to_stream` refuses an input more than 60 dB
   louder than the target (float samples in the hundreds, at -16 LUFS);
4. peaks above the training data's ceiling are limited with the normalize stage's
   look-ahead limiter (:func:`codec.audio.limiter.limit`), as the training clips were: the
   model never sees a sample level it was not trained on;
5. encode in chunks of ``chunk_frames`` frames, each with ``context_frames`` of real
   audio on both sides (dropped afterwards), so the chunk borders match an encode of
   the whole file and memory stays bounded by the chunk size.

Energy side information (:mod:`codec.inference.energy`, on unless ``energy=None``): the
encoder also codes the level of every 0.5 s block of the prepared audio, and the decoder
brings each block of its output back to that level (a smooth, bounded gain) before the
gain is undone, so the output keeps the input's level even where the model returns less
energy than it was given (speech unlike its training voices).

Decode side (:func:`decode_codes`, :func:`shape_blocks`, then :func:`restore` or
:func:`restore_stream`): decode chunk by chunk with the same context, correct the energy,
undo the gain (the limiter is not undone: it touched only a few milliseconds around
peaks), resample back to the input's rate and trim to its length. The output is mono.

Bitstreams (:mod:`codec.inference.bitstream`): :func:`encode_to_stream` writes the prepared
input's codes with the gain and loudness in the header, chunk by chunk;
:func:`decode_from_stream` checks the header against the model and yields the
restored audio block by block, so ``codec encode``/``codec decode`` need only open
the files.

Shapes: audio ``[T]`` (or ``[T, C]`` into :func:`prepare`), codes ``[Q, F]``.
"""

from __future__ import annotations

import dataclasses
import math
import typing as tp

import numpy as np
import numpy.typing as npt
import soxr
import torch
from torch import nn

from codec.audio import Array
from codec.audio.io import to_mono
from codec.audio.limiter import limit
from codec.audio.loudness import loudness_lufs
from codec.audio.resample import resample
from codec.errors import UserError
from codec.inference import bitstream
from codec.inference import energy as side
from codec.inference.energy import Energy
from codec.model.checkpoint import model_fingerprint

Codes = npt.NDArray[np.int64]

DEFAULT_TARGET_LUFS = -16.0  # normalize.target_lufs: the training data's loudness
DEFAULT_MAX_GAIN_DB = 30.0
DEFAULT_PEAK_CEILING_DB = -1.0  # normalize.peak_ceiling_db
DEFAULT_LIMITER_WINDOW_MS = 5.0  # normalize.limiter_window_ms
DEFAULT_CHUNK_FRAMES = 500  # 10 s at 50 frames/s
# Frames of real audio (or codes) on each side of a chunk. Measured on the GPU profile's
# architecture (3 s, chunks of 50 frames): with 8 frames the chunked decode differs from a
# whole-file decode by 1e-3, with 12 by 1e-7, with 16 not at all; the codes agree from 8 on.
DEFAULT_CONTEXT_FRAMES = 16


class InferenceError(UserError):
    """The input cannot be coded (empty, non-finite samples, a bitrate the model does not serve)."""


class ConfigLike(tp.Protocol):
    """What the inference path needs of a model's config (:class:`codec.model.codec.CodecConfig`)."""

    @property
    def sample_rate(self) -> int: ...

    @property
    def hop_length(self) -> int: ...

    @property
    def bitrates_kbps(self) -> tuple[float, ...]: ...

    @property
    def bits_per_code(self) -> int: ...

    def n_quantizers_for(self, kbps: float) -> int: ...


class CodecLike(tp.Protocol):
    """What the inference path needs of a model (:class:`codec.model.codec.Codec`)."""

    @property
    def config(self) -> ConfigLike: ...

    def encode(self, audio: torch.Tensor, n_quantizers: int | None = None) -> torch.Tensor: ...

    def decode(self, codes: torch.Tensor) -> torch.Tensor: ...


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What :func:`prepare` returns.

    - ``audio``: mono ``[T']`` float32 at ``model_rate``, gained (and peak-limited)
    - ``gain_db``: the gain applied (float32-exact); decode divides by it
    - ``input_lufs``: integrated loudness of the input (mono, at the model's rate);
      ``-inf`` for digital silence or input below the -70 LUFS gate
    - ``sample_rate``, ``length``, ``channels``: the original input's
    - ``model_rate``: the rate of ``audio``
    - ``limiter_db``: the largest gain reduction the peak limiter applied (0 if none)
    - ``gained``: ``audio`` before the limiter (the input at the training loudness): what
      the energy side information measures, so the decoded level is the input's, not the
      limited signal's (a peaky voice loses up to a dB of energy to the limiter)
    - ``level``: ``"normal"``, ``"capped"`` (gain held at ``max_gain_db``),
      ``"below_gate"`` or ``"silent"``
    """

    audio: Array
    gain_db: float
    input_lufs: float
    sample_rate: int
    length: int
    channels: int
    model_rate: int
    limiter_db: float
    level: tp.Literal["normal", "capped", "below_gate", "silent"]
    gained: Array


def prepare(
    audio: npt.NDArray[np.floating[tp.Any]],
    sample_rate: int,
    target_lufs: float = DEFAULT_TARGET_LUFS,
    *,
    model_rate: int = 16000,
    max_gain_db: float = DEFAULT_MAX_GAIN_DB,
    peak_ceiling_db: float | None = DEFAULT_PEAK_CEILING_DB,
    limiter_window_ms: float = DEFAULT_LIMITER_WINDOW_MS,
) -> Prepared:
    """Bring ``audio`` (``[T]`` or ``[T, C]`` at ``sample_rate``) to the model's rate and
    the training loudness. See the module docstring for the rules on quiet input.

    ``peak_ceiling_db=None`` skips the limiter. Raises :class:`InferenceError` for empty
    input or non-finite samples.
    """
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim not in (1, 2):
        raise InferenceError(f"audio must be [samples] or [samples, channels], got shape {x.shape}")
    channels = 1 if x.ndim == 1 else int(x.shape[1])
    length = int(x.shape[0])
    if length == 0 or channels == 0:
        raise InferenceError("the input holds no audio samples (an empty file?); pass a recording")
    if not np.all(np.isfinite(x)):
        raise InferenceError("the input holds NaN or infinite samples; fix or re-export the recording")
    mono = resample(to_mono(x), int(sample_rate), int(model_rate))
    if mono.shape[0] == 0:  # a few samples at a high rate
        mono = np.zeros(1, np.float32)
    level: tp.Literal["normal", "capped", "below_gate", "silent"]
    if not np.any(mono):
        lufs, gain_db, level = -math.inf, 0.0, "silent"
    else:
        lufs = loudness_lufs(mono, int(model_rate))
        if not math.isfinite(lufs):
            gain_db, level = 0.0, "below_gate"
        elif target_lufs - lufs > max_gain_db:
            gain_db, level = max_gain_db, "capped"
        else:
            gain_db, level = target_lufs - lufs, "normal"
    gain_db = float(np.float32(gain_db))  # the bitstream's precision, used on both sides
    y = (mono * np.float32(10.0 ** (gain_db / 20.0))).astype(np.float32)
    gained = y
    limiter_db = 0.0
    if peak_ceiling_db is not None:
        ceiling = 10.0 ** (peak_ceiling_db / 20.0)
        window = max(1, round(limiter_window_ms * 1e-3 * model_rate))
        y, reduction = limit(y, ceiling, window)
        limiter_db = float(-20.0 * np.log10(np.min(reduction)))
    return Prepared(
        audio=np.ascontiguousarray(y, dtype=np.float32),
        gain_db=gain_db,
        input_lufs=float(lufs),
        sample_rate=int(sample_rate),
        length=length,
        channels=channels,
        model_rate=int(model_rate),
        limiter_db=max(0.0, limiter_db),
        level=level,
        gained=gained,
    )


def n_quantizers_for(model: CodecLike, kbps: float) -> int:
    """Quantizers for ``kbps``; :class:`InferenceError` naming the served bitrates."""
    try:
        return int(model.config.n_quantizers_for(kbps))
    except ValueError:
        served = ", ".join(f"{b:g}" for b in model.config.bitrates_kbps)
        raise InferenceError(f"this model does not serve {kbps:g} kbps; choose one of {served} kbps") from None


def n_frames(n_samples: int, hop_length: int) -> int:
    """Frames the model gives for ``n_samples`` at its rate: ``ceil(T / hop)``."""
    return -(-n_samples // hop_length)


def _device(model: CodecLike) -> torch.device:
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return tp.cast(torch.device, p.device)
    return torch.device("cpu")


def encode_codes(
    model: CodecLike,
    audio: npt.NDArray[np.floating[tp.Any]],
    kbps: float,
    *,
    chunk_frames: int = DEFAULT_CHUNK_FRAMES,
    context_frames: int = DEFAULT_CONTEXT_FRAMES,
) -> tp.Iterator[Codes]:
    """Encode prepared audio ``[T]`` (at the model's rate) at ``kbps``, chunk by chunk.

    Yields codes ``[Q, n]`` with ``n = chunk_frames`` (the last chunk fewer), together
    ``ceil(T / hop)`` frames. Each chunk is encoded with ``context_frames`` frames of the
    neighbouring audio on both sides, which are then dropped. ``audio`` may be any
    sliceable array (a ``np.memmap`` keeps memory bounded by the chunk).
    """
    n_q = n_quantizers_for(model, kbps)
    hop = int(model.config.hop_length)
    total = n_frames(int(audio.shape[0]), hop)
    device = _device(model)
    for start in range(0, total, chunk_frames):
        end = min(start + chunk_frames, total)
        lo = max(0, start - context_frames)
        hi = min(total, end + context_frames)
        segment = np.asarray(audio[lo * hop : hi * hop], dtype=np.float32)
        x = torch.from_numpy(np.ascontiguousarray(segment)).to(device).view(1, 1, -1)
        with torch.inference_mode():
            codes = model.encode(x, n_q)
        yield codes[0, :, start - lo : end - lo].to("cpu", torch.int64).numpy()


def decode_codes(
    model: CodecLike,
    chunks: tp.Iterable[npt.NDArray[np.integer[tp.Any]]],
    *,
    context_frames: int = DEFAULT_CONTEXT_FRAMES,
) -> tp.Iterator[Array]:
    """Decode code chunks (``[Q, n]`` each, any sizes) to audio blocks at the model's rate.

    Yields one block ``[n · hop]`` per input chunk, still at the normalized level. Each
    chunk is decoded with ``context_frames`` frames of its neighbours' codes on both
    sides (so one chunk is read ahead), which are then dropped. Memory: two chunks of
    codes and one chunk of audio.
    """
    hop = int(model.config.hop_length)
    device = _device(model)
    history: Codes | None = None  # the last context_frames frames before the current chunk
    current: Codes | None = None
    for nxt in _with_sentinel(_as_int64(chunks)):
        if current is not None:
            left = history if history is not None else current[:, :0]
            right = nxt[:, :context_frames] if nxt is not None else current[:, :0]
            window = np.concatenate([left, current, right], axis=1)
            codes = torch.from_numpy(np.ascontiguousarray(window)).to(device).unsqueeze(0)
            with torch.inference_mode():
                audio = model.decode(codes)[0, 0]
            a = left.shape[1] * hop
            yield audio[a : a + current.shape[1] * hop].to("cpu", torch.float32).numpy()
            seen = np.concatenate([left, current], axis=1)
            history = seen[:, max(0, seen.shape[1] - context_frames) :]
        current = nxt


def _as_int64(chunks: tp.Iterable[npt.NDArray[np.integer[tp.Any]]]) -> tp.Iterator[Codes]:
    for c in chunks:
        arr = np.asarray(c)
        if arr.ndim != 2:
            raise ValueError(f"code chunks must be [Q, frames], got {arr.shape}")
        if arr.shape[1]:
            yield arr.astype(np.int64, copy=False)


def _with_sentinel(it: tp.Iterator[Codes]) -> tp.Iterator[Codes | None]:
    yield from it
    yield None


def shape_blocks(
    blocks: tp.Iterable[Array],
    levels: npt.NDArray[np.integer[tp.Any]],
    settings: side.EnergySettings,
    hop: int,
    model_rate: int,
    total_frames: int,
) -> tp.Iterator[Array]:
    """Decoded blocks (at the model's rate) brought to the coded ``levels`` (every level
    code of the signal; :class:`codec.inference.energy.Shaper`)."""
    shaper = side.Shaper(settings, hop, model_rate, total_frames)
    shaper.add_codes(levels)
    return _shaped(shaper, blocks)


def _shaped(shaper: side.Shaper, blocks: tp.Iterable[Array]) -> tp.Iterator[Array]:
    """``blocks`` through ``shaper``; it must hold a block's level codes by the time the block comes."""
    for block in blocks:
        out = shaper.feed(block)
        if out.shape[0]:
            yield out
    tail = shaper.finish()
    if tail.shape[0]:
        yield tail


def restore_stream(
    blocks: tp.Iterable[npt.NDArray[np.floating[tp.Any]]],
    gain_db: float,
    model_rate: int,
    sample_rate: int,
    length: int,
) -> tp.Iterator[Array]:
    """Undo the gain, resample blocks from ``model_rate`` to ``sample_rate`` (soxr HQ,
    streaming: the same output as resampling the whole signal) and stop at ``length``
    samples (padding with zeros if the codes were short). Yields float32 blocks ``[n]``."""
    scale = np.float32(10.0 ** (-gain_db / 20.0))
    stream = soxr.ResampleStream(model_rate, sample_rate, 1, dtype="float32", quality="HQ")
    remaining = int(length)
    for block in blocks:
        out = stream.resample_chunk(np.asarray(block, dtype=np.float32) * scale, last=False)
        if out.shape[0] and remaining:
            yield out[:remaining].astype(np.float32, copy=False)
            remaining -= min(remaining, out.shape[0])
    tail = stream.resample_chunk(np.zeros(0, np.float32), last=True)
    if remaining and tail.shape[0]:
        yield tail[:remaining].astype(np.float32, copy=False)
        remaining -= min(remaining, tail.shape[0])
    while remaining:  # codes a frame or two short of the length (bounded by the header check)
        pad = min(remaining, 1 << 16)
        yield np.zeros(pad, np.float32)
        remaining -= pad


def restore(
    audio: npt.NDArray[np.floating[tp.Any]], gain_db: float, model_rate: int, sample_rate: int, length: int
) -> Array:
    """Whole-signal :func:`restore_stream`: ``[T']`` at ``model_rate`` → ``[length]`` at ``sample_rate``."""
    return np.concatenate([np.zeros(0, np.float32), *restore_stream([audio], gain_db, model_rate, sample_rate, length)])


@dataclasses.dataclass(frozen=True)
class RoundTrip:
    """What :func:`roundtrip_with_codes` returns: the decoded ``audio`` ``[T]`` at the
    input's rate and length, the ``codes`` ``[Q, F]``, the :class:`Prepared` input, and
    the energy side information sent (``levels``, empty without it; ``side_bps``)."""

    audio: Array
    codes: Codes
    prepared: Prepared
    levels: Codes
    side_bps: float


def roundtrip_with_codes(
    model: CodecLike,
    audio: npt.NDArray[np.floating[tp.Any]],
    sample_rate: int,
    kbps: float,
    target_lufs: float = DEFAULT_TARGET_LUFS,
    *,
    max_gain_db: float = DEFAULT_MAX_GAIN_DB,
    peak_ceiling_db: float | None = DEFAULT_PEAK_CEILING_DB,
    limiter_window_ms: float = DEFAULT_LIMITER_WINDOW_MS,
    chunk_frames: int = DEFAULT_CHUNK_FRAMES,
    context_frames: int = DEFAULT_CONTEXT_FRAMES,
    energy: Energy = True,
) -> RoundTrip:
    """Prepare, encode at ``kbps``, decode and restore ``audio`` (``[T]`` or ``[T, C]``),
    with energy side information unless ``energy`` is false (true: the model's
    :func:`codec.inference.energy.settings_for`; or explicit settings)."""
    prepared = prepare(
        audio,
        sample_rate,
        target_lufs,
        model_rate=int(model.config.sample_rate),
        max_gain_db=max_gain_db,
        peak_ceiling_db=peak_ceiling_db,
        limiter_window_ms=limiter_window_ms,
    )
    chunks = list(encode_codes(model, prepared.audio, kbps, chunk_frames=chunk_frames, context_frames=context_frames))
    decoded: tp.Iterable[Array] = decode_codes(model, chunks, context_frames=context_frames)
    hop = int(model.config.hop_length)
    levels = np.zeros(0, np.int64)
    side_bps = 0.0
    settings = side.resolve(energy, prepared.model_rate / hop, chunk_frames)
    if settings is not None:
        levels = side.level_codes(prepared.gained, hop, settings)
        frames = n_frames(prepared.audio.shape[0], hop)
        decoded = shape_blocks(decoded, levels, settings, hop, prepared.model_rate, frames)
        side_bps = settings.bits_per_second(prepared.model_rate / hop)
    out = np.concatenate(
        [
            np.zeros(0, np.float32),
            *restore_stream(decoded, prepared.gain_db, prepared.model_rate, prepared.sample_rate, prepared.length),
        ]
    )
    return RoundTrip(
        audio=out, codes=np.concatenate(chunks, axis=1), prepared=prepared, levels=levels, side_bps=side_bps
    )


def roundtrip(
    model: CodecLike,
    audio: npt.NDArray[np.floating[tp.Any]],
    sample_rate: int,
    kbps: float,
    target_lufs: float = DEFAULT_TARGET_LUFS,
    **options: tp.Any,
) -> Array:
    """The decoded audio ``[T]`` at the input's rate and length (mono); see
    :func:`roundtrip_with_codes` for the options."""
    return roundtrip_with_codes(model, audio, sample_rate, kbps, target_lufs, **options).audio


# --- bitstreams ---------------------------------------------------------------------------


def check_gain(gain_db: float, input_lufs: float, target_lufs: float, name: str = "the input") -> None:
    """:class:`InferenceError` unless ``gain_db`` fits the bitstream's
    :data:`~codec.inference.bitstream.MIN_GAIN_DB`..:data:`~codec.inference.bitstream.MAX_GAIN_DB`
    (what a decoder accepts), naming the input's loudness and what to change."""
    lo, hi = bitstream.MIN_GAIN_DB, bitstream.MAX_GAIN_DB
    if not math.isfinite(target_lufs):
        raise InferenceError(f"target loudness {target_lufs} LUFS is not a number; pass a finite --target-lufs")
    if gain_db < lo:
        hot = " (its samples are far above full scale)" if input_lufs > 0.0 else ""
        raise InferenceError(
            f"{name}: at {input_lufs:.1f} LUFS{hot} it is {-gain_db:.1f} dB louder than the {target_lufs:g} LUFS "
            f"target, and a bitstream carries at most {-lo:g} dB of attenuation; lower its level, "
            "or pass a higher --target-lufs"
        )
    if not gain_db <= hi:
        raise InferenceError(f"{name}: a gain of {gain_db:g} dB exceeds the bitstream's {hi:g} dB; lower max_gain_db")


def _fingerprint(model: CodecLike, fingerprint: bytes | None) -> bytes:
    if fingerprint is not None:
        return fingerprint
    return model_fingerprint(tp.cast(nn.Module, model))


def encode_to_stream(
    model: CodecLike,
    audio: npt.NDArray[np.floating[tp.Any]],
    sample_rate: int,
    kbps: float,
    fileobj: tp.BinaryIO,
    target_lufs: float = DEFAULT_TARGET_LUFS,
    *,
    fingerprint: bytes | None = None,
    chunk_frames: int = bitstream.DEFAULT_CHUNK_FRAMES,
    context_frames: int = DEFAULT_CONTEXT_FRAMES,
    max_gain_db: float = DEFAULT_MAX_GAIN_DB,
    peak_ceiling_db: float | None = DEFAULT_PEAK_CEILING_DB,
    limiter_window_ms: float = DEFAULT_LIMITER_WINDOW_MS,
    energy: Energy = True,
) -> bitstream.Header:
    """Prepare ``audio`` (``[T]`` or ``[T, C]`` at ``sample_rate``), encode it at ``kbps``
    and write the bitstream to ``fileobj`` chunk by chunk (version 2 with energy side
    information, version 1 if ``energy`` is false); returns the header written.

    ``fingerprint`` defaults to :func:`codec.model.checkpoint.model_fingerprint` of ``model``.
    """
    prepared = prepare(
        audio,
        sample_rate,
        target_lufs,
        model_rate=int(model.config.sample_rate),
        max_gain_db=max_gain_db,
        peak_ceiling_db=peak_ceiling_db,
        limiter_window_ms=limiter_window_ms,
    )
    check_gain(prepared.gain_db, prepared.input_lufs, target_lufs)
    settings = side.resolve(energy, model.config.sample_rate / model.config.hop_length, chunk_frames)
    header = bitstream.Header(
        fingerprint=_fingerprint(model, fingerprint),
        sample_rate=prepared.sample_rate,
        length=prepared.length,
        channels=min(prepared.channels, bitstream.MAX_CHANNELS),
        model_rate=prepared.model_rate,
        hop_length=int(model.config.hop_length),
        n_quantizers=n_quantizers_for(model, kbps),
        bits_per_code=int(model.config.bits_per_code),
        frame_count=n_frames(prepared.audio.shape[0], int(model.config.hop_length)),
        chunk_frames=chunk_frames,
        input_lufs=prepared.input_lufs,
        gain_db=prepared.gain_db,
        energy=settings,
    )
    header.check()
    levels = None if settings is None else side.level_codes(prepared.gained, int(model.config.hop_length), settings)
    blocks = encode_codes(model, prepared.audio, kbps, chunk_frames=chunk_frames, context_frames=context_frames)
    bitstream.write_stream(fileobj, header, blocks, levels)
    return header


def decode_from_stream(
    model: CodecLike,
    fileobj: tp.BinaryIO,
    *,
    fingerprint: bytes | None = None,
    max_frames: int | None = None,
    context_frames: int = DEFAULT_CONTEXT_FRAMES,
    name: str = "bitstream",
    size: int | None = None,
) -> tuple[bitstream.Header, tp.Iterator[Array]]:
    """Read a bitstream's header, check it was written by ``model``, and return it with
    an iterator over the decoded audio (mono float32 blocks at the original rate and
    level, ``header.length`` samples in all). ``size`` (the file's bytes, when known) is
    checked against the header now (:func:`codec.inference.bitstream.read_stream`).

    Raises :class:`codec.inference.bitstream.BitstreamError` (or its
    :class:`~codec.inference.bitstream.ModelMismatchError`) for a bad header or another model's
    stream now, and for a bad chunk while iterating.
    """
    stream = bitstream.read_stream(fileobj, max_frames=max_frames, name=name, size=size)
    header = stream.header
    bitstream.check_model(header, _fingerprint(model, fingerprint), name)
    config = model.config
    # The fingerprint is not a secret: a crafted header could carry the right one with
    # layout values this model cannot decode (codes past the codebook, say).
    expected = {
        "model sample rate": (header.model_rate, int(config.sample_rate)),
        "hop length": (header.hop_length, int(config.hop_length)),
        "bits per code": (header.bits_per_code, int(config.bits_per_code)),
    }
    for what, (got, want) in expected.items():
        if got != want:
            raise bitstream.ModelMismatchError(f"{name}: header {what} is {got} but the model's is {want}")
    try:
        served = config.n_quantizers_for(header.bitrate_bps / 1000.0) == header.n_quantizers
    except ValueError:
        served = False
    if not served:
        raise bitstream.ModelMismatchError(
            f"{name}: header asks for {header.n_quantizers} quantizers ({header.bitrate_bps / 1000:g} kbps), "
            f"which this model does not serve"
        )
    if header.energy is None:  # version 1
        blocks: tp.Iterable[Array] = decode_codes(model, stream.chunks, context_frames=context_frames)
    else:
        shaper = side.Shaper(header.energy, header.hop_length, header.model_rate, header.frame_count)

        def codes_of(records: tp.Iterator[bitstream.Chunk]) -> tp.Iterator[Codes]:
            for record in records:  # decode_codes reads a chunk before it yields its audio
                shaper.add_codes(record.levels)
                yield record.codes

        blocks = _shaped(shaper, decode_codes(model, codes_of(stream.records), context_frames=context_frames))
    return header, restore_stream(blocks, header.gain_db, header.model_rate, header.sample_rate, header.length)
