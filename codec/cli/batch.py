"""What ``codec encode`` and ``codec decode`` run on: one pair, ``-`` for a pipe, or a batch.

- ``IN OUT``: one file; either may be ``-`` (standard input / output: the data goes through a
  temporary file, since the input must be read twice and the output is renamed into place);
- ``IN [IN ...] --out-dir DIR``: many files with one model load (start-up is most of a short
  file's time). A folder among the inputs stands for every file under it with one of the
  command's extensions, and its layout is kept under ``DIR`` (under the folder's resolved name,
  so ``..`` or ``.`` still land inside ``DIR``). A file that fails is reported and the rest go
  on; the exit status is that of the first failure. That holds for a file that cannot be used
  (empty, unreadable) and for what a folder holds that is not walked: an unreadable subfolder,
  a link to a folder (not followed: pass its target as an input of its own), a link to nothing
  or a loop; each is one line, and the exit status says so.

Outputs never replace anything but a regular file the command was told to overwrite (a
batch rebuilds layouts, and ``codec decode codes/rec --out-dir .`` once wrote lossy decodes
over the recordings they came from):

- no output is ever one of the inputs (the same file, through any link or path);
- a batch replaces no existing file unless ``--overwrite`` is given, and publishes each
  output with a hard link that fails if something appeared there meanwhile;
- an ``OUT`` that is a device node or a FIFO (or a symbolic link to one) is written through,
  as ``cp`` does, once the output is complete, never replaced by a rename; an ``OUT`` that is
  a symbolic link to a file keeps the link and replaces the file it points to.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import stat
import sys
import typing as tp
from pathlib import Path

from codec.errors import UserError, renamed
from codec.files import locked_dir, resolved

PIPE = "-"
# How messages name ``-``: what the user passed, not the temporary copy the command reads or writes.
STDIN = "- (standard input)"
STDOUT = "- (standard output)"


def add_arguments(parser: argparse.ArgumentParser, paths_help: str, out_dir_help: str) -> None:
    """The arguments ``codec encode`` and ``codec decode`` share: the paths, ``--out-dir``,
    ``--overwrite`` and ``--quiet`` (the command adds its own after them)."""
    parser.add_argument("paths", nargs="+", metavar="IN OUT | IN...", help=paths_help)
    parser.add_argument("--out-dir", default=None, help=out_dir_help)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="with --out-dir: replace outputs that already exist (never an input); without it a batch "
        "refuses to replace any file",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="each file's details (level, gain, sample rate, model) too"
    )


class Plan(list["Job"]):
    """The jobs of a command line, and the files under its input folders that are none of the
    command's inputs (another extension: notes, pictures), counted in the batch's summary."""

    skipped: list[Path]

    def __init__(self, jobs: tp.Iterable[Job] = (), skipped: tp.Iterable[Path] = ()) -> None:
        super().__init__(jobs)
        self.skipped = list(skipped)


@dataclasses.dataclass(frozen=True)
class Job:
    """One input and the output it is written to (``-``: a pipe); ``replace``: whether an
    existing regular file there may be replaced (one ``IN OUT`` pair, or ``--overwrite``)."""

    src: str
    out: str
    replace: bool = True
    error: UserError | None = dataclasses.field(default=None, compare=False)  # failed before it started


def plan(
    paths: tp.Sequence[str],
    out_dir: str | None,
    extensions: tp.Sequence[str],
    out_suffix: str,
    overwrite: bool = False,
) -> Plan:
    """The jobs of a command line (see the module docstring) and the files its folders hold that
    are not inputs; :class:`UserError` for a bad one."""
    if out_dir is None:
        if len(paths) != 2:
            raise UserError(
                f"expected IN OUT (got {len(paths)} path{'s' if len(paths) != 1 else ''}); "
                "for several inputs pass --out-dir DIR"
            )
        return Plan([Job(paths[0], paths[1])])
    if PIPE in paths:
        raise UserError("'-' (a pipe) is for one IN OUT pair, not with --out-dir")
    root = Path(out_dir)
    jobs = Plan()
    seen: dict[str, str] = {}
    for p in paths:
        src = Path(p)
        if src.is_dir():
            found, problems = walk(src, extensions, jobs.skipped)
            jobs += [Job(str(f), "", error=UserError(f"{f}: {why}")) for f, why in problems]
            if not found and not problems:
                raise UserError(f"{src}: a folder with no {'/'.join(extensions)} files under it")
            name = resolved(src, "input folder").name  # '..' and '.' by the folder's own name
            if not name:
                raise UserError(f"{src}: the file-system root is not a folder of recordings; name a folder under it")
            pairs = [(f, root / name / f.relative_to(src).with_suffix(out_suffix)) for f in found]
        else:
            pairs = [(src, root / src.with_suffix(out_suffix).name)]
        for f, o in pairs:
            key = str(o.resolve())
            if key in seen:
                raise UserError(f"{f} and {seen[key]} would both be written to {o}; encode them into different folders")
            seen[key] = str(f)
            jobs.append(Job(str(f), str(o), replace=overwrite))
    return jobs


def walk(
    folder: Path, extensions: tp.Sequence[str], skipped: list[Path] | None = None
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The files under ``folder`` with one of ``extensions`` (sorted), and what could not be
    walked, with why: unreadable subfolders, links to folders (not followed: a link may lead
    back up, or outside), links to nothing or in a loop. The other files are appended to
    ``skipped``."""
    found: list[Path] = []
    problems: list[tuple[Path, str]] = []

    def unreadable(e: OSError) -> None:
        problems.append((Path(e.filename or folder), f"cannot be read ({e.strerror or e}); its files were skipped"))

    for top, dirs, files in os.walk(folder, onerror=unreadable):
        here = Path(top)
        for name in dirs:  # links to folders are listed here, and os.walk does not follow them
            if (here / name).is_symlink():
                problems.append(
                    (here / name, "a link to a folder, not followed; pass the folder it points to as an input")
                )
        for name in files:
            path = here / name
            if not path.exists():  # a link to nothing, or a loop
                problems.append((path, "a link that leads nowhere (missing target or a loop); skipped"))
            elif path.suffix.lower() in extensions and path.is_file():
                found.append(path)
            elif skipped is not None:
                skipped.append(path)
    return sorted(found), problems


@contextlib.contextmanager
def local_input(src: str, suffix: str, magic: bytes = b"") -> tp.Iterator[Path]:
    """``src`` as a path; ``-`` is standard input copied to a temporary file first, once its
    first bytes are ``magic`` (else :class:`codec.inference.bitstream.BitstreamError` before
    anything is copied: ``cat /dev/zero | codec decode -`` filled the disk)."""
    if src != PIPE:
        yield Path(src)
        return
    stdin = sys.stdin.buffer
    head = stdin.read(len(magic)) if magic else b""
    if head != magic:
        from codec.inference.bitstream import BitstreamError  # the decoder's own error (exit 5)

        if not head:
            raise BitstreamError("standard input is empty; pipe in a file written by codec encode")
        if magic.startswith(head):
            raise BitstreamError(f"standard input ends after {len(head)} bytes; pipe in a file written by codec encode")
        raise BitstreamError(
            f"standard input: not a codec bitstream (starts with {head!r}, expected {magic!r}); "
            "pipe in a file written by codec encode"
        )
    with locked_dir("codec-stdin-") as tmp:
        path = tmp / f"stdin{suffix}"
        with path.open("wb") as f:
            f.write(head)
            shutil.copyfileobj(stdin, f, 1 << 20)
        try:
            yield path
        except UserError as e:  # named as the user named it, not by the temporary copy
            raise renamed(e, path, STDIN) from None


def _special(path: Path) -> bool:
    """``path`` is, or links to, a device node or a FIFO: written through, never renamed over."""
    try:
        mode = os.stat(path).st_mode  # follows links, /proc/self/fd/N's included
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode)


@contextlib.contextmanager
def _through_temporary(suffix: str, prefix: str) -> tp.Iterator[tuple[Path, tp.Callable[[tp.BinaryIO], None]]]:
    with locked_dir(prefix) as tmp:  # a killed run's is removed by the next one
        path = tmp / f"out{suffix}"

        def copy_to(sink: tp.BinaryIO) -> None:
            with path.open("rb") as f:
                shutil.copyfileobj(f, sink, 1 << 20)
            sink.flush()

        yield path, copy_to


@contextlib.contextmanager
def local_output(out: str, suffix: str) -> tp.Iterator[Path]:
    """The path the command writes (atomically) for ``out``: for ``-``, a device node or a FIFO
    (or a link to one) a temporary file whose bytes are written through to it once the command
    has written it completely (nothing reaches it when the command fails); for a symbolic link to
    a file, that file (the link stays); else ``out`` itself."""
    if out == PIPE or _special(Path(out)):
        with _through_temporary(suffix, "codec-stdout-" if out == PIPE else "codec-out-") as (path, copy_to):
            try:
                yield path
            except UserError as e:  # named as the user named it, not by the temporary file
                raise renamed(e, path, STDOUT if out == PIPE else out) from None
            if out == PIPE:
                copy_to(sys.stdout.buffer)
                return
            try:
                with open(out, "wb") as sink:  # as cp does: O_TRUNC, no rename
                    copy_to(sink)
            except OSError as e:
                raise UserError(f"{out}: cannot be written through ({e.strerror or e}); check it") from None
        return
    if Path(out).is_symlink():
        yield resolved(out, "output")  # checked by check_jobs: a file, or nothing yet
        return
    yield Path(out)


Say = tp.Callable[[str], None]


def _say(line: str) -> None:
    print(line, file=sys.stderr)


def run_all(
    jobs: tp.Sequence[Job],
    one: tp.Callable[[Job, Say], None],
    command: str,
    skipped: tp.Sequence[Path] = (),
    quiet: bool = False,
) -> int:
    """Run ``one(job, say)`` on every job; a :class:`UserError` is reported and the rest go on.
    Returns the exit status: 0, or the first failure's code. Several jobs get a progress bar on
    standard error when it is a terminal (files done, rate, time left); ``say`` prints a line
    above it (or plainly, without a terminal). A batch ends with one summary line: files written,
    failed, and ``skipped`` (files in its folders that are not inputs); ``quiet``: only on failure."""
    if len(jobs) == 1 and not skipped:
        if jobs[0].error is not None:
            raise jobs[0].error
        one(jobs[0], _say)  # one file: its error is the command's (printed by the CLI)
        return 0
    from tqdm import tqdm

    first = 0
    failed = 0
    with tqdm(total=len(jobs), desc=f"codec {command}", unit="file", file=sys.stderr, disable=None) as bar:
        say: Say = (lambda line: bar.write(line, file=sys.stderr)) if not bar.disable else _say
        for job in jobs:
            try:
                if job.error is not None:
                    raise job.error
                try:
                    Path(job.out).parent.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise UserError(f"{Path(job.out).parent}: cannot create the folder ({e.strerror or e})") from None
                one(job, say)
            except UserError as e:
                failed += 1
                first = first or e.exit_code
                say(f"codec {command}: error: {e}")
            bar.update(1)
    if failed or not quiet:
        print(summary_line(command, len(jobs), failed, skipped), file=sys.stderr)
    return first


def summary_line(command: str, total: int, failed: int, skipped: tp.Sequence[Path] = ()) -> str:
    """``codec encode: 3 files written; 1 other file skipped (rec/notes.txt)``, or with failures
    ``codec encode: 1 of 4 files failed (listed above); the others were written``."""
    if failed:
        line = f"codec {command}: {failed} of {total} files failed (listed above); the others were written"
    else:
        line = f"codec {command}: {total} file{'s' if total != 1 else ''} written"
    if skipped:
        first = skipped[0]
        more = f" and {len(skipped) - 1} more" if len(skipped) > 1 else ""
        line += f"; {len(skipped)} other file{'s' if len(skipped) > 1 else ''} skipped ({first}{more})"
    return line


def check_jobs(jobs: tp.Sequence[Job], check_input: tp.Callable[[Path], None]) -> list[Job]:
    """Before the model loads: every output passes :func:`check_output`, none of them being any
    input of the command, and every input that is a file passes ``check_input``. One input's
    error is the command's; in a batch, a job whose input fails is returned with its error (it
    is reported and the rest go on)."""
    inputs: dict[tuple[int, int], str] = {}
    checked: list[Job] = []
    for job in jobs:
        if job.error is None and job.src != PIPE:
            with contextlib.suppress(OSError):  # a missing input: check_input says so
                st = os.stat(job.src)
                inputs[(st.st_dev, st.st_ino)] = job.src  # protected even if it fails its check
            try:
                check_input(Path(job.src))
            except UserError as e:
                if len(jobs) == 1:
                    raise
                job = dataclasses.replace(job, error=e)
        checked.append(job)
    existing = [job.out for job in checked if job.error is None and check_output(job, inputs)]
    if existing:
        more = f" (and {len(existing) - 1} other output{'s' if len(existing) > 2 else ''})" if len(existing) > 1 else ""
        raise UserError(
            f"{existing[0]} already exists{more}; a batch never replaces files. Choose an empty --out-dir, "
            "or pass --overwrite to replace them"
        )
    return checked


def check_output(job: Job, inputs: tp.Mapping[tuple[int, int], str]) -> bool:
    """:class:`UserError` when ``job.out`` cannot be an output: an input of the command (any
    path to it), a folder, a socket, a dangling or looping link. Returns whether it exists
    and ``job`` may not replace it (a batch without ``--overwrite``)."""
    if job.out == PIPE:
        return False
    out = Path(job.out)
    try:
        lst = os.lstat(out)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise UserError(f"{out}: cannot be inspected ({e.strerror or e}); check the folder") from None
    try:
        st = os.stat(out)
    except OSError as e:
        raise UserError(
            f"{out} is a symbolic link to nothing usable ({e.strerror or e}); remove it or name another output"
        ) from None
    source = inputs.get((st.st_dev, st.st_ino))
    if source is not None:
        raise UserError(f"{out}: the output would overwrite the input {source}; choose another OUT")
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"{out} is a folder; name a file to write (or pass --out-dir for many inputs)")
    special = stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISFIFO(st.st_mode)
    if not (special or stat.S_ISREG(st.st_mode)):
        raise UserError(f"{out} is a socket or another special file; name a file to write")
    if stat.S_ISLNK(lst.st_mode) and not special:
        resolved(out, "output")  # a loop is refused here, not half-way
    return not job.replace


def add_runtime_argument(parser: argparse.ArgumentParser) -> None:
    """``--runtime`` of ``codec encode``/``decode`` (:data:`codec.inference.model_source.RUNTIMES`)."""
    parser.add_argument(
        "--runtime",
        choices=("auto", "onnx", "torch"),
        default="auto",
        help="auto (default): the model's ONNX export, made once in the model cache, run without torch; "
        "onnx: that or fail; torch: the checkpoint with torch (the training and evaluation path)",
    )
