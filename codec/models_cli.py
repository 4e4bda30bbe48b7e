"""``codec models``: the registered versions side by side, with metrics, gates and aliases.

The tags come from ``codec promote`` (:func:`codec.promote.version_tags`). For plots and
run-level detail, open the MLflow UI: ``mlflow ui --backend-store-uri sqlite:///mlflow.db``.
"""

from __future__ import annotations

import argparse
import typing as tp

from codec.promote import MODEL_NAME

if tp.TYPE_CHECKING:
    from mlflow import MlflowClient

COLUMNS = ("snr_db", "amplitude_ratio", "mel_distance", "pesq", "stoi")


def table(client: MlflowClient, name: str, columns: tp.Sequence[str] = COLUMNS) -> list[dict[str, str]]:
    """One dict per version (newest first): version, aliases, decision, gates, metrics at the gate bitrate."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException:
        return []
    by_version: dict[str, list[str]] = {}
    for alias, v in aliases.items():
        by_version.setdefault(str(v), []).append(alias)
    rows = []
    versions = client.search_model_versions(f"name = '{name}'")
    for mv in sorted(versions, key=lambda m: int(m.version), reverse=True):
        t = mv.tags
        k = t.get("gate_kbps", "")
        gates = {key[5:]: val for key, val in t.items() if key.startswith("gate.")}
        failed = [g for g, val in gates.items() if val.startswith("fail")]
        row = {
            "version": str(mv.version),
            "aliases": ",".join(sorted(by_version.get(str(mv.version), []))) or "-",
            "decision": t.get("decision", "?"),
            "kbps": k.removesuffix("kbps") or "?",
            "gates": f"{len(gates) - len(failed)}/{len(gates)} pass"
            + (f" (fail: {', '.join(failed)})" if failed else ""),
        }
        for c in columns:
            row[c] = t.get(f"ours.{k}.{c}", "-")
        row["opus_mel"] = t.get(f"opus.{k}.mel_distance", "-")
        row["opus_pesq"] = t.get(f"opus.{k}.pesq", "-")
        row["eval_set"] = t.get("eval_set_fingerprint", "-")[:8]
        row["run"] = (mv.run_id or "-")[:8]
        rows.append(row)
    return rows


def format_table(rows: tp.Sequence[tp.Mapping[str, str]]) -> str:
    """Aligned plain-text columns."""
    if not rows:
        return ""
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in keys}
    lines = ["  ".join(k.ljust(widths[k]) for k in keys)]
    lines += ["  ".join(r[k].ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default=MODEL_NAME, help="registered model (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    import mlflow
    from mlflow import MlflowClient

    from codec.train_stage import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    rows = table(MlflowClient(), args.name)
    if not rows:
        print(f"no versions of {args.name} in {mlflow.get_tracking_uri()}; run the pipeline (dvc repro promote)")
        return 0
    print(f"{args.name} in {mlflow.get_tracking_uri()} (metrics at the gate bitrate; opus_*: Opus there)")
    print(format_table(rows))
    return 0
