"""Model presets for the tests: sizes that train and run in seconds on a CPU."""

from __future__ import annotations

import typing as tp

import numpy as np

from codec.model.codec import Codec, CodecConfig, build_codec


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


def tiny_codec(audio: tp.Sequence[np.ndarray], seed: int = 0, **overrides: tp.Any) -> Codec:
    """An untrained :func:`tiny_config` codec whose codebooks start from the latents of ``audio``
    (mono float32 clips at the model's rate), as training starts them. With random codebooks
    every frame takes one code and decodes to one constant, which the decoder removes as DC:
    silence, with no PESQ or amplitude to measure."""
    import torch

    model = build_codec(tiny_config(**overrides), seed=seed).eval()
    x = torch.from_numpy(np.concatenate([np.asarray(a, np.float32) for a in audio]))[None, None]
    with torch.no_grad():
        model.quantizer.init_codebooks(model.encode_latents(x), torch.Generator().manual_seed(seed))
    return model
