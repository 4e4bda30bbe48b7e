"""Reading a stage's ``manifest.csv`` (one row per clip) with a clear error when it can't be used."""

from __future__ import annotations

import typing as tp
from pathlib import Path

import pandas as pd

from codec.errors import UserError


def read_manifest(folder: Path, required: tp.Sequence[str] = ("id", "path")) -> pd.DataFrame:
    """Read ``folder/manifest.csv`` with a clear error when it is missing or malformed."""
    path = folder / "manifest.csv"
    if not path.is_file():
        raise UserError(f"{path} not found: run the previous stage first (dvc repro)")
    df = pd.read_csv(path)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise UserError(f"{path} lacks column(s) {', '.join(missing)}; was it written by this version of codec?")
    return df
