"""Typed parameters, read once from ``params.yaml`` at a stage's entry point.

Library code takes these dataclasses; only :func:`read_params` reads a params file: the
stages' entry points through it or :func:`load_section`, the flow's overrides
(:mod:`flows.overrides`) through it with :func:`flatten`. Every stage section of
``params.yaml`` maps to one dataclass here (or, for the model stages, in the module that owns
them) and unknown keys are an error, so a typo in ``params.yaml`` never silently falls back
to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing as tp
from pathlib import Path

import yaml

from codec.errors import UserError

T = tp.TypeVar("T")

PARAMS_FILE = "params.yaml"


def read_params(path: str | Path = PARAMS_FILE) -> dict[str, tp.Any]:
    """Read the whole params file as a dict (stage entry points only)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"params file not found: {p} (run from the repository root, or pass --params PATH)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{p} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{p} must hold a mapping of stage sections, got {type(data).__name__}")
    return data


def flatten(section: tp.Mapping[str, tp.Any], prefix: str = "") -> dict[str, tp.Any]:
    """``{"normalize": {"mode": "peak"}}`` -> ``{"normalize.mode": "peak"}``: the dotted keys of
    ``dvc exp run -S`` (lists and empty mappings are values)."""
    out: dict[str, tp.Any] = {}
    for key, value in section.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, tp.Mapping) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def from_dict(cls: type[T], data: tp.Mapping[str, tp.Any] | None, where: str) -> T:
    """Build dataclass ``cls`` from ``data``, checking names and converting types.

    ``where`` names the section for error messages (``"params.yaml: normalize"``).
    """
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys are {', '.join(sorted(fields))}")
    hints = tp.get_type_hints(cls)
    kwargs: dict[str, tp.Any] = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{where}.{name}")
    try:
        obj = cls(**kwargs)
    except TypeError as e:
        raise UserError(f"{where}: {e}") from None
    check = getattr(obj, "check", None)
    if callable(check):
        check(where)
    return obj


def _convert(hint: tp.Any, value: tp.Any, where: str) -> tp.Any:
    origin = tp.get_origin(hint)
    args = tp.get_args(hint)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(hint, value, where)
    if origin in (tp.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, where)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is tp.Literal:
        if value not in args:
            raise UserError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else tp.Any
        out = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else tp.Any
        return {str(k): _convert(vt, v, f"{where}.{k}") for k, v in value.items()}
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def load_section(cls: type[T], section: str, path: str | Path = PARAMS_FILE) -> T:
    """Load one stage section of the params file into dataclass ``cls``."""
    data = read_params(path)
    if section not in data:
        raise UserError(f"{path}: section '{section}' is missing; add it (see README: Parameters)")
    return from_dict(cls, data[section], f"{path}: {section}")
