"""``codec encode IN OUT --kbps K [--model M]``: a recording → a bitstream (:mod:`codec.inference.bitstream`).

The same steps as :func:`codec.inference.pipeline.prepare` and :func:`codec.inference.pipeline.encode_to_stream`
(mix down, resample to the model's rate, measure BS.1770 loudness, gain to the training
loudness, limit peaks, encode chunk by chunk), but streamed from the file, so a long
recording never sits in memory:

1. one pass over the input (``soundfile`` blocks): mix down, resample (soxr, streaming:
   the same samples as a whole-file resample), meter the loudness as the samples go by
   (:class:`StreamingLoudness`: K-weighting with carried filter state, energies summed
   per 100 ms step; the gating needs only those sums, 10 floats per second), and write
   the mono model-rate samples to an unlinked temporary file (4 bytes per sample: 64 kB
   per second at 16 kHz, less than the input file itself for 44.1 kHz 16-bit audio);
2. the gain is known only now (integrated loudness needs the whole file: one pass);
3. :func:`codec.inference.pipeline.encode_codes` reads the temporary file chunk by chunk through
   :class:`PreparedAudio`, which applies the gain and the look-ahead limiter to each
   slice with enough margin that the result equals limiting the whole signal; the codes
   go to :func:`codec.inference.bitstream.write_stream` chunk by chunk.

Memory is bounded by the chunk size (10 s of audio and its codes), not by the file: a
10-minute input is measured in ``tests/test_codec_cli.py``. The output is written under a
temporary name and renamed into place, so a failure leaves no partial file.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from codec.errors import UserError
from codec.inference.compress import check_input_path, encode_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN", help="a recording: any format libsndfile reads (WAV, FLAC, OGG, MP3, …)")
    parser.add_argument("output", metavar="OUT", help="the bitstream to write (conventionally .tscb)")
    parser.add_argument("--kbps", type=float, default=None, help="bitrate, one the model serves (default: its highest)")
    parser.add_argument(
        "--model",
        default=None,
        help="checkpoint path or registry URI (models:/telugu-speech-codec@champion); default: the registry's "
        "champion if there is one, else models/codec.pt",
    )
    parser.add_argument(
        "--target-lufs",
        type=float,
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
    check_input_path(src)
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


# --- streaming loudness ---------------------------------------------------------------------


# --- pass 1: read, mix down, resample, meter --------------------------------------------------


# --- pass 2: gain, limiter, encode -------------------------------------------------------------


