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
from pathlib import Path

from codec.errors import UserError
from codec.registry.consistency import problems
from codec.registry.versions import format_table, rejected_runs, table
from codec.tracking import EXPERIMENT, MODEL_NAME, tracking_uri


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default=MODEL_NAME, help="registered model (default: %(default)s)")
    parser.add_argument(
        "--rejected", type=int, default=5, metavar="N", help="list the N newest rejected candidates (default: 5)"
    )


def missing_store(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` tracking URI when it does not exist (opening it would
    create an empty ``mlflow.db`` wherever the command runs), else ``None``."""
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri[len("sqlite:///") :])
    return None if path.exists() else path


def require_registry(spec: str | None) -> None:
    """For ``--model models:/…``: :class:`UserError` when the registry's sqlite file does not
    exist, instead of creating an empty one to look in."""
    if spec is not None and spec.startswith("models:/"):
        path = missing_store(tracking_uri())
        if path is not None:
            raise UserError(
                f"{spec}: there is no registry here ({path} does not exist); run from the project folder, "
                "set MLFLOW_TRACKING_URI, or pass --model PATH"
            )


def run(args: argparse.Namespace) -> int:
    uri = tracking_uri()
    path = missing_store(uri)
    if path is not None:
        print(
            f"no registry at {path} (the file does not exist); run the pipeline (dvc repro promote) in the "
            "project folder, or set MLFLOW_TRACKING_URI"
        )
        return 0
    import mlflow  # heavy: only when the command runs
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(uri)
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
