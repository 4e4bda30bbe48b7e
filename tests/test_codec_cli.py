"""``codec encode`` / ``codec decode`` through the real command line: the level comes back
from a whisper to a shout, the size is the nominal bitrate, every failure is one line
with its exit code and leaves no file, hostile bitstreams and checkpoints are refused
within bounded memory, and a 10-minute input encodes in bounded memory.

Most runs call ``codec.cli.main([...])`` in-process (the same argument parsing, dispatch
and error printing as the console script, without a second torch import per call);
one test runs the installed ``codec`` script to see what a shell sees.

The model is the tiny architecture of :func:`tests.presets.tiny_config`, untrained, with
its output layer scaled so that it gives back the training loudness on speech (what
training teaches it; an untrained decoder's output level is arbitrary). The level test
then measures what the CLI owns: measuring the input, normalizing it, carrying the gain
in the bitstream and restoring it.
"""

from __future__ import annotations

import functools
import io
import os
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import typing as tp
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codec.audio.io import read_audio
from codec.audio.level import LevelSettings
from codec.audio.levels import rms_dbfs
from codec.audio.loudness import StreamingLoudness, integrated_lufs
from codec.audio.resample import resample
from codec.cli.decode import EXIT_BAD_BITSTREAM, EXIT_MODEL_MISMATCH
from codec.cli.main import main
from codec.inference import bitstream as bs
from codec.inference import pipeline
from codec.model.checkpoint import model_fingerprint, save_checkpoint
from codec.model.codec import Codec, build_codec
from tests.presets import tiny_config

SR = 16000
KBPS = 3.6  # tiny_config: 12 quantizers x 6 bits x 50 frames/s


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@functools.lru_cache(maxsize=1)
def telugu_speech() -> np.ndarray:
    """About 6 s of Telugu from espeak-ng at 16 kHz, unit RMS."""
    from codec.data.corpus import Espeak, load_sentences

    engine = Espeak()
    sentences = load_sentences()
    x = np.concatenate([engine.say(s, "m1", 150, 50) for s in sentences[4:6]])
    y = resample(x, engine.sample_rate, SR)
    return (y / np.sqrt(np.mean(np.square(y)))).astype(np.float32)


def calibrated_codec(seed: int = 0) -> Codec:
    """The tiny codec, codebooks initialized from the speech (k-means, as training starts),
    and every layer that writes the waveform (one output channel) scaled so that the
    output has the RMS of the input at the training loudness."""
    model = build_codec(tiny_config(), seed=seed).eval()
    prepared = pipeline.prepare(telugu_speech(), SR, SR).samples()

    def gain() -> float:
        out = pipeline.roundtrip(model, prepared, SR, KBPS, LevelSettings(peak_ceiling_db=None), energy=False)
        return float(np.sqrt(np.mean(np.square(out)) / np.mean(np.square(prepared))))

    with torch.no_grad():
        latents = model.encode_latents(torch.from_numpy(prepared).view(1, 1, -1))
        model.quantizer.init_codebooks(latents, torch.Generator().manual_seed(seed))
        scale = 1.0 / gain()
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)) and module.out_channels == 1:
                norm = getattr(module, "parametrizations", None)  # weight norm: scale its magnitude
                (norm.weight.original0 if norm is not None else module.weight).mul_(scale)
                if module.bias is not None:
                    module.bias.mul_(scale)
    assert gain() == pytest.approx(1.0, abs=0.01), "the output is not linear in the waveform layers any more"
    return model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "codec.pt"
    save_checkpoint(path, calibrated_codec(), {"params": {"seed": 0}, "step": 0})
    return path


@pytest.fixture(scope="module")
def other_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("other") / "codec.pt"
    save_checkpoint(path, build_codec(tiny_config(), seed=1))
    return path


def speech_wav(path: Path, level_dbfs: float, rate: int = 22050, channels: int = 2, subtype: str = "FLOAT") -> Path:
    x = resample(telugu_speech(), SR, rate) * np.float32(10 ** (level_dbfs / 20))
    sf.write(str(path), np.stack([x] * channels, axis=1), rate, subtype=subtype)
    return path


def cli(*args: str | Path) -> int:
    return main([str(a) for a in args])


def encode(src: Path, out: Path, ckpt: Path, *extra: str) -> int:
    return cli("encode", src, out, "--model", ckpt, "--kbps", str(KBPS), "-q", *extra)


# --- the streaming encoder is the inference path -------------------------------------------


@pytest.mark.parametrize("seconds", [0.41, 1.0, 3.37, 25.05])
def test_streaming_meter_matches_integrated_lufs(seconds: float) -> None:
    rng = np.random.default_rng(int(seconds * 100))
    x = (rng.standard_normal(int(seconds * SR)) * np.linspace(0.001, 0.3, int(seconds * SR))).astype(np.float32)
    meter = StreamingLoudness(SR)
    pos = 0
    while pos < x.shape[0]:
        step = int(rng.integers(1, 9000))
        meter.add(x[pos : pos + step])
        pos += step
    assert meter.integrated() == pytest.approx(integrated_lufs(x, SR), abs=1e-4)


@pytest.mark.parametrize("normalize", [{}, {"target_lufs": -20.0, "peak_ceiling_db": -3.0, "limiter_window_ms": 2.0}])
def test_evaluation_decodes_what_codec_encode_then_decode_give(
    tmp_path: Path, ckpt: Path, normalize: dict[str, float]
) -> None:
    """What is evaluated is what ships: evaluation's decoded audio equals ``codec decode(codec
    encode(clip))`` sample for sample on the torch runtime (evaluation's), and the bitstream it
    measures is the file's bytes, also for a model trained on data normalized with other params
    (its checkpoint records them). The ONNX runtime's bound against it is
    tests/test_onnx_runtime.py's.

    Stereo 44.1 kHz, with a burst the limiter must catch, written as a FLOAT WAV (what an
    evaluation clip in memory is)."""
    from codec.evaluation import evaluate as ev
    from codec.evaluation.stage import load_params
    from codec.inference.model_source import load_model

    model_path = ckpt
    if normalize:  # as the train stage stamps a model trained on data normalized with these params
        from codec.training.stage import data_levels, stamp_checkpoint

        data = tmp_path / "data"
        data.mkdir()
        (data / "manifest.csv").write_text(f"id,lufs\na,{normalize['target_lufs']}\nb,{normalize['target_lufs']}\n")
        params = tmp_path / "params.yaml"
        params.write_text("normalize:\n" + "".join(f"  {k}: {v}\n" for k, v in normalize.items()))
        model_path = tmp_path / "codec.pt"
        model_path.write_bytes(ckpt.read_bytes())
        stamp_checkpoint(model_path, data_levels(data, params))
    x = resample(telugu_speech(), SR, 44100) * np.float32(10 ** (-28 / 20))
    x[40000:40200] *= 40.0
    stereo = np.stack([x, 0.3 * x], axis=1)
    src = tmp_path / "in.wav"
    sf.write(str(src), stereo, 44100, subtype="FLOAT")
    assert encode(src, tmp_path / "out.tscb", model_path, "--runtime", "torch") == 0
    out_wav = tmp_path / "out.wav"
    assert cli("decode", tmp_path / "out.tscb", out_wav, "--model", model_path, "-q", "--runtime", "torch") == 0
    decoded, rate = sf.read(str(out_wav), dtype="float32")

    # The evaluation stage's params file may say anything about normalize: it is not read.
    (tmp_path / "eval_params.yaml").write_text(
        "normalize:\n  target_lufs: -30.0\n  peak_ceiling_db: -10.0\nevaluate: {}\n"
    )
    load_params(tmp_path / "eval_params.yaml")
    loaded = load_model(str(model_path))  # as codec evaluate loads the model under test
    assert loaded.levels.target_lufs == normalize.get("target_lufs", -16.0)
    assert loaded.levels.peak_ceiling_db == normalize.get("peak_ceiling_db", -1.0)
    result = ev.code(loaded.model, stereo, 44100, KBPS, loaded.levels)
    assert result.prepared.limiter_db > 1.0  # the limiter was exercised
    assert rate == 44100 and result.audio.dtype == decoded.dtype == np.float32
    np.testing.assert_array_equal(result.audio, decoded)
    assert result.stream == (tmp_path / "out.tscb").read_bytes()


# --- level, rate, length, size -----------------------------------------------------------------


@pytest.mark.parametrize("level", [-45.0, -35.0, -26.0, -16.0, -6.0, -3.0])
def test_round_trip_keeps_the_level(tmp_path: Path, ckpt: Path, level: float) -> None:
    src = speech_wav(tmp_path / "in.wav", level)
    assert encode(src, tmp_path / "x.tscb", ckpt) == 0
    assert cli("decode", tmp_path / "x.tscb", tmp_path / "out.wav", "--model", ckpt, "-q") == 0
    out, rate = sf.read(str(tmp_path / "out.wav"), dtype="float32", always_2d=True)
    ref, _ = read_audio(src)
    assert rate == 22050 and out.shape == (ref.shape[0], 1)  # mono, the input's rate and length
    assert rms_dbfs(out) == pytest.approx(rms_dbfs(ref[:, 0]), abs=1.0)


def decoded(tmp_path: Path, src: Path, ckpt: Path, *extra: str) -> np.ndarray:
    assert encode(src, tmp_path / "x.tscb", ckpt, *extra) == 0
    assert cli("decode", tmp_path / "x.tscb", tmp_path / "out.wav", "--model", ckpt, "-q") == 0
    return sf.read(str(tmp_path / "out.wav"), dtype="float32")[0]


@pytest.mark.parametrize("offset", [0.02, 0.05])
def test_a_dc_offset_does_not_inflate_the_decoded_level(tmp_path: Path, ckpt: Path, offset: float) -> None:
    """Issue 23 row 6: -30 dBFS speech with a 0.05 offset came back at -26.2 dBFS (the energy
    side information counted the offset, which the codec does not code, as speech). The offset
    is removed before coding: the speech keeps its level, the output has no offset."""
    x = telugu_speech() * np.float32(10 ** (-30 / 20))
    sf.write(str(tmp_path / "in.wav"), x + np.float32(offset), SR, subtype="FLOAT")
    y = decoded(tmp_path, tmp_path / "in.wav", ckpt)
    assert rms_dbfs(y) == pytest.approx(-30.0, abs=1.0)
    assert abs(float(np.mean(y))) < 1e-4


@pytest.mark.parametrize("subtype", ["FLOAT", "PCM_16"])
def test_anti_phase_stereo_is_refused_not_coded_as_silence(
    tmp_path: Path, ckpt: Path, subtype: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 23 row 9: left = -right cancels in the mono mix-down; float input was called
    "digital silence", PCM_16 input was coded as silence with exit 0. Now one line, exit 2,
    no output file."""
    x = telugu_speech() * np.float32(0.1)
    src = tmp_path / "in.wav"
    sf.write(str(src), np.stack([x, -x], axis=1), SR, subtype=subtype)
    capsys.readouterr()
    assert encode(src, tmp_path / "x.tscb", ckpt) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "channels cancel when mixed down to mono" in err and "anti-phase" in err
    assert not (tmp_path / "x.tscb").exists()
    # Stereo that does not cancel (one channel quieter, or silent) is coded as before.
    sf.write(str(src), np.stack([x, np.zeros_like(x)], axis=1), SR, subtype=subtype)
    assert encode(src, tmp_path / "x.tscb", ckpt) == 0


def test_size_is_the_nominal_bitrate(tmp_path: Path, ckpt: Path) -> None:
    x = np.tile(telugu_speech(), 4)[: 22 * SR] * np.float32(0.05)  # 22 s: three chunks
    sf.write(str(tmp_path / "in.wav"), x, SR, subtype="PCM_16")
    out = tmp_path / "x.tscb"
    assert encode(tmp_path / "in.wav", out, ckpt) == 0
    size = out.stat().st_size
    nominal = KBPS * 1000 / 8 * 22.0  # 9,900 bytes
    # Version 2: a 76-byte header, 3 chunk records, the codes, and a byte per 0.5 s of level
    # codes (20, 20 and 4 blocks).
    assert size == bs.HEADER_SIZES[2] + 3 * bs.CHUNK_HEADER_SIZE + (1100 * 12 * 6 + 7) // 8 + 20 + 20 + 4
    assert abs(size / nominal - 1.0) < 0.02


@pytest.mark.parametrize(("fmt", "subtype", "rate"), [("FLAC", "PCM_16", 48000), ("OGG", "VORBIS", 32000)])
def test_other_formats_and_rates(tmp_path: Path, ckpt: Path, fmt: str, subtype: str, rate: int) -> None:
    src = tmp_path / f"in.{fmt.lower()}"
    x = resample(telugu_speech()[: 3 * SR], SR, rate) * np.float32(0.1)
    sf.write(str(src), np.stack([x, x, x], axis=1), rate, format=fmt, subtype=subtype)
    assert encode(src, tmp_path / "x.tscb", ckpt) == 0
    assert cli("decode", tmp_path / "x.tscb", tmp_path / "out.wav", "--model", ckpt, "--subtype", "PCM_16", "-q") == 0
    info = sf.info(str(tmp_path / "out.wav"))
    assert (info.samplerate, info.channels, info.subtype) == (rate, 1, "PCM_16")
    assert abs(info.frames - x.shape[0]) <= (0 if fmt == "FLAC" else rate // 10)


# --- errors -----------------------------------------------------------------------------------


def _encoded(tmp_path: Path, ckpt: Path) -> bytes:
    src = speech_wav(tmp_path / "ok.wav", -20.0, rate=SR, channels=1)
    assert encode(src, tmp_path / "ok.tscb", ckpt) == 0
    data = (tmp_path / "ok.tscb").read_bytes()
    for p in (src, tmp_path / "ok.tscb"):
        p.unlink()
    return data


def _with_header_field(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    """``data`` with one header field replaced and the header checksum recomputed."""
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, value)
    struct.pack_into("<I", b, 60, zlib.crc32(bytes(b[:60])))
    return bytes(b)


def _make_case(case: str, d: Path, ckpt: Path) -> tuple[str, Path]:
    """Write the bad input for ``case`` into ``d``; returns (command, input path)."""
    if case in {"missing input", "missing bitstream"}:
        return ("encode" if case == "missing input" else "decode"), d / "nope.wav"
    if case == "unreadable input":
        (d / "notes.wav").write_text("these are not samples\n")
        return "encode", d / "notes.wav"
    if case == "empty input":
        sf.write(str(d / "empty.wav"), np.zeros((0, 1), np.float32), SR)
        return "encode", d / "empty.wav"
    if case == "silent input":
        sf.write(str(d / "silent.wav"), np.zeros(SR * 2, np.float32), SR)
        return "encode", d / "silent.wav"
    if case == "truncated input":
        data = speech_wav(d / "full.wav", -20.0).read_bytes()
        (d / "full.wav").unlink()
        (d / "cut.wav").write_bytes(data[: len(data) // 2])
        return "encode", d / "cut.wav"
    data = _encoded(d, ckpt)
    bad = {
        "empty bitstream": b"",
        "truncated bitstream": data[: len(data) - 100],
        "truncated header": data[:30],
        "corrupted bitstream": data[:200] + bytes([data[200] ^ 0x10]) + data[201:],
        "wrong magic": b"RIFF" + data[4:],
        "wrong version": data[:4] + struct.pack("<H", 7) + data[6:],
        "appended data": data + b"\0",
        "model mismatch": data,
    }[case]
    (d / "in.tscb").write_bytes(bad)
    return "decode", d / "in.tscb"


ERROR_CASES = {
    # case: (exit code, words the message must hold)
    "missing input": (2, "no such file"),
    "missing bitstream": (2, "no such file"),
    "unreadable input": (2, "not an audio file"),
    "empty input": (2, "no audio samples"),
    "silent input": (2, "digital silence"),
    "truncated input": (2, "truncated"),
    "empty bitstream": (EXIT_BAD_BITSTREAM, "the file is empty"),
    "truncated bitstream": (EXIT_BAD_BITSTREAM, "truncated"),
    "truncated header": (EXIT_BAD_BITSTREAM, "truncated"),
    "corrupted bitstream": (EXIT_BAD_BITSTREAM, "checksum"),
    "wrong magic": (EXIT_BAD_BITSTREAM, "not a codec bitstream"),
    "wrong version": (EXIT_BAD_BITSTREAM, "version 7 is not supported"),
    "appended data": (EXIT_BAD_BITSTREAM, "continues after the last"),
    "model mismatch": (EXIT_MODEL_MISMATCH, "decode with the model that encoded it"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_are_one_line_with_an_exit_code_and_leave_no_file(
    tmp_path: Path, ckpt: Path, other_ckpt: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, words = ERROR_CASES[case]
    command, src = _make_case(case, tmp_path, ckpt)
    model = other_ckpt if case == "model mismatch" else ckpt
    before = set(tmp_path.iterdir())
    capsys.readouterr()
    out = tmp_path / ("out.tscb" if command == "encode" else "out.wav")
    assert cli(command, src, out, "--model", model) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"codec {command}: error: ") and words in err, err
    assert set(tmp_path.iterdir()) == before  # no output, no temporary file


def test_unserved_bitrate_names_the_served_ones(tmp_path: Path, ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = speech_wav(tmp_path / "in.wav", -20.0, rate=SR, channels=1)
    assert cli("encode", src, tmp_path / "x.tscb", "--model", ckpt, "--kbps", "6") == 2
    assert "does not serve 6 kbps; choose one of 0.9, 1.8, 3.6 kbps" in capsys.readouterr().err


def test_a_fresh_clone_codes_with_the_shipped_reference_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No registry and no models/codec.pt (a fresh clone before make demo): encode and decode use
    the reference model in the package, and the stream names it."""
    from codec.inference.model_source import default_model_spec
    from codec.model.checkpoint import REFERENCE_CHECKPOINT

    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_model_spec() == str(REFERENCE_CHECKPOINT)
    x = telugu_speech()[: 2 * SR] * np.float32(0.05)
    sf.write(str(tmp_path / "in.wav"), x, SR)
    assert cli("encode", "in.wav", "x.tscb", "--kbps", "3") == 0
    assert cli("decode", "x.tscb", "out.wav") == 0
    out, rate = sf.read(str(tmp_path / "out.wav"), dtype="float32")
    assert rate == SR and out.shape == x.shape
    assert abs(20 * np.log10(np.sqrt(np.mean(out**2)) / np.sqrt(np.mean(x**2)))) < 1.0  # its level kept
    assert not (tmp_path / "mlflow.db").exists()


def test_no_model_anywhere_says_how_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")  # the repo root the tracking URI is taken from
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr("codec.inference.model_source.REFERENCE_CHECKPOINT", tmp_path / "no-reference.pt")
    sf.write(str(tmp_path / "in.wav"), telugu_speech()[:SR], SR)
    assert cli("encode", "in.wav", "x.tscb") == 2
    err = capsys.readouterr().err
    assert "no model" in err and "dvc repro" in err and "--model" in err
    assert not (tmp_path / "mlflow.db").exists()  # looking did not create a registry
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dvc.yaml", "in.wav"]


def test_the_console_script_prints_no_traceback(tmp_path: Path, ckpt: Path) -> None:
    data = _encoded(tmp_path, ckpt)
    (tmp_path / "bad.tscb").write_bytes(data[:-1])
    codec = Path(sys.executable).parent / "codec"
    proc = subprocess.run(
        [str(codec), "decode", str(tmp_path / "bad.tscb"), str(tmp_path / "out.wav"), "--model", str(ckpt)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == EXIT_BAD_BITSTREAM
    assert proc.stderr.startswith("codec decode: error: ") and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr and not (tmp_path / "out.wav").exists()


# --- untrusted checkpoints --------------------------------------------------------------------


class _Payload:
    """Unpickling this would create ``path``: proof that code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[tp.Any, ...]:
        return (open, (self.path, "w"))


def test_checkpoints_are_never_unpickled_and_never_sized_by_their_config(
    tmp_path: Path, ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = speech_wav(tmp_path / "in.wav", -20.0, rate=SR, channels=1)
    marker = tmp_path / "pwned"
    torch.save({"model_config": {}, "model": {}, "x": _Payload(str(marker))}, tmp_path / "evil.pt")
    assert cli("encode", src, tmp_path / "x.tscb", "--model", tmp_path / "evil.pt") == 2
    assert "not a readable codec checkpoint" in capsys.readouterr().err and not marker.exists()
    # A config claiming a huge model beside the tiny model's tensors: refused without building it.
    state = torch.load(ckpt, weights_only=True)
    state["model_config"]["decoder_channels"] = 1 << 20
    torch.save(state, tmp_path / "huge.pt")
    tracemalloc.start()
    try:
        assert cli("encode", src, tmp_path / "x.tscb", "--model", tmp_path / "huge.pt") == 2
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "do not fit the model config" in capsys.readouterr().err
    assert peak < 50e6
    assert not (tmp_path / "x.tscb").exists()


# --- hostile bitstreams through the decode command ----------------------------------------------

HOSTILE = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
# Header fields a crafted stream may set (offset, struct format), CRC recomputed.
FIELDS = [(16, "<I"), (20, "<Q"), (28, "<H"), (30, "<H"), (32, "<I"), (36, "<B"), (37, "<B"), (40, "<I"), (44, "<Q")]


@functools.lru_cache(maxsize=1)
def _valid_stream(ckpt: Path) -> bytes:
    x = telugu_speech()[: 3 * SR] * np.float32(0.1)
    buf = io.BytesIO()
    from codec.inference.model_source import load_model

    pipeline.encode_to_stream(load_model(str(ckpt)).model, x, SR, KBPS, buf, chunk_frames=40)
    return buf.getvalue()


@st.composite
def hostile_streams(draw: st.DrawFn, valid: bytes) -> bytes:
    kind = draw(st.sampled_from(["random", "flip", "cut", "splice", "field"]))
    if kind == "random":
        head = draw(st.sampled_from([b"", bs.MAGIC, valid[:8], valid[:64]]))
        return head + draw(st.binary(max_size=600))
    if kind == "flip":
        data = bytearray(valid)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    if kind == "cut":
        return valid[: draw(st.integers(0, len(valid) - 1))]
    if kind == "splice":
        i = draw(st.integers(0, len(valid)))
        return valid[:i] + draw(st.binary(min_size=1, max_size=64)) + valid[i:]
    offset, fmt = draw(st.sampled_from(FIELDS))
    bits = 8 * struct.calcsize(fmt)
    value = draw(st.one_of(st.integers(0, 2**bits - 1), st.sampled_from([0, 1, 2**bits - 1, 2 ** (bits - 1)])))
    return _with_header_field(valid, offset, fmt, value)


def test_hostile_bitstreams_fail_cleanly_in_bounded_memory(
    tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import codec.inference.model_source

    # The whole decode command runs for each example except the model load (0.3 s), cached.
    source = codec.inference.model_source
    monkeypatch.setattr(source, "load_model", functools.cache(source.load_model))
    valid = _valid_stream(ckpt)
    src, out = tmp_path / "in.tscb", tmp_path / "out.wav"
    peaks: list[int] = []

    @HOSTILE
    @given(hostile_streams(valid))
    def check(data: bytes) -> None:
        src.write_bytes(data)
        out.unlink(missing_ok=True)
        tracemalloc.start()
        try:
            with _quiet():
                rc = cli("decode", src, out, "--model", ckpt, "-q")
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert rc in (0, EXIT_BAD_BITSTREAM, EXIT_MODEL_MISMATCH)
        assert out.exists() == (rc == 0)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"in.tscb"} | ({"out.wav"} if rc == 0 else set()))

    check()
    # A valid 3 s stream decodes in about 2 MB; nothing a header says may take much more.
    assert max(peaks) < 40e6, max(peaks)


class _quiet:
    """Silence stderr (each refused stream prints its one line)."""

    def __enter__(self) -> None:
        self._old = sys.stderr
        sys.stderr = io.StringIO()

    def __exit__(self, *exc: object) -> None:
        sys.stderr = self._old


# --- a long input in bounded memory -----------------------------------------------------------

MEMORY_SCRIPT = textwrap.dedent(
    """
    import sys, time, torch
    torch.set_num_threads(1)
    from codec.cli.main import main

    def rss_mb(field):  # VmHWM: peak resident set since the last reset; VmRSS: now
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) / 1024

    ckpt, out, *inputs = sys.argv[1:]
    for i, path in enumerate(inputs):
        base = rss_mb("VmRSS")
        open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
        t = time.perf_counter()
        assert main(["encode", path, out, "--model", ckpt, "-q"]) == 0
        if i:  # the first run warms up: imports, allocator pools
            print(rss_mb("VmHWM") - base, time.perf_counter() - t)
    """
)


@pytest.mark.slow
def test_ten_minutes_encode_in_bounded_memory(tmp_path: Path, ckpt: Path) -> None:
    """600 s at 16 kHz is 37 MiB as float32. The encoder holds one 10 s chunk, so its peak
    resident memory must not grow with the length: a 600 s input peaks about as high as a
    60 s one (within allocator noise) and well under the audio's size."""
    speech = (telugu_speech() * np.float32(0.05)).astype(np.float32)

    def write(name: str, seconds: int) -> str:
        n = seconds * SR
        with sf.SoundFile(str(tmp_path / name), "w", samplerate=SR, channels=1, subtype="PCM_16") as f:
            for start in range(0, n, speech.shape[0]):
                f.write(speech[: min(speech.shape[0], n - start)])
        return str(tmp_path / name)

    inputs = [write("warm.wav", 30), write("minute.wav", 60), write("long.wav", 600)]
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(ckpt), str(tmp_path / "x"), *inputs], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    (minute_mb, _), (long_mb, long_s) = (map(float, line.split()) for line in proc.stdout.splitlines())
    decoded_mb = 600 * SR * 4 / 2**20
    print(f"peak RSS growth: 60 s {minute_mb:.1f} MiB, 600 s {long_mb:.1f} MiB in {long_s:.1f} s")
    # The peak is one chunk's torch activations and allocator slack: 1-22 MiB above the
    # warmed-up process for either length, noisy with the allocator's state (the Python and
    # numpy side peaks at 4.4 MiB for both). Holding the audio would add 33 MiB to the long run.
    assert long_mb < minute_mb + 0.5 * decoded_mb, (minute_mb, long_mb)
    assert long_mb < decoded_mb, long_mb
    header = bs.Header.unpack((tmp_path / "x").read_bytes()[: bs.MAX_HEADER_SIZE])
    assert header.length == 600 * SR and header.frame_count == 600 * 50


# --- model resolution --------------------------------------------------------------------------


@pytest.mark.slow
def test_default_model_is_the_registry_champion_then_models_codec_pt(
    tmp_path: Path, ckpt: Path, other_ckpt: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As the train stage logs it (the checkpoint as the run's ``checkpoint/codec.pt``), and
    registered with the ``champion`` alias: the default --model loads it, without MLflow's
    "Downloading artifacts" progress bar on standard error."""
    import mlflow
    from mlflow import MlflowClient

    from codec.inference.model_source import DEFAULT_URI, default_model_spec, load_model
    from codec.tracking import MODEL_NAME

    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "codec.pt").write_bytes(other_ckpt.read_bytes())
    assert default_model_spec() == "models/codec.pt"  # no registry yet

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri, uri)
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(ckpt), "checkpoint")
    client.create_registered_model(MODEL_NAME)
    mv = client.create_model_version(MODEL_NAME, f"runs:/{run.info.run_id}/checkpoint", run_id=run.info.run_id)
    assert default_model_spec() == "models/codec.pt"  # a registry, but no champion
    client.set_registered_model_alias(MODEL_NAME, "champion", mv.version)
    assert default_model_spec() == DEFAULT_URI
    capsys.readouterr()
    loaded = load_model(None)
    assert "Downloading artifacts" not in capsys.readouterr().err
    assert "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ  # as it was before
    assert model_fingerprint(loaded.model) == model_fingerprint(load_model(str(ckpt)).model)
    assert loaded.source.startswith(f"{DEFAULT_URI} (version {mv.version}")
    assert loaded.levels == LevelSettings()  # a checkpoint that records no level settings: the defaults


# --- many files, pipes, --version --------------------------------------------------------------


def test_a_folder_and_files_in_one_call_with_one_model_load(tmp_path: Path, ckpt: Path) -> None:
    rec = tmp_path / "rec"
    (rec / "spk1").mkdir(parents=True)
    speech_wav(rec / "spk1" / "a.wav", -20.0)
    speech_wav(rec / "b.flac", -30.0, channels=1, subtype="PCM_16")
    (rec / "notes.txt").write_text("not audio: not an input of the batch")
    single = speech_wav(tmp_path / "single.wav", -25.0)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....WAVEnot audio")
    codes = tmp_path / "codes"
    code = cli("encode", rec, single, broken, "--out-dir", codes, "--model", ckpt, "--kbps", str(KBPS), "-q")
    assert code == 2  # the broken file's exit code; the others are written
    assert sorted(p.relative_to(codes).as_posix() for p in codes.rglob("*.tscb")) == [
        "rec/b.tscb",
        "rec/spk1/a.tscb",
        "single.tscb",
    ]
    wavs = tmp_path / "wavs"
    assert cli("decode", codes, "--out-dir", wavs, "--model", ckpt, "-q") == 0
    assert sorted(p.relative_to(wavs).as_posix() for p in wavs.rglob("*.wav")) == [
        "codes/rec/b.wav",
        "codes/rec/spk1/a.wav",
        "codes/single.wav",
    ]
    # Each is what the one-file command writes.
    encode(single, tmp_path / "one.tscb", ckpt)
    assert (tmp_path / "one.tscb").read_bytes() == (codes / "single.tscb").read_bytes()


def test_each_file_is_one_short_line_details_with_verbose_and_skipped_files_are_counted(
    tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A batch prints one line per file (source -> output, duration, kbps), the details with
    --verbose, and a summary that counts the files of its folders it did not code."""
    monkeypatch.chdir(tmp_path)
    rec = Path("rec")
    rec.mkdir()
    speech_wav(rec / "a.wav", -20.0)
    speech_wav(rec / "b.wav", -30.0, channels=1)
    (rec / "notes.txt").write_text("not audio")
    assert cli("encode", rec, "--out-dir", "codes", "--model", ckpt, "--kbps", str(KBPS)) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[:2] == [
        f"encoded rec/a.wav -> codes/rec/a.tscb: {lines[0].split(': ')[1]}",
        f"encoded rec/b.wav -> codes/rec/b.tscb: {lines[1].split(': ')[1]}",
    ]
    for line in lines[:2]:
        seconds, kbps = line.split(": ")[1].split(", ")
        assert seconds.endswith(" s") and float(seconds[:-2]) > 1.0
        assert kbps.endswith(" kbps") and float(kbps[:-5]) == pytest.approx(KBPS, rel=0.3)
        assert len(line) <= 100
    assert lines[2:] == ["codec encode: 2 files written; 1 other file skipped (rec/notes.txt)"]

    (Path("codes") / "README.md").write_text("not a bitstream")
    assert cli("decode", "codes", "--out-dir", "wavs", "--model", ckpt, "--verbose") == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("decoded codes/rec/a.tscb -> wavs/codes/rec/a.wav: ") and len(lines[0]) <= 100
    assert lines[1].startswith("  22050 Hz mono, FLOAT; model ") and str(ckpt) in lines[1]  # --verbose
    assert lines[-1] == "codec decode: 2 files written; 1 other file skipped (codes/README.md)"
    assert len(lines) == 5

    assert cli("encode", rec / "a.wav", "a.tscb", "--model", ckpt, "--kbps", str(KBPS), "-v") == 0
    first, details = capsys.readouterr().err.splitlines()
    assert first.startswith("encoded rec/a.wav -> a.tscb: ")
    assert "LUFS, gain " in details and "bit/s of energy side information" in details and str(ckpt) in details


def test_a_folder_on_a_terminal_gets_a_progress_bar_and_outputs_follow_the_umask(tmp_path: Path, ckpt: Path) -> None:
    """On a terminal several files show a progress bar (files done of all) with each file's line
    above it; what is written gets the modes the umask allows, like any tool's output."""
    from tests.conftest import in_terminal

    rec = tmp_path / "rec"
    rec.mkdir()
    for i in range(3):
        speech_wav(rec / f"clip{i}.wav", -20.0 - 5 * i)
    codec = str(Path(sys.executable).parent / "codec")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    shown = in_terminal(
        ["sh", "-c", f"umask 027 && exec {codec} encode {rec} --out-dir {tmp_path / 'codes'} --model {ckpt}"],
        tmp_path,
        env=env,
    )
    assert "codec encode: 100%" in shown and "3/3" in shown and "file/s" in shown, shown
    assert shown.count("encoded ") == 3, shown  # each file's line, not overwritten by the bar
    written = sorted((tmp_path / "codes").rglob("*.tscb"))
    assert len(written) == 3
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {oct(0o640)}  # 0666 & ~027
    assert oct((tmp_path / "codes" / "rec").stat().st_mode & 0o777) == oct(0o750)
    # Without a terminal (a pipe, a log file) no bar is drawn.
    piped = subprocess.run(
        [codec, "decode", str(tmp_path / "codes"), "--out-dir", str(tmp_path / "wavs"), "--model", str(ckpt)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert piped.returncode == 0 and "%|" not in piped.stderr and piped.stderr.count("decoded ") == 3


def test_dash_is_standard_input_and_output_and_version_prints(tmp_path: Path, ckpt: Path) -> None:
    src = speech_wav(tmp_path / "in.wav", -20.0)
    codec = Path(sys.executable).parent / "codec"
    # The command with the thread count this process codes with: a different summation order
    # can flip a near-tie between two codewords, and the bytes are compared below.
    threads = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    enc = subprocess.run(
        [str(codec), "encode", "-", "-", "--model", str(ckpt), "--kbps", str(KBPS), "-q"],
        input=src.read_bytes(),
        capture_output=True,
        env=threads,
    )
    assert enc.returncode == 0, enc.stderr
    assert not (tmp_path / "-").exists()
    encode(src, tmp_path / "file.tscb", ckpt)
    assert enc.stdout == (tmp_path / "file.tscb").read_bytes()  # the same bytes as through files
    dec = subprocess.run(
        [str(codec), "decode", "-", str(tmp_path / "out.wav"), "--model", str(ckpt), "-q"],
        input=enc.stdout,
        capture_output=True,
    )
    assert dec.returncode == 0, dec.stderr
    assert sf.info(str(tmp_path / "out.wav")).duration == pytest.approx(sf.info(str(src)).duration, abs=1e-3)
    version = subprocess.run([str(codec), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("codec 0.")
