"""``codec evaluate``: the DVC stage entry around :func:`codec.evaluation.evaluate.evaluate_model`.

Reads ``params.yaml: evaluate`` and evaluates the checkpoint as ``codec encode`` runs it (loaded
by :mod:`codec.inference.model_source`, at the level settings its checkpoint records) on its
held-out clips at their recorded level from ``data/raw``, and writes (paths from ``dvc.yaml``)
the metrics JSON, the per-bitrate CSVs, ``evaluation.json`` (what ``codec promote`` reads),
``report.md`` and a media folder. All of it is logged to the MLflow run that trained the model
(:func:`codec.tracking.find_model_run`), else to a new run that logs the model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
import typing as tp
from pathlib import Path

import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from codec.audio.level import LevelSettings
from codec.errors import UserError
from codec.evaluation.baseline_cache import DEFAULT_DIR, OpusCache
from codec.evaluation.evaluate import Evaluation, RepeatedCoding, evaluate_model
from codec.evaluation.params import HELD_OUT, EvaluateParams
from codec.evaluation.record import clip_level_error_db
from codec.evaluation.report import (
    SET_DESCRIPTIONS,
    evaluation_record,
    flat_metrics,
    headline,
    levels_csv,
    metrics_dict,
    plot_csv,
    report_markdown,
    sets_csv,
    sets_markdown,
    sets_summary,
    side_info_markdown,
    table_csv,
    write_media,
)
from codec.evaluation.sets import EvalClip, held_out_ids, load_eval_clips, speakers_of, spread_over_speakers
from codec.evaluation.suite import UserSet, build_sets, load_user_set, sets_fingerprint, user_set_folders
from codec.files import write_text_atomic
from codec.inference.model_source import load_model
from codec.inference.pipeline import CodecLike
from codec.model.checkpoint import read_checkpoint
from codec.parallel import parallel_map
from codec.params import PARAMS_FILE, from_dict, read_params
from codec.provenance import data_version, git_commit, repo_root
from codec.tracking import (
    EXPERIMENT,
    describe,
    find_model_run,
    last_step,
    logged_model_id,
    pandas_dataset,
    source_tags,
    tracking_uri,
)


def log_to_mlflow(
    run_id: str | None,
    experiment: str,
    evs: tp.Mapping[str, Evaluation],
    tags: tp.Mapping[str, str],
    folder: Path,
    checkpoint: Path,
    raw: Path,
) -> tuple[str, str]:
    """Log the evaluation into run ``run_id``, or into a new run tagged ``stage=evaluate`` (with
    MLflow's source tags) when ``run_id`` is None: the served model of ``checkpoint`` unless the run
    already holds one (at a step after every metric of the run, so MLflow copies none of the run's
    training or system metrics to it), the evaluation sets as the run's datasets (the
    evaluation-set fingerprint as digest, the DVC hash of ``raw`` as a tag), :func:`flat_metrics`
    on the run and its logged model (each with its set as dataset, as ``codec promote`` logs them),
    the tables of :func:`evaluation_tables` and the files in ``folder`` under ``evaluation/``, and
    the evaluation's part of the description of the run and the model. Returns (run id, model id)."""
    import mlflow  # heavy: only when logging
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient()
    fingerprint = tags.get("eval_set_fingerprint", "")
    root = repo_root()
    mlflow.set_experiment(experiment)
    # A checkpoint no tracked training made gets a run of its own, named so.
    new_tags = None if run_id else {"stage": "evaluate", **source_tags(root, "codec evaluate")}
    with mlflow.start_run(
        run_id=run_id, run_name=None if run_id else "evaluate untracked checkpoint", tags=new_tags
    ) as run:
        rid = str(run.info.run_id)
        model_id = logged_model_id(rid)
        if model_id is None:
            from codec.inference.served import log_model  # the served model, from the checkpoint

            log_model(checkpoint, step=last_step(client, rid) + 1)
            model_id = logged_model_id(rid)
        if model_id is None:  # pragma: no cover (log_model always records one)
            raise UserError(f"MLflow run {rid}: the logged model could not be found after logging it")
        mlflow.set_tags(dict(tags))
        raw_hash = data_version(raw, root)[0]
        for name, ev in evs.items():
            clips = pd.DataFrame({"clip_id": ev.clip_ids})
            dataset = pandas_dataset(clips, raw, name, fingerprint)
            mlflow.log_input(dataset, context="evaluation", tags={"dvc_hash": raw_hash, "source": raw.as_posix()})
        now = int(time.time() * 1000)
        metrics = [
            Metric(key, value, now, 0, model_id=model_id, dataset_name=key.split("/")[0], dataset_digest=fingerprint)
            for key, value in flat_metrics(evs).items()
        ]
        client.log_batch(rid, metrics=metrics)
        for table, frame in evaluation_tables(evs).items():
            mlflow.log_table(frame, f"evaluation/{table}.json")
        mlflow.log_artifacts(str(folder), "evaluation")
        describe(client, rid, "Evaluation", evaluation_note(evs), model_id)
        return rid, model_id


def evaluation_tables(evs: tp.Mapping[str, Evaluation]) -> dict[str, pd.DataFrame]:
    """The figures a run shows as tables (``mlflow.log_table``, in the UI's artifacts and
    evaluation views), not as single-value metrics: ``bitrates`` (every set, codec and bitrate,
    ours without the side information too), ``levels`` (ours per input level) and ``clips``
    (every clip's metrics)."""
    bitrates, levels, clips = [], [], []
    for name, ev in evs.items():
        for r in [*ev.rows, *ev.without_side]:
            bitrates.append(
                {"set": name, "codec": r.codec, "kbps": r.kbps, "effective_kbps": r.effective_kbps, **r.metrics}
                | {"n_clips": r.n_clips}
            )
        for lv in ev.levels:
            levels.append(
                {"set": name, **dataclasses.asdict(lv)}
                | {"worst_clip_level_error_db": clip_level_error_db(lv.min_amplitude_ratio, lv.max_amplitude_ratio)}
            )
        for row in ev.per_clip:
            reasons = row.get("reasons") or {}
            cells = {k: v for k, v in row.items() if k != "reasons"}
            clips.append({"set": name, **cells, "reasons": "; ".join(f"{k}: {v}" for k, v in reasons.items())})
    return {"bitrates": pd.DataFrame(bitrates), "levels": pd.DataFrame(levels), "clips": pd.DataFrame(clips)}


def evaluation_note(evs: tp.Mapping[str, Evaluation]) -> str:
    """The description's evaluation part: on which sets, the held-out headline beside Opus, the worst set."""
    summary = sets_summary(evs)
    held = summary[HELD_OUT] if HELD_OUT in summary else next(iter(summary.values()))

    def value(entry: tp.Mapping[str, float | None], key: str) -> float:
        v = entry.get(key)
        return math.nan if v is None else float(v)

    described = [f"{n} ({SET_DESCRIPTIONS.get(n, 'your recordings')}, {len(e.clip_ids)} clips)" for n, e in evs.items()]
    scored = {n: value(e, "pesq") for n, e in summary.items() if math.isfinite(value(e, "pesq"))}
    worst = min(scored, key=lambda n: scored[n]) if scored else None
    opus_text = f" (Opus at the same bitrate: PESQ {value(held, 'opus_pesq'):.2f})" if "opus_pesq" in held else ""
    worst_text = f" Lowest PESQ: {worst} ({scored[worst]:.2f})." if worst is not None else ""
    return (
        f"`codec evaluate` on {len(evs)} evaluation sets: {', '.join(described)}. Held-out speakers at "
        f"{value(held, 'kbps'):g} kbps: PESQ {value(held, 'pesq'):.2f}{opus_text}, mel distance "
        f"{value(held, 'mel_distance'):.3f}, SNR {value(held, 'snr_db'):.2f} dB, amplitude ratio "
        f"{value(held, 'amplitude_ratio'):.3f}.{worst_text} "
        "Per set, bitrate, level and clip: the tables and report.md under evaluation/."
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="models/codec.pt", help="checkpoint to evaluate (default: %(default)s)")
    parser.add_argument("--data", default="data/normalized", help="normalized data: the split (default: %(default)s)")
    parser.add_argument("--raw", default="data/raw", help="the clips at their recorded level (default: %(default)s)")
    parser.add_argument("--metrics", default="reports/evaluate/metrics.json", help="DVC metrics JSON")
    parser.add_argument("--table", default="reports/evaluate/bitrates.csv", help="per-bitrate table CSV (DVC plot)")
    parser.add_argument("--plot", default="reports/evaluate/vs_opus.csv", help="wide per-bitrate CSV (DVC plot)")
    parser.add_argument("--evaluation", default="reports/evaluate/evaluation.json", help="full results JSON")
    parser.add_argument(
        "--headline", default=None, help="the few numbers to compare (DVC metric; default: none written)"
    )
    parser.add_argument(
        "--levels", default=None, help="amplitude and SNR per input level and set (CSV; default: none written)"
    )
    parser.add_argument(
        "--sets-plot",
        default=None,
        help="amplitude (with and without side information), SNR and PESQ per bitrate and set (DVC plot; "
        "default: none written)",
    )
    parser.add_argument("--report", default="reports/evaluate/report.md", help="Markdown report")
    parser.add_argument("--media", default="reports/evaluate/media", help="folder for spectrograms and WAVs")
    parser.add_argument(
        "--user-sets",
        default="data/eval_sets",
        help="folder whose sub-folders are evaluation sets of your own recordings (default: %(default)s)",
    )
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default: %(default)s)")
    parser.add_argument("--experiment", default=EXPERIMENT, help="MLflow experiment (default: %(default)s)")
    parser.add_argument("--no-mlflow", action="store_true", help="evaluate without logging to MLflow")
    parser.add_argument(
        "--no-opus-cache",
        action="store_true",
        help="code and score the Opus baseline afresh instead of reusing earlier results "
        f"(kept in {DEFAULT_DIR}/ or $CODEC_CACHE_DIR/opus)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print the whole report (default: a few lines per set; the report is in --report either way)",
    )


def load_params(path: str | Path) -> EvaluateParams:
    """``evaluate`` of the params file. The level settings are not read here: they are the
    model's (its checkpoint's), the ones ``codec encode`` uses with it."""
    data = read_params(path)
    if "evaluate" not in data:
        raise UserError(f"{path}: section 'evaluate' is missing; add it (see README: Parameters)")
    return from_dict(EvaluateParams, data["evaluate"], f"{path}: evaluate")


def held_out_clips(
    model_path: Path, ckpt: tp.Mapping[str, tp.Any], args: argparse.Namespace, params: EvaluateParams, sample_rate: int
) -> tuple[list[EvalClip], float]:
    """The checkpoint's held-out clips (its own ``val_fraction``) at their recorded level, and that fraction."""
    val_fraction = (ckpt.get("params") or {}).get("val_fraction")
    if not isinstance(val_fraction, (int, float)):
        raise UserError(
            f"{model_path} does not record the val_fraction it was trained with (params.val_fraction), so the "
            "held-out clips are unknown; retrain with codec train"
        )
    all_ids = held_out_ids(Path(args.data), float(val_fraction))
    ids = spread_over_speakers(all_ids, speakers_of(Path(args.data), all_ids), params.max_clips)
    if not ids:
        raise UserError(f"no held-out clips in {args.data} with val_fraction={val_fraction}; add clips")
    return load_eval_clips(Path(args.raw), ids, params.seconds, sample_rate), float(val_fraction)


def log_evaluation(
    args: argparse.Namespace,
    evs: tp.Mapping[str, Evaluation],
    report: str,
    ckpt: tp.Mapping[str, tp.Any],
    tags: dict[str, str],
) -> tuple[str, str]:
    """Stage the report, tables and media and log them with every set's metrics to the model's MLflow
    run (:func:`log_to_mlflow`): (run id, model id)."""
    import mlflow  # heavy: only when logging
    from mlflow import MlflowClient

    ev = evs[HELD_OUT] if HELD_OUT in evs else next(iter(evs.values()))

    mlflow.set_tracking_uri(tracking_uri())
    model_path = Path(args.model)
    train_run = find_model_run(MlflowClient(), args.experiment, model_path, ckpt)
    if train_run is None:
        print(f"no MLflow training run holds {model_path}; logging the model in a new evaluation run")
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        (staged / "report.md").write_text(report, encoding="utf-8")
        (staged / "bitrates.csv").write_text(table_csv(ev), encoding="utf-8")
        (staged / "metrics.json").write_text(json.dumps(metrics_dict(ev), indent=2), encoding="utf-8")
        for f in Path(args.media).iterdir():
            if f.is_file():
                (staged / f.name).write_bytes(f.read_bytes())
        for f in (Path(args.media) / "spectrograms").glob("*.png"):
            (staged / f"{f.stem}_spectrograms.png").write_bytes(f.read_bytes())
        run_id, model_id = log_to_mlflow(train_run, args.experiment, evs, tags, staged, model_path, Path(args.raw))
    print(f"evaluation logged to MLflow run {run_id} in {mlflow.get_tracking_uri()}")
    return run_id, model_id


def held_out_speakers(speakers: tp.Mapping[str, str]) -> str:
    """``"m2 (3 clips), Gene (2 clips); 1 clip without a speaker"`` for the report."""
    counts: dict[str, int] = {}
    for spk in speakers.values():
        counts[spk] = counts.get(spk, 0) + 1
    named = ", ".join(f"{k} ({n} clip{'s' if n > 1 else ''})" for k, n in sorted(counts.items()) if k)
    loose = counts.get("", 0)
    tail = f"{loose} clip(s) without a speaker (split per clip)" if loose else ""
    return "; ".join(x for x in (named, tail) if x) or "none"


def set_record(ev: Evaluation, user: UserSet | None = None) -> dict[str, tp.Any]:
    """One evaluation set in ``evaluation.json``: its clips and its metrics (the gates read these);
    for a user's folder also where it is and what was rejected from it."""
    out: dict[str, tp.Any] = {"clip_ids": ev.clip_ids, "metrics": metrics_dict(ev)}
    if user is not None:
        out.update(folder=str(user.folder), inputs=user.inputs, accepted=user.accepted, rejected=user.rejected)
    return out


def user_sets_markdown(user_sets: tp.Sequence[UserSet]) -> str:
    """What each folder of the user's recordings held: scored, accepted, rejected and why."""
    if not user_sets:
        return ""
    lines = ["## Your evaluation sets", ""]
    for us in user_sets:
        lines.append(
            f"- `{us.name}` ({us.folder}): {us.inputs} inputs, {us.accepted} usable, {len(us.clips)} scored, "
            f"{len(us.rejected)} rejected"
        )
        lines += [f"  - rejected `{r['source_path']}`: {r['reason']} ({r['detail']})" for r in us.rejected]
    lines.append("")
    return "\n".join(lines)


def _num(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def console_summary(summary: tp.Mapping[str, tp.Mapping[str, float | None]], report: str) -> list[str]:
    """What ``codec evaluate`` prints by default (``summary``: :func:`sets_summary`): per set, ours
    beside Opus at its top bitrate and the amplitude ratio (at the worst input level, and the model's
    own without the side information), then the worst set and where the full report is."""
    lines = [f"codec evaluate: {len(summary)} evaluation set{'s' if len(summary) != 1 else ''}, ours vs Opus"]
    for name, e in summary.items():
        n = int(e.get("n_clips") or 0)
        ours = f"ours PESQ {_num(e.get('pesq'))}, mel {_num(e.get('mel_distance'), 3)}"
        ours += f", SNR {_num(e.get('snr_db'), 1)} dB"
        opus = f"Opus PESQ {_num(e.get('opus_pesq'))}, mel {_num(e.get('opus_mel_distance'), 3)}"
        lines.append(f"  {name} ({n} clips) at {e.get('kbps') or 0:g} kbps: {ours}; {opus}")
        amp = f"    amplitude {_num(e.get('amplitude_ratio'), 3)}"
        if e.get("worst_level_amplitude_ratio") is not None and e.get("worst_level_dbfs") is not None:
            level = f"{e.get('worst_level_dbfs'):g}"
            amp += f" (worst input level, {level} dBFS: {_num(e.get('worst_level_amplitude_ratio'), 3)})"
        if e.get("no_side_amplitude_ratio") is not None:
            amp += f"; without side information {_num(e.get('no_side_amplitude_ratio'), 3)}"
        lines.append(amp)
    scored = {name: e["pesq"] for name, e in summary.items() if e.get("pesq") is not None}
    if scored:
        worst = min(scored, key=lambda name: float(scored[name] or 0.0))
        lines.append(f"  worst set: {worst} (PESQ {_num(scored[worst])})")
    lines.append(f"  full report: {report} (or --verbose)")
    return lines


class TerminalProgress:
    """One line on standard error, rewritten at each step, when it is a terminal; nothing when it
    is not (a pipe, DVC's or Prefect's log), so logs get no progress noise."""

    def __init__(self, stream: tp.TextIO | None = None) -> None:
        import sys

        self.stream = stream if stream is not None else sys.stderr
        self.on = bool(getattr(self.stream, "isatty", lambda: False)())
        self.shown = False

    def __call__(self, text: str) -> None:
        if not self.on:
            return
        import shutil

        width = shutil.get_terminal_size().columns - 1
        self.stream.write("\r" + f"codec evaluate: {text}"[:width] + "\x1b[K")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


@dataclasses.dataclass
class _Job:
    """What every part of an evaluation reads: set in the parent before the pool forks, so the
    workers inherit the model and the clips instead of receiving them pickled."""

    model: CodecLike
    sets: tp.Mapping[str, tp.Sequence[EvalClip]]
    params: EvaluateParams
    levels: LevelSettings
    opus_cache: OpusCache | None


_JOB: _Job | None = None


def _evaluate_part(part: tuple[str, float]) -> tuple[Evaluation, int, int]:
    """One set at one bitrate (in a worker, or in the parent with one worker): the evaluation
    and the Opus cache's hits and misses it made."""
    job = _JOB
    assert job is not None, "evaluate_sets sets the job before the parts run"
    name, kbps = part
    if job.params.threads:
        torch.set_num_threads(job.params.threads)  # a worker's own, whatever the parent's pool did
    cache = job.opus_cache
    before = (cache.hits, cache.misses) if cache is not None else (0, 0)
    # A torch model's repeated codings (the level sweep, the run without side information) from memory.
    model = job.model if hasattr(job.model, "encode_array") else RepeatedCoding(job.model)
    ev = evaluate_model(model, job.sets[name], job.params, job.levels, bitrates_kbps=[kbps], opus_cache=cache)
    after = (cache.hits, cache.misses) if cache is not None else (0, 0)
    return ev, after[0] - before[0], after[1] - before[1]


def merge_parts(parts: tp.Sequence[Evaluation]) -> Evaluation:
    """The evaluations of one set at single bitrates as the one evaluation of the set at all of them
    (rows, levels, clips and samples in bitrate order, as :func:`evaluate_model` makes them)."""
    first = parts[0]
    merged = Evaluation(
        clip_ids=first.clip_ids,
        sample_rate=first.sample_rate,
        bitrates_kbps=[k for p in parts for k in p.bitrates_kbps],
        rows=[r for p in parts for r in p.rows],
        levels=[lv for p in parts for lv in p.levels],
        per_clip=[c for p in parts for c in p.per_clip],
        without_side=[r for p in parts for r in p.without_side],
    )
    for p in parts:
        for clip_id, audio in p.samples.items():
            merged.samples.setdefault(clip_id, {}).update(audio)
    return merged


def evaluate_sets(
    model: CodecLike,
    sets: tp.Mapping[str, tp.Sequence[EvalClip]],
    params: EvaluateParams,
    levels: LevelSettings,
    opus_cache: OpusCache | None,
) -> dict[str, Evaluation]:
    """:func:`evaluate_model` on each evaluation set at each bitrate the model serves, the parts in
    ``params.workers`` processes (each with ``params.threads`` torch threads: the figures do not
    depend on the number of workers), with one progress line on a terminal."""
    global _JOB
    rates = [float(k) for k in model.config.bitrates_kbps]
    parts = [(name, kbps) for name in sets for kbps in rates]
    progress = TerminalProgress()
    hits = misses = 0

    def done(i: int, result: tuple[Evaluation, int, int]) -> None:
        nonlocal hits, misses
        hits, misses = hits + result[1], misses + result[2]
        name, kbps = parts[i]
        progress(f"{i + 1}/{len(parts)} parts done ({name} at {kbps:g} kbps)")

    start = (opus_cache.hits, opus_cache.misses) if opus_cache is not None else (0, 0)
    _JOB = _Job(model, sets, params, levels, opus_cache)
    try:
        results = parallel_map(_evaluate_part, parts, params.workers, "codec evaluate", done, unit="part")
    finally:
        _JOB = None
        progress.close()
    if opus_cache is not None:  # the workers' counts (a worker's cache is its own copy)
        opus_cache.hits, opus_cache.misses = start[0] + hits, start[1] + misses
    by_set: dict[str, list[Evaluation]] = {name: [] for name in sets}
    for (name, _), (ev, _, _) in zip(parts, results, strict=True):
        by_set[name].append(ev)
    return {name: merge_parts(evs) for name, evs in by_set.items()}


def run(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    if params.threads:
        torch.set_num_threads(params.threads)
    model_path = Path(args.model)
    ckpt = read_checkpoint(model_path)
    # The model and level settings as codec encode loads them (model_source), so what is
    # evaluated is what ships.
    loaded = load_model(str(model_path))
    model, levels = loaded.model, loaded.levels
    clips, val_fraction = held_out_clips(model_path, ckpt, args, params, model.config.sample_rate)
    user_sets = [
        load_user_set(name, folder, params, model.config.sample_rate)
        for name, folder in user_set_folders(Path(args.user_sets)).items()
    ]
    sets = build_sets(clips, params, user_sets)
    fingerprint = sets_fingerprint(sets, params)
    opus_cache = None if getattr(args, "no_opus_cache", False) else OpusCache.default(repo_root())
    # NumPy's BLAS threads too (the metrics' matrix products): left at every core they spun a
    # second core idle in one process (user time twice the wall time) and starved a second worker.
    with threadpool_limits(limits=params.threads or None):
        evs = evaluate_sets(model, sets, params, levels, opus_cache)
    ev = evs[HELD_OUT]
    speakers = speakers_of(Path(args.data), ev.clip_ids)

    root = repo_root()
    context = {
        "model": str(model_path),
        "model fingerprint": loaded.fingerprint.hex(),
        "evaluation-set fingerprint": fingerprint,
        "git commit": git_commit(root),
        "data version (data/normalized)": data_version(Path(args.data), root)[0],
        "held-out speakers (never in training)": held_out_speakers(speakers),
    }
    report = (
        report_markdown(ev, context)
        + "\n"
        + sets_markdown(evs)
        + side_info_markdown(evs)
        + user_sets_markdown(user_sets)
    )
    write_media(ev, Path(args.media))
    run_id: str | None = None
    model_id: str | None = None
    if not args.no_mlflow:
        tags = {"eval_set_fingerprint": fingerprint, "model_fingerprint": context["model fingerprint"]}
        run_id, model_id = log_evaluation(args, evs, report, ckpt, tags)
    record = evaluation_record(
        ev,
        model_path=str(model_path),
        model_fingerprint=context["model fingerprint"],
        eval_set_fingerprint=fingerprint,
        mlflow_run_id=run_id,
        model_id=model_id,
        model_uri=f"models:/{model_id}" if model_id else None,
        git_commit=context["git commit"],
        params=dataclasses.asdict(params),
        level_settings=dataclasses.asdict(levels),
        val_fraction=val_fraction,
        sets={name: set_record(e, next((u for u in user_sets if u.name == name), None)) for name, e in evs.items()},
        user_sets_dir=str(args.user_sets),
        set_summary=sets_summary(evs),
    )
    write_text_atomic(args.evaluation, json.dumps(record, indent=2) + "\n")
    write_text_atomic(args.metrics, json.dumps({**metrics_dict(ev), "sets": sets_summary(evs)}, indent=2) + "\n")
    write_text_atomic(args.table, table_csv(ev))
    write_text_atomic(args.plot, plot_csv(ev))
    write_text_atomic(args.report, report)
    if args.headline:
        write_text_atomic(args.headline, json.dumps(headline(evs), indent=2) + "\n")
    if args.levels:
        write_text_atomic(args.levels, levels_csv(evs))
    if args.sets_plot:
        write_text_atomic(args.sets_plot, sets_csv(evs))
    print(
        report if getattr(args, "verbose", False) else "\n".join(console_summary(sets_summary(evs), str(args.report)))
    )
    if opus_cache is not None and opus_cache.hits + opus_cache.misses:
        total = opus_cache.hits + opus_cache.misses
        print(f"  Opus baseline: {opus_cache.hits} of {total} clip results reused from {opus_cache.folder}")
    return 0
