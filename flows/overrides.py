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
import typing as tp
from pathlib import Path

import yaml

PARAMS_FILE = "params.yaml"


def flatten(section: tp.Mapping[str, tp.Any], prefix: str = "") -> dict[str, tp.Any]:
    """``{"normalize": {"mode": "peak"}}`` -> ``{"normalize.mode": "peak"}`` (lists are values)."""
    out: dict[str, tp.Any] = {}
    for key, value in section.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, tp.Mapping) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def hydra_value(value: tp.Any) -> str:
    """A Python value in Hydra's override grammar (what ``-S key=value`` takes)."""
    if isinstance(value, str):
        return value
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
        data = yaml.safe_load(Path(params_file).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{params_file}: expected a mapping of params.yaml sections")
        overrides.update(flatten(data))
    overrides.update(dict(set_params or {}))
    return overrides


def apply_overrides(repo: Path, overrides: tp.Mapping[str, tp.Any]) -> dict[str, tuple[tp.Any, tp.Any]]:
    """Write ``overrides`` into ``repo/params.yaml``; return ``{key: (old, new)}`` for what changed.

    Unknown keys are refused (as ``dvc exp run -S`` refuses them), so a typo in a
    schedule's parameters fails the run instead of being ignored.
    """
    if not overrides:
        return {}
    from dvc.utils.hydra import apply_overrides as dvc_apply_overrides

    path = repo / PARAMS_FILE
    before = flatten(yaml.safe_load(path.read_text()) or {})
    unknown = sorted(k for k in overrides if k not in before)
    if unknown:
        raise ValueError(f"{path}: no such param(s): {', '.join(unknown)} (known: {', '.join(sorted(before))})")
    dvc_apply_overrides(path, [f"{k}={hydra_value(v)}" for k, v in overrides.items()])
    after = flatten(yaml.safe_load(path.read_text()) or {})
    return {k: (before.get(k), after.get(k)) for k in overrides if before.get(k) != after.get(k)}
