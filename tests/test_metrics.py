"""The metrics against values computed by hand on synthetic signals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from codec.evaluation import metrics

SR = 16000


def sine(freq: float = 440.0, amp: float = 0.5, seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float64)


def speech_like(seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """Voiced harmonics (120 Hz pitch, a formant-like tilt) syllable-modulated at 4 Hz,
    with short pauses: enough for PESQ's voice activity detection and STOI's frames."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 120.0 * (1 + 0.05 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = sum((1.0 / k) * np.sin(k * phase + rng.uniform(0, 2 * np.pi)) for k in range(1, 30))
    envelope = np.clip(np.sin(2 * np.pi * 2.0 * t), 0, None) ** 0.5
    return np.asarray(0.1 * x * envelope, dtype=np.float64)


def test_snr_of_sine_plus_noise_at_a_known_snr() -> None:
    rng = np.random.default_rng(1)
    ref = sine(amp=0.5, seconds=4.0)
    for target in (0.0, 10.0, 25.0):
        signal_power = 0.5**2 / 2  # a sine's power is A²/2
        noise = rng.standard_normal(ref.size) * math.sqrt(signal_power / 10 ** (target / 10))
        assert metrics.snr_db(ref, ref + noise) == pytest.approx(target, abs=0.1)
        # Uncorrelated noise: the least-squares scale is ~1, so SI-SDR reads the same.
        assert metrics.si_sdr_db(ref, ref + noise) == pytest.approx(target, abs=0.1)


def test_gain_error_of_the_seed_collapse() -> None:
    ref = speech_like()
    est = 0.47 * ref
    assert metrics.amplitude_ratio(ref, est) == pytest.approx(0.47, rel=1e-9)
    # est = g·ref: the error is (1 - g)·ref, so SNR = -20·log10(1 - g) = 5.51 dB.
    assert metrics.snr_db(ref, est) == pytest.approx(-20 * math.log10(0.53), abs=1e-6)
    assert metrics.si_sdr_db(ref, est) > 100.0  # a pure gain is no distortion to SI-SDR


def test_si_sdr_is_scale_invariant_and_snr_is_not() -> None:
    rng = np.random.default_rng(2)
    ref = speech_like()
    est = ref + 0.02 * rng.standard_normal(ref.size)
    base = metrics.si_sdr_db(ref, est)
    for g in (0.1, 0.47, 3.0, -1.0):
        assert metrics.si_sdr_db(ref, g * est) == pytest.approx(base, abs=1e-9)
    assert metrics.snr_db(ref, 0.47 * est) < metrics.snr_db(ref, est) - 3.0


def test_edge_cases_are_spelled_out() -> None:
    ref = sine()
    assert metrics.snr_db(ref, ref) == math.inf
    assert metrics.snr_db(ref, np.zeros_like(ref)) == pytest.approx(0.0)
    silent = np.zeros(SR)
    assert math.isnan(metrics.amplitude_ratio(silent, silent))
    assert math.isnan(metrics.si_sdr_db(silent, silent))
    assert math.isnan(metrics.snr_db(silent, silent))
    with pytest.raises(ValueError, match="differ in length"):
        metrics.snr_db(ref, ref[:-1])
    with pytest.raises(ValueError, match=r"shape \[T\]"):
        metrics.snr_db(ref[None], ref[None])


def test_mel_distance_zero_for_identical_and_log_gain_for_a_gain() -> None:
    rng = np.random.default_rng(3)
    noise = 0.1 * rng.standard_normal(2 * SR)
    assert metrics.mel_distance(noise, noise, SR) == 0.0
    # A gain g multiplies every mel magnitude by g: the log10 distance is |log10 g|
    # wherever the spectrum is above the 1e-5 floor (everywhere, for white noise).
    assert metrics.mel_distance(noise, 0.47 * noise, SR) == pytest.approx(-math.log10(0.47), abs=1e-4)
    ref = speech_like()
    d_small = metrics.mel_distance(ref, ref + 0.001 * rng.standard_normal(ref.size), SR)
    d_large = metrics.mel_distance(ref, ref + 0.03 * rng.standard_normal(ref.size), SR)
    assert 0.0 < d_small < d_large


def test_pesq_and_stoi_high_for_identical_and_lower_with_noise() -> None:
    rng = np.random.default_rng(4)
    ref = speech_like()
    same_pesq = metrics.pesq_wb(ref, ref, SR)
    assert same_pesq.ok and same_pesq.value > 4.5  # wide-band PESQ tops out at 4.64
    same_stoi = metrics.stoi(ref, ref, SR)
    assert same_stoi.value == pytest.approx(1.0, abs=1e-6)
    noisy = ref + 0.05 * rng.standard_normal(ref.size)
    assert metrics.pesq_wb(ref, noisy, SR).value < same_pesq.value - 1.0
    assert metrics.stoi(ref, noisy, SR).value < 0.95


def test_pesq_resamples_other_rates() -> None:
    ref = speech_like()
    import soxr

    ref48 = soxr.resample(ref, SR, 48000)
    assert metrics.pesq_wb(ref48, ref48, 48000).value > 4.5


def test_pesq_and_stoi_failures_are_nan_with_a_reason() -> None:
    silent = np.zeros(2 * SR)
    for score in (metrics.pesq_wb(silent, silent, SR), metrics.stoi(silent, silent, SR)):
        assert math.isnan(score.value) and "silence" in score.reason and not score.ok
    short = speech_like()[:1000]
    score = metrics.pesq_wb(short, short, SR)
    assert math.isnan(score.value) and "longer" in score.reason
    score = metrics.stoi(short, short, SR)
    assert math.isnan(score.value) and "frames" in score.reason
    # A decoder that blew up: NaN samples give NaN with a reason, not an exception.
    ref = speech_like()
    broken = ref.copy()
    broken[100] = np.nan
    assert "NaN" in metrics.pesq_wb(ref, broken, SR).reason
    assert "NaN" in metrics.stoi(ref, broken, SR).reason


def test_codebook_usage_counts_and_perplexity() -> None:
    size = 16
    # Codebook 0 uses every code equally; codebook 1 only codes 0 and 1, equally; codebook 2 one code.
    frames = 64
    codes = torch.stack([torch.arange(frames) % size, torch.arange(frames) % 2, torch.full((frames,), 5)]).unsqueeze(0)
    usage = metrics.codebook_usage(codes, size)
    assert usage.used_fraction == pytest.approx([1.0, 2 / 16, 1 / 16])
    assert usage.perplexity == pytest.approx([16.0, 2.0, 1.0], rel=1e-5)
    assert usage.entropy_bits == pytest.approx([4.0, 1.0, 0.0], abs=1e-5)
    # numpy and [Q, F] input give the same.
    assert metrics.codebook_usage(codes[0].numpy(), size) == usage
    with pytest.raises(ValueError, match=r"0\.\.15"):
        metrics.codebook_usage(codes + 16, size)
