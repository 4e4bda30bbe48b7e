"""The data half: level measurement, ingest, normalization and the data-quality gate, on real files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyloudnorm
import pytest
import scipy.ndimage
import scipy.signal
import soundfile as sf
import soxr

from codec.audio.io import TruncatedAudioError, read_audio, write_wav
from codec.audio.levels import rms_dbfs
from codec.audio.limiter import limit
from codec.audio.loudness import StreamingKFilter, _k_weighting_sos, integrated_lufs, k_filter, loudness_lufs
from codec.audio.resample import resample
from codec.data.ingest import IngestParams, ingest
from codec.data.normalize import LEVEL_TOLERANCE_DB, NormalizeParams, normalize, normalize_clip
from codec.data.validate import ValidateParams, validate
from codec.errors import DataQualityError
from tests.conftest import REPO


def speechlike(rng: np.random.Generator, seconds: float, sr: int = 16000) -> np.ndarray:
    """Voiced harmonics under a syllable-rate envelope, with pauses (crest factor like speech)."""
    t = np.arange(int(seconds * sr)) / sr
    f0 = 110 + 40 * rng.random() + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 12))
    env = np.clip(np.sin(2 * np.pi * 3.5 * t + rng.random() * 6), 0, None) ** 2
    env *= (np.sin(2 * np.pi * 0.4 * t) > -0.6).astype(float)  # pauses
    return (x * env).astype(np.float32)


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 44100, 48000])
def test_lufs_matches_pyloudnorm(rate: int) -> None:
    rng = np.random.default_rng(rate)
    x = speechlike(rng, 3.3, rate) * 0.3
    x[: rate // 2] = 0  # leading silence exercises the gates
    ours = integrated_lufs(x, rate)
    ref = pyloudnorm.Meter(rate).integrated_loudness(x.astype(np.float64))
    assert abs(ours - ref) < 1e-3


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
def test_k_weighting_is_pyloudnorms_design_and_the_streamed_filter_is_sosfilt(rate: int) -> None:
    """The coefficients written out here equal pyloudnorm's K-weighting meter's; the inference
    path's streamed float64 cascade (torchaudio's lfilter, state carried across pieces of any
    size, down to one sample) equals scipy's sosfilt over the whole signal; and its loudness
    equals pyloudnorm's."""
    meter = pyloudnorm.Meter(rate)
    theirs = np.stack([np.concatenate([f.b / f.a[0], f.a / f.a[0]]) for f in meter._filters.values()])
    np.testing.assert_allclose(_k_weighting_sos(rate), theirs, rtol=1e-12, atol=1e-15)

    rng = np.random.default_rng(rate)
    x = speechlike(rng, 2.3, rate) * 0.3
    whole = scipy.signal.sosfilt(_k_weighting_sos(rate), x.astype(np.float64))
    streamed, pos, k = [], 0, StreamingKFilter(rate)
    sizes = iter([1, 1, 2, 3, 0, 500, 1, 7777])
    while pos < x.shape[0]:
        size = next(sizes, 4096)
        streamed.append(k(x[pos : pos + size]))
        pos += size
    np.testing.assert_allclose(np.concatenate(streamed), whole, rtol=0, atol=1e-12)
    ref = meter.integrated_loudness(x.astype(np.float64))
    # float64 all the way: pyloudnorm's number (the float32 batch meter is within 1e-3 of it).
    assert abs(loudness_lufs(x, rate) - ref) < 1e-6 and abs(integrated_lufs(x, rate) - ref) < 1e-3


def test_limiter_never_exceeds_ceiling_and_leaves_quiet_parts() -> None:
    rng = np.random.default_rng(0)
    x = speechlike(rng, 2.0)
    x *= 0.4 / np.max(np.abs(x))  # speech under the ceiling ...
    x[8000:8040] += 2.0  # a click far above the ceiling
    y, gain = limit(x, 0.5, 80)
    assert np.max(np.abs(y)) <= 0.5 + 1e-6
    far = np.r_[0:7000, 9100 : len(x)]
    assert np.allclose(gain[far], 1.0)  # only the samples around peaks are touched
    assert np.max(np.abs(np.diff(gain))) < 0.2  # smooth: no step in the gain


def whole_clip_limiter(x: np.ndarray, ceiling: float, window: int) -> np.ndarray:
    """The limiter's gain by its definition, over the whole clip (the reference for the span version)."""
    need = np.minimum(1.0, ceiling / np.maximum(np.abs(x), 1e-12)).astype(np.float32)
    floor = scipy.ndimage.minimum_filter1d(need, size=2 * window + 1, mode="nearest")
    return np.minimum(scipy.ndimage.uniform_filter1d(floor, size=window, mode="nearest"), need)


@pytest.mark.parametrize("seed", range(4))
def test_span_limiter_equals_the_whole_clip_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = speechlike(rng, 3.0)
    x *= 0.6 / np.max(np.abs(x))
    for at in rng.integers(0, len(x), 12):  # clicks, some near each other and the clip's ends
        x[at : at + 30] += rng.choice([-1, 1]) * 1.5
    x[:5] = 1.2  # a peak on the first sample
    _, gain = limit(x, 0.5, 80)
    assert np.allclose(gain, whole_clip_limiter(x, 0.5, 80), atol=1e-6)
    assert np.max(np.abs(x * gain)) <= 0.5 + 1e-6


@pytest.mark.parametrize("rate", [11025, 16000, 44100])
def test_limited_clip_reports_the_loudness_a_fresh_meter_measures(rate: int) -> None:
    # normalize_clip re-meters only the limited spans; the manifest value must equal
    # metering the output from scratch (ours and pyloudnorm's).
    rng = np.random.default_rng(rate)
    x = speechlike(rng, 4.0, rate) * np.float32(0.05)
    x[rate : rate + 40] += 0.6  # bumps the ceiling must catch at -16 LUFS
    x[3 * rate : 3 * rate + 400] -= 0.4
    for mode in ("lufs", "rms"):
        y, fields = normalize_clip(x, rate, NormalizeParams(mode=mode, sample_rate=rate))
        assert fields["ceiling_applied"]
        assert abs(fields["lufs"] - integrated_lufs(y, rate)) < 2e-3
        assert abs(fields["lufs"] - pyloudnorm.Meter(rate).integrated_loudness(y.astype(np.float64))) < 5e-3
        assert abs(fields["rms_dbfs"] - rms_dbfs(y)) < 2e-3
        assert abs(fields["peak_dbfs"] - 20 * np.log10(np.max(np.abs(y)))) < 1e-3
        level = fields["lufs"] if mode == "lufs" else fields["rms_dbfs"]
        assert abs(level + 16.0) <= LEVEL_TOLERANCE_DB
        assert fields["peak_dbfs"] <= -1.0 + 1e-4


def test_16_bit_wav_reads_back_exactly(tmp_path: Path) -> None:
    x = (np.round(np.random.default_rng(1).uniform(-0.9, 0.9, 5000) * 32768) / 32768).astype(np.float32)
    write_wav(tmp_path / "x.wav", x, 16000, subtype="PCM_16")
    info = sf.info(tmp_path / "x.wav")
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    y, rate = read_audio(tmp_path / "x.wav")
    assert rate == 16000 and np.array_equal(y[:, 0], x)


def test_fast_reader_gives_libsndfiles_samples_and_catches_truncation(tmp_path: Path) -> None:
    # Plain 16-bit WAVs take the standard library's reader: the same arrays as libsndfile,
    # mono and stereo; a data chunk cut short is an error, not a shorter clip.
    rng = np.random.default_rng(3)
    stereo = rng.uniform(-0.9, 0.9, (7001, 2)).astype(np.float32)
    sf.write(tmp_path / "s.wav", stereo, 22050, subtype="PCM_16")
    sf.write(tmp_path / "m.WAV", stereo[:, 0], 8000, subtype="PCM_16")
    for name in ("s.wav", "m.WAV"):
        ours, rate = read_audio(tmp_path / name)
        ref, ref_rate = sf.read(tmp_path / name, dtype="float32", always_2d=True)
        assert rate == ref_rate and ours.dtype == np.float32 and np.array_equal(ours, ref)
    data = (tmp_path / "s.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) - 1000])
    with pytest.raises(TruncatedAudioError, match="declares 7001 frames"):
        read_audio(tmp_path / "cut.wav")
    # A header claiming ~4 GB over a small file is refused without reading (or allocating) that much.
    huge = bytearray(data)
    at = huge.find(b"data")
    huge[at + 4 : at + 8] = (0xFFFFFF00).to_bytes(4, "little")
    (tmp_path / "huge.wav").write_bytes(bytes(huge))
    with pytest.raises(TruncatedAudioError, match="only 7001 could be read"):
        read_audio(tmp_path / "huge.wav")
    # What the standard reader refuses (WAVE_FORMAT_EXTENSIBLE here) is read by libsndfile.
    sf.write(tmp_path / "ext.wav", np.repeat(stereo, 2, axis=1), 16000, subtype="PCM_16", format="WAVEX")
    ours, rate = read_audio(tmp_path / "ext.wav")
    assert rate == 16000 and np.array_equal(ours, sf.read(tmp_path / "ext.wav", dtype="float32", always_2d=True)[0])


def test_k_filter_and_resampler_equal_the_library_calls() -> None:
    # The meter's direct call into scipy's cascade and the reused soxr resampler are
    # shortcuts: each must give exactly what the public call gives, every time.
    rng = np.random.default_rng(5)
    sos = _k_weighting_sos(16000).astype(np.float32)
    for n in (1, 300, 48000):
        x = rng.standard_normal(n).astype(np.float32)
        assert np.array_equal(k_filter(sos, x), scipy.signal.sosfilt(sos, x).astype(np.float32))
    for rates in [(22050, 16000), (48000, 16000), (8000, 16000), (22050, 16000)]:
        for n in (5, 16001, 99999):
            x = rng.standard_normal(n).astype(np.float32)
            assert np.array_equal(resample(x, *rates), soxr.resample(x, rates[0], rates[1], "HQ"))


def test_float_wavs_are_byte_identical_from_run_to_run(tmp_path: Path) -> None:
    # DVC hashes the stage outputs: the same audio must give the same bytes, also a
    # second later (libsndfile stamps float WAVs with the time of writing).
    x = np.random.default_rng(7).uniform(-1, 1, (4000, 2)).astype(np.float32)
    write_wav(tmp_path / "a.wav", x[:, 0], 16000)
    write_wav(tmp_path / "s.wav", x, 16000)
    time.sleep(1.1)
    write_wav(tmp_path / "b.wav", x[:, 0], 16000)
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()
    for name, ref in (("a.wav", x[:, :1]), ("s.wav", x)):
        assert sf.info(tmp_path / name).subtype == "FLOAT"
        y, rate = read_audio(tmp_path / name)
        assert rate == 16000 and np.array_equal(y, ref)


def write_level_spread(folder: Path, levels_db: list[float], seconds: float = 3.0) -> None:
    rng = np.random.default_rng(42)
    for i, level in enumerate(levels_db):
        x = speechlike(rng, seconds)
        x *= 10 ** ((level - rms_dbfs(x)) / 20)
        if i % 3 == 0:  # a bump louder than the speech, as real recordings have
            x[8000:8050] += np.hanning(50).astype(np.float32) * min(0.99, 6 * float(np.max(np.abs(x))))
        sf.write(folder / f"clip_{i:02d}.wav", np.clip(x, -1, 1), 16000, subtype="PCM_24")


def test_normalized_files_land_within_0_1_lu_across_40_db(tmp_path: Path) -> None:
    src = tmp_path / "rec"
    src.mkdir()
    levels = list(np.linspace(-45, -5, 9))
    write_level_spread(src, levels)
    raw, out = tmp_path / "raw", tmp_path / "norm"
    res = ingest(src, raw, IngestParams(workers=2))
    assert len(res.accepted) == len(levels)
    assert res.accepted["rms_dbfs"].max() - res.accepted["rms_dbfs"].min() > 35
    df = normalize(raw, out, NormalizeParams(workers=2))
    for row in df.itertuples():
        y, sr = sf.read(out / str(row.path), dtype="float64")
        measured = pyloudnorm.Meter(sr).integrated_loudness(y)  # independent meter, on the file
        assert abs(measured - (-16.0)) <= 0.1, (row.id, measured)
        assert 20 * np.log10(np.max(np.abs(y))) <= -1.0 + 1e-3  # the ceiling holds
    assert df["ceiling_applied"].any()  # the bumps needed the limiter ...
    assert df.loc[df["ceiling_applied"], "ceiling_reduction_db"].min() > 0  # ... and it says by how much


def test_peak_mode_fails_the_gate_naming_rms_spread(small_corpus: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    ingest(small_corpus, raw, IngestParams(workers=2))
    vp = ValidateParams(min_files=10)
    good = normalize(raw, tmp_path / "lufs", NormalizeParams(workers=2))
    summary = validate(tmp_path / "lufs", raw, vp, tmp_path / "ok.json", docs_dir=None, gx_dir=REPO / "gx")
    assert summary["success"] and good["rms_dbfs"].std() < 1.5
    assert summary["raw"]["rms_dbfs_std"] > 5  # the field-level spread the data arrived with
    normalize(raw, tmp_path / "peak", NormalizeParams(mode="peak", workers=2))
    with pytest.raises(DataQualityError) as err:
        peak_params = ValidateParams(min_files=10, mode="peak")
        validate(tmp_path / "peak", raw, peak_params, tmp_path / "bad.json", None, gx_dir=REPO / "gx")
    msg = str(err.value)
    assert "rms_spread" in msg and "expect_column_stdev_to_be_between" in msg
    assert "limit std <= 1.5 dB" in msg and "worst files:" in msg and "normalize.mode: lufs" in msg
    bad = json.loads((tmp_path / "bad.json").read_text())
    assert bad["success"] is False
    assert bad["expectations"]["rms_spread"]["observed"] > 1.5
    assert err.value.exit_code == 3


def test_broken_and_odd_files_are_split_with_reasons_and_nothing_lost(tmp_path: Path) -> None:
    src = tmp_path / "in"
    (src / "nested" / "deeper").mkdir(parents=True)
    rng = np.random.default_rng(1)
    good = speechlike(rng, 2.0) * 0.2
    sf.write(src / "good.wav", good, 16000, subtype="PCM_16")
    sf.write(src / "nested" / "eight_bit.wav", good, 16000, subtype="PCM_U8")
    stereo48 = np.stack([speechlike(rng, 2.0, 48000) * 0.3, speechlike(rng, 2.0, 48000) * 0.2], axis=1)
    sf.write(src / "nested" / "deeper" / "stereo48k.wav", stereo48, 48000, subtype="PCM_16")
    sf.write(src / "nested" / "take.mp3", speechlike(rng, 2.0, 44100) * 0.3, 44100, format="MP3")
    sf.write(src / "take.flac", speechlike(rng, 2.0) * 0.1, 16000, format="FLAC")
    sf.write(src / "take.ogg", speechlike(rng, 2.0) * 0.1, 16000, format="OGG", subtype="VORBIS")
    pcm, _ = sf.read(src / "good.wav", dtype="int16")
    sf.write(src / "good_copy.flac", pcm, 16000, format="FLAC", subtype="PCM_16")  # good.wav's samples, re-encoded
    sf.write(src / "silence.wav", np.zeros(32000, np.float32), 16000)
    nan = good.copy()
    nan[100] = np.nan
    sf.write(src / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(src / "short.wav", good[:1600], 16000)
    (src / "zero_bytes.wav").write_bytes(b"")
    (src / "corrupt_header.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt " + os.urandom(200))
    whole = (src / "good.wav").read_bytes()
    (src / "truncated.wav").write_bytes(whole[: len(whole) // 2])
    (src / "folder.wav").mkdir()
    (src / "notes.txt").write_text("not audio")

    res = ingest(src, tmp_path / "raw", IngestParams(workers=2))

    reasons = dict(zip(res.rejected["source_path"], res.rejected["reason"], strict=True))
    assert reasons == {
        "good_copy.flac": "duplicate",
        "corrupt_header.wav": "unreadable",
        "folder.wav": "not_a_file",
        "nan.wav": "nan_or_inf",
        "notes.txt": "unsupported_format",
        "short.wav": "too_short",
        "silence.wav": "silent",
        "truncated.wav": "truncated",
        "zero_bytes.wav": "empty",
    }
    accepted = set(res.accepted["source_path"])
    assert accepted == {
        "good.wav",
        "nested/eight_bit.wav",
        "nested/deeper/stereo48k.wav",
        "nested/take.mp3",
        "take.flac",
        "take.ogg",
    }
    assert res.inputs == len(res.accepted) + len(res.rejected) == 15
    # On disk: every accepted clip is mono at 16 kHz, and the CSVs say the same as the result.
    manifest = pd.read_csv(tmp_path / "raw" / "manifest.csv")
    rejected = pd.read_csv(tmp_path / "raw" / "rejected.csv")
    assert len(manifest) == 6 and len(rejected) == 9
    for row in manifest.itertuples():
        info = sf.info(tmp_path / "raw" / str(row.path))
        assert (info.samplerate, info.channels) == (16000, 1)
        assert abs(info.duration - 2.0) < 0.1
    st = manifest.set_index("source_path").loc["nested/deeper/stereo48k.wav"]
    assert (st["source_sample_rate"], st["channels"]) == (48000, 2)
    assert "good.wav" in rejected.set_index("source_path").loc["good_copy.flac", "detail"]
    assert manifest["content_hash"].is_unique


def test_interrupted_normalize_leaves_no_partial_output_and_rerun_completes(tmp_path: Path) -> None:
    src = tmp_path / "rec"
    src.mkdir()
    # Enough audio (12 min) that the stage is still busy when the signal lands: it
    # normalizes ~1000x real time on one core.
    write_level_spread(src, [-30.0] * 60, seconds=12.0)
    raw, out = tmp_path / "raw", tmp_path / "norm"
    ingest(src, raw, IngestParams(workers=2))
    params = tmp_path / "params.yaml"
    params.write_text("normalize:\n  workers: 1\ningest:\n  sample_rate: 16000\n")
    cmd = [sys.executable, "-m", "codec", "normalize", "--in", str(raw), "--out", str(out), "--params", str(params)]
    staging = tmp_path / ".norm.partial"  # each run's is .norm.partial.PID.RANDOM
    for sig in (signal.SIGTERM, signal.SIGKILL):
        # The signal races the stage's last files on a fast machine: a run that finished
        # first (exit 0, complete output) was not interrupted, so it is tried again.
        for _attempt in range(5):
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            deadline = time.time() + 60
            while time.time() < deadline and not any(tmp_path.glob(".norm.partial.*/*.wav")):
                time.sleep(0.005)
            assert proc.poll() is None, "normalize finished before it could be interrupted"
            proc.send_signal(sig)
            _, stderr = proc.communicate(timeout=30)
            if proc.returncode != 0:
                break
            assert len(pd.read_csv(out / "manifest.csv")) == 60  # finished first: complete output
            shutil.rmtree(out)
        assert proc.returncode != 0, "the stage finished before the signal in every attempt"
        assert not out.exists()  # no output folder with a subset of the clips
        if sig == signal.SIGTERM:
            assert not list(tmp_path.glob(f"{staging.name}*"))  # cleaned up on the way out
            assert "interrupted" in stderr and "Traceback" not in stderr
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.glob(f"{staging.name}*"))  # the killed run's staging too
    manifest = pd.read_csv(out / "manifest.csv")
    assert len(manifest) == 60
    assert sorted(p.name for p in out.glob("*.wav")) == sorted(manifest["path"])
    assert not list(out.glob(".*"))  # no temporary files
