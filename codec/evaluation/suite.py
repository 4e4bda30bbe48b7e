"""The evaluation suite: every named evaluation set a model is scored on.

``evaluate.sets`` names them (:data:`codec.evaluation.params.KNOWN_SETS`): ``held_out``, the
held-out speakers' clips as recorded (the primary set), the same clips through the
conditions of a real microphone and room (:mod:`codec.evaluation.conditions`), and speech
from a synthesizer the training corpus never used (:mod:`codec.evaluation.unseen`). Each set
is scored ours vs Opus at every bitrate and input level, and the promotion gates apply to
every one of them, so a model cannot pass by memorizing its training voices.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing as tp

from codec.errors import UserError
from codec.evaluation.conditions import CONDITIONS, apply
from codec.evaluation.params import HELD_OUT, UNSEEN_VOICE, EvaluateParams, LevelSettings
from codec.evaluation.sets import EvalClip, eval_set_fingerprint
from codec.evaluation.unseen import render_unseen


def build_sets(held_out: tp.Sequence[EvalClip], params: EvaluateParams) -> dict[str, list[EvalClip]]:
    """The evaluation sets of ``params.sets`` (name -> clips), in that order: the held-out
    clips as recorded, the same clips through each condition (a telephone band, a cheap
    microphone, a reverberant room, background noise: :mod:`codec.evaluation.conditions`,
    seeded per clip), and speech from a synthesizer the corpus never used
    (:func:`codec.evaluation.unseen.render_unseen`). Deterministic for the params."""
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
    return out


def sets_fingerprint(
    sets: tp.Mapping[str, tp.Sequence[EvalClip]], params: EvaluateParams, levels: LevelSettings
) -> str:
    """One fingerprint over every set (names, clips and the settings that build and score them)."""
    h = hashlib.sha256()
    h.update(json.dumps(dataclasses.asdict(params.conditions), sort_keys=True).encode())
    for name, clips in sets.items():
        h.update(name.encode() + b"\0" + eval_set_fingerprint(clips, params, levels).encode())
    return h.hexdigest()[:16]
