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
import math
import types
import typing as tp
from pathlib import Path

import yaml

from codec.errors import UserError

T = tp.TypeVar("T")

PARAMS_FILE = "params.yaml"


# Bounds on what a params file may be, checked while it is read, before anything builds values
# from it: params.yaml is a few kilobytes, a few levels deep, and has no anchors or aliases (an
# alias bomb under a key nothing reads would otherwise pass here and take DVC's memory).
MAX_PARAMS_BYTES = 1 << 20
MAX_PARAMS_DEPTH = 32


class _Refused(Exception):
    """A params file the reader refuses for its shape (alias, duplicate key, depth)."""


class _ParamsLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses anchors and aliases, duplicate keys and deep nesting
    while composing, before any value is built."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: tp.Any, index: tp.Any) -> tp.Any:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused(
                f"line {line}: YAML anchors and aliases (&name, *name) are not allowed in a params file; "
                "write each value out"
            )
        self._depth += 1
        try:
            if self._depth > MAX_PARAMS_DEPTH:
                raise _Refused(
                    f"line {line}: values nested more than {MAX_PARAMS_DEPTH} levels deep; params.yaml needs a few"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[tp.Any, tp.Any]:
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            first: dict[tp.Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, tp.Hashable):
                    continue  # the base class refuses it
                line = key_node.start_mark.line + 1
                if key in first:
                    raise _Refused(f"line {line}: key {key!r} appears twice (first on line {first[key]}); keep one")
                first[key] = line
        return super().construct_mapping(node, deep)


def read_params(path: str | Path = PARAMS_FILE) -> dict[str, tp.Any]:
    """Read the whole params file as a dict (stage entry points only).

    Refused with a :class:`UserError`: a file that is not UTF-8 YAML holding a mapping, larger
    than :data:`MAX_PARAMS_BYTES`, nested deeper than :data:`MAX_PARAMS_DEPTH`, with YAML
    anchors or aliases, or with a key twice in one mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"params file not found: {p} (run from the repository root, or pass --params PATH)")
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_PARAMS_BYTES + 1)
    except OSError as e:
        raise UserError(f"cannot read params file {p}: {e.strerror or e}") from None
    if len(raw) > MAX_PARAMS_BYTES:
        raise UserError(f"{p} is larger than {MAX_PARAMS_BYTES >> 20} MiB; a params file is a few kilobytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{p} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_ParamsLoader) or {}  # a SafeLoader
    except _Refused as e:
        raise UserError(f"{p}: {e}") from None
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
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise UserError(f"{where}: expected a finite number, got {_short(value)}")
        return number
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        if not -MAX_INT <= value <= MAX_INT:
            raise UserError(f"{where}: expected an integer within +-2**63, got {_short(value)}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UserError(f"{where}: expected a string, got {value!r}")
        if not str(value).strip():
            raise UserError(f"{where}: expected a non-empty string, got {value!r}")
        return str(value)
    return value


MAX_INT = 2**63 - 1


def _short(value: tp.Any) -> str:
    """``value`` for a message, at most 40 characters (a 400-digit integer is not repeated)."""
    if isinstance(value, int) and abs(value) >= 10**30:
        return f"a {len(str(abs(value)))}-digit integer"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def load_section(cls: type[T], section: str, path: str | Path = PARAMS_FILE) -> T:
    """Load one stage section of the params file into dataclass ``cls``."""
    data = read_params(path)
    if section not in data:
        raise UserError(f"{path}: section '{section}' is missing; add it (see README: Parameters)")
    return from_dict(cls, data[section], f"{path}: {section}")
