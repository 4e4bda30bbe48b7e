"""Hostile and broken inputs to ``codec encode``/``codec decode``: crafted bitstream headers
(written by the bitstream module's own writer, then one field patched and the header CRC
recomputed, as an attacker would), a header that claims more audio than the file holds,
output-size limits, bad limit arguments, a ``kill -9`` in the middle of an encode, a
checkpoint holding pickled code, and a 0-byte input.

The model is the untrained tiny architecture of :func:`tests.presets.tiny_config`: these
tests are about what the commands accept and refuse, not about audio quality.
"""

from __future__ import annotations

import fcntl
import io
import os
import re
import signal
import struct
import subprocess
import sys
import time
import typing as tp
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from codec.audio.level import LevelSettings
from codec.cli.decode import EXIT_BAD_BITSTREAM
from codec.cli.main import main
from codec.errors import UserError
from codec.inference import bitstream as bs
from codec.inference import compress, pipeline
from codec.inference.prepare import prepare_file
from codec.model import checkpoint

SR = 16000
KBPS = 3.6  # tiny_config: 12 quantizers x 6 bits x 50 frames/s

# Header fields (offset, struct format), from the table in codec/inference/bitstream.py.
RATE, LENGTH, FRAMES, GAIN = (16, "<I"), (20, "<Q"), (44, "<Q"), (56, "<f")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def noise(seconds: float, rms: float = 0.05, rate: int = SR, seed: int = 0) -> np.ndarray:
    """Speech-band-ish noise with a syllable-rate envelope (so BS.1770 gating sees a signal)."""
    n = round(seconds * rate)
    t = np.arange(n) / rate
    x = np.random.default_rng(seed).standard_normal(n) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    return (x * rms / np.sqrt(np.mean(np.square(x)))).astype(np.float32)


@pytest.fixture(scope="module")
def valid(ckpt: Path) -> bytes:
    """A real 3 s bitstream of ``ckpt``'s model (1.4 KB)."""
    from codec.inference.model_source import load_model

    buf = io.BytesIO()
    pipeline.encode_to_stream(load_model(str(ckpt)).model, noise(3.0), SR, KBPS, buf)
    return buf.getvalue()


def patched(data: bytes, *fields: tuple[tuple[int, str], float]) -> bytes:
    """``data`` with header fields replaced and the header CRC recomputed (at the end of the
    header: 64 bytes in version 1, 76 in version 2)."""
    b = bytearray(data)
    size = bs.HEADER_SIZES.get(struct.unpack_from("<H", b, 4)[0], bs.HEADER_SIZE)
    for (offset, fmt), value in fields:
        struct.pack_into(fmt, b, offset, value)
    struct.pack_into("<I", b, size - 4, zlib.crc32(bytes(b[: size - 4])))
    return bytes(b)


def decode(
    tmp_path: Path, data: bytes, ckpt: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, str, Path]:
    """Run ``codec decode`` on ``data``; returns (exit code, stderr, output path)."""
    src, out = tmp_path / "in.tscb", tmp_path / "out.wav"
    src.write_bytes(data)
    out.unlink(missing_ok=True)
    capsys.readouterr()
    rc = main(["decode", str(src), str(out), "--model", str(ckpt), "-q", *extra])
    return rc, capsys.readouterr().err, out


def assert_refused(rc: int, err: str, out: Path, *words: str) -> None:
    assert rc == EXIT_BAD_BITSTREAM, err
    assert err.startswith("codec decode: error: ") and err.count("\n") == 1, err
    assert str(out.parent / "in.tscb") in err, err  # names the file
    for w in words:
        assert w in err, err
    assert not out.exists() and not list(out.parent.glob(".*.partial"))


# --- header values the encoder never writes ---------------------------------------------------


def test_a_header_cannot_raise_the_sample_rate_past_what_the_encoder_writes(
    tmp_path: Path, ckpt: Path, valid: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    """3 s of codes relabelled as 3 s at 768 kHz (the length scaled to match the frame count)
    decoded to a 9.2 MB WAV from a 1.4 KB stream; now the header is refused, naming the field."""
    header = bs.Header.unpack(valid[: bs.MAX_HEADER_SIZE])
    forged = patched(valid, (RATE, 768_000), (LENGTH, header.length * 48))
    assert_refused(*decode(tmp_path, forged, ckpt, capsys), "header sample rate 768000", "1000..192000 Hz")


def test_the_encoder_writes_every_rate_the_decoder_accepts_and_no_other(
    tmp_path: Path, ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sf.write(str(tmp_path / "fast.wav"), noise(0.5, rate=192_000), 192_000, subtype="PCM_16")
    assert main(["encode", str(tmp_path / "fast.wav"), str(tmp_path / "x.tscb"), "--model", str(ckpt), "-q"]) == 0
    assert main(["decode", str(tmp_path / "x.tscb"), str(tmp_path / "x.wav"), "--model", str(ckpt), "-q"]) == 0
    assert sf.info(str(tmp_path / "x.wav")).samplerate == 192_000
    sf.write(str(tmp_path / "faster.wav"), noise(0.1, rate=384_000), 384_000, subtype="PCM_16")
    capsys.readouterr()
    assert main(["encode", str(tmp_path / "faster.wav"), str(tmp_path / "y.tscb"), "--model", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert "faster.wav: sample rate 384000 Hz is outside the 1000..192000 Hz" in err and "resample" in err
    assert not (tmp_path / "y.tscb").exists()


@pytest.mark.parametrize("gain_db", [-200.0, -60.5])
def test_a_gain_beyond_what_the_encoder_writes_is_refused(
    tmp_path: Path, ckpt: Path, valid: bytes, capsys: pytest.CaptureFixture[str], gain_db: float
) -> None:
    """-200 dB decoded to peaks of 1e10 (the decoder applies the negative gain)."""
    rc, err, out = decode(tmp_path, patched(valid, (GAIN, gain_db)), ckpt, capsys)
    assert_refused(rc, err, out, f"header gain {gain_db:g} dB is out of bounds (-60..60 dB")


def test_the_largest_gain_decodes_within_60_db_of_the_model_output(
    tmp_path: Path, ckpt: Path, valid: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, err, out = decode(tmp_path, patched(valid, (GAIN, 0.0)), ckpt, capsys)
    assert rc == 0, err
    plain = np.abs(sf.read(str(out), dtype="float32")[0]).max()
    rc, err, out = decode(tmp_path, patched(valid, (GAIN, -60.0)), ckpt, capsys)
    assert rc == 0, err
    assert np.abs(sf.read(str(out), dtype="float32")[0]).max() == pytest.approx(1000.0 * plain, rel=1e-3)


def test_the_encoder_refuses_an_input_it_would_need_more_than_60_db_to_bring_down(
    tmp_path: Path, ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A float WAV at about +50 LUFS (samples in the hundreds) would need -66 dB: refused with
    its loudness named, instead of a header no decoder accepts."""
    sf.write(str(tmp_path / "hot.wav"), noise(2.0, rms=300.0), SR, subtype="FLOAT")
    capsys.readouterr()
    assert main(["encode", str(tmp_path / "hot.wav"), str(tmp_path / "x.tscb"), "--model", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(
        r"hot\.wav: at 5\d\.\d LUFS \(its samples are far above full scale\)", err
    )
    assert "at most 60 dB of attenuation" in err and not (tmp_path / "x.tscb").exists()


# --- the header against the payload, and the output size --------------------------------------


def test_a_header_claiming_more_frames_than_the_file_holds_is_refused_before_decoding(
    tmp_path: Path, ckpt: Path, valid: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    """The header of a 1.4 KB file claims 24 h (a consistent length and frame count): refused
    from the file's size, before a chunk is read; so is a file longer than its header says."""
    hours = 24 * 3600
    forged = patched(valid, (LENGTH, hours * SR), (FRAMES, hours * 50))
    rc, err, out = decode(tmp_path, forged, ckpt, capsys)
    assert_refused(rc, err, out, "truncated: the header declares 4320000 frames (86400.0 s)", f"has {len(valid)}")
    rc, err, out = decode(tmp_path, valid + bytes(1000), ckpt, capsys)
    assert_refused(rc, err, out, "data continues after the last of 1 chunks", f"has {len(valid) + 1000}")
    # The library check, for a reader that knows the size.
    with pytest.raises(bs.BitstreamError, match="declares 150 frames"):
        bs.read_stream(io.BytesIO(valid[:-1]), size=len(valid) - 1)
    assert bs.read_stream(io.BytesIO(valid), size=len(valid)).header.frame_count == 150


def test_the_output_size_is_bounded_by_a_default_that_says_how_to_raise_it() -> None:
    """By the format alone, 24 h at 192 kHz FLOAT is 66 GB of WAV: over the 4 GB default."""
    day = bs.Header(
        fingerprint=bytes(8), sample_rate=192_000, length=24 * 3600 * 192_000, channels=1, model_rate=SR,
        hop_length=320, n_quantizers=3, bits_per_code=10, frame_count=24 * 3600 * 50, chunk_frames=500,
        input_lufs=-20.0, gain_db=4.0,
    )  # fmt: skip
    day.check()
    limit = compress.DEFAULT_MAX_OUTPUT_MB * compress.MB
    assert limit == 4 * 10**9
    with pytest.raises(
        bs.BitstreamError, match=r"66,355\.2 MB .* over the 4000 MB output limit; pass --max-output-mb 66356"
    ):
        compress.check_decode_limits(day, "FLOAT", None, limit, "day.tscb")
    hour = bs.Header(**{**day.__dict__, "sample_rate": SR, "length": 3600 * SR, "frame_count": 3600 * 50})
    compress.check_decode_limits(hour, "FLOAT", None, limit, "hour.tscb")  # 230 MB: fine


def test_output_and_duration_limits_name_the_value_that_would_pass(
    tmp_path: Path, ckpt: Path, valid: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, err, out = decode(tmp_path, valid, ckpt, capsys, "--max-output-mb", "0.1")  # 3 s FLOAT: 0.192 MB
    assert_refused(rc, err, out, "would be 0.2 MB (3.0 s at 16000 Hz, FLOAT)", "pass --max-output-mb 1")
    assert decode(tmp_path, valid, ckpt, capsys, "--max-output-mb", "1")[0] == 0
    rc, err, out = decode(tmp_path, valid, ckpt, capsys, "--max-seconds", "2.5")
    assert_refused(rc, err, out, "3.0 s is longer than the --max-seconds limit of 2.5 s; pass --max-seconds 3")
    assert decode(tmp_path, valid, ckpt, capsys, "--max-seconds", "3")[0] == 0


@pytest.mark.parametrize("option", ["--max-seconds", "--max-output-mb"])
@pytest.mark.parametrize("value", ["inf", "nan", "0", "-1", "1e308", "ten", "1e16"])
def test_bad_limits_are_usage_errors(
    tmp_path: Path, ckpt: Path, valid: bytes, option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--max-seconds inf`` or ``1e308`` on a valid stream ended in an OverflowError traceback."""
    (tmp_path / "in.tscb").write_bytes(valid)
    with pytest.raises(SystemExit) as info:
        main(["decode", str(tmp_path / "in.tscb"), str(tmp_path / "out.wav"), "--model", str(ckpt), option, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: {value}" in err.replace("'", "") and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tscb"]


def test_the_largest_limits_are_accepted(
    tmp_path: Path, ckpt: Path, valid: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = ("--max-seconds", "86400", "--max-output-mb", "1e9")
    assert decode(tmp_path, valid, ckpt, capsys, *extra)[0] == 0


# --- kill -9 -----------------------------------------------------------------------------------


def partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


def test_a_killed_encode_leaves_a_partial_file_that_the_next_run_removes(tmp_path: Path, ckpt: Path) -> None:
    """A real ``kill -9`` of the ``codec`` script while it writes the bitstream (120 s of
    input: about 2 s of encoding here), then a successful run for the same output."""
    sf.write(str(tmp_path / "long.wav"), noise(120.0), SR, subtype="PCM_16")
    sf.write(str(tmp_path / "short.wav"), noise(1.0), SR, subtype="PCM_16")
    out = tmp_path / "out.tscb"
    codec = Path(sys.executable).parent / "codec"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [str(codec), "encode", str(tmp_path / "long.wav"), str(out), "--model", str(ckpt), "-q"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not partials(tmp_path) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert partials(tmp_path), f"no partial file appeared (exit code {proc.poll()})"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    left = partials(tmp_path)
    assert len(left) == 1 and left[0].startswith(".out.tscb.") and not out.exists()
    assert main(["encode", str(tmp_path / "short.wav"), str(out), "--model", str(ckpt), "-q"]) == 0
    assert partials(tmp_path) == [] and bs.Header.unpack(out.read_bytes()[: bs.MAX_HEADER_SIZE]).length == SR


def test_only_stale_partials_of_the_same_output_are_removed(tmp_path: Path) -> None:
    """Removed: an unlocked partial of ``out.tscb`` from before the run. Kept: one a live
    writer holds locked, one newer than the run, other outputs' partials, other names, a
    folder, a symbolic link."""
    out = tmp_path / "out.tscb"
    started = time.time()
    past = started - 60

    def make(name: str, old: bool = True) -> Path:
        path = tmp_path / name
        path.write_bytes(b"TSCB")
        if old:
            os.utime(path, (past, past))
        return path

    stale = make(".out.tscb.ab12_xyz.partial")
    locked = make(".out.tscb.k3ep1ive.partial")
    fresh = make(".out.tscb.fre5hnow.partial", old=False)
    foreign = [make(".other.tscb.ab12_xyz.partial"), make(".out.tscb.partial"), make(".out.tscb.toolongname.partial")]
    (tmp_path / ".out.tscb.f0lder00.partial").mkdir()
    (tmp_path / ".out.tscb.symlink0.partial").symlink_to(make("target"))
    with locked.open("rb") as held:  # a writer's lock: flock conflicts across open files, even in one process
        fcntl.flock(held, fcntl.LOCK_EX)
        removed = compress.remove_stale_partials(out, started)
    assert removed == [stale] and not stale.exists()
    assert locked.exists() and fresh.exists() and all(p.exists() for p in foreign)
    assert (tmp_path / ".out.tscb.f0lder00.partial").is_dir() and (tmp_path / ".out.tscb.symlink0.partial").is_symlink()


# --- checkpoints and empty inputs --------------------------------------------------------------


class _Payload:
    """Unpickling this would create ``path``: proof that code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[tp.Any, ...]:
        return (open, (self.path, "w"))


def test_a_checkpoint_holding_code_is_refused_without_torch_advice_to_load_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """torch's message advises re-running with ``weights_only=False`` (which runs the code):
    the refusal must say what the file is instead."""
    marker = tmp_path / "pwned"
    torch.save({"model_config": {}, "model": {}, "x": _Payload(str(marker))}, tmp_path / "evil.pt")
    sf.write(str(tmp_path / "in.wav"), noise(1.0), SR)
    capsys.readouterr()
    assert (
        main(["encode", str(tmp_path / "in.wav"), str(tmp_path / "x.tscb"), "--model", str(tmp_path / "evil.pt")]) == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "evil.pt is not a readable codec checkpoint: it holds pickled code" in err
    assert "refuses to load" in err and "open" in err and "weights_only" not in err, err
    assert not marker.exists() and not (tmp_path / "x.tscb").exists()
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(UserError, match=r"empty.pt is not a readable codec checkpoint \(the file is empty\)"):
        checkpoint.read_checkpoint(tmp_path / "empty.pt")


def test_a_0_byte_input_is_an_empty_file(tmp_path: Path, ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in.wav").write_bytes(b"")
    capsys.readouterr()
    assert main(["encode", str(tmp_path / "in.wav"), str(tmp_path / "x.tscb"), "--model", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"codec encode: error: {tmp_path / 'in.wav'}: empty file (0 bytes), no audio in it; pass a recording\n"
    )
    with pytest.raises(UserError, match="empty file"), (tmp_path / "tmp").open("wb") as tmp:
        prepare_file(tmp_path / "in.wav", SR, LevelSettings(), tmp)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.wav", "tmp"]


def test_pipe_and_registry_errors_name_what_the_user_passed_not_a_temporary_copy(
    tmp_path: Path, ckpt: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 23 row 16: ``codec encode -``/``codec decode -`` named ``/tmp/codec-stdin-…/stdin``
    and a registered version's refusal ``/tmp/codec-model-…/codec.pt``: they name ``-`` and the
    models:/ URI now, and leave no temporary copy behind."""
    import mlflow
    from mlflow import MlflowClient

    sf.write(str(tmp_path / "in.wav"), noise(1.0), SR, subtype="PCM_16")
    cut_wav = (tmp_path / "in.wav").read_bytes()[:2000]
    stream = tmp_path / "in.tscb"
    assert main(["encode", str(tmp_path / "in.wav"), str(stream), "--model", str(ckpt), "-q"]) == 0
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the pipe's temporary copies, checked below
    for args, data, code, message in [
        (
            ["encode", "-", "-"],
            cut_wav,
            2,
            "truncated: the WAV data chunk declares 32000 bytes but the file ends after",
        ),
        (["decode", "-", "-"], stream.read_bytes()[:-100], EXIT_BAD_BITSTREAM, "truncated: the header declares"),
    ]:
        proc = subprocess.run(
            [sys.executable, "-m", "codec", *args, "--model", str(ckpt)], input=data, capture_output=True, env=env
        )
        err = proc.stderr.decode()
        assert proc.returncode == code and proc.stdout == b"", err
        assert err.startswith(f"codec {args[0]}: error: - (standard input): {message}") and err.count("\n") == 1, err
        assert "codec-stdin-" not in err and "codec-stdout-" not in err
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("codec-")]  # no temporary copy left

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # MLflow's own bar, not the message
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("broken")  # not an experiment id an earlier test left active
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "codec.pt").write_bytes(b"")  # a run whose checkpoint was emptied
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(tmp_path / "checkpoint" / "codec.pt"), "checkpoint")
    client = MlflowClient(uri, uri)
    client.create_registered_model("broken")
    client.create_model_version("broken", f"runs:/{run.info.run_id}/checkpoint", run_id=run.info.run_id)
    capsys.readouterr()
    assert main(["encode", str(tmp_path / "in.wav"), str(tmp_path / "x.tscb"), "--model", "models:/broken/1"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"codec encode: error: models:/broken/1 (version 1, run {run.info.run_id}) checkpoint/codec.pt "
        "is not a readable codec checkpoint (the file is empty); retrain or restore it\n"
    ), err
    assert not (tmp_path / "x.tscb").exists()
