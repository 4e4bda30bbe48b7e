"""What ``codec encode`` and ``codec decode`` run on: one pair, ``-`` for a pipe, or a batch.

- ``IN OUT``: one file; either may be ``-`` (standard input / output: the data goes through a
  temporary file, since the input must be read twice and the output is renamed into place);
- ``IN [IN ...] --out-dir DIR``: many files with one model load (start-up is most of a short
  file's time). A folder among the inputs stands for every file under it with one of the
  command's extensions, and its layout is kept under ``DIR``. A file that fails is reported
  and the rest go on; the exit status is that of the first failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
import tempfile
import typing as tp
from pathlib import Path

from codec.errors import UserError

PIPE = "-"


@dataclasses.dataclass(frozen=True)
class Job:
    """One input and the output it is written to (``-``: a pipe)."""

    src: str
    out: str


def plan(paths: tp.Sequence[str], out_dir: str | None, extensions: tp.Sequence[str], out_suffix: str) -> list[Job]:
    """The jobs of a command line (see the module docstring); :class:`UserError` for a bad one."""
    if out_dir is None:
        if len(paths) != 2:
            raise UserError(
                f"expected IN OUT (got {len(paths)} path{'s' if len(paths) != 1 else ''}); "
                "for several inputs pass --out-dir DIR"
            )
        return [Job(paths[0], paths[1])]
    if PIPE in paths:
        raise UserError("'-' (a pipe) is for one IN OUT pair, not with --out-dir")
    root = Path(out_dir)
    jobs: list[Job] = []
    seen: dict[str, str] = {}
    for p in paths:
        src = Path(p)
        if src.is_dir():
            found = sorted(f for f in src.rglob("*") if f.is_file() and f.suffix.lower() in extensions)
            if not found:
                raise UserError(f"{src}: a folder with no {'/'.join(extensions)} files under it")
            pairs = [(f, root / src.name / f.relative_to(src).with_suffix(out_suffix)) for f in found]
        else:
            pairs = [(src, root / src.with_suffix(out_suffix).name)]
        for f, o in pairs:
            key = str(o.resolve())
            if key in seen:
                raise UserError(f"{f} and {seen[key]} would both be written to {o}; encode them into different folders")
            seen[key] = str(f)
            jobs.append(Job(str(f), str(o)))
    return jobs


@contextlib.contextmanager
def local_input(src: str, suffix: str) -> tp.Iterator[Path]:
    """``src`` as a path; ``-`` is standard input copied to a temporary file first."""
    if src != PIPE:
        yield Path(src)
        return
    with tempfile.TemporaryDirectory(prefix="codec-stdin-") as tmp:
        path = Path(tmp) / f"stdin{suffix}"
        with path.open("wb") as f:
            shutil.copyfileobj(sys.stdin.buffer, f, 1 << 20)
        yield path


@contextlib.contextmanager
def local_output(out: str, suffix: str) -> tp.Iterator[Path]:
    """``out`` as a path; for ``-`` a temporary file whose bytes go to standard output once the
    command has written it completely (nothing reaches the pipe when it fails)."""
    if out != PIPE:
        yield Path(out)
        return
    with tempfile.TemporaryDirectory(prefix="codec-stdout-") as tmp:
        path = Path(tmp) / f"stdout{suffix}"
        yield path
        with path.open("rb") as f:
            shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)
        sys.stdout.buffer.flush()


Say = tp.Callable[[str], None]


def _say(line: str) -> None:
    print(line, file=sys.stderr)


def run_all(jobs: tp.Sequence[Job], one: tp.Callable[[Job, Say], None], command: str) -> int:
    """Run ``one(job, say)`` on every job; a :class:`UserError` is reported and the rest go on.
    Returns the exit status: 0, or the first failure's code. Several jobs get a progress bar on
    standard error when it is a terminal (files done, rate, time left); ``say`` prints a line
    above it (or plainly, without a terminal)."""
    if len(jobs) == 1:
        one(jobs[0], _say)  # one file: its error is the command's (printed by the CLI)
        return 0
    from tqdm import tqdm

    first = 0
    failed = 0
    with tqdm(total=len(jobs), desc=f"codec {command}", unit="file", file=sys.stderr, disable=None) as bar:
        say: Say = (lambda line: bar.write(line, file=sys.stderr)) if not bar.disable else _say
        for job in jobs:
            try:
                Path(job.out).parent.mkdir(parents=True, exist_ok=True)
                one(job, say)
            except UserError as e:
                failed += 1
                first = first or e.exit_code
                say(f"codec {command}: error: {e}")
            bar.update(1)
    if failed:
        print(
            f"codec {command}: {failed} of {len(jobs)} files failed (listed above); the others were written",
            file=sys.stderr,
        )
    return first


def check_jobs(jobs: tp.Sequence[Job], check_input: tp.Callable[[Path], None]) -> None:
    """Before the model loads: every input that is a file passes ``check_input``, and no output
    would overwrite its input."""
    for job in jobs:
        if job.src != PIPE:
            check_input(Path(job.src))
        if same_file(Path(job.src), Path(job.out)):
            raise UserError(f"{job.out}: the output would overwrite the input; choose another OUT")


def same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False
