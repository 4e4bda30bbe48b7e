"""Param overrides for a flow run, applied the way ``dvc exp run -S`` applies them.

``dvc exp run -S normalize.mode=peak`` (in the workspace, no ``--temp``/``--queue``)
rewrites ``params.yaml`` in place with Hydra's override grammar, keeping comments and
key order, and then reproduces. The flow does exactly that, through the same DVC helper
(:func:`dvc.utils.hydra.apply_overrides`), before the first stage runs.

Why in place and not a temporary params file that is restored afterwards: ``dvc.lock``
records the params each stage ran with. If ``params.yaml`` were put back after the run,
the workspace would hold outputs made with one set of params beside a ``params.yaml``
that says another, ``dvc status`` would call every touched stage changed, and the next
``dvc repro`` would silently redo the work. Written in place, ``params.yaml``,
``dvc.lock`` and the outputs always agree; ``git diff params.yaml`` shows what a run
changed and ``git checkout params.yaml && dvc repro`` goes back.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import typing as tp
from pathlib import Path

import yaml

from codec.params import PARAMS_FILE, flatten, read_params


def hydra_value(value: tp.Any) -> str:
    """A Python value in Hydra's override grammar (what ``-S key=value`` takes)."""
    if isinstance(value, str):
        # Quoted, so the grammar reads it as the string it is (spaces, ';', '=' included).
        # Hydra's rule: a quote inside is escaped, and backslashes before a quote (or the
        # closing quote) are doubled; other backslashes stay as they are.
        inner = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
        inner = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, inner)
        return f"'{inner}'"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)  # numbers, lists and dicts: JSON is valid override syntax


def parse_assignment(text: str) -> tuple[str, tp.Any]:
    """``"normalize.mode=peak"`` -> ``("normalize.mode", "peak")``; the value is read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"expected KEY=VALUE (like dvc exp run -S), got {text!r}")
    return key.strip(), yaml.safe_load(value)


def collect_overrides(params_file: Path | None, set_params: tp.Mapping[str, tp.Any] | None) -> dict[str, tp.Any]:
    """The dotted overrides of a run: a (partial) params file first, then ``set_params`` on top."""
    overrides: dict[str, tp.Any] = {}
    if params_file is not None:
        overrides.update(flatten(read_params(params_file)))
    overrides.update(dict(set_params or {}))
    return overrides


def check_params(path: Path, label: str | None = None) -> None:
    """``codec check-params`` on ``path``: every stage's own loader (types, ranges, allowed
    values, unknown keys), in a subprocess so the flow imports no stage code; ``ValueError``
    with the stage's message if one refuses."""
    proc = subprocess.run(
        [sys.executable, "-m", "codec", "check-params", "--params", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        message = (proc.stderr.strip() or proc.stdout.strip()).replace("codec check-params: error: ", "")
        raise ValueError(f"{label or path}: refused: {message.replace(str(path), PARAMS_FILE)}")


def apply_overrides(repo: Path, overrides: tp.Mapping[str, tp.Any]) -> dict[str, tuple[tp.Any, tp.Any]]:
    """Write ``overrides`` into ``repo/params.yaml``; return ``{key: (old, new)}`` for what changed.

    Unknown keys are refused (as ``dvc exp run -S`` refuses them), so a typo in a
    schedule's parameters fails the run instead of being ignored.
    """
    if not overrides:
        return {}
    from dvc.utils.hydra import apply_overrides as dvc_apply_overrides

    path = repo / PARAMS_FILE
    before = flatten(read_params(path))
    unknown = sorted(k for k in overrides if k not in before)
    if unknown:
        raise ValueError(f"{path}: no such param(s): {', '.join(unknown)} (known: {', '.join(sorted(before))})")
    # Applied to a copy first and checked by every stage's own loader, so a value a key
    # does not allow (a string for a number, a mode that does not exist) never reaches
    # params.yaml or a stage.
    with tempfile.TemporaryDirectory() as tmp:
        trial = Path(tmp) / PARAMS_FILE
        shutil.copyfile(path, trial)
        label = f"{path} with overrides {dict(overrides)}"
        try:
            dvc_apply_overrides(trial, [f"{k}={hydra_value(v)}" for k, v in overrides.items()])
        except Exception as e:  # DVC's own grammar errors
            raise ValueError(f"{label}: refused: {e}") from None
        check_params(trial, label=label)
        shutil.copyfile(trial, path)
    after = flatten(read_params(path))
    return {k: (before.get(k), after.get(k)) for k in overrides if before.get(k) != after.get(k)}


def compose_profile(repo: Path, choices: tp.Sequence[str]) -> dict[str, tuple[tp.Any, tp.Any]]:
    """Write ``repo/params.yaml`` composed from the repository's Hydra config (``conf/``, as
    ``.dvc/config``'s ``hydra`` section names it) with the group ``choices`` (``["train=gpu",
    "promote=gpu"]``): what ``dvc exp run -S train=gpu -S promote=gpu`` writes before it runs,
    through the same DVC helper. Checked by every stage's loader on a copy first; returns
    ``{key: (old, new)}`` for what changed."""
    if not choices:
        return {}
    from dvc.repo import Repo
    from dvc.utils.hydra import compose_and_dump

    bad = [c for c in choices if "=" not in c or c.startswith(("+", "~"))]
    if bad:
        raise ValueError(f"profile choices are GROUP=OPTION (like train=gpu), got {', '.join(map(repr, bad))}")
    with Repo(str(repo)) as dvc_repo:
        hydra = dict(dvc_repo.config.get("hydra", {}))
    if not hydra.get("enabled"):
        raise ValueError(f"{repo}: Hydra composition is off in .dvc/config, so there are no profiles to choose")
    config_dir = (repo / hydra.get("config_dir", "conf")).resolve()
    path = repo / PARAMS_FILE
    before = flatten(read_params(path))
    with tempfile.TemporaryDirectory() as tmp:
        trial = Path(tmp) / PARAMS_FILE
        label = f"params composed from {config_dir} with {', '.join(choices)}"
        try:
            compose_and_dump(trial, str(config_dir), None, hydra.get("config_name", "config"), "", list(choices))
        except Exception as e:  # Hydra's errors name the group and the options it has
            said = str(e).split("\nConfig search path")[0].strip()
            said = re.sub(r"\s*\n\s*", " ", said.replace(":\n\t", ": ").replace("\n\t", ", "))
            raise ValueError(f"{label}: refused: {said}") from None
        check_params(trial, label=label)
        shutil.copyfile(trial, path)
    after = flatten(read_params(path))
    return {k: (before.get(k), after.get(k)) for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)}
