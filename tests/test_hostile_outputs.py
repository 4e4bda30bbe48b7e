"""Nothing overwritten, nothing published half-done (issue 23, rows 1-4).

- a batch never writes over an input or any file it was not told to replace, whatever the
  layout (a property test over generated layouts checks that no file's bytes change);
- an output that is a FIFO, a device node or a symbolic link is written through, never
  replaced by a rename;
- an input folder named ``..`` or ``.`` writes inside ``--out-dir``;
- each normalize run stages in a folder of its own, publishes only what it completed, and
  dies with the pipeline that started it (its workers too).

The model is the tiny untrained architecture of :func:`tests.presets.tiny_config`: these
tests are about files, not about sound.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import typing as tp
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codec.cli.main import main
from codec.files import manifest_owned, staged_dir

SR = 16000
KBPS = 3.6  # tiny_config: 12 quantizers x 6 bits x 50 frames/s


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def wav(path: Path, seed: int = 0, seconds: float = 0.3) -> Path:
    """A short noise burst at about -20 dBFS (loud enough to encode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(seed).standard_normal(int(SR * seconds)).astype(np.float32) * 0.1
    sf.write(str(path), x, SR, subtype="PCM_16")
    return path


def cli(*args: str | Path) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def stream(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    d = tmp_path_factory.mktemp("stream")
    assert cli("encode", wav(d / "a.wav"), d / "a.tscb", "--model", ckpt, "--kbps", KBPS, "-q") == 0
    return (d / "a.tscb").read_bytes()


def samples(data: bytes) -> np.ndarray:
    """A WAV's samples (its bytes also hold libsndfile's PEAK chunk, which has a time stamp)."""
    return sf.read(io.BytesIO(data), dtype="float32")[0]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- row 1: a batch never writes over its inputs or files it did not make ---------------------


def test_batch_decode_into_the_recordings_folder_does_not_overwrite_the_recordings(
    tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``codec encode rec --out-dir codes && codec decode codes/rec --out-dir .`` rebuilt
    ``rec/spk1/a.wav`` over the original recording (exit 0)."""
    monkeypatch.chdir(tmp_path)
    wav(tmp_path / "rec" / "spk1" / "a.wav", 1)
    wav(tmp_path / "rec" / "b.wav", 2)
    before = snapshot(tmp_path / "rec")
    assert cli("encode", "rec", "--out-dir", "codes", "--model", ckpt, "--kbps", KBPS, "-q") == 0
    code = cli("decode", "codes/rec", "--out-dir", ".", "--model", ckpt, "-q")
    assert code != 0
    assert snapshot(tmp_path / "rec") == before
    # Into a new folder the same batch is written; a second run there is refused, not replaced.
    assert cli("decode", "codes/rec", "--out-dir", "wavs", "--model", ckpt, "-q") == 0
    written = snapshot(tmp_path / "wavs")
    assert sorted(written) == ["rec/b.wav", "rec/spk1/a.wav"]
    (tmp_path / "wavs" / "rec" / "b.wav").write_bytes(b"mine")
    assert cli("decode", "codes/rec", "--out-dir", "wavs", "--model", ckpt, "-q") != 0
    assert (tmp_path / "wavs" / "rec" / "b.wav").read_bytes() == b"mine"
    # Told to (--overwrite), it replaces its outputs, never an input.
    assert cli("decode", "codes/rec", "--out-dir", "wavs", "--model", ckpt, "-q", "--overwrite") == 0
    assert np.array_equal(samples((tmp_path / "wavs" / "rec" / "b.wav").read_bytes()), samples(written["rec/b.wav"]))
    (tmp_path / "codes" / "rec" / "b.wav").symlink_to(tmp_path / "codes" / "rec" / "b.tscb")
    codes_before = snapshot(tmp_path / "codes")
    assert cli("decode", "codes/rec/b.tscb", "--out-dir", "codes/rec", "--model", ckpt, "-q", "--overwrite") != 0
    assert snapshot(tmp_path / "codes") == codes_before


# --- row 2: device nodes, FIFOs and symbolic links are written through ------------------------


def _read_in_thread(path: str | Path) -> tuple[threading.Thread, list[bytes]]:
    got: list[bytes] = []

    def read() -> None:
        with open(path, "rb") as f:
            got.append(f.read())

    t = threading.Thread(target=read, daemon=True)  # never joined if the FIFO was replaced
    t.start()
    return t, got


def test_an_output_that_is_a_fifo_a_device_or_a_symlink_is_written_through_not_renamed_over(
    tmp_path: Path, ckpt: Path, stream: bytes
) -> None:
    """OUT was replaced by a rename: a FIFO or a device node became a regular WAV file (the
    reader got 0 bytes), a symbolic link became a file."""
    src = tmp_path / "a.tscb"
    src.write_bytes(stream)
    assert cli("decode", src, tmp_path / "plain.wav", "--model", ckpt, "-q") == 0
    expected = samples((tmp_path / "plain.wav").read_bytes())

    fifo = tmp_path / "fifo.wav"
    os.mkfifo(fifo)
    reader, got = _read_in_thread(fifo)
    assert cli("decode", src, fifo, "--model", ckpt, "-q") == 0
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced"
    reader.join(10)
    assert len(got) == 1 and np.array_equal(samples(got[0]), expected)

    # A link to a pipe (as /dev/stdout is): the pipe gets the bytes, the link stays.
    r, w = os.pipe()
    link = tmp_path / "stdout.wav"
    link.symlink_to(f"/proc/{os.getpid()}/fd/{w}")
    reader, got = _read_in_thread(f"/proc/{os.getpid()}/fd/{r}")
    try:
        assert cli("decode", src, link, "--model", ckpt, "-q") == 0
    finally:
        os.close(w)
    reader.join(10)
    os.close(r)
    assert link.is_symlink() and len(got) == 1 and np.array_equal(samples(got[0]), expected)

    # A link to a file: the file is replaced, the link stays a link.
    target = tmp_path / "target.wav"
    target.write_bytes(b"old")
    link = tmp_path / "link.wav"
    link.symlink_to(target)
    assert cli("decode", src, link, "--model", ckpt, "-q") == 0
    assert link.is_symlink() and np.array_equal(samples(target.read_bytes()), expected)

    if os.geteuid() == 0:  # as root a rename would replace a device node (mknod null c 1 3)
        null = tmp_path / "null"
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        assert cli("decode", src, null, "--model", ckpt, "-q") == 0
        assert stat.S_ISCHR(os.lstat(null).st_mode) and os.stat(null).st_rdev == os.makedev(1, 3)


# --- row 3: '..' and '.' as input folders -----------------------------------------------------


def test_an_input_folder_named_dotdot_writes_inside_out_dir(
    tmp_path: Path, ckpt: Path, stream: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``cd codes/rec; codec decode .. --out-dir /x/out`` wrote ``/x/rec/a.wav``
    (``Path('..').name == '..'``)."""
    (tmp_path / "codes" / "rec").mkdir(parents=True)
    (tmp_path / "codes" / "rec" / "a.tscb").write_bytes(stream)
    out = tmp_path / "x" / "out"
    monkeypatch.chdir(tmp_path / "codes" / "rec")
    assert cli("decode", "..", "--out-dir", out, "--model", ckpt, "-q") == 0
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.wav")) == ["x/out/codes/rec/a.wav"]
    assert cli("decode", ".", "--out-dir", out, "--model", ckpt, "-q") == 0
    assert (out / "rec" / "a.wav").is_file()


# --- the property: no layout makes a batch change a file's bytes ------------------------------

NAMES = st.sampled_from(["a", "b", "rec", "spk1", "codes", "out"])


Layout = tuple[list[str], str, str, list[str], str, bool]


@st.composite
def layouts(draw: st.DrawFn) -> Layout:
    """Existing files (WAVs and .tscb streams, the same stems in several folders), a working
    folder somewhere in the tree, the command, its inputs and --out-dir (relative to the working
    folder, so '..' and '.' come up, and outputs may land inside inputs or on files that
    exist), and --overwrite."""
    folders = draw(st.lists(st.lists(NAMES, min_size=0, max_size=3).map("/".join), min_size=1, max_size=4))
    picks = draw(st.lists(st.tuples(st.sampled_from(folders), NAMES, st.sampled_from([".wav", ".tscb"])), max_size=6))
    files = sorted({"/".join(p for p in (folder, stem + ext) if p) for folder, stem, ext in picks})
    cwd = draw(st.sampled_from(folders))
    up = "/".join([".."] * len([p for p in cwd.split("/") if p]))  # the tree's root, seen from cwd

    def rel(path: str) -> str:
        return "/".join(p for p in (up, path) if p) or "."

    command = draw(st.sampled_from(["encode", "decode"]))
    places = [".", "..", *map(rel, folders)]
    own = [rel(f) for f in files if f.endswith(".wav" if command == "encode" else ".tscb")]
    inputs = draw(st.lists(st.sampled_from(places + own), min_size=1, max_size=3))
    return files, cwd, command, inputs, draw(st.sampled_from(places)), draw(st.booleans())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=layouts())
def test_no_batch_layout_changes_an_input_files_bytes(ckpt: Path, stream: bytes, layout: Layout) -> None:
    files, cwd, command, inputs, out_dir, overwrite = layout
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "tree"
        for i, f in enumerate(files):
            path = root / f
            path.parent.mkdir(parents=True, exist_ok=True)
            if f.endswith(".wav"):
                wav(path, i, seconds=0.1)
            else:
                path.write_bytes(stream)
        (root / cwd).mkdir(parents=True, exist_ok=True)
        before = snapshot(root)
        args = [command, *inputs, "--out-dir", out_dir, "--model", str(ckpt), "-q"]
        args += ["--kbps", str(KBPS)] if command == "encode" else []
        args += ["--overwrite"] if overwrite else []
        here = os.getcwd()
        os.chdir(root / cwd)
        try:
            main(args)  # any exit status; a traceback fails the test
        finally:
            os.chdir(here)
        after = snapshot(root)
        if overwrite:  # told to replace outputs: the inputs (the command's own kind) still never change
            own = ".wav" if command == "encode" else ".tscb"
            before = {k: v for k, v in before.items() if k.endswith(own)}
        changed = [k for k, v in before.items() if after.get(k) != v]
        assert not changed, f"{args}: {changed} changed"


# --- row 4: one staging per run, published only when complete; stages die with the pipeline --


def test_a_second_run_does_not_delete_the_first_runs_staging(tmp_path: Path) -> None:
    """Every run staged in the same ``.NAME.partial``: a re-run deleted an orphaned run's
    staging, and the orphan then published a manifest listing files that were gone (exit 0)."""
    out = tmp_path / "normalized"
    owned = manifest_owned(["id", "path"])
    with staged_dir(out, owned=owned) as first:
        (first / "a.wav").write_bytes(b"a")
        with staged_dir(out, owned=owned) as second:
            assert second != first
            (second / "b.wav").write_bytes(b"b")
            (second / "manifest.csv").write_text("id,path\nb,b.wav\n")
        assert (first / "a.wav").read_bytes() == b"a"
        (first / "manifest.csv").write_text("id,path\na,a.wav\n")
    assert sorted(p.name for p in out.iterdir()) == ["a.wav", "manifest.csv"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".normalized")], "a staging was left"


def test_stale_stagings_of_dead_runs_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    out = tmp_path / "normalized"
    dead = tmp_path / ".normalized.partial.999999.abcdefgh"
    dead.mkdir()
    (dead / "x.wav").write_bytes(b"x")
    os.utime(dead, (time.time() - 60, time.time() - 60))
    live = tmp_path / ".normalized.partial.1.live0000"
    live.mkdir()
    os.utime(live, (time.time() - 60, time.time() - 60))
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import fcntl,os,sys; fd=os.open({str(live)!r}, os.O_RDONLY); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with staged_dir(out) as staging:
            (staging / "a.wav").write_bytes(b"a")
        assert not dead.exists() and live.exists()
    finally:
        holder.communicate("")


def test_a_staging_that_lacks_a_listed_file_is_not_published(tmp_path: Path) -> None:
    from codec.data.normalize import _every_clip_written
    from codec.errors import UserError

    out = tmp_path / "normalized"
    with pytest.raises(UserError, match="missing"), staged_dir(out, complete=_every_clip_written) as staging:
        (staging / "manifest.csv").write_text("id,path\na,a.wav\nb,b.wav\n")
        (staging / "a.wav").write_bytes(b"a")
    assert not out.exists()


def _group(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (zombies left out)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PR_SET_PDEATHSIG")
def test_normalize_and_its_workers_die_with_the_pipeline_that_started_them(tmp_path: Path) -> None:
    """``kill -9`` of ``dvc repro`` left ``codec normalize`` and its workers running, and they
    later published over the re-run. Here the pipeline starts the stage through a shell that
    stays (as DVC's does), and the stage's two workers block reading FIFOs, so only its
    death ends them."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("a", "b"):
        os.mkfifo(raw / f"{name}.wav")
    (raw / "manifest.csv").write_text("id,path,speaker\na,a.wav,s\nb,b.wav,s\n")
    (tmp_path / "params.yaml").write_text("normalize:\n  workers: 2\n")
    codec = Path(sys.executable).parent / "codec"
    stage = f"{codec} normalize --in {raw} --out {tmp_path / 'normalized'} --params {tmp_path / 'params.yaml'}; true"
    pipeline = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import os, subprocess
            env = {{k: v for k, v in os.environ.items() if k != "DVC_STAGE"}}
            subprocess.run(["sh", "-c", {stage!r}], env={{**env, "DVC_STAGE": "normalize"}})
        """)],
        start_new_session=True,
        env={k: v for k, v in os.environ.items() if k != "DVC_STAGE"},
    )  # fmt: skip
    try:
        deadline = time.time() + 30
        while len(_group(pipeline.pid)) < 5 and time.time() < deadline:  # pipeline, sh, stage, 2 workers
            time.sleep(0.1)
        assert len(_group(pipeline.pid)) >= 5, "the stage did not start its workers"
        assert list(tmp_path.glob(".normalized.partial*"))
        pipeline.send_signal(signal.SIGKILL)
        pipeline.wait()
        deadline = time.time() + 15
        while _group(pipeline.pid) and time.time() < deadline:
            time.sleep(0.1)
        assert not _group(pipeline.pid), "the stage or its workers outlived the pipeline"
        assert not list(tmp_path.glob(".normalized.partial*")), "the stage did not clean its staging"
        assert not (tmp_path / "normalized").exists()
    finally:
        for pid in _group(pipeline.pid):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(raw, ignore_errors=True)


# --- row 10: one bad file does not stop a batch, and nothing under a folder is skipped silently


def test_an_empty_file_or_a_link_loop_does_not_stop_the_batch_and_nothing_is_skipped_silently(
    tmp_path: Path, ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One 0-byte file aborted the whole batch before anything was written; links to folders
    and looping links were skipped with exit 0; a name that is not UTF-8 was "not an audio file"."""
    rec = tmp_path / "rec"
    wav(rec / "a.wav", 1)
    (rec / "empty.wav").write_bytes(b"")
    (rec / "loop.wav").symlink_to(rec / "loop.wav")
    wav(tmp_path / "other" / "c.wav", 2)
    (rec / "linked").symlink_to(tmp_path / "other")
    os.rename(wav(rec / "latin1.wav", 3), os.fsencode(rec) + b"/caf\xe9.wav")
    code = cli("encode", rec, "--out-dir", tmp_path / "codes", "--model", ckpt, "--kbps", KBPS, "-q")
    err = capsys.readouterr().err
    assert code == 2, err
    assert sorted(os.fsencode(p.name) for p in (tmp_path / "codes" / "rec").iterdir()) == [b"a.tscb", b"caf\xe9.tscb"]
    assert "empty.wav: empty file" in err and "loop.wav: a link that leads nowhere" in err, err
    assert "linked: a link to a folder, not followed" in err and "Traceback" not in err, err
    assert "3 of 5 files failed" in err, err


# --- row 11: a pipe is checked before it is copied; a killed run's temporaries are removed ----


class EndlessZeros(io.RawIOBase):
    """``cat /dev/zero``: counts what is read, and stops the test at 64 MB."""

    def __init__(self) -> None:
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: tp.Any) -> int:
        n = len(buffer)
        self.read_bytes += n
        assert self.read_bytes < 64 << 20, "standard input was copied before its first bytes were checked"
        buffer[:n] = bytes(n)
        return n


def test_decode_of_a_pipe_checks_the_magic_before_copying_and_removes_stale_temporaries(
    tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cat /dev/zero | codec decode - x.wav`` copied 1.4 GB to a temporary file before
    looking at the magic; ``codec-stdin-*`` folders of killed runs stayed for ever."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    stale = tmp / "codec-stdin-k1lled00"
    stale.mkdir()
    (stale / "stdin.tscb").write_bytes(b"TSCB" + bytes(1000))
    os.utime(stale, (time.time() - 60, time.time() - 60))
    zeros = EndlessZeros()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(zeros)))
    assert cli("decode", "-", tmp_path / "x.wav", "--model", ckpt, "-q") == 5
    assert zeros.read_bytes <= 1 << 20
    assert "standard input: not a codec bitstream" in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists()

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"TSCB" + bytes(100))))
    assert cli("decode", "-", tmp_path / "x.wav", "--model", ckpt, "-q") == 5  # truncated, but it got that far
    assert not stale.exists() and not list(tmp.iterdir())


# --- row 15: reading the registry creates no mlflow.db where the command runs ----------------


def test_codec_models_and_a_registry_model_create_no_mlflow_db_in_the_current_folder(
    tmp_path: Path, stream: bytes, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cd $(mktemp -d); codec models`` (or ``--model models:/…``) left a 954 KB ``mlflow.db``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert cli("models") == 0
    assert "no registry at" in capsys.readouterr().out
    (tmp_path / "a.tscb").write_bytes(stream)
    assert cli("decode", "a.tscb", "a.wav", "--model", "models:/telugu-speech-codec@champion", "-q") == 2
    assert "there is no registry here" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tscb"]
