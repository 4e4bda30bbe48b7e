"""What the live encoder (:mod:`codec.inference.live`) and the decoder of a live stream
(:func:`codec.inference.pipeline.decode_from_stream`) share: the gain ramps of the chunks, and the
running DC estimate. Here so that neither imports the other."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from codec.audio import Array

DC_TIME_S = 10.0  # time constant of the running mean removed on both sides


class RunningMean:
    """A causal DC estimate: one-pole average of the samples so far (time constant
    :data:`DC_TIME_S`), updated per block; the first block starts it at its own mean."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.mean: float | None = None

    def update(self, x: Array) -> float:
        if x.shape[0]:
            m = float(np.mean(x, dtype=np.float64))
            if self.mean is None:
                self.mean = m
            else:
                a = 1.0 - math.exp(-x.shape[0] / (DC_TIME_S * self.rate))
                self.mean += a * (m - self.mean)
        return 0.0 if self.mean is None else self.mean


def gain_ramp_db(previous: float, gain: float, n: int) -> npt.NDArray[np.float64]:
    """A chunk's gain per sample (dB): from ``previous`` to ``gain`` linearly across its ``n``
    samples (reached at the last one); constant when they are equal."""
    if previous == gain or n == 0:
        return np.full(n, gain)
    return previous + (gain - previous) * (np.arange(1, n + 1) / n)


def scale_of(ramp_db: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """Linear factors of a dB curve, as float32 (a constant curve gives exactly the whole-file
    path's ``np.float32(10 ** (g / 20))``)."""
    return np.asarray(10.0 ** (ramp_db / 20.0), np.float32)


class LiveGains:
    """The decoder's side of :class:`LiveGain`: the chunks' gains as they arrive, and the
    per-sample curve to undo (:meth:`undo` over consecutive blocks of model-rate samples)."""

    def __init__(self, chunk_samples: int) -> None:
        self.chunk = chunk_samples
        self.gains: list[float] = []
        self.position = 0

    def add(self, gain_db: float) -> None:
        self.gains.append(float(gain_db))

    def undo(self, block: Array) -> Array:
        n = block.shape[0]
        curve = np.empty(n)
        i = 0
        while i < n:
            k, within = divmod(self.position + i, self.chunk)
            k = min(k, len(self.gains) - 1)
            gain = self.gains[k]
            previous = self.gains[k - 1] if k > 0 else gain
            take = min(n - i, self.chunk - within)
            ramp = gain_ramp_db(previous, gain, self.chunk)[within : within + take]
            curve[i : i + take] = ramp
            i += take
        self.position += n
        return (block / scale_of(curve)).astype(np.float32)
