"""The promotion gates: pure functions of the evaluation record (:mod:`codec.evaluation.record`,
read by field) and ``params.yaml: promote``."""

from __future__ import annotations

import dataclasses
import math
import typing as tp

from codec.errors import UserError
from codec.evaluation.params import HELD_OUT
from codec.evaluation.record import (
    METRICS,
    OPUS,
    OURS,
    OURS_NO_SIDE,
    EvaluationRecord,
    SetMetrics,
    json_number,
    kbps_key,
    metric_path,
    worst_amplitude,
)
from codec.tracking import MODEL_NAME

Direction = tp.Literal["lower", "higher"]


class PromotionError(UserError):
    """The promotion cannot be made as asked (no MLflow run, a bitrate not evaluated)."""


@dataclasses.dataclass
class PromoteParams:
    """``params.yaml: promote``."""

    model_name: str = MODEL_NAME
    # What these gates are (recorded in promotion.json, the version's tags and the decision):
    # a champion under the CPU demo's gates is not one under the GPU profile's.
    gate_profile: str = "default"
    # The bitrate the gates and the comparison apply to; null = the model's top bitrate.
    bitrate_kbps: float | None = None
    min_snr_db: float = 3.0
    amplitude_ratio_band: list[float] = dataclasses.field(default_factory=lambda: [0.9, 1.1])
    # Also hold the amplitude ratio to the band at every input level of the sweep.
    amplitude_band_at_every_level: bool = True
    # The model's own amplitude ratio, without the energy side information (the evaluation's
    # ours_no_side_info rows): the side information corrects up to 12 dB, so without this
    # gate a model whose decoder collapsed (the seed's 0.47) would pass on the correction.
    # null: no such gate. Checked only where the evaluation scored the path without it.
    model_amplitude_ratio_band: list[float] | None = dataclasses.field(default_factory=lambda: [0.8, 1.25])
    # Per clip: the clip farthest from its input level, at every bitrate and input level of the
    # sweep, may be at most this many dB off (a whisper comes back a whisper); null: no such gate.
    max_clip_level_error_db: float | None = 0.5
    min_pesq: float = 1.5
    # Ours' PESQ may be at most this far below Opus' at the same bitrate, on every set (0: at
    # least as good as Opus); null: no such gate.
    max_pesq_below_opus: float | None = None
    # The same for STOI (intelligibility), on every set; null: no such gate.
    max_stoi_below_opus: float | None = None
    max_mel_distance: float = 1.0
    primary_metric: str = "mel_distance"
    primary_direction: Direction = "lower"
    fail_on_gate: bool = False

    def check(self, where: str) -> None:
        band = self.amplitude_ratio_band
        if len(band) != 2 or not 0 < band[0] < band[1]:
            raise UserError(f"{where}.amplitude_ratio_band {band} must be [low, high] with 0 < low < high")
        model = self.model_amplitude_ratio_band
        if model is not None and (len(model) != 2 or not 0 < model[0] < model[1]):
            raise UserError(f"{where}.model_amplitude_ratio_band {model} must be null or [low, high], 0 < low < high")
        if self.max_clip_level_error_db is not None and not self.max_clip_level_error_db > 0:
            raise UserError(f"{where}.max_clip_level_error_db {self.max_clip_level_error_db} must be null or > 0")
        for name in ("max_pesq_below_opus", "max_stoi_below_opus"):
            margin = getattr(self, name)
            if margin is not None and not margin >= 0:
                raise UserError(f"{where}.{name} {margin} must be null or >= 0")
        if not self.max_mel_distance > 0:
            raise UserError(f"{where}.max_mel_distance {self.max_mel_distance} must be > 0")
        if not self.gate_profile.strip():
            raise UserError(f"{where}.gate_profile must name the gates (e.g. cpu-demo, gpu)")
        if self.primary_metric not in METRICS:
            raise UserError(f"{where}.primary_metric {self.primary_metric!r} is not one of {', '.join(METRICS)}")


@dataclasses.dataclass(frozen=True)
class Gate:
    """One gate: ``metric`` (where its value is in the metrics JSON), its ``value``, the ``limit``
    and the rule."""

    name: str
    metric: str
    value: float
    limit: float | list[float]
    rule: str
    passed: bool
    eval_set: str = HELD_OUT  # the evaluation set it was checked on


def _gate(name: str, metric: str, value: float, limit: float | list[float], rule: str, ok: bool) -> Gate:
    """A gate; a NaN value (not measured) fails it whatever the rule says."""
    return Gate(name=name, metric=metric, value=value, limit=limit, rule=rule, passed=ok and math.isfinite(value))


def _band(name: str, metric: str, value: float, band: tp.Sequence[float], why: str = "") -> Gate:
    lo, hi = band
    return _gate(name, metric, value, [lo, hi], f"within [{lo:g}, {hi:g}]{why}", lo <= value <= hi)


def gate_kbps(metrics: SetMetrics, params: PromoteParams) -> float:
    """The gate bitrate: ``promote.bitrate_kbps``, else the evaluation's top one."""
    kbps = params.bitrate_kbps if params.bitrate_kbps is not None else metrics.kbps
    if kbps_key(kbps) not in metrics.ours:
        served = ", ".join(metrics.ours)
        raise PromotionError(f"promote.bitrate_kbps {kbps:g} was not evaluated (evaluated: {served}); change it")
    return kbps


def _at_least(name: str, metric: str, value: float, limit: float, unit: str = "") -> Gate:
    return _gate(name, metric, value, limit, f">= {limit:g}{unit}", value >= limit)


def _at_most(name: str, metric: str, value: float, limit: float) -> Gate:
    return _gate(name, metric, value, limit, f"<= {limit:g}", value <= limit)


def check_gates(metrics: SetMetrics, params: PromoteParams) -> list[Gate]:
    """The gates on one evaluation set's metrics; a missing or NaN value fails."""
    kbps = gate_kbps(metrics, params)
    ours = metrics.ours_at(kbps)
    band = params.amplitude_ratio_band
    gates = [
        _at_least("min_snr_db", metric_path(OURS, kbps, "snr_db"), ours.snr_db, params.min_snr_db, " dB"),
        _band("amplitude_ratio", metric_path(OURS, kbps, "amplitude_ratio"), ours.amplitude_ratio, band),
    ]
    if params.amplitude_band_at_every_level:
        # At every bitrate the sweep covers (the gate bitrate's keep their plain names).
        for lv in metrics.levels:
            name = f"amplitude_ratio_at_{lv.level}" + ("" if lv.bitrate == kbps_key(kbps) else f"_{lv.bitrate}")
            gates.append(_band(name, lv.path("amplitude_ratio"), lv.amplitude_ratio, band))
    if params.max_clip_level_error_db is not None and metrics.levels:
        gates.append(_clip_level_gate(metrics, params.max_clip_level_error_db))
    plain = metrics.no_side_at(kbps)
    if params.model_amplitude_ratio_band is not None and plain is not None:
        where, model_band = metric_path(OURS_NO_SIDE, kbps, "amplitude_ratio"), params.model_amplitude_ratio_band
        gates.append(
            _band("model_amplitude_ratio", where, plain.amplitude_ratio, model_band, " without side information")
        )
    gates.append(_at_least("min_pesq", metric_path(OURS, kbps, "pesq"), ours.pesq, params.min_pesq))
    if params.max_pesq_below_opus is not None:
        gates.append(_vs_opus_gate(metrics, kbps, "pesq", params.max_pesq_below_opus))
    if params.max_stoi_below_opus is not None:
        gates.append(_vs_opus_gate(metrics, kbps, "stoi", params.max_stoi_below_opus))
    where = metric_path(OURS, kbps, "mel_distance")
    gates.append(_at_most("max_mel_distance", where, ours.mel_distance, params.max_mel_distance))
    return gates


def _clip_level_gate(metrics: SetMetrics, limit: float) -> Gate:
    """The clip farthest from its input level, over every bitrate and input level of the sweep."""
    worst, where = -math.inf, ""
    for lv in metrics.levels:
        e = lv.worst_clip_level_error_db
        if not math.isfinite(e) or e > worst:  # NaN (not measured) is the worst there is
            worst, where = (e if math.isfinite(e) else math.inf), lv.path("worst_clip_level_error_db")
    rule = f"<= {limit:g} dB for every clip at every bitrate and input level"
    return _gate("clip_level_error_db", where, worst, limit, rule, worst <= limit)


def _vs_opus_gate(metrics: SetMetrics, kbps: float, metric: str, margin: float) -> Gate:
    """Ours' ``metric`` (pesq or stoi) at most ``margin`` below Opus' at the same bitrate (fails
    where Opus was not scored). Named ``<metric>_vs_opus``; its value is ours less Opus'."""
    ours, opus = metrics.ours_at(kbps).metric(metric), metrics.opus_at(kbps).metric(metric)
    rule = f">= Opus {opus:.3g} - {margin:g}" if math.isfinite(opus) else f">= Opus - {margin:g} (Opus not scored)"
    where = f"{metric_path(OURS, kbps, metric)} - {metric_path(OPUS, kbps, metric)}"
    return _gate(f"{metric}_vs_opus", where, ours - opus, -margin, rule, ours - opus >= -margin)


def check_set_gates(record: EvaluationRecord, params: PromoteParams) -> list[Gate]:
    """:func:`check_gates` on every evaluation set of ``record``: a gate failing on one set fails the
    promotion. Gates of the held-out set keep their plain names; the others are ``<set>:<gate>``."""
    gates: list[Gate] = []
    for name, metrics in record.sets.items():
        for g in check_gates(metrics, params):
            if name == HELD_OUT:
                gates.append(g)
            else:
                gates.append(
                    dataclasses.replace(g, name=f"{name}:{g.name}", metric=f"sets.{name}.{g.metric}", eval_set=name)
                )
    return gates


@dataclasses.dataclass(frozen=True)
class Worst:
    """What the decision record names as worst, at the gate bitrate: the evaluation set worst on
    the primary metric, and the set and input level whose amplitude ratio is farthest from 1.0."""

    metric: str  # promote.primary_metric
    metric_set: str
    metric_value: float
    amplitude_set: str
    amplitude_level: str  # an input level ("-40dBFS"), or "all levels" (the set's mean)
    amplitude_ratio: float

    def to_json(self) -> dict[str, dict[str, tp.Any]]:
        """``promotion.json: worst``."""
        return {
            "primary_metric": {
                "metric": self.metric,
                "set": self.metric_set,
                "value": json_number(self.metric_value, 6),
            },
            "amplitude_ratio": {
                "set": self.amplitude_set,
                "level": self.amplitude_level,
                "value": json_number(self.amplitude_ratio, 6),
            },
        }


def worst_of(record: EvaluationRecord, params: PromoteParams, kbps: float) -> Worst:
    """Which set was worst on the primary metric, and which set and input level on amplitude
    (farthest from 1.0), at bitrate ``kbps``: what the decision record names."""
    lower = params.primary_direction == "lower"
    primary: tuple[str, float] | None = None
    amplitudes: list[tuple[str, str, float]] = []
    for name, metrics in record.sets.items():
        ours = metrics.ours_at(kbps)
        v = ours.metric(params.primary_metric)
        # NaN is the worst value there is; among finite values, the far side of the direction.
        if primary is None or (
            math.isfinite(primary[1]) and (not math.isfinite(v) or (v > primary[1] if lower else v < primary[1]))
        ):
            primary = (name, v)
        amplitudes.append((name, "all levels", ours.amplitude_ratio))
        amplitudes += [(name, lv.level, lv.amplitude_ratio) for lv in metrics.levels_at(kbps)]
    assert primary is not None  # a record has at least one set (held_out)
    amplitude_set, level, ratio = worst_amplitude(amplitudes, lambda c: c[2])
    return Worst(
        metric=params.primary_metric,
        metric_set=primary[0],
        metric_value=primary[1],
        amplitude_set=amplitude_set,
        amplitude_level=level,
        amplitude_ratio=ratio,
    )


def beats(candidate: float, champion: float, direction: Direction) -> bool:
    """Strictly better (a tie keeps the champion); NaN never beats."""
    if not math.isfinite(candidate):
        return False
    if not math.isfinite(champion):
        return True
    return candidate < champion if direction == "lower" else candidate > champion
