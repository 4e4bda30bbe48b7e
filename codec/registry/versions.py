"""The registered versions side by side (``codec models``): aliases, decision, metrics at the gate bitrate."""

from __future__ import annotations

import typing as tp

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
            "gates": t.get("gates")
            or (f"{len(gates) - len(failed)}/{len(gates)} pass" + (f" (fail: {', '.join(failed)})" if failed else "")),
            "worst_set": t.get("worst_set", "-"),
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
