"""Resampling with libsoxr (high quality, linear phase), one resampler per rate pair and thread."""

from __future__ import annotations

import threading

import numpy as np
import soxr

from codec.audio import Array


def resample(x: Array, rate_in: int, rate_out: int) -> Array:
    """Resample mono ``[T]`` audio with libsoxr (high quality, linear phase).

    The same samples as ``soxr.resample(x, rate_in, rate_out, "HQ")`` (tested), from
    one resampler per rate pair and thread, cleared after each clip: ~8 % faster than
    a new one per call on five-second clips (``clear()`` redoes part of the setup,
    ~0.15 ms a call).
    """
    if rate_in == rate_out:
        return x
    stream = _resampler(rate_in, rate_out)
    try:
        y = stream.resample_chunk(np.asarray(x, np.float32), last=True)
    finally:
        stream.clear()
    return np.asarray(y, dtype=np.float32)


_local = threading.local()


def _resampler(rate_in: int, rate_out: int) -> soxr.ResampleStream:
    streams: dict[tuple[int, int], soxr.ResampleStream] = _local.__dict__.setdefault("resamplers", {})
    if (rate_in, rate_out) not in streams:
        if len(streams) >= 8:
            streams.clear()
        streams[(rate_in, rate_out)] = soxr.ResampleStream(rate_in, rate_out, 1, dtype="float32", quality="HQ")
    return streams[(rate_in, rate_out)]
