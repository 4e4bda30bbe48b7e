"""The data stages against hostile inputs and unlucky operators: nothing lost, nothing run,
every input accounted for (issue: "Nothing lost, nothing executed, one champion").

Each test builds the situation a probe found with real files and real processes: an
output folder that is the input, a manifest that points outside its folder, a shell
command hidden in a path, symlink loops, a FLAC header claiming days of audio, a
truncated RF64, a DC-only file, a killed stage and a killed worker.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import soundfile as sf

from codec.audio.io import AudioTooLongError, TruncatedAudioError, read_audio
from codec.cli.main import main
from codec.data.ingest import IngestParams, ingest
from codec.data.normalize import NormalizeParams, normalize
from codec.errors import UserError
from codec.files import atomic_path, write_text_atomic
from tests.conftest import REPO, make_dvc_repo, run_cli
from tests.synth import speechlike

RATE = 16000


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` -> SHA-256 of its bytes."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _recordings(folder: Path, n: int = 3, seconds: float = 1.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    for i in range(n):
        rate = 48000 if i == 0 else RATE
        sf.write(folder / f"take_{i}.wav", speechlike(seconds, rng, rate=rate), rate, subtype="PCM_24")
    (folder / "notes.txt").write_text("session notes: not audio, must survive\n")
    return folder


# --- Output folders that would replace the input ----------------------------------------


@pytest.mark.parametrize("where", ["same", "parent", "inside"])
def test_ingest_refuses_an_output_folder_that_overlaps_the_source(tmp_path: Path, where: str) -> None:
    src = _recordings(tmp_path / "session" / "rec")
    (tmp_path / "session" / "other.txt").write_text("a file beside the recordings\n")
    out = {"same": src, "parent": src.parent, "inside": src / "raw"}[where]
    before = _tree(tmp_path)
    with pytest.raises(UserError, match="the input"):
        ingest(src, out, IngestParams(workers=1))
    assert _tree(tmp_path) == before  # not a byte changed, nothing added
    assert not any(p.name.endswith(".partial") for p in tmp_path.rglob("*"))


def test_normalize_refuses_its_input_as_output_and_a_folder_it_does_not_own(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    ingest(_recordings(tmp_path / "rec"), raw, IngestParams(workers=1))
    before = _tree(raw)
    with pytest.raises(UserError, match="is the input"):
        normalize(raw, raw, NormalizeParams(workers=1))
    assert _tree(raw) == before
    mine = tmp_path / "my_folder"
    mine.mkdir()
    (mine / "thesis.tex").write_text("months of work\n")
    with pytest.raises(UserError, match=r"thesis\.tex"):
        normalize(raw, mine, NormalizeParams(workers=1))
    assert (mine / "thesis.tex").read_text() == "months of work\n"
    # Its own earlier output (and an empty folder) it replaces as before.
    out = tmp_path / "norm"
    first = normalize(raw, out, NormalizeParams(workers=1))
    again = normalize(raw, out, NormalizeParams(workers=1))
    assert first.equals(again)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(normalize(raw, empty, NormalizeParams(workers=1))) == 3


def test_ingest_out_dot_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    src = _recordings(tmp_path / "rec")
    (tmp_path / "params.yaml").write_text("ingest:\n  workers: 1\n")
    before = _tree(tmp_path)
    proc = run_cli("codec", "ingest", "--source", "rec", "--out", ".", "--params", "params.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "contains the input" in proc.stderr
    assert _tree(tmp_path) == before
    assert sorted(p.name for p in src.iterdir()) == ["notes.txt", "take_0.wav", "take_1.wav", "take_2.wav"]


# --- Manifests that point outside their folder ------------------------------------------


@pytest.mark.parametrize("column,value", [("id", "../../escaped"), ("id", "ABS"), ("path", "../outside.wav")])
def test_normalize_refuses_manifest_rows_that_leave_the_folder(tmp_path: Path, column: str, value: str) -> None:
    value = str(tmp_path / "abs") if value == "ABS" else value
    raw = tmp_path / "data" / "raw"
    ingest(_recordings(tmp_path / "rec"), raw, IngestParams(workers=1))
    # A clip outside the folder that a crafted path would read.
    sf.write(tmp_path / "data" / "outside.wav", np.full(RATE, 0.1, np.float32), RATE)
    manifest = pd.read_csv(raw / "manifest.csv")
    manifest.loc[0, column] = value
    write_text_atomic(raw / "manifest.csv", manifest.to_csv(index=False))
    before = _tree(tmp_path)
    with pytest.raises(UserError, match="line 2"):
        normalize(raw, tmp_path / "data" / "normalized", NormalizeParams(workers=1))
    assert _tree(tmp_path) == before
    assert not (tmp_path / "escaped.wav").exists() and not (tmp_path / "abs.wav").exists()


# --- A shell command in a param ---------------------------------------------------------


def test_dvc_repro_does_not_run_a_command_hidden_in_the_source_path(tmp_path: Path) -> None:
    repo = make_dvc_repo(tmp_path / "repo", {}, stages=("ingest",))
    source = "rec dir;touch INJECTED;#"
    params = (repo / "params.yaml").read_text()
    params = params.replace("source: data/corpus", f"source: '{source}'").replace("workers: 0", "workers: 1")
    (repo / "params.yaml").write_text(params)
    _recordings(repo / source)
    proc = run_cli("dvc", "repro", "ingest", cwd=repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not list(tmp_path.rglob("INJECTED"))
    manifest = pd.read_csv(repo / "data/raw/manifest.csv")
    assert sorted(manifest["source_path"]) == ["take_0.wav", "take_1.wav", "take_2.wav"]


def test_flow_overrides_refuse_values_the_key_does_not_allow(tmp_path: Path) -> None:

    from flows.overrides import apply_overrides

    repo = tmp_path / "repo"
    repo.mkdir()
    # params.yaml as Hydra composes it carries no comments; a hand-edited one may.
    params = (Path(__file__).resolve().parents[1] / "params.yaml").read_text()
    (repo / "params.yaml").write_text("# our notes stay\n" + params)
    before = (repo / "params.yaml").read_text()
    for bad in ({"normalize.mode": "peak;rm -rf ~"}, {"train.steps": "many"}, {"ingest.sample_rate": -5}):
        with pytest.raises(ValueError, match="refused"):
            apply_overrides(repo, bad)
        assert (repo / "params.yaml").read_text() == before  # untouched
    changed = apply_overrides(repo, {"normalize.mode": "rms"})
    assert changed == {"normalize.mode": ("lufs", "rms")}
    assert (repo / "params.yaml").read_text().startswith("# our notes stay\n")  # comments kept


# --- Hostile files do not stop the rest -------------------------------------------------


def _flac_claiming(path: Path, total_samples: int) -> None:
    """A short real FLAC whose STREAMINFO claims ``total_samples`` (36 bits)."""
    sf.write(path, speechlike(1.0, np.random.default_rng(1)), RATE, format="FLAC", subtype="PCM_16")
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC"
    # STREAMINFO body starts at byte 8; bytes 18..25 hold rate(20) channels(3) bits(5) samples(36).
    word = int.from_bytes(data[18:26], "big")
    word = (word & ~((1 << 36) - 1)) | total_samples
    data[18:26] = word.to_bytes(8, "big")
    path.write_bytes(bytes(data))


def test_links_loops_and_lying_headers_are_rejected_rows_and_the_rest_is_ingested(tmp_path: Path) -> None:
    src = _recordings(tmp_path / "rec")
    (src / "loop_a.wav").symlink_to(src / "loop_b.wav")
    (src / "loop_b.wav").symlink_to(src / "loop_a.wav")
    (src / "dangling.wav").symlink_to(src / "gone.wav")
    (src / "back_up").symlink_to(src)  # a folder link to the folder it is in
    linked = _recordings(tmp_path / "elsewhere", n=1)
    sf.write(linked / "own.wav", speechlike(1.0, np.random.default_rng(9)), RATE)
    (src / "linked_folder").symlink_to(linked)
    _flac_claiming(src / "days.flac", (1 << 36) - 1)
    sf.write(src / "dc.wav", np.full(2 * RATE, 0.3, np.float32), RATE, subtype="FLOAT")
    voice = speechlike(1.0, np.random.default_rng(4))
    sf.write(src / "anti.wav", np.stack([voice, -voice], axis=1), RATE, subtype="PCM_16")  # cancels in mono
    res = ingest(src, tmp_path / "raw", IngestParams(workers=1))
    reasons = dict(zip(res.rejected["source_path"], res.rejected["reason"], strict=True))
    assert reasons["loop_a.wav"] == reasons["loop_b.wav"] == "symlink_loop"
    assert reasons["back_up"] == "symlink_loop"
    assert reasons["dangling.wav"] == "not_a_file"
    assert reasons["days.flac"] == "too_long"
    assert reasons["dc.wav"] == "dc_only"
    assert reasons["anti.wav"] == "channels_cancel"  # not dc_only or silent (issue 23 row 9)
    assert reasons["linked_folder/notes.txt"] == "unsupported_format"
    assert reasons["take_0.wav"] == "duplicate"  # same samples as linked_folder/take_0.wav, listed first
    assert res.inputs == len(res.accepted) + len(res.rejected)
    accepted = {"linked_folder/take_0.wav", "take_1.wav", "take_2.wav", "linked_folder/own.wav"}
    assert set(res.accepted["source_path"]) == accepted  # the linked folder is followed, not dropped


def test_duration_is_checked_from_the_header_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(30 * RATE, np.float32) + 0.01, RATE, subtype="FLOAT")  # 30 s, 1.9 MB of samples
    tracemalloc.start()
    try:
        with pytest.raises(AudioTooLongError) as e:
            read_audio(path, max_seconds=5.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert e.value.from_header and abs(e.value.seconds - 30.0) < 1e-6
    assert peak < 200_000  # nothing of the 1.9 MB was decoded
    # A stream format without an exact header length is stopped while reading, in blocks.
    ogg = tmp_path / "long.ogg"
    sf.write(ogg, speechlike(12.0, np.random.default_rng(2)), RATE, format="OGG", subtype="VORBIS")
    with pytest.raises(AudioTooLongError):
        read_audio(ogg, max_seconds=5.0)
    x, rate = read_audio(path, max_seconds=30.0)  # at the limit: read
    assert x.shape == (30 * RATE, 1) and rate == RATE


def test_a_truncated_rf64_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "big.wav"
    sf.write(path, speechlike(2.0, np.random.default_rng(3)), RATE, format="RF64", subtype="PCM_24")
    assert path.read_bytes()[:4] == b"RF64"
    path.write_bytes(path.read_bytes()[:-RATE])  # a cut-off copy
    with pytest.raises(TruncatedAudioError):
        read_audio(path)


def _streamed(wav: bytes, size: int) -> bytes:
    """``wav`` (a plain 44-byte-header WAV) with its RIFF and data sizes set to ``size``, as a
    writer to a pipe leaves them."""
    assert wav[36:40] == b"data"
    return wav[:4] + size.to_bytes(4, "little") + wav[8:40] + size.to_bytes(4, "little") + wav[44:]


def test_a_wav_with_a_streaming_size_placeholder_is_read(
    tmp_path: Path, ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 23 row 14: 0 (some writers), 0xFFFFFFFF (ffmpeg), 0x7FFFFFFF (arecord) and sox's
    0x7FFFF000 as the sizes of a WAV written to a pipe mean "to the end of the file": encode
    and ingest read the 2.4 s that follow, the same samples as the plain file. A WAV whose data
    size is a real size larger than what follows is still refused as truncated."""
    src = tmp_path / "rec"
    src.mkdir()
    plain = src / "plain.wav"
    sf.write(plain, speechlike(2.4, np.random.default_rng(14)), RATE, subtype="PCM_16")
    wav = plain.read_bytes()
    placeholders = {"zero": 0, "ffmpeg": 0xFFFFFFFF, "arecord": 0x7FFFFFFF, "sox": 0x7FFFF000}
    for name, size in placeholders.items():
        (src / f"{name}.wav").write_bytes(_streamed(wav, size))
    (tmp_path / "cut.wav").write_bytes(wav[: len(wav) // 2])  # declares 2.4 s, holds 1.2 s
    streams = tmp_path / "codes"
    streams.mkdir()

    def encode(path: Path) -> tuple[int, str]:
        capsys.readouterr()
        rc = main(["encode", str(path), str(streams / f"{path.stem}.tscb"), "--model", str(ckpt), "-q"])
        return rc, capsys.readouterr().err

    assert encode(plain) == (0, "")
    for name in placeholders:
        assert encode(src / f"{name}.wav") == (0, ""), name
        assert (streams / f"{name}.tscb").read_bytes() == (streams / "plain.tscb").read_bytes(), name
    rc, err = encode(tmp_path / "cut.wav")
    assert rc == 2 and err.count("\n") == 1, err
    declared, held = len(wav) - 44, len(wav) // 2 - 44
    assert re.fullmatch(
        rf"codec encode: error: \S*cut\.wav: truncated: the WAV data chunk declares {declared} bytes "
        rf"but the file ends after {held}\n",
        err,
    ), err
    assert not (streams / "cut.tscb").exists() and not list(streams.glob(".*partial*"))

    (src / "cut.wav").write_bytes((tmp_path / "cut.wav").read_bytes())
    res = ingest(src, tmp_path / "raw", IngestParams(workers=1))
    reasons = dict(zip(res.rejected["source_path"], res.rejected["reason"], strict=True))
    assert reasons.pop("cut.wav") == "truncated"
    # one of the five is accepted, the other four are its duplicates: the same samples, none empty or cut
    assert sorted(reasons.values()) == ["duplicate"] * 4 and len(res.accepted) == 1
    assert abs(float(res.accepted["duration_s"].iloc[0]) - 2.4) < 1e-9


def test_clipping_is_measured_on_the_input_and_a_clipped_square_wave_is_refused(tmp_path: Path) -> None:
    from codec.data.validate import ValidateParams, validate

    src = tmp_path / "rec"
    src.mkdir()
    rng = np.random.default_rng(4)
    for i in range(4):
        sf.write(src / f"take_{i}.wav", speechlike(2.0, rng, rms_dbfs=-20.0), RATE, subtype="PCM_16")
    square = np.sign(np.sin(2 * np.pi * 200 * np.arange(2 * RATE) / RATE)).astype(np.float32)
    sf.write(src / "square.wav", square, RATE, subtype="FLOAT")
    raw, norm = tmp_path / "raw", tmp_path / "norm"
    ingest(src, raw, IngestParams(workers=1))
    normalize(raw, norm, NormalizeParams(workers=1))
    raw_manifest = pd.read_csv(raw / "manifest.csv").set_index("id")
    assert raw_manifest.loc["square", "clipped_fraction"] > 0.99  # measured where it happened
    with pytest.raises(UserError, match="input_clipping") as e:
        validate(norm, raw, ValidateParams(min_files=1), tmp_path / "summary.json", None, gx_dir=REPO / "gx")
    assert "square" in str(e.value)
    # With the gate switched off by its param, the failure is recorded and the stage goes on.
    summary = validate(
        norm, raw, ValidateParams(min_files=1, enforce_gate=False), tmp_path / "off.json", None, gx_dir=REPO / "gx"
    )
    assert summary["success"] is False and summary["enforced"] is False
    assert summary["expectations"]["input_clipping"]["success"] is False
    # With the gate switched off by its param, the failure is recorded and the stage goes on.
    summary = validate(
        norm, raw, ValidateParams(min_files=1, enforce_gate=False), tmp_path / "off.json", None, gx_dir=REPO / "gx"
    )
    assert summary["success"] is False and summary["enforced"] is False
    assert summary["expectations"]["input_clipping"]["success"] is False


# --- Killed stages and workers ----------------------------------------------------------


@pytest.fixture(scope="module")
def busy_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 min of ingested audio: normalize is still busy a second after it starts."""
    folder = tmp_path_factory.mktemp("busy")
    src = folder / "rec"
    src.mkdir()
    rng = np.random.default_rng(6)
    for i in range(48):
        sf.write(src / f"clip_{i:02d}.wav", speechlike(15.0, rng), RATE, subtype="PCM_16")
    ingest(src, folder / "raw", IngestParams(workers=2))
    return folder / "raw"


def _normalize_proc(raw: Path, out: Path, params: Path) -> subprocess.Popen[str]:
    params.write_text("normalize:\n  workers: 2\ningest:\n  sample_rate: 16000\n")
    cmd = [sys.executable, "-m", "codec", "normalize", "--in", str(raw), "--out", str(out), "--params", str(params)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _workers_of(proc: subprocess.Popen[str], staging: Path) -> list[psutil.Process]:
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None:
        if any(staging.parent.glob(f"{staging.name}.*/*.wav")):  # each run stages in .NAME.partial.PID.RANDOM
            children = psutil.Process(proc.pid).children()
            if len(children) >= 2:
                return children
        time.sleep(0.01)
    raise AssertionError("normalize ended before its workers could be seen")


def test_workers_die_with_a_killed_normalize_and_a_lost_worker_is_a_clear_error(busy_raw: Path, tmp_path: Path) -> None:
    out, staging = tmp_path / "norm", tmp_path / ".norm.partial"
    proc = _normalize_proc(busy_raw, out, tmp_path / "params.yaml")
    workers = _workers_of(proc, staging)
    proc.kill()  # kill -9 of the stage
    proc.communicate(timeout=30)
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"orphaned workers still running: {[p.pid for p in alive]}"
    assert not out.exists()

    proc = _normalize_proc(busy_raw, out, tmp_path / "params.yaml")
    workers = _workers_of(proc, staging)
    os.kill(workers[0].pid, signal.SIGKILL)  # the out-of-memory killer takes a worker
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in stderr
    assert "a worker process died" in stderr
    assert not out.exists() and not list(tmp_path.glob(f"{staging.name}*"))


_FAILING_MAP = """
import time
from codec.errors import UserError
from codec.parallel import parallel_map

def work(i):
    time.sleep(0.005)
    if i == 5:
        raise UserError(f"file {i} is bad")
    return i

for _ in range(6):
    try:
        parallel_map(work, list(range(200)), 2, "test")
    except UserError as e:
        print(e)
time.sleep(0.5)  # the pool's manager threads finish (they printed the traceback after the error)
"""


def test_a_user_error_in_a_worker_comes_without_a_traceback() -> None:
    """A file that fails in a worker stops the pool; the pool's manager thread then met futures
    the shutdown had cancelled and printed an InvalidStateError traceback (1 run in 3 here)."""
    proc = subprocess.run([sys.executable, "-c", _FAILING_MAP], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["file 5 is bad"] * 6
    assert "Traceback" not in proc.stderr and "InvalidStateError" not in proc.stderr, proc.stderr


# --- Files keep the permissions the umask gives -----------------------------------------


def test_atomic_outputs_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "report.json") as tmp:
            tmp.write_text("{}")
        os.umask(0o002)
        write_text_atomic(tmp_path / "manifest.csv", "id,path\n")
    finally:
        os.umask(old)
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "manifest.csv").stat().st_mode & 0o777 == 0o664


def test_validate_replaces_its_data_docs_but_never_a_users_folder(tmp_path: Path) -> None:
    raw, norm = tmp_path / "raw", tmp_path / "norm"
    ingest(_recordings(tmp_path / "rec"), raw, IngestParams(workers=1))
    normalize(raw, norm, NormalizeParams(workers=1))
    (tmp_path / "params.yaml").write_text("validate:\n  min_files: 1\n")
    base = ["codec", "validate", "--in", str(norm), "--raw", str(raw), "--params", str(tmp_path / "params.yaml")]
    base += ["--gx", str(REPO / "gx")]
    for _ in range(2):  # the second run replaces the first run's Data Docs
        proc = run_cli(*base, "--summary", str(tmp_path / "s.json"), "--docs", str(tmp_path / "docs"), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "docs" / "index.html").is_file()
    mine = tmp_path / "site"
    mine.mkdir()
    (mine / "index.html").write_text("<p>my team's page</p>")
    (mine / "cv.pdf").write_bytes(b"%PDF")
    proc = run_cli(*base, "--summary", str(tmp_path / "s.json"), "--docs", str(mine), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "did not write" in proc.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["cv.pdf", "index.html"]


def test_a_speaker_is_never_on_both_sides_of_the_split_for_a_user_folder(tmp_path: Path) -> None:
    from codec.evaluation.sets import held_out_ids
    from codec.training.dataset import read_clips, split_clips

    src = tmp_path / "rec"
    rng = np.random.default_rng(8)
    for s in range(8):  # a user's layout: one folder per speaker, sessions below it
        for k in range(3):
            sub = src / f"spk{s}" / f"session{k % 2}"
            sub.mkdir(parents=True, exist_ok=True)
            sf.write(sub / f"take{k}.wav", speechlike(0.8, rng), RATE, subtype="PCM_16")
    sf.write(src / "loose.wav", speechlike(0.8, rng), RATE, subtype="PCM_16")  # no speaker folder
    raw, norm = tmp_path / "raw", tmp_path / "norm"
    ingest(src, raw, IngestParams(workers=1))
    normalize(raw, norm, NormalizeParams(workers=1))
    speakers = pd.read_csv(norm / "manifest.csv", keep_default_na=False).set_index("id")["speaker"]
    assert speakers["spk3__session1__take1"] == "spk3" and speakers["loose"] == ""
    train, val = split_clips(read_clips(norm), 0.3)
    assert train and val
    assert not {c.speaker for c in train if c.speaker} & {c.speaker for c in val if c.speaker}
    # The evaluation's held-out clips are the training's validation side, speakers included.
    assert held_out_ids(norm, 0.3) == sorted(c.id for c in val)


def test_hostile_names_ids_and_manifests_are_one_line_errors_not_tracebacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 23 row 5: a file name that is not UTF-8 was a UnicodeEncodeError in ingest; a
    nested path whose flattened id passed 255 bytes an OSError 36; normalize of a manifest whose
    clip was deleted a LibsndfileError, of a path ``.`` or ``manifest.csv`` or a 300-character
    id an OSError; ``--out-dir`` an existing file a FileExistsError."""
    rng = np.random.default_rng(5)
    src = tmp_path / "S"
    (src / "spk1").mkdir(parents=True)
    sf.write(src / "spk1" / "ok.wav", speechlike(1.0, rng), RATE, subtype="PCM_16")
    bad = os.fsencode(src / "spk1") + b"/caf\xe9.wav"  # Latin-1, not UTF-8
    sf.write(bad, speechlike(1.0, rng), RATE, subtype="PCM_16")
    deep = src / "spk2" / ("d" * 100) / ("e" * 100) / ("f" * 100)
    deep.mkdir(parents=True)
    sf.write(deep / ("g" * 100 + ".wav"), speechlike(1.0, rng), RATE, subtype="PCM_16")

    res = ingest(src, tmp_path / "raw", IngestParams(workers=1))
    rejected = dict(zip(res.rejected["source_path"], res.rejected["reason"], strict=True))
    assert rejected == {"spk1/caf\\xe9.wav": "bad_name"}
    assert len(res.accepted) == 2 and max(map(len, res.accepted["id"])) <= 120
    assert all((tmp_path / "raw" / p).is_file() for p in res.accepted["path"])

    raw = tmp_path / "raw"
    manifest = (raw / "manifest.csv").read_text()
    params = NormalizeParams(workers=1)
    first = pd.read_csv(raw / "manifest.csv")["path"].iloc[0]
    (raw / first).rename(tmp_path / "moved.wav")
    with pytest.raises(UserError, match=rf"{re.escape(first)}: cannot be read .*re-run the stage"):
        normalize(raw, tmp_path / "norm", params)
    (tmp_path / "moved.wav").rename(raw / first)
    for column, value, message in [
        ("path", ".", "is not an audio file of the folder"),
        ("path", "manifest.csv", "is not an audio file of the folder"),
        ("id", "x" * 300, "is 300 characters, more than 200"),
    ]:
        df = pd.read_csv(raw / "manifest.csv")
        df.loc[0, column] = value
        df.to_csv(raw / "manifest.csv", index=False)
        with pytest.raises(UserError, match=rf"manifest\.csv, line 2: .*{message}"):
            normalize(raw, tmp_path / "norm", params)
        (raw / "manifest.csv").write_text(manifest)
    assert not (tmp_path / "norm").exists()  # nothing published by a refused run
    normalize(raw, tmp_path / "norm", params)  # the restored manifest normalizes

    (tmp_path / "taken").write_text("a file")
    capsys.readouterr()
    assert main(["encode", str(src / "spk1" / "ok.wav"), "--out-dir", str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "taken" in err and "Traceback" not in err, err
