"""The MLflow model registry, changed all or nothing, in an order that survives ``kill -9``.

:func:`register` writes in this order, one MLflow call each:

1. create the version tagged ``decision=pending`` and ``promotion``, what it is about to do as
   JSON: ``decision``, ``alias``, ``previous`` (the version that alias was on), ``pid``,
   ``host``, ``started`` (Unix time);
2. re-read the champion and the alias (compare-and-set: refuse if either moved since the
   comparison), point the alias at the new version, read it back;
3. tag the version the alias came from ``decision=former-<alias>``, ``replaced_by=<new>``;
4. tag the new version with its decision: the commit point; then drop its ``promotion`` tag
   (only a pending version needs it; one left by a kill right here is harmless);
5. the caller's last step (``promotion.json``).

So a version claims ``champion`` only once it holds the alias, and a process killed between
any two calls leaves at most a ``pending`` version whose tags say how to undo it
(:func:`codec.registry.consistency.repair`, run by the next promotion). On an exception,
:func:`rollback` undoes at once, and only what this process did: its own version, the alias
only while it still points at that version, the registered model only if this process created
it and no version is left in it. One promotion at a time is :mod:`codec.registry.lock`'s job.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
import typing as tp

from codec.errors import UserError
from codec.tracking import CHAMPION

if tp.TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

PENDING = "pending"  # the decision tag of a version whose promotion has not committed
PROMOTION = "promotion"  # a pending version's tag: what its promotion is about to do (JSON)


class RegistryChanged(UserError):
    """Another promotion moved an alias while this one ran (possible without a lock: remote stores)."""


def intent(tags: tp.Mapping[str, str]) -> dict[str, tp.Any]:
    """The ``promotion`` tag of a pending version, parsed (empty when missing or unreadable)."""
    try:
        value = json.loads(tags.get(PROMOTION, ""))
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def former(alias: str) -> str:
    """The decision tag of a version an alias moved away from (``former-champion``)."""
    return f"former-{alias}"


def aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """alias -> version of the registered model ``name`` (MlflowException when there is none)."""
    return {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}


def champion_version(client: MlflowClient, name: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no such model, or no champion alias
        return None


@dataclasses.dataclass
class Undo:
    """What one promotion changed, so that :func:`rollback` can put back exactly that."""

    created_model: bool = False
    version: str | None = None  # the version it created
    alias: str | None = None  # the alias it pointed (or was about to point) at ``version``
    previous: str | None = None  # the version that alias was on before
    retagged: str | None = None  # ``previous``, once tagged former-<alias>


def _ensure_model(client: MlflowClient, name: str) -> bool:
    """Create the registered model if it is missing; whether this call created it."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return False
    except MlflowException:
        pass
    try:
        client.create_registered_model(name, description="Telugu speech codec (DAC-style, 16 kHz)")
        return True
    except MlflowException as e:
        if e.error_code == "RESOURCE_ALREADY_EXISTS":  # another process created it just now
            return False
        raise


def _check_unchanged(client: MlflowClient, name: str, *expected: tp.Mapping[str, str | None]) -> None:
    now = aliases(client, name)
    for alias, v in (pair for e in expected for pair in e.items()):
        if now.get(alias) != v:
            raise RegistryChanged(
                f"@{alias} of {name} is on {f'version {now[alias]}' if alias in now else 'no version'}, not on "
                f"{f'version {v}' if v else 'no version'} as this promotion expected: another codec promote changed "
                "it at the same time (no lock guards this store; see codec.registry.lock); this promotion was "
                "undone, re-run codec promote"
            )


def register(
    client: MlflowClient,
    name: str,
    *,
    source: str,
    run_id: str,
    tags: tp.Mapping[str, str],
    alias: str | None,
    finish: tp.Callable[[str], None],
    model_id: str | None = None,
    expected: tp.Mapping[str, str | None] | None = None,
    description: str | None = None,
) -> str:
    """Create a version of ``name`` with ``tags`` (their ``decision`` written last, see the module
    docstring) and ``description`` (why it was registered, in words: the registry page's
    Description column), point ``alias`` at it and call ``finish(version)`` (which writes
    ``promotion.json``).
    ``expected``: alias -> the version it must still be on (``None``: on none) when ``alias`` is set,
    else :class:`RegistryChanged`. On any exception, undo this call's changes and re-raise.
    Returns the version."""
    decision = tags["decision"]
    undo = Undo()
    try:
        undo.created_model = _ensure_model(client, name)
        previous = aliases(client, name).get(alias) if alias is not None else None
        intent = {
            "decision": decision,
            "alias": alias or "",
            "previous": previous or "",
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": round(time.time()),
        }
        pending = {**tags, "decision": PENDING, PROMOTION: json.dumps(intent)}
        mv = client.create_model_version(
            name, source=source, run_id=run_id, tags=pending, model_id=model_id, description=description
        )
        undo.version = str(mv.version)
        if alias is not None:
            _check_unchanged(client, name, expected or {}, {alias: previous})
            undo.alias, undo.previous = alias, previous
            client.set_registered_model_alias(name, alias, undo.version)
            _check_unchanged(client, name, {alias: undo.version})
            if previous is not None and client.get_model_version(name, previous).tags.get("decision") == alias:
                undo.retagged = previous
                client.set_model_version_tag(name, previous, "decision", former(alias))
                client.set_model_version_tag(name, previous, "replaced_by", undo.version)
        client.set_model_version_tag(name, undo.version, "decision", decision)
        client.delete_model_version_tag(name, undo.version, PROMOTION)
        finish(undo.version)
        return undo.version
    except BaseException as e:
        try:
            rollback(client, name, undo)
        except Exception as r:  # keep the first error; say what is left behind
            e.add_note(
                f"putting the registry back also failed ({type(r).__name__}: {r}); codec models lists "
                "what is left and the next codec promote repairs it"
            )
        raise


def rollback(client: MlflowClient, name: str, undo: Undo) -> list[str]:
    """Undo what ``undo`` records and nothing else; returns what it did, in words."""
    from mlflow.exceptions import MlflowException

    done: list[str] = []
    if undo.version is not None:
        v = undo.version
        back_on: str | None = None  # where this rollback put the alias back
        if undo.alias is not None and aliases(client, name).get(undo.alias) == v:
            if undo.previous is not None:
                try:
                    client.set_registered_model_alias(name, undo.alias, undo.previous)
                    back_on = undo.previous
                    done.append(f"put @{undo.alias} back on version {undo.previous}")
                except MlflowException:  # that version is gone: the alias goes with ours
                    done.append(f"removed @{undo.alias} (version {undo.previous}, where it was, is gone)")
            else:
                done.append(f"removed @{undo.alias}")
        # The version it replaced is tagged as before only if it holds the alias again (if another
        # promotion moved the alias on meanwhile, that one replaced it).
        if (
            undo.alias is not None
            and back_on is not None
            and undo.retagged == back_on
            and client.get_model_version(name, back_on).tags.get("replaced_by") == v
        ):
            client.set_model_version_tag(name, back_on, "decision", undo.alias)
            client.delete_model_version_tag(name, back_on, "replaced_by")
            done.append(f"tagged version {back_on} decision={undo.alias} again")
        client.delete_model_version(name, v)  # its aliases go with it
        done.insert(0, f"deleted version {v}")
    if undo.created_model and not client.search_model_versions(f"name = '{name}'"):
        client.delete_registered_model(name)
        done.append(f"deleted the registered model {name} (this promotion created it; it is empty)")
    return done
