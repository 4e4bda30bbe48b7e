"""Live coding: ``codec encode --live`` writes a bitstream chunk by chunk while the input is still
arriving (a microphone through a pipe), and ``codec decode --live`` plays a growing stream out
as its chunks arrive.

The whole-file path (:mod:`codec.inference.pipeline`) measures the input's loudness over the
whole file before it codes a frame. Live, the level comes from a running BS.1770 meter instead:

- **meter**: gated BS.1770 loudness (K-weighting, 400 ms blocks every 100 ms, the -70 LUFS and
  -10 LU gates) over the last :data:`METER_WINDOW_S` seconds of the input at the model's rate;
- **gain** (:class:`LiveGain`): the first chunk with sound above the gate takes the gain that
  brings what has arrived to the model's loudness target (as :func:`codec.audio.level.gain_for`:
  capped; 0 dB until then); afterwards the gain follows the meter only when it is :data:`HYSTERESIS_DB` or more
  off (a steady talker keeps one gain), moving at most :data:`ATTACK_DB` per chunk (30 dB/s at
  100 ms chunks), in a ramp across the chunk (linear in dB), never a step;
- **bitstream**: version 3 (:mod:`codec.inference.bitstream`, "live"): each chunk carries its
  gain, and the stream's length and frame count come in an end record, so nothing is
  rewritten; decoders from before version 3 refuse it with their "version not supported"
  message. The decoder undoes exactly the encoder's gain ramp.

Latency (:func:`algorithmic_latency_ms`): a chunk is coded once ``context_frames`` frames of
audio after it have arrived (the same look-ahead the whole-file path uses, so a steady talker's
codes are the whole-file codes), and decoded once ``context_frames`` frames of codes after it
have: chunk + 2 × context frames, plus the resamplers' and the energy shaper's delays. The
frame model's receptive field is what sets the context; a causal model would need none.

DC: the whole-file path removes the input's mean (and the decoded output's, per 10 s); live,
a running mean (:class:`codec.inference.live_gain.RunningMean`, a one-pole average with a 10 s time
constant) is removed on both sides, so nothing is held back for it.
"""

from __future__ import annotations

import dataclasses
import math
import typing as tp

import numpy as np
import numpy.typing as npt

from codec.audio import Array
from codec.audio.io import to_mono
from codec.audio.level import LevelSettings, gain_for
from codec.audio.limiter import limit
from codec.audio.loudness import StreamingKFilter, gate_block_energies
from codec.inference import bitstream
from codec.inference import energy as side
from codec.inference.live_gain import RunningMean, gain_ramp_db, scale_of
from codec.inference.pipeline import DEFAULT_CONTEXT_FRAMES, CodecLike, n_quantizers_for, segment_encoder
from codec.inference.prepare import InferenceError

__all__ = ["LiveEncoder", "LiveGain", "RunningMean", "WindowMeter", "algorithmic_latency_ms"]

DEFAULT_CHUNK_MS = 100.0  # a chunk of the live stream: written as soon as it is final
METER_WINDOW_S = 20.0  # the running meter's memory
# The gain moves only when the meter says it is this far off: on read speech (festival_voice
# joined) 1 dB kept the gain moving every few seconds, as the sentences' levels differ; with
# 2 dB it settles within 4 s and stays within 0.3 dB of the whole file's gain (tests/test_live.py).
HYSTERESIS_DB = 2.0
ATTACK_DB = 3.0  # at most this much gain change per chunk (30 dB/s at 100 ms chunks)


def algorithmic_latency_ms(chunk_frames: int, context_frames: int, frame_ms: float) -> float:
    """Input-to-output delay the design imposes (compute aside): a sample waits for the end of
    its chunk, then ``context_frames`` of look-ahead at the encoder and again at the decoder."""
    return (chunk_frames + 2 * context_frames) * frame_ms


class WindowMeter:
    """Gated BS.1770 loudness of the last :data:`METER_WINDOW_S` seconds (mono, model rate)."""

    STEP_S, BLOCK_STEPS = 0.1, 4

    def __init__(self, rate: int) -> None:
        self.k = StreamingKFilter(rate)
        self.step = round(self.STEP_S * rate)
        self.energies: list[float] = []  # mean K-weighted power per 100 ms step
        self._partial = np.zeros(0, np.float64)
        self.keep = round(METER_WINDOW_S / self.STEP_S)

    def add(self, x: Array) -> None:
        y = np.concatenate([self._partial, np.square(self.k(x))])
        n = y.shape[0] // self.step
        if n:
            self.energies.extend(np.mean(y[: n * self.step].reshape(n, self.step), axis=1).tolist())
            del self.energies[: max(0, len(self.energies) - self.keep)]
        self._partial = y[n * self.step :]

    def loudness(self) -> float:
        """LUFS over the window (``-inf``: nothing above the gate yet); a window under one
        400 ms block is measured as one block of what there is."""
        e = np.array(self.energies + ([float(np.mean(self._partial))] if self._partial.size else []))
        if e.size == 0:
            return -math.inf
        if e.size < self.BLOCK_STEPS:
            blocks = np.array([float(np.mean(e))])
        else:
            blocks = np.convolve(e, np.ones(self.BLOCK_STEPS) / self.BLOCK_STEPS, mode="valid")
        return gate_block_energies(blocks)


@dataclasses.dataclass
class LiveGain:
    """The gain of each chunk (dB): see the module docstring."""

    target_lufs: float
    max_gain_db: float
    gains: list[float] = dataclasses.field(default_factory=list)
    heard: bool = False  # the meter has measured something above the gate

    def next(self, loudness: float) -> float:
        want, _ = gain_for(loudness, False, self.target_lufs, self.max_gain_db)
        want = float(np.clip(want, bitstream.MIN_GAIN_DB, bitstream.MAX_GAIN_DB))
        first = not self.heard and math.isfinite(loudness)  # the first sound: its gain at once
        self.heard = self.heard or first
        if not self.gains or first:
            gain = want
        else:
            last = self.gains[-1]
            step = float(np.clip(want - last, -ATTACK_DB, ATTACK_DB))
            gain = last if abs(want - last) < HYSTERESIS_DB else last + step
        gain = float(np.float32(gain))  # what the bitstream holds
        self.gains.append(gain)
        return gain


class LiveEncoder:
    """Feed it input blocks (``[n, C]`` float32 at ``sample_rate``) as they arrive; it writes a
    version-3 bitstream to ``fileobj`` chunk by chunk (flushed), then :meth:`finish` writes the
    rest and the end record and returns the header with the final length."""

    def __init__(
        self,
        model: CodecLike,
        levels: LevelSettings,
        kbps: float,
        sample_rate: int,
        channels: int,
        fileobj: tp.BinaryIO,
        *,
        fingerprint: bytes,
        chunk_ms: float = DEFAULT_CHUNK_MS,
        context_frames: int | None = None,
        dc_offset: float | None = None,
    ) -> None:
        """``dc_offset``: the source's DC offset at the model's rate when it is known (0 for a
        DC-free chain), instead of the running estimate."""
        import soxr

        config = model.config
        self.rate = int(config.sample_rate)
        self.hop = int(config.hop_length)
        if not bitstream.MIN_SAMPLE_RATE <= sample_rate <= bitstream.MAX_SAMPLE_RATE:
            raise InferenceError(f"live input at {sample_rate} Hz; send {bitstream.MIN_SAMPLE_RATE}..192000 Hz")
        self.chunk = max(1, round(chunk_ms * 1e-3 * self.rate / self.hop))  # frames
        self.context = DEFAULT_CONTEXT_FRAMES if context_frames is None else int(context_frames)
        self.n_q = n_quantizers_for(model, kbps)
        self.encode = segment_encoder(model, self.n_q)
        self.levels = levels
        self.settings = side.settings_for(self.rate / self.hop, self.chunk)
        self.header = bitstream.Header(
            fingerprint=fingerprint,
            sample_rate=int(sample_rate),
            length=0,
            channels=min(int(channels), bitstream.MAX_CHANNELS),
            model_rate=self.rate,
            hop_length=self.hop,
            n_quantizers=self.n_q,
            bits_per_code=int(config.bits_per_code),
            frame_count=0,
            chunk_frames=self.chunk,
            input_lufs=levels.target_lufs,
            gain_db=0.0,
            energy=self.settings,
            live=True,
        )
        self.header.check("live stream")
        self.out = fileobj
        self.resampler = (
            soxr.ResampleStream(sample_rate, self.rate, 1, dtype="float32", quality="HQ")
            if sample_rate != self.rate
            else None
        )
        self.dc = RunningMean(self.rate)
        self.dc_offset = dc_offset
        self.meter = WindowMeter(self.rate)
        self.gain = LiveGain(levels.target_lufs, levels.max_gain_db)
        self.length = 0  # input samples
        self.raw = np.zeros(0, np.float32)  # model-rate samples less the running mean, from self.start
        self.gained = np.zeros(0, np.float32)  # the same gained, for the chunks whose gain is known
        self.start = 0  # sample index of raw[0]
        self.done = 0  # chunks written
        self.frames = 0  # frames written

    def feed(self, block: npt.NDArray[np.floating[tp.Any]]) -> None:
        x = np.asarray(block, np.float32)
        if x.ndim == 1:
            x = x[:, None]
        if not np.all(np.isfinite(x)):
            raise InferenceError(f"the live input holds NaN or infinite samples (near {self.length} samples)")
        self.length += x.shape[0]
        mono = to_mono(x)
        y = self.resampler.resample_chunk(mono, last=False) if self.resampler is not None else mono
        self._take(y)
        self._code(final=False)

    def finish(self) -> bitstream.Header:
        if self.length == 0:
            raise InferenceError("the live input ended before any audio; nothing to encode")
        if self.resampler is not None:
            self._take(self.resampler.resample_chunk(np.zeros(0, np.float32), last=True))
        self._code(final=True)
        bitstream.write_end(self.out, self.done, self.length, self.frames)
        self.out.flush()
        return self.header.with_end(self.length, self.frames)

    def _take(self, y: Array) -> None:
        if y.shape[0]:
            offset = np.float32(self.dc.update(y) if self.dc_offset is None else self.dc_offset)
            self.meter.add(y)
            self.raw = np.concatenate([self.raw, (y - offset).astype(np.float32)])

    def _code(self, *, final: bool) -> None:
        size = self.chunk * self.hop
        while True:
            a = self.done * size  # the next chunk's first sample
            available = self.start + self.raw.shape[0]
            if available <= a:
                return
            if not final and available < a + size + self.context * self.hop:
                return
            self._write_chunk(a, min(a + size, available), available)

    def _write_chunk(self, a: int, b: int, available: int) -> None:
        previous = self.gain.gains[-1] if self.gain.gains else None
        gain = self.gain.next(self.meter.loudness())
        if self.done == 0:  # the first chunk: the header goes out with its gain
            self.header = dataclasses.replace(self.header, gain_db=gain)
            bitstream.write_header(self.out, self.header)
        ramp = gain_ramp_db(gain if previous is None else previous, gain, self.chunk * self.hop)[: b - a]
        gained_chunk = (self.raw[a - self.start : b - self.start] * scale_of(ramp)).astype(np.float32)
        # The window the model codes: context already gained, this chunk, and look-ahead at this gain.
        lo = max(self.start, a - self.context * self.hop)
        ahead = self.raw[b - self.start : min(available, b + self.context * self.hop) - self.start]
        past = self.gained[self.gained.shape[0] - (a - lo) :] if a > lo else np.zeros(0, np.float32)
        window = np.concatenate([past, gained_chunk, (ahead * scale_of(np.full(1, gain))[0]).astype(np.float32)])
        ceiling = self.levels.ceiling
        limited = window if ceiling is None else limit(window, ceiling, self.levels.limiter_window(self.rate))[0]
        frames_before = (a - lo) // self.hop
        n = -(-(b - a) // self.hop)
        codes = self.encode(limited)[:, frames_before : frames_before + n]
        levels = side.level_codes(gained_chunk, self.hop, self.settings)
        bitstream.write_chunk(self.out, self.header, self.done, codes, levels, gain)
        self.out.flush()
        self.done += 1
        self.frames += n
        self.gained = np.concatenate([self.gained, gained_chunk])
        # Keep only what the next chunk's context needs.
        keep_from = max(0, b - self.context * self.hop)
        drop = keep_from - self.start
        if drop > 0:
            self.raw = self.raw[drop:]
            self.start = keep_from
        self.gained = self.gained[max(0, self.gained.shape[0] - self.context * self.hop) :]
