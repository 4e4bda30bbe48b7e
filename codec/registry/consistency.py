"""Tags against aliases: what a killed (or older) ``codec promote`` left behind, and its repair.

The aliases are the truth: ``models:/telugu-speech-codec@champion`` is what ``codec encode``
loads. A version's ``decision`` tag must follow them: the version holding ``@champion`` is tagged
``champion`` (``@challenger``: ``challenger``), no other version claims either, and no version
is left ``pending`` (:mod:`codec.registry.transaction`). :func:`problems` lists each breach
(``codec models`` prints them); :func:`repair` fixes them (``codec promote`` runs it first,
inside the registry lock, and says what it did):

- a ``pending`` version: undone from its own tags (the alias back where it was, the version it
  replaced tagged as before), then deleted;
- a version claiming an alias it doesn't hold: retagged ``former-<alias>``;
- an alias on a version tagged otherwise (moved by hand in the MLflow UI): the tag follows it.
"""

from __future__ import annotations

import dataclasses
import time
import typing as tp

from codec.registry.transaction import PENDING, Undo, aliases, former, intent, rollback
from codec.tracking import CHALLENGER, CHAMPION

if tp.TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

# Without a lock (a remote store) a pending version this young may still be in flight elsewhere.
STALE_AFTER_S = 3600.0
ROLES = (CHAMPION, CHALLENGER)  # the aliases codec promote sets, strongest first


@dataclasses.dataclass
class Problem:
    """One version whose tags and the aliases disagree."""

    version: str
    kind: tp.Literal["pending", "claims", "alias"]
    message: str  # what is wrong
    repair: str  # what the next codec promote does about it
    target: str = ""  # the decision tag repair writes ("claims", "alias")


def _age(tags: tp.Mapping[str, str], now: float) -> float | None:
    try:
        return now - float(intent(tags)["started"])
    except (KeyError, ValueError, TypeError):
        return None


def _pending(v: str, tags: tp.Mapping[str, str], held: tp.Sequence[str], now: float) -> Problem:
    age = _age(tags, now)
    what = intent(tags)
    who = f"pid {what.get('pid', '?')} on {what.get('host', '?')}"
    when = f", {age:.0f} s ago" if age is not None else ""
    alias, prev = what.get("alias") or None, what.get("previous") or None
    msg = f"version {v} is pending: the codec promote that created it ({who}{when}) did not finish (killed?)"
    fix = f"the next codec promote deletes version {v}"
    if alias is not None and alias in held:
        msg += f", and @{alias} is on it (it was on {f'version {prev}' if prev else 'no version'} before)"
        fix += f" and puts @{alias} back on version {prev}" if prev else f" and removes @{alias}"
    return Problem(v, "pending", msg, fix)


def problems(client: MlflowClient, name: str, now: float | None = None) -> list[Problem]:
    """Every disagreement between the ``decision`` tags and the aliases of ``name`` (oldest first)."""
    from mlflow.exceptions import MlflowException

    now = time.time() if now is None else now
    try:
        al = aliases(client, name)
    except MlflowException:  # no registered model: nothing to disagree
        return []
    found: list[Problem] = []
    for mv in _versions(client, name):
        v, tags = str(mv.version), dict(mv.tags)
        held = [a for a in ROLES if al.get(a) == v]
        decision = tags.get("decision", "")
        if decision == PENDING:
            found.append(_pending(v, tags, held, now))
        elif held and decision != held[0]:
            found.append(
                Problem(
                    v,
                    "alias",
                    f"@{held[0]} is on version {v}, but it is tagged decision={decision or '(none)'} "
                    "(the alias was moved outside codec promote?)",
                    f"the next codec promote tags it decision={held[0]} (the alias is the truth)",
                    held[0],
                )
            )
        elif not held and decision in ROLES:
            where = f"on version {al[decision]}" if decision in al else "on no version"
            found.append(
                Problem(
                    v,
                    "claims",
                    f"version {v} is tagged decision={decision} but @{decision} is {where}",
                    f"the next codec promote tags it decision={former(decision)}",
                    former(decision),
                )
            )
    return found


def _versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    return sorted(client.search_model_versions(f"name = '{name}'"), key=lambda m: int(m.version))


def repair(client: MlflowClient, name: str, exclusive: bool, now: float | None = None) -> list[str]:
    """Fix what :func:`problems` finds; returns what it did, one line each. ``exclusive``: this
    process holds the registry lock, so every pending version is a leftover; without it, only
    those older than :data:`STALE_AFTER_S` are touched."""
    now = time.time() if now is None else now
    done: list[str] = []
    versions = {str(mv.version): dict(mv.tags) for mv in _versions(client, name)} if problems(client, name, now) else {}
    for v, tags in versions.items():
        if tags.get("decision") != PENDING:
            continue
        age = _age(tags, now)
        if not exclusive and (age is None or age < STALE_AFTER_S):
            done.append(
                f"left pending version {v} alone: no lock guards this store and it may still be running "
                f"elsewhere; it is removed once older than {STALE_AFTER_S:.0f} s"
            )
            continue
        problem = _pending(v, tags, [a for a in ROLES if aliases(client, name).get(a) == v], now)
        retagged = next((u for u, t in versions.items() if t.get("replaced_by") == v), None)
        undo = Undo(
            version=v,
            alias=intent(tags).get("alias") or None,
            previous=intent(tags).get("previous") or None,
            retagged=retagged,
        )
        steps = rollback(client, name, undo)
        done.append(f"repaired: {problem.message}: {'; '.join(steps)}")
    for p in problems(client, name, now):
        if p.kind == "pending":
            continue
        old = client.get_model_version(name, p.version).tags.get("decision", "")
        client.set_model_version_tag(name, p.version, "decision", p.target)
        client.set_model_version_tag(
            name, p.version, "repaired", f"decision was {old or '(none)'}: {p.message} (codec promote, {now:.0f})"
        )
        done.append(f"repaired: {p.message}: tagged it decision={p.target}")
    return done
