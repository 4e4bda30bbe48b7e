"""``codec encode IN OUT --kbps K [--model M]``: a recording → a bitstream (argument parsing
and printing; the work is :func:`codec.inference.compress.encode_file`). ``-`` for IN or OUT is
a pipe; ``codec encode IN... --out-dir DIR`` encodes many files (folders too) with one model
load (:mod:`codec.cli.batch`)."""

from __future__ import annotations

import argparse
import math

from codec.audio.io import AUDIO_EXTENSIONS
from codec.cli import batch, live
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
    batch.add_arguments(
        parser,
        paths_help="a recording (any format libsndfile reads: WAV, FLAC, OGG, MP3, …) and the bitstream to write "
        "(conventionally .tscb); '-' is standard input/output. With --out-dir: recordings and folders of them",
        out_dir_help="encode every IN (folders: every recording under them) into this folder",
    )
    parser.add_argument(
        "--kbps", type=_finite, default=None, help="bitrate, one the model serves (default: its highest)"
    )
    parser.add_argument(
        "--model",
        default=None,
        help="checkpoint path or registry URI (models:/telugu-speech-codec@champion); default: the registry's "
        "champion if there is one, else models/codec.pt, else the reference model shipped with codec",
    )
    parser.add_argument(
        "--target-lufs",
        type=_finite,
        default=None,
        help="loudness the input is brought to before coding (default: the model's training loudness, or -16)",
    )
    batch.add_runtime_argument(parser)
    live.add_arguments(parser, encode=True)
    parser.add_argument("--allow-silence", action="store_true", help="encode an all-zero input instead of refusing it")
    parser.add_argument(
        "--no-energy",
        action="store_true",
        help="leave out the energy side information (16 bit/s that keeps the decoded level on speech the model "
        "has not heard; writes a version-1 stream)",
    )


def run(args: argparse.Namespace) -> int:
    if args.live:
        return live.encode(args)
    # MLflow (and torch, without an ONNX export) are imported when a command runs, not for --help
    from codec.cli.models import require_registry
    from codec.inference.model_source import load_model

    jobs_plan = batch.plan(args.paths, args.out_dir, AUDIO_EXTENSIONS, ".tscb", overwrite=args.overwrite)
    jobs = batch.check_jobs(jobs_plan, lambda p: check_input_path(p, allow_empty=False))
    require_registry(args.model)  # not an empty mlflow.db in the current folder
    loaded = load_model(args.model, args.runtime)
    kbps = float(args.kbps) if args.kbps is not None else max(loaded.model.config.bitrates_kbps)
    levels = loaded.levels.with_target(args.target_lufs)  # the model's level settings
    fingerprint = loaded.fingerprint

    def one(job: batch.Job, say: batch.Say) -> None:
        with batch.local_input(job.src, "") as src, batch.local_output(job.out, ".tscb") as out:
            if job.src == batch.PIPE:
                check_input_path(src, allow_empty=False)
            header = encode_file(
                loaded,
                src,
                out,
                kbps,
                levels,
                fingerprint=fingerprint,
                allow_silence=args.allow_silence,
                energy=not args.no_energy,
                replace=job.replace,
            )
            size = out.stat().st_size
        if not args.quiet:
            spent = size * 8 / header.duration_s / 1000  # with the header and the side information
            say(f"encoded {job.src} -> {job.out}: {header.duration_s:.2f} s, {spent:.2f} kbps")
            if args.verbose:
                lufs = f"{header.input_lufs:.1f} LUFS" if math.isfinite(header.input_lufs) else "silent"
                say(
                    f"  {header.sample_rate} Hz, {header.channels} ch, {lufs}, gain {header.gain_db:+.1f} dB; "
                    f"{kbps:g} kbps of codes, {header.side_bps:g} bit/s of energy side information and the header: "
                    f"{size} bytes; model {loaded.source}"
                )

    return batch.run_all(jobs, one, "encode", jobs_plan.skipped, args.quiet)
