"""Recording conditions for out-of-domain evaluation sets: telephone band, cheap
microphone, room reverberation, background noise.

Each transform takes mono float32 ``x`` ``[T]`` at ``rate`` and returns float32 ``[T]``
(same length), then rescales its output to the RMS of ``x``: a condition changes the
spectrum or adds reverberation/noise, never the level, so the evaluation's level sweep
means the same on every set. For :func:`add_noise` the SNR is that of ``x`` to the added
noise before the rescaling (a common gain keeps it; the speech part of the output is
then ``10·log10(1 + 10^(−SNR/10))`` dB below ``x``, 0.41 dB at 10 dB SNR).

Everything is deterministic for a seed: :data:`CONDITIONS` seeds clip ``index`` with
``np.random.default_rng([params.seed, index])``.
"""

from __future__ import annotations

import dataclasses
import math
import typing as tp

import numpy as np
import numpy.typing as npt
import scipy.signal as sps

from codec.audio import Array
from codec.errors import UserError

F64 = npt.NDArray[np.float64]
Seed = int | tp.Sequence[int]  # anything np.random.default_rng takes

TELEPHONE_ORDER = 8  # Butterworth prototype order; the bandpass has 2·8 poles, run forward and back
MIC_LOW_CUT_HZ = 150.0
MIC_PRESENCE_HZ, MIC_PRESENCE_DB, MIC_PRESENCE_OCTAVES = 3500.0, 6.0, 0.4
MIC_TILT_FROM_HZ = 1000.0
NOISE_WHITE_BELOW_HZ = 100.0
REVERB_GAP_S = 0.003  # direct sound to the onset of the diffuse tail


@dataclasses.dataclass(frozen=True)
class ConditionParams:
    """Settings of the evaluation conditions (frequencies in Hz, levels in dB)."""

    telephone_low_hz: float = 300.0
    telephone_high_hz: float = 3400.0
    mic_tilt_db_per_octave: float = -3.0
    reverb_rt60_s: float = 0.6
    reverb_direct_to_reverberant_db: float = 0.0
    noise_snr_db: float = 10.0
    seed: int = 0

    def check(self, where: str) -> None:
        values = dataclasses.asdict(self)
        for name, v in values.items():
            if not math.isfinite(v):
                raise UserError(f"{where}.{name} is {v}; give a finite number")
        if not 0 < self.telephone_low_hz < self.telephone_high_hz:
            raise UserError(
                f"{where}: telephone band {self.telephone_low_hz}..{self.telephone_high_hz} Hz; "
                "need 0 < telephone_low_hz < telephone_high_hz (the classic band is 300..3400)"
            )
        limits = {
            "mic_tilt_db_per_octave": (-12.0, 6.0),
            "reverb_rt60_s": (0.05, 5.0),
            "reverb_direct_to_reverberant_db": (-20.0, 30.0),
            "noise_snr_db": (-10.0, 60.0),
        }
        for name, (lo, hi) in limits.items():
            if not lo <= values[name] <= hi:
                raise UserError(f"{where}.{name} is {values[name]}; it must be within {lo}..{hi}")
        if self.seed < 0:
            raise UserError(f"{where}.seed is {self.seed}; it must be >= 0")


def _match_rms(y: F64, x: Array) -> Array:
    """``y`` scaled to the RMS of ``x``, as float32 (silence stays silence)."""
    ey = float(np.sum(y * y))
    ex = float(np.sum(np.square(x, dtype=np.float64)))
    if ey == 0.0:
        return np.zeros(x.shape, np.float32)
    return (y * math.sqrt(ex / ey)).astype(np.float32)


def telephone(x: Array, rate: int, low_hz: float = 300.0, high_hz: float = 3400.0) -> Array:
    """A telephone channel's band limit: a Butterworth bandpass ``low_hz``..``high_hz``.

    Order 8 (16 poles) in second-order sections, run forward and backward
    (``sosfiltfilt``): zero phase, so the output stays aligned with ``x``, and the
    magnitude is squared, so the band edges are −6 dB points and 4 kHz is ~37 dB down
    (white noise at 16 kHz: the energy above 4 kHz is ~53 dB below that in 300..3400 Hz).
    """
    if not 0 < low_hz < high_hz < rate / 2:
        raise UserError(f"telephone band {low_hz}..{high_hz} Hz does not fit below Nyquist at {rate} Hz")
    if x.size == 0:
        return x.astype(np.float32)
    sos = sps.butter(TELEPHONE_ORDER, [low_hz, high_hz], btype="bandpass", fs=rate, output="sos")
    padlen = min(3 * (2 * len(sos) + 1), x.size - 1)
    y = sps.sosfiltfilt(sos, x.astype(np.float64), padlen=padlen)
    return _match_rms(y, x)


def cheap_mic_response_db(f: F64, tilt_db_per_octave: float) -> F64:
    """The cheap microphone's magnitude response (dB) at frequencies ``f`` (Hz).

    Modeled on small electret capsules in laptops and headsets: a 2nd-order
    (12 dB/octave) Butterworth low-cut at 150 Hz (small capsule and coupling
    capacitor), a +6 dB presence peak at 3.5 kHz (the capsule's cavity/grille
    resonance; Gaussian in log-frequency, σ = 0.4 octave, on top of the tilt), and
    ``tilt_db_per_octave`` above 1 kHz (a −3 dB/octave default: the dull top end).
    """
    r = np.maximum(f, 1e-3) / MIC_LOW_CUT_HZ
    low_cut = 20 * np.log10(r**2 / np.sqrt(1 + r**4))
    octaves = np.log2(np.maximum(f, 1e-3) / MIC_PRESENCE_HZ)
    presence = MIC_PRESENCE_DB * np.exp(-0.5 * (octaves / MIC_PRESENCE_OCTAVES) ** 2)
    tilt = tilt_db_per_octave * np.log2(np.maximum(f, MIC_TILT_FROM_HZ) / MIC_TILT_FROM_HZ)
    return tp.cast(F64, low_cut + presence + tilt)


def cheap_mic(x: Array, rate: int, tilt_db_per_octave: float = -3.0) -> Array:
    """``x`` as a cheap microphone hears it (:func:`cheap_mic_response_db`).

    A linear-phase FIR (``firwin2``, 0.1 s long, so the low-cut is resolved at 50 Hz)
    applied with ``fftconvolve(mode="same")``: zero delay. A fractional-octave tilt has no
    first-order IIR form, which is why this is an FIR.
    """
    if x.size == 0:
        return x.astype(np.float32)
    numtaps = 2 * round(0.05 * rate) + 1
    freqs = np.linspace(0.0, rate / 2, 2049)
    gain = 10 ** (cheap_mic_response_db(freqs, tilt_db_per_octave) / 20)
    gain[0] = 0.0
    h = sps.firwin2(numtaps, freqs, gain, fs=rate)
    y = sps.fftconvolve(x.astype(np.float64), h, mode="same")
    return _match_rms(y, x)


def synthetic_ir(rate: int, rt60_s: float, drr_db: float, rng: np.random.Generator) -> Array:
    """A room impulse response ``[N]``: a unit direct path, then Gaussian noise whose
    energy decays 60 dB in ``rt60_s``, starting 3 ms later, with (direct energy /
    tail energy) = ``drr_db``. ``N`` covers 1.2·RT60 (72 dB of decay).

    The decay is the same at every frequency (no air absorption), so the broadband
    RT60 is the requested one.
    """
    n = max(2, round(1.2 * rt60_s * rate))
    gap = min(n - 1, max(1, round(REVERB_GAP_S * rate)))
    t = np.arange(gap, n) / rate
    tail = rng.standard_normal(n - gap) * 10 ** (-3.0 * t / rt60_s)  # amplitude: energy falls 60 dB per rt60_s
    tail *= math.sqrt(10 ** (-drr_db / 10) / float(np.sum(tail * tail)))
    ir = np.zeros(n)
    ir[0] = 1.0
    ir[gap:] = tail
    return ir.astype(np.float32)


def rt60_schroeder(ir: Array, rate: int) -> float:
    """RT60 (s) of ``ir`` from Schroeder backward integration (ISO 3382-1).

    A least-squares line through the energy decay curve from −5 to −35 dB (T30),
    or to −25 dB (T20) when the curve does not reach −35 dB, extrapolated to 60 dB.
    """
    e = np.square(np.asarray(ir, np.float64))
    edc = np.cumsum(e[::-1])[::-1]
    if edc[0] <= 0:
        raise ValueError("the impulse response is silent")
    with np.errstate(divide="ignore"):
        edc_db = 10 * np.log10(edc / edc[0])
    for lo in (-35.0, -25.0):
        if edc_db.min() < lo:
            sel = (edc_db <= -5.0) & (edc_db >= lo)
            if np.count_nonzero(sel) >= 2:
                t = np.flatnonzero(sel) / rate
                slope = np.polyfit(t, edc_db[sel], 1)[0]  # dB/s
                return float(-60.0 / slope)
    raise ValueError("the energy decay curve does not fall 25 dB below its start; the IR is too short")


def reverb(x: Array, rate: int, rt60_s: float = 0.6, drr_db: float = 0.0, seed: Seed = 0) -> Array:
    """``x`` in a room: convolved (``fftconvolve``) with :func:`synthetic_ir`, cut to ``[T]``."""
    if x.size == 0:
        return x.astype(np.float32)
    ir = synthetic_ir(rate, rt60_s, drr_db, np.random.default_rng(seed))
    y = sps.fftconvolve(x.astype(np.float64), ir.astype(np.float64))[: x.size]
    return _match_rms(y, x)


def pink_noise(n: int, rate: int, rng: np.random.Generator) -> F64:
    """Unit-RMS noise ``[n]``, pink (−3 dB/octave) above 100 Hz and white below, no DC.

    Flat below 100 Hz so that inaudible rumble (pink noise has equal energy in every
    octave, down to 1/clip length) doesn't take half of the noise energy an SNR counts.
    """
    spec = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    f = np.fft.rfftfreq(n, 1.0 / rate)
    spec /= np.sqrt(np.maximum(f, NOISE_WHITE_BELOW_HZ))
    spec[0] = 0.0
    y = np.fft.irfft(spec, n)
    return tp.cast(F64, y / (math.sqrt(float(np.mean(y * y))) + 1e-300))


def add_noise(x: Array, rate: int, snr_db: float = 10.0, seed: Seed = 0) -> Array:
    """``x`` plus :func:`pink_noise` at ``snr_db`` = 10·log10(Σx² / Σnoise²) over the clip,
    then rescaled to the RMS of ``x`` (which keeps the SNR). Silent ``x`` stays silent."""
    x64 = x.astype(np.float64)
    ex = float(np.sum(x64 * x64))
    if x.size < 2 or ex == 0.0:
        return x.astype(np.float32)
    noise = pink_noise(x.size, rate, np.random.default_rng(seed))
    noise *= math.sqrt(ex / (float(np.sum(noise * noise)) * 10 ** (snr_db / 10)))
    return _match_rms(x64 + noise, x)


Condition = tp.Callable[[Array, int, ConditionParams, int], Array]


def _telephone(x: Array, rate: int, p: ConditionParams, index: int) -> Array:
    return telephone(x, rate, p.telephone_low_hz, p.telephone_high_hz)


def _cheap_mic(x: Array, rate: int, p: ConditionParams, index: int) -> Array:
    return cheap_mic(x, rate, p.mic_tilt_db_per_octave)


def _reverb(x: Array, rate: int, p: ConditionParams, index: int) -> Array:
    return reverb(x, rate, p.reverb_rt60_s, p.reverb_direct_to_reverberant_db, (p.seed, index))


def _noise(x: Array, rate: int, p: ConditionParams, index: int) -> Array:
    return add_noise(x, rate, p.noise_snr_db, (p.seed, index))


CONDITIONS: dict[str, Condition] = {
    "telephone": _telephone,
    "cheap_mic": _cheap_mic,
    "reverb": _reverb,
    "noise": _noise,
}


def apply(name: str, x: Array, rate: int, params: ConditionParams, index: int) -> Array:
    """Condition ``name`` applied to clip number ``index`` (which seeds its noise and room)."""
    fn = CONDITIONS.get(name)
    if fn is None:
        raise UserError(f"unknown evaluation condition {name!r}; known conditions are {', '.join(CONDITIONS)}")
    return fn(x, rate, params, index)
