"""The train/validation split, by speaker: every clip of a speaker is on one side.

A side is decided by the SHA-1 of the speaker's name alone, so it stays put when clips or
speakers are added or removed, and a held-out speaker's voice is never heard in training:
the evaluation measures a codec on voices it did not learn, not on ones it memorized.

Where a speaker comes from (:func:`speaker_of`): the ``speaker`` column of the manifest,
which ingest fills from the corpus's own metadata (:mod:`codec.data.layouts`: OpenSLR file
ids, Common Voice ``client_id``, Kaldi ``utt2spk``, …) or, for a folder per speaker, with
the first folder level under the source (``spk07/take3.wav`` -> ``spk07``; the embedded
corpus writes ``speaker_<voice>/utt_N.wav``). A file directly in the source folder has no
speaker; it is then its own speaker (the split falls back to per clip, as for any data
without speaker labels), and the evaluation report says how many held-out clips came
without one. A long recording that ingest cuts into utterances is one speaker when the
corpus names none (ingest writes the recording as its speaker), so the pieces of one
recording never land on both sides.

Where the corpus publishes its own lists (Common Voice's ``train/dev/test.tsv``, Kaldi's
``data/train`` and ``data/test`` folders: ingest's ``subset`` column), :func:`sides` follows them
for the speakers they name and hashes the rest.
"""

from __future__ import annotations

import hashlib
import typing as tp

Split = tp.Literal["train", "val"]


def split_of(key: str, val_fraction: float) -> Split:
    """``"val"`` for about ``val_fraction`` of keys (speakers), decided by the SHA-1 of the key alone."""
    h = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2.0**64
    return "val" if h < val_fraction else "train"


def speaker_of(clip_id: str, speaker: str | None) -> str:
    """The key the split hashes: the clip's speaker, or (no speaker known) the clip itself."""
    return speaker if speaker else clip_id


HELD_OUT_SUBSETS = frozenset({"dev", "test"})


def sides(clips: tp.Iterable[tuple[str, str | None, str | None]], val_fraction: float) -> dict[str, Split]:
    """Each clip's side, from ``(id, speaker, subset)``: where the corpus has its own lists
    (ingest's ``subset`` column), they decide for the speakers they name: a speaker with any
    clip in a dev or test list is held out (every clip of it: the split stays speaker-disjoint
    even where the lists are not), one named only in train lists trains. Every other speaker
    goes by the hash of its name (:func:`split_of`)."""
    rows = [(i, speaker_of(i, s), (sub or "").strip().lower()) for i, s, sub in clips]
    held = {key for _, key, sub in rows if sub in HELD_OUT_SUBSETS}
    listed = {key for _, key, sub in rows if sub == "train"}
    return {
        i: "val" if key in held else "train" if key in listed else split_of(key, val_fraction) for i, key, _ in rows
    }
