"""The codec model: bitrate arithmetic, shapes, quantizer, checkpoints, the data split."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from codec.data.split import split_of
from codec.errors import UserError
from codec.model.checkpoint import load_codec, model_fingerprint, save_checkpoint
from codec.model.codec import CodecConfig, build_codec
from codec.model.quantize import code_usage
from codec.model.serving import for_inference
from codec.training.dataset import read_clips, split_clips
from tests.presets import tiny_config
from tests.synth import write_dataset


def test_bitrate_arithmetic_default_config() -> None:
    cfg = CodecConfig()
    assert cfg.hop_length == 320
    assert cfg.frame_rate == 50.0
    assert cfg.bits_per_code == 10
    assert cfg.kbps_per_quantizer == pytest.approx(0.5)
    assert [cfg.n_quantizers_for(k) for k in (1.5, 3.0, 6.0)] == [3, 6, 12]
    assert cfg.served_n_quantizers == (3, 6, 12)
    for n_q in range(1, cfg.n_codebooks + 1):
        assert cfg.bitrate_kbps(n_q) == pytest.approx(n_q * 50 * 10 / 1000)
    with pytest.raises(ValueError, match="not served"):
        cfg.n_quantizers_for(2.0)


def test_bitrate_arithmetic_other_codebook_size() -> None:
    cfg = CodecConfig(codebook_size=256, n_codebooks=15, bitrates_kbps=(2.0, 6.0))
    assert cfg.bits_per_code == 8
    assert cfg.n_quantizers_for(2.0) == 5
    assert cfg.n_quantizers_for(6.0) == 15


def test_unservable_bitrate_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"bitrate 1\.2 kbps"):
        CodecConfig(bitrates_kbps=(1.2,)).check()
    with pytest.raises(UserError, match="same product"):
        CodecConfig(decoder_strides=(8, 5, 4, 4)).check()


def test_encode_decode_shapes_and_padding() -> None:
    model = build_codec(tiny_config(), seed=0).eval()
    x = torch.randn(2, 1, 3000) * 0.1  # not a multiple of the hop (320)
    codes = model.encode(x, n_quantizers=3)
    assert codes.shape == (2, 3, 10) and codes.dtype == torch.long
    y = model.decode(codes)
    assert y.shape == (2, 1, 10 * 320)
    out = model(x, 12)
    assert out.audio.shape == x.shape and out.codes.shape == (2, 12, 10)
    # decode(encode(x)) is forward(x) at the same number of quantizers.
    torch.testing.assert_close(model.decode(model.encode(x, 12))[..., :3000], out.audio, atol=1e-5, rtol=1e-4)


def test_quantizer_dropout_uses_served_settings() -> None:
    cfg = tiny_config(quantizer_dropout=0.5)
    model = build_codec(cfg, seed=0)
    n_q = model.quantizer.sample_n_quantizers(4000, torch.Generator().manual_seed(0))
    assert set(n_q.tolist()) <= set(cfg.served_n_quantizers)
    assert (n_q == cfg.n_codebooks).float().mean().item() == pytest.approx(0.5 + 0.5 / 3, abs=0.03)


def test_codebook_usage() -> None:
    codes = torch.tensor([[[0, 1, 2, 3], [0, 0, 0, 0]]])  # [B=1, Q=2, F=4]
    used, perplexity = code_usage(codes, codebook_size=8)
    assert used.tolist() == [0.5, 0.125]
    assert perplexity[0].item() == pytest.approx(4.0) and perplexity[1].item() == pytest.approx(1.0)


def test_checkpoint_round_trip_weights_only(tmp_path: Path) -> None:
    model = build_codec(tiny_config(), seed=1)
    path = tmp_path / "m" / "codec.pt"
    save_checkpoint(
        path, model, {"params": {"lr": 0.001, "betas": [0.8, 0.99]}, "step": 5, "rng": torch.get_rng_state()}
    )
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["step"] == 5 and ckpt["model_config"]["n_codebooks"] == 12
    assert not list(path.parent.glob("*.tmp"))  # atomic: no temporary left
    loaded = load_codec(path)
    assert loaded.config == model.config
    x = torch.randn(1, 1, 1600) * 0.1
    model.eval()
    torch.testing.assert_close(loaded(x, 6).audio, model(x, 6).audio)
    fp = model_fingerprint(model)
    assert len(fp) == 8 and model_fingerprint(loaded) == fp
    with torch.no_grad():
        next(loaded.parameters()).add_(1e-3)
    assert model_fingerprint(loaded) != fp


@pytest.mark.parametrize("strides", [(2, 4, 5, 8), (4, 4, 4, 5)])
def test_inference_copy_gives_the_same_codes_audio_and_fingerprint(strides: tuple[int, ...]) -> None:
    cfg = tiny_config(encoder_strides=strides, decoder_strides=strides[::-1], output_activation="tanh")
    model = build_codec(cfg, seed=3).eval()
    with torch.no_grad():  # wake the conv stacks (they start at zero output) so they count
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    fast = for_inference(model)
    assert any(type(m).__name__ == "ChannelsLastConv" for m in fast.modules())
    x = torch.randn(2, 1, 16000 + 123, generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.inference_mode():
        codes = model.encode(x, 12)
        assert torch.equal(fast.encode(x, 12), codes)
        slow_audio, fast_audio = model.decode(codes), fast.decode(codes)
    assert slow_audio.shape == fast_audio.shape
    assert (slow_audio - fast_audio).abs().max() < 1e-5 * max(1.0, float(slow_audio.abs().max()))
    assert float(slow_audio.abs().max()) > 1e-3  # not trivially equal zeros
    assert model_fingerprint(fast) == model_fingerprint(model)


def test_the_model_codec_encode_loads_is_the_inference_copy_bit_for_bit(tmp_path: Path) -> None:
    """codec encode/decode build the inference model straight from the checkpoint (plain convs on
    the meta device, weight norm folded from the stored g and v): the same weights, codes, audio
    and fingerprint as for_inference() of the trained model, without building that model."""
    import subprocess
    import sys

    from codec.inference.model_source import load_model

    model = build_codec(tiny_config(), seed=5).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    save_checkpoint(tmp_path / "codec.pt", model)
    reference = for_inference(load_codec(tmp_path / "codec.pt"))
    loaded = load_model(str(tmp_path / "codec.pt")).model
    assert model_fingerprint(loaded) == model_fingerprint(reference) == model_fingerprint(model)
    ref_state, state = reference.state_dict(), loaded.state_dict()
    assert ref_state.keys() == state.keys()
    assert all(torch.equal(ref_state[k], state[k]) for k in state), "folded weights differ"
    x = torch.randn(1, 1, 8000, generator=torch.Generator().manual_seed(1)) * 0.1
    with torch.inference_mode():
        codes = reference.encode(x, 12)
        assert torch.equal(loaded.encode(x, 12), codes)
        assert torch.equal(loaded.decode(codes), reference.decode(codes))
    # And the load itself imports none of torch's tracing machinery (a second of start-up).
    probe = (
        "import sys; from codec.inference.model_source import load_model; "
        f"load_model({str(tmp_path / 'codec.pt')!r}); "
        "print(sorted(m for m in ('torch._dynamo', 'torch.fx.experimental.symbolic_shapes') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_unreadable_checkpoint_is_a_user_error(tmp_path: Path) -> None:
    bad = tmp_path / "codec.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable codec checkpoint"):
        load_codec(bad)
    with pytest.raises(UserError, match="not found"):
        load_codec(tmp_path / "missing.pt")


def test_split_is_by_speaker_and_stable(tmp_path: Path) -> None:
    speakers = [f"spk{i:03d}" for i in range(400)]
    first = {k: split_of(k, 0.2) for k in speakers}
    # Adding speakers never moves existing ones; the share is close to val_fraction.
    more = {k: split_of(k, 0.2) for k in speakers + [f"new_{i}" for i in range(200)]}
    assert all(more[k] == s for k, s in first.items())
    assert sum(s == "val" for s in first.values()) / len(speakers) == pytest.approx(0.2, abs=0.05)
    # A manifest with speakers: every clip of a speaker lands on its speaker's side.
    data = write_dataset(tmp_path / "data", n_clips=24, seconds=0.5)
    manifest = pd.read_csv(data / "manifest.csv")
    manifest["speaker"] = [f"speaker_{i % 6}" for i in range(len(manifest))]
    manifest.to_csv(data / "manifest.csv", index=False)
    train, val = split_clips(read_clips(data), 0.3)
    assert len(train) + len(val) == 24 and train and val
    assert not {c.speaker for c in train} & {c.speaker for c in val}
    assert {c.speaker for c in val} == {f"speaker_{i}" for i in range(6) if split_of(f"speaker_{i}", 0.3) == "val"}
    # Without speakers (files directly in the source folder) each clip is its own speaker.
    manifest["speaker"] = ""
    manifest.to_csv(data / "manifest.csv", index=False)
    _, val = split_clips(read_clips(data), 0.3)
    assert {c.id for c in val} == {c.id for c in read_clips(data) if split_of(c.id, 0.3) == "val"}


def test_manifest_problems_are_user_errors(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", n_clips=3, seconds=0.5)
    with pytest.raises(UserError, match="at 16000 Hz, the model at 24000 Hz"):
        read_clips(data, sample_rate=24000)
    (data / "clip001.wav").unlink()
    with pytest.raises(UserError, match=r"clip001\.wav is missing"):
        read_clips(data)
    with pytest.raises(UserError, match=r"manifest\.csv not found"):
        read_clips(tmp_path / "nowhere")
