"""What a run shows in the Prefect UI, built from the files the stages wrote.

Nothing here measures anything: each function reads a report a DVC stage declared
(the validate summary, the evaluate table, ``promotion.json``) and lays it out as a
Prefect table or Markdown artifact. A report that does not exist yet (the stage has
not run, or is not in ``dvc.yaml`` yet) gives an artifact that says so, so every run
has the same artifacts.
"""

from __future__ import annotations

import csv
import json
import math
import re
import typing as tp
from pathlib import Path

from codec.registry.record import PromotionRecord
from flows.dvc_stages import StageInfo, StageResult

KEY_DATA_QUALITY = "codec-data-quality"
KEY_EVALUATION = "codec-evaluation"
KEY_PROMOTION = "codec-promotion"
KEY_RUN = "codec-pipeline-run"

Row = dict[str, tp.Any]

# (label, key in the summary's raw/normalized profiles, expectation that judges it)
_LEVEL_ROWS: list[tuple[str, str, str | None]] = [
    ("files", "files", "min_files"),
    ("loudness mean (LUFS)", "lufs_mean", "loudness"),
    ("loudness spread, std (LU)", "lufs_std", None),
    ("RMS mean (dBFS)", "rms_dbfs_mean", None),
    ("RMS spread, std (dB)", "rms_dbfs_std", "rms_spread"),
    ("peak max (dBFS)", "peak_dbfs_max", "peak_ceiling"),
]


def _num(value: tp.Any, digits: int = 3) -> tp.Any:
    if isinstance(value, float):
        return round(value, digits) if math.isfinite(value) else None
    return value


def _verdict(success: tp.Any) -> str:
    return "" if success is None else ("pass" if success else "FAIL")


def _observed(value: tp.Any) -> tp.Any:
    if isinstance(value, dict) and "unexpected_count" in value:
        return f"{value['unexpected_count']} file(s) outside"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return _num(value, 4)


# Markdown that a table cell's text would otherwise start (the UI renders each text cell as
# Markdown: ">= 20 files" became a block quote) or contain (emphasis, code, links).
_BLOCK_START = re.compile(r"^(\s*)(\d+(?=[.)](?:\s|$))|)([>#+\-*=~|.)])")
_INLINE = re.compile(r"([\\`*\[\]|])")


def md_cell(value: tp.Any) -> tp.Any:
    """A text cell escaped for the Prefect UI's Markdown table cells; numbers and None as they are."""
    if not isinstance(value, str):
        return value
    text = _INLINE.sub(r"\\\1", value)
    return _BLOCK_START.sub(lambda m: m.group(1) + m.group(2) + "\\" + m.group(3), text)


def data_quality_rows(summary: dict[str, tp.Any]) -> list[Row]:
    """Rows of the data-quality table from the validate stage's ``summary.json``.

    First the level profile before (raw) and after (normalized) normalization, then
    every expectation with its observed value, limit and worst files.
    """
    raw, norm = summary.get("raw") or {}, summary.get("normalized") or {}
    exp: dict[str, dict[str, tp.Any]] = summary.get("expectations") or {}
    rows: list[Row] = []
    for label, key, judged_by in _LEVEL_ROWS:
        check = exp.get(judged_by or "", {})
        rows.append(
            {
                "check": label,
                "raw": _num(raw.get(key)),
                "normalized": _num(norm.get(key)),
                "limit": check.get("limit", ""),
                "result": _verdict(check.get("success")),
                "worst_files": ", ".join(check.get("worst_files") or []),
            }
        )
    for name, check in exp.items():
        rows.append(
            {
                "check": f"expectation: {name}",
                "raw": None,
                "normalized": _observed(check.get("observed")),
                "limit": check.get("limit", ""),
                "result": _verdict(check.get("success")),
                "worst_files": ", ".join(check.get("worst_files") or []),
            }
        )
    return [{k: md_cell(v) for k, v in row.items()} for row in rows]


def failed_expectations(summary: dict[str, tp.Any]) -> list[str]:
    """``name (observed X, limit Y)`` for each failed expectation of a validate summary."""
    out = []
    for name, check in (summary.get("expectations") or {}).items():
        if not check.get("success", True):
            out.append(f"{name} (observed {_observed(check.get('observed'))}, limit {check.get('limit', '?')})")
    return out


def read_json(path: Path) -> tp.Any:
    return json.loads(path.read_text())


def read_table(path: Path) -> list[Row]:
    """A per-bitrate table: CSV/TSV with a header, or JSON (records, or nested per bitrate).

    JSON forms understood: ``[{...}, ...]``; ``{"rows"|"table"|"per_bitrate"|"bitrates": [...]}``;
    ``{bitrate: {codec: {metric: value}}}`` (one row per bitrate and codec).
    """
    if path.suffix.lower() in (".csv", ".tsv"):
        with path.open(newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            return [{k: _cell(v) for k, v in row.items()} for row in reader]
    data = read_json(path)
    if isinstance(data, dict):
        for key in ("rows", "table", "per_bitrate", "bitrates"):
            if isinstance(data.get(key), list | dict):
                data = data[key]
                break
    if isinstance(data, list):
        return [dict(r) for r in data if isinstance(r, dict)]
    if isinstance(data, dict):
        rows: list[Row] = []
        for bitrate, per_codec in data.items():
            if isinstance(per_codec, dict) and all(isinstance(v, dict) for v in per_codec.values()):
                rows.extend({"bitrate": _cell(str(bitrate)), "codec": c, **m} for c, m in per_codec.items())
            elif isinstance(per_codec, dict):
                rows.append({"bitrate": _cell(str(bitrate)), **per_codec})
        return rows
    raise ValueError(f"{path}: not a table (expected CSV, or JSON records)")


def _cell(value: str | None) -> tp.Any:
    if value is None:
        return None
    try:
        return float(value) if any(c in value for c in ".eE") or value.lower() in ("nan", "inf") else int(value)
    except ValueError:
        return value


def evaluation_rows(path: Path) -> list[Row]:
    """The evaluation table (ours vs Opus per bitrate), sorted by bitrate then codec."""
    rows = [{k: _num(v, 4) for k, v in r.items()} for r in read_table(path)]
    bitrate_key = next((k for k in (rows[0] if rows else {}) if k.lower().startswith("bitrate")), None)

    def order(r: Row) -> tuple[float, str]:
        b = r.get(bitrate_key) if bitrate_key else None
        return (b if isinstance(b, int | float) else math.inf, str(r.get("codec", r.get("system", ""))))

    return sorted(rows, key=order)


def evaluation_table_path(stage: StageInfo | None) -> str | None:
    """The evaluate stage's per-bitrate table, from what ``dvc.yaml`` declares.

    Its ``plots`` first (the table is the plot), then any CSV/TSV output, then a
    metrics JSON (read with :func:`read_table`'s nested forms).
    """
    if stage is None:
        return None
    tabular = (".csv", ".tsv", ".json")
    for group in (stage.plots, [o for o in stage.outs if o.lower().endswith((".csv", ".tsv"))], stage.metrics):
        files = [p for p in group if p.lower().endswith(tabular)]
        if files:
            return sorted(files, key=lambda p: ("bitrate" not in p and "table" not in p, p))[0]
    return None


def promotion_path(stage: StageInfo | None) -> str | None:
    """``promotion.json`` among the promote stage's declared outputs (or its first JSON metric)."""
    if stage is None:
        return None
    named = [p for p in stage.outs if Path(p).name == "promotion.json"]
    jsons = [p for p in (*stage.metrics, *stage.outs) if p.lower().endswith(".json")]
    found = named or jsons
    return found[0] if found else None


def promotion_markdown(data: PromotionRecord, source: str) -> str:
    """A Markdown summary of ``promotion.json``: the decision, the MLflow run and version, each gate."""
    lines = [
        f"# Promotion: **{data['decision']}**",
        "",
        (
            f"- model: `{data['model_name']}` version **{data['version']}**"
            if data["version"] is not None
            else f"- model: not registered in `{data['model_name']}` (rejected: the candidate stays a run)"
        ),
        f"- MLflow run: `{data['mlflow_run_id']}`",
        f"- alias: {data['alias'] or '(none: rejected)'}",
        f"- gates: {data.get('gate_profile', 'default')} (promote.gate_profile), at {data['bitrate']}",
    ]
    cmp = data["comparison"]
    lines.append(f"- primary metric: {cmp.get('metric')} ({cmp.get('direction')} is better), {cmp.get('source')}")
    lines += [f"- {r}" for r in data["reasons"]]
    table = ["", "| gate | passed | value | limit |", "| --- | --- | --- | --- |"]
    for g in data["gates"]:
        table.append(f"| {g['name']} | {'yes' if g['passed'] else 'NO'} | {_observed(g['value'])} | {g['rule']} |")
    lines.extend(table if data["gates"] else ["", "_no gates recorded_"])
    lines += ["", f"_from `{source}`; compare versions with `codec models` or `mlflow ui`_"]
    return "\n".join(lines)


def missing_markdown(what: str, path: str | None, hint: str) -> str:
    where = f"`{path}` does not exist yet" if path else "no stage in `dvc.yaml` declares it yet"
    return f"# {what}: not available\n\n{where}. {hint}\n"


def run_summary_markdown(
    stages: list[StageInfo], results: list[StageResult], failure: str | None, changed: dict[str, tuple[tp.Any, tp.Any]]
) -> str:
    """Which stages ran, were skipped by DVC as up to date, failed or were not reached."""
    done = {r.stage: r for r in results}
    failed_stage = failure.split("'")[1] if failure and failure.startswith("stage '") else None
    lines = ["# Pipeline run", "", "| stage | outcome | seconds |", "| --- | --- | --- |"]
    for s in stages:
        r = done.get(s.name)
        if r is not None:
            lines.append(f"| {s.name} | {'ran' if r.ran else 'up to date (skipped by DVC)'} | {r.seconds:.1f} |")
        elif s.name == failed_stage:
            lines.append(f"| {s.name} | **FAILED** | |")
        else:
            lines.append(f"| {s.name} | not run | |")
    if changed:
        lines += ["", "params.yaml changed by this run (like `dvc exp run -S`):", ""]
        lines += [f"- `{k}`: {old!r} -> {new!r}" for k, (old, new) in changed.items()]
    if failure:
        lines += ["", "## Failure", "", "```", failure, "```"]
    return "\n".join(lines)
