"""The evaluation suite: every named evaluation set a model is scored on.

``evaluate.sets`` names them (:data:`codec.evaluation.params.KNOWN_SETS`): ``held_out``, the
held-out speakers' clips as recorded (the primary set), the same clips through the
conditions of a real microphone and room (:mod:`codec.evaluation.conditions`), and speech
from a synthesizer the training corpus never used (:mod:`codec.evaluation.unseen`); and
every folder under ``data/eval_sets/`` (the user's own recordings, a team's real test set
held in DVC: :func:`load_user_set`). Each set
is scored ours vs Opus at every bitrate and input level, and the promotion gates apply to
every one of them, so a model cannot pass by memorizing its training voices.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tempfile
import typing as tp
from pathlib import Path

from codec.audio.io import read_mono
from codec.data.ingest import IngestParams, ingest
from codec.errors import UserError
from codec.evaluation.conditions import CONDITIONS, apply
from codec.evaluation.params import HELD_OUT, KNOWN_SETS, UNSEEN_VOICE, EvaluateParams
from codec.evaluation.sets import EvalClip, eval_set_fingerprint
from codec.evaluation.unseen import render_unseen


@dataclasses.dataclass
class UserSet:
    """A folder of the user's own recordings, read the way ingest reads recordings."""

    name: str
    folder: Path
    clips: list[EvalClip]
    inputs: int  # files and folders found under it
    accepted: int  # usable recordings (``clips`` holds the first ``user_set_max_clips``)
    rejected: list[dict[str, str]]  # source_path, reason, detail (ingest's reasons)


def user_set_folders(root: Path | None) -> dict[str, Path]:
    """Set name -> folder for every sub-folder of ``root`` (``data/eval_sets``): each is one
    evaluation set, named after the folder (characters other than letters, digits, ``_`` and
    ``-`` become ``_``). Files directly in ``root`` (its README) are not sets."""
    if root is None or not root.exists():
        return {}
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; it should hold one folder of recordings per evaluation set")
    out: dict[str, Path] = {}
    for p in sorted(root.iterdir()):
        if not p.is_dir() or p.name.startswith("."):
            continue
        name = re.sub(r"[^0-9A-Za-z_-]+", "_", p.name).strip("_") or "set"
        if name in KNOWN_SETS or name in out:
            raise UserError(
                f"{p}: the evaluation set name {name!r} is taken ({', '.join([*KNOWN_SETS, *out])}); rename the folder"
            )
        out[name] = p
    return out


def load_user_set(name: str, folder: Path, params: EvaluateParams, sample_rate: int) -> UserSet:
    """Every recording under ``folder`` through ingest (any format, nested; mono at ``sample_rate``,
    levels as recorded; unusable files rejected with ingest's reasons), then the first
    ``params.user_set_max_clips`` in id order, each cut to ``params.seconds``."""
    with tempfile.TemporaryDirectory(prefix="codec-eval-set-") as tmp:
        out = Path(tmp) / "set"
        result = ingest(folder, out, IngestParams(sample_rate=sample_rate, workers=1))
        rows = result.accepted.sort_values("id").head(params.user_set_max_clips)
        clips = [
            EvalClip(
                f"{name}/{row.id}",
                read_mono(out / str(row.path), frames=round(params.seconds * sample_rate)),
                sample_rate,
            )
            for row in rows.itertuples()
        ]
    rejected = [{str(k): str(v) for k, v in r.items()} for r in result.rejected.to_dict("records")]
    if not clips:
        raise UserError(
            f"evaluation set {name} ({folder}): none of its {result.inputs} inputs is usable audio "
            f"({', '.join(sorted({r['reason'] for r in rejected})) or 'empty folder'}); add recordings or remove it"
        )
    return UserSet(name, folder, clips, result.inputs, len(result.accepted), rejected)


def build_sets(
    held_out: tp.Sequence[EvalClip],
    params: EvaluateParams,
    user_sets: tp.Sequence[UserSet] = (),
) -> dict[str, list[EvalClip]]:
    """The evaluation sets of ``params.sets`` (name -> clips), in that order: the held-out
    clips as recorded, the same clips through each condition (a telephone band, a cheap
    microphone, a reverberant room, background noise: :mod:`codec.evaluation.conditions`,
    seeded per clip), and speech from a synthesizer the corpus never used
    (:func:`codec.evaluation.unseen.render_unseen`); then each of ``user_sets`` (the user's own
    recordings, :func:`load_user_set`). Deterministic for the params and the files."""
    if not held_out:
        raise UserError("no held-out clips to build the evaluation sets from")
    rate = int(held_out[0].sample_rate)
    out: dict[str, list[EvalClip]] = {}
    for name in params.sets:
        if name == HELD_OUT:
            out[name] = list(held_out)
        elif name in CONDITIONS:
            out[name] = [
                EvalClip(c.id, apply(name, c.audio, c.sample_rate, params.conditions, i), c.sample_rate)
                for i, c in enumerate(held_out)
            ]
        elif name == UNSEEN_VOICE:
            out[name] = render_unseen(params.unseen_clips, params.seconds, rate, params.conditions.seed)
        else:  # pragma: no cover (EvaluateParams.check refuses unknown names)
            raise UserError(f"unknown evaluation set {name!r}")
    for us in user_sets:
        if any(c.sample_rate != rate for c in us.clips):
            raise UserError(f"evaluation set {us.name}: read at another sample rate than the model's {rate} Hz")
        out[us.name] = list(us.clips)
    return out


def sets_fingerprint(sets: tp.Mapping[str, tp.Sequence[EvalClip]], params: EvaluateParams) -> str:
    """One fingerprint over every set (names, clips and the settings that build and score them)."""
    h = hashlib.sha256()
    h.update(json.dumps(dataclasses.asdict(params.conditions), sort_keys=True).encode())
    for name, clips in sets.items():
        h.update(name.encode() + b"\0" + eval_set_fingerprint(clips, params).encode())
    return h.hexdigest()[:16]
