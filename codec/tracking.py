"""MLflow names and look-ups: the tracking URI (``MLFLOW_TRACKING_URI``, else
``sqlite:///mlflow.db`` at the repo root), experiment, model and artifact names, and finding
the run that trained a checkpoint."""

from __future__ import annotations

import os
import tempfile
import typing as tp
from pathlib import Path

from codec.files import sha256_file
from codec.provenance import git_commit, repo_root

if tp.TYPE_CHECKING:
    from mlflow import MlflowClient


MODEL_NAME = "telugu-speech-codec"  # the registered model
EXPERIMENT = MODEL_NAME  # the experiment that training and evaluation runs go to
CHAMPION, CHALLENGER = "champion", "challenger"  # registry aliases
MODEL_ARTIFACT = "codec"  # the logged MLflow model's name in its run
# Where the train stage logs models/codec.pt in its run (mlflow.log_artifact(path, "checkpoint")).
CHECKPOINT_ARTIFACT = "checkpoint/codec.pt"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<repo root>/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def find_model_run(
    client: MlflowClient, experiment: str, checkpoint: Path, ckpt: tp.Mapping[str, tp.Any], max_runs: int = 20
) -> str | None:
    """The id of the MLflow run that trained ``checkpoint``, or ``None``.

    ``codec train`` does not (yet) record its run id in the checkpoint; when a future
    checkpoint carries ``mlflow_run_id`` it is used. Otherwise the newest finished runs
    tagged ``stage=train`` are searched for one whose logged ``checkpoint/<name>``
    artifact has the same SHA-256 as ``checkpoint`` (a tag alone could name the wrong model).
    """
    run_id = ckpt.get("mlflow_run_id")
    if isinstance(run_id, str) and run_id:
        return run_id
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    digest = sha256_file(checkpoint)
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string="tags.stage = 'train' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=max_runs,
    )
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            names = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}
            artifact = f"checkpoint/{checkpoint.name}"
            if artifact not in names:
                continue
            local = Path(client.download_artifacts(run.info.run_id, artifact, tmp))
            if sha256_file(local) == digest:
                return run.info.run_id
    return None


def logged_model_id(run_id: str, name: str = MODEL_ARTIFACT) -> str | None:
    """The id of the model ``name`` that run ``run_id`` logged (MLflow 3 logged models), or None."""
    import mlflow

    run = mlflow.get_run(run_id)
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{name}'",
        output_format="list",
    )
    return str(models[0].model_id) if models else None


def model_id_of(mv: tp.Any) -> str | None:
    """The logged model (MLflow 3) behind model version ``mv``: its ``model_id`` where the store
    fills it, else from a ``models:/<model id>`` source (how versions of logged models are made;
    the SQL store keeps only the source), else None (a version registered from a run path)."""
    found = getattr(mv, "model_id", None)
    if found:
        return str(found)
    source = str(getattr(mv, "source", "") or "")
    rest = source.removeprefix("models:/") if source.startswith("models:/") else ""
    return rest if rest and "/" not in rest and "@" not in rest else None


# --- what a run shows in the MLflow UI -------------------------------------------------------------

HELD_OUT_SET = "held_out"  # codec.evaluation.params.HELD_OUT (not imported: training reads this module)
WORST_SET = "worst_set"  # the "set" of the worst-set values that codec promote logs
# The metrics a run and its logged model carry per evaluation set, at one bitrate (``metric_key``):
# the held-out speakers in full (what ``codec models`` shows), every other set's amplitude ratio and
# PESQ. Every bitrate, codec, input level and clip is in the run's ``evaluation/`` tables instead
# (a run of the demo holds about 30 training curves, 8 system metrics and about 20 of these).
HELD_OUT_METRICS = ("snr_db", "amplitude_ratio", "mel_distance", "pesq", "stoi", "opus_pesq", "model_amplitude_ratio")
OTHER_SET_METRICS = ("amplitude_ratio", "pesq")


def set_metric_names(eval_set: str) -> tuple[str, ...]:
    """The metrics logged for ``eval_set`` (:data:`HELD_OUT_METRICS` or :data:`OTHER_SET_METRICS`)."""
    return HELD_OUT_METRICS if eval_set == HELD_OUT_SET else OTHER_SET_METRICS


def metric_key(eval_set: str, metric: str, kbps: float) -> str:
    """``held_out/pesq_6kbps``: an evaluation set's metric at ``kbps`` as logged to MLflow by
    ``codec evaluate`` and ``codec promote`` (the UI groups metrics on the part before ``/``)."""
    return f"{eval_set}/{metric}_{kbps:g}kbps"


NOTE = "mlflow.note.content"  # the description MLflow shows for a run and for a logged model
NOTE_SECTIONS = ("Training", "Evaluation", "Promotion")


def note_with(note: str, section: str, text: str) -> str:
    """``note`` (a description: one paragraph per section, ``**Training.** ...``) with the paragraph
    of ``section`` replaced by ``text``, the paragraphs in :data:`NOTE_SECTIONS` order."""
    paragraphs = [p for p in note.split("\n\n") if p.strip() and not p.startswith(f"**{section}.**")]
    paragraphs.append(f"**{section}.** {text.strip()}")

    def order(p: str) -> int:
        found = [i for i, s in enumerate(NOTE_SECTIONS) if p.startswith(f"**{s}.**")]
        return found[0] if found else len(NOTE_SECTIONS)

    return "\n\n".join(sorted(paragraphs, key=order))


def describe(client: MlflowClient, run_id: str, section: str, text: str, model_id: str | None = None) -> None:
    """Set the ``section`` paragraph of the description of run ``run_id`` and of its logged model."""
    run = client.get_run(run_id)
    client.set_tag(run_id, NOTE, note_with(run.data.tags.get(NOTE, ""), section, text))
    if model_id:
        model = client.get_logged_model(model_id)
        client.set_logged_model_tags(model_id, {NOTE: note_with((model.tags or {}).get(NOTE, ""), section, text)})


def _git(root: Path, *args: str) -> str:
    import subprocess

    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def source_tags(root: Path, entry: str) -> dict[str, str]:
    """MLflow's own source tags, so the UI shows where a run came from and links its commit
    (``mlflow.source.git.commit``, ``.repoURL``, ``.branch``, ``mlflow.source.name``: ``entry``,
    e.g. ``codec train``), and ``git_commit`` (with ``-dirty`` when the code differed; promotion
    records it on versions)."""
    commit = git_commit(root)
    tags = {"git_commit": commit, "mlflow.source.name": entry, "mlflow.source.type": "LOCAL"}
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit.removesuffix("-dirty")
        url = _git(root, "config", "--get", "remote.origin.url")
        branch = _git(root, "rev-parse", "--abbrev-ref", "HEAD")
        if url:
            tags["mlflow.source.git.repoURL"] = url
        if branch and branch != "HEAD":
            tags["mlflow.source.git.branch"] = branch
    return tags


def last_step(client: MlflowClient, run_id: str) -> int:
    """The highest step of any metric of run ``run_id`` (-1: none)."""
    run = client.get_run(run_id)
    steps = [m.step for key in run.data.metrics for m in client.get_metric_history(run_id, key)]
    return max(steps, default=-1)


def pandas_dataset(frame: tp.Any, folder: Path, name: str, digest: str) -> tp.Any:
    """An MLflow dataset of ``frame`` (a DataFrame: one row per clip) from ``folder``, named
    ``name``, with ``digest`` (a DVC hash or a fingerprint; MLflow keeps 36 characters)."""
    import warnings

    from mlflow.data.pandas_dataset import from_pandas

    with warnings.catch_warnings():
        # MLflow finds its local-file source registered twice and says so; and inferring the
        # schema (a cached property, read by log_input) it hints that integer columns cannot hold
        # missing values, which a clip table has none of: both are noise in the stage's log.
        warnings.simplefilter("ignore", UserWarning)
        dataset = from_pandas(frame, source=folder.as_posix(), name=name, digest=digest[:36] or None)
        _ = dataset.schema
        return dataset
