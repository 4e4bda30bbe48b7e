"""``codec train``: the DVC stage entry around :func:`codec.training.loop.train`, tracked in MLflow.

Reads the ``train`` section of ``params.yaml`` into :class:`codec.training.params.TrainParams`,
trains, and records the run in MLflow (tracking URI from ``MLFLOW_TRACKING_URI``, else
``sqlite:///mlflow.db`` at the repository root): every param, step metrics, system
metrics, MLflow's source tags (the UI links the git commit), the DVC hash of the data and the
device, the training data as the run's dataset (its manifest, the DVC hash as digest), a
description in words (``mlflow.note.content``), validation audio (input and decoded) with a
spectrogram comparison, and the checkpoint. The served model
(:func:`codec.inference.served.log_model`) is logged into the same run by ``codec evaluate``, so
training does not depend on the inference code (an edit there re-runs evaluate, not train). It
also writes the DVC metrics JSON and the curves CSVs.

Under ``torchrun`` only rank 0 talks to MLflow and writes reports; the other ranks train.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import os
import tempfile
import typing as tp
from pathlib import Path

import pandas as pd
import soundfile as sf
import torch

from codec.audio.level import LevelSettings
from codec.data.normalize import load_params as load_normalize_params
from codec.errors import UserError
from codec.files import write_text_atomic
from codec.model.checkpoint import atomic_torch_save, read_checkpoint
from codec.model.codec import Codec
from codec.params import PARAMS_FILE, load_section
from codec.plots import spectrogram_panel
from codec.provenance import data_version, flatten, repo_root
from codec.tracking import EXPERIMENT, NOTE, note_with, pandas_dataset, source_tags, tracking_uri
from codec.training.dataset import read_clips, split_clips, validation_audio
from codec.training.loop import CHECKPOINT, TrainResult, train
from codec.training.params import NO_EFFECT_KEYS, TrainParams
from codec.training.runtime import finish_distributed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", default="data/normalized", help="folder with manifest.csv and the WAVs (default: %(default)s)"
    )
    parser.add_argument(
        "--out", default="models", help="output folder for codec.pt and checkpoints/ (default: %(default)s)"
    )
    parser.add_argument(
        "--metrics", default="reports/train/metrics.json", help="final metrics JSON for DVC (default: %(default)s)"
    )
    parser.add_argument(
        "--plots", default="reports/train/curves.csv", help="per-step training curves CSV (default: %(default)s)"
    )
    parser.add_argument(
        "--val-plots", default="reports/train/val_curves.csv", help="per-validation curves CSV (default: %(default)s)"
    )
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default: %(default)s)")
    parser.add_argument("--experiment", default=EXPERIMENT, help="MLflow experiment name (default: %(default)s)")
    parser.add_argument("--no-mlflow", action="store_true", help="train without MLflow tracking")


RESUME_ENV = "CODEC_TRAIN_RESUME"  # "1": continue a stopped run of the same params (set by the flow on a retry)


def resumable(checkpoint: Path, params: TrainParams) -> str | None:
    """Why ``checkpoint`` can't continue a run of ``params`` (``None``: it can): it must exist,
    have been written by a run of the same params (those that change results) and not be
    finished. A checkpoint left by another run is never resumed by a retry."""
    if not checkpoint.is_file():
        return f"no checkpoint at {checkpoint}"
    try:
        ckpt = read_checkpoint(checkpoint, map_location="cpu")
    except UserError as e:
        return str(e)
    saved = {k: v for k, v in (ckpt.get("params") or {}).items() if k not in NO_EFFECT_KEYS}
    if saved != params.result_dict():
        changed = sorted(
            k for k in set(saved) | set(params.result_dict()) if saved.get(k) != params.result_dict().get(k)
        )
        return f"{checkpoint} was written by a run with other params ({', '.join(changed)})"
    if int(ckpt.get("step", 0)) >= params.steps:
        return f"{checkpoint} is a finished run (step {ckpt.get('step')})"
    return None


def run(args: argparse.Namespace) -> int:
    params = load_section(TrainParams, "train", args.params)
    if os.environ.get(RESUME_ENV) == "1" and not params.resume:
        why_not = resumable(Path(args.out) / CHECKPOINT, params)
        if why_not is None:
            params = dataclasses.replace(params, resume=True)
            print(f"codec train: {RESUME_ENV}=1: continuing the stopped run from {Path(args.out) / CHECKPOINT}")
        else:
            print(f"codec train: {RESUME_ENV}=1 but starting over: {why_not}")
    data, out = Path(args.data), Path(args.out)
    if not (data / "manifest.csv").is_file():
        raise UserError(
            f"{data / 'manifest.csv'} not found; run the data stages first (dvc repro validate) or pass --data DIR"
        )
    levels = data_levels(data, args.params)  # recorded in the checkpoint
    rank = int(os.environ.get("RANK", "0"))
    try:
        if rank != 0 or args.no_mlflow:
            result = train(params, data, out)
            if rank == 0:
                if result.model_path.is_file():
                    stamp_checkpoint(result.model_path, levels)
                write_reports(result, Path(args.metrics), Path(args.plots), Path(args.val_plots))
            return 0
        result = train_tracked(params, data, out, args.experiment, levels)
        write_reports(result, Path(args.metrics), Path(args.plots), Path(args.val_plots))
        v = result.val
        print(
            f"trained {result.step} steps in {result.seconds:.0f} s on {result.device} ({result.precision}); "
            f"held-out at {max(params.model.bitrates_kbps):g} kbps: SNR {v.get('val/snr_db', float('nan')):.2f} dB, "
            f"amplitude ratio {v.get('val/amplitude_ratio', float('nan')):.3f}; model: {result.model_path}"
        )
        return 0
    finally:
        finish_distributed()


# --- MLflow ------------------------------------------------------------------------------


def train_tracked(params: TrainParams, data: Path, out: Path, experiment: str, levels: LevelSettings) -> TrainResult:
    """:func:`codec.training.loop.train` inside one MLflow run."""
    import mlflow  # heavy: only a tracked run imports it

    root = repo_root()
    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment(experiment)
    data_hash, data_source = data_version(data, root)
    device = "cuda" if params.device != "cpu" and torch.cuda.is_available() else "cpu"
    source = source_tags(root, "codec train")
    commit = source["git_commit"]
    # System metrics on the run only: the served model, logged later by codec evaluate, is logged
    # at a step after every metric of the run, so MLflow copies none of them to it. Its monitor's
    # INFO lines (started, no GPU, stopping, terminated) are not for the stage's log.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    with mlflow.start_run(run_name=run_name(params, device, commit), tags=source, log_system_metrics=True) as run:
        mlflow.set_tags(
            {
                "data_path": str(data),
                "data_version": data_hash,
                "data_version_source": data_source,
                "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                "world_size": os.environ.get("WORLD_SIZE", "1"),
                "stage": "train",
            }
        )
        mlflow.log_params(flatten(params.to_dict()))
        mlflow.log_dict(params.to_dict(), "train_params.json")
        n_clips = log_training_data(data, data_hash)

        def log(kind: str, step: int, metrics: dict[str, float]) -> None:
            mlflow.log_metrics(metrics, step=step)

        result = train(params, data, out, callback=log)
        mlflow.set_tag("precision", result.precision)
        mlflow.log_metrics(
            {"train/seconds": result.seconds, "train/audio_seconds_per_second": result.audio_seconds_per_second},
            step=result.step,
        )
        log_samples(result.model, params, data, out)
        if result.model_path.is_file():
            # The checkpoint names its run, so evaluate and promote log to the same run.
            stamp_checkpoint(result.model_path, levels, mlflow_run_id=run.info.run_id)
            mlflow.log_artifact(str(result.model_path), "checkpoint")
        text = training_note(params, result, data, data_hash, n_clips)
        mlflow.set_tag(NOTE, note_with(mlflow.get_run(run.info.run_id).data.tags.get(NOTE, ""), "Training", text))
        print(f"MLflow run {run.info.run_id} in {mlflow.get_tracking_uri()}")
    return result


def log_training_data(data: Path, data_hash: str) -> int | None:
    """Log the training data (its ``manifest.csv``: one row per clip) as the run's dataset, with the
    folder's DVC hash as digest (the MLflow UI lists it under the run's datasets); its clip count."""
    import mlflow

    try:
        manifest = pd.read_csv(data / "manifest.csv")
    except (OSError, ValueError, pd.errors.ParserError):
        return None
    dataset = pandas_dataset(manifest, data, data.as_posix(), data_hash)
    mlflow.log_input(dataset, context="training", tags={"dvc_hash": data_hash})
    return len(manifest)


def training_note(params: TrainParams, result: TrainResult, data: Path, data_hash: str, n_clips: int | None) -> str:
    """The run's description, training part: what was trained, on which data, how it validated."""
    v = result.val
    top = max(params.model.bitrates_kbps)
    clips = f"{n_clips} clips, " if n_clips is not None else ""
    kbps = ", ".join(f"{k:g}" for k in params.model.bitrates_kbps)
    return (
        f"The speech codec ({kbps} kbps) trained for {result.step} steps on {result.device} ({result.precision}) "
        f"in {result.seconds:.0f} s, on `{data.as_posix()}` ({clips}DVC {data_hash}). Held-out validation at "
        f"{top:g} kbps: SNR {v.get('val/snr_db', float('nan')):.2f} dB, amplitude ratio "
        f"{v.get('val/amplitude_ratio', float('nan')):.3f}. Evaluation and promotion log into this run."
    )


def run_name(params: TrainParams, device: str, commit: str) -> str:
    """What the run is, as the MLflow UI lists it: ``train 2000 steps cpu 7d7bb48`` (``-dirty`` when
    the code had uncommitted changes; the evaluation and promotion log into the same run), after
    the DVC experiment's name when ``dvc exp run -n NAME`` runs it (``seed-recipe: train ...``)."""
    short = "no-git" if commit == "unknown" else commit[:7] + ("-dirty" if commit.endswith("-dirty") else "")
    experiment = os.environ.get("DVC_EXP_NAME", "").strip()
    return f"{experiment + ': ' if experiment else ''}train {params.steps} steps {device} {short}"


def data_loudness(data: Path) -> float | None:
    """Median integrated loudness (LUFS) of the training clips, from the normalize manifest."""
    try:
        lufs = pd.read_csv(data / "manifest.csv", usecols=["lufs"])["lufs"].astype(float)
    except (ValueError, KeyError, OSError):  # no such column: a manifest from elsewhere
        return None
    lufs = lufs[lufs.between(-70.0, 0.0)]
    return round(float(lufs.median()), 2) if len(lufs) else None


def data_levels(data: Path, params_path: str | Path) -> LevelSettings:
    """The level settings of the training data: its median loudness (the normalize manifest's
    ``lufs``; ``normalize.target_lufs`` if it has none) and the peak ceiling and limiter window
    of ``normalize`` in the params file that made it."""
    norm = load_normalize_params(params_path)
    lufs = data_loudness(data)
    return LevelSettings(
        target_lufs=norm.target_lufs if lufs is None else lufs,
        peak_ceiling_db=norm.peak_ceiling_db,
        limiter_window_ms=norm.limiter_window_ms,
    )


def stamp_checkpoint(model_path: Path, levels: LevelSettings, mlflow_run_id: str | None = None) -> None:
    """Record in the final checkpoint the level settings of its training data (``level``:
    ``codec encode``, evaluation and the served model bring inputs there) and the MLflow run it
    was logged to (so evaluate and promote log to the same run)."""
    ckpt = read_checkpoint(model_path)
    ckpt["level"] = levels.to_checkpoint()
    ckpt.pop("target_lufs", None)  # older checkpoints' single key, now in "level"
    if mlflow_run_id:
        ckpt["mlflow_run_id"] = mlflow_run_id
    atomic_torch_save(ckpt, model_path)


def log_samples(model: Codec, params: TrainParams, data: Path, out: Path) -> None:
    """Validation clips (input and decoded at each served bitrate) and a spectrogram PNG."""
    import matplotlib  # heavy: only a tracked run draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    if params.audio_samples <= 0:
        return
    cfg = model.config
    _, val = split_clips(read_clips(data, cfg.sample_rate), params.val_fraction)
    clips = validation_audio(val, params.audio_samples, params.val_seconds)
    model = model.to("cpu").eval()
    top = cfg.n_quantizers_for(max(cfg.bitrates_kbps))
    fig, axes = plt.subplots(len(clips), 2, figsize=(10, 2.6 * len(clips)), squeeze=False)
    with tempfile.TemporaryDirectory() as tmp:
        for row, (clip_id, x) in enumerate(clips):
            x = x.float()
            sf.write(Path(tmp) / f"{clip_id}_input.wav", x[0, 0].numpy(), cfg.sample_rate, subtype="FLOAT")
            decoded: dict[float, torch.Tensor] = {}
            with torch.no_grad():
                for kbps in cfg.bitrates_kbps:
                    y = model(x, cfg.n_quantizers_for(kbps)).audio
                    decoded[kbps] = y
                    sf.write(
                        Path(tmp) / f"{clip_id}_decoded_{kbps:g}kbps.wav",
                        y[0, 0].clamp(-1, 1).numpy(),
                        cfg.sample_rate,
                        subtype="FLOAT",
                    )
            y = decoded[max(cfg.bitrates_kbps)]
            for col, (title, sig) in enumerate([("input", x), (f"decoded {cfg.bitrate_kbps(top):g} kbps", y)]):
                spectrogram_panel(axes[row][col], sig[0, 0].numpy(), cfg.sample_rate, f"{clip_id}: {title}")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        (Path(tmp) / "spectrograms.png").write_bytes(buf.getvalue())
        mlflow.log_artifacts(tmp, "samples")


# --- DVC metrics and plots ---------------------------------------------------------------


TRAIN_COLUMNS = {
    "loss": "loss/total",
    "l1": "loss/l1",
    "mel": "loss/mel",
    "snr_db": "train/snr_db",
    "amplitude_ratio": "train/amplitude_ratio",
    "lr": "train/lr",
}
VAL_COLUMNS = {
    "snr_db": "val/snr_db",
    "amplitude_ratio": "val/amplitude_ratio",
    "mel_distance": "val/mel_distance",
    "codebook_usage": "vq/usage",
}


def write_reports(result: TrainResult, metrics: Path, plots: Path, val_plots: Path) -> None:
    """Final metrics JSON (an output, not a DVC metric: the evaluate stage's headline is what
    experiments are compared on), and the training and validation curves as CSV (x: ``step``)."""
    summary: dict[str, tp.Any] = {
        "step": result.step,
        "seconds": round(result.seconds, 2),
        "audio_seconds_per_second": round(result.audio_seconds_per_second, 3),
        "device": result.device,
        "precision": result.precision,
        "world_size": result.world_size,
    }
    summary.update({k.replace("/", "_"): round(v, 5) for k, v in result.val.items()})
    write_text_atomic(metrics, json.dumps(summary, indent=2) + "\n")
    for path, columns, marker in [(plots, TRAIN_COLUMNS, "loss/total"), (val_plots, VAL_COLUMNS, "val/snr_db")]:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["step", *columns])
        for row in result.history:
            if marker in row:
                w.writerow([int(row["step"]), *(f"{row[k]:.6g}" for k in columns.values())])
        write_text_atomic(path, buf.getvalue())
