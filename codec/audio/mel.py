"""Mel filter banks at several STFT scales, shared by the training loss and the evaluation metric.

Each scale is a magnitude mel spectrogram (``power=1``, DAC's) with librosa's Slaney filters,
a Hann window of ``window`` samples and hop ``window // 4``: ``[..., T]`` in, ``[..., n_mels, F]`` out.
"""

from __future__ import annotations

import typing as tp

import torch
import torchaudio


def mel_scales(
    sample_rate: int, windows: tp.Sequence[int], n_mels: tp.Sequence[int]
) -> list[torchaudio.transforms.MelSpectrogram]:
    """One :class:`torchaudio.transforms.MelSpectrogram` per ``(windows[i], n_mels[i])``."""
    if len(windows) != len(n_mels):
        raise ValueError(f"windows {tuple(windows)} and n_mels {tuple(n_mels)} must have the same length")
    return [
        torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=w,
            win_length=w,
            hop_length=w // 4,
            n_mels=m,
            power=1.0,
            center=True,
            mel_scale="slaney",
            norm="slaney",
            window_fn=torch.hann_window,
        )
        for w, m in zip(windows, n_mels, strict=True)
    ]
