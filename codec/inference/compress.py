"""Files in, files out: ``codec encode`` (a recording of any length, read in blocks, to a
bitstream) and ``codec decode`` (a bitstream to a WAV at the input's rate, length and level).

Encoding is :func:`codec.inference.prepare.prepare_file` (one pass over the file in blocks:
mix down, resample, meter the loudness, keep the mono model-rate samples in an unlinked
temporary file, 64 kB per second at 16 kHz) and then :func:`codec.inference.pipeline.encode_prepared`,
the encoder evaluation and the served model run too, reading the prepared samples chunk by chunk.
Memory is bounded by the chunk size (10 s of audio and its codes), not by the file: a 10-minute
input is measured in ``tests/test_codec_cli.py``.

Decoding checks the header against the file before decoding anything: the file must hold
exactly the bytes the header's frame count implies, the stream must be at most
``max_seconds`` long, and the WAV it makes at most ``max_output_bytes``
(:data:`DEFAULT_MAX_OUTPUT_MB`, 4 GB, unless raised: ``codec decode --max-output-mb``).

Both write their output under a temporary name beside it (:func:`codec.files.atomic_path`)
and rename it into place, so a failure leaves no partial file. A ``kill -9`` cannot be
cleaned up after, so the next successful run for the same output removes the partial files
such a run left (:func:`remove_stale_partials`): a writer holds an exclusive ``flock`` on
its partial file while it writes, which the kernel drops when the process dies, however
it dies, so a partial file nobody holds a lock on, last modified before this run began,
has no live writer.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import re
import stat
import tempfile
import time
import typing as tp
from pathlib import Path

import numpy as np

from codec.audio.level import LevelSettings
from codec.errors import UserError
from codec.files import atomic_path
from codec.inference import bitstream
from codec.inference.energy import Energy
from codec.inference.prepare import check_input_path as check_input_path  # re-exported for the CLI
from codec.inference.prepare import prepare_file

if tp.TYPE_CHECKING:
    from codec.inference.bitstream import Header
    from codec.inference.model_source import LoadedModel
    from codec.inference.pipeline import CodecLike


def encode_file(
    loaded: LoadedModel,
    src: Path,
    out: Path,
    kbps: float,
    levels: LevelSettings,
    *,
    fingerprint: bytes,
    allow_silence: bool = False,
    chunk_frames: int | None = None,
    energy: Energy = True,
    replace: bool = True,
) -> Header:
    """Encode the recording ``src`` to the bitstream ``out`` (atomically), brought to ``levels``
    (the model's, :attr:`LoadedModel.levels`); returns the header.

    With ``energy`` (the default) the stream carries energy side information (version 2);
    ``False`` writes version 1 without it. With ``replace=False`` an existing ``out`` is left
    as it is (:class:`UserError`)."""
    from codec.inference.pipeline import DEFAULT_CHUNK_FRAMES, encode_prepared, n_quantizers_for

    started = time.time()
    model = loaded.model
    n_quantizers_for(model, kbps)  # an unserved bitrate fails before any work
    chunk = DEFAULT_CHUNK_FRAMES if chunk_frames is None else int(chunk_frames)
    with tempfile.TemporaryFile(prefix="codec-encode-") as tmp:
        prepared = prepare_file(src, int(model.config.sample_rate), levels, tp.cast(tp.BinaryIO, tmp))
        if prepared.silent and not allow_silence:
            raise UserError(
                f"{src}: holds only digital silence ({prepared.length / prepared.sample_rate:.2f} s of zeros); "
                "nothing to encode (pass --allow-silence to encode it anyway)"
            )
        try:
            with locked_partial(out, started, replace=replace) as part, part.open("wb") as f:
                return encode_prepared(
                    model,
                    prepared,
                    kbps,
                    tp.cast(tp.BinaryIO, f),
                    fingerprint=fingerprint,
                    chunk_frames=chunk,
                    energy=energy,
                    name=str(src),
                )
        except OSError as e:
            raise UserError(f"{out}: cannot be written ({e.strerror or e}); check the folder and free space") from None


# tempfile.mkstemp's names, as codec.files.atomic_path makes them: ".NAME." + 8 of these + ".partial"
_MKSTEMP_RANDOM = r"[a-z0-9_]{8}"


@contextlib.contextmanager
def locked_partial(out: Path, started: float, *, replace: bool = True) -> tp.Iterator[Path]:
    """:func:`codec.files.atomic_path` for ``out``, with an exclusive ``flock`` held on the
    partial file while the body writes it; once ``out`` is in place, removes the partial
    files of ``out`` that runs killed before ``started`` (a ``time.time()``) left behind.
    ``replace``: as :func:`codec.files.atomic_path`'s."""
    # The lock is on a handle of our own (the writer may reopen the file by name); it is
    # released just before atomic_path renames the file into place.
    with atomic_path(out, replace=replace) as part, part.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        yield part
    remove_stale_partials(out, started)


def remove_stale_partials(out: Path, started: float) -> list[Path]:
    """Remove the partial files :func:`codec.files.atomic_path` leaves beside ``out`` when its
    run is killed (``.{out.name}.XXXXXXXX.partial``); returns the paths removed.

    Only regular files of this user with exactly that name, last modified before
    ``started`` and not locked: a live writer (:func:`locked_partial`) holds an exclusive
    ``flock`` on its partial file, and the kernel releases it when the writer dies, SIGKILL
    included. The age check covers the instant between a writer creating its file and
    locking it. Failures to remove are ignored: the output itself is already in place.
    """
    pattern = re.compile(re.escape(f".{out.name}.") + _MKSTEMP_RANDOM + re.escape(".partial"))
    removed: list[Path] = []
    try:
        entries = list(os.scandir(out.parent))
    except OSError:
        return removed
    for entry in entries:
        if not pattern.fullmatch(entry.name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mtime >= started:
                continue
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError (an OSError): a writer holds it
            if os.fstat(fd).st_ino == os.stat(entry.path, follow_symlinks=False).st_ino:  # still that file
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


# Our encoder writes 500-frame (10 s) chunks; a crafted header may ask for up to 4096, whose
# decode would need ~8x the activations. Refuse more than this before decoding anything.
MAX_CHUNK_FRAMES = 1000


SUBTYPES = ("PCM_16", "PCM_24", "FLOAT")


WAV_LIMIT_BYTES = 2**32 - 1024  # past this a RIFF size field overflows: write RF64
SAMPLE_BYTES = {"PCM_16": 2, "PCM_24": 3, "FLOAT": 4}

# The largest WAV decode writes unless told otherwise (--max-output-mb): a stream's header
# sets the output's length and rate, and 1.5 kbps of codes become up to 768 kB/s of WAV
# (192 kHz FLOAT), so a 16 MB stream could ask for 66 GB. 4 GB (about where WAV must turn
# into RF64) is 17 h of 16 kHz or 5.8 h of 48 kHz FLOAT, twice that in PCM_16.
DEFAULT_MAX_OUTPUT_MB = 4000
MB = 1_000_000


def output_bytes(header: Header, subtype: str) -> int:
    """The size of the samples of the WAV that decoding ``header``'s stream writes."""
    return header.length * SAMPLE_BYTES[subtype]


def check_decode_limits(
    header: Header, subtype: str, max_seconds: float | None, max_output_bytes: int | None, name: str
) -> None:
    """Raise :class:`codec.inference.bitstream.BitstreamError` for chunks larger than
    :data:`MAX_CHUNK_FRAMES`, a stream longer than ``max_seconds`` or one whose WAV would
    be larger than ``max_output_bytes``, saying how to raise the limit."""
    if header.chunk_frames > MAX_CHUNK_FRAMES:
        raise bitstream.BitstreamError(
            f"{name}: chunks of {header.chunk_frames} frames exceed this decoder's limit of {MAX_CHUNK_FRAMES}; "
            "re-encode with codec encode"
        )
    seconds = header.duration_s
    if max_seconds is not None and seconds > max_seconds:
        raise bitstream.BitstreamError(
            f"{name}: {seconds:.1f} s is longer than the --max-seconds limit of {max_seconds:g} s; "
            f"pass --max-seconds {math.ceil(seconds)} to decode it"
        )
    size = output_bytes(header, subtype)
    if max_output_bytes is not None and size > max_output_bytes:
        smaller = " (or a smaller --subtype: PCM_16 is 2 bytes a sample)" if SAMPLE_BYTES[subtype] > 2 else ""
        raise bitstream.BitstreamError(
            f"{name}: the decoded WAV would be {size / MB:,.1f} MB ({seconds:,.1f} s at {header.sample_rate} Hz, "
            f"{subtype}), over the {max_output_bytes / MB:g} MB output limit; pass --max-output-mb "
            f"{math.ceil(size / MB)}{smaller} to decode it"
        )


def decode_file(
    model: CodecLike,
    src: Path,
    out: Path,
    *,
    fingerprint: bytes,
    max_seconds: float | None = None,
    max_output_bytes: int | None = DEFAULT_MAX_OUTPUT_MB * MB,
    subtype: str = "FLOAT",
    replace: bool = True,
) -> Header:
    """Decode the bitstream ``src`` to the WAV ``out`` (atomically); returns the header.

    Before decoding anything, the file's size must be the one its header implies, and the
    stream within ``max_seconds`` (``None``: the format's 24 h) and ``max_output_bytes`` of
    WAV samples (``None``: no limit; see :func:`check_decode_limits`). Raises
    :class:`codec.inference.bitstream.BitstreamError` for a bad stream or a limit (nothing
    is left at ``out``). With ``replace=False`` an existing ``out`` is left as it is.
    """
    import soundfile as sf

    from codec.inference.pipeline import decode_from_stream  # torch: only when decoding

    started = time.time()
    name = str(src)
    with src.open("rb") as f:
        header, blocks = decode_from_stream(
            model, tp.cast(tp.BinaryIO, f), fingerprint=fingerprint, name=name, size=os.fstat(f.fileno()).st_size
        )
        check_decode_limits(header, subtype, max_seconds, max_output_bytes, name)
        fmt = "WAV" if output_bytes(header, subtype) < WAV_LIMIT_BYTES else "RF64"
        pcm = subtype != "FLOAT"
        try:
            with (
                locked_partial(out, started, replace=replace) as part,
                sf.SoundFile(
                    os.fsencode(part), "w", samplerate=header.sample_rate, channels=1, subtype=subtype, format=fmt
                ) as wav,
            ):
                for block in blocks:
                    wav.write(np.clip(block, -1.0, 1.0) if pcm else block)
        except (OSError, sf.LibsndfileError) as e:
            raise UserError(f"{out}: cannot be written ({e}); check the folder and free space") from None
    return header
