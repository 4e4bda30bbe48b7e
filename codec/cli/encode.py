"""``codec encode IN OUT --kbps K [--model M]``: a recording → a bitstream (argument parsing
and printing; the work is :func:`codec.inference.compress.encode_file`)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from codec.errors import UserError
from codec.inference.compress import check_input_path, encode_file


def _finite(text: str) -> float:
    """An argparse ``type``: a finite number (``nan``/``inf`` are usage errors, exit 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN", help="a recording: any format libsndfile reads (WAV, FLAC, OGG, MP3, …)")
    parser.add_argument("output", metavar="OUT", help="the bitstream to write (conventionally .tscb)")
    parser.add_argument(
        "--kbps", type=_finite, default=None, help="bitrate, one the model serves (default: its highest)"
    )
    parser.add_argument(
        "--model",
        default=None,
        help="checkpoint path or registry URI (models:/telugu-speech-codec@champion); default: the registry's "
        "champion if there is one, else models/codec.pt",
    )
    parser.add_argument(
        "--target-lufs",
        type=_finite,
        default=None,
        help="loudness the input is brought to before coding (default: the model's training loudness, or -16)",
    )
    parser.add_argument("--allow-silence", action="store_true", help="encode an all-zero input instead of refusing it")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")


def run(args: argparse.Namespace) -> int:
    # torch and MLflow are imported when a command runs, not for --help
    from codec.inference.model_source import load_model
    from codec.model.checkpoint import model_fingerprint

    src, out = Path(args.input), Path(args.output)
    check_input_path(src, allow_empty=False)  # before the model loads
    if out.exists() and out.resolve() == src.resolve():
        raise UserError(f"{out}: the output would overwrite the input; choose another OUT")
    loaded = load_model(args.model)
    kbps = float(args.kbps) if args.kbps is not None else max(loaded.model.config.bitrates_kbps)
    target = loaded.target_lufs if args.target_lufs is None else float(args.target_lufs)
    header = encode_file(
        loaded, src, out, kbps, target, fingerprint=model_fingerprint(loaded.model), allow_silence=args.allow_silence
    )
    if not args.quiet:
        size = out.stat().st_size
        lufs = f"{header.input_lufs:.1f} LUFS" if math.isfinite(header.input_lufs) else "silent"
        print(
            f"encoded {src} ({header.duration_s:.2f} s, {header.sample_rate} Hz, {header.channels} ch, {lufs}, "
            f"gain {header.gain_db:+.1f} dB) at {kbps:g} kbps with {loaded.source} -> {out}: {size} bytes "
            f"({size * 8 / header.duration_s / 1000:.2f} kbps with header)",
            file=sys.stderr,
        )
    return 0
