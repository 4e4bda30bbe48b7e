"""Energy side information (codec/inference/energy.py): a decoder that returns too little
energy comes back at the input's level, silence stays silent, block borders stay smooth,
the cost stays within 2 % of each bitrate, and version-1 streams still decode."""

from __future__ import annotations

import io
import math
import types

import numpy as np
import pytest
import torch
from torch import nn

from codec.audio.level import LevelSettings
from codec.inference import bitstream as bs
from codec.inference import energy as side
from codec.inference import pipeline
from codec.model.codec import build_codec
from tests.presets import tiny_config
from tests.synth import RATE, speechlike


class Scaled(nn.Module):
    """A transparent codec (hop 4: a frame's 4 codes are its 4 samples as 16-bit PCM) whose
    decoder scales its output by ``factor`` and adds a noise floor at ``noise_dbfs``: a model
    that returns less energy than it was given, without the noise of a trained model's errors."""

    source_fingerprint = b"scaled00"  # FP: no weights to fingerprint: the bitstream names it so

    HOP = 4

    def __init__(self, factor: float = 1.0, noise_dbfs: float | None = None) -> None:
        super().__init__()
        self.factor = factor
        self.noise = None if noise_dbfs is None else 10 ** (noise_dbfs / 20)
        self.config = types.SimpleNamespace(
            sample_rate=RATE,
            hop_length=self.HOP,
            bits_per_code=16,
            bitrates_kbps=(RATE * 16 / 1000,),
            n_quantizers_for=lambda kbps: self.HOP,
        )

    def encode(self, audio: torch.Tensor, n_quantizers: int | None = None) -> torch.Tensor:
        x = audio[:, 0].double().clamp(-1, 1)
        x = torch.nn.functional.pad(x, (0, -x.shape[-1] % self.HOP))
        codes = torch.round((x + 1) * 32767.5).clamp(0, 65535).long()
        return codes.view(x.shape[0], -1, self.HOP).transpose(1, 2)  # [B, Q=hop, F]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        x = codes.transpose(1, 2).reshape(codes.shape[0], 1, -1).double() / 32767.5 - 1
        y = x * self.factor
        if self.noise is not None:
            y = y + self.noise * torch.randn(y.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        return y.float()


FP = b"scaled00"  # the stand-in codec has no weights to fingerprint


def level_db(x: np.ndarray) -> float:
    return 10 * math.log10(float(np.mean(np.square(x, dtype=np.float64))) + 1e-30)


def speech(seconds: float, seed: int = 0, rms_dbfs: float = -26.0) -> np.ndarray:
    return speechlike(seconds, np.random.default_rng(seed), rms_dbfs=rms_dbfs).astype(np.float32)


def test_a_decoder_6_db_too_quiet_comes_back_within_half_a_db_of_the_input_level() -> None:
    model = Scaled(0.5)  # -6.0 dB
    kbps = max(model.config.bitrates_kbps)
    for seed, level in [(0, -40.0), (1, -26.0), (2, -12.0)]:
        x = speech(3.0, seed, level)
        plain = pipeline.roundtrip(model, x, RATE, kbps, energy=False)
        shaped = pipeline.roundtrip(model, x, RATE, kbps)
        assert level_db(plain) - level_db(x) < -5.0  # the model alone loses ~6 dB
        assert abs(level_db(shaped) - level_db(x)) <= 0.5
        ratio = float(np.sqrt(np.mean(shaped.astype(np.float64) ** 2) / np.mean(x.astype(np.float64) ** 2)))
        assert 0.97 <= ratio <= 1.03


def test_every_block_follows_the_input_level_not_only_the_clip() -> None:
    # Speech whose level steps by 20 dB every second: a per-clip gain would miss it.
    x = np.concatenate([speech(1.0, s, lv) for s, lv in [(0, -30.0), (1, -10.0), (2, -30.0), (3, -20.0)]])
    y = pipeline.roundtrip(Scaled(0.6), x, RATE, 256.0, LevelSettings(peak_ceiling_db=None), energy=True)
    for k in range(4):  # blocks of 2000 samples here; look at each second away from its borders
        part = slice(k * RATE + 2400, (k + 1) * RATE - 2400)
        assert abs(level_db(y[part]) - level_db(x[part])) <= 0.6


def test_silence_stays_silent_and_a_noise_floor_is_not_raised() -> None:
    model = Scaled(0.5, noise_dbfs=-75.0)
    kbps = max(model.config.bitrates_kbps)
    x = np.concatenate([speech(1.5, 3), np.zeros(RATE * 2, np.float32), speech(1.5, 4)])
    plain = pipeline.roundtrip_with_codes(model, x, RATE, kbps, energy=False)
    shaped = pipeline.roundtrip_with_codes(model, x, RATE, kbps)
    assert (shaped.levels == 0).sum() >= 2  # the silent blocks are coded "below the floor"
    gap = slice(int(1.5 * RATE) + 4000, int(3.5 * RATE) - 4000)  # away from the fades
    # The decoder's own hiss in the gap is passed through, not boosted to anything.
    assert level_db(shaped.audio[gap]) <= level_db(plain.audio[gap]) + 0.1
    silent = pipeline.roundtrip(model, np.zeros(RATE, np.float32), RATE, kbps)
    assert level_db(silent) <= level_db(pipeline.roundtrip(model, np.zeros(RATE, np.float32), RATE, kbps, energy=False))


def test_the_gain_crosses_a_block_border_smoothly() -> None:
    settings = side.settings_for(50.0, 500)
    hop, rate = 320, 16000
    block = settings.block_frames * hop
    fade = side.crossfade_samples(rate, block)
    gains = np.array([0.0, 6.0, -6.0, 12.0])
    curve = side.gain_curve(gains, block, 0, 4 * block, fade)
    steps = np.abs(np.diff(curve.astype(np.float64)))
    # The bound: a raised cosine over `fade` samples; 18 dB is the largest jump here.
    assert steps.max() <= side.max_gain_slope_db(18.0, rate, block) + 1e-6
    assert steps.max() < 0.1  # dB per sample: no click (a step would be 18 dB)
    assert np.allclose(curve[fade : block - fade], 0.0) and np.allclose(curve[block + fade : 2 * block - fade], 6.0)
    # A tone whose level steps by 12 dB at a block border, through a decoder 6 dB too quiet:
    # the output follows the input with no sample-to-sample jump larger than the input's own.
    t = np.arange(4 * RATE) / RATE
    x = (0.05 * np.sin(2 * np.pi * 200 * t) * np.repeat([1.0, 4.0, 1.0, 4.0], RATE)).astype(np.float32)
    wide = side.settings_for(RATE, RATE)  # 0.5 s blocks of 8000 samples at hop 1
    shaped = side.shape(x * np.float32(0.5), side.level_codes(x, 1, wide), wide, 1, RATE)
    assert np.max(np.abs(np.diff(shaped))) <= np.max(np.abs(np.diff(x))) * 1.05
    assert abs(level_db(shaped) - level_db(x)) < 0.5


@pytest.mark.parametrize("feed", [1, 317, 8000, 10**6])
def test_the_streaming_shaper_equals_the_whole_signal_one(feed: int) -> None:
    rng = np.random.default_rng(5)
    settings = side.settings_for(50.0, 500)
    x = speech(7.3, 6)
    hop = 320
    decoded = (x[: (len(x) // hop) * hop] * rng.uniform(0.4, 1.2)).astype(np.float32)
    codes = side.level_codes(x[: len(decoded)], hop, settings)
    whole = side.shape(decoded, codes, settings, hop, RATE)
    s = side.Shaper(settings, hop, RATE, len(decoded) // hop)
    s.add_codes(codes)
    parts = [s.feed(decoded[i : i + feed]) for i in range(0, len(decoded), feed)] + [s.finish()]
    assert np.array_equal(np.concatenate(parts), whole)


def test_side_information_costs_at_most_two_percent_of_every_bitrate() -> None:
    model = build_codec(tiny_config(), seed=0)
    frame_rate = model.config.sample_rate / model.config.hop_length
    settings = side.settings_for(frame_rate, bs.DEFAULT_CHUNK_FRAMES)
    for kbps in model.config.bitrates_kbps:
        assert settings.bits_per_second(frame_rate) <= 0.02 * kbps * 1000
    for kbps in (1.5, 3.0, 6.0):  # the demo's bitrates at 50 frames/s
        assert side.settings_for(50.0, 500).bits_per_second(50.0) <= 0.02 * kbps * 1000


def test_a_version_2_stream_carries_the_levels_and_a_version_1_stream_still_decodes() -> None:
    model = Scaled(0.5)
    kbps = max(model.config.bitrates_kbps)
    x = speech(2.5, 7)
    v2, v1 = io.BytesIO(), io.BytesIO()
    h2 = pipeline.encode_to_stream(model, x, RATE, kbps, v2, fingerprint=FP)
    h1 = pipeline.encode_to_stream(model, x, RATE, kbps, v1, energy=False, fingerprint=FP)
    assert (h2.version, h1.version) == (2, 1)
    assert v1.getvalue()[4:6] == b"\x01\x00" and len(v1.getvalue()) == h1.stream_bytes()
    assert len(v2.getvalue()) == h2.stream_bytes() and h2.energy == side.settings_for(RATE / 4, bs.DEFAULT_CHUNK_FRAMES)
    for data, energy in [(v2, True), (v1, False)]:
        data.seek(0)
        _, blocks = pipeline.decode_from_stream(model, data, fingerprint=FP)
        decoded = np.concatenate(list(blocks))
        # What a stream decodes to is what the in-memory path gives, either version.
        assert np.allclose(decoded, pipeline.roundtrip(model, x, RATE, kbps, energy=energy), atol=1e-6)
    assert (
        abs(
            level_db(
                np.concatenate(list(pipeline.decode_from_stream(model, io.BytesIO(v2.getvalue()), fingerprint=FP)[1]))
            )
            - level_db(x)
        )
        < 0.5
    )


def test_a_flipped_level_bit_fails_the_chunk_checksum() -> None:
    model = Scaled(1.0)
    data = io.BytesIO()
    header = pipeline.encode_to_stream(
        model, speech(1.0, 8), RATE, max(model.config.bitrates_kbps), data, fingerprint=FP
    )
    raw = bytearray(data.getvalue())
    raw[-1] ^= 0x01  # the last byte of the last chunk: its level codes
    with pytest.raises(bs.BitstreamError, match="checksum"):
        list(bs.read_stream(io.BytesIO(bytes(raw))).chunks)
    assert header.header_size == 76 and bs.Header.unpack(bytes(raw)) == header


def test_a_forged_version_2_header_is_refused_naming_the_energy_field() -> None:
    import struct
    import zlib

    model = Scaled(1.0)
    data = io.BytesIO()
    pipeline.encode_to_stream(model, speech(1.0, 9), RATE, max(model.config.bitrates_kbps), data, fingerprint=FP)

    def forged(offset: int, fmt: str, value: float) -> bytes:
        b = bytearray(data.getvalue())
        struct.pack_into(fmt, b, offset, value)
        struct.pack_into("<I", b, 72, zlib.crc32(bytes(b[:72])))
        return bytes(b)

    cases = {
        "energy block 7 is out of bounds": forged(60, "<H", 7),  # does not divide the 500-frame chunks
        "energy bits must be 2..16": forged(62, "<B", 40),
        "energy step_db": forged(64, "<f", float("nan")),
        "energy reserved": forged(63, "<B", 1),
    }
    for message, raw in cases.items():
        with pytest.raises(bs.BitstreamError, match=message):
            bs.read_stream(io.BytesIO(raw))
