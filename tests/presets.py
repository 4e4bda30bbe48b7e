"""Model presets for the tests: sizes that train and run in seconds on a CPU."""

from __future__ import annotations

import typing as tp

from codec.model.codec import CodecConfig


def tiny_config(**overrides: tp.Any) -> CodecConfig:
    """A few-thousand-parameter model for unit tests (seconds on a CPU)."""
    base: dict[str, tp.Any] = dict(
        encoder_channels=4,
        latent_dim=32,
        decoder_channels=64,
        dilations=(1, 3),
        n_codebooks=12,
        codebook_size=64,
        codebook_dim=4,
        bitrates_kbps=(0.9, 1.8, 3.6),
    )
    base.update(overrides)
    return CodecConfig(**base)
