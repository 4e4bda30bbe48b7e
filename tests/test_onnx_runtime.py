"""The ONNX export and the torch-free runtime (issue 27): ``codec export``, what the export codes
against the torch model on evaluation audio, the committed stream, start-up without torch or
MLflow, and the model cache of registry versions."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from codec.audio.resample import resample
from codec.cli.main import main
from codec.errors import UserError
from codec.evaluation import conditions
from codec.inference import pipeline
from codec.inference.model_source import load_model
from codec.inference.onnx_codec import ENCODER_FILE, META_FILE, OnnxCodec
from codec.model.config import REFERENCE_CHECKPOINT

REPO = Path(__file__).resolve().parents[1]
FESTIVAL = REPO / "data" / "eval_sets" / "festival_voice"
SR = 16000


def cli(*args: str | Path) -> int:
    return main([str(a) for a in args])


def error_db(got: np.ndarray, want: np.ndarray) -> float:
    """The difference's RMS against the reference's, in dB."""
    diff = float(np.sqrt(np.mean((np.asarray(got, np.float64) - want) ** 2)))
    return 20 * math.log10(max(diff, 1e-12) / float(np.sqrt(np.mean(np.asarray(want, np.float64) ** 2))))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference model through ``codec export``."""
    out = tmp_path_factory.mktemp("export") / "reference-onnx"
    assert cli("export", out, "--model", REFERENCE_CHECKPOINT) == 0
    return out


def test_export_writes_graphs_and_the_models_numbers(exported: Path, capsys: pytest.CaptureFixture[str]) -> None:
    meta = json.loads((exported / META_FILE).read_text())
    torch_model = load_model(str(REFERENCE_CHECKPOINT), "torch")
    assert bytes.fromhex(meta["fingerprint"]) == torch_model.fingerprint  # what every bitstream carries
    assert meta["config"] == torch_model.model.config.to_dict()  # type: ignore[attr-defined]
    assert meta["level"]["target_lufs"] == torch_model.levels.target_lufs
    assert meta["encoder_input"] == "stft"  # the frame model's analysis, computed outside the graph
    assert sorted(p.name for p in exported.iterdir()) == ["codec.json", "decoder.onnx", "encoder.onnx"]
    # Not over an existing folder unless asked.
    capsys.readouterr()
    assert cli("export", exported, "--model", REFERENCE_CHECKPOINT) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err


def _evaluation_audio() -> list[tuple[str, np.ndarray]]:
    """The festival_voice set (a real speaker, committed) as evaluation reads it, and two of its
    clips through the telephone and noise conditions (evaluation's own functions)."""
    clips = []
    for path in sorted(FESTIVAL.glob("*.flac")):
        x, rate = sf.read(path, dtype="float32")
        clips.append((path.stem, resample(x, rate, SR) if rate != SR else x))
    extra = [
        ("telephone", conditions.telephone(clips[0][1], SR)),
        ("noise", conditions.add_noise(clips[1][1], SR, snr_db=10.0, seed=1)),
    ]
    return clips + extra


def test_the_export_codes_evaluation_audio_as_torch_does_but_near_ties(exported: Path) -> None:
    """Codes identical to the torch path at every served bitrate except near-ties of the
    nearest-code search (at most 0.1 % of frames), and the same codes decode to audio within
    -60 dB of the torch path's (the whole inference path: level, chunks, energy side information)."""
    torch_model = load_model(str(REFERENCE_CHECKPOINT), "torch")
    onnx_model = load_model(str(exported), "onnx")
    assert onnx_model.runtime == "onnx" and onnx_model.fingerprint == torch_model.fingerprint
    frames = differing = 0
    worst = -math.inf
    for _, x in _evaluation_audio():
        for kbps in (1.5, 3.0, 6.0):
            a = pipeline.roundtrip_with_codes(torch_model.model, x, SR, kbps, torch_model.levels)
            b = pipeline.roundtrip_with_codes(onnx_model.model, x, SR, kbps, onnx_model.levels)
            assert a.header == b.header
            frames += a.codes.shape[1]
            differing += int(np.any(a.codes != b.codes, axis=0).sum())
            # The torch path's stream, decoded by the export: its audio within -60 dB.
            _, blocks = pipeline.decode_from_stream(onnx_model.model, io.BytesIO(a.stream))
            worst = max(worst, error_db(np.concatenate(list(blocks)), a.audio))
    assert frames > 3000
    assert differing / frames <= 0.001, f"{differing} of {frames} frames differ"
    assert worst < -60.0, worst


def test_the_export_decodes_the_committed_stream_to_the_torch_paths_audio(exported: Path, tmp_path: Path) -> None:
    folder = REFERENCE_CHECKPOINT.parent
    out_onnx, out_torch = tmp_path / "onnx.wav", tmp_path / "torch.wav"
    assert cli("decode", folder / "sample.tscb", out_onnx, "--model", exported, "-q") == 0
    assert cli("decode", folder / "sample.tscb", out_torch, "--model", REFERENCE_CHECKPOINT, "--runtime", "torch") == 0
    got, rate = sf.read(out_onnx, dtype="float32")
    want, want_rate = sf.read(out_torch, dtype="float32")
    assert rate == want_rate and got.shape == want.shape
    assert error_db(got, want) < -60.0
    committed, _ = sf.read(folder / "sample_decoded.wav", dtype="float32")
    np.testing.assert_allclose(got, committed, atol=1e-4)


def test_encode_and_decode_with_an_export_import_neither_torch_nor_mlflow(exported: Path, tmp_path: Path) -> None:
    x = (np.sin(2 * np.pi * 220 * np.arange(SR) / SR) * 0.1).astype(np.float32)
    sf.write(tmp_path / "in.wav", x, SR)
    model = str(exported)
    script = (
        "import sys; from codec.cli.main import main; "
        f"a = main(['encode', 'in.wav', 'x.tscb', '--model', {model!r}]); "
        f"b = main(['decode', 'x.tscb', 'y.wav', '--model', {model!r}]); "
        "print(a, b, sorted(m for m in ('torch', 'mlflow', 'scipy.signal', 'pandas') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "0 0 []"
    y, _ = sf.read(tmp_path / "y.wav", dtype="float32")
    assert y.shape == x.shape


def test_a_damaged_or_foreign_export_is_refused_with_what_to_do(exported: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    with (bad / ENCODER_FILE).open("r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02\x03")
    model = OnnxCodec.load(bad)  # the graphs are read (and checked) when first used
    with pytest.raises(UserError, match=r"does not match its checksum.*export the model again"):
        model.encode_array(np.zeros(SR, np.float32), 3)
    meta = json.loads((bad / META_FILE).read_text())
    (bad / META_FILE).write_text(json.dumps({**meta, "format": 99}))
    with pytest.raises(UserError, match=r"export format 99.*export the model again"):
        OnnxCodec.load(bad)
    with pytest.raises(UserError, match=r"is an ONNX export.*drop --runtime torch"):
        load_model(str(exported), "torch")


def test_a_waveform_model_exports_too(tmp_path: Path) -> None:
    """The CPU demo's waveform architecture (weight norm folded, Snake, the linear path): the
    export's check (codes and audio against the model) passes."""
    from codec.inference.export import export_checkpoint
    from codec.model.checkpoint import read_checkpoint, save_checkpoint
    from codec.model.codec import build_codec, cpu_demo_config

    save_checkpoint(tmp_path / "w.pt", build_codec(cpu_demo_config(), seed=3))
    done = export_checkpoint(read_checkpoint(tmp_path / "w.pt"), tmp_path / "w-onnx")
    assert done.code_mismatch <= 0.001 and done.audio_error_db < -60.0
    assert OnnxCodec.load(tmp_path / "w-onnx").config == cpu_demo_config()


def test_the_registry_champion_is_downloaded_and_exported_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real MLflow SQLite registry: the first default encode downloads the champion and exports
    it into the model cache; later calls read the cache without MLflow or torch; moving the alias
    to another version loads that one."""
    import mlflow
    import torch
    from mlflow import MlflowClient

    from codec.model.checkpoint import read_checkpoint, save_weights_only
    from codec.model.codec import Codec
    from codec.model.config import CodecConfig
    from codec.tracking import MODEL_NAME

    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("CODEC_CACHE_DIR", str(cache))
    ref = read_checkpoint(REFERENCE_CHECKPOINT)
    other = Codec(CodecConfig.from_dict(ref["model_config"]))
    other.load_state_dict({k: v.float() for k, v in ref["model"].items()})
    with torch.no_grad():
        other.decoder.head.bias.add_(0.01)  # type: ignore[union-attr]
    (tmp_path / "other").mkdir()
    save_weights_only(tmp_path / "other" / "codec.pt", other, {"level": ref.get("level", {})})

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri, uri)
    client.create_registered_model(MODEL_NAME)
    experiment = client.create_experiment("onnx-runtime")  # not another test's active experiment
    versions = []
    for ckpt in (REFERENCE_CHECKPOINT, tmp_path / "other" / "codec.pt"):
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_artifact(str(ckpt), "checkpoint")  # as the train stage logs it: checkpoint/codec.pt
        versions.append(client.create_model_version(MODEL_NAME, f"runs:/{run.info.run_id}/checkpoint", run.info.run_id))
    client.set_registered_model_alias(MODEL_NAME, "champion", versions[0].version)

    x = (np.sin(2 * np.pi * 200 * np.arange(SR) / SR) * 0.1).astype(np.float32)
    sf.write(tmp_path / "in.wav", x, SR)
    probe = (
        "import sys; from codec.cli.main import main; "
        "rc = main(['encode', 'in.wav', 'x.tscb', '--overwrite', '-v']); "
        "print(rc, 'mlflow' in sys.modules, 'torch' in sys.modules)"
    )
    env = {**os.environ, "CODEC_CACHE_DIR": str(cache)}
    first = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    assert first.stdout.strip().splitlines()[-1] == "0 True True"  # downloaded and exported
    assert f"version {versions[0].version}" in first.stderr  # the -v line names the model
    second = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    assert second.stdout.strip().splitlines()[-1] == "0 False False"  # the cache: no MLflow, no torch
    assert "ONNX export" in second.stderr and f"version {versions[0].version}" in second.stderr
    assert len(list((cache / "exports").iterdir())) == 1 and len(list((cache / "checkpoints").iterdir())) == 1

    client.set_registered_model_alias(MODEL_NAME, "champion", versions[1].version)
    third = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    assert f"version {versions[1].version}" in third.stderr
    assert len(list((cache / "exports").iterdir())) == 2
    # The torch runtime reads the cached checkpoint: no download.
    loaded = load_model(f"models:/{MODEL_NAME}/{versions[0].version}", "torch")
    assert loaded.fingerprint == load_model(str(REFERENCE_CHECKPOINT), "torch").fingerprint


def test_the_runtimes_stft_features_are_the_models(exported: Path) -> None:
    """The runtime's NumPy analysis equals codec.model.frame.analysis (both float64, rounded once)."""
    import torch

    from codec.inference.onnx_codec import COMPRESSION, stft_features
    from codec.model import frame

    assert COMPRESSION == frame.COMPRESSION
    x, _ = sf.read(sorted(FESTIVAL.glob("*.flac"))[0], dtype="float32")
    x = x[: x.shape[0] // 160 * 160]
    for n in (x.shape[0], 160, 320):  # a clip, and inputs no longer than the pad (zeros, not reflected)
        want = frame.analysis(torch.from_numpy(x[:n]).view(1, 1, -1), 160)[0].numpy()
        got = stft_features(x[:n], 160)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_an_unwritable_model_cache_falls_back_to_torch_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("CODEC_CACHE_DIR", str(tmp_path / "not-a-folder"))
    loaded = load_model(str(REFERENCE_CHECKPOINT), "auto")
    assert loaded.runtime == "torch"
    assert "cannot be written; set CODEC_CACHE_DIR" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"--runtime onnx: the model cache .* cannot be written"):
        load_model(str(REFERENCE_CHECKPOINT), "onnx")
    monkeypatch.setenv("CODEC_CACHE_DIR", "off")  # off: torch, without a word
    assert load_model(str(REFERENCE_CHECKPOINT), "auto").runtime == "torch"
    assert capsys.readouterr().err == ""
