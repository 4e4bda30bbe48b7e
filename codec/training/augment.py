"""On-the-fly augmentation of training segments: what real recordings do to speech that a
synthesizer's clean output never shows the codec.

Each segment independently, with its own probability per effect (``params.yaml:
train.augment``), in this order:

1. **speed** (pitch and tempo together, by resampling): a factor in ``speed``;
2. **microphone EQ**: a 2nd-order low-cut at a frequency in ``low_cut_hz`` and a tilt in
   ``tilt_db_per_octave`` above 1 kHz;
3. **band limit**: a 4th-order low-pass at a frequency in ``high_cut_hz`` (telephone-like
   and band-limited recordings);
4. **room**: a synthetic impulse response (a direct path, then noise decaying 60 dB in an
   RT60 drawn from ``rt60_s``, at a direct-to-reverberant ratio in ``drr_db``);
5. **noise**: pink or white noise at an SNR in ``noise_snr_db`` (low-level: a room's or a
   preamp's floor, not a noisy street);

then the segment is brought back to its RMS before augmentation (the codec trains at the
normalized level: augmentation changes the spectrum, never the level).

The ranges stay milder than the evaluation's conditions (telephone 300..3400 Hz, a -3 dB/octave
microphone, a 0.6 s room, noise at 10 dB SNR: :mod:`codec.evaluation.conditions`), so the
out-of-domain sets measure generalization rather than a copy of the training data.

Filters are applied as real gains on the segment's spectrum (zero phase; segments are a
fraction of a second, so the circular wrap of a smooth response is negligible); the room by
FFT convolution. Deterministic: :func:`augment_batch` takes a ``numpy.random.Generator``
that the sampler seeds from its ``torch.Generator`` (whose state the checkpoint holds), so a
resumed run augments exactly as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import typing as tp

import numpy as np
import numpy.typing as npt

from codec.errors import UserError

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


@dataclasses.dataclass
class AugmentParams:
    """``params.yaml: train.augment`` (ranges are ``[low, high]``, drawn uniformly)."""

    enabled: bool = True
    speed_prob: float = 0.3
    speed: list[float] = dataclasses.field(default_factory=lambda: [0.94, 1.06])
    eq_prob: float = 0.5
    low_cut_hz: list[float] = dataclasses.field(default_factory=lambda: [20.0, 200.0])
    tilt_db_per_octave: list[float] = dataclasses.field(default_factory=lambda: [-2.5, 1.5])
    band_limit_prob: float = 0.2
    high_cut_hz: list[float] = dataclasses.field(default_factory=lambda: [4000.0, 7500.0])
    reverb_prob: float = 0.25
    rt60_s: list[float] = dataclasses.field(default_factory=lambda: [0.1, 0.45])
    drr_db: list[float] = dataclasses.field(default_factory=lambda: [3.0, 15.0])
    noise_prob: float = 0.3
    noise_snr_db: list[float] = dataclasses.field(default_factory=lambda: [20.0, 40.0])

    def check(self, where: str) -> None:
        for name in ("speed_prob", "eq_prob", "band_limit_prob", "reverb_prob", "noise_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UserError(f"{where}.{name} is {value}; a probability must be within 0..1")
        ranges = {
            "speed": (0.5, 2.0),
            "low_cut_hz": (1.0, 2000.0),
            "tilt_db_per_octave": (-12.0, 12.0),
            "high_cut_hz": (1000.0, 96000.0),
            "rt60_s": (0.01, 3.0),
            "drr_db": (-20.0, 40.0),
            "noise_snr_db": (-10.0, 100.0),
        }
        for name, (lo, hi) in ranges.items():
            r = getattr(self, name)
            if len(r) != 2 or not (lo <= r[0] <= r[1] <= hi):
                raise UserError(f"{where}.{name} {r} must be [low, high] with {lo:g} <= low <= high <= {hi:g}")


def _draw(rng: np.random.Generator, r: tp.Sequence[float]) -> float:
    return float(rng.uniform(r[0], r[1]))


def change_speed(x: F64, factor: float) -> F64:
    """``x`` played ``factor`` times faster (pitch up by the same factor), same length: the
    first ``len(x) / factor`` samples' worth of audio, zero-padded if it runs out."""
    n = x.shape[0]
    positions = np.arange(n) * factor
    return np.interp(positions, np.arange(n), x, right=0.0)


def eq_gain(freqs: F64, low_cut_hz: float | None, tilt_db_per_octave: float, high_cut_hz: float | None) -> F64:
    """Magnitude response of the EQ (linear gain) at ``freqs`` Hz."""
    f = np.maximum(freqs, 1e-3)
    gain = np.ones_like(f)
    if low_cut_hz is not None:
        r = f / low_cut_hz
        gain *= r**2 / np.sqrt(1 + r**4)  # 2nd-order Butterworth high-pass
    if tilt_db_per_octave:
        gain *= 10 ** (tilt_db_per_octave * np.log2(np.maximum(f, 1000.0) / 1000.0) / 20)
    if high_cut_hz is not None:
        gain /= np.sqrt(1 + (f / high_cut_hz) ** 8)  # 4th-order Butterworth low-pass
    gain[0] = 0.0
    return gain


def room_ir(rate: int, rt60_s: float, drr_db: float, rng: np.random.Generator) -> F64:
    """A unit direct path, then Gaussian noise decaying 60 dB in ``rt60_s`` from 3 ms on,
    with direct / tail energy = ``drr_db``."""
    n = max(4, round(1.2 * rt60_s * rate))
    gap = min(n - 1, max(1, round(0.003 * rate)))
    t = np.arange(gap, n) / rate
    tail = rng.standard_normal(n - gap) * 10 ** (-3.0 * t / rt60_s)
    tail *= math.sqrt(10 ** (-drr_db / 10) / float(np.sum(tail * tail)))
    ir = np.zeros(n)
    ir[0] = 1.0
    ir[gap:] = tail
    return ir


def augment(x: F32, rate: int, params: AugmentParams, rng: np.random.Generator) -> F32:
    """One segment ``[T]`` through the effects ``rng`` draws (see the module docstring)."""
    y = x.astype(np.float64)
    energy = float(np.sum(y * y))
    if energy == 0.0 or y.shape[0] < 4:
        return x
    n = y.shape[0]
    if rng.random() < params.speed_prob:
        y = change_speed(y, _draw(rng, params.speed))
    eq = rng.random() < params.eq_prob
    band = rng.random() < params.band_limit_prob
    if eq or band:
        freqs = np.fft.rfftfreq(n, 1.0 / rate).astype(np.float64)
        low = _draw(rng, params.low_cut_hz) if eq else None
        tilt = _draw(rng, params.tilt_db_per_octave) if eq else 0.0
        high = min(_draw(rng, params.high_cut_hz), 0.49 * rate) if band else None
        y = np.fft.irfft(np.fft.rfft(y) * eq_gain(freqs, low, tilt, high), n)
    if rng.random() < params.reverb_prob:
        ir = room_ir(rate, _draw(rng, params.rt60_s), _draw(rng, params.drr_db), rng)
        size = 1 << (n + ir.shape[0] - 1).bit_length()
        y = np.fft.irfft(np.fft.rfft(y, size) * np.fft.rfft(ir, size), size)[:n]
    if rng.random() < params.noise_prob:
        noise = np.asarray(rng.standard_normal(n), dtype=np.float64)
        if rng.random() < 0.5:  # pink above 100 Hz
            spec = np.fft.rfft(noise) / np.sqrt(np.maximum(np.fft.rfftfreq(n, 1.0 / rate), 100.0))
            noise = np.fft.irfft(spec, n)
        ey = float(np.sum(y * y))
        en = float(np.sum(noise * noise))
        if ey > 0 and en > 0:
            y = y + noise * math.sqrt(ey / (en * 10 ** (_draw(rng, params.noise_snr_db) / 10)))
    ey = float(np.sum(y * y))
    if ey == 0.0:
        return x
    return (y * math.sqrt(energy / ey)).astype(np.float32)


def augment_batch(batch: F32, rate: int, params: AugmentParams, rng: np.random.Generator) -> F32:
    """Every segment of ``batch`` ``[B, 1, T]`` through :func:`augment`, in order."""
    out = np.empty_like(batch)
    for b in range(batch.shape[0]):
        out[b, 0] = augment(batch[b, 0], rate, params, rng)
    return out
