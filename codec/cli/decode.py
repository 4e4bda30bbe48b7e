"""``codec decode IN OUT [--model M]``: a bitstream → a mono WAV at the input's rate and level.

Goes through :func:`codec.inference.pipeline.decode_from_stream` (header checks, model identity,
chunk-by-chunk decode with context, level restore, resampling back to the original
rate) and writes the blocks as they come, so memory is bounded by one chunk whatever
the length. The bitstream is untrusted: its header is bounded by
:mod:`codec.inference.bitstream` before anything is allocated, and this command adds two limits
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
from pathlib import Path

from codec.errors import UserError
from codec.inference import bitstream
from codec.inference.compress import SUBTYPES, check_input_path, decode_file

EXIT_BAD_BITSTREAM = 5
EXIT_MODEL_MISMATCH = 6


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
    try:
        return _run(args)
    except bitstream.ModelMismatchError as e:
        e.exit_code = EXIT_MODEL_MISMATCH
        raise
    except bitstream.BitstreamError as e:
        e.exit_code = EXIT_BAD_BITSTREAM
        raise


def _run(args: argparse.Namespace) -> int:
    # torch and MLflow are imported when a command runs, not for --help
    from codec.inference.model_source import load_model
    from codec.model.checkpoint import model_fingerprint

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


