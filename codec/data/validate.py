"""The validate stage: the data-quality gate between normalization and training.

A Great Expectations suite runs over the normalized manifest. The expectation
that matters most is the spread (standard deviation) of per-file RMS levels: when
every clip has been peak-normalized on its own, levels carry no consistent
meaning, the spread is several dB, and a codec trained on it learns to shrink its
output (the seed's model came out at 47 % amplitude). That is refused here,
before a GPU hour is spent.

The suites live in ``gx/`` (a GX file context committed with the code, see
``codec.data.gx_project``): ``normalized_audio`` is the gate, its thresholds are suite
parameters filled from params.yaml; ``raw_audio_profile`` reports the raw manifest's
levels for information only, so the spread before and after normalization sit side by
side. Each run is kept in a validation history under a run name (data version and
commit), and the Data Docs are rebuilt from that history, readable offline.

Outputs: a JSON summary (a DVC metric), GX Data Docs (HTML), and on failure exit
code 3 with a message naming each failed expectation, the observed value, the
limit and the worst files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import typing as tp
from pathlib import Path

import pandas as pd

from codec.audio.level import PEAK_CEILING_DB, TARGET_LUFS
from codec.data import gx_project
from codec.data.manifest import read_manifest
from codec.errors import DataQualityError, UserError
from codec.files import check_output_folder, write_text_atomic
from codec.params import from_dict, read_params

if tp.TYPE_CHECKING:
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context import FileDataContext

LEVEL_COLUMNS = ("lufs", "rms_dbfs", "peak_dbfs", "duration_s", "clipped_fraction")


@dataclasses.dataclass(frozen=True)
class ValidateParams:
    """``validate`` in params.yaml (plus the targets it checks against, from ``normalize``/``ingest``)."""

    lufs_tolerance: float = 0.5
    max_rms_spread_db: float = 1.5
    max_clipped_fraction: float = 0.0001
    max_input_clipped_fraction: float = 0.01
    # false: failed expectations are recorded and printed, but the stage exits 0 (experiments
    # that measure what bad data does, e.g. experiments/seed_grid.py). Never for a real run.
    enforce_gate: bool = True
    min_duration_s: float = 0.5
    max_duration_s: float = 60.0
    min_files: int = 20
    peak_margin_db: float = 0.05
    target_lufs: float = TARGET_LUFS
    peak_ceiling_db: float = PEAK_CEILING_DB
    sample_rate: int = 16000
    mode: str = "lufs"

    def check(self, where: str) -> None:
        """Raise :class:`UserError` naming a limit no data could meet or every data would."""
        for name in ("lufs_tolerance", "max_rms_spread_db"):
            if not getattr(self, name) > 0:
                raise UserError(f"{where}.{name}: {getattr(self, name)} must be greater than 0")
        for name in ("max_clipped_fraction", "max_input_clipped_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserError(f"{where}.{name}: {getattr(self, name)} must be within [0, 1]")
        if self.peak_margin_db < 0:
            raise UserError(f"{where}.peak_margin_db: {self.peak_margin_db} must not be negative")
        if not 0.0 < self.min_duration_s < self.max_duration_s:
            raise UserError(
                f"{where}: need 0 < min_duration_s < max_duration_s, "
                f"got {self.min_duration_s} and {self.max_duration_s}"
            )
        if self.min_files < 1:
            raise UserError(f"{where}.min_files: {self.min_files} must be at least 1")


@dataclasses.dataclass(frozen=True)
class Check:
    """One expectation of the gate, with what a user needs to act on a failure."""

    name: str
    column: str | None
    limit: str
    worst: tp.Callable[[pd.DataFrame], pd.Series] | None  # larger = worse, per file
    unit: str = ""


@dataclasses.dataclass
class CheckResult:
    name: str
    expectation: str
    column: str | None
    success: bool
    observed: tp.Any
    limit: str
    worst_files: list[str]


# The checkpoints in gx/checkpoints/ the stage runs, and the suites they validate.
GATE_CHECKPOINT = "normalized_audio_gate"
PROFILE_CHECKPOINT = "raw_audio_profile"
NOT_NULL_COLUMNS = ("id", "path", "duration_s", "sample_rate", "lufs", "rms_dbfs", "peak_dbfs", "clipped_fraction")


def suite_parameters(p: ValidateParams) -> dict[str, tp.Any]:
    """The values of the gate suite's ``$PARAMETER`` thresholds (gx/expectations/normalized_audio.json)."""
    return {
        "max_rms_spread_db": p.max_rms_spread_db,
        "lufs_min": p.target_lufs - p.lufs_tolerance,
        "lufs_max": p.target_lufs + p.lufs_tolerance,
        "peak_ceiling_dbfs": p.peak_ceiling_db + p.peak_margin_db,
        "max_clipped_fraction": p.max_clipped_fraction,
        "max_input_clipped_fraction": p.max_input_clipped_fraction,
        "min_duration_s": p.min_duration_s,
        "max_duration_s": p.max_duration_s,
        "sample_rates": [p.sample_rate],
        "min_files": p.min_files,
    }


def _checks(p: ValidateParams) -> dict[str, Check]:
    """What the gate reports for each expectation of the suite, keyed by its ``meta.check``."""
    s = suite_parameters(p)
    lo, hi, ceiling = s["lufs_min"], s["lufs_max"], s["peak_ceiling_dbfs"]

    def dist_from_median(col: str) -> tp.Callable[[pd.DataFrame], pd.Series]:
        return lambda df: (df[col] - df[col].median()).abs()

    def outside(col: str, a: float, b: float) -> tp.Callable[[pd.DataFrame], pd.Series]:
        return lambda df: (df[col] - df[col].clip(a, b)).abs()

    checks = [
        Check("rms_spread", "rms_dbfs", f"std <= {p.max_rms_spread_db} dB", dist_from_median("rms_dbfs"), " dB"),
        Check("loudness", "lufs", f"{lo:.2f}..{hi:.2f} LUFS", outside("lufs", lo, hi), " LUFS"),
        Check("peak_ceiling", "peak_dbfs", f"<= {ceiling:.2f} dBFS", outside("peak_dbfs", -1e9, ceiling), " dBFS"),
        Check(
            "clipping",
            "clipped_fraction",
            f"<= {p.max_clipped_fraction}",
            outside("clipped_fraction", 0.0, p.max_clipped_fraction),
        ),
        # Measured on the recording as it arrived (data/raw's clipped_fraction): the
        # limiter in normalize turns a clipped take into one that reads 0 % clipped
        # after it, so only the input shows that the waveform was flattened.
        Check(
            "input_clipping",
            "input_clipped_fraction",
            f"<= {p.max_input_clipped_fraction} of the input's samples at full scale",
            outside("input_clipped_fraction", 0.0, p.max_input_clipped_fraction),
        ),
        Check(
            "duration",
            "duration_s",
            f"{p.min_duration_s}..{p.max_duration_s} s",
            outside("duration_s", p.min_duration_s, p.max_duration_s),
            " s",
        ),
        Check("sample_rate", "sample_rate", f"== {p.sample_rate} Hz", _differs("sample_rate", p.sample_rate)),
        *[Check(f"not_null:{c}", c, "no nulls", _is_null(c)) for c in NOT_NULL_COLUMNS],
        Check("min_files", None, f">= {p.min_files} files", None),
    ]
    return {c.name: c for c in checks}


def _differs(col: str, value: float) -> tp.Callable[[pd.DataFrame], pd.Series]:
    return lambda df: (df[col] != value).astype(float)


def _is_null(col: str) -> tp.Callable[[pd.DataFrame], pd.Series]:
    return lambda df: df[col].isna().astype(float)


def _worst(check: Check, df: pd.DataFrame, n: int = 5) -> list[str]:
    if check.worst is None or df.empty or (check.column and check.column not in df.columns):
        return []
    score = check.worst(df).fillna(float("inf"))
    top = score[score > 0].sort_values(ascending=False).head(n)
    out = []
    for i in top.index:
        row = df.loc[i]
        value = row[check.column] if check.column else ""
        out.append(f"{row['id']} ({check.column}={value}{check.unit})")
    return out


def _observed(result: tp.Any) -> tp.Any:
    r = dict(result.result)
    if "observed_value" in r:
        v = r["observed_value"]
        return float(v) if isinstance(v, (int, float)) or hasattr(v, "__float__") else v
    if "unexpected_count" in r:
        return {
            "unexpected_count": int(r["unexpected_count"]),
            "unexpected_percent": float(r.get("unexpected_percent") or 0.0),
        }
    return None


def _unknown_check(config: tp.Any) -> Check:
    """An expectation added to the suite without a ``meta.check`` this module knows: reported by
    its type and column, its limit read from its (resolved) arguments."""
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "column")}
    column = config.kwargs.get("column")
    name = f"{config.type}:{column}" if column else config.type
    return Check(name, column, ", ".join(f"{k}={v}" for k, v in kwargs.items()) or "see the suite", None)


def run_suite(
    ctx: FileDataContext,
    df: pd.DataFrame,
    raw: pd.DataFrame,
    p: ValidateParams,
    run_id: RunIdentifier,
    where: tuple[str, str],
) -> list[CheckResult]:
    """Validate ``df`` (the normalized manifest) with the gate's checkpoint and ``raw`` with the
    profile's (information only), both under ``run_id``; return the gate's results.

    ``ctx`` is the file context (:func:`codec.data.gx_project.open_context`); ``where`` names
    the two manifests for messages.
    """
    checks = _checks(p)
    gate = gx_project.run_checkpoint(ctx, GATE_CHECKPOINT, df, suite_parameters(p), run_id, where[0])
    gx_project.run_checkpoint(ctx, PROFILE_CHECKPOINT, raw, {}, run_id, where[1])
    results: list[CheckResult] = []
    for r in gate.results:
        config = r.expectation_config
        assert config is not None
        name = (config.meta or {}).get("check")  # GX may return results in another order
        check = checks[name] if name in checks else _unknown_check(config)
        results.append(
            CheckResult(
                name=check.name,
                expectation=config.type,
                column=check.column,
                success=bool(r.success),
                observed=_observed(r),
                limit=check.limit,
                worst_files=[] if r.success else _worst(check, df),
            )
        )
    return results


def level_profile(df: pd.DataFrame) -> dict[str, float]:
    """Mean, std, min and max of the level columns (for the summary and the Prefect artifact)."""
    out: dict[str, float] = {"files": float(len(df))}
    for c in ("lufs", "rms_dbfs", "peak_dbfs"):
        if c in df.columns and len(df):
            s = df[c].astype(float)
            out.update(
                {
                    f"{c}_mean": s.mean(),
                    f"{c}_std": s.std() if len(s) > 1 else 0.0,
                    f"{c}_min": s.min(),
                    f"{c}_max": s.max(),
                }
            )
    return {k: round(float(v), 4) for k, v in out.items()}


def failure_message(failed: list[CheckResult], p: ValidateParams) -> str:
    lines = [f"data-quality gate failed: {len(failed)} expectation(s) not met — training was not started"]
    for r in failed:
        if isinstance(r.observed, float):
            obs = f"{r.observed:.4g}"
        elif isinstance(r.observed, dict) and "unexpected_count" in r.observed:
            obs = f"{r.observed['unexpected_count']} file(s) outside ({r.observed['unexpected_percent']:.1f} %)"
        else:
            obs = str(r.observed)
        where = f"{r.expectation}, column {r.column}" if r.column else r.expectation
        lines.append(f"  ✗ {r.name} [{where}]: observed {obs}, limit {r.limit}")
        if r.worst_files:
            lines.append(f"      worst files: {', '.join(r.worst_files)}")
    names = {r.name for r in failed}
    if "rms_spread" in names:
        hint = "per-file RMS levels are inconsistent, so a codec trained on them learns no consistent output level" + (
            " — normalize.mode is 'peak' (per-clip peak normalization, the bug that collapsed output to 47 %); "
            "set normalize.mode: lufs"
            if p.mode == "peak"
            else "; check normalize.mode (lufs is the default) and the worst files above"
        )
        lines.append(f"  what to do: {hint}")
    else:
        lines.append(
            "  what to do: inspect the worst files in data/normalized/manifest.csv and the Data Docs, "
            "then fix the data or the limits in params.yaml (validate)"
        )
    return "\n".join(lines)


def validate(
    normalized: Path,
    raw: Path,
    p: ValidateParams,
    summary_path: Path,
    docs_dir: Path | None,
    *,
    gx_dir: Path,
    history_dir: Path | None = None,
    keep_runs: int = gx_project.KEEP_RUNS,
    run_name: str | None = None,
) -> dict[str, tp.Any]:
    """Run the gate with the suites of ``gx_dir``; write the summary (and Data Docs).

    The results join the history in ``history_dir`` (the newest ``keep_runs`` runs are kept;
    none without one) as run ``run_name`` (default: data version and commit, see
    :func:`codec.data.gx_project.run_name`), and the Data Docs in ``docs_dir`` are built
    from that whole history.
    Raises ``DataQualityError`` on failure, after the summary and the Data Docs are written.
    """
    df = read_manifest(normalized, required=("id", "path"))
    raw_df = read_manifest(raw)
    if "clipped_fraction" in raw_df.columns:
        inputs = raw_df[["id", "clipped_fraction"]].rename(columns={"clipped_fraction": "input_clipped_fraction"})
        df = df.merge(inputs, on="id", how="left", validate="one_to_one")
    where = (
        f"{normalized / 'manifest.csv'} (with {raw / 'manifest.csv'}'s clipped_fraction as input_clipped_fraction)",
        str(raw / "manifest.csv"),
    )
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    with tempfile.TemporaryDirectory(prefix="codec-validate-") as scratch:
        history = history_dir or Path(scratch) / "history"
        ctx = gx_project.open_context(gx_dir, history, docs_dir or Path(scratch) / "data_docs")
        run_id = gx_project.run_identifier(run_name or gx_project.run_name(normalized))
        results = run_suite(ctx, df, raw_df, p, run_id, where)
        gx_project.prune_history(ctx, history, keep_runs)
        if docs_dir is not None:
            gx_project.build_docs(ctx, docs_dir)
    failed = [r for r in results if not r.success]

    def clean(v: tp.Any) -> tp.Any:
        return None if isinstance(v, float) and not math.isfinite(v) else v

    summary: dict[str, tp.Any] = {
        "success": not failed,
        "enforced": p.enforce_gate,
        "files": len(df),
        "failed_expectations": len(failed),
        "raw": level_profile(raw_df),
        "normalized": level_profile(df),
        "expectations": {
            r.name: {
                "success": r.success,
                "observed": clean(r.observed),
                "limit": r.limit,
                "worst_files": r.worst_files,
            }
            for r in results
        },
    }
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(summary_path, json.dumps(summary, indent=2) + "\n")
    if failed:
        message = failure_message(failed, p)
        if p.enforce_gate:
            raise DataQualityError(message)
        print(
            "codec validate: WARNING: the data-quality gate is OFF (validate.enforce_gate: false); "
            "training goes on with data that fails it:\n" + message,
            file=sys.stderr,
        )
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--in", dest="normalized", type=Path, required=True, help="normalized clips (data/normalized)")
    parser.add_argument(
        "--raw", type=Path, required=True, help="ingested clips (data/raw): input clipping, level profile"
    )
    parser.add_argument("--summary", type=Path, required=True, help="JSON summary to write (every expectation)")
    parser.add_argument("--headline", type=Path, help="the gate's few numbers (a DVC metric)")
    parser.add_argument("--docs", type=Path, help="folder for the GX Data Docs (HTML), rebuilt each run")
    parser.add_argument("--gx", type=Path, default=Path("gx"), help="the Great Expectations project (default: gx)")
    parser.add_argument(
        "--history", type=Path, help="folder that keeps the validation results across runs (none kept without it)"
    )
    parser.add_argument(
        "--keep-runs",
        type=int,
        default=gx_project.KEEP_RUNS,
        metavar="N",
        help="runs the history keeps, newest first (default: %(default)s)",
    )
    parser.add_argument("--params", default="params.yaml")


def load_params(path: str) -> ValidateParams:
    allp = read_params(path)
    section = dict(allp.get("validate") or {})
    norm = allp.get("normalize") or {}
    for key in ("target_lufs", "peak_ceiling_db", "mode"):
        if key in norm:
            section.setdefault(key, norm[key])
    if "sample_rate" in (allp.get("ingest") or {}):
        section.setdefault("sample_rate", allp["ingest"]["sample_rate"])
    return from_dict(ValidateParams, section, f"{path}: validate")


DATA_DOCS_ENTRIES = frozenset({"index.html", "static", "validations", "expectations"})


def _docs_owned(folder: Path) -> bool:
    """The folder holds Great Expectations Data Docs and nothing else."""
    names = {p.name for p in folder.iterdir()}
    return "index.html" in names and names <= DATA_DOCS_ENTRIES


def check_history_folder(folder: Path, inputs: tp.Sequence[Path]) -> None:
    """``--history`` is new, empty, or a GX validation results store (GX marks one with
    ``.ge_store_backend_id``): the stage adds to it and deletes its old runs, so a folder of
    anything else, or one around or inside the data, is refused before it is touched."""
    where = folder.resolve()
    for item in inputs:
        src = item.resolve()
        if where == src or where.is_relative_to(src) or src.is_relative_to(where):
            raise UserError(f"--history {folder} overlaps the input {item}; keep the history apart from the data")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--history {folder} exists and is not a folder; remove it or choose another folder")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / ".ge_store_backend_id").is_file():
        example = sorted(p.name for p in folder.iterdir())[0]
        raise UserError(
            f"--history {folder} holds files that are not a validation history (e.g. {example!r}), and the stage "
            "deletes old runs there; choose a new or empty folder"
        )


def run(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    if args.keep_runs < 1:
        raise UserError(f"--keep-runs {args.keep_runs}: the history keeps at least the run that made it; give N >= 1")
    inputs = [args.normalized, args.raw]
    if args.history is not None:
        check_history_folder(args.history, inputs)
    if args.docs is not None and args.docs.exists():
        import shutil

        # Only a folder of Data Docs (or an empty one) is cleared: --docs pointed at
        # anything else is refused before it is touched.
        check_output_folder(args.docs, inputs=inputs, owned=_docs_owned)
        shutil.rmtree(args.docs)
    name = gx_project.run_name(args.normalized)
    try:
        summary = validate(
            args.normalized,
            args.raw,
            params,
            args.summary,
            args.docs,
            gx_dir=args.gx,
            history_dir=args.history,
            keep_runs=args.keep_runs,
            run_name=name,
        )
    except UserError:
        if args.docs is not None and (args.docs / "index.html").is_file():
            print(f"codec validate: run {name}; Data Docs: {args.docs / 'index.html'}")
        raise
    n = summary["normalized"]
    r = summary["raw"]
    if summary["success"]:
        print(f"codec validate: all {len(summary['expectations'])} expectations met on {summary['files']} files")
    else:
        print(
            f"codec validate: {summary['failed_expectations']} of {len(summary['expectations'])} expectations "
            f"FAILED on {summary['files']} files; gate off (validate.enforce_gate: false)"
        )
    if r:
        print(
            f"  RMS spread {r.get('rms_dbfs_std', float('nan')):.2f} dB raw -> {n['rms_dbfs_std']:.2f} dB normalized; "
            f"loudness {r.get('lufs_mean', float('nan')):.1f} ± {r.get('lufs_std', float('nan')):.1f} -> "
            f"{n['lufs_mean']:.2f} ± {n['lufs_std']:.2f} LUFS"
        )
    kept = f", kept in {args.history} (newest {args.keep_runs} runs)" if args.history is not None else ""
    print(f"  run {name}{kept}")
    if args.docs is not None:
        print(f"  Data Docs: {args.docs / 'index.html'}")
    if args.headline is not None:
        write_text_atomic(args.headline, json.dumps(gate_headline(summary), indent=2) + "\n")
    return 0


def gate_headline(summary: tp.Mapping[str, tp.Any]) -> dict[str, float | int | None]:
    """The data gate in one number for ``dvc metrics show``: ``spread_db``, the per-file RMS
    spread after normalize (the number the gate is about: per-clip peak normalization reads
    several dB). Pass/fail, counts and the raw data's spread are in summary.json."""
    n = summary.get("normalized") or {}
    return {"spread_db": n.get("rms_dbfs_std")}
