"""The MLflow model registry, changed all or nothing.

:func:`register` creates a model version, points an alias at it and runs the caller's
last step; on any exception it deletes what it created and puts the aliases back, so a
failed promotion leaves the registry as it was (DESIGN: "nothing is lost"). MLflow has no
transactions across these calls; the undo is explicit, and a crash of the process itself
(SIGKILL) between two calls could still leave a version behind, tagged but without an alias.
"""

from __future__ import annotations

import typing as tp

from codec.tracking import CHAMPION

if tp.TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion


def champion_version(client: MlflowClient, name: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no such model, or no champion alias
        return None


def register(
    client: MlflowClient,
    name: str,
    source: str,
    run_id: str,
    tags: tp.Mapping[str, str],
    alias: str | None,
    finish: tp.Callable[[str], None],
    model_id: str | None = None,
) -> str:
    """Create a version of ``name`` with ``tags``, point ``alias`` at it and call
    ``finish(version)`` (which writes ``promotion.json``); on any exception, put the registry
    back as it was and re-raise. Returns the version."""
    from mlflow.exceptions import MlflowException

    try:
        before: dict[str, str] | None = {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}
    except MlflowException:
        before = None
    created_model = False
    version: str | None = None
    try:
        if before is None:
            client.create_registered_model(name, description="Telugu speech codec (DAC-style, 16 kHz)")
            created_model = True
        mv = client.create_model_version(name, source=source, run_id=run_id, tags=dict(tags), model_id=model_id)
        version = str(mv.version)
        if alias is not None:
            client.set_registered_model_alias(name, alias, version)
        finish(version)
        return version
    except BaseException:
        rollback(client, name, before, created_model, version)
        raise


def rollback(
    client: MlflowClient, name: str, before: dict[str, str] | None, created_model: bool, version: str | None
) -> None:
    """Undo :func:`register`: delete the new version (or model), restore the aliases."""
    if created_model:
        client.delete_registered_model(name)
        return
    if version is not None:
        client.delete_model_version(name, version)
    if before is None:
        return
    now = {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}
    for alias in now.keys() - before.keys():
        client.delete_registered_model_alias(name, alias)
    for alias, v in before.items():
        if now.get(alias) != v:
            client.set_registered_model_alias(name, alias, v)
