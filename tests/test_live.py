"""Live coding (issue 27): ``codec encode --live``/``decode --live`` through pipes, the version-3
stream, the running gain, and what live output is against the whole-file path's."""

from __future__ import annotations

import dataclasses
import io
import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from codec.audio.io import WavStreamError, pcm16, read_wav_stream, wav_stream_header
from codec.inference import bitstream, pipeline
from codec.inference.live import ATTACK_DB, HYSTERESIS_DB, LiveEncoder, LiveGain
from codec.inference.model_source import load_model
from codec.model.config import REFERENCE_CHECKPOINT

REPO = Path(__file__).resolve().parents[1]
FESTIVAL = REPO / "data" / "eval_sets" / "festival_voice"
SR = 16000
CODEC = str(Path(sys.executable).with_name("codec"))


def speech(seconds: float, gain: float = 0.1) -> np.ndarray:
    joined = np.concatenate([sf.read(p, dtype="float32")[0] for p in sorted(FESTIVAL.glob("*.flac"))])
    return (np.tile(joined, 3)[: int(seconds * SR)] * np.float32(gain)).astype(np.float32)


def rms_db(x: np.ndarray) -> float:
    return 10 * math.log10(float(np.mean(np.asarray(x, np.float64) ** 2)))


def live_encode(model: pipeline.CodecLike, levels, fingerprint: bytes, x: np.ndarray, **options) -> tuple[bytes, list]:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    enc = LiveEncoder(model, levels, 6.0, SR, 1, buf, fingerprint=fingerprint, **options)
    for k in range(0, x.shape[0], 320):  # 20 ms blocks, as a recorder sends them
        enc.feed(x[k : k + 320, None])
    enc.finish()
    return buf.getvalue(), enc.gain.gains


def test_live_output_is_the_whole_file_output_once_the_gain_settles() -> None:
    """After the running gain stops moving, a live stream holds the codes the whole-file path
    gives at that gain (same look-ahead), when both remove the same DC offset from the input, and
    decodes to its audio within -40 dB (measured -43 dB: the decoders remove their output's offset
    each its own way, a running mean against 10 s segment means, which also moves the energy
    correction a little). With the running DC estimate (what --live does) the codes differ where
    the encoder sees the residual offset (40 % of frames on this clip: the model's analysis
    compresses magnitudes to the power 0.3, which makes a small offset visible): the audio then
    differs by about -22 dB, with the same PESQ (within 0.02) and level (stated in the README)."""
    from pesq import pesq

    loaded = load_model(str(REFERENCE_CHECKPOINT), "torch")
    x = speech(20.0, gain=0.3)  # about -35 LUFS: +19.6 dB to the model's -16
    prepared = pipeline.prepare(x, SR, SR, loaded.levels)
    offset = float(np.mean(x, dtype=np.float64))
    for dc in (offset, None):
        data, gains = live_encode(loaded.model, loaded.levels, loaded.fingerprint, x, dc_offset=dc)
        final = gains[-1]
        settled = next(i for i in range(len(gains)) if all(g == final for g in gains[i:]))
        assert settled < len(gains) - 30  # the last 3 s or more at one gain
        assert abs(final - prepared.gain_db) <= HYSTERESIS_DB  # the running meter agrees with the file's
        _, blocks = pipeline.decode_from_stream(loaded.model, io.BytesIO(data))
        live = np.concatenate(list(blocks))
        codes = np.concatenate([r.codes for r in bitstream.read_stream(io.BytesIO(data)).records], axis=1)
        levels = dataclasses.replace(loaded.levels, target_lufs=prepared.input_lufs + final)
        whole = pipeline.roundtrip_with_codes(loaded.model, x, SR, 6.0, levels, chunk_frames=5)
        assert whole.header.gain_db == pytest.approx(final, abs=1e-4)
        assert live.shape == x.shape == whole.audio.shape
        after = (settled + 4) * 5  # frames: the look-ahead of the first chunk at the final gain is at it too
        s0 = (settled + 8) * 5 * 320  # samples: and the decoder's look-behind
        error = rms_db(live[s0:] - whole.audio[s0:]) - rms_db(whole.audio[s0:])
        differ = float(np.mean(np.any(codes[:, after:] != whole.codes[:, after:], axis=0)))
        if dc is not None:
            assert differ == 0.0
            assert error < -40.0
        else:
            assert differ < 0.6 and error < -15.0  # measured: 40 % of frames, -22 dB
            assert pesq(SR, x[s0:], live[s0:], "wb") == pytest.approx(
                pesq(SR, x[s0:], whole.audio[s0:], "wb"), abs=0.02
            )
            assert abs(rms_db(live[s0:]) - rms_db(x[s0:])) < 0.3  # the level kept


def test_the_running_gain_has_its_stated_attack_and_hysteresis() -> None:
    gain = LiveGain(target_lufs=-16.0, max_gain_db=30.0)
    assert gain.next(-math.inf) == 0.0  # silence before any sound: 0 dB
    assert gain.next(-40.0) == pytest.approx(24.0)  # the first sound: its gain at once
    assert gain.next(-40.5) == pytest.approx(24.0)  # under the hysteresis: unchanged
    steps = [gain.next(-30.0) for _ in range(6)]  # 10 dB louder: down at most ATTACK_DB a chunk
    assert steps[:3] == pytest.approx([24.0 - ATTACK_DB, 24.0 - 2 * ATTACK_DB, 24.0 - 3 * ATTACK_DB])
    assert steps[-1] == pytest.approx(24.0 - 3 * ATTACK_DB)  # within HYSTERESIS_DB of 14: it stays
    assert HYSTERESIS_DB > 1.0
    assert gain.next(-60.0) == pytest.approx(steps[-1] + ATTACK_DB)


def test_live_cli_through_pipes_and_the_stream_decodes_as_a_file(tmp_path: Path) -> None:
    """sox/arecord-style WAV on stdin → codec encode --live → codec decode --live → a WAV stream;
    the same stream saved to a file decodes with plain codec decode to the same audio."""
    x = speech(4.0)
    wav = wav_stream_header(SR, 1) + pcm16(x)
    model = ["--model", str(REFERENCE_CHECKPOINT), "--runtime", "torch"]
    enc = subprocess.run([CODEC, "encode", "--live", "-", "-", *model], input=wav, capture_output=True, check=True)
    assert enc.stdout[:4] == b"TSCB" and struct.unpack_from("<H", enc.stdout, 4)[0] == 3
    assert "live: 4.00 s in 40 chunks of 5 frames" in enc.stderr.decode()
    dec = subprocess.run(
        [CODEC, "decode", "--live", "-", "-", "--subtype", "PCM_16", *model],
        input=enc.stdout,
        capture_output=True,
        check=True,
    )
    rate, channels, blocks = read_wav_stream(io.BytesIO(dec.stdout))
    y = np.concatenate(list(blocks))[:, 0]
    assert (rate, channels, y.shape[0]) == (SR, 1, x.shape[0])
    assert abs(rms_db(y) - rms_db(x)) < 0.5
    (tmp_path / "live.tscb").write_bytes(enc.stdout)
    subprocess.run([CODEC, "decode", str(tmp_path / "live.tscb"), str(tmp_path / "out.wav"), *model], check=True)
    z, _ = sf.read(tmp_path / "out.wav", dtype="float32")
    np.testing.assert_allclose(z, y, atol=2 / 32768)  # y went through 16-bit PCM


def test_a_live_stream_cut_short_or_read_by_an_older_decoder_is_refused_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loaded = load_model(str(REFERENCE_CHECKPOINT), "torch")
    data, _ = live_encode(loaded.model, loaded.levels, loaded.fingerprint, speech(1.0))
    with pytest.raises(bitstream.BitstreamError, match="without its end record"):
        list(bitstream.read_stream(io.BytesIO(data[:-24])).records)
    damaged = bytearray(data)
    damaged[100] ^= 0xFF
    with pytest.raises(bitstream.BitstreamError, match="fails its checksum"):
        list(bitstream.read_stream(io.BytesIO(bytes(damaged))).records)
    with pytest.raises(bitstream.BitstreamError, match="data continues after the live stream's end record"):
        list(bitstream.read_stream(io.BytesIO(data + b"x")).records)
    # A decoder that knows versions 1 and 2 only (every one before live coding) says so.
    monkeypatch.setattr(bitstream, "SUPPORTED_VERSIONS", (1, 2))
    with pytest.raises(bitstream.BitstreamError, match="version 3 is not supported"):
        bitstream.read_stream(io.BytesIO(data))


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_32", "FLOAT"])
def test_the_wav_stream_reader_takes_what_recorders_send(subtype: str, tmp_path: Path) -> None:
    x = (np.random.default_rng(1).standard_normal((1000, 2)) * 0.1).astype(np.float32)
    sf.write(tmp_path / "a.wav", x, 22050, subtype=subtype)
    data = (tmp_path / "a.wav").read_bytes()
    at = data.index(b"data") + 4
    for blob in (data, data[:at] + struct.pack("<I", 0xFFFFFFFF) + data[at + 4 :]):  # sized, and size unknown
        rate, channels, blocks = read_wav_stream(io.BytesIO(blob))
        y = np.concatenate(list(blocks))
        assert (rate, channels) == (22050, 2) and y.shape == x.shape
        np.testing.assert_allclose(y, x, atol=1e-4)
    with pytest.raises(WavStreamError, match="not a WAV stream"):
        read_wav_stream(io.BytesIO(b"fLaC" + bytes(100)))
