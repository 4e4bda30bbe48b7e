"""A look-ahead peak limiter that acts only in short spans around peaks above a ceiling.

Mono float32 ``[T]``; gains are linear, 1 outside the spans."""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt

from codec.audio import Array
from codec.audio.loudness import concat_ranges


@dataclasses.dataclass(frozen=True)
class LimiterSpans:
    """Where a limiter acts: ``gain[i]`` at sample ``index[i]``, 1 elsewhere.

    The spans are contiguous runs of samples; ``starts``/``lengths`` describe them
    and ``index``/``gain`` hold all their samples back to back (sorted, disjoint).
    """

    starts: npt.NDArray[np.int64]
    lengths: npt.NDArray[np.int64]
    index: npt.NDArray[np.int64]
    gain: Array

    @staticmethod
    def none() -> LimiterSpans:
        empty = np.zeros(0, np.int64)
        return LimiterSpans(empty, empty, empty, np.zeros(0, np.float32))

    def apply(self, x: Array) -> Array:
        y = x.copy()
        y[self.index] *= self.gain
        return y

    def curve(self, n: int) -> Array:
        return self.apply(np.ones(n, np.float32))

    @property
    def min_gain(self) -> float:
        return float(np.min(self.gain)) if self.gain.size else 1.0

    def touched(self) -> int:
        return int(np.count_nonzero(self.gain < 0.9999))


def limit_spans(
    x: Array,
    ceiling: float,
    window: int,
    gain: float = 1.0,
    magnitude: Array | None = None,
    candidates: npt.NDArray[np.int64] | None = None,
) -> LimiterSpans:
    """Look-ahead peak limiter, computed only around the peaks above ``ceiling``.

    The gain each sample needs is ``min(1, ceiling / |x|)``. Its running minimum
    over ``2·window + 1`` samples, smoothed by a ``window``-sample moving average,
    is never above what any sample needs (every average is over minima that
    include that sample), so the output never exceeds the ceiling, while the gain
    moves smoothly over ~``window`` samples on both sides of a peak (zero phase,
    no clicks) and is exactly 1 away from peaks. A sample's gain depends only on
    samples within 1.5·``window``, so it is computed on spans reaching 2·``window``
    beyond the peaks: the same result as over the whole clip, at the cost of the
    few percent of samples near peaks. All spans go through the two filters in one
    call each, laid end to end: a span's first and last 2·``window`` samples need
    no limiting (they are not above the ceiling), so what a filter sees across a
    junction equals the ``mode="nearest"`` edge it would see on the span alone;
    spans clamped at the clip's ends are the first and last, where the filters
    apply ``nearest`` themselves.

    The limiter acts on ``gain · x``. A make-up loop limits the same clip at several
    gains: it passes ``magnitude`` (``|x|``) and ``candidates`` (sorted indices that
    include every sample above ``ceiling / gain``) so no round rescans the clip.
    """
    if magnitude is None:
        magnitude = np.abs(x)
    if candidates is None:
        over = np.flatnonzero(magnitude > ceiling / gain)
    else:
        over = candidates[magnitude[candidates] > ceiling / gain]
    if over.size == 0:
        return LimiterSpans.none()
    margin = 2 * window
    # Peaks closer than two margins share a span.
    breaks = np.flatnonzero(np.diff(over) > 2 * margin)
    firsts = np.concatenate([[over[0]], over[breaks + 1]])
    lasts = np.concatenate([over[breaks], [over[-1]]])
    starts = np.maximum(firsts - margin, 0).astype(np.int64)
    lengths = (np.minimum(lasts + margin + 1, x.shape[0]) - starts).astype(np.int64)
    source = concat_ranges(starts, lengths)
    need = np.minimum(1.0, ceiling / np.maximum(magnitude[source] * np.float32(gain), 1e-12)).astype(np.float32)
    # Imported only when a peak needs limiting: scipy.ndimage costs ~0.3 s of codec encode's start-up.
    import scipy.ndimage

    floor = scipy.ndimage.minimum_filter1d(need, size=2 * window + 1, mode="nearest")
    smooth = scipy.ndimage.uniform_filter1d(floor, size=window, mode="nearest")
    # Guard against float rounding at the edges: never above what a sample needs.
    gain_curve = np.minimum(smooth, need)
    return LimiterSpans(starts, lengths, source, gain_curve)


def limit(x: Array, ceiling: float, window: int) -> tuple[Array, Array]:
    """Look-ahead peak limiter over a whole clip: returns (limited audio, gain curve), both ``[T]``.

    See :func:`limit_spans`.
    """
    spans = limit_spans(x, ceiling, window)
    return spans.apply(x).astype(np.float32), spans.curve(x.shape[0])
