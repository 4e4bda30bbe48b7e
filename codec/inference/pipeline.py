"""The one inference path: level-normalize, encode, decode, restore the level.

A model was trained on speech at one loudness under one peak ceiling (its checkpoint's
:class:`codec.audio.level.LevelSettings`), so at inference the input is brought there too and
the decoded audio given back its level: a whisper comes back a whisper and a shout a shout.
``codec encode``/``codec decode``, evaluation, the served model, tests and benchmarks all run
these functions; one of them builds a bitstream header (:func:`encode_prepared`).

Encode side:

1. :mod:`codec.inference.prepare`: mix down, resample to the model's rate, measure BS.1770
   loudness, apply the gain of :func:`codec.audio.level.gain_for`, limit peaks above the
   training data's ceiling (a file streamed from disk or samples in memory: the same steps
   and blocks, so the same numbers);
2. :func:`encode_prepared`: refuse a gain the bitstream cannot carry (:func:`check_gain`,
   -60..+60 dB), encode in chunks of ``chunk_frames`` frames, each with ``context_frames`` of
   real audio on both sides (dropped afterwards), so the chunk borders match an encode of the
   whole file and memory stays bounded by the chunk size (:func:`encode_codes`), code the
   energy side information, and write the bitstream chunk by chunk.

Energy side information (:mod:`codec.inference.energy`, on unless ``energy=False``): the
encoder also codes the level of every 0.5 s block of the prepared audio, and the decoder
brings each block of its output back to that level (a smooth, bounded gain) before the
gain is undone, so the output keeps the input's level even where the model returns less
energy than it was given (speech unlike its training voices).

Decode side (:func:`decode_from_stream`): check the header against the model, decode chunk by
chunk with the same context (:func:`decode_codes`), correct the energy, undo the gain (the
limiter is not undone: it touched only a few milliseconds around peaks), resample back to
the input's rate and trim to its length (:func:`restore_stream`). The output is mono.

:func:`roundtrip` is encode + decode through an in-memory bitstream: the very bytes
``codec encode`` writes for the same samples, decoded as ``codec decode`` decodes them.

Shapes: audio ``[T]`` (or ``[T, C]`` into :func:`encode_to_stream`), codes ``[Q, F]``.
"""

from __future__ import annotations

import dataclasses
import io
import math
import typing as tp

import numpy as np
import numpy.typing as npt
import soxr

from codec.audio import Array
from codec.audio.level import LevelSettings
from codec.inference import bitstream
from codec.inference import energy as side
from codec.inference.energy import Energy
from codec.inference.live_gain import LiveGains, RunningMean
from codec.inference.prepare import InferenceError, Prepared, PreparedAudio, prepare

if tp.TYPE_CHECKING:
    import torch

__all__ = ["InferenceError", "Prepared", "prepare"]

Codes = npt.NDArray[np.int64]

# Frames of real audio (or codes) on each side of a chunk. Measured on the GPU profile's
# architecture (3 s, chunks of 50 frames): with 8 frames the chunked decode differs from a
# whole-file decode by 1e-3, with 12 by 1e-7, with 16 not at all; the codes agree from 8 on.
DEFAULT_CONTEXT_FRAMES = 16
DEFAULT_CHUNK_FRAMES = bitstream.DEFAULT_CHUNK_FRAMES  # 10 s at 50 frames/s


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
    """What the inference path needs of a model: a torch :class:`codec.model.codec.Codec` (its
    ``encode``/``decode`` on tensors), or a model that codes NumPy arrays itself (``encode_array``
    and ``decode_array``, :class:`codec.inference.onnx_codec.OnnxCodec`: then torch is never
    imported here)."""

    @property
    def config(self) -> ConfigLike: ...


class _TorchCodec(tp.Protocol):
    def encode(self, audio: torch.Tensor, n_quantizers: int | None = None) -> torch.Tensor: ...

    def decode(self, codes: torch.Tensor) -> torch.Tensor: ...


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
    import torch

    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return tp.cast(torch.device, p.device)
    return torch.device("cpu")


class _ArrayCodec(tp.Protocol):
    def encode_array(self, audio: Array, n_quantizers: int) -> Codes: ...

    def decode_array(self, codes: Codes) -> Array: ...


def _array_codec(model: CodecLike) -> _ArrayCodec | None:
    """``model`` when it codes NumPy arrays itself (the ONNX runtime), else None (torch)."""
    return tp.cast(_ArrayCodec, model) if hasattr(model, "encode_array") else None


def segment_encoder(model: CodecLike, n_q: int) -> tp.Callable[[Array], Codes]:
    """Samples ``[T]`` at the model's rate → codes ``[n_q, ceil(T / hop)]``, with either runtime."""
    arrays = _array_codec(model)
    if arrays is not None:
        return lambda x: arrays.encode_array(x, n_q)
    return _torch_encoder(model, n_q)


def _torch_encoder(model: CodecLike, n_q: int) -> tp.Callable[[Array], Codes]:
    import torch  # here, not at the top: the ONNX runtime's start-up never imports torch

    device = _device(model)
    torch_model = tp.cast(_TorchCodec, model)

    def run(segment: Array) -> Codes:
        x = torch.from_numpy(np.ascontiguousarray(segment)).to(device).view(1, 1, -1)
        with torch.inference_mode():
            codes = torch_model.encode(x, n_q)
        return tp.cast(Codes, codes[0].to("cpu", torch.int64).numpy())

    return run


def _torch_decoder(model: CodecLike) -> tp.Callable[[Codes], Array]:
    import torch

    device = _device(model)
    torch_model = tp.cast(_TorchCodec, model)

    def run(window: Codes) -> Array:
        codes = torch.from_numpy(np.ascontiguousarray(window)).to(device).unsqueeze(0)
        with torch.inference_mode():
            audio = torch_model.decode(codes)[0, 0]
        return tp.cast(Array, audio.to("cpu", torch.float32).numpy())

    return run


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
    encode = segment_encoder(model, n_q)
    for start in range(0, total, chunk_frames):
        end = min(start + chunk_frames, total)
        lo = max(0, start - context_frames)
        hi = min(total, end + context_frames)
        segment = np.asarray(audio[lo * hop : hi * hop], dtype=np.float32)
        yield encode(segment)[:, start - lo : end - lo]


def decode_codes(
    model: CodecLike,
    chunks: tp.Iterable[npt.NDArray[np.integer[tp.Any]]],
    *,
    context_frames: int = DEFAULT_CONTEXT_FRAMES,
) -> tp.Iterator[Array]:
    """Decode code chunks (``[Q, n]`` each, any sizes) to audio blocks at the model's rate.

    Yields one block ``[n · hop]`` per input chunk, still at the normalized level. Each
    chunk is decoded with ``context_frames`` frames of its neighbours' codes on both
    sides (so chunks are read ahead until that many frames follow it: one chunk of a file,
    several of a live stream), which are then dropped. Memory: the chunks read ahead and
    one chunk of audio.
    """
    hop = int(model.config.hop_length)
    arrays = _array_codec(model)
    decode = arrays.decode_array if arrays is not None else _torch_decoder(model)
    history: Codes | None = None  # the last context_frames frames before the current chunk
    pending: list[Codes] = []  # chunks read but not decoded; the first is the current one

    def decode_first(right: Codes) -> Array:
        nonlocal history
        current = pending.pop(0)
        left = history if history is not None else current[:, :0]
        window = np.concatenate([left, current, right], axis=1)
        a = left.shape[1] * hop
        seen = np.concatenate([left, current], axis=1)
        history = seen[:, max(0, seen.shape[1] - context_frames) :]
        return decode(window)[a : a + current.shape[1] * hop]

    def right_context() -> Codes:
        return np.concatenate([pending[0][:, :0], *pending[1:]], axis=1)[:, :context_frames]

    for chunk in _as_int64(chunks):
        pending.append(chunk)
        # A chunk is decoded once context_frames frames of codes after it are in (one chunk of a
        # file's 500 frames; several of a live stream's 5).
        while pending and sum(c.shape[1] for c in pending[1:]) >= context_frames:
            yield decode_first(right_context())
    while pending:
        yield decode_first(right_context())


def _as_int64(chunks: tp.Iterable[npt.NDArray[np.integer[tp.Any]]]) -> tp.Iterator[Codes]:
    for c in chunks:
        arr = np.asarray(c)
        if arr.ndim != 2:
            raise ValueError(f"code chunks must be [Q, frames], got {arr.shape}")
        if arr.shape[1]:
            yield arr.astype(np.int64, copy=False)


DC_SEGMENT_S = 10.0  # the decoded offset is measured over segments of this length
DC_RAMP_MS = 20.0  # the offset removed moves from one segment's to the next's over this


def dc_removed(blocks: tp.Iterable[Array], rate: int) -> tp.Iterator[Array]:
    """Decoded audio (blocks of any sizes) less its mean over segments of
    :data:`DC_SEGMENT_S` (the last one 10 to 20 s, so no short tail is measured alone; a
    recording under 20 s is one segment): a decoder's output bias is no signal (the encoder
    removed the input's own offset), and silence must decode to silence, not to an offset.
    Subtracting a constant shifts no phase (a high-pass filter would: 0.6 degrees at 100 Hz for
    a 1 Hz one, a -45 dB error on speech); where the mean changes between segments the offset
    ramps over :data:`DC_RAMP_MS`, so there is no step. Holds back at most two segments."""
    size = max(1, round(DC_SEGMENT_S * rate))
    ramp = max(1, round(DC_RAMP_MS * 1e-3 * rate))
    previous: list[float] = []  # the last segment's mean, once there is one
    held: list[Array] = []
    n_held = 0

    def emit(x: Array) -> Array:
        mean = float(np.mean(x, dtype=np.float64))
        offset = np.full(x.shape[0], mean, np.float32)
        if previous:
            n = min(ramp, x.shape[0])
            offset[:n] = previous[0] + (mean - previous[0]) * (np.arange(1, n + 1, dtype=np.float32) / n)
        previous[:] = [mean]
        return (x - offset).astype(np.float32, copy=False)

    for block in blocks:
        held.append(np.asarray(block, np.float32))
        n_held += block.shape[0]
        if n_held >= 2 * size:  # a segment is complete, and another follows it
            x = np.concatenate(held)
            start = 0
            while x.shape[0] - start >= 2 * size:
                yield emit(x[start : start + size])
                start += size
            held, n_held = [x[start:]], x.shape[0] - start
    if n_held:
        yield emit(np.concatenate(held))


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


def slice_levels(audio: PreparedAudio, hop: int, settings: side.EnergySettings, chunk_frames: int) -> side.LevelCodes:
    """:func:`codec.inference.energy.level_codes` of ``audio``'s gained samples, read
    ``chunk_frames`` frames at a time (a whole number of blocks: the header check makes blocks
    divide chunks)."""
    step = chunk_frames * hop
    parts = [
        side.level_codes(audio.gained(start, start + step), hop, settings) for start in range(0, audio.shape[0], step)
    ]
    return np.concatenate([np.zeros(0, np.int64), *parts])


def encode_prepared(
    model: CodecLike,
    prepared: Prepared,
    kbps: float,
    fileobj: tp.BinaryIO,
    *,
    fingerprint: bytes | None = None,
    chunk_frames: int = DEFAULT_CHUNK_FRAMES,
    context_frames: int = DEFAULT_CONTEXT_FRAMES,
    energy: Energy = True,
    name: str = "the input",
) -> bitstream.Header:
    """Encode a :class:`Prepared` input at ``kbps`` and write its bitstream to ``fileobj``
    chunk by chunk (version 2 with energy side information, version 1 if ``energy`` is false);
    returns the header written. The one place a bitstream header is made.

    ``fingerprint`` defaults to :func:`codec.model.checkpoint.model_fingerprint` of ``model``.
    :class:`InferenceError` for an unserved bitrate or a gain the bitstream cannot carry.
    """
    config = model.config
    hop = int(config.hop_length)
    n_q = n_quantizers_for(model, kbps)
    check_gain(prepared.gain_db, prepared.input_lufs, prepared.settings.target_lufs, name)
    header = bitstream.Header(
        fingerprint=_fingerprint(model, fingerprint),
        sample_rate=prepared.sample_rate,
        length=prepared.length,
        channels=min(prepared.channels, bitstream.MAX_CHANNELS),
        model_rate=prepared.model_rate,
        hop_length=hop,
        n_quantizers=n_q,
        bits_per_code=int(config.bits_per_code),
        frame_count=n_frames(prepared.audio.shape[0], hop),
        chunk_frames=chunk_frames,
        input_lufs=prepared.input_lufs,
        gain_db=prepared.gain_db,
        energy=side.resolve(energy, prepared.model_rate / hop, chunk_frames),
    )
    header.check(name)
    levels = None if header.energy is None else slice_levels(prepared.audio, hop, header.energy, chunk_frames)
    blocks = encode_codes(
        model, tp.cast(Array, prepared.audio), kbps, chunk_frames=chunk_frames, context_frames=context_frames
    )
    bitstream.write_stream(fileobj, header, blocks, levels)
    return header


def encode_to_stream(
    model: CodecLike,
    audio: npt.NDArray[np.floating[tp.Any]],
    sample_rate: int,
    kbps: float,
    fileobj: tp.BinaryIO,
    levels: LevelSettings | None = None,
    *,
    fingerprint: bytes | None = None,
    chunk_frames: int = DEFAULT_CHUNK_FRAMES,
    context_frames: int = DEFAULT_CONTEXT_FRAMES,
    energy: Energy = True,
) -> bitstream.Header:
    """:func:`encode_prepared` of samples in memory (``[T]`` or ``[T, C]`` at ``sample_rate``),
    prepared with ``levels`` (the model's :class:`~codec.audio.level.LevelSettings`; ``None``:
    the project's defaults): the same bytes ``codec encode`` writes for a FLOAT WAV of them."""
    prepared = prepare(audio, sample_rate, int(model.config.sample_rate), levels)
    return encode_prepared(
        model,
        prepared,
        kbps,
        fileobj,
        fingerprint=fingerprint,
        chunk_frames=chunk_frames,
        context_frames=context_frames,
        energy=energy,
    )


@dataclasses.dataclass(frozen=True)
class RoundTrip:
    """What :func:`roundtrip_with_codes` returns: the decoded ``audio`` ``[T]`` at the input's
    rate and length, the :class:`Prepared` input, the bitstream's ``header``, its ``codes``
    ``[Q, F]`` and energy level codes (``levels``, empty without side information), and the
    bitstream itself (what ``codec encode`` writes to its file)."""

    audio: Array
    prepared: Prepared
    header: bitstream.Header
    codes: Codes
    levels: Codes
    stream: bytes

    @property
    def side_bps(self) -> float:
        """Bits per second of energy side information."""
        return self.header.side_bps


def roundtrip_with_codes(
    model: CodecLike,
    audio: npt.NDArray[np.floating[tp.Any]],
    sample_rate: int,
    kbps: float,
    levels: LevelSettings | None = None,
    *,
    fingerprint: bytes | None = None,
    chunk_frames: int = DEFAULT_CHUNK_FRAMES,
    context_frames: int = DEFAULT_CONTEXT_FRAMES,
    energy: Energy = True,
) -> RoundTrip:
    """``audio`` (``[T]`` or ``[T, C]``) through :func:`encode_to_stream`'s steps into memory and
    back through :func:`decode_from_stream`: ``codec decode(codec encode(x))``, sample for sample."""
    prepared = prepare(audio, sample_rate, int(model.config.sample_rate), levels)
    buf = io.BytesIO()
    header = encode_prepared(
        model,
        prepared,
        kbps,
        buf,
        fingerprint=fingerprint,
        chunk_frames=chunk_frames,
        context_frames=context_frames,
        energy=energy,
    )
    data = buf.getvalue()
    records = list(bitstream.read_stream(io.BytesIO(data), size=len(data)).records)
    _, blocks = decode_from_stream(
        model, io.BytesIO(data), fingerprint=header.fingerprint, context_frames=context_frames, size=len(data)
    )
    return RoundTrip(
        audio=np.concatenate([np.zeros(0, np.float32), *blocks]),
        prepared=prepared,
        header=header,
        codes=np.concatenate([np.zeros((header.n_quantizers, 0), np.int64), *(r.codes for r in records)], axis=1),
        levels=np.concatenate([np.zeros(0, np.int64), *(r.levels for r in records)]),
        stream=data,
    )


def roundtrip(
    model: CodecLike,
    audio: npt.NDArray[np.floating[tp.Any]],
    sample_rate: int,
    kbps: float,
    levels: LevelSettings | None = None,
    **options: tp.Any,
) -> Array:
    """The decoded audio ``[T]`` at the input's rate and length (mono); see
    :func:`roundtrip_with_codes` for the options."""
    return roundtrip_with_codes(model, audio, sample_rate, kbps, levels, **options).audio


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
    return fingerprint if fingerprint is not None else fingerprint_of(model)


def fingerprint_of(model: CodecLike) -> bytes:
    """The model's ``source_fingerprint`` (a serving copy's, an ONNX export's, or a stand-in
    model's in tests), else :func:`codec.model.checkpoint.model_fingerprint` of its weights."""
    source = getattr(model, "source_fingerprint", None)
    if isinstance(source, bytes):
        return source
    from torch import nn  # a model without a recorded fingerprint is a torch module

    from codec.model.checkpoint import model_fingerprint

    return model_fingerprint(tp.cast(nn.Module, model))


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
    if header.live:
        return header, _decode_live(model, stream, context_frames)
    # What the model gives back loses any DC offset (it was removed from the input, and a
    # decoder's offset is no signal): silence decodes to its noise floor, not to an offset.
    if header.energy is None:  # version 1
        blocks: tp.Iterable[Array] = dc_removed(
            decode_codes(model, stream.chunks, context_frames=context_frames), header.model_rate
        )
    else:
        shaper = side.Shaper(header.energy, header.hop_length, header.model_rate, header.frame_count)

        def codes_of(records: tp.Iterator[bitstream.Chunk]) -> tp.Iterator[Codes]:
            for record in records:  # decode_codes reads a chunk before it yields its audio
                shaper.add_codes(record.levels)
                yield record.codes

        decoded = decode_codes(model, codes_of(stream.records), context_frames=context_frames)
        blocks = _shaped(shaper, dc_removed(decoded, header.model_rate))
    return header, restore_stream(blocks, header.gain_db, header.model_rate, header.sample_rate, header.length)


def _decode_live(model: CodecLike, stream: bitstream.Stream, context_frames: int) -> tp.Iterator[Array]:
    """A live stream (version 3) decoded as its chunks arrive: the same steps as a file's, with the
    running DC estimate of :mod:`codec.inference.live`, each chunk's gain ramp undone, and the
    last few milliseconds held back until the end record gives the input's length."""
    header = stream.header
    assert header.energy is not None  # a live header has it (bitstream.Header.check)
    shaper = side.Shaper(header.energy, header.hop_length, header.model_rate, None)
    gains = LiveGains(header.chunk_frames * header.hop_length)

    def codes_of(records: tp.Iterator[bitstream.Chunk]) -> tp.Iterator[Codes]:
        for record in records:
            shaper.add_codes(record.levels)
            gains.add(record.gain_db if record.gain_db is not None else 0.0)
            yield record.codes

    dc = RunningMean(header.model_rate)
    decoded = decode_codes(model, codes_of(stream.records), context_frames=context_frames)
    steady = ((b - np.float32(dc.update(b))).astype(np.float32) for b in decoded)
    resampler = soxr.ResampleStream(header.model_rate, header.sample_rate, 1, dtype="float32", quality="HQ")
    # The last frame is padded to a whole hop: at most that much output lies past the input's end.
    hold = math.ceil(header.hop_length * header.sample_rate / header.model_rate) + 16
    held = np.zeros(0, np.float32)
    emitted = 0
    for block in _shaped(shaper, steady):
        held = np.concatenate([held, resampler.resample_chunk(gains.undo(block), last=False)])
        if held.shape[0] > hold:
            yield held[:-hold]
            emitted += held.shape[0] - hold
            held = held[-hold:]
    held = np.concatenate([held, resampler.resample_chunk(np.zeros(0, np.float32), last=True)])
    length = stream.ended[0].length  # the records are exhausted: the end record was read
    remaining = max(0, length - emitted)
    tail = held[:remaining]
    yield np.concatenate([tail, np.zeros(remaining - tail.shape[0], np.float32)])
