"""Quality metrics for a speech codec: reference ``ref`` vs decoded ``est``.

Every function takes mono audio as 1-D float arrays of shape ``[T]`` (the same
length for ``ref`` and ``est``; align first) and returns plain Python numbers or a
small dataclass, so the evaluation stage can write them to JSON and MLflow as is.

============================  =====================================================
metric                        definition
============================  =====================================================
:func:`snr_db`                10·log10(Σ ref² / Σ (ref − est)²): waveform SNR, which a
                              gain error alone drags down (est = g·ref gives
                              −20·log10|1 − g|).
:func:`si_sdr_db`             scale-invariant SDR (Le Roux et al. 2019, "SDR –
                              half-baked or well done?"), on zero-mean signals:
                              blind to a gain error, unlike :func:`snr_db`.
:func:`amplitude_ratio`       RMS(est) / RMS(ref): the number that read 0.47 when the
                              decoder collapsed.
:func:`mel_distance`          multi-scale log-mel L1 distance (DAC, Kumar et al. 2023,
                              ``MelSpectrogramLoss``): mean over 7 STFT scales of
                              mean |log10 mel(ref) − log10 mel(est)|; 0 when equal.
:func:`pesq_wb`               ITU-T P.862.2 wide-band PESQ (MOS-LQO, 1.04–4.64), at
                              16 kHz (other rates are resampled to it).
:func:`stoi`                  short-time objective intelligibility (Taal et al. 2011),
                              0–1, via ``pystoi``.
:func:`codebook_usage`        per codebook: share of the codes used, and the
                              perplexity (exp of the entropy) of the code histogram.
============================  =====================================================

PESQ and STOI fail on some inputs (no speech detected, too short); they then return
:class:`Score` with ``value`` NaN and the ``reason``, so one bad clip never stops an
evaluation and the reason reaches the report.
"""

from __future__ import annotations

import dataclasses
import functools
import typing as tp
import warnings

import numpy as np
import numpy.typing as npt
import torch
import torchaudio

from codec.audio.mel import mel_scales
from codec.audio.resample import resample
from codec.model.quantize import code_usage

FloatArray = npt.NDArray[np.floating[tp.Any]]

PESQ_RATE = 16000  # wide-band PESQ is defined at 16 kHz only
# DAC's MelSpectrogramLoss scales: window lengths and mel bands per window (hop = window / 4).
MEL_WINDOWS: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048)
MEL_BANDS: tuple[int, ...] = (5, 10, 20, 40, 80, 160, 320)
MEL_FLOOR = 1e-5  # magnitudes are clamped here before log10, as in DAC


@dataclasses.dataclass(frozen=True)
class Score:
    """A metric that can fail on a given clip: ``value`` is NaN when it did, and
    ``reason`` says why (empty when it didn't)."""

    value: float
    reason: str = ""

    @property
    def ok(self) -> bool:
        return not np.isnan(self.value)


@dataclasses.dataclass(frozen=True)
class CodebookUsage:
    """How much of each of ``Q`` codebooks a set of codes uses.

    - ``used_fraction``: per codebook, distinct codes seen / ``codebook_size`` (0–1)
    - ``perplexity``: per codebook, exp(entropy) of the code histogram, between 1 (one
      code) and ``codebook_size`` (all codes equally often)
    - ``entropy_bits``: per codebook, log2(perplexity): the bits per code an entropy coder
      would need, against the ``log2(codebook_size)`` the bitstream spends
    """

    used_fraction: list[float]
    perplexity: list[float]
    entropy_bits: list[float]

    @property
    def mean_used_fraction(self) -> float:
        return float(np.mean(self.used_fraction)) if self.used_fraction else float("nan")

    @property
    def mean_perplexity(self) -> float:
        return float(np.mean(self.perplexity)) if self.perplexity else float("nan")


def _pair(ref: FloatArray, est: FloatArray) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Check ``ref`` and ``est`` are 1-D of equal length; return them as float64."""
    r = np.asarray(ref, dtype=np.float64)
    e = np.asarray(est, dtype=np.float64)
    if r.ndim != 1 or e.ndim != 1:
        raise ValueError(f"metrics expect mono audio of shape [T]; got {r.shape} and {e.shape}")
    if r.shape != e.shape:
        raise ValueError(
            f"reference and estimate differ in length: {r.shape[0]} vs {e.shape[0]} samples; align them first"
        )
    return r, e


def _ratio_db(num: float, den: float) -> float:
    """10·log10(num / den) with the edge cases spelled out: inf for a perfect match,
    -inf for an empty signal, NaN when both are zero."""
    if den == 0.0:
        return float("inf") if num > 0.0 else float("nan")
    if num == 0.0:
        return float("-inf")
    return float(10.0 * np.log10(num / den))


def snr_db(ref: FloatArray, est: FloatArray) -> float:
    """Signal-to-noise ratio of ``est`` against ``ref`` (both ``[T]``), in dB.

    ``10·log10(Σ ref² / Σ (ref − est)²)``. ``inf`` when they are equal.
    """
    r, e = _pair(ref, est)
    return _ratio_db(float(np.sum(r * r)), float(np.sum((r - e) ** 2)))


def si_sdr_db(ref: FloatArray, est: FloatArray) -> float:
    """Scale-invariant signal-to-distortion ratio (Le Roux et al. 2019), in dB.

    Both ``[T]`` signals are made zero-mean; the target is ``ref`` scaled by the
    least-squares gain ``α = <est, ref> / <ref, ref>``, and
    ``SI-SDR = 10·log10(‖α·ref‖² / ‖α·ref − est‖²)``. Multiplying ``est`` by any
    non-zero constant leaves it unchanged.
    """
    r, e = _pair(ref, est)
    r = r - r.mean()
    e = e - e.mean()
    ref_energy = float(np.dot(r, r))
    if ref_energy == 0.0:
        return float("nan")
    target = (float(np.dot(e, r)) / ref_energy) * r
    return _ratio_db(float(np.dot(target, target)), float(np.sum((target - e) ** 2)))


def amplitude_ratio(ref: FloatArray, est: FloatArray) -> float:
    """RMS(est) / RMS(ref) for ``[T]`` signals: 1.0 when the level is kept; NaN for a
    silent reference."""
    r, e = _pair(ref, est)
    ref_rms = float(np.sqrt(np.mean(r * r))) if r.size else 0.0
    if ref_rms == 0.0:
        return float("nan")
    return float(np.sqrt(np.mean(e * e)) / ref_rms)


@functools.lru_cache(maxsize=8)
def _mel_transforms(sample_rate: int) -> tuple[torchaudio.transforms.MelSpectrogram, ...]:
    return tuple(mel_scales(sample_rate, MEL_WINDOWS, MEL_BANDS))


def mel_distance(ref: FloatArray, est: FloatArray, sample_rate: int) -> float:
    """Multi-scale log-mel L1 distance between ``[T]`` signals at ``sample_rate``.

    For each (window, mel bands) in ``MEL_WINDOWS`` × ``MEL_BANDS`` (DAC's seven scales,
    hop = window / 4, Hann window, magnitude mel spectrogram with Slaney filters), the
    mean absolute difference of ``log10(max(mel, 1e-5))``; the result is the mean over
    scales. It is the log term of DAC's mel loss with fixed scales, so it does not move
    when the training loss is re-tuned. 0 for identical signals; lower is better; a
    pure gain ``g`` reads ``|log10 g|`` (0.328 for 0.47). Not comparable across sample
    rates.
    """
    r, e = _pair(ref, est)
    x = torch.from_numpy(np.stack([r, e])).float()
    total = 0.0
    with torch.no_grad():
        for transform in _mel_transforms(int(sample_rate)):
            mel = transform(x).clamp_min(MEL_FLOOR).log10()
            total += float((mel[0] - mel[1]).abs().mean())
    return total / len(MEL_WINDOWS)


def pesq_wb(ref: FloatArray, est: FloatArray, sample_rate: int) -> Score:
    """Wide-band PESQ (ITU-T P.862.2) of ``est`` against ``ref`` (``[T]`` each).

    Signals at other rates are resampled to 16 kHz first (wide-band PESQ is defined
    there). Returns NaN with the reason when PESQ refuses the pair (no utterance
    detected, too short).
    """
    import pesq  # the C extension is only needed here

    r, e = _pair(ref, est)
    r32 = resample(r.astype(np.float32), int(sample_rate), PESQ_RATE)
    e32 = resample(e.astype(np.float32), int(sample_rate), PESQ_RATE)
    if not np.any(r32):
        return Score(float("nan"), "the reference is digital silence")
    if not np.all(np.isfinite(e32)):
        return Score(float("nan"), "the estimate holds NaN or inf samples")
    try:
        value = pesq.pesq(PESQ_RATE, r32.astype(np.float64), e32.astype(np.float64), "wb")
    except pesq.NoUtterancesError:
        return Score(float("nan"), "PESQ detected no utterance in the reference (silence or too quiet)")
    except pesq.BufferTooShortError:
        return Score(float("nan"), f"PESQ needs a longer signal than {r.shape[0] / sample_rate:.2f} s")
    except pesq.PesqError as exc:
        return Score(float("nan"), f"PESQ failed: {type(exc).__name__}: {exc}")
    return Score(float(value))


def stoi(ref: FloatArray, est: FloatArray, sample_rate: int, extended: bool = False) -> Score:
    """Short-time objective intelligibility (Taal et al. 2011; ``extended`` = ESTOI,
    Jensen & Taal 2016) of ``est`` against ``ref`` (``[T]`` each), 0–1.

    pystoi resamples to 10 kHz and drops silent frames; when too few frames remain it
    warns and returns a meaningless 1e-5, which is turned into NaN with the reason here.
    """
    from pystoi import stoi as _stoi

    r, e = _pair(ref, est)
    if not np.any(r):
        return Score(float("nan"), "the reference is digital silence")
    if not np.all(np.isfinite(e)):
        return Score(float("nan"), "the estimate holds NaN or inf samples")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(_stoi(r, e, int(sample_rate), extended=extended))
    for w in caught:
        if "frames" in str(w.message).lower():
            return Score(float("nan"), f"STOI: {w.message}".strip())
    return Score(value)


def codebook_usage(codes: torch.Tensor | npt.NDArray[np.integer[tp.Any]], codebook_size: int) -> CodebookUsage:
    """Usage of each codebook by ``codes`` of shape ``[B, Q, F]`` (or ``[Q, F]``).

    Codes must lie in ``0..codebook_size-1``. See :class:`CodebookUsage`.
    """
    t = torch.as_tensor(codes).long()
    if t.ndim == 2:
        t = t.unsqueeze(0)
    if t.ndim != 3:
        raise ValueError(f"codes must be [B, Q, F] or [Q, F], got shape {tuple(t.shape)}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= codebook_size):
        raise ValueError(f"codes must lie in 0..{codebook_size - 1}, got {int(t.min())}..{int(t.max())}")
    if t.numel() == 0:
        return CodebookUsage([0.0] * t.shape[1], [float("nan")] * t.shape[1], [float("nan")] * t.shape[1])
    used, perplexity = code_usage(t, codebook_size)
    perp = [float(p) for p in perplexity]
    return CodebookUsage([float(u) for u in used], perp, [float(np.log2(p)) for p in perp])
