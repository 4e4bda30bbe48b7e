"""MLflow names and look-ups: the tracking URI (``MLFLOW_TRACKING_URI``, else
``sqlite:///mlflow.db`` at the repo root), experiment, model and artifact names, and finding
the run that trained a checkpoint."""

from __future__ import annotations

import hashlib
import os
import tempfile
import typing as tp
from pathlib import Path

from codec.provenance import repo_root

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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
    digest = _sha256(checkpoint)
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
            if _sha256(local) == digest:
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
