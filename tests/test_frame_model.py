"""The frame-rate architecture (codec/model/frame.py): shapes and bitrates, the STFT pair, chunked
against whole-file coding through the inference path, the inference copy built from a
checkpoint, and fine-tuning from a checkpoint (train.init_from)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from codec.errors import UserError
from codec.inference import pipeline
from codec.inference.model_source import load_model
from codec.model.checkpoint import model_fingerprint, read_checkpoint, save_checkpoint
from codec.model.codec import FRAME_FIELDS, CodecConfig, build_codec
from codec.model.frame import analysis, synthesis
from codec.training.loop import train
from codec.training.params import TrainParams
from tests.presets import tiny_config
from tests.synth import write_dataset

SR = 16000


def tiny_frame(**overrides: object) -> CodecConfig:
    base: dict[str, object] = dict(
        architecture="frame",
        encoder_strides=(160, 2),
        decoder_strides=(2, 160),
        encoder_channels=32,
        decoder_channels=32,
        latent_dim=32,
        frame_blocks=(1, 2, 1),
        linear_path=False,
    )
    base.update(overrides)
    return tiny_config(**base)


def woken(cfg: CodecConfig, seed: int = 3) -> torch.nn.Module:
    """A frame codec with its weights moved off their initial values (so every block counts)."""
    model = build_codec(cfg, seed=seed).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    return model


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """Harmonics of a gliding pitch under a syllable-rate envelope, with pauses."""
    t = np.arange(int(seconds * SR)) / SR
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * 2.5 * t + seed), 0, None) ** 2
    noise = np.random.default_rng(seed).standard_normal(t.size) * 0.01
    return (0.1 * voice * envelope + noise).astype(np.float32)


def test_frame_codec_shapes_bitrates_and_padding() -> None:
    cfg = tiny_frame()
    assert cfg.hop_length == 320 and cfg.frame_rate == 50.0
    assert cfg.served_n_quantizers == (3, 6, 12)
    model = build_codec(cfg, seed=0).eval()
    x = torch.randn(2, 1, SR + 123) * 0.1
    with torch.no_grad():
        for n_q in cfg.served_n_quantizers:
            codes = model.encode(x, n_q)
            assert codes.shape == (2, n_q, 51) and codes.dtype == torch.long
            assert int(codes.min()) >= 0 and int(codes.max()) < cfg.codebook_size
            audio = model.decode(codes)
            assert audio.shape == (2, 1, 51 * 320) and torch.isfinite(audio).all()
        out = model(x, 12)
    assert out.audio.shape == x.shape and out.latents.shape == (2, 32, 51)


def test_frame_config_errors_name_the_field() -> None:
    with pytest.raises(UserError, match=r"encoder_strides \[STFT hop, down\]"):
        tiny_frame(encoder_strides=(2, 4, 5, 8), decoder_strides=(8, 5, 4, 2)).check()
    with pytest.raises(UserError, match="frame_kernel 4 must be odd"):
        tiny_frame(frame_kernel=4).check()
    with pytest.raises(UserError, match="linear_path must be false"):
        tiny_frame(linear_path=True).check()
    with pytest.raises(UserError, match="architecture 'mdct'"):
        tiny_frame(architecture="mdct").check()


def test_the_stft_pair_reconstructs_exactly() -> None:
    """synthesis() of an analysis-framed STFT's own magnitude and phase gives the input back: the
    decoder's head can express any signal, and the "same" framing puts n frames on n hops."""
    x = torch.from_numpy(speechlike(1.0)).view(1, 1, -1)
    hop, n_fft = 160, 640
    padded = torch.nn.functional.pad(x, (240, 240), mode="reflect")[:, 0]
    spec = torch.stft(padded, n_fft, hop, window=torch.hann_window(n_fft), center=False, return_complex=True)
    assert spec.shape[-1] == x.shape[-1] // hop
    y = synthesis(spec, hop)
    assert y.shape == x.shape
    assert float((y - x).abs().max()) < 1e-5
    feats = analysis(x, hop)
    assert feats.shape == (1, 2 * 321, 100)
    # |X|^0.3 with the phase kept: the magnitude of the compressed pair is |X|^0.3.
    mag = torch.sqrt(feats[:, :321] ** 2 + feats[:, 321:] ** 2)
    torch.testing.assert_close(mag, spec.abs().clamp_min(1e-7) ** 0.3, rtol=1e-4, atol=1e-5)


def test_chunked_coding_equals_whole_file_coding() -> None:
    """The receptive field stays inside the inference path's chunk context: codes of a chunked
    encode equal the whole-file encode's, and a chunked decode its audio."""
    model = woken(tiny_frame())
    x = pipeline.prepare(speechlike(4.0), SR, SR).samples()
    whole = np.concatenate(list(pipeline.encode_codes(model, x, 3.6, chunk_frames=10**6)), axis=1)
    chunks = list(pipeline.encode_codes(model, x, 3.6, chunk_frames=37))
    assert whole.shape == (12, 200)
    np.testing.assert_array_equal(np.concatenate(chunks, axis=1), whole)
    one = np.concatenate(list(pipeline.decode_codes(model, [whole])))
    many = np.concatenate(list(pipeline.decode_codes(model, chunks)))
    assert one.shape == many.shape == (200 * 320,)
    assert float(np.abs(one).max()) > 1e-3
    np.testing.assert_allclose(many, one, atol=1e-5 * np.abs(one).max())


def test_the_loaded_inference_model_is_the_trained_model(tmp_path: Path) -> None:
    """codec encode/decode build the model on the meta device from the checkpoint's tensors:
    same codes, audio and fingerprint."""
    model = woken(tiny_frame())
    save_checkpoint(tmp_path / "codec.pt", model)
    loaded = load_model(str(tmp_path / "codec.pt")).model
    assert model_fingerprint(loaded) == model_fingerprint(model)
    x = torch.from_numpy(speechlike(1.5)).view(1, 1, -1)
    with torch.inference_mode():
        codes = model.encode(x, 12)
        assert torch.equal(loaded.encode(x, 12), codes)
        torch.testing.assert_close(loaded.decode(codes), model.decode(codes), rtol=0, atol=1e-6)


def test_waveform_configs_keep_their_fingerprint_dict() -> None:
    """The frame fields stay out of a waveform model's config dict (which its fingerprint hashes),
    so streams coded with models trained before the frame architecture existed still decode."""
    waveform = tiny_config().to_dict()
    assert not set(FRAME_FIELDS) & set(waveform)
    assert CodecConfig.from_dict(waveform) == tiny_config()
    frame = tiny_frame().to_dict()
    assert frame["architecture"] == "frame" and frame["frame_blocks"] == [1, 2, 1]
    assert CodecConfig.from_dict(frame) == tiny_frame()


def test_fine_tuning_starts_from_the_checkpoint_and_keeps_its_codebooks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train.init_from: the run starts with the checkpoint's weights and codebooks, quantizes from its
    first step (no autoencoder warm-up) and never refits the codebooks by k-means; a checkpoint of
    another architecture is refused, naming the fields that differ."""
    from codec.training import loop

    data = write_dataset(tmp_path / "data", n_clips=10, seconds=1.0)
    cfg = tiny_frame()
    base = TrainParams(
        steps=3, batch_size=2, segment_s=0.4, val_every=3, val_clips=1, val_seconds=0.5, checkpoint_every=3,
        quantizer_warmup_steps=2, progress=False, threads=1, val_fraction=0.4, model=cfg,
    )  # fmt: skip
    train(base, data, tmp_path / "scratch")
    start = read_checkpoint(tmp_path / "scratch" / "codec.pt")["model"]
    tuned = dataclasses.replace(base, steps=2, init_from=str(tmp_path / "scratch" / "codec.pt"))
    state = loop.load(tuned, data)
    assert all(torch.equal(state.model.state_dict()[k], v) for k, v in start.items())

    def refit(_: object) -> None:
        raise AssertionError("a fine-tune refit its codebooks")

    monkeypatch.setattr(loop, "fit_codebooks", refit)
    out = loop.train_step(state)
    assert out.losses["vq/commitment_loss"] > 0  # quantized from the first step
    result = train(tuned, data, tmp_path / "tuned")
    assert result.step == 2
    wrong = dataclasses.replace(tuned, model=dataclasses.replace(cfg, frame_blocks=(1, 1, 1)))
    with pytest.raises(UserError, match=r"holds another model \(model config differs in frame_blocks\)"):
        train(wrong, data, tmp_path / "wrong")


# --- the shipped reference model ---------------------------------------------------------------


def test_the_reference_model_loads_weights_only_and_decodes_the_committed_stream(tmp_path: Path) -> None:
    """codec/model/reference/codec.pt is a plain weights-only checkpoint (float16 tensors, at most
    20 MB), and `codec decode` of the stream committed beside it gives the audio committed beside it."""
    import soundfile as sf

    from codec.model.checkpoint import REFERENCE_CHECKPOINT
    from tests.conftest import run_cli

    assert REFERENCE_CHECKPOINT.stat().st_size <= 20 * 2**20
    ckpt = torch.load(REFERENCE_CHECKPOINT, weights_only=True)
    assert set(ckpt) >= {"model_config", "model", "params", "step", "target_lufs"}
    assert not {"optimizer", "rng", "adversarial"} & set(ckpt)
    assert all(v.dtype == torch.float16 for v in ckpt["model"].values() if v.is_floating_point())
    assert ckpt["model_config"]["architecture"] == "frame"
    folder = REFERENCE_CHECKPOINT.parent
    out = tmp_path / "decoded.wav"
    run_cli("codec", "decode", str(folder / "sample.tscb"), str(out), "--model", str(REFERENCE_CHECKPOINT), check=True)
    got, rate = sf.read(out, dtype="float32")
    want, want_rate = sf.read(folder / "sample_decoded.wav", dtype="float32")
    assert rate == want_rate and got.shape == want.shape
    assert float(np.abs(want).max()) > 0.05  # speech, not silence
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_the_demo_profile_fine_tunes_the_reference(tmp_path: Path) -> None:
    """make demo's training: the CPU profile composed from conf/ starts from the reference model
    (train.init_from) and its result keeps the reference's architecture; from scratch is
    train.init_from: null."""
    import yaml
    from dvc.utils.hydra import compose_and_dump

    from codec.model.checkpoint import REFERENCE_CHECKPOINT
    from codec.params import from_dict
    from tests.conftest import REPO

    out = tmp_path / "params.yaml"
    compose_and_dump(out, str(REPO / "conf"), None, "config", "", [])
    section = yaml.safe_load(out.read_text())["train"]
    params = from_dict(TrainParams, section, "train")
    assert params.init_from is not None and (REPO / params.init_from).resolve() == REFERENCE_CHECKPOINT
    tiny = dataclasses.replace(
        params, steps=2, batch_size=2, segment_s=0.64, val_every=2, val_clips=1, val_seconds=0.64,
        checkpoint_every=2, progress=False, init_from=str(REFERENCE_CHECKPOINT), val_fraction=0.5,
    )  # fmt: skip
    data = write_dataset(tmp_path / "data", n_clips=8, seconds=1.0)
    result = train(tiny, data, tmp_path / "models")
    tuned = read_checkpoint(tmp_path / "models" / "codec.pt")
    reference = read_checkpoint(REFERENCE_CHECKPOINT)
    assert tuned["model_config"] == reference["model_config"]
    assert result.step == 2 and math.isfinite(result.val["val/snr_db"])


def test_the_causal_variant_reads_no_future_and_leaves_other_models_as_they_were() -> None:
    """``frame_causal`` (the issue-27 experiment): a latent frame reads no sample after its own,
    decoded audio reads at most one frame of codes ahead (half the inverse STFT's window), and a
    non-causal model's config dict (its fingerprint) does not mention the setting."""
    import dataclasses

    from codec.model.codec import Codec, frame_config

    assert "frame_causal" not in frame_config().to_dict()
    config = dataclasses.replace(frame_config(), frame_causal=True, encoder_channels=32, decoder_channels=32)
    assert config.to_dict()["frame_causal"] is True
    torch.manual_seed(0)
    model = Codec(config).eval()
    for vq in model.quantizer.quantizers:  # fresh EMA codebooks are zeros: every code would decode alike
        vq.embed.normal_()  # type: ignore[union-attr,operator]
    hop = config.hop_length
    x = torch.randn(1, 1, 40 * hop) * 0.1
    y = x.clone()
    y[..., 25 * hop :] = torch.randn(1, 1, 15 * hop)  # a different future from frame 25 on
    with torch.no_grad():
        za, zb = model.encode_latents(x), model.encode_latents(y)
        assert torch.equal(za[..., :25], zb[..., :25]) and not torch.equal(za[..., 25:], zb[..., 25:])
        codes = torch.randint(0, config.codebook_size, (1, config.n_codebooks, 40))
        other = codes.clone()
        other[..., 25:] = torch.randint(0, config.codebook_size, (1, config.n_codebooks, 15))
        a, b = model.decode(codes), model.decode(other)
    assert torch.allclose(a[..., : 24 * hop], b[..., : 24 * hop], atol=1e-6)  # frames 0..23 keep their audio
    assert not torch.allclose(a[..., 25 * hop :], b[..., 25 * hop :])
