"""Shared fixtures: real audio files, a small synthesized corpus, a scratch DVC repo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import typing as tp
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
# The model cache of codec encode/decode (exports, registry checkpoints): one fresh folder per
# test session, never the user's ~/.cache (tests that look at the cache set their own).
os.environ["CODEC_CACHE_DIR"] = tempfile.mkdtemp(prefix="codec-test-cache-")


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 Telugu utterances from the embedded corpus, levels spread as in the field."""
    from codec.data.corpus import CorpusParams, write_corpus

    out = tmp_path_factory.mktemp("corpus") / "corpus"
    write_corpus(out, CorpusParams(n_utterances=24, seed=7, transient_fraction=0.3), workers=2)
    return out


@pytest.fixture(scope="module")
def one_torch_thread() -> tp.Iterator[None]:
    """Tiny convolutions on a shared 2-core machine: one thread is ~20x faster than two threads
    spinning against other processes. A module opts in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of the untrained tiny model (tests/presets.py), as codec train writes one."""
    from codec.model.checkpoint import save_checkpoint
    from codec.model.codec import build_codec
    from tests.presets import tiny_config

    path = tmp_path_factory.mktemp("model") / "codec.pt"
    save_checkpoint(path, build_codec(tiny_config(), seed=0), {"params": {"seed": 0}, "step": 0})
    return path


def run_cli(*args: str, cwd: Path | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run a console script from the venv and capture its output."""
    proc = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, env=os.environ.copy())
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def make_dvc_repo(root: Path, params_overrides: dict[str, object], stages: tuple[str, ...] | None = None) -> Path:
    """A fresh git + DVC repo in ``root`` with the project's dvc.yaml and params.yaml.

    ``params_overrides`` maps dotted keys to values (like ``dvc exp run -S``).
    ``stages`` keeps only those stages of dvc.yaml (the data half, say).
    """
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    if stages is not None:
        dvc_yaml["stages"] = {k: v for k, v in dvc_yaml["stages"].items() if k in stages}
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    # The corpus' human voices only where a test asks for them (a tiny corpus stays tiny).
    for dotted, value in {"ingest.corpus.diphone_utterances": 0, **params_overrides}.items():
        node = params
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # Stage deps name the code files; the stages run the installed package.
    shutil.copytree(REPO / "codec", root / "codec", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "gx", root / "gx", ignore=shutil.ignore_patterns("uncommitted"))  # validate's suites
    shutil.copytree(REPO / "data" / "diphone_voices", root / "data" / "diphone_voices")  # the corpus stage's dep
    run_cli("git", "init", "-q", cwd=root, check=True)
    run_cli("git", "config", "user.email", "ci@example.com", cwd=root, check=True)
    run_cli("git", "config", "user.name", "ci", cwd=root, check=True)
    run_cli("dvc", "init", "-q", cwd=root, check=True)
    return root


def in_terminal(cmd: list[str], cwd: Path, columns: int = 120, env: dict[str, str] | None = None) -> str:
    """What ``cmd`` prints on a terminal ``columns`` wide (a pseudo-terminal: DVC sizes its tables
    to the terminal and hides the columns that do not fit behind ``…``), colours stripped."""
    import fcntl
    import pty
    import re
    import select
    import struct
    import subprocess
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    base = {k: v for k, v in (env or os.environ).items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(cmd, cwd=cwd, stdin=slave, stdout=slave, stderr=slave, env={**base, "TERM": "xterm"})
    os.close(slave)
    out = b""
    while select.select([master], [], [], 120)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=60) == 0, out.decode(errors="replace")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode(errors="replace")).replace("\r", "")


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the process group ``proc`` leads (a server started with ``start_new_session=True``):
    SIGTERM, then SIGKILL for whatever is left after 10 s (children that outlived it included)."""
    import contextlib
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
