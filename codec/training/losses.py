"""Reconstruction losses and the quality measures logged during training.

- ``loss/nmse``: error energy over signal energy (1/SNR), free of the data's level.
- ``loss/level``: squared log ratio of output to input RMS per item (:func:`level_loss`):
  a waveform loss alone rewards shrinking what the codes can't pin down.
- ``loss/l1``: mean absolute error on the waveform (DAC's; off in both profiles).
- ``loss/mel``: multi-scale mel distance (DAC, Kumar et al. 2023): at several STFT
  window sizes, L1 between log10 mel magnitudes plus L1 between the magnitudes.
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
