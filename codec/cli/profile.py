"""``codec profile NAME``: apply a params profile (``params-NAME.yaml``) to ``params.yaml``.

A profile file holds whole stage sections or parts of them (``params-gpu.yaml``: the GPU
training schedule and model, and the GPU profile's gates). Its values are written into
``params.yaml`` key by key with a round-trip YAML editor, so the comments, the order and
every key the profile does not name stay as they are, and ``git diff params.yaml`` shows
exactly what the profile changed. The result is checked with every stage's own loader
(``codec check-params``) on a temporary copy before ``params.yaml`` is replaced, so a
profile that does not fit leaves ``params.yaml`` untouched.

Then ``dvc repro`` (or ``dvc exp run``, which records the experiment with these params)
runs the pipeline under the profile; ``git checkout params.yaml`` goes back.
``--dry-run`` lists the changes without writing.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import typing as tp
from pathlib import Path

from codec.errors import UserError
from codec.params import PARAMS_FILE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="profile name (reads params-NAME.yaml) or a profile file's path")
    parser.add_argument("--params", type=Path, default=Path(PARAMS_FILE), help="params file (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="list the changes, write nothing")


def profile_path(name: str, params: Path) -> Path:
    """The profile file: ``name`` itself when it is a file, else ``params-<name>.yaml`` beside ``params``."""
    direct = Path(name)
    if direct.suffix in (".yaml", ".yml") and direct.is_file():
        return direct
    path = params.parent / f"params-{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem.removeprefix("params-") for p in params.parent.glob("params-*.yaml"))
        raise UserError(f"no profile {name!r}: {path} not found (profiles here: {', '.join(known) or 'none'})")
    return path


def _yaml() -> tp.Any:
    from ruamel.yaml import YAML

    y = YAML()  # round-trip: comments, order and flow style are kept
    y.preserve_quotes = True
    y.width = 4096
    return y


def merge(target: tp.Any, profile: tp.Mapping[str, tp.Any], where: str, changes: list[str]) -> None:
    """Write ``profile``'s values into ``target`` (both round-trip mappings), key by key; a key the
    target lacks is an error (a typo must not add a section no stage reads)."""
    for key, value in profile.items():
        here = f"{where}.{key}" if where else str(key)
        if key not in target:
            raise UserError(f"profile key {here} is not in params.yaml; check its spelling (or add it there first)")
        old = target[key]
        if isinstance(value, dict):
            if not isinstance(old, dict):
                raise UserError(f"profile key {here} is a section, but params.yaml holds a value there ({old!r})")
            merge(old, value, here, changes)
            continue
        if isinstance(old, dict):
            raise UserError(f"profile key {here} is a value, but params.yaml holds a section there")
        if _plain(old) != _plain(value):
            changes.append(f"{here}: {_plain(old)!r} -> {_plain(value)!r}")
            target[key] = value


def _plain(v: tp.Any) -> tp.Any:
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v)
    return str(v)


def apply(name: str, params: Path, dry_run: bool = False) -> list[str]:
    """Apply profile ``name`` to ``params``; returns the changes (``key: old -> new``)."""
    from ruamel.yaml import YAMLError

    from codec.cli.check_params import check
    from codec.files import write_text_atomic

    source = profile_path(name, params)
    if not params.is_file():
        raise UserError(f"params file not found: {params} (run from the repository root, or pass --params PATH)")
    y = _yaml()
    try:
        doc = y.load(params.read_text(encoding="utf-8"))
        prof = y.load(source.read_text(encoding="utf-8"))
    except YAMLError as e:
        raise UserError(f"can't read {params} or {source} as YAML: {e}") from None
    if not isinstance(prof, dict) or not prof:
        raise UserError(f"{source} must hold stage sections (train:, promote:, ...)")
    changes: list[str] = []
    merge(doc, prof, "", changes)
    buf = io.StringIO()
    y.dump(doc, buf)
    text = buf.getvalue()
    # Checked by every stage's loader on a copy first: a profile that does not fit changes nothing.
    fd, tmp = tempfile.mkstemp(prefix=".profile-", suffix=".yaml", dir=params.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            check(Path(tmp))
        except UserError as e:
            raise UserError(f"{params} under {source.name} would be refused: {e}; nothing was changed") from None
    finally:
        os.unlink(tmp)
    if not dry_run and changes:
        write_text_atomic(params, text)
    return changes


def run(args: argparse.Namespace) -> int:
    changes = apply(args.name, args.params, args.dry_run)
    verb = "would change" if args.dry_run else "changed"
    source = profile_path(args.name, args.params)
    if not changes:
        print(f"codec profile: {args.params} already holds {source.name}'s values")
        return 0
    print(f"codec profile: {source.name} {verb} {len(changes)} key(s) of {args.params}:")
    for line in changes:
        print(f"  {line}")
    if not args.dry_run:
        print("run dvc repro (or dvc exp run) to train and evaluate under it; git checkout params.yaml goes back")
    return 0
