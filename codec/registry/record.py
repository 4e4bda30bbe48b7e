"""The schema of ``promotion.json``, shared by the promote stage (writer) and its readers.

Standard library only, so a reader (the Prefect flow) pays no torch or MLflow import.
"""

from __future__ import annotations

import json
import typing as tp
from pathlib import Path

from codec.errors import UserError

Decision = tp.Literal["champion", "challenger", "rejected"]


class PromotionRecord(tp.TypedDict):
    """``promotion.json``: written by :meth:`Promotion.to_dict`, read by :func:`read_promotion`
    (the Prefect flow's artifact and anyone else)."""

    model_name: str
    version: str | None  # None: rejected (no version; the candidate stays a run)
    decision: Decision
    alias: str | None
    all_gates_passed: bool
    gate_profile: tp.NotRequired[str]  # promote.gate_profile (absent in records written before it)
    failed_gates: list[str]
    reasons: list[str]
    bitrate: str
    gates: list[dict[str, tp.Any]]  # Gate fields: name, metric, value, limit, rule, passed
    comparison: dict[str, tp.Any]  # Comparison fields
    mlflow_run_id: str
    model_uri: str
    eval_set_fingerprint: str
    worst: tp.NotRequired[dict[str, tp.Any]]  # worst set (primary metric), worst set+level (amplitude)
    git_commit: str | None
    data_version: str | None


OPTIONAL_KEYS = {"worst", "gate_profile"}  # absent when no evaluation set was scored (a candidate refused before it)


def read_promotion(path: str | Path) -> PromotionRecord:
    """``promotion.json`` at ``path``; :class:`UserError` when it is not one this version wrote."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{p} can't be read as JSON ({e}); re-run codec promote") from None
    # typing cannot see NotRequired through this module's string annotations: name the optional keys.
    required = set(PromotionRecord.__annotations__) - OPTIONAL_KEYS
    missing = sorted(required - set(data if isinstance(data, dict) else {}))
    if missing:
        raise UserError(f"{p} lacks {', '.join(missing)}: not a promotion record of this version; re-run codec promote")
    return tp.cast(PromotionRecord, data)
