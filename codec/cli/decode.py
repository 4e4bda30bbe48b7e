"""``codec decode IN OUT [--model M]``: a bitstream → a mono WAV at the input's rate and level.

Goes through :func:`codec.inference.pipeline.decode_from_stream` (header checks, model identity,
chunk-by-chunk decode with context, level restore, resampling back to the original
rate) and writes the blocks as they come, so memory is bounded by one chunk whatever
the length. The bitstream is untrusted: its header is bounded by
:mod:`codec.inference.bitstream` and checked against the file's size before anything is
allocated, and this command adds limits of its own: the longest stream it will decode
(``--max-seconds``, default the format's 24 h), the largest WAV it will write
(``--max-output-mb``, default :data:`~codec.inference.compress.DEFAULT_MAX_OUTPUT_MB`, 4 GB:
a header sets the output's rate and length) and the largest chunk
(:data:`~codec.inference.compress.MAX_CHUNK_FRAMES`, which bounds the audio one decoder call
produces). A limit is checked before decoding and its message says how to raise it.

Exit codes: 0 done; 2 a bad argument, a missing or unreadable file, no model;
5 not a bitstream, a truncated or corrupted one, an unsupported version, a limit;
6 the stream was encoded by another model. The output is written under a temporary
name and renamed into place only when complete, so a failure leaves no partial file (and
one a ``kill -9`` left is removed by the next successful run for that output:
:func:`codec.inference.compress.remove_stale_partials`).
"""

from __future__ import annotations

import argparse
import math
import typing as tp

from codec.cli import batch, live
from codec.inference import bitstream
from codec.inference.compress import DEFAULT_MAX_OUTPUT_MB, MB, SUBTYPES, check_input_path, decode_file

EXIT_BAD_BITSTREAM = 5
EXIT_MODEL_MISMATCH = 6
MAX_OUTPUT_MB = 10**9  # 1 PB: above this a limit means nothing (and stays an exact int of bytes)


def _bounded(what: str, hi: float) -> tp.Callable[[str], float]:
    """An argparse ``type``: a finite number in ``(0, hi]`` (argparse reports anything else
    as a usage error, exit 2, no traceback)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of {what}") from None
        if not (math.isfinite(value) and 0 < value <= hi):
            raise argparse.ArgumentTypeError(f"{text} must be a number of {what} above 0 and at most {hi:g}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    batch.add_arguments(
        parser,
        paths_help="a bitstream written by 'codec encode' and the WAV file to write (mono, at the original sample "
        "rate); '-' is standard input/output. With --out-dir: bitstreams and folders of them",
        out_dir_help="decode every IN (folders: every .tscb under them) into this folder",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="checkpoint path or registry URI; must be the model that encoded IN (default: as codec encode)",
    )
    batch.add_runtime_argument(parser)
    live.add_arguments(parser, encode=False)
    parser.add_argument(
        "--subtype", choices=SUBTYPES, default="FLOAT", help="WAV sample format (default: %(default)s; PCM clips)"
    )
    parser.add_argument(
        "--max-seconds",
        type=_bounded("seconds", bitstream.MAX_SECONDS),
        default=None,
        help=f"refuse streams longer than this (default and most: the format's {bitstream.MAX_SECONDS:g} s, 24 h)",
    )
    parser.add_argument(
        "--max-output-mb",
        type=_bounded("MB", MAX_OUTPUT_MB),
        default=DEFAULT_MAX_OUTPUT_MB,
        help="refuse streams whose WAV would be larger than this many MB (10^6 bytes), before decoding "
        "(default: %(default)s, 4 GB)",
    )


def run(args: argparse.Namespace) -> int:
    if args.live:
        return live.decode(args)
    # MLflow (and torch, without an ONNX export) are imported when a command runs, not for --help
    from codec.cli.models import require_registry
    from codec.inference.model_source import load_model

    jobs_plan = batch.plan(args.paths, args.out_dir, (".tscb",), ".wav", overwrite=args.overwrite)
    jobs = batch.check_jobs(jobs_plan, check_input_path)
    require_registry(args.model)  # not an empty mlflow.db in the current folder
    loaded = load_model(args.model, args.runtime)
    fingerprint = loaded.fingerprint

    def one(job: batch.Job, say: batch.Say) -> None:
        try:
            with (
                batch.local_input(job.src, ".tscb", bitstream.MAGIC) as src,
                batch.local_output(job.out, ".wav") as out,
            ):
                header = decode_file(
                    loaded.model,
                    src,
                    out,
                    fingerprint=fingerprint,
                    max_seconds=args.max_seconds,
                    max_output_bytes=int(args.max_output_mb * MB),
                    subtype=args.subtype,
                    replace=job.replace,
                )
        except bitstream.ModelMismatchError as e:
            e.exit_code = EXIT_MODEL_MISMATCH
            raise
        except bitstream.BitstreamError as e:
            e.exit_code = EXIT_BAD_BITSTREAM
            raise
        if not args.quiet:
            say(f"decoded {job.src} -> {job.out}: {header.duration_s:.2f} s, {header.bitrate_bps / 1000:g} kbps")
            if args.verbose:
                say(f"  {header.sample_rate} Hz mono, {args.subtype}; model {loaded.source}")

    return batch.run_all(jobs, one, "decode", jobs_plan.skipped, args.quiet)
