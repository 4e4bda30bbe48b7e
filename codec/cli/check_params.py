"""``codec check-params``: load every stage's section of a params file the way the stage does.

Types, ranges, allowed values and unknown keys are checked by each stage's own loader, so a
params file that passes here is one every stage accepts. The Prefect flow runs it on its
overrides before they reach ``params.yaml``; it is also a quick check after editing by hand.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from codec.params import PARAMS_FILE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path(PARAMS_FILE), help="params file (default: %(default)s)")


def check(path: Path) -> list[str]:
    """Load each stage's params from ``path``; returns the sections checked (``UserError`` on the first refusal)."""
    from codec.data.ingest import IngestParams
    from codec.data.normalize import load_params as normalize_params
    from codec.data.validate import load_params as validate_params
    from codec.evaluation.stage import load_params as evaluate_params
    from codec.params import load_section
    from codec.registry.gates import PromoteParams
    from codec.training.params import TrainParams

    load_section(IngestParams, "ingest", path)
    normalize_params(path)
    validate_params(str(path))
    load_section(TrainParams, "train", path)
    evaluate_params(path)
    load_section(PromoteParams, "promote", path)
    return ["ingest", "normalize", "validate", "train", "evaluate", "promote"]


def run(args: argparse.Namespace) -> int:
    sections = check(args.params)
    print(f"codec check-params: {args.params}: {', '.join(sections)} accepted")
    return 0
