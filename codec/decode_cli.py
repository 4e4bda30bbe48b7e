"""``codec decode IN OUT [--model M]``: a bitstream → a mono WAV at the input's rate and level.

Goes through :func:`codec.inference.decode_from_stream` (header checks, model identity,
chunk-by-chunk decode with context, level restore, resampling back to the original
rate) and writes the blocks as they come, so memory is bounded by one chunk whatever
the length. The bitstream is untrusted: its header is bounded by
:mod:`codec.bitstream` before anything is allocated, and this command adds two limits
of its own (the longest stream it will decode, ``--max-seconds``, and the largest chunk,
:data:`MAX_CHUNK_FRAMES`, which bounds the audio one decoder call produces).

Exit codes: 0 done; 2 a bad argument, a missing or unreadable file, no model;
5 not a bitstream, a truncated or corrupted one, an unsupported version, a limit;
6 the stream was encoded by another model. The output is written under a temporary
name and renamed into place only when complete, so a failure leaves no partial file.
"""

from __future__ import annotations

import argparse
import sys
import typing as tp
from pathlib import Path

import numpy as np

from codec.errors import UserError

if tp.TYPE_CHECKING:
    from codec.bitstream import Header
    from codec.inference import CodecLike

EXIT_BAD_BITSTREAM = 5
EXIT_MODEL_MISMATCH = 6
# Our encoder writes 500-frame (10 s) chunks; a crafted header may ask for up to 4096, whose
# decode would need ~8x the activations. Refuse more than this before decoding anything.
MAX_CHUNK_FRAMES = 1000
SUBTYPES = ("PCM_16", "PCM_24", "FLOAT")
WAV_LIMIT_BYTES = 2**32 - 1024  # past this a RIFF size field overflows: write RF64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN", help="a bitstream written by 'codec encode'")
    parser.add_argument("output", metavar="OUT", help="the WAV file to write (mono, at the original sample rate)")
    parser.add_argument(
        "--model",
        default=None,
        help="checkpoint path or registry URI; must be the model that encoded IN (default: as codec encode)",
    )
    parser.add_argument(
        "--subtype", choices=SUBTYPES, default="FLOAT", help="WAV sample format (default: %(default)s; PCM clips)"
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="refuse streams longer than this (default: the format's limit, 24 h)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")


def run(args: argparse.Namespace) -> int:
    from codec import bitstream

    try:
        return _run(args)
    except bitstream.ModelMismatchError as e:
        e.exit_code = EXIT_MODEL_MISMATCH
        raise
    except bitstream.BitstreamError as e:
        e.exit_code = EXIT_BAD_BITSTREAM
        raise


def _run(args: argparse.Namespace) -> int:
    from codec.encode_cli import check_input_path
    from codec.model import model_fingerprint
    from codec.model_source import load_model

    src, out = Path(args.input), Path(args.output)
    check_input_path(src)
    if out.exists() and out.resolve() == src.resolve():
        raise UserError(f"{out}: the output would overwrite the input; choose another OUT")
    loaded = load_model(args.model)
    max_frames = None
    if args.max_seconds is not None:
        if not args.max_seconds > 0:
            raise UserError(f"--max-seconds {args.max_seconds:g} must be positive")
        config = loaded.model.config
        max_frames = int(args.max_seconds * config.sample_rate / config.hop_length) + 1
    header = decode_file(
        loaded.model, src, out, fingerprint=model_fingerprint(loaded.model), max_frames=max_frames, subtype=args.subtype
    )
    if not args.quiet:
        print(
            f"decoded {src} ({header.duration_s:.2f} s at {header.bitrate_bps / 1000:g} kbps) with {loaded.source} "
            f"-> {out} ({header.sample_rate} Hz mono, {args.subtype})",
            file=sys.stderr,
        )
    return 0


def decode_file(
    model: CodecLike,
    src: Path,
    out: Path,
    *,
    fingerprint: bytes,
    max_frames: int | None = None,
    subtype: str = "FLOAT",
) -> Header:
    """Decode the bitstream ``src`` to the WAV ``out`` (atomically); returns the header.

    Raises :class:`codec.bitstream.BitstreamError` for a bad stream (nothing is left at ``out``).
    """
    import soundfile as sf

    from codec import bitstream
    from codec.files import atomic_path
    from codec.inference import decode_from_stream

    name = str(src)
    with src.open("rb") as f:
        header, blocks = decode_from_stream(
            model, tp.cast(tp.BinaryIO, f), fingerprint=fingerprint, max_frames=max_frames, name=name
        )
        if header.chunk_frames > MAX_CHUNK_FRAMES:
            raise bitstream.BitstreamError(
                f"{name}: chunks of {header.chunk_frames} frames exceed this decoder's limit of {MAX_CHUNK_FRAMES}; "
                "re-encode with codec encode"
            )
        sample_bytes = {"PCM_16": 2, "PCM_24": 3, "FLOAT": 4}[subtype]
        fmt = "WAV" if header.length * sample_bytes < WAV_LIMIT_BYTES else "RF64"
        pcm = subtype != "FLOAT"
        try:
            with (
                atomic_path(out) as part,
                sf.SoundFile(
                    str(part), "w", samplerate=header.sample_rate, channels=1, subtype=subtype, format=fmt
                ) as wav,
            ):
                for block in blocks:
                    wav.write(np.clip(block, -1.0, 1.0) if pcm else block)
        except (OSError, sf.LibsndfileError) as e:
            raise UserError(f"{out}: cannot be written ({e}); check the folder and free space") from None
    return header
