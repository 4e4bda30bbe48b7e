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
from codec.data.split import sides
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
    subset: str = ""  # the corpus's own train/dev/test list, "" when none (codec.data.split.sides)


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
                    row.get("subset") or "",
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
    """(train, val) by speaker (:func:`codec.data.split.sides`): no speaker is on both sides;
    ``UserError`` when a side is empty."""
    side = sides(((c.id, c.speaker, c.subset) for c in clips), val_fraction)
    train = [c for c in clips if side[c.id] == "train"]
    val = [c for c in clips if side[c.id] == "val"]
    if not train or not val:
        raise UserError(
            f"the split with val_fraction={val_fraction} leaves {len(train)} training and {len(val)} validation "
            f"clips of {len(clips)} ({len({c.speaker or c.id for c in clips})} speakers; the split is by speaker, "
            "so every clip of a speaker is on one side); add speakers or change train.val_fraction"
        )
    return train, val


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """Everything the generator decides about one batch: which clips, where in each, and the
    augmentation's seed. Reading it (:meth:`SegmentSampler.read`) draws nothing, so any process
    can read it and get the same batch."""

    clips: tuple[int, ...]
    offsets: tuple[int, ...]
    augment_seed: tuple[int, ...] | None


class SegmentSampler:
    """Random fixed-length segments from a list of clips.

    A clip is drawn with probability proportional to its duration (each second of audio
    equally likely), then a uniform offset; clips shorter than a segment are
    zero-padded at the end. ``cache=True`` keeps clips in memory after their first read, up to
    ``cache_bytes`` of float32 audio (0: no limit; past the budget a clip is read from disk
    each time); ``False`` reads each segment from disk (memory stays flat whatever the
    corpus). With ``augment`` enabled, every batch goes through
    :func:`codec.training.augment.augment_batch`, seeded from the same generator.
    """

    def __init__(
        self,
        clips: tp.Sequence[Clip],
        segment_length: int,
        cache: bool = True,
        augment: AugmentParams | None = None,
        cache_bytes: int = 0,
    ) -> None:
        if not clips:
            raise ValueError("no clips to sample from")
        self.clips = list(clips)
        self.augment = augment if augment is not None and augment.enabled else None
        self.rate = int(self.clips[0].sample_rate)
        self.segment_length = segment_length
        self.cache = cache
        self.cache_bytes = cache_bytes
        self._cached_bytes = 0
        self._audio: dict[int, np.ndarray] = {}
        self._frames = [max(round(c.duration_s * c.sample_rate), 1) for c in self.clips]
        self._weights = torch.tensor(self._frames, dtype=torch.float64)

    def _segment(self, i: int, offset: int) -> np.ndarray:
        n = self.segment_length
        if self.cache and i not in self._audio:
            size = 4 * self._frames[i]
            if not self.cache_bytes or self._cached_bytes + size <= self.cache_bytes:
                self._audio[i] = read_mono(self.clips[i].path)
                self._cached_bytes += self._audio[i].nbytes
        if i in self._audio:
            seg = self._audio[i][offset : offset + n]
        else:
            seg = read_mono(self.clips[i].path, start=offset, frames=n)
        if len(seg) < n:
            seg = np.pad(seg, (0, n - len(seg)))
        return seg

    def plan(self, batch_size: int, generator: torch.Generator) -> BatchPlan:
        """The next batch's :class:`BatchPlan`, drawn with ``generator``."""
        idx = torch.multinomial(self._weights, batch_size, replacement=True, generator=generator)
        u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
        clips = tuple(int(i) for i in idx)
        offsets = tuple(int(u[b] * (max(self._frames[i] - self.segment_length, 0) + 1)) for b, i in enumerate(clips))
        seed = None
        if self.augment is not None:
            seed = tuple(torch.randint(0, 2**31 - 1, (2,), generator=generator).tolist())
        return BatchPlan(clips, offsets, seed)

    def read(self, plan: BatchPlan) -> Tensor:
        """The batch ``[B, 1, segment_length]`` that ``plan`` describes (read, then augmented)."""
        out = np.empty((len(plan.clips), 1, self.segment_length), dtype=np.float32)
        for b, (i, offset) in enumerate(zip(plan.clips, plan.offsets, strict=True)):
            out[b, 0] = self._segment(i, offset)
        if self.augment is not None and plan.augment_seed is not None:
            out = augment_batch(out, self.rate, self.augment, np.random.default_rng(list(plan.augment_seed)))
        return torch.from_numpy(out)

    def sample(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """A batch ``[batch_size, 1, segment_length]`` drawn with ``generator``."""
        return self.read(self.plan(batch_size, generator))


class _PlanReader(torch.utils.data.Dataset):
    """A DataLoader worker's side of :class:`BatchStream`: a plan in, its batch out."""

    def __init__(self, sampler: SegmentSampler) -> None:
        self.sampler = sampler

    def __getitem__(self, plan: BatchPlan) -> Tensor:  # type: ignore[override]
        return self.sampler.read(plan)

    def __len__(self) -> int:  # never asked: the plans are an endless stream
        raise TypeError("a stream of batch plans has no length")


def _as_is(batch: Tensor) -> Tensor:
    return batch


class BatchStream:
    """The training batches, in order, each with what the step draws after it.

    The plans are drawn here, in the training process, from ``generator``, each followed by
    ``then(generator)`` (the step's own draws: the quantizer dropout), in the same order as
    drawing and reading one batch at a time: so the batches are the same for any ``workers``.
    With ``workers`` > 0, worker processes of a ``torch.utils.data.DataLoader`` read and
    augment them, ``prefetch`` batches per worker ahead, while the model steps; each worker
    keeps its own cache within an equal share of the sampler's budget. :attr:`rng_state` is
    the generator's state right after the last batch handed out (and its ``then`` draws): what
    a checkpoint saves so that a resumed run draws the batches an uninterrupted one would have.
    """

    def __init__(
        self,
        sampler: SegmentSampler,
        batch_size: int,
        generator: torch.Generator,
        then: tp.Callable[[torch.Generator], tp.Any],
        workers: int = 0,
        prefetch: int = 2,
    ) -> None:
        self.sampler, self.batch_size, self.generator, self.then = sampler, batch_size, generator, then
        self.rng_state = generator.get_state()
        self._drawn: list[tuple[tp.Any, Tensor]] = []  # (then's draws, state after) of plans in flight
        self._batches: tp.Iterator[Tensor] | None = None
        self._closed = False
        if workers > 0:
            worker_sampler = sampler
            if sampler.cache and sampler.cache_bytes:
                worker_sampler = SegmentSampler(
                    sampler.clips, sampler.segment_length, True, sampler.augment, max(sampler.cache_bytes // workers, 1)
                )
            loader = torch.utils.data.DataLoader(
                _PlanReader(worker_sampler),
                batch_size=None,
                sampler=self._plans(),  # type: ignore[arg-type]
                num_workers=workers,
                prefetch_factor=prefetch,
                collate_fn=_as_is,  # type: ignore[arg-type]
            )
            self._batches = iter(loader)

    def _plans(self) -> tp.Iterator[BatchPlan]:
        while True:
            plan = self.sampler.plan(self.batch_size, self.generator)
            self._drawn.append((self.then(self.generator), self.generator.get_state()))
            yield plan

    def __next__(self) -> tuple[Tensor, tp.Any]:
        """The next batch ``[B, 1, T]`` and what ``then`` drew after its plan."""
        if self._closed:
            raise StopIteration
        if self._batches is None:
            batch = self.sampler.sample(self.batch_size, self.generator)
            extra, self.rng_state = self.then(self.generator), self.generator.get_state()
            return batch, extra
        batch = next(self._batches)
        extra, self.rng_state = self._drawn.pop(0)
        return batch, extra

    def __iter__(self) -> BatchStream:
        return self

    def close(self) -> None:
        """Stop the worker processes (the stream can't be read after)."""
        if self._batches is not None:
            shutdown = getattr(self._batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            self._batches = None
        self._closed = True


def validation_audio(clips: tp.Sequence[Clip], max_clips: int, max_seconds: float) -> list[tuple[str, Tensor]]:
    """Up to ``max_clips`` held-out clips (in id order), each cut to its first
    ``max_seconds``: ``[(id, audio [1, 1, T])]``."""
    out = []
    for clip in sorted(clips, key=lambda c: c.id)[:max_clips]:
        x = read_mono(clip.path, frames=int(max_seconds * clip.sample_rate))
        out.append((clip.id, torch.from_numpy(x)[None, None]))
    return out
