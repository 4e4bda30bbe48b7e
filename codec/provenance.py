"""Where a run came from: the repository root, the git commit (``-dirty`` when the code
differs), and the DVC version of a data folder."""

from __future__ import annotations

import hashlib
import json
import subprocess
import typing as tp
from pathlib import Path


def repo_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: cwd) holding ``.git`` or ``dvc.yaml``."""
    here = (start or Path.cwd()).resolve()
    for p in [here, *here.parents]:
        if (p / ".git").exists() or (p / "dvc.yaml").is_file():
            return p
    return here


def git_commit(root: Path) -> str:
    """``HEAD``'s hash, with ``-dirty`` when tracked files differ from it; ``unknown`` outside git.

    What the pipeline itself writes while ``dvc repro`` runs (``dvc.lock`` and the outs,
    metrics and plots that ``dvc.yaml`` declares) does not count: a run from a clean
    checkout is recorded as that commit, not as ``-dirty`` because an earlier stage
    updated its lock entry or metrics.
    """
    excludes = [f":(exclude){p}" for p in ["dvc.lock", *pipeline_outputs(root)]]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *excludes],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def pipeline_outputs(root: Path) -> list[str]:
    """The paths that ``root/dvc.yaml``'s stages declare as outs, metrics or plots."""
    import yaml

    try:
        stages = (yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return []
    paths = []
    for stage in stages.values():
        for key in ("outs", "metrics", "plots"):
            for entry in (stage or {}).get(key) or []:
                paths.extend([entry] if isinstance(entry, str) else list(entry))
    return sorted(set(paths))


def dvc_dir_md5(folder: Path) -> str:
    """The hash DVC gives a directory: MD5 of the JSON list of ``{"md5", "relpath"}``
    entries (sorted by path), plus ``.dir`` (as ``dvc_data``'s ``Tree.as_bytes``)."""
    entries = []
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h = hashlib.md5()
            with p.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            entries.append({"md5": h.hexdigest(), "relpath": p.relative_to(folder).as_posix()})
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def data_version(data: Path, root: Path) -> tuple[str, str]:
    """(hash, source) of the data folder: from ``dvc.lock`` when a stage outputs it, else
    computed as DVC would, else ``("untracked", "none")``."""
    try:
        rel = data.resolve().relative_to(root).as_posix()
    except ValueError:
        rel = None
    lock = root / "dvc.lock"
    if rel is not None and lock.is_file():
        import yaml

        stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
        for stage in stages.values():
            for out in stage.get("outs", []) or []:
                if str(out.get("path", "")).rstrip("/") == rel and out.get("md5"):
                    return str(out["md5"]), "dvc.lock"
    if data.is_dir():
        return dvc_dir_md5(data), "computed"
    return "untracked", "none"


def flatten(d: tp.Mapping[str, tp.Any], prefix: str = "") -> dict[str, tp.Any]:
    """``{"model": {"n_codebooks": 12}}`` → ``{"model.n_codebooks": 12}``."""
    out: dict[str, tp.Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
