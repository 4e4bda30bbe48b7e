"""Reading a stage's ``manifest.csv`` (one row per clip) with a clear error when it can't be used.

A manifest is input like any other: its ``id`` and ``path`` columns decide where a stage
reads and writes, so they are checked on read. An id is a plain name (letters, digits,
``_`` and ``-``, what ingest makes), and a path is relative and stays inside the
manifest's folder; a row like ``../../x`` or ``/etc/passwd`` is refused, naming the row.
"""

from __future__ import annotations

import re
import typing as tp
from pathlib import Path, PurePosixPath

import pandas as pd

from codec.audio.io import AUDIO_EXTENSIONS
from codec.errors import UserError
from codec.files import inside

ID_PATTERN = re.compile(r"[0-9A-Za-z_][0-9A-Za-z_-]*")
# Longest id: ``<id>.wav`` and its staging names stay far below the 255 bytes of a file name
# (ingest makes ids of at most 120 characters, plus a piece's or a duplicate's suffix).
MAX_ID_CHARS = 200


def read_manifest(folder: Path, required: tp.Sequence[str] = ("id", "path")) -> pd.DataFrame:
    """Read ``folder/manifest.csv`` with a clear error when it is missing, malformed or unsafe."""
    path = folder / "manifest.csv"
    if not path.is_file():
        raise UserError(f"{path} not found: run the previous stage first (dvc repro)")
    try:
        df = pd.read_csv(path, dtype={"id": str, "path": str, "speaker": str})
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path} is not a readable CSV ({e}); re-run the stage that writes it") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise UserError(f"{path} lacks column(s) {', '.join(missing)}; was it written by this version of codec?")
    if "id" in df.columns:
        for row, cid in enumerate(df["id"], start=2):
            if not isinstance(cid, str) or not ID_PATTERN.fullmatch(cid):
                raise UserError(
                    f"{path}, line {row}: id {cid!r} is not a plain name (letters, digits, '_' and '-'); "
                    "ids name output files, so nothing else is accepted. Re-run codec ingest to rebuild the manifest"
                )
            if len(cid) > MAX_ID_CHARS:
                raise UserError(
                    f"{path}, line {row}: id {cid[:20]}... is {len(cid)} characters, more than {MAX_ID_CHARS}; "
                    "ids name output files. Re-run codec ingest to rebuild the manifest"
                )
        dupes = df["id"][df["id"].duplicated()]
        if len(dupes):
            raise UserError(f"{path}: id {dupes.iloc[0]!r} appears more than once; re-run codec ingest")
    if "path" in df.columns:
        root = folder.resolve()
        for row, rel in enumerate(df["path"], start=2):
            target = inside(root, rel, f"{path}, line {row}")
            if target == root or PurePosixPath(rel).suffix.lower() not in AUDIO_EXTENSIONS:
                raise UserError(
                    f"{path}, line {row}: path {rel!r} is not an audio file of the folder "
                    f"({', '.join(AUDIO_EXTENSIONS)}); re-run the stage that writes the manifest"
                )
    return df
