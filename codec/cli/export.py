"""``codec export [--model M] OUT``: the model as ONNX graphs and the numbers the torch-free
runtime needs, in the folder ``OUT`` (:mod:`codec.inference.export`). ``codec encode/decode
--model OUT`` then run without torch; the export carries the model's fingerprint, so its streams
and the checkpoint's decode with either."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "out", type=Path, metavar="OUT", help="the folder to write (encoder.onnx, decoder.onnx, codec.json)"
    )
    parser.add_argument(
        "--model",
        default=None,
        help="checkpoint path or registry URI (default: as codec encode: the registry's champion, else "
        "models/codec.pt, else the reference model)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def run(args: argparse.Namespace) -> int:
    from codec.cli.models import require_registry
    from codec.errors import UserError
    from codec.inference.export import export_checkpoint
    from codec.inference.model_source import checkpoint_of

    if args.out.exists() and not args.overwrite:
        raise UserError(f"{args.out} exists; pass --overwrite to replace it, or choose another folder")
    require_registry(args.model)
    with checkpoint_of(args.model) as (ckpt, source):
        done = export_checkpoint(ckpt, args.out, source=source, replace=args.overwrite)
    print(
        f"exported {source} -> {done.folder}: fingerprint {done.fingerprint.hex()}; checked against the model: "
        f"codes differ on {done.code_mismatch:.2%} of frames, audio {done.audio_error_db:.0f} dB"
    )
    return 0
