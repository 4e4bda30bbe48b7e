"""``codec encode --live`` and ``codec decode --live``: one stream, coded as it arrives
(:mod:`codec.inference.live`), ``-`` for a pipe. Argument checks and I/O only.

    sox -d -r 16000 -c 1 -t wav - | codec encode --live - - | codec decode --live - - | play -t wav -
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import typing as tp
from pathlib import Path

from codec.cli import batch
from codec.errors import UserError


def add_arguments(parser: argparse.ArgumentParser, *, encode: bool) -> None:
    what = (
        "read IN (a WAV stream: PCM or float; '-' standard input) as it arrives and write each chunk of the "
        "bitstream (version 3) to OUT ('-' standard output) as soon as its frames are final"
        if encode
        else "decode IN ('-' standard input) as its chunks arrive and write a WAV stream to OUT ('-' standard "
        "output, sizes left open as recorders write them), block by block"
    )
    parser.add_argument("--live", action="store_true", help=what)
    parser.add_argument(
        "--context-frames",
        type=int,
        default=None,
        help="with --live: frames of look-ahead (and look-behind) per chunk, 20 ms each (default: 16, what the "
        "whole-file path uses; fewer cut the latency by 20 ms each on each side and cost quality: README)",
    )
    if encode:
        parser.add_argument(
            "--chunk-ms",
            type=float,
            default=100.0,
            help="with --live: audio per bitstream chunk, rounded to whole frames (default: %(default)s)",
        )


def _context(args: argparse.Namespace) -> int | None:
    if args.context_frames is not None and not 0 <= args.context_frames <= 64:
        raise UserError(f"--context-frames {args.context_frames} must be within 0..64")
    return tp.cast("int | None", args.context_frames)


def _paths(args: argparse.Namespace) -> tuple[str, str]:
    if args.out_dir is not None or len(args.paths) != 2:
        raise UserError("--live codes one stream: pass IN OUT ('-' for standard input or output), not --out-dir")
    return str(args.paths[0]), str(args.paths[1])


@contextlib.contextmanager
def _opened(path: str, mode: str) -> tp.Iterator[tp.BinaryIO]:
    if path == batch.PIPE:
        yield sys.stdin.buffer if "r" in mode else sys.stdout.buffer
        return
    try:
        f = Path(path).open(mode)  # noqa: SIM115 - closed by the with below; an open failure is a user error
    except OSError as e:
        raise UserError(f"{path}: cannot be opened ({e.strerror or e})") from None
    with f:
        yield tp.cast(tp.BinaryIO, f)


def encode(args: argparse.Namespace) -> int:
    from codec.audio.io import WavStreamError, read_wav_stream
    from codec.inference.live import LiveEncoder
    from codec.inference.model_source import load_model

    src, dst = _paths(args)
    if args.no_energy:
        raise UserError("--live streams always carry energy side information; drop --no-energy")
    if not 1.0 <= args.chunk_ms <= 2000.0:
        raise UserError(f"--chunk-ms {args.chunk_ms:g} must be within 1..2000 ms")
    loaded = load_model(args.model, args.runtime)
    kbps = float(args.kbps) if args.kbps is not None else max(loaded.model.config.bitrates_kbps)
    levels = loaded.levels.with_target(args.target_lufs)
    with _opened(src, "rb") as infile, _opened(dst, "wb") as out:
        try:
            rate, channels, blocks = read_wav_stream(infile)
            encoder = LiveEncoder(
                loaded.model,
                levels,
                kbps,
                rate,
                channels,
                out,
                fingerprint=loaded.fingerprint,
                chunk_ms=args.chunk_ms,
                context_frames=_context(args),
            )
            for block in blocks:
                encoder.feed(block)
            header = encoder.finish()
        except WavStreamError as e:
            raise UserError(f"{src}: {e}") from None
        except BrokenPipeError:
            raise UserError(f"{dst}: the reader of the output closed it; stopped") from None
    if not args.quiet:
        gains = encoder.gain.gains
        print(
            f"encoded {src} -> {dst} live: {header.duration_s:.2f} s in {encoder.done} chunks of "
            f"{header.chunk_frames} frames; gain {gains[0]:+.1f} .. {gains[-1]:+.1f} dB",
            file=sys.stderr,
        )
    return 0


def decode(args: argparse.Namespace) -> int:
    import numpy as np

    from codec.audio.io import pcm16, wav_stream_header
    from codec.inference.model_source import load_model
    from codec.inference.pipeline import decode_from_stream

    src, dst = _paths(args)
    if args.subtype not in ("PCM_16", "FLOAT"):
        raise UserError(f"--live writes PCM_16 or FLOAT WAV, not {args.subtype}")
    loaded = load_model(args.model, args.runtime)
    samples = 0
    with _opened(src, "rb") as infile, _opened(dst, "wb") as out:
        context = _context(args)
        options = {} if context is None else {"context_frames": context}
        header, blocks = decode_from_stream(loaded.model, infile, fingerprint=loaded.fingerprint, name=src, **options)
        float32 = args.subtype == "FLOAT"
        try:
            out.write(wav_stream_header(header.sample_rate, 1, float32=float32))
            for block in blocks:
                out.write(np.asarray(block, "<f4").tobytes() if float32 else pcm16(block))
                out.flush()
                samples += block.shape[0]
        except BrokenPipeError:
            raise UserError(f"{dst}: the reader of the output closed it; stopped") from None
    if not args.quiet:
        print(f"decoded {src} -> {dst} live: {samples / header.sample_rate:.2f} s", file=sys.stderr)
    return 0
