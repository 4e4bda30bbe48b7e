"""The spectrogram panel that the train stage (MLflow samples) and the evaluate stage
(report media) both draw, so their pictures read the same."""

from __future__ import annotations

import typing as tp

import numpy as np
import numpy.typing as npt

# dB range of the colour scale: full-scale tones near the top, the quiet floor of
# 16-bit speech at the bottom.
DB_RANGE = (-110.0, 10.0)


def spectrogram_panel(ax: tp.Any, x: npt.ArrayLike, sample_rate: int, title: str) -> None:
    """Draw the magnitude spectrogram (512-point Hann STFT, hop 128, in dB) of mono ``x``
    on the matplotlib axes ``ax``, time in seconds against frequency in kHz."""
    import torch

    audio = torch.from_numpy(np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(-1)))
    spec = torch.stft(audio, n_fft=512, hop_length=128, window=torch.hann_window(512), return_complex=True).abs()
    ax.imshow(
        20 * np.log10(spec.numpy() + 1e-6),
        origin="lower",
        aspect="auto",
        vmin=DB_RANGE[0],
        vmax=DB_RANGE[1],
        extent=(0, audio.shape[0] / sample_rate, 0, sample_rate / 2000),
    )
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("s")
    ax.set_ylabel("kHz")
