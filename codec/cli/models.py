"""``codec models``: the registered versions side by side (metrics, gates, aliases), then the
newest candidates that were rejected and so stayed runs.

The metrics and the five tags come from ``codec promote`` (:mod:`codec.registry.promote`). For
plots and run-level detail, open the MLflow UI: ``mlflow ui --backend-store-uri sqlite:///mlflow.db``.
Where tags and aliases disagree (a promotion killed halfway, an alias moved by hand), it says
so under the table, with what the next ``codec promote`` will do about it
(:mod:`codec.registry.consistency`).
"""

from __future__ import annotations

import argparse

from codec.registry.consistency import problems
from codec.registry.versions import format_table, rejected_runs, table
from codec.tracking import EXPERIMENT, MODEL_NAME, tracking_uri


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default=MODEL_NAME, help="registered model (default: %(default)s)")
    parser.add_argument(
        "--rejected", type=int, default=5, metavar="N", help="list the N newest rejected candidates (default: 5)"
    )


def run(args: argparse.Namespace) -> int:
    import mlflow  # heavy: only when the command runs
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri())
    client = MlflowClient()
    rows = table(client, args.name)
    if rows:
        print(
            f"{args.name} in {mlflow.get_tracking_uri()} (held-out speakers at the gate bitrate; worst_mel: worst set)"
        )
        print(format_table(rows))
    else:
        print(f"no versions of {args.name} in {mlflow.get_tracking_uri()}; run the pipeline (dvc repro promote)")
    limit = getattr(args, "rejected", 5)
    rejected = rejected_runs(client, EXPERIMENT, limit) if limit > 0 else []
    if rejected:
        print(f"\nrejected candidates (runs, no version; newest {len(rejected)}):")
        print(format_table(rejected))
    found = problems(client, args.name)
    if found:
        print(f"\ninconsistent: {len(found)} version(s) whose decision tag and the aliases disagree")
        for p in found:
            print(f"  {p.message}; {p.repair}")
    return 0
