"""Reconstruction losses and the quality measures logged during training.

- ``loss/nmse``: error energy over signal energy (1/SNR), free of the data's level.
- ``loss/level``: squared log ratio of output to input RMS per item (:func:`level_loss`):
  a waveform loss alone rewards shrinking what the codes can't pin down.
- ``loss/l1``: mean absolute error on the waveform (DAC's; off in both profiles).
- ``loss/mel``: multi-scale mel distance (DAC, Kumar et al. 2023): at several STFT
  window sizes, L1 between log10 mel magnitudes plus L1 between the magnitudes.
- ``loss/envelope``: one minus the correlation of one-third-octave band envelopes over 384 ms
  segments (:class:`BandEnvelopeLoss`): what STOI (Taal et al. 2011) reads, which neither a
  waveform loss (dominated by the loud low bands) nor the mel loss (frame by frame) asks for.
- ``vq/commitment_loss``, ``vq/codebook_loss``: from :mod:`codec.model.quantize`.

:data:`DEFAULT_WEIGHTS` is keyed by the same names the metrics are logged under.

Shapes: audio ``[B, 1, T]``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from codec.audio.mel import mel_scales

# The demo profile's weights (params.yaml; the GPU profile doubles loss/mel); keys are the names logged.
DEFAULT_WEIGHTS: dict[str, float] = {
    "loss/l1": 0.0,
    "loss/nmse": 1.0,
    "loss/level": 1.0,
    "loss/mel": 0.1,
    "loss/envelope": 0.0,
    "vq/commitment_loss": 0.1,
    "vq/codebook_loss": 0.0,
    "adv/gen_loss": 1.0,
    "adv/feat_loss": 2.0,
}


class MultiScaleMelLoss(nn.Module):
    """Sum over window sizes of ``|log10 M(x) - log10 M(y)| + |M(x) - M(y)|`` (means).

    ``windows[i]`` is the STFT window (hop a quarter of it) with ``n_mels[i]`` bands.
    Computed in fp32 whatever the autocast state.
    """

    def __init__(
        self,
        sample_rate: int,
        windows: tuple[int, ...] = (64, 256, 1024),
        n_mels: tuple[int, ...] = (10, 40, 80),
        clamp_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.clamp_eps = clamp_eps
        self.mels = nn.ModuleList(mel_scales(sample_rate, windows, n_mels))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Mel distance between reference ``x`` and reconstruction ``y``, both ``[B, 1, T]``."""
        loss = y.new_zeros((), dtype=torch.float32)
        with torch.autocast(device_type=y.device.type, enabled=False):
            for mel in self.mels:
                my = mel(y.float())
                mx = mel(x.float())
                loss = loss + (my.clamp_min(self.clamp_eps).log10() - mx.clamp_min(self.clamp_eps).log10()).abs().mean()
                loss = loss + (my - mx).abs().mean()
        return loss


def third_octave_bands(sample_rate: int, n_fft: int, low_hz: float = 150.0, high_hz: float = 7000.0) -> Tensor:
    """``[J, n_fft // 2 + 1]`` 0/1 matrix summing STFT power bins into one-third-octave bands with
    centres ``low_hz · 2^(k/3)`` (STOI's from 150 Hz), up to ``high_hz`` or below Nyquist."""
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    rows = []
    k = 0
    while True:
        centre = low_hz * 2.0 ** (k / 3)
        lo, hi = centre * 2.0 ** (-1 / 6), centre * 2.0 ** (1 / 6)
        if hi > min(high_hz, sample_rate / 2):
            break
        rows.append(((freqs >= lo) & (freqs < hi)).float())
        k += 1
    if not rows:
        raise ValueError(f"no one-third-octave band between {low_hz} Hz and {high_hz} Hz at {sample_rate} Hz")
    return torch.stack(rows)


class BandEnvelopeLoss(nn.Module):
    """Mean over bands and segments of ``1 − corr(envelope of x, envelope of y)``.

    Envelopes: the square root of the STFT power summed in each one-third-octave band
    (:func:`third_octave_bands`; window ``window_s``, hop a quarter of it); segments of
    ``segment_s``, half overlapping, as STOI reads them (its 30 frames of 12.8 ms). Each
    segment's correlation subtracts its means and divides by its norms, so a band's level does not
    count (the level and mel losses see to it), only how its envelope moves. Segments whose
    clean energy is more than ``range_db`` below the item's loudest segment are left out (STOI
    drops silent frames). Computed in fp32. ``[B, 1, T]`` in, a scalar out (0 when no segment fits).
    """

    def __init__(
        self,
        sample_rate: int,
        window_s: float = 0.032,
        segment_s: float = 0.384,
        range_db: float = 40.0,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.n_fft = 1 << max(1, round(window_s * sample_rate - 1).bit_length())
        self.win = max(2, round(window_s * sample_rate))
        self.hop = max(1, self.win // 4)
        self.frames = max(2, round(segment_s * sample_rate / self.hop))
        self.range_db, self.eps = range_db, eps
        self.bands: Tensor
        self.register_buffer("bands", third_octave_bands(sample_rate, self.n_fft), persistent=False)

    def band_power(self, audio: Tensor) -> Tensor:
        """``[B, 1, T]`` → STFT power per band, cut into segments ``[B, J, S, frames]``."""
        window = torch.hann_window(self.win, device=audio.device)
        spec = torch.stft(
            audio[:, 0], self.n_fft, self.hop, self.win, window, center=True, pad_mode="constant", return_complex=True
        )
        power = self.bands @ spec.abs().square()  # [B, J, F]
        if power.shape[-1] < self.frames:  # shorter than one segment: no segment at all
            return power[..., :0].unsqueeze(-1).expand(-1, -1, 0, self.frames)
        return power.unfold(-1, self.frames, max(1, self.frames // 2))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """The loss between reference ``x`` and reconstruction ``y``, both ``[B, 1, T]``."""
        with torch.autocast(device_type=y.device.type, enabled=False):
            px, py = self.band_power(x.float()), self.band_power(y.float())
            if px.shape[2] == 0:
                return y.new_zeros((), dtype=torch.float32)
            power = px.sum(dim=(1, 3))  # [B, S]
            top = power.amax(dim=1, keepdim=True)
            keep = (power > top * 10 ** (-self.range_db / 10)) & (top > 0)  # [B, S]
            ex, ey = (px + self.eps).sqrt(), (py + self.eps).sqrt()  # eps: a finite gradient at 0
            ex = ex - ex.mean(dim=-1, keepdim=True)
            ey = ey - ey.mean(dim=-1, keepdim=True)
            corr = (ex * ey).sum(-1) / (ex.norm(dim=-1) * ey.norm(dim=-1) + self.eps)  # [B, J, S]
            weight = keep[:, None, :].expand_as(corr).float()
            return ((1.0 - corr) * weight).sum() / weight.sum().clamp_min(1.0)


def snr_db(x: Tensor, y: Tensor, eps: float = 1e-10) -> Tensor:
    """Per-item SNR in dB of reconstruction ``y`` against reference ``x`` (``[B, ..., T]`` → ``[B]``)."""
    dims = tuple(range(1, x.dim()))
    signal = x.float().pow(2).sum(dim=dims)
    noise = (x.float() - y.float()).pow(2).sum(dim=dims)
    return 10.0 * torch.log10((signal + eps) / (noise + eps))


def amplitude_ratio(x: Tensor, y: Tensor, eps: float = 1e-10) -> Tensor:
    """Per-item RMS of ``y`` over RMS of ``x`` (``[B, ..., T]`` → ``[B]``); 1.0 keeps the level."""
    dims = tuple(range(1, x.dim()))
    return (y.float().pow(2).mean(dim=dims).sqrt() + eps) / (x.float().pow(2).mean(dim=dims).sqrt() + eps)


def weighted_total(losses: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """``Σ weights[name] · losses[name]`` over the names in ``losses`` (missing weight = 0)."""
    total = next(iter(losses.values())).new_zeros(())
    for name, value in losses.items():
        w = weights.get(name, 0.0)
        if w:
            total = total + w * value
    return total


def level_loss(x: Tensor, y: Tensor, floor: float = 1e-4) -> Tensor:
    """Mean over items of ``(ln rms(y) − ln rms(x))²`` for ``[B, 1, T]`` audio (near-silent
    items, RMS below ``floor``, are left out: their level carries no information)."""
    rx = x.pow(2).mean(dim=(1, 2)).sqrt()
    ry = y.pow(2).mean(dim=(1, 2)).sqrt()
    keep = rx > floor
    if not bool(keep.any()):
        return y.new_zeros(())
    return (torch.log(ry[keep].clamp_min(floor)) - torch.log(rx[keep])).pow(2).mean()
