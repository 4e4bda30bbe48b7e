"""Training data: the normalized manifest, a stable train/validation split, random segments.

The split hashes each clip's id (SHA-1), so a clip stays on its side when clips are
added or removed: a model is never validated on audio it was trained on in an
earlier run. Segments are drawn with an explicit ``torch.Generator`` whose state goes
into the checkpoint, which is what makes a resumed run draw the same batches as an
uninterrupted one.

Reads with ``soundfile`` and the standard library only (the training core's rule).
"""

from __future__ import annotations

import csv
import dataclasses
import typing as tp
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from codec.audio.io import read_mono
from codec.data.split import clip_split
from codec.errors import UserError
from codec.files import inside
from codec.training.augment import AugmentParams, augment_batch

MANIFEST = "manifest.csv"
REQUIRED_COLUMNS = ("id", "path", "duration_s", "sample_rate")


@dataclasses.dataclass(frozen=True)
class Clip:
    """One row of the manifest; ``path`` resolved against the manifest's folder."""

    id: str
    path: Path
    duration_s: float
    sample_rate: int
    speaker: str = ""  # "" when unknown: the clip is then its own speaker (codec.data.split)


def read_clips(data_dir: str | Path, sample_rate: int | None = None) -> list[Clip]:
    """The clips listed in ``data_dir/manifest.csv`` (``UserError`` when it can't be used)."""
    data_dir = Path(data_dir)
    manifest = data_dir / MANIFEST
    if not manifest.is_file():
        raise UserError(f"{manifest} not found; run the data stages first (dvc repro validate) or pass --data DIR")
    with manifest.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(
                f"{manifest}: missing column(s) {', '.join(missing)}; it must have {', '.join(REQUIRED_COLUMNS)}"
            )
        clips = []
        for line, row in enumerate(reader, start=2):
            try:
                audio_path = inside(data_dir, row["path"], f"{manifest}:{line}")
                clip = Clip(
                    row["id"],
                    audio_path,
                    float(row["duration_s"]),
                    int(float(row["sample_rate"])),
                    row.get("speaker") or "",
                )
            except ValueError as e:
                raise UserError(
                    f"{manifest}:{line}: bad value ({e}); duration_s and sample_rate must be numbers"
                ) from None
            if sample_rate is not None and clip.sample_rate != sample_rate:
                raise UserError(
                    f"{manifest}:{line}: clip {clip.id} is at {clip.sample_rate} Hz, the model at {sample_rate} Hz; "
                    "re-run normalize (it resamples) or change train.model.sample_rate"
                )
            if not clip.path.is_file():
                raise UserError(
                    f"{manifest}:{line}: audio file {clip.path} is missing; re-run the data stages (dvc repro)"
                )
            clips.append(clip)
    if not clips:
        raise UserError(f"{manifest} lists no clips; check the ingest source and re-run the data stages")
    return clips


def split_clips(clips: tp.Sequence[Clip], val_fraction: float) -> tuple[list[Clip], list[Clip]]:
    """(train, val) by speaker (:func:`codec.data.split.clip_split`): no speaker is on both sides;
    ``UserError`` when a side is empty."""
    train = [c for c in clips if clip_split(c.id, c.speaker, val_fraction) == "train"]
    val = [c for c in clips if clip_split(c.id, c.speaker, val_fraction) == "val"]
    if not train or not val:
        raise UserError(
            f"the split with val_fraction={val_fraction} leaves {len(train)} training and {len(val)} validation "
            f"clips of {len(clips)} ({len({c.speaker or c.id for c in clips})} speakers; the split is by speaker, "
            "so every clip of a speaker is on one side); add speakers or change train.val_fraction"
        )
    return train, val


class SegmentSampler:
    """Random fixed-length segments from a list of clips.

    A clip is drawn with probability proportional to its duration (each second of audio
    equally likely), then a uniform offset; clips shorter than a segment are
    zero-padded at the end. ``cache=True`` keeps every clip in memory after its first
    read (the default corpus is a few minutes); ``False`` reads each segment from disk.
    With ``augment`` enabled, every batch goes through
    :func:`codec.training.augment.augment_batch`, seeded from the same generator.
    """

    def __init__(
        self,
        clips: tp.Sequence[Clip],
        segment_length: int,
        cache: bool = True,
        augment: AugmentParams | None = None,
    ) -> None:
        if not clips:
            raise ValueError("no clips to sample from")
        self.clips = list(clips)
        self.augment = augment if augment is not None and augment.enabled else None
        self.rate = int(self.clips[0].sample_rate)
        self.segment_length = segment_length
        self.cache = cache
        self._audio: dict[int, np.ndarray] = {}
        self._frames = [max(round(c.duration_s * c.sample_rate), 1) for c in self.clips]
        self._weights = torch.tensor(self._frames, dtype=torch.float64)

    def _segment(self, i: int, offset: int) -> np.ndarray:
        n = self.segment_length
        if self.cache:
            if i not in self._audio:
                self._audio[i] = read_mono(self.clips[i].path)
            seg = self._audio[i][offset : offset + n]
        else:
            seg = read_mono(self.clips[i].path, start=offset, frames=n)
        if len(seg) < n:
            seg = np.pad(seg, (0, n - len(seg)))
        return seg

    def sample(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """A batch ``[batch_size, 1, segment_length]`` drawn with ``generator``."""
        idx = torch.multinomial(self._weights, batch_size, replacement=True, generator=generator)
        u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
        out = np.empty((batch_size, 1, self.segment_length), dtype=np.float32)
        for b in range(batch_size):
            i = int(idx[b])
            room = max(self._frames[i] - self.segment_length, 0)
            out[b, 0] = self._segment(i, int(u[b] * (room + 1)))
        if self.augment is not None:
            seed = torch.randint(0, 2**31 - 1, (2,), generator=generator).tolist()
            out = augment_batch(out, self.rate, self.augment, np.random.default_rng(seed))
        return torch.from_numpy(out)


def validation_audio(clips: tp.Sequence[Clip], max_clips: int, max_seconds: float) -> list[tuple[str, Tensor]]:
    """Up to ``max_clips`` held-out clips (in id order), each cut to its first
    ``max_seconds``: ``[(id, audio [1, 1, T])]``."""
    out = []
    for clip in sorted(clips, key=lambda c: c.id)[:max_clips]:
        x = read_mono(clip.path, frames=int(max_seconds * clip.sample_rate))
        out.append((clip.id, torch.from_numpy(x)[None, None]))
    return out
