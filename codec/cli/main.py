"""The ``codec`` command line: one subcommand per pipeline stage, plus the user tools.

Each subcommand lives in its own module, which exposes ``add_arguments(parser)``
and ``run(args) -> int``. Modules are imported only when their subcommand runs,
so ``codec --help`` stays fast and heavy imports (Great Expectations, MLflow,
torch) are paid only by the stages that need them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import typing as tp

from codec.errors import UserError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "corpus": ("codec.data.corpus", "synthesize the embedded Telugu corpus (espeak-ng) at field-recording levels"),
    "ingest": ("codec.data.ingest", "read a folder of recordings (or the embedded Telugu corpus) into data/raw"),
    "normalize": ("codec.data.normalize", "bring every clip to one loudness (BS.1770 LUFS) under a peak ceiling"),
    "validate": ("codec.data.validate", "the data-quality gate: Great Expectations over the normalized manifest"),
    "train": ("codec.training.stage", "train the codec on data/normalized (GPU when present), tracked in MLflow"),
    "evaluate": ("codec.evaluation.stage", "measure the trained codec against Opus on held-out speech"),
    "promote": ("codec.registry.promote", "register the model and set @champion when it passes the gates"),
    "check-params": ("codec.cli.check_params", "check a params file with every stage's own loader"),
    "models": ("codec.cli.models", "list registered model versions with their metrics and aliases"),
    "encode": ("codec.cli.encode", "encode a recording into a compact bitstream"),
    "decode": ("codec.cli.decode", "decode a bitstream back to a WAV file at the input's level"),
    "export": ("codec.cli.export", "export the model to ONNX for the torch-free runtime of encode/decode"),
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="codec",
        description="Telugu speech codec: pipeline stages and encode/decode tools.",
    )
    parser.add_argument("--version", action="version", version=f"codec {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers = {}
    for name, (_, text) in COMMANDS.items():
        subparsers[name] = sub.add_parser(name, help=text, description=text)
    return parser, subparsers


def _version() -> str:
    """The installed package's version (``codec.__version__``), or ``unknown`` from a bare checkout."""
    import codec

    return str(codec.__version__)


_MAIN_PID = os.getpid()


def _raise_interrupt(signum: int, frame: tp.Any) -> None:
    if os.getpid() != _MAIN_PID:  # a forked worker being stopped by its pool: just go
        os._exit(128 + signum)
    raise KeyboardInterrupt


def main(argv: tp.Sequence[str] | None = None) -> int:
    parser, subparsers = build_parser()
    args_list = list(sys.argv[1:] if argv is None else argv)
    # Only the chosen subcommand's module is imported.
    if args_list[:1] in (["--version"], ["-h"], ["--help"]):
        parser.parse_args(args_list[:1])  # prints and exits 0
    pre, _ = parser.parse_known_args(args_list[:1])
    if pre.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[pre.command][0])
    module.add_arguments(subparsers[pre.command])
    args = parser.parse_args(args_list)
    # SIGTERM (DVC, Prefect, a scheduler stopping us) unwinds like Ctrl-C, so
    # staging folders and temporary files are cleaned up on the way out.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    if "DVC_STAGE" in os.environ:  # a pipeline's stage: stop (and unwind) when the pipeline dies
        from codec.parallel import die_with_pipeline  # here: tqdm only for stages

        die_with_pipeline()
    try:
        return int(module.run(args) or 0)
    except UserError as e:
        print(f"codec {pre.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"codec {pre.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
