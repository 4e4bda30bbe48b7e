"""The inference path: the level comes back, quiet input is not blown up, chunking is
invisible, and the output has the input's rate and length."""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import typing as tp
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from codec.audio.io import read_audio
from codec.audio.level import LevelSettings
from codec.audio.levels import rms_dbfs
from codec.audio.loudness import integrated_lufs, loudness_lufs
from codec.audio.resample import resample
from codec.data.corpus import Espeak, load_sentences
from codec.evaluation.metrics import amplitude_ratio, snr_db
from codec.inference import bitstream as bs
from codec.inference import pipeline
from codec.inference.model_source import load_model
from codec.model.checkpoint import REFERENCE_CHECKPOINT
from codec.model.codec import build_codec
from tests.presets import tiny_config

SR = 16000


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclasses.dataclass(frozen=True)
class PcmConfig:
    sample_rate: int = SR
    hop_length: int = 1
    bitrates_kbps: tuple[float, ...] = (320.0,)
    bits_per_code: int = 10

    def n_quantizers_for(self, kbps: float) -> int:
        if not math.isclose(kbps, 320.0):
            raise ValueError(f"{kbps} kbps is not served")
        return 2


class TwoStagePcm(nn.Module):
    """A deterministic stand-in codec that is near-identity: one frame per sample, two
    10-bit uniform quantizer stages (coarse, then the residual), i.e. ~20-bit PCM over
    [-1, 1]. It tests the level path exactly, independent of any training."""

    source_fingerprint = b"pcm-2x10"  # PCM_FP: no weights to fingerprint: the bitstream names it so

    levels = 1024

    def __init__(self) -> None:
        super().__init__()
        self.config = PcmConfig()
        self.register_buffer("step", torch.tensor(2.0 / (self.levels - 1), dtype=torch.float64))

    def encode(self, audio: torch.Tensor, n_quantizers: int | None = None) -> torch.Tensor:
        x = audio[:, 0].double().clamp(-1.0, 1.0)
        coarse = torch.round((x + 1.0) / self.step).clamp(0, self.levels - 1)
        residual = x - (coarse * self.step - 1.0)
        fine = torch.round(residual / (self.step / self.levels) + self.levels // 2).clamp(0, self.levels - 1)
        return torch.stack([coarse, fine], dim=1).long()

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        c = codes.double()
        x = c[:, 0] * self.step - 1.0 + (c[:, 1] - self.levels // 2) * (self.step / self.levels)
        return x.float().unsqueeze(1)


@functools.lru_cache(maxsize=1)
def telugu_speech() -> np.ndarray:
    """About 6 s of Telugu from espeak-ng at 16 kHz, unit RMS (a fresh engine: it is one per process)."""
    engine = Espeak()
    sentences = load_sentences()
    x = np.concatenate([engine.say(s, "f2", 160, 55) for s in sentences[2:4]])
    y = resample(x, engine.sample_rate, SR)
    return (y / np.sqrt(np.mean(np.square(y)))).astype(np.float32)


def speech_file(tmp_path: Path, rms_dbfs_level: float, rate: int = 44100, channels: int = 2) -> Path:
    """A real float WAV: the speech at ``rms_dbfs_level``, at ``rate``, in ``channels`` channels."""
    x = resample(telugu_speech(), SR, rate) * np.float32(10 ** (rms_dbfs_level / 20))
    path = tmp_path / f"speech_{rms_dbfs_level:+.0f}dBFS.wav"
    sf.write(str(path), np.stack([x] * channels, axis=1), rate, subtype="FLOAT")
    return path


@pytest.mark.parametrize("level", [-45.0, -35.0, -26.0, -16.0, -6.0, -3.0])
def test_level_comes_back_from_a_whisper_to_a_shout(tmp_path: Path, level: float) -> None:
    audio, rate = read_audio(speech_file(tmp_path, level))
    ref = audio[:, 0]
    result = pipeline.roundtrip_with_codes(TwoStagePcm(), audio, rate, kbps=320.0)
    out, prepared = result.audio, result.prepared
    assert out.shape == ref.shape and out.dtype == np.float32  # mono, at 44.1 kHz, the input's length
    assert prepared.channels == 2 and prepared.sample_rate == rate
    # The model saw the training loudness (within 0.5 LU: the limiter takes a little off shouts) ...
    assert prepared.level == "normal"
    assert integrated_lufs(prepared.samples(), SR) == pytest.approx(-16.0, abs=0.5)
    assert prepared.gain_db == pytest.approx(-16.0 - prepared.input_lufs, abs=1e-5)
    # ... and the output is back at the input's level.
    assert rms_dbfs(out) == pytest.approx(level, abs=0.1)
    assert amplitude_ratio(ref, out) == pytest.approx(1.0, abs=0.012)
    # The input's DC offset and drift below a few Hz (espeak's, -31 dB) is removed, not coded.
    assert snr_db(ref, out) > 30.0


class BiasedPcm(TwoStagePcm):
    """:class:`TwoStagePcm` whose decoder adds a constant 0.0042 (-47.5 dBFS): a trained
    decoder's output bias, as the demo model of issue 23 had."""

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return super().decode(codes) + 0.0042


@pytest.mark.parametrize("energy", [True, False])
def test_digital_silence_decodes_to_silence_not_an_offset(energy: bool) -> None:
    """Issue 23 row 8: digital silence (``codec encode --allow-silence``) and input below the
    -70 LUFS gate decoded to the decoder's -47.5 dBFS offset. A decoder's offset is removed
    (the output's mean), from the first sample."""
    silence = np.zeros(3 * SR, np.float32)
    hiss = (np.random.default_rng(5).standard_normal(3 * SR) * 10 ** (-85 / 20)).astype(np.float32)
    for x in (silence, hiss):
        y = pipeline.roundtrip(BiasedPcm(), x, SR, 320.0, energy=energy)
        assert rms_dbfs(y) < -80.0
    # The shipped reference model: silence stays below -70 dBFS.
    reference = load_model(str(REFERENCE_CHECKPOINT))
    y = pipeline.roundtrip(reference.model, silence, SR, 6.0, reference.levels, energy=energy)
    assert rms_dbfs(y) < -70.0


def test_loudness_gain_is_exact_without_limiting() -> None:
    x = 0.05 * telugu_speech()
    prepared = pipeline.prepare(x, SR, SR, LevelSettings(target_lufs=-23.0))
    assert integrated_lufs(prepared.samples(), SR) == pytest.approx(-23.0, abs=0.01)
    assert prepared.limiter_db == 0.0  # of every sample: samples() read them all
    # The inference path's meter, on the input with its DC offset removed (which K-weighting's
    # 38 Hz high-pass all but ignores: 0.003 LU here).
    assert prepared.input_lufs == pytest.approx(loudness_lufs(x, SR), abs=0.01)
    assert prepared.input_lufs == pytest.approx(integrated_lufs(x, SR), abs=0.01)  # the batch meter's float32


def test_digital_silence_is_coded_at_0_db() -> None:
    silence = np.zeros(SR, np.float32)
    prepared = pipeline.prepare(silence, SR, SR)
    assert (prepared.level, prepared.gain_db, prepared.input_lufs) == ("silent", 0.0, -math.inf)
    np.testing.assert_allclose(pipeline.roundtrip(TwoStagePcm(), silence, SR, 320.0), silence, atol=1e-12)


def test_near_silence_is_not_amplified() -> None:
    rng = np.random.default_rng(5)
    hiss = (rng.standard_normal(2 * SR) * 10 ** (-85 / 20)).astype(np.float32)  # under the -70 LUFS gate
    prepared = pipeline.prepare(hiss, SR, SR)
    assert prepared.level == "below_gate" and prepared.gain_db == 0.0
    assert math.isinf(prepared.input_lufs)
    out = pipeline.roundtrip(TwoStagePcm(), hiss, SR, 320.0)
    assert rms_dbfs(out) == pytest.approx(-85.0, abs=0.5)  # 20-bit PCM at its floor; not raised


def test_faint_input_gain_is_capped_and_still_restored() -> None:
    faint = (telugu_speech() * 10 ** (-60 / 20)).astype(np.float32)  # about -58 LUFS: +42 dB would be needed
    prepared = pipeline.prepare(faint, SR, SR)
    assert prepared.level == "capped" and prepared.gain_db == 30.0
    assert integrated_lufs(prepared.samples(), SR) == pytest.approx(prepared.input_lufs + 30.0, abs=0.01)
    out = pipeline.roundtrip(TwoStagePcm(), faint, SR, 320.0)
    assert amplitude_ratio(faint, out) == pytest.approx(1.0, abs=0.01)


def test_short_clips_are_measured() -> None:
    clip = 0.1 * telugu_speech()[SR : SR + 2000]  # 125 ms, under one gating block
    prepared = pipeline.prepare(clip, SR, SR)
    assert math.isfinite(prepared.input_lufs) and prepared.level == "normal"
    out = pipeline.roundtrip(TwoStagePcm(), clip, SR, 320.0)
    assert out.shape == clip.shape and snr_db(clip, out) > 30.0  # its DC offset is removed, not coded


def test_bad_input_is_a_user_error() -> None:
    with pytest.raises(pipeline.InferenceError, match="no audio samples"):
        pipeline.prepare(np.zeros(0, np.float32), SR, SR)
    with pytest.raises(pipeline.InferenceError, match="NaN"):
        pipeline.prepare(np.array([0.1, np.nan] * 1000, np.float32), SR, SR)
    with pytest.raises(pipeline.InferenceError, match=r"does not serve 6 kbps; choose one of 0\.9, 1\.8, 3\.6 kbps"):
        pipeline.n_quantizers_for(build_codec(tiny_config(), seed=0), 6.0)


# --- with the real codec (tiny, untrained): chunking and shapes -----------------------------


@functools.lru_cache(maxsize=1)
def tiny_codec() -> nn.Module:
    return build_codec(tiny_config(), seed=0).eval()


def test_chunked_encode_and_decode_match_the_whole_file() -> None:
    model = tiny_codec()
    x = pipeline.prepare(telugu_speech()[: 4 * SR], SR, SR).samples()
    whole = np.concatenate(list(pipeline.encode_codes(model, x, 3.6, chunk_frames=10**6)), axis=1)
    chunks = list(pipeline.encode_codes(model, x, 3.6, chunk_frames=37))
    assert [c.shape[1] for c in chunks] == [37] * 5 + [15]
    assert whole.shape == (12, 200)  # 3.6 kbps = 12 quantizers of 6 bits at 50 frames/s
    np.testing.assert_array_equal(np.concatenate(chunks, axis=1), whole)
    one = np.concatenate(list(pipeline.decode_codes(model, [whole])))
    many = np.concatenate(list(pipeline.decode_codes(model, chunks)))
    assert one.shape == many.shape == (200 * 320,)
    np.testing.assert_allclose(many, one, atol=1e-5 * np.abs(one).max())


def test_real_codec_roundtrip_has_the_input_rate_length_and_bitrate() -> None:
    model = tiny_codec()
    x = resample(telugu_speech()[: 2 * SR], SR, 22050) * np.float32(0.03)
    result = pipeline.roundtrip_with_codes(model, x, 22050, kbps=0.9, chunk_frames=40, energy=False)
    assert result.audio.shape == x.shape and np.all(np.isfinite(result.audio))
    assert result.codes.shape == (3, 100)  # 0.9 kbps = 3 quantizers
    assert result.codes.min() >= 0 and result.codes.max() < 64
    # Untrained, so no quality to check; but the level restore undoes the normalization.
    blocks = pipeline.dc_removed(pipeline.decode_codes(model, [result.codes]), SR)  # less its mean
    out_norm = np.concatenate(list(blocks))
    restored = pipeline.restore(out_norm, result.prepared.gain_db, SR, 22050, x.shape[0])
    np.testing.assert_allclose(restored, result.audio, atol=1e-6)


# --- through the bitstream -------------------------------------------------------------------

PCM_FP = b"pcm-2x10"


def decode_all(model: nn.Module, data: bytes, **kwargs: tp.Any) -> tuple[bs.Header, np.ndarray]:
    header, blocks = pipeline.decode_from_stream(model, io.BytesIO(data), **kwargs)
    return header, np.concatenate([np.zeros(0, np.float32), *blocks])


@pytest.mark.parametrize("level", [-45.0, -3.0])
def test_level_comes_back_through_the_bitstream(tmp_path: Path, level: float) -> None:
    audio, rate = read_audio(speech_file(tmp_path, level, rate=22050, channels=1))
    f = io.BytesIO()
    header = pipeline.encode_to_stream(TwoStagePcm(), audio, rate, 320.0, f, fingerprint=PCM_FP, chunk_frames=4096)
    assert len(f.getvalue()) == header.stream_bytes()
    assert header.gain_db == pytest.approx(-16.0 - header.input_lufs, abs=1e-4)
    got_header, out = decode_all(TwoStagePcm(), f.getvalue(), fingerprint=PCM_FP)
    assert got_header == header
    assert out.shape == (audio.shape[0],)
    assert rms_dbfs(out) == pytest.approx(level, abs=0.1)


def test_real_codec_bitstream_matches_the_roundtrip_and_refuses_other_models() -> None:
    model = tiny_codec()
    x = (0.1 * telugu_speech()[: 3 * SR]).astype(np.float32)
    f = io.BytesIO()
    header = pipeline.encode_to_stream(model, x, SR, 1.8, f, chunk_frames=64)
    data = f.getvalue()
    assert header.bitrate_bps == 1800 and header.n_chunks == 3
    # 150 frames × 6 quantizers × 6 bits, and a byte of level code per block: 16 frames (the
    # largest divisor of the 64-frame chunks up to 0.5 s), so 4 + 4 + 2 blocks
    assert header.energy is not None and header.energy.block_frames == 16
    assert len(data) == 76 + 3 * 8 + math.ceil(150 * 6 * 6 / 8) + 4 + 4 + 2
    _, out = decode_all(model, data)
    expected = pipeline.roundtrip(model, x, SR, 1.8, chunk_frames=64)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    with pytest.raises(bs.ModelMismatchError, match="decode with the model that encoded it"):
        decode_all(build_codec(tiny_config(), seed=1).eval(), data)


def test_a_crafted_header_with_the_right_fingerprint_is_still_checked() -> None:
    model = tiny_codec()
    x = (0.1 * telugu_speech()[:SR]).astype(np.float32)
    f = io.BytesIO()
    header = pipeline.encode_to_stream(model, x, SR, 0.9, f, energy=False)  # version 1: CRC at 60
    body = bytearray(f.getvalue())
    for offset, value, message in [(37, 16, "bits per code is 16"), (36, 4, "4 quantizers")]:
        forged = body.copy()
        forged[offset] = value
        forged[60:64] = zlib.crc32(bytes(forged[:60])).to_bytes(4, "little")
        with pytest.raises(bs.ModelMismatchError, match=message):
            decode_all(model, bytes(forged))
    assert header.n_quantizers == 3


def test_the_decoded_offset_is_removed_per_segment_whatever_the_block_sizes() -> None:
    """The decoder's offset is measured over 10 s segments (the last 10 to 20 s), not per
    decoded block, so a short chunk's low frequencies are not taken for an offset; the same
    samples whatever blocks the decoder yields, and no step where the offset changes."""
    rng = np.random.default_rng(0)
    n = 47 * SR
    drift = np.where(np.arange(n) < 25 * SR, 0.2, -0.1).astype(np.float32)  # an offset that changes
    x = (rng.standard_normal(n) * 0.1).astype(np.float32) + drift
    outs = []
    for size in (320, 7 * SR, n):
        blocks = list(pipeline.dc_removed((x[i : i + size] for i in range(0, n, size)), SR))
        assert [b.shape[0] / SR for b in blocks] == [10.0, 10.0, 10.0, 17.0]
        outs.append(np.concatenate(blocks))
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])
    y = outs[0]
    for lo, hi in ((0, 10), (10, 20), (20, 30), (30, 47)):
        assert abs(float(np.mean(y[lo * SR : hi * SR], dtype=np.float64))) < 1e-3
    # A 1.5 s recording is one segment: exactly its mean is removed, nothing else.
    short = x[: 3 * SR // 2]
    np.testing.assert_allclose(np.concatenate(list(pipeline.dc_removed([short], SR))), short - short.mean(), atol=1e-6)
    # Where the offset changes (at 20 s, 0.2 -> ~0.06), it ramps: no jump above the signal's own.
    assert float(np.max(np.abs(np.diff(y[20 * SR - 10 : 20 * SR + 10])))) < 0.6
