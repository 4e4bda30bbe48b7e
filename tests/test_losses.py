"""The band-envelope loss: what it rewards and ignores, its edge cases, and that training logs it
when it is weighted (and does not compute it when it is not)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from codec.training.loop import train
from codec.training.losses import BandEnvelopeLoss, third_octave_bands
from tests.synth import write_dataset
from tests.test_train import tiny_params

RATE = 16_000


def _speechlike(seconds: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Noise with a 4 Hz syllable-like envelope and silent gaps: ``[1, 1, T]``."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(round(seconds * RATE)) / RATE
    envelope = torch.sin(2 * np.pi * 4 * t).clamp_min(0)
    return (0.1 * torch.randn(t.numel(), generator=g) * envelope)[None, None]


def test_third_octave_bands_follow_stoi_centres_and_do_not_overlap() -> None:
    bands = third_octave_bands(RATE, 512)
    assert bands.shape == (17, 257)  # 150 Hz · 2^(k/3) for k = 0..16 (6.0 kHz; 7.6 kHz is above 7 kHz)
    assert float(bands.sum(dim=0).max()) == 1.0  # a bin counts in one band at most
    assert bool((bands.sum(dim=1) >= 1).all())  # every band has a bin
    freqs = np.arange(257) * RATE / 512
    first = freqs[bands[0].numpy() > 0]
    assert first.min() >= 150 * 2 ** (-1 / 6) and first.max() < 150 * 2 ** (1 / 6)
    with pytest.raises(ValueError, match="no one-third-octave band"):
        third_octave_bands(200, 64)


def test_envelope_loss_ignores_level_and_counts_what_moves_the_envelope() -> None:
    loss = BandEnvelopeLoss(RATE)
    x = _speechlike()
    assert float(loss(x, x)) == pytest.approx(0.0, abs=1e-5)
    assert float(loss(x, 0.25 * x)) == pytest.approx(0.0, abs=1e-5)  # a level change: the level loss' job
    # A steady noise floor under the speech flattens every band's envelope; a louder one more.
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g)
    mild, strong = float(loss(x, x + 0.01 * noise)), float(loss(x, x + 0.05 * noise))
    assert 0.0 < mild < strong < 1.0
    # No output at all: nothing correlates.
    assert float(loss(x, torch.zeros_like(x))) == pytest.approx(1.0, abs=1e-4)
    # The envelope a quarter-period late: worse than the mild noise.
    late = torch.roll(x, RATE // 16, dims=-1)
    assert float(loss(x, late)) > mild


def test_envelope_loss_leaves_out_silence_and_short_input_and_has_finite_gradients() -> None:
    loss = BandEnvelopeLoss(RATE)
    quiet = torch.zeros(1, 1, RATE)
    assert float(loss(quiet, torch.randn(1, 1, RATE))) == 0.0  # silent reference: no segment counts
    assert float(loss(torch.randn(1, 1, 100), torch.randn(1, 1, 100))) == 0.0  # shorter than a segment
    # Half silence: the silent half's segments are left out, so noise there costs nothing.
    x = torch.cat([_speechlike(0.5), torch.zeros(1, 1, RATE // 2)], dim=-1)
    y = x.clone()
    y[..., RATE // 2 + RATE // 8 :] = 0.05 * torch.randn(1, 1, RATE // 2 - RATE // 8)
    assert float(loss(x, y)) == pytest.approx(0.0, abs=1e-5)
    out = torch.zeros(2, 1, RATE, requires_grad=True)
    value = loss(torch.cat([_speechlike(), _speechlike(seed=2)]), out)
    value.backward()
    assert out.grad is not None and bool(torch.isfinite(out.grad).all())


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("losses") / "normalized", n_clips=8, seconds=1.0, seed=4)


def test_training_logs_the_envelope_loss_only_when_it_is_weighted(data: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    params = tiny_params(steps=3, segment_s=0.5)
    weighted = tiny_params(steps=3, segment_s=0.5, loss_weights={**params.loss_weights, "loss/envelope": 1.0})
    without = train(params, data, tmp_path / "without")
    with_ = train(weighted, data, tmp_path / "with")
    assert all("loss/envelope" not in h for h in without.history)
    values = [h["loss/envelope"] for h in with_.history if "loss/envelope" in h]
    assert len(values) == 3 and all(0.0 < v < 1.0 for v in values)
    # It is part of the total the optimizer follows.
    first = with_.history[0]
    others = sum(
        params.loss_weights.get(k, 0.0) * v
        for k, v in first.items()
        if k.startswith(("loss/", "vq/")) and k != "loss/total"
    )
    assert first["loss/total"] == pytest.approx(others + first["loss/envelope"], rel=1e-4)
