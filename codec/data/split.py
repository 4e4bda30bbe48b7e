"""The train/validation split: a clip's side is decided by the SHA-1 of its id alone, so it
stays put when clips are added or removed."""

from __future__ import annotations

import hashlib
import typing as tp

Split = tp.Literal["train", "val"]


def split_of(clip_id: str, val_fraction: float) -> Split:
    """``"val"`` for about ``val_fraction`` of ids, decided by the SHA-1 of the id alone."""
    h = int.from_bytes(hashlib.sha1(clip_id.encode("utf-8")).digest()[:8], "big") / 2.0**64
    return "val" if h < val_fraction else "train"
