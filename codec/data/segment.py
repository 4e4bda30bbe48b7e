"""Long recordings into utterances: cut at pauses, or at the times a corpus gives.

Both cutters take a stream of float32 ``[T, C]`` blocks (:func:`codec.audio.decode.iter_blocks`)
and hold at most one utterance plus one block, so a one-hour lecture costs what twenty
seconds of it do.

The pause detector is energy-based on purpose: the cuts only need to fall where nobody is
speaking, not to find every word, and a pause in a recording is where its short-term
energy drops towards the recording's own floor. Within each stretch of ``max_s`` seconds,
10 ms frames 35 dB under the stretch's speech (or within 6 dB of its noise floor, when
that is closer) are pause frames; the cut goes in the middle of the first run of at least
``PAUSE_S`` of them past ``min_s`` (or of the longest run, or at the quietest 200 ms, when
speech runs on). What is left at the end is cut at its pauses too, into pieces of at least
``min_s``.
"""

from __future__ import annotations

import dataclasses
import typing as tp

import numpy as np

PAUSE_S = 0.3  # a run of quiet frames this long is a pause between utterances
FRAME_S = 0.01


@dataclasses.dataclass(frozen=True)
class Piece:
    start: int  # first frame in the recording
    data: np.ndarray  # float32 [T, C]


def cut_at_pauses(blocks: tp.Iterable[np.ndarray], rate: int, min_s: float, max_s: float) -> tp.Iterator[Piece]:
    """Pieces of ``min_s``..``max_s`` seconds cut at pauses, in order, covering the whole stream.

    A short tail is joined to the piece before it (and the two cut again where both are
    ``min_s``..``max_s`` long); only a recording shorter than ``min_s`` gives a shorter piece.
    """
    max_n, min_n = int(max_s * rate), int(min_s * rate)
    buf: list[np.ndarray] = []
    have = 0
    start = 0
    held: Piece | None = None  # one piece kept back, so a short tail can join it
    for block in blocks:
        buf.append(block)
        have += block.shape[0]
        if have < max_n:
            continue
        data = np.concatenate(buf)
        while data.shape[0] >= max_n:
            cut = tp.cast(int, pause_cut(data[:max_n], rate, min_n))
            if held is not None:
                yield held
            held = Piece(start, data[:cut].copy())
            start += cut
            data = data[cut:]
        buf, have = [data], data.shape[0]
    rest = np.concatenate(buf) if buf else np.zeros((0, 1), np.float32)
    while rest.shape[0] >= 2 * min_n:  # the tail, at its real pauses only
        at = pause_cut(rest, rate, min_n, rest.shape[0] - min_n, need_pause=True)
        if at is None:
            break
        if held is not None:
            yield held
        held = Piece(start, rest[:at].copy())
        start += at
        rest = rest[at:]
    if rest.shape[0] == 0:
        if held is not None:
            yield held
        return
    if held is not None and rest.shape[0] < min_n:  # a short tail joins the piece before
        both = np.concatenate([held.data, rest])
        if both.shape[0] <= max_n:
            yield Piece(held.start, both)
            return
        # Too long together: cut the two again, where both sides are min_s..max_s long.
        n = both.shape[0]
        cut = tp.cast(int, pause_cut(both, rate, max(min_n, n - max_n), min(max_n, n - min_n)))
        yield Piece(held.start, both[:cut])
        yield Piece(held.start + cut, both[cut:])
        return
    if held is not None:
        yield held
    yield Piece(start, rest)


def pause_cut(x: np.ndarray, rate: int, min_n: int, max_n: int | None = None, need_pause: bool = False) -> int | None:
    """Where to end the utterance that starts ``x`` (``[T, C]``): a frame index in ``[min_n, max_n]``
    (``max_n``: the end of ``x``), in a pause; with ``need_pause``, None when there is none."""
    hop = max(1, int(FRAME_S * rate))
    mono = x.mean(axis=1) if x.ndim == 2 else x
    frames = mono[: mono.shape[0] // hop * hop].reshape(-1, hop)
    db = 10.0 * np.log10(np.mean(np.square(frames, dtype=np.float64), axis=1) + 1e-12)
    first = -(-min_n // hop)  # the first frame a cut may fall in
    last = len(db) if max_n is None else min(len(db), max_n // hop)
    if first >= last - 1:
        return None if need_pause else min_n
    floor, loud = np.percentile(db, [10, 95])
    # 35 dB under the speech, or just above a noise floor that is closer: gaps of digital
    # silence inside words pull the floor far down, so the floor alone would miss real pauses.
    quiet = db < max(floor + 6.0, loud - 35.0)
    # A run counts for its part within [first, last): its middle there is where the cut goes.
    inside = [(max(a, first), min(b, last)) for a, b in _runs(quiet) if b > first and a < last]
    pause = int(PAUSE_S / FRAME_S)
    long_enough = [(a, b) for a, b in inside if b - a >= pause]
    if long_enough:
        a, b = long_enough[0]
    elif need_pause:
        return None
    elif inside:
        a, b = max(inside, key=lambda r: r[1] - r[0])
    else:
        width = 20  # 200 ms
        smooth = np.convolve(db, np.ones(width) / width, mode="same")
        k = first + int(np.argmin(smooth[first:last]))
        a, b = k, k + 1
    return int(min(max((a + b) // 2 * hop, min_n), mono.shape[0] - 1))


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[start, end)`` of each run of True in ``mask``."""
    padded = np.concatenate([[False], mask, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def cut_spans(
    blocks: tp.Iterable[np.ndarray], rate: int, spans: tp.Sequence[tuple[float, float | None]]
) -> tp.Iterator[tuple[int, np.ndarray]]:
    """``(index, [T, C])`` for each ``(start_s, end_s)`` span (``end_s`` None: to the end), in order of
    start. Spans may overlap; a span past the end of the recording comes out short (or empty),
    so the caller can tell the corpus's times from the audio's."""
    order = sorted(range(len(spans)), key=lambda i: spans[i][0])
    bounds = [(round(a * rate), None if b is None else round(b * rate)) for a, b in (spans[i] for i in order)]
    buf: list[np.ndarray] = []
    buf_start = 0  # frame of buf's first sample
    have = 0
    k = 0
    for block in blocks:
        buf.append(block)
        have += block.shape[0]
        data = np.concatenate(buf) if len(buf) > 1 else buf[0]
        end_of_buf = buf_start + have
        while k < len(bounds) and bounds[k][1] is not None and tp.cast(int, bounds[k][1]) <= end_of_buf:
            a, b = bounds[k]
            yield order[k], data[max(0, a - buf_start) : tp.cast(int, b) - buf_start].copy()
            k += 1
        # Keep only what the spans still to come can need.
        keep_from = min([a for a, _ in bounds[k:]], default=end_of_buf)
        drop = max(0, min(keep_from, end_of_buf) - buf_start)
        data = data[drop:]
        buf, buf_start, have = [data], buf_start + drop, data.shape[0]
    data = np.concatenate(buf) if buf else np.zeros((0, 1), np.float32)
    for j in range(k, len(bounds)):
        a, b = bounds[j]
        hi = data.shape[0] if b is None else max(0, b - buf_start)
        yield order[j], data[max(0, a - buf_start) : hi].copy()
