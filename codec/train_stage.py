"""``codec train``: the DVC stage entry around :func:`codec.train.train`, tracked in MLflow.

Reads the ``train`` section of ``params.yaml`` into :class:`codec.train.TrainParams`,
trains, and records the run in MLflow (tracking URI from ``MLFLOW_TRACKING_URI``, else
``sqlite:///mlflow.db`` at the repository root): every param, step metrics, system
metrics, tags for the git commit, the DVC hash of the data and the device, validation
audio (input and decoded) with a spectrogram comparison, and the model through
``mlflow.pytorch.log_model``. It also writes the DVC metrics JSON and the curves CSVs.

Under ``torchrun`` only rank 0 talks to MLflow and writes reports; the other ranks train.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import subprocess
import tempfile
import typing as tp
from pathlib import Path

from codec.errors import UserError
from codec.params import PARAMS_FILE, load_section

if tp.TYPE_CHECKING:
    import torch

    from codec.model import Codec
    from codec.train import TrainParams, TrainResult

EXPERIMENT = "telugu-speech-codec"
MODEL_ARTIFACT = "codec"


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


def run(args: argparse.Namespace) -> int:
    from codec.train import TrainParams, finish_distributed, train

    params = load_section(TrainParams, "train", args.params)
    data, out = Path(args.data), Path(args.out)
    if not (data / "manifest.csv").is_file():
        raise UserError(
            f"{data / 'manifest.csv'} not found; run the data stages first (dvc repro validate) or pass --data DIR"
        )
    rank = int(os.environ.get("RANK", "0"))
    try:
        if rank != 0 or args.no_mlflow:
            result = train(params, data, out)
            if rank == 0:
                if result.model_path.is_file():
                    stamp_checkpoint(result.model_path, data)
                write_reports(result, Path(args.metrics), Path(args.plots), Path(args.val_plots))
            return 0
        result = train_tracked(params, data, out, args.experiment)
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


def repo_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: cwd) holding ``.git`` or ``dvc.yaml``."""
    here = (start or Path.cwd()).resolve()
    for p in [here, *here.parents]:
        if (p / ".git").exists() or (p / "dvc.yaml").is_file():
            return p
    return here


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<repo root>/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def git_commit(root: Path) -> str:
    """``HEAD``'s hash, with ``-dirty`` when tracked files differ from it; ``unknown`` outside git.

    What the pipeline itself writes while ``dvc repro`` runs (``dvc.lock`` and the outs,
    metrics and plots that ``dvc.yaml`` declares) does not count: a run from a clean
    checkout is recorded as that commit, not as ``-dirty`` because an earlier stage
    updated its lock entry or metrics.
    """
    excludes = [f":(exclude){p}" for p in ["dvc.lock", *pipeline_outputs(root)]]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *excludes],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def pipeline_outputs(root: Path) -> list[str]:
    """The paths that ``root/dvc.yaml``'s stages declare as outs, metrics or plots."""
    import yaml

    try:
        stages = (yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return []
    paths = []
    for stage in stages.values():
        for key in ("outs", "metrics", "plots"):
            for entry in (stage or {}).get(key) or []:
                paths.extend([entry] if isinstance(entry, str) else list(entry))
    return sorted(set(paths))


def dvc_dir_md5(folder: Path) -> str:
    """The hash DVC gives a directory: MD5 of the JSON list of ``{"md5", "relpath"}``
    entries (sorted by path), plus ``.dir`` (as ``dvc_data``'s ``Tree.as_bytes``)."""
    entries = []
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h = hashlib.md5()
            with p.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            entries.append({"md5": h.hexdigest(), "relpath": p.relative_to(folder).as_posix()})
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def data_version(data: Path, root: Path) -> tuple[str, str]:
    """(hash, source) of the data folder: from ``dvc.lock`` when a stage outputs it, else
    computed as DVC would, else ``("untracked", "none")``."""
    try:
        rel = data.resolve().relative_to(root).as_posix()
    except ValueError:
        rel = None
    lock = root / "dvc.lock"
    if rel is not None and lock.is_file():
        import yaml

        stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
        for stage in stages.values():
            for out in stage.get("outs", []) or []:
                if str(out.get("path", "")).rstrip("/") == rel and out.get("md5"):
                    return str(out["md5"]), "dvc.lock"
    if data.is_dir():
        return dvc_dir_md5(data), "computed"
    return "untracked", "none"


def flatten(d: tp.Mapping[str, tp.Any], prefix: str = "") -> dict[str, tp.Any]:
    """``{"model": {"n_codebooks": 12}}`` → ``{"model.n_codebooks": 12}``."""
    out: dict[str, tp.Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def train_tracked(params: TrainParams, data: Path, out: Path, experiment: str) -> TrainResult:
    """:func:`codec.train.train` inside one MLflow run."""
    import mlflow

    from codec.train import train

    root = repo_root()
    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment(experiment)
    data_hash, data_source = data_version(data, root)
    import torch

    device = "cuda" if params.device != "cpu" and torch.cuda.is_available() else "cpu"
    with mlflow.start_run(log_system_metrics=True) as run:
        mlflow.set_tags(
            {
                "git_commit": git_commit(root),
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
            stamp_checkpoint(result.model_path, data, mlflow_run_id=run.info.run_id)
            mlflow.log_artifact(str(result.model_path), "checkpoint")
        log_model(result.model)
        print(f"MLflow run {run.info.run_id} in {mlflow.get_tracking_uri()}")
    return result


def data_loudness(data: Path) -> float | None:
    """Median integrated loudness (LUFS) of the training clips, from the normalize manifest."""
    import pandas as pd

    try:
        lufs = pd.read_csv(data / "manifest.csv", usecols=["lufs"])["lufs"].astype(float)
    except (ValueError, KeyError, OSError):  # no such column: a manifest from elsewhere
        return None
    lufs = lufs[lufs.between(-70.0, 0.0)]
    return round(float(lufs.median()), 2) if len(lufs) else None


def stamp_checkpoint(model_path: Path, data: Path, mlflow_run_id: str | None = None) -> None:
    """Record in the final checkpoint the loudness its training data had (``target_lufs``:
    ``codec encode`` brings inputs there) and the MLflow run it was logged to (so evaluate
    and promote log to the same run)."""
    from codec.model import atomic_torch_save, read_checkpoint

    ckpt = read_checkpoint(model_path)
    lufs = data_loudness(data)
    if lufs is not None:
        ckpt["target_lufs"] = lufs
    if mlflow_run_id:
        ckpt["mlflow_run_id"] = mlflow_run_id
    atomic_torch_save(ckpt, model_path)


def log_samples(model: Codec, params: TrainParams, data: Path, out: Path) -> None:
    """Validation clips (input and decoded at each served bitrate) and a spectrogram PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    import soundfile as sf
    import torch

    from codec.dataset import read_manifest, split_clips, validation_audio
    from codec.plots import spectrogram_panel

    if params.audio_samples <= 0:
        return
    cfg = model.config
    _, val = split_clips(read_manifest(data, cfg.sample_rate), params.val_fraction)
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


def log_model(model: Codec) -> None:
    """Log the codec with ``mlflow.pytorch.log_model`` (signature and input example: one
    second of audio ``[1, 1, T]`` float32 in, the reconstruction ``[1, 1, T]`` out)."""
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    from codec.model import ServingCodec, fold_weight_norm

    serving = ServingCodec(fold_weight_norm(model.to("cpu")))
    example = np.zeros((1, 1, model.config.sample_rate), dtype=np.float32)
    example[0, 0] = 0.1 * np.sin(2 * np.pi * 220 * np.arange(model.config.sample_rate) / model.config.sample_rate)
    with torch.no_grad():
        output = serving(torch.from_numpy(example)).numpy()
    signature = infer_signature(example, output)
    # Pickle, not MLflow 3's default pt2 (torch.export): the number of quantizers run is
    # data-dependent, which export refuses, and pickle keeps encode/decode callable.
    mlflow.pytorch.log_model(
        serving, name=MODEL_ARTIFACT, signature=signature, input_example=example, serialization_format="pickle"
    )


# --- DVC metrics and plots ---------------------------------------------------------------


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


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
    """Final metrics JSON, and the training and validation curves as CSV (x: ``step``)."""
    summary: dict[str, tp.Any] = {
        "step": result.step,
        "seconds": round(result.seconds, 2),
        "audio_seconds_per_second": round(result.audio_seconds_per_second, 3),
        "device": result.device,
        "precision": result.precision,
        "world_size": result.world_size,
    }
    summary.update({k.replace("/", "_"): round(v, 5) for k, v in result.val.items()})
    _atomic_write(metrics, json.dumps(summary, indent=2) + "\n")
    for path, columns, marker in [(plots, TRAIN_COLUMNS, "loss/total"), (val_plots, VAL_COLUMNS, "val/snr_db")]:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["step", *columns])
        for row in result.history:
            if marker in row:
                w.writerow([int(row["step"]), *(f"{row[k]:.6g}" for k in columns.values())])
        _atomic_write(path, buf.getvalue())
