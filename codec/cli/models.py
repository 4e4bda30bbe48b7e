"""``codec models``: the registered versions side by side, with metrics, gates and aliases.

The tags come from ``codec promote`` (:func:`codec.registry.promote.version_tags`). For plots and
run-level detail, open the MLflow UI: ``mlflow ui --backend-store-uri sqlite:///mlflow.db``.
Where tags and aliases disagree (a promotion killed halfway, an alias moved by hand), it says
so under the table, with what the next ``codec promote`` will do about it
(:mod:`codec.registry.consistency`).
"""

from __future__ import annotations

import argparse

from codec.registry.consistency import problems
from codec.registry.versions import format_table, table
from codec.tracking import MODEL_NAME, tracking_uri


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default=MODEL_NAME, help="registered model (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    import mlflow  # heavy: only when the command runs
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri())
    rows = table(MlflowClient(), args.name)
    if not rows:
        print(f"no versions of {args.name} in {mlflow.get_tracking_uri()}; run the pipeline (dvc repro promote)")
        return 0
    print(f"{args.name} in {mlflow.get_tracking_uri()} (metrics at the gate bitrate; opus_*: Opus there)")
    print(format_table(rows))
    found = problems(MlflowClient(), args.name)
    if found:
        print(f"\ninconsistent: {len(found)} version(s) whose decision tag and the aliases disagree")
        for p in found:
            print(f"  {p.message}; {p.repair}")
    return 0
