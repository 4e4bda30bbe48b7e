"""Energy side information: the input's level per block, coded in the bitstream, so the
decoded audio keeps the input's energy whatever the model returns (the way CELT/Opus codes
band energies beside the fine structure).

A model trained on a few voices returns less energy on speech unlike them (it regresses to
the mean on what it cannot predict). Normalizing loudness before encoding and undoing the
gain after decoding cannot fix that: the loss happens inside the model. So the encoder also
sends what the decoded audio's level should be, and the decoder corrects towards it:

- **encoder** (:func:`block_levels`, :func:`quantize`): the mean-square level, in dB, of every
  block of ``block_frames`` frames of the input at the model's rate and the training
  loudness, before the peak limiter (the input's own energy at the level the model sees:
  a peaky voice loses up to a dB to the limiter, which decode does not undo), quantized
  to ``step_db`` in ``bits`` bits; code 0 means "below ``floor_db``" (silence, a faint
  noise floor: left alone);
- **decoder** (:class:`Shaper`): measures its own output over the same blocks and applies
  the gain that brings each block to its coded level, bounded to ``-MAX_CUT_DB..+MAX_BOOST_DB``
  and 0 dB where the input block was below the floor or the decoded block is (silence stays
  silence: the decoder's own hiss is never raised) or where the decoded level already lies
  within half a step of the coded one (a decoder that keeps the level is not touched); the
  gain is constant inside a block and crosses each block border in a raised-cosine fade of
  ``CROSSFADE_MS`` (in dB), so there is no step in the output at a border (the largest
  sample-to-sample change of the gain is bounded in :func:`max_gain_slope_db`).

Costs: ``bits`` per block. At the defaults (25 frames = 0.5 s, 0.5 dB, 8 bits), 16 bit/s:
1.07 % of 1.5 kbps, 0.27 % of 6 kbps. Block and step were chosen by measurement on the
evaluation sets (``experiments/energy_sweep.md``): 0.5 s / 0.5 dB kept every clip within
0.15 dB of its level; 1 s blocks cost half as much but follow level changes inside a
recording half as fast, 2 dB steps let a clip miss by 0.5 dB. The block size, step and floor travel in the bitstream
header (:mod:`codec.inference.bitstream`, version 2), so a decoder needs no params; the
decoder's bounds and fade are constants of the format, below.

Shapes: audio ``[T]`` float32 at the model's rate; level codes ``[n_blocks]`` int64.
"""

from __future__ import annotations

import dataclasses
import math
import typing as tp

import numpy as np
import numpy.typing as npt

from codec.audio import Array

# Constants of the format (a decoder applies them; they are not in the header).
MAX_BOOST_DB = 12.0  # a decoder 6 dB too quiet is corrected with room to spare
MAX_CUT_DB = 12.0
CROSSFADE_MS = 20.0  # fade of the gain across a block border (at most the block itself)
_EPS = 1e-20  # mean-square floor, -200 dB

LevelCodes = npt.NDArray[np.int64]


@dataclasses.dataclass(frozen=True)
class EnergySettings:
    """How the levels are measured and coded (all recorded in the bitstream header).

    - ``block_frames``: frames per block (0.5 s at 25 frames of 20 ms)
    - ``step_db``: quantizer step of the level
    - ``bits``: bits per block; codes ``1..2**bits - 1`` are ``floor_db + (c - 1) · step_db``
    - ``floor_db``: mean-square level (dBFS) below which a block is coded 0 and left alone
    """

    block_frames: int = 25
    step_db: float = 0.5
    bits: int = 8
    floor_db: float = -70.0

    def __post_init__(self) -> None:
        if not 1 <= int(self.block_frames) <= 65535:
            raise ValueError(f"energy block_frames must be 1..65535, got {self.block_frames}")
        if not 2 <= int(self.bits) <= 16:
            raise ValueError(f"energy bits must be 2..16, got {self.bits}")
        if not (math.isfinite(self.step_db) and 0.01 <= self.step_db <= 12.0):
            raise ValueError(f"energy step_db must be 0.01..12 dB, got {self.step_db}")
        if not (math.isfinite(self.floor_db) and -200.0 <= self.floor_db <= 0.0):
            raise ValueError(f"energy floor_db must be -200..0 dBFS, got {self.floor_db}")
        # The file holds the step and floor as float32: round them so both sides agree.
        object.__setattr__(self, "step_db", float(np.float32(self.step_db)))
        object.__setattr__(self, "floor_db", float(np.float32(self.floor_db)))

    @property
    def max_code(self) -> int:
        return (1 << int(self.bits)) - 1

    @property
    def ceiling_db(self) -> float:
        """The highest level the codes reach (louder blocks are coded at it)."""
        return self.floor_db + (self.max_code - 1) * self.step_db

    def bits_per_second(self, frame_rate: float) -> float:
        """Side-information bitrate at ``frame_rate`` frames per second."""
        return self.bits * frame_rate / self.block_frames


DEFAULT = EnergySettings()  # at 50 frames/s and 500-frame chunks: what settings_for gives
BLOCK_S = 0.5  # seconds per block (chosen by measurement: experiments/energy_sweep.md)

Energy = EnergySettings | bool  # True: settings_for the model; False: no side information


def settings_for(frame_rate: float, chunk_frames: int, base: EnergySettings = DEFAULT) -> EnergySettings:
    """``base`` with the block closest to :data:`BLOCK_S` (at most it) that divides
    ``chunk_frames`` (blocks may not straddle chunks): 25 frames at 50 frames/s."""
    want = max(1, min(int(chunk_frames), round(BLOCK_S * frame_rate)))
    block = next(b for b in range(want, 0, -1) if chunk_frames % b == 0)
    return dataclasses.replace(base, block_frames=block)


def resolve(energy: Energy, frame_rate: float, chunk_frames: int) -> EnergySettings | None:
    """The settings an ``energy`` argument means for a model at ``frame_rate`` (``None``: off)."""
    if energy is True:
        return settings_for(frame_rate, chunk_frames)
    if energy is False:
        return None
    return tp.cast(EnergySettings, energy)


def n_blocks(n_frames: int, block_frames: int) -> int:
    return -(-int(n_frames) // int(block_frames))


def block_levels(audio: Array, hop: int, block_frames: int) -> npt.NDArray[np.float64]:
    """Mean-square level (dB re full scale) of each block of ``block_frames · hop`` samples
    of ``audio`` ``[T]``; the last block is zero-padded to a whole frame count (as the model
    pads), i.e. measured over ``ceil(T / hop) · hop`` samples in all."""
    x = np.asarray(audio, dtype=np.float64)
    frames = -(-x.shape[0] // hop)
    size = block_frames * hop
    count = n_blocks(frames, block_frames)
    energy = np.bincount(np.arange(x.shape[0]) // size, weights=x * x, minlength=count)[:count]
    spans = np.full(count, float(size))
    if count:
        spans[-1] = frames * hop - (count - 1) * size
    return tp.cast(npt.NDArray[np.float64], 10.0 * np.log10(energy / spans + _EPS))


def quantize(levels_db: npt.NDArray[np.floating[tp.Any]], settings: EnergySettings) -> LevelCodes:
    """Levels (dB) → codes: 0 below the floor, else the nearest step (saturating)."""
    levels = np.asarray(levels_db, dtype=np.float64)
    codes = np.rint((levels - settings.floor_db) / settings.step_db).astype(np.int64) + 1
    codes = np.clip(codes, 1, settings.max_code)
    return np.where(levels < settings.floor_db, 0, codes).astype(np.int64)


def dequantize(codes: npt.NDArray[np.integer[tp.Any]], settings: EnergySettings) -> npt.NDArray[np.float64]:
    """Codes → levels (dB); code 0 (below the floor) → ``-inf``."""
    c = np.asarray(codes, dtype=np.int64)
    levels = settings.floor_db + (c - 1).astype(np.float64) * settings.step_db
    return np.where(c == 0, -np.inf, levels)


def level_codes(audio: Array, hop: int, settings: EnergySettings) -> LevelCodes:
    """What the encoder sends for prepared audio ``[T]``: one code per block."""
    return quantize(block_levels(audio, hop, settings.block_frames), settings)


def block_gains_db(
    decoded_levels_db: npt.NDArray[np.floating[tp.Any]],
    codes: npt.NDArray[np.integer[tp.Any]],
    settings: EnergySettings,
) -> npt.NDArray[np.float64]:
    """The decoder's gain per block (dB): coded level minus decoded level, bounded, and 0
    where the input block was below the floor or the decoded block is, or where the decoded
    level is within half a step of the coded one (the input's level is somewhere in that
    interval: a transparent decoder is left transparent)."""
    target = dequantize(codes, settings)
    measured = np.asarray(decoded_levels_db, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        gain = np.clip(target - measured, -MAX_CUT_DB, MAX_BOOST_DB)
    consistent = np.abs(target - measured) <= settings.step_db / 2
    keep = (np.asarray(codes) == 0) | (measured < settings.floor_db) | ~np.isfinite(gain) | consistent
    return np.where(keep, 0.0, gain)


def crossfade_samples(sample_rate: int, block_samples: int) -> int:
    """Length of the gain's fade across a block border (even, at most the block)."""
    n = round(CROSSFADE_MS * 1e-3 * sample_rate)
    return max(2, min(n - n % 2, block_samples - block_samples % 2))


def max_gain_slope_db(step_db: float, sample_rate: int, block_samples: int) -> float:
    """The largest change of the gain between two adjacent samples for a gain step of
    ``step_db`` between blocks: a raised cosine of ``W`` samples rises at most ``π/(2W)``
    of its height per sample."""
    return abs(step_db) * math.pi / (2 * crossfade_samples(sample_rate, block_samples))


def gain_curve(
    gains_db: npt.NDArray[np.floating[tp.Any]], block_samples: int, start: int, stop: int, fade: int
) -> Array:
    """The gain (dB) at samples ``[start, stop)`` for block gains ``gains_db`` (block ``k``
    covers ``[k·B, (k+1)·B)``): constant inside a block, a raised-cosine fade of ``fade``
    samples centred on each border. Samples past the last block keep its gain."""
    g = np.asarray(gains_db, dtype=np.float64)
    n = np.arange(start, stop)
    k = np.minimum(n // block_samples, g.shape[0] - 1)
    curve = g[k].copy()
    half = fade // 2
    # The border nearest each sample, and the position inside its fade.
    border = np.rint(n / block_samples).astype(np.int64)
    offset = n - border * block_samples  # -half..half-1 inside the fade
    inside = (offset >= -half) & (offset < half) & (border >= 1) & (border < g.shape[0])
    if np.any(inside):
        b = border[inside]
        phase = (offset[inside] + half + 0.5) / fade
        w = 0.5 - 0.5 * np.cos(np.pi * phase)
        curve[inside] = g[b - 1] + (g[b] - g[b - 1]) * w
    return curve.astype(np.float32)


class Shaper:
    """The decoder side, streaming: feed it the decoded audio (``[n]`` blocks at the model's
    rate, in order, of any sizes) with the level codes (in order, any grouping), get back
    the corrected audio, block by block; :meth:`finish` returns what is held back.

    A block's gain is known once the block is complete, and the fade across its border
    with the next block needs the next block's gain, so the shaper holds back at most one
    block plus half a fade (at most ``2 · block_frames · hop`` samples).
    """

    def __init__(self, settings: EnergySettings, hop: int, sample_rate: int, total_frames: int | None) -> None:
        """``total_frames``: the frames the decoder yields in all; ``None`` for a live stream (the
        last block is whatever :meth:`finish` finds)."""
        self.settings = settings
        self.block = int(settings.block_frames) * int(hop)
        live = total_frames is None
        self.total = math.inf if live else int(total_frames or 0) * int(hop)  # samples the decoder yields
        self.count = math.inf if live else n_blocks(int(total_frames or 0), settings.block_frames)
        self.fade = crossfade_samples(sample_rate, self.block)
        self._codes: list[int] = []
        self._gains: list[float] = []
        self._known = 0  # blocks whose gain is known
        self._buffer = np.zeros(0, np.float32)  # samples [self._start, …) not yet emitted
        self._start = 0
        self._fed = 0
        self._partial = np.zeros(0, np.float64)  # samples of the block being measured

    def add_codes(self, codes: npt.NDArray[np.integer[tp.Any]]) -> None:
        self._codes.extend(int(c) for c in np.asarray(codes).reshape(-1))

    def feed(self, audio: npt.NDArray[np.floating[tp.Any]]) -> Array:
        """Take the next decoded samples; return the corrected samples that are final."""
        x = np.asarray(audio, dtype=np.float32)
        self._buffer = np.concatenate([self._buffer, x])
        self._partial = np.concatenate([self._partial, x.astype(np.float64)])
        self._fed += x.shape[0]
        while self._known < self.count:
            size = int(min(self.block, self.total - self._known * self.block))
            if self._partial.shape[0] < size:
                break
            self._learn(self._partial[:size])
            self._partial = self._partial[size:]
        return self._emit(final=False)

    def finish(self) -> Array:
        """The rest: the samples held back (call after the last :meth:`feed`)."""
        if self._known < self.count and self._partial.shape[0]:  # fewer samples than promised
            self._learn(self._partial)
            self._partial = self._partial[:0]
        return self._emit(final=True)

    def _learn(self, samples: npt.NDArray[np.float64]) -> None:
        k = self._known
        if k >= len(self._codes):
            raise ValueError(f"level code of block {k} missing: the stream holds {len(self._codes)}")
        level = 10.0 * math.log10(float(np.mean(samples * samples)) + _EPS) if samples.size else -200.0
        self._gains.append(float(block_gains_db(np.array([level]), np.array([self._codes[k]]), self.settings)[0]))
        self._known += 1

    def _emit(self, *, final: bool) -> Array:
        # A sample in block k is final once k's gain is known and, inside the fade before
        # the border with block k + 1, once k + 1's is too.
        end = self._start + self._buffer.shape[0]
        if not final and self._known < self.count:
            end = min(end, self._known * self.block - self.fade // 2)
        if end <= self._start:
            return np.zeros(0, np.float32)
        gains = np.array(self._gains) if self._known else np.zeros(1)
        curve = gain_curve(gains, self.block, self._start, end, self.fade)
        n = end - self._start
        out = (self._buffer[:n] * np.power(np.float32(10.0), curve / np.float32(20.0))).astype(np.float32)
        self._buffer = self._buffer[n:]
        self._start = end
        return out


def shape(
    decoded: Array, codes: npt.NDArray[np.integer[tp.Any]], settings: EnergySettings, hop: int, sample_rate: int
) -> Array:
    """Whole-signal :class:`Shaper`: ``decoded`` ``[F · hop]`` corrected to ``codes``' levels."""
    frames = -(-decoded.shape[0] // hop)
    s = Shaper(settings, hop, sample_rate, frames)
    s.add_codes(codes)
    return np.concatenate([s.feed(decoded), s.finish()])
