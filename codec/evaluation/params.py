"""``params.yaml: evaluate``, and the loudness keys of ``normalize`` that inference uses."""

from __future__ import annotations

import dataclasses
import typing as tp

from codec.audio.level import LevelSettings as LevelSettings  # the model's, from its checkpoint
from codec.errors import UserError
from codec.evaluation.conditions import CONDITIONS, ConditionParams

OpusMode = tp.Literal["cbr", "vbr"]

HELD_OUT = "held_out"  # the held-out speakers as recorded: the primary set
UNSEEN_VOICE = "unseen_voice"  # speech from a synthesizer the corpus never used (codec.evaluation.unseen)
# Every set the evaluation knows: the held-out speakers as recorded, the same clips through
# each condition of codec.evaluation.conditions, and the unseen synthesizer.
KNOWN_SETS = (HELD_OUT, *CONDITIONS, UNSEEN_VOICE)


@dataclasses.dataclass
class EvaluateParams:
    """``params.yaml: evaluate``."""

    # Input levels of the sweep, RMS dBFS.
    levels_dbfs: list[float] = dataclasses.field(default_factory=lambda: [-40.0, -26.0, -16.0, -6.0])
    # Held-out clips evaluated (the first in id order), and seconds of each.
    max_clips: int = 8
    seconds: float = 4.0
    # Opus encoder modes to compare with: cbr (keeps to the bitrate) and/or vbr (libopus' default).
    opus_modes: list[OpusMode] = dataclasses.field(default_factory=lambda: tp.cast(list[OpusMode], ["cbr"]))
    opus_frame_ms: int = 20
    # Clips whose decoded audio and spectrograms are written and logged.
    audio_samples: int = 2
    # torch threads (0 = leave torch's default), in each worker.
    threads: int = 1
    # Processes the sets and bitrates are evaluated in (0 = every core this process may use).
    workers: int = 0
    # The evaluation sets, each scored ours vs Opus at every bitrate and input level; the
    # promotion gates apply to every one of them (codec.evaluation.sets.build_sets).
    sets: list[str] = dataclasses.field(default_factory=lambda: list(KNOWN_SETS))
    conditions: ConditionParams = dataclasses.field(default_factory=ConditionParams)
    # Clips of the unseen-synthesizer set (espeak-ng's Klatt voices), at the same seconds.
    unseen_clips: int = 4
    # Each folder under data/eval_sets/ is an evaluation set of the user's own recordings:
    # at most this many (the first in id order) are scored.
    user_set_max_clips: int = 50
    # Energy side information in the evaluated path (what codec encode sends by default,
    # codec.inference.energy); false evaluates the path without it (codec encode --no-energy).
    side_info: bool = True
    # With side_info: also score ours without it (ours_no_side_info: reported, not gated).
    side_info_compare: bool = True

    def check(self, where: str) -> None:
        if self.max_clips < 1:
            raise UserError(f"{where}.max_clips is {self.max_clips}; evaluate at least 1 clip")
        if self.seconds <= 0:
            raise UserError(f"{where}.seconds is {self.seconds}; it must be positive")
        if self.audio_samples < 0 or self.threads < 0 or self.workers < 0:
            raise UserError(f"{where}: audio_samples, threads and workers must be >= 0")
        if len(set(self.opus_modes)) != len(self.opus_modes):
            raise UserError(f"{where}.opus_modes {self.opus_modes} lists a mode twice")
        unknown = [s for s in self.sets if s not in KNOWN_SETS]
        if unknown or len(set(self.sets)) != len(self.sets) or HELD_OUT not in self.sets:
            raise UserError(
                f"{where}.sets {self.sets}: each of {', '.join(KNOWN_SETS)} at most once, {HELD_OUT} included"
                + (f" (unknown: {', '.join(unknown)})" if unknown else "")
            )
        if self.unseen_clips < 1 or self.user_set_max_clips < 1:
            raise UserError(f"{where}: unseen_clips and user_set_max_clips must be >= 1")
        self.conditions.check(f"{where}.conditions")
