"""Measuring a codec against Opus on an evaluation set, through the one inference path.

Everything of ours goes through :func:`codec.inference.pipeline.roundtrip_with_codes` (level
normalization with the model's own level settings, encode to a bitstream, decode, level restore:
the same bytes and samples as ``codec encode`` + ``codec decode``):

- :func:`measure_ours`: at each bitrate the model serves, SNR, SI-SDR, amplitude ratio,
  multi-scale mel distance, wide-band PESQ, STOI (means over clips) and codebook usage;
- :func:`level_sweep`: the same clips played in at each of ``levels_dbfs`` (RMS dBFS, float:
  a -6 dBFS clip may peak above full scale), amplitude ratio and SNR per level at the top
  bitrate, so a model that collapses quiet or loud input is caught;
- with ``evaluate.side_info_compare``, ours again without the energy side information
  (:mod:`codec.inference.energy`; codec ``ours_no_side_info``, kept apart from the rows the
  gates read), so the report shows what the side information buys and costs;
- :func:`measure_opus`: libopus (:func:`codec.evaluation.opus.opus_roundtrip`) at the same
  nominal bitrates on the same clips, per ``opus_modes`` (``cbr`` keeps to the bitrate;
  ``vbr`` spends ~5.5 kbps at any lower request), with the effective bitrate of its packets.

Audio is mono float32 ``[T]``; metrics take ``(reference, estimate)``. The reference is the
clip less its mean (:func:`without_dc`): neither codec carries a constant offset (ours subtracts
the input's mean before coding and the decoded mean after, libopus high-passes its input at
3 Hz), and an offset no one hears must not read as coding error.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
import typing as tp

import numpy as np

from codec.audio import Array
from codec.audio.level import LevelSettings
from codec.errors import UserError
from codec.evaluation import metrics as m
from codec.evaluation.baseline_cache import Entry, OpusCache
from codec.evaluation.opus import opus_roundtrip
from codec.evaluation.params import EvaluateParams
from codec.evaluation.record import OURS, OURS_NO_SIDE, kbps_key
from codec.evaluation.sets import EvalClip
from codec.inference.energy import Energy
from codec.inference.pipeline import RoundTrip, fingerprint_of, roundtrip_with_codes

if tp.TYPE_CHECKING:
    import torch

    from codec.inference.pipeline import CodecLike

Measured = tuple[dict[str, float], dict[str, str]]  # metric values, reasons for NaNs

OPUS_NAMES: dict[str, str] = {"cbr": "opus", "vbr": "opus_vbr"}
# Metrics of a row of the per-bitrate table, in column order; lower is better only for mel_distance.
CLIP_METRICS = ("snr_db", "si_sdr_db", "amplitude_ratio", "mel_distance", "pesq", "stoi")


@dataclasses.dataclass
class Row:
    """One line of the per-bitrate table: a codec at a nominal bitrate, means over clips."""

    codec: str
    kbps: float
    effective_kbps: float
    metrics: dict[str, float]
    n_clips: int
    failures: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # metric -> reasons


@dataclasses.dataclass
class LevelRow:
    """Our codec at one bitrate with the clips played in at ``level_dbfs``."""

    kbps: float
    level_dbfs: float
    snr_db: float
    amplitude_ratio: float
    min_amplitude_ratio: float
    max_amplitude_ratio: float


@dataclasses.dataclass
class Evaluation:
    """What :func:`evaluate_model` returns (``samples``: clip id -> name -> audio, not serialized)."""

    clip_ids: list[str]
    sample_rate: int
    bitrates_kbps: list[float]
    rows: list[Row]
    levels: list[LevelRow]
    per_clip: list[dict[str, tp.Any]]
    samples: dict[str, dict[str, Array]] = dataclasses.field(default_factory=dict)
    # Ours without the energy side information (evaluate.side_info_compare); not gated.
    without_side: list[Row] = dataclasses.field(default_factory=list)

    def row(self, codec: str, kbps: float) -> Row:
        for r in self.rows:
            if r.codec == codec and math.isclose(r.kbps, kbps):
                return r
        raise KeyError(f"no {codec} row at {kbps:g} kbps")

    @property
    def top_kbps(self) -> float:
        return max(self.bitrates_kbps)


def without_dc(x: Array) -> Array:
    """``x`` less its mean: the reference every metric reads (see the module docstring)."""
    return (x - np.float32(np.mean(x, dtype=np.float64))).astype(np.float32) if x.shape[0] else x


def measure(ref: Array, est: Array, sample_rate: int) -> tuple[dict[str, float], dict[str, str]]:
    """Every clip metric of ``est`` against ``ref`` (``[T]`` each; its mean is removed, see the
    module docstring): (values, reasons for NaNs)."""
    ref = without_dc(ref)
    values = {
        "snr_db": m.snr_db(ref, est),
        "si_sdr_db": m.si_sdr_db(ref, est),
        "amplitude_ratio": m.amplitude_ratio(ref, est),
        "mel_distance": m.mel_distance(ref, est, sample_rate),
    }
    reasons: dict[str, str] = {}
    for name, fn in [("pesq", m.pesq_wb), ("stoi", m.stoi)]:
        try:
            score = fn(ref, est, sample_rate)
        except ValueError as e:
            # The pesq extension raises a bare ValueError ("cannot convert float NaN to
            # integer") from its own error path on some degenerate estimates; one clip must
            # not stop the evaluation.
            score = m.Score(float("nan"), f"{name} failed: {e}")
        values[name] = score.value
        if not score.ok:
            reasons[name] = score.reason
    return values, reasons


def _mean(values: tp.Iterable[float]) -> float:
    """Mean of the finite values (NaN when none); ±inf values (a perfect SNR) are capped at ±200 dB."""
    arr = np.clip(np.asarray(list(values), dtype=np.float64), -200.0, 200.0)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def _at_level(audio: Array, level_dbfs: float) -> Array:
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    if rms == 0.0:
        return audio
    return (audio * np.float32(10.0 ** (level_dbfs / 20.0) / rms)).astype(np.float32)


def summarize(codec: str, kbps: float, clips: tp.Sequence[EvalClip], eff: list[float], results: list[Measured]) -> Row:
    """One table row: the means over ``clips`` of ``results``, with the reasons for NaNs per metric."""
    failures: dict[str, list[str]] = {}
    for clip, (_, reasons) in zip(clips, results, strict=True):
        for name, reason in reasons.items():
            failures.setdefault(name, []).append(f"{clip.id}: {reason}")
    return Row(
        codec=codec,
        kbps=float(kbps),
        effective_kbps=float(np.mean(eff)) if eff else float("nan"),  # not _mean: no ±200 cap on a bitrate
        metrics={k: _mean(v[k] for v, _ in results) for k in CLIP_METRICS},
        n_clips=len(clips),
        failures=failures,
    )


class RepeatedCoding:
    """A torch codec that answers a repeat of the same input (encoder) or the same codes (decoder)
    from memory.

    Each is a function of its input alone, and an evaluation codes the same things many times: the
    run without the side information encodes the same samples as the run with it, and the level
    normalization brings every input level of the sweep to the same loudness, where the encoder
    (whose input then differs in its last bits, so it runs again) gives the same codes (measured on
    the demo model's held-out clips: all four sweep levels and the recorded level identical on every
    frame, at 1.5 and 6 kbps). A repeat gets a copy of what the model gave the first time, the same
    to the bit. Keeps at most ``max_bytes`` of answers, least recently used first out."""

    def __init__(self, model: CodecLike, max_bytes: int = 128 << 20) -> None:
        self.model = model
        # What its bitstreams name, hashed once (not from every weight at every coding).
        self.source_fingerprint = fingerprint_of(model)
        self.max_bytes = max_bytes
        self.hits = self.misses = 0
        self._kept: collections.OrderedDict[bytes, torch.Tensor] = collections.OrderedDict()
        self._bytes = 0

    @property
    def config(self) -> tp.Any:
        return self.model.config

    def parameters(self) -> tp.Iterator[torch.nn.Parameter]:
        return tp.cast(tp.Any, self.model).parameters()  # type: ignore[no-any-return]

    def encode(self, audio: torch.Tensor, n_quantizers: int | None = None) -> torch.Tensor:
        model = tp.cast(tp.Any, self.model)
        return self._remember(f"encode {n_quantizers}", audio, lambda: model.encode(audio, n_quantizers))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self._remember("decode", codes, lambda: tp.cast(tp.Any, self.model).decode(codes))

    def _remember(self, what: str, x: torch.Tensor, run: tp.Callable[[], torch.Tensor]) -> torch.Tensor:
        flat = x.detach().to("cpu").contiguous().numpy()
        tag = f"{what} {flat.dtype} {flat.shape}".encode()
        key = hashlib.blake2b(flat.tobytes() + tag, digest_size=20).digest()
        kept = self._kept.get(key)
        if kept is not None:
            self.hits += 1
            self._kept.move_to_end(key)
            return kept.clone()
        self.misses += 1
        out = run()
        size = out.element_size() * out.nelement()
        if size <= self.max_bytes:
            self._kept[key] = out.clone()
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, old = self._kept.popitem(last=False)
                self._bytes -= old.element_size() * old.nelement()
        return out


def code(
    model: CodecLike,
    x: Array,
    rate: int,
    kbps: float,
    levels: LevelSettings,
    energy: Energy = True,
) -> RoundTrip:
    """``x`` through the user's inference path at ``kbps`` with the model's level settings:
    ``codec decode(codec encode(x))`` (``energy=False``: without the energy side information)."""
    return roundtrip_with_codes(model, x, rate, kbps, levels, energy=energy)


@dataclasses.dataclass
class Measurement:
    """One codec at one bitrate on every clip: the table row, per-clip records, sample audio."""

    row: Row
    per_clip: list[dict[str, tp.Any]]
    samples: dict[tuple[str, str], Array]  # (clip id, name) -> audio, for the sample clips


def measure_ours(
    model: CodecLike,
    clips: tp.Sequence[EvalClip],
    kbps: float,
    levels: LevelSettings,
    codebook_size: int,
    sample_ids: tp.Collection[str] = (),
    energy: Energy = True,
    name: str = OURS,
) -> Measurement:
    """Our codec at ``kbps`` on ``clips``, with codebook usage and perplexity; the effective
    bitrate counts the energy side information."""
    results: list[Measured] = []
    codes, per_clip, eff = [], [], []
    samples: dict[tuple[str, str], Array] = {}
    for clip in clips:
        rt = code(model, clip.audio, clip.sample_rate, kbps, levels, energy)
        values, reasons = measure(clip.audio, rt.audio, clip.sample_rate)
        results.append((values, reasons))
        codes.append(rt.codes)
        eff.append(kbps + rt.side_bps / 1000.0)
        per_clip.append({"codec": name, "kbps": kbps, "id": clip.id, **values, "reasons": reasons})
        if clip.id in sample_ids:
            samples[clip.id, f"{name}_{kbps_key(kbps)}"] = rt.audio
    row = summarize(name, kbps, clips, eff, results)
    usage = m.codebook_usage(np.concatenate(codes, axis=1), codebook_size)
    row.metrics["codebook_usage"] = usage.mean_used_fraction
    row.metrics["codebook_perplexity"] = usage.mean_perplexity
    return Measurement(row, per_clip, samples)


def level_sweep(
    model: CodecLike,
    clips: tp.Sequence[EvalClip],
    kbps: float,
    levels: LevelSettings,
    levels_dbfs: tp.Sequence[float],
    energy: Energy = True,
) -> list[LevelRow]:
    """Our codec at ``kbps`` with every clip played in at each RMS level of ``levels_dbfs``."""
    out = []
    for level in levels_dbfs:
        snrs, ratios = [], []
        for clip in clips:
            x = _at_level(clip.audio, level)
            y = code(model, x, clip.sample_rate, kbps, levels, energy).audio
            snrs.append(m.snr_db(without_dc(x), y))
            ratios.append(m.amplitude_ratio(without_dc(x), y))
        finite = [r for r in ratios if math.isfinite(r)] or [float("nan")]
        out.append(LevelRow(float(kbps), float(level), _mean(snrs), _mean(ratios), min(finite), max(finite)))
    return out


def _opus_clip(clip: EvalClip, kbps: float, mode: str, frame_ms: int, keep_audio: bool) -> Entry:
    res = opus_roundtrip(clip.audio, clip.sample_rate, round(kbps * 1000), vbr=mode == "vbr", frame_ms=frame_ms)
    values, reasons = measure(clip.audio, res.audio, clip.sample_rate)
    return Entry(values, reasons, res.effective_kbps, res.audio if keep_audio else None)


def measure_opus(
    clips: tp.Sequence[EvalClip],
    kbps: float,
    mode: str,
    frame_ms: int,
    sample_ids: tp.Collection[str] = (),
    cache: OpusCache | None = None,
) -> Measurement:
    """Opus in ``mode`` (``cbr`` or ``vbr``) at the nominal ``kbps`` on ``clips``; each clip's
    result read from ``cache`` when an earlier evaluation stored it (and stored there when not)."""
    name = OPUS_NAMES[mode]
    results: list[Measured] = []
    eff, per_clip = [], []
    samples: dict[tuple[str, str], Array] = {}
    for clip in clips:
        keep = clip.id in sample_ids
        key = cache.key(clip.audio, clip.sample_rate, kbps, mode, frame_ms) if cache is not None else ""
        res = cache.get(key, keep) if cache is not None else None
        if res is None:
            res = _opus_clip(clip, kbps, mode, frame_ms, keep)
            if cache is not None:
                cache.put(key, res)
        values, reasons = res.values, res.reasons
        results.append((values, reasons))
        eff.append(res.effective_kbps)
        per_clip.append(
            {
                "codec": name,
                "kbps": kbps,
                "id": clip.id,
                **values,
                "reasons": reasons,
                "effective_kbps": res.effective_kbps,
            }
        )
        if keep and res.audio is not None:
            samples[clip.id, f"{name}_{kbps_key(kbps)}"] = res.audio
    return Measurement(summarize(name, kbps, clips, eff, results), per_clip, samples)


def evaluate_model(
    model: CodecLike,
    clips: tp.Sequence[EvalClip],
    params: EvaluateParams,
    levels: LevelSettings | None = None,
    *,
    bitrates_kbps: tp.Sequence[float] | None = None,
    opus: bool = True,
    sweep: bool = True,
    compare: bool = True,
    codebook_size: int | None = None,
    opus_cache: OpusCache | None = None,
) -> Evaluation:
    """Measure ``model`` (and Opus) on ``clips``: see the module docstring.

    ``bitrates_kbps`` defaults to every bitrate the model serves; ``opus=False`` and
    ``sweep=False`` skip the baseline and the level sweep, ``compare=False`` the run without
    side information (re-evaluating a champion needs none of them). ``codebook_size``
    defaults to ``2 ** model.config.bits_per_code``. ``opus_cache`` keeps
    the baseline's results across evaluations (:mod:`codec.evaluation.baseline_cache`).
    """
    if not clips:
        raise UserError("no held-out clips to evaluate; add clips or raise train.val_fraction")
    levels = levels or LevelSettings()
    rates = list(bitrates_kbps if bitrates_kbps is not None else model.config.bitrates_kbps)
    size = codebook_size or 2 ** int(model.config.bits_per_code)
    sample_ids = [c.id for c in clips[: params.audio_samples]]
    ev = Evaluation(
        clip_ids=[c.id for c in clips],
        sample_rate=int(clips[0].sample_rate),
        bitrates_kbps=[float(k) for k in rates],
        rows=[],
        levels=[],
        per_clip=[],
        samples={c.id: {"input": c.audio} for c in clips if c.id in sample_ids},
    )
    energy = bool(params.side_info)

    for kbps in rates:
        measured = [measure_ours(model, clips, kbps, levels, size, sample_ids, energy)]
        ev.rows.append(measured[0].row)
        if compare and params.side_info and params.side_info_compare:
            plain = measure_ours(model, clips, kbps, levels, size, (), False, OURS_NO_SIDE)
            ev.without_side.append(plain.row)
            ev.per_clip.extend(plain.per_clip)
        if sweep:  # every bitrate: the level must hold at each one the model serves
            ev.levels.extend(level_sweep(model, clips, kbps, levels, params.levels_dbfs, energy))
        if opus:
            for mode in params.opus_modes:
                measured.append(measure_opus(clips, kbps, mode, params.opus_frame_ms, sample_ids, opus_cache))
                ev.rows.append(measured[-1].row)
        for meas in measured:
            ev.per_clip.extend(meas.per_clip)
            for (clip_id, name), audio in meas.samples.items():
                ev.samples[clip_id][name] = audio
    return ev
