"""Training augmentation (codec/training/augment.py): each effect does what it says, the level
is kept, a seed gives the same batch (so a resumed run augments as an uninterrupted one)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from codec.errors import UserError
from codec.training import augment as aug
from codec.training.dataset import Clip, SegmentSampler
from codec.training.params import TrainParams, params_from_dict
from tests.synth import RATE, speechlike, write_dataset

NONE = aug.AugmentParams(speed_prob=0.0, eq_prob=0.0, band_limit_prob=0.0, reverb_prob=0.0, noise_prob=0.0)


def only(**changes: object) -> aug.AugmentParams:
    return dataclasses.replace(NONE, **changes)  # type: ignore[arg-type]


def speech(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    return speechlike(seconds, np.random.default_rng(seed), rms_dbfs=-20.0).astype(np.float32)


def band_energy_db(x: np.ndarray, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    f = np.fft.rfftfreq(x.shape[0], 1 / RATE)
    return 10 * math.log10(float(spec[(f >= lo) & (f < hi)].sum()) + 1e-30)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def test_every_effect_keeps_the_level_and_the_same_seed_gives_the_same_segment() -> None:
    x = speech()
    params = aug.AugmentParams(speed_prob=1, eq_prob=1, band_limit_prob=1, reverb_prob=1, noise_prob=1)
    a = aug.augment(x, RATE, params, np.random.default_rng(1))
    b = aug.augment(x, RATE, params, np.random.default_rng(1))
    c = aug.augment(x, RATE, params, np.random.default_rng(2))
    assert np.array_equal(a, b) and not np.allclose(a, c)
    assert a.shape == x.shape and a.dtype == np.float32
    for y in (a, c):
        assert rms(y) == pytest.approx(rms(x), rel=1e-4)
    assert np.array_equal(aug.augment(x, RATE, NONE, np.random.default_rng(1)), x)
    silent = np.zeros(RATE, np.float32)
    assert np.array_equal(aug.augment(silent, RATE, params, np.random.default_rng(1)), silent)


def test_a_band_limit_removes_the_highs_and_a_low_cut_the_lows() -> None:
    x = speech(1.0, 3) + np.random.default_rng(0).standard_normal(RATE).astype(np.float32) * 0.01
    y = aug.augment(x, RATE, only(band_limit_prob=1.0, high_cut_hz=[3000.0, 3000.0]), np.random.default_rng(0))
    # 4th order at 3 kHz: 6-8 kHz is 24+ dB down relative to the band below the cut.
    drop = (band_energy_db(x, 6000, 8000) - band_energy_db(x, 200, 2000)) - (
        band_energy_db(y, 6000, 8000) - band_energy_db(y, 200, 2000)
    )
    assert drop > 20.0
    z = aug.augment(
        x, RATE, only(eq_prob=1.0, low_cut_hz=[300.0, 300.0], tilt_db_per_octave=[0.0, 0.0]), np.random.default_rng(0)
    )
    low = (band_energy_db(x, 20, 80) - band_energy_db(x, 1000, 3000)) - (
        band_energy_db(z, 20, 80) - band_energy_db(z, 1000, 3000)
    )
    assert low > 20.0  # 2nd order at 300 Hz: 80 Hz is ~23 dB down


def test_speed_moves_the_pitch_by_its_factor() -> None:
    t = np.arange(RATE) / RATE
    tone = (0.1 * np.sin(2 * np.pi * 200.0 * t)).astype(np.float32)
    y = aug.augment(tone, RATE, only(speed_prob=1.0, speed=[1.05, 1.05]), np.random.default_rng(0))
    spec = np.abs(np.fft.rfft(y[: int(0.9 * RATE)].astype(np.float64)))
    peak = np.fft.rfftfreq(int(0.9 * RATE), 1 / RATE)[np.argmax(spec)]
    assert peak == pytest.approx(210.0, abs=2.0)


def test_noise_and_room_add_what_they_say() -> None:
    x = speech(1.0, 4)
    noisy = aug.augment(x, RATE, only(noise_prob=1.0, noise_snr_db=[20.0, 20.0]), np.random.default_rng(0))
    # The mix is rescaled to x's level; what is not x in it is the noise, 20 dB below x.
    x64, y64 = x.astype(np.float64), noisy.astype(np.float64)
    scale = float(np.dot(y64, x64) / np.dot(x64, x64))
    residual = y64 - scale * x64
    snr = 10 * math.log10(float(np.sum((scale * x64) ** 2)) / float(np.sum(residual**2)))
    assert snr == pytest.approx(20.0, abs=1.0)
    burst = np.zeros(RATE, np.float32)
    burst[1000:1160] = np.random.default_rng(1).standard_normal(160).astype(np.float32)
    wet = aug.augment(
        burst, RATE, only(reverb_prob=1.0, rt60_s=[0.4, 0.4], drr_db=[0.0, 0.0]), np.random.default_rng(0)
    )
    assert rms(wet[4000:8000]) > 100 * rms(burst[4000:8000]) + 1e-6  # the tail rings on after the burst


def test_the_sampler_augments_deterministically_from_its_generator(tmp_path) -> None:  # type: ignore[no-untyped-def]
    write_dataset(tmp_path, n_clips=4, seconds=1.0)
    import csv

    with (tmp_path / "manifest.csv").open() as f:
        rows = list(csv.DictReader(f))
    clips = [Clip(r["id"], tmp_path / r["path"], float(r["duration_s"]), int(r["sample_rate"])) for r in rows]
    plain = SegmentSampler(clips, 4000, augment=dataclasses.replace(aug.AugmentParams(), enabled=False))
    on = SegmentSampler(clips, 4000, augment=aug.AugmentParams(noise_prob=1.0))
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a = on.sample(4, g1)
    state = g1.get_state()
    b = on.sample(4, g1)
    g2.set_state(state)  # a resumed run: the generator from the checkpoint
    assert torch.equal(on.sample(4, g2), b)
    raw = plain.sample(4, torch.Generator().manual_seed(7))
    assert not torch.equal(a, raw)
    assert torch.allclose(a.pow(2).mean(-1), raw.pow(2).mean(-1), rtol=1e-3)  # same segments, same level


def test_params_refuse_a_bad_range_and_an_old_checkpoint_reads_as_unaugmented() -> None:
    with pytest.raises(UserError, match=r"train\.augment\.noise_prob is 1\.5"):
        TrainParams(augment=aug.AugmentParams(noise_prob=1.5)).check("train")
    with pytest.raises(UserError, match=r"train.augment.speed \[1.2, 1.0\]"):
        TrainParams(augment=aug.AugmentParams(speed=[1.2, 1.0])).check("train")
    old = TrainParams().to_dict()
    del old["augment"]
    assert params_from_dict(old).augment.enabled is False
    assert params_from_dict(TrainParams().to_dict()).augment == aug.AugmentParams()
