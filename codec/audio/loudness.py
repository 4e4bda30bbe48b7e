"""ITU-R BS.1770-4 integrated loudness (LUFS), batch and streaming.

K-weighting is pyloudnorm's default design (``pyloudnorm.Meter``: RBJ-cookbook biquads, a +4 dB
high shelf at 1.5 kHz and a 38 Hz high-pass), written out in :func:`k_weighting_sos` so that
metering imports neither pyloudnorm nor ``scipy.signal`` until it filters with scipy (tests hold
the coefficients equal to pyloudnorm's and the loudness to ``Meter.integrated_loudness``). The
block gating (400 ms blocks, 75 % overlap, -70 LUFS absolute and -10 LU relative gates) is
vectorized here because pyloudnorm loops over blocks in Python.

Two filter paths: :class:`LoudnessMeter` (the normalize stage, re-metered after limiting)
runs scipy's compiled SOS cascade in float32; :class:`StreamingLoudness` and
:func:`loudness_lufs` (the inference path, ``codec encode``) run torchaudio's compiled
``lfilter`` in float64 with the filter state carried across pieces, because importing
``scipy.signal`` costs ~0.7 s of a command's start-up and torch is loaded there anyway. The
float64 path gives pyloudnorm's number to 1e-6 LU, the float32 one within ~1e-4 LU (tested)."""

from __future__ import annotations

import functools
import math
import typing as tp
from pathlib import Path

import numpy as np
import numpy.typing as npt

from codec.audio import Array


def _rbj_biquad(kind: str, gain_db: float, q: float, fc: float, rate: int) -> npt.NDArray[np.float64]:
    """One RBJ Audio-EQ-Cookbook biquad, ``[b0, b1, b2, 1, a1, a2]`` normalized by ``a0``."""
    amp = 10.0 ** (gain_db / 40.0)
    w0 = 2.0 * math.pi * fc / rate
    cos, alpha = math.cos(w0), math.sin(w0) / (2.0 * q)
    if kind == "high_shelf":
        root = 2.0 * math.sqrt(amp) * alpha
        b = [
            amp * ((amp + 1) + (amp - 1) * cos + root),
            -2.0 * amp * ((amp - 1) + (amp + 1) * cos),
            amp * ((amp + 1) + (amp - 1) * cos - root),
        ]
        a = [
            (amp + 1) - (amp - 1) * cos + root,
            2.0 * ((amp - 1) - (amp + 1) * cos),
            (amp + 1) - (amp - 1) * cos - root,
        ]
    elif kind == "high_pass":
        b = [(1 + cos) / 2.0, -(1 + cos), (1 + cos) / 2.0]
        a = [1 + alpha, -2.0 * cos, 1 - alpha]
    else:  # pragma: no cover - only the two K-weighting stages are built
        raise ValueError(kind)
    return np.array([*b, *a], np.float64) / a[0]


@functools.lru_cache(maxsize=16)
def k_weighting_sos(rate: int) -> npt.NDArray[np.float64]:
    """The two K-weighting biquads at ``rate`` as one SOS cascade ``[2, 6]`` (pyloudnorm's design)."""
    return np.stack(
        [
            _rbj_biquad("high_shelf", 4.0, 1.0 / math.sqrt(2.0), 1500.0, rate),
            _rbj_biquad("high_pass", 0.0, 0.5, 38.0, rate),
        ]
    )


_k_weighting_sos = k_weighting_sos  # the name the normalize stage's meter has used


# BS.1770's -70 LUFS absolute gate as a block energy: ``-0.691 + 10·log10(z) >= -70``.
_ABSOLUTE_GATE_ENERGY = 10.0 ** ((-70.0 + 0.691) / 10.0)


def gate_block_energies(z: npt.NDArray[np.float64]) -> float:
    """BS.1770-4 integrated loudness (LUFS) from mono 400 ms block energies ``z``:
    -70 LUFS absolute gate, then the -10 LU relative gate; ``-inf`` when nothing passes.

    Both gates are compared as energies (the relative gate is a tenth of the mean
    energy of the blocks that pass the absolute one), so only the result takes a log.
    """
    passed = z[z >= _ABSOLUTE_GATE_ENERGY]
    if passed.size == 0:
        return float("-inf")
    final = passed[passed > 0.1 * float(np.mean(passed))]
    if final.size == 0:
        return float("-inf")
    return -0.691 + 10.0 * math.log10(float(np.mean(final)))


@functools.cache
def _sosfilt_kernel() -> tp.Callable[..., None] | None:
    """scipy's private compiled kernel behind ``sosfilt`` (scipy is pinned in the lock), or None.

    Loaded from its file, not imported by name: ``import scipy.signal._sosfilt`` first runs
    ``scipy.signal``'s ``__init__``, 1.2 s of ``codec encode``'s start-up here, where the
    extension alone takes milliseconds. It is registered under its own name, so a later
    ``import scipy.signal`` uses this module rather than loading the extension twice."""
    import importlib.machinery
    import importlib.util
    import sys

    name = "scipy.signal._sosfilt"
    module = sys.modules.get(name)
    try:
        if module is None:
            import scipy

            folder = Path(scipy.__file__).parent / "signal"
            found = [folder / f"_sosfilt{s}" for s in importlib.machinery.EXTENSION_SUFFIXES]
            path = next((f for f in found if f.is_file()), None)
            spec = None if path is None else importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise ImportError(name)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules[name] = module
        return tp.cast(tp.Callable[..., None], module._sosfilt)
    except (ImportError, AttributeError, OSError):  # pragma: no cover - other scipy layouts
        try:
            from scipy.signal._sosfilt import _sosfilt

            return tp.cast(tp.Callable[..., None], _sosfilt)
        except ImportError:
            return None


def k_filter(sos: npt.NDArray[np.float32], x: Array) -> Array:
    """``scipy.signal.sosfilt(sos, x)`` from rest, for C-contiguous float32 ``sos`` and mono ``x``.

    Calls scipy's compiled cascade directly when this scipy has it: the public
    function's argument handling costs ~75 µs a call, more than filtering the few
    milliseconds around a clip's peaks that the make-up loop re-meters. Same values
    (tested against ``sosfilt``).
    """
    kernel = _sosfilt_kernel()
    if kernel is None or sos.dtype != np.float32:
        import scipy.signal

        return np.asarray(scipy.signal.sosfilt(sos, x), np.float32)
    y = np.array(x, dtype=np.float32, copy=True, order="C").reshape(1, -1)
    kernel(np.ascontiguousarray(sos), y, np.zeros((1, sos.shape[0], 2), np.float32))
    return y[0]


class StreamingKFilter:
    """The K-weighting cascade over a signal fed in pieces, in float64, the state carried over:
    scipy's compiled ``sosfilt`` cascade (:func:`_sosfilt_kernel`, no ``scipy.signal`` import)
    with its per-section state kept between calls, which is exactly the filter continued (tested
    against ``sosfilt`` over the whole signal). No torch: ``codec encode`` streams every input
    through it, and its ONNX runtime never imports torch.
    """

    def __init__(self, rate: int) -> None:
        self.sos = np.ascontiguousarray(k_weighting_sos(rate), dtype=np.float64)
        self._zi = np.zeros((1, self.sos.shape[0], 2))  # the cascade's state (direct form II transposed)

    def __call__(self, x: Array) -> npt.NDArray[np.float64]:
        y = np.array(x, dtype=np.float64, copy=True, order="C").reshape(1, -1)
        if y.shape[1] == 0:
            return y[0]
        kernel = _sosfilt_kernel()
        if kernel is None:  # pragma: no cover - other scipy layouts
            import scipy.signal

            out, self._zi[0] = scipy.signal.sosfilt(self.sos, y[0], zi=self._zi[0])
            return np.asarray(out, np.float64)
        kernel(self.sos, y, self._zi)
        return y[0]


class LoudnessMeter:
    """BS.1770-4 integrated loudness of one mono clip, re-measurable after gain or limiting.

    The K-weighted signal and its energy per 100 ms stretch between block edges
    are computed once. Loudness after a gain is then exact arithmetic, and after
    a limiter that touched a few short spans only those spans (plus the filter's
    decay) are filtered again: K-weighting is linear, so for ``y = g·x − d``,
    ``K(y) = g·K(x) − K(d)`` with ``d`` zero outside the spans.
    """

    BLOCK_S, STEP = 0.4, 0.25

    def __init__(self, x: Array, rate: int) -> None:
        if x.ndim != 1:
            raise ValueError(f"loudness metering expects mono audio [T], got shape {x.shape}")
        n = x.shape[0]
        if n < self.BLOCK_S * rate:
            raise ValueError(f"audio of {n / rate:.3f} s is shorter than one {self.BLOCK_S} s gating block")
        self.rate, self.n = rate, n
        # float32 filtering is 4x faster than float64 and agrees with pyloudnorm to ~1e-5 LU (tested).
        self.sos = _k_weighting_sos(rate).astype(np.float32)
        self.kx = k_filter(self.sos, x)
        # Block j covers samples [int(0.4·j·0.25·rate), int(0.4·(j·0.25+1)·rate)), as in pyloudnorm.
        num_blocks = int(np.round((n / rate - self.BLOCK_S) / (self.BLOCK_S * self.STEP))) + 1
        j = np.arange(num_blocks, dtype=np.float64)
        lo = (self.BLOCK_S * (j * self.STEP) * rate).astype(np.int64)
        hi = np.minimum((self.BLOCK_S * (j * self.STEP + 1) * rate).astype(np.int64), n)
        # Energy once per stretch between block edges, so each block's energy is a
        # difference of a short (float64) cumulative sum.
        self.edges = np.unique(np.concatenate([lo, hi]))
        # Stretches are 100 ms long (the hop) except where a block's end is clipped to
        # the clip's end: the regular ones are summed as the rows of a 2-D view in
        # float32 (~1e-6 relative), 15x faster than ``reduceat``, the rest by ``reduceat``.
        widths = np.diff(self.edges)
        step = int(widths[0])
        regular = int(np.argmax(widths != step)) if np.any(widths != step) else len(widths)
        rows = self.kx[: regular * step].reshape(regular, step)
        head = np.einsum("ij,ij->i", rows, rows).astype(np.float64)
        rest = (
            np.add.reduceat(
                np.square(self.kx[regular * step : self.edges[-1]], dtype=np.float64),
                self.edges[regular:-1] - regular * step,
            )
            if regular < len(widths)
            else np.zeros(0)
        )
        self.seg = np.concatenate([head, rest])
        self.energy = float(self.seg.sum())  # of the K-weighted signal, to the last block edge
        self._lo = np.searchsorted(self.edges, lo)
        self._hi = np.searchsorted(self.edges, hi)
        # Energy of the K-filter's impulse response left after 20/30/50 ms: -56/-75/-108 dB
        # (the same at any rate; its slowest pole is the 38 Hz high-pass). Cutting the
        # response to a changed span after 30 ms errs by < 1e-3 LU (tested against a
        # fresh meter): the removed peaks carry a few percent of a block's energy.
        self.tail = int(0.03 * rate)

    def _gate(self, seg: npt.NDArray[np.float64]) -> float:
        csum = np.concatenate([[0.0], np.cumsum(seg)])
        return gate_block_energies((csum[self._hi] - csum[self._lo]) / (self.BLOCK_S * self.rate))

    def lufs(self, gain: float = 1.0) -> float:
        """Integrated loudness of ``gain · x``."""
        return self._gate(self.seg * (gain * gain))

    def lufs_minus(
        self, gain: float, starts: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64], removed: Array
    ) -> float:
        """Integrated loudness of ``gain · x − d``, where ``d`` is ``removed`` laid over the spans
        ``[starts[i], starts[i] + lengths[i])`` back to back (sorted, disjoint) and 0 elsewhere.

        Spans whose filter tails overlap are grouped; the groups, each followed by
        the filter's decay, are laid end to end and K-filtered in one call (a group
        starts after the previous one's response has died away, as if from rest),
        and each sample's change of energy is added to its stretch between block edges.
        """
        seg = self.seg * (gain * gain)
        if len(starts) == 0:
            return self._gate(seg)
        ends = starts + lengths
        # A new group starts where a span begins after the previous span's tail.
        new_group = np.concatenate([[True], starts[1:] > ends[:-1] + self.tail])
        group_of = np.cumsum(new_group) - 1
        g_start = starts[new_group]
        g_end = np.minimum(self.n, np.maximum.reduceat(ends, np.flatnonzero(new_group)) + self.tail)
        g_len = g_end - g_start
        offsets = np.cumsum(g_len) - g_len
        total = int(g_len.sum())
        pos = concat_ranges(g_start, g_len)  # the clip sample in each slot
        d = np.zeros(total, np.float32)
        slot = concat_ranges(offsets[group_of] + starts - g_start[group_of], lengths)
        d[slot] = removed
        old = np.float32(gain) * self.kx[pos]
        new = old - k_filter(self.sos, d)
        delta = np.square(new, dtype=np.float64) - np.square(old, dtype=np.float64)
        # Cut each group where block edges fall, sum the pieces, and add each sum to
        # its stretch (stretch ``len(seg)`` is past the last edge and dropped).
        first = np.searchsorted(self.edges, g_start, side="right") - 1
        pieces = np.searchsorted(self.edges, g_end, side="left") - first
        stretch = concat_ranges(first, pieces)
        owner = np.repeat(np.arange(len(g_start)), pieces)
        cut = offsets[owner] + np.maximum(self.edges[np.minimum(stretch, len(self.edges) - 1)] - g_start[owner], 0)
        sums = np.add.reduceat(delta, cut)
        seg += np.bincount(stretch, weights=sums, minlength=len(seg) + 1)[: len(seg)]
        return self._gate(np.maximum(seg, 0.0))


def concat_ranges(starts: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """``range(starts[i], starts[i] + lengths[i])`` for every ``i``, concatenated, without a Python loop."""
    offsets = np.cumsum(lengths) - lengths
    return np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(starts - offsets, lengths)


def integrated_lufs(x: Array, rate: int) -> float:
    """BS.1770-4 integrated loudness of mono ``x`` (shape ``[T]``) in LUFS.

    Returns ``-inf`` when no block passes the absolute gate (silence), like pyloudnorm.
    Raises ``ValueError`` when the clip is shorter than one 400 ms block.
    """
    return LoudnessMeter(x, rate).lufs()


class StreamingLoudness:
    """BS.1770-4 integrated loudness of a mono signal fed in pieces; the same number as
    :func:`codec.audio.loudness.integrated_lufs` on the whole signal to ~1e-4 LU (same K-weighting
    filters, here in float64 through :class:`StreamingKFilter`, and the same 400 ms blocks at 100 ms
    steps, as pyloudnorm places them).

    Keeps the filter state and one float64 energy per 100 ms step, so memory grows by
    80 bytes per second of audio.
    """

    BLOCK_S = 0.4
    STEP = 0.25

    def __init__(self, rate: int) -> None:
        self.rate = int(rate)
        self._filter = StreamingKFilter(self.rate)
        self._n = 0
        self._grid = np.zeros(1, np.int64)  # block edges (starts and ends), sorted; grown on demand
        self._j = 0  # blocks whose edges are on the grid
        self._sums: list[float] = []  # K-weighted energy between consecutive grid edges

    def _edges(self, j: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        # Exactly codec.audio.loudness.integrated_lufs's arithmetic (int() of the same float expressions).
        lo = (self.BLOCK_S * (j * self.STEP) * self.rate).astype(np.int64)
        hi = (self.BLOCK_S * (j * self.STEP + 1) * self.rate).astype(np.int64)
        return lo, hi

    def _grow(self, upto: int) -> None:
        while self._grid[-1] < upto:
            j = np.arange(self._j, self._j + 1024, dtype=np.float64)
            lo, hi = self._edges(j)
            self._grid = np.unique(np.concatenate([self._grid, lo, hi]))
            self._j += 1024

    def add(self, x: Array) -> None:
        """Feed the next ``x`` ``[n]`` samples."""
        if not x.shape[0]:
            return
        sq = np.square(self._filter(x))
        start, end = self._n, self._n + x.shape[0]
        self._grow(end)
        first = int(np.searchsorted(self._grid, start, side="right")) - 1
        inner = self._grid[(self._grid > start) & (self._grid < end)] - start
        sums = np.add.reduceat(sq, np.concatenate([[0], inner]), dtype=np.float64)
        need = first + sums.shape[0]
        if len(self._sums) < need:
            self._sums.extend([0.0] * (need - len(self._sums)))
        for i, s in enumerate(sums.tolist()):
            self._sums[first + i] += s
        self._n = end

    @property
    def samples(self) -> int:
        return self._n

    def integrated(self) -> float:
        """Integrated loudness in LUFS (``-inf`` below the absolute gate). ``ValueError`` for
        less than one 400 ms block, like :func:`codec.audio.loudness.integrated_lufs`."""
        n, rate, block = self._n, self.rate, self.BLOCK_S
        if n < block * rate:
            raise ValueError(f"audio of {n / rate:.3f} s is shorter than one {block} s gating block")
        num_blocks = int(np.round((n / rate - block) / (block * self.STEP))) + 1
        lo, hi = self._edges(np.arange(num_blocks, dtype=np.float64))
        self._grow(int(hi[-1]))
        sums = np.zeros(self._grid.shape[0] - 1)
        sums[: len(self._sums)] = self._sums[: sums.shape[0]]
        csum = np.concatenate([[0.0], np.cumsum(sums)])
        # Energies past the last sample are zero, so [lo, hi) = [lo, min(hi, n)) as there.
        z = (csum[np.searchsorted(self._grid, hi)] - csum[np.searchsorted(self._grid, lo)]) / (block * rate)
        return gate_block_energies(z)


GATE_BLOCK_S = 0.4  # BS.1770 gating block


def loudness_lufs(x: Array, rate: int) -> float:
    """BS.1770 integrated loudness of mono ``x`` as the inference path measures it (through
    :class:`StreamingLoudness`, so a file streamed in pieces and the same audio in memory get the
    same number); a clip shorter than one 400 ms gating block is measured as if repeated to that
    length (its mean K-weighted power)."""
    block = math.ceil(GATE_BLOCK_S * rate)
    if x.shape[0] < block:
        x = np.tile(x, -(-block // x.shape[0]))
    meter = StreamingLoudness(rate)
    meter.add(x)
    return meter.integrated()
