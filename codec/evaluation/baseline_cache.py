"""The Opus baseline's measurements, kept across evaluations.

Opus on a clip depends on nothing a training changes: the clip's samples, the bitrate, the
mode, the frame length, libopus (PyAV's build) and the metrics' code. So :class:`OpusCache`
keeps each clip's Opus metrics (and, for the clips whose audio the report keeps, the decoded
samples) in a folder, keyed by a hash of all of those, and the next evaluation of any model on
the same clips reads them instead of coding and scoring them again (``dvc exp run -S
train.steps=20``: the baseline is the same as last time).

The folder (default :data:`DEFAULT_DIR` under the repository, ``CODEC_CACHE_DIR`` to move it)
holds one JSON file per clip and setting, and a ``.npy`` beside it when the audio was kept; a
file is written whole (a temporary name, then a rename), so concurrent evaluations share it
safely, and one that cannot be read is measured again and replaced. Deleting the folder costs
one slower evaluation, nothing else. Bump :data:`CACHE_VERSION` when the metrics change.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import typing as tp
from pathlib import Path

import numpy as np

from codec.audio import Array

CACHE_VERSION = 1  # the metrics' code: a change of what a stored value means starts afresh
DEFAULT_DIR = Path(".cache") / "opus"
ENV = "CODEC_CACHE_DIR"


class Entry(tp.NamedTuple):
    values: dict[str, float]  # the clip's metrics (NaN where a metric could not be computed)
    reasons: dict[str, str]  # why a metric is NaN
    effective_kbps: float
    audio: Array | None  # the decoded clip, when it was kept


def _libopus() -> str:
    import av

    return str(getattr(av, "__version__", "?"))


class OpusCache:
    """Opus measurements by clip and setting, in ``folder`` (see the module docstring).
    ``hits`` and ``misses`` count the lookups of this instance."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.hits = 0
        self.misses = 0
        self._opus = _libopus()

    @classmethod
    def default(cls, root: Path) -> OpusCache:
        """The cache at ``$CODEC_CACHE_DIR/opus``, else ``root``/:data:`DEFAULT_DIR`."""
        env = os.environ.get(ENV)
        return cls(Path(env) / "opus" if env else root / DEFAULT_DIR)

    def key(self, audio: Array, rate: int, kbps: float, mode: str, frame_ms: int) -> str:
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(audio, dtype="<f4").tobytes())
        h.update(json.dumps([CACHE_VERSION, self._opus, int(rate), float(kbps), mode, int(frame_ms)]).encode())
        return h.hexdigest()

    def get(self, key: str, need_audio: bool) -> Entry | None:
        """The stored entry (``None``: not stored, unreadable, or without the audio asked for)."""
        entry = self._read(key, need_audio)
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def _read(self, key: str, need_audio: bool) -> Entry | None:
        path = self.folder / key[:2] / f"{key}.json"
        try:
            doc = json.loads(path.read_text())
            values = {k: float("nan") if v is None else float(v) for k, v in doc["values"].items()}
            audio = np.load(path.with_suffix(".npy")) if need_audio else None
            return Entry(values, dict(doc["reasons"]), float(doc["effective_kbps"]), audio)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, key: str, entry: Entry) -> None:
        """Store ``entry`` (its audio too, when it has some); a folder that cannot be written
        costs only the reuse, never the evaluation."""
        path = self.folder / key[:2] / f"{key}.json"
        values = {k: (v if math.isfinite(v) else None) for k, v in entry.values.items()}
        doc = {"values": values, "reasons": entry.reasons, "effective_kbps": entry.effective_kbps}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if entry.audio is not None:
                _write(path.with_suffix(".npy"), lambda f: np.save(f, np.asarray(entry.audio, np.float32)))
            _write(path, lambda f: f.write(json.dumps(doc).encode()))
        except OSError:
            return


def _write(path: Path, fill: tp.Callable[[tp.BinaryIO], object]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            fill(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
