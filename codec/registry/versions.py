"""The registered versions side by side (``codec models``): aliases, decision, the gates in one
line and the metrics at the gate bitrate; and the candidates that were rejected (runs, no version)."""

from __future__ import annotations

import re
import typing as tp

from codec.tracking import EXPERIMENT, model_id_of

if tp.TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion


# (column, metric logged by codec promote): held-out speakers, and the worst evaluation set.
COLUMNS = (
    ("snr_db", "held_out/snr_db"),
    ("amp", "held_out/amplitude_ratio"),
    ("mel", "held_out/mel_distance"),
    ("pesq", "held_out/pesq"),
    ("opus_pesq", "held_out/opus_pesq"),
    ("stoi", "held_out/stoi"),
    ("worst_mel", "worst_set/mel_distance"),
)
_KBPS = re.compile(r"^held_out/snr_db_(\d+(?:\.\d+)?kbps)$")


def version_metrics(client: MlflowClient, mv: ModelVersion) -> dict[str, float]:
    """The metrics ``codec promote`` logged for version ``mv`` on its evaluation set (``eval_set``
    tag): from its logged model (newest value per key), else from its run."""
    digest = mv.tags.get("eval_set", "")
    out: dict[str, tuple[int, float]] = {}
    model_id = model_id_of(mv)
    if model_id:
        for m in client.get_logged_model(model_id).metrics or []:
            if m.dataset_digest == digest and (m.key not in out or m.timestamp >= out[m.key][0]):
                out[m.key] = (m.timestamp, m.value)
        return {k: v for k, (_, v) in out.items()}
    if mv.run_id:
        return dict(client.get_run(mv.run_id).data.metrics)
    return {}


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def table(client: MlflowClient, name: str) -> list[dict[str, str]]:
    """One dict per version (newest first): version, aliases, decision, kbps, metrics, gates."""
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
        metrics = version_metrics(client, mv)
        k = next((m.group(1) for key in metrics if (m := _KBPS.match(key))), "")
        row = {
            "version": str(mv.version),
            "aliases": ",".join(sorted(by_version.get(str(mv.version), []))) or "-",
            "decision": mv.tags.get("decision", "?"),
            "kbps": k.removesuffix("kbps") or "?",
        }
        for column, key in COLUMNS:
            row[column] = _fmt(metrics.get(f"{key}_{k}"))
        row["run"] = (mv.run_id or "-")[:8]
        row["gates"] = mv.tags.get("gates", "-")
        rows.append(row)
    return rows


def rejected_runs(client: MlflowClient, experiment: str = EXPERIMENT, limit: int = 10) -> list[dict[str, str]]:
    """The newest runs ``codec promote`` rejected (no version was made): run, when, the gates."""
    import datetime as dt

    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string="tags.decision = 'rejected'",
        order_by=["attributes.start_time DESC"],
        max_results=limit,
    )
    return [
        {
            "run": r.info.run_id[:8],
            "name": r.info.run_name or "-",
            "started": dt.datetime.fromtimestamp(r.info.start_time / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M"),
            "gates": r.data.tags.get("gates", "-"),
        }
        for r in runs
    ]


def format_table(rows: tp.Sequence[tp.Mapping[str, str]]) -> str:
    """Aligned plain-text columns (the last column is not padded: it holds the long gates line)."""
    if not rows:
        return ""
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in keys}
    lines = ["  ".join(k.ljust(widths[k]) for k in keys)]
    lines += ["  ".join(r[k].ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join(line.rstrip() for line in lines)
