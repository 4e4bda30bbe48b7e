"""The evaluation set: held-out clips at their recorded level, and its fingerprint.

Clips are mono float32 ``[T]`` read from ``data/raw`` (before normalization). Two
evaluations compare only when their fingerprints (clip ids, samples, settings) are equal.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import typing as tp
from pathlib import Path

import numpy as np

from codec.audio import Array
from codec.audio.io import read_mono
from codec.data.split import sides
from codec.errors import UserError
from codec.evaluation.params import EvaluateParams
from codec.files import inside

EVALUATION_VERSION = 2  # 2: level settings are the model's (its checkpoint), not in the fingerprint


@dataclasses.dataclass(frozen=True)
class EvalClip:
    """One held-out clip: mono float32 ``audio`` ``[T]`` at ``sample_rate``, at its recorded level."""

    id: str
    audio: Array
    sample_rate: int


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise UserError(f"{path} not found; run the data stages first (dvc repro validate)")
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def held_out_ids(normalized: Path, val_fraction: float) -> list[str]:
    """Ids of the validation split (held-out speakers) among the clips that passed normalization, in id order."""
    rows = _read_csv(normalized / "manifest.csv")
    side = sides(((r["id"], r.get("speaker"), r.get("subset")) for r in rows), val_fraction)
    return sorted(i for i, s in side.items() if s == "val")


def spread_over_speakers(ids: tp.Sequence[str], speakers: tp.Mapping[str, str], n: int) -> list[str]:
    """``n`` of ``ids`` taken round-robin over their speakers (each speaker's clips in id order,
    speakers in name order), so a few clips cover every held-out voice, not the first one's;
    returned in id order. Clips without a speaker count as speakers of their own."""
    by_speaker: dict[str, list[str]] = {}
    for i in sorted(ids):
        by_speaker.setdefault(speakers.get(i) or i, []).append(i)
    queues = [by_speaker[k] for k in sorted(by_speaker)]
    picked: list[str] = []
    depth = 0
    while len(picked) < n and any(len(q) > depth for q in queues):
        picked += [q[depth] for q in queues if len(q) > depth][: n - len(picked)]
        depth += 1
    return sorted(picked)


def speakers_of(normalized: Path, ids: tp.Iterable[str]) -> dict[str, str]:
    """clip id -> speaker (``""`` when the manifest has none) for ``ids``."""
    by_id = {r["id"]: r.get("speaker") or "" for r in _read_csv(normalized / "manifest.csv")}
    return {i: by_id.get(i, "") for i in ids}


def load_eval_clips(raw: Path, ids: tp.Sequence[str], seconds: float, sample_rate: int) -> list[EvalClip]:
    """The clips ``ids`` from ``raw`` (at their recorded level), each cut to its first ``seconds``."""
    by_id = {r["id"]: r for r in _read_csv(raw / "manifest.csv")}
    clips = []
    for clip_id in ids:
        row = by_id.get(clip_id)
        if row is None:
            raise UserError(
                f"held-out clip {clip_id} is in the normalized manifest but not in {raw / 'manifest.csv'}; "
                "re-run the data stages (dvc repro normalize)"
            )
        rate = int(float(row["sample_rate"]))
        if rate != sample_rate:
            raise UserError(f"{raw / row['path']} is at {rate} Hz, the model at {sample_rate} Hz; re-run ingest")
        path = inside(raw, row["path"], f"{raw / 'manifest.csv'} (clip {clip_id})")
        if not path.is_file():
            raise UserError(f"{path} (clip {clip_id}) is missing; re-run the data stages (dvc repro ingest)")
        audio = read_mono(path, frames=round(seconds * rate))
        clips.append(EvalClip(clip_id, audio.astype(np.float32), rate))
    return clips


def eval_set_fingerprint(clips: tp.Sequence[EvalClip], params: EvaluateParams) -> str:
    """SHA-256 (first 16 hex digits) of the clip ids, their samples and every setting of the
    evaluation that changes the metrics: two evaluations compare only when their fingerprints
    are equal. The level settings are the model's own (its checkpoint's, what ``codec encode``
    uses), not the set's: two models each evaluated as they ship compare."""
    h = hashlib.sha256()
    settings = {
        "version": EVALUATION_VERSION,
        "levels_dbfs": [float(v) for v in params.levels_dbfs],
        "seconds": params.seconds,
    }
    h.update(json.dumps(settings, sort_keys=True).encode())
    for clip in clips:
        h.update(clip.id.encode() + b"\0" + str(clip.sample_rate).encode() + b"\0")
        h.update(np.ascontiguousarray(clip.audio, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]
