"""The promotion gates: pure functions of the evaluate stage's metrics and ``params.yaml: promote``."""

from __future__ import annotations

import dataclasses
import math
import typing as tp

from codec.errors import UserError
from codec.tracking import MODEL_NAME

Direction = tp.Literal["lower", "higher"]


OURS_NO_SIDE = "ours_no_side_info"  # = codec.evaluation.evaluate.OURS_NO_SIDE, without importing torch
METRICS = ("snr_db", "si_sdr_db", "amplitude_ratio", "mel_distance", "pesq", "stoi")


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
        if self.max_pesq_below_opus is not None and self.max_pesq_below_opus < 0:
            raise UserError(f"{where}.max_pesq_below_opus {self.max_pesq_below_opus} must be null or >= 0")
        if not self.gate_profile.strip():
            raise UserError(f"{where}.gate_profile must name the gates (e.g. cpu-demo, gpu)")
        if self.primary_metric not in METRICS:
            raise UserError(f"{where}.primary_metric {self.primary_metric!r} is not one of {', '.join(METRICS)}")


@dataclasses.dataclass(frozen=True)
class Gate:
    """One gate: ``metric`` (a key of the metrics JSON), its ``value``, the ``limit`` and the rule."""

    name: str
    metric: str
    value: float
    limit: float | list[float]
    rule: str
    passed: bool
    eval_set: str = "held_out"  # the evaluation set it was checked on


def gate_kbps(metrics: tp.Mapping[str, tp.Any], params: PromoteParams) -> str:
    """The metrics-JSON key of the gate bitrate (``"6kbps"``)."""
    kbps = params.bitrate_kbps if params.bitrate_kbps is not None else float(metrics["kbps"])
    key = f"{kbps:g}kbps"
    if key not in metrics.get("ours", {}):
        served = ", ".join(metrics.get("ours", {}))
        raise PromotionError(f"promote.bitrate_kbps {kbps:g} was not evaluated (evaluated: {served}); change it")
    return key


def _value(v: tp.Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("nan")


def check_gates(metrics: tp.Mapping[str, tp.Any], params: PromoteParams) -> list[Gate]:
    """The gates on ``metrics`` (the evaluate stage's metrics JSON); a missing or NaN value fails."""
    k = gate_kbps(metrics, params)
    ours = metrics["ours"][k]
    lo, hi = params.amplitude_ratio_band
    gates: list[Gate] = []

    def add(name: str, metric: str, value: float, limit: float | list[float], rule: str, ok: bool) -> None:
        gates.append(Gate(name, metric, value, limit, rule, bool(ok) and math.isfinite(value)))

    snr = _value(ours.get("snr_db"))
    add(
        "min_snr_db",
        f"ours.{k}.snr_db",
        snr,
        params.min_snr_db,
        f">= {params.min_snr_db:g} dB",
        snr >= params.min_snr_db,
    )
    amp = _value(ours.get("amplitude_ratio"))
    add("amplitude_ratio", f"ours.{k}.amplitude_ratio", amp, [lo, hi], f"within [{lo:g}, {hi:g}]", lo <= amp <= hi)
    if params.amplitude_band_at_every_level:
        # At every bitrate the sweep covers (the gate bitrate's keep their plain names).
        for rate, by_level in (metrics.get("levels") or {}).items():
            for level, entry in (by_level or {}).items():
                a = _value(entry.get("amplitude_ratio"))
                add(
                    f"amplitude_ratio_at_{level}" + ("" if rate == k else f"_{rate}"),
                    f"levels.{rate}.{level}.amplitude_ratio",
                    a,
                    [lo, hi],
                    f"within [{lo:g}, {hi:g}]",
                    lo <= a <= hi,
                )
    if params.max_clip_level_error_db is not None and metrics.get("levels"):
        limit = params.max_clip_level_error_db
        worst, where = -math.inf, ""
        for rate, by_level in metrics["levels"].items():
            for level, entry in (by_level or {}).items():
                e = _value(entry.get("worst_clip_level_error_db"))
                if not math.isfinite(e) or e > worst:  # NaN (not measured) is the worst there is
                    worst, where = (e if math.isfinite(e) else math.inf), f"levels.{rate}.{level}"
        add(
            "clip_level_error_db",
            f"{where}.worst_clip_level_error_db",
            worst,
            limit,
            f"<= {limit:g} dB for every clip at every bitrate and input level",
            worst <= limit,
        )
    plain = (metrics.get(OURS_NO_SIDE) or {}).get(k)
    if params.model_amplitude_ratio_band is not None and plain is not None:
        mlo, mhi = params.model_amplitude_ratio_band
        a = _value(plain.get("amplitude_ratio"))
        add(
            "model_amplitude_ratio",
            f"{OURS_NO_SIDE}.{k}.amplitude_ratio",
            a,
            [mlo, mhi],
            f"within [{mlo:g}, {mhi:g}] without side information",
            mlo <= a <= mhi,
        )
    pesq = _value(ours.get("pesq"))
    add("min_pesq", f"ours.{k}.pesq", pesq, params.min_pesq, f">= {params.min_pesq:g}", pesq >= params.min_pesq)
    if params.max_pesq_below_opus is not None:
        opus = _value(((metrics.get("opus") or {}).get(k) or {}).get("pesq"))
        margin = params.max_pesq_below_opus
        add(
            "pesq_vs_opus",
            f"ours.{k}.pesq - opus.{k}.pesq",
            pesq - opus,
            -margin,
            f">= Opus {opus:.3g} - {margin:g}" if math.isfinite(opus) else f">= Opus - {margin:g} (Opus not scored)",
            pesq - opus >= -margin,
        )
    mel = _value(ours.get("mel_distance"))
    add(
        "max_mel_distance",
        f"ours.{k}.mel_distance",
        mel,
        params.max_mel_distance,
        f"<= {params.max_mel_distance:g}",
        mel <= params.max_mel_distance,
    )
    return gates


HELD_OUT = "held_out"


def set_metrics(record: tp.Mapping[str, tp.Any]) -> dict[str, tp.Mapping[str, tp.Any]]:
    """Evaluation set -> its metrics JSON, from ``evaluation.json`` (one set, ``held_out``, for a
    record written before the evaluation had several)."""
    sets = record.get("sets")
    if not sets:
        return {HELD_OUT: record["metrics"]}
    return {str(name): entry["metrics"] for name, entry in sets.items()}


def check_set_gates(record: tp.Mapping[str, tp.Any], params: PromoteParams) -> list[Gate]:
    """:func:`check_gates` on every evaluation set of ``record``: a gate failing on one set fails the
    promotion. Gates of the held-out set keep their plain names; the others are ``<set>:<gate>``."""
    gates: list[Gate] = []
    for name, metrics in set_metrics(record).items():
        for g in check_gates(metrics, params):
            if name == HELD_OUT:
                gates.append(g)
            else:
                gates.append(
                    dataclasses.replace(g, name=f"{name}:{g.name}", metric=f"sets.{name}.{g.metric}", eval_set=name)
                )
    return gates


def worst_of(record: tp.Mapping[str, tp.Any], params: PromoteParams, k: str) -> dict[str, tp.Any]:
    """Which set was worst on the primary metric, and which set and input level on amplitude
    (farthest from 1.0), at bitrate key ``k``: what the decision record names."""
    lower = params.primary_direction == "lower"
    primary: tuple[str, float] | None = None
    amplitude: tuple[str, str, float] | None = None
    for name, metrics in set_metrics(record).items():
        ours = (metrics.get("ours") or {}).get(k) or {}
        v = _value(ours.get(params.primary_metric))
        # NaN is the worst value there is; among finite values, the far side of the direction.
        if primary is None or (
            math.isfinite(primary[1]) and (not math.isfinite(v) or (v > primary[1] if lower else v < primary[1]))
        ):
            primary = (name, v)
        candidates = [("all levels", _value(ours.get("amplitude_ratio")))]
        for level, entry in ((metrics.get("levels") or {}).get(k) or {}).items():
            candidates.append((str(level), _value(entry.get("amplitude_ratio"))))
        for level, a in candidates:
            err = abs(math.log(a)) if a > 0 and math.isfinite(a) else math.inf
            if amplitude is None or err > (
                abs(math.log(amplitude[2])) if amplitude[2] > 0 and math.isfinite(amplitude[2]) else math.inf
            ):
                amplitude = (name, level, a)
    out: dict[str, tp.Any] = {}
    if primary is not None:
        out["primary_metric"] = {"metric": params.primary_metric, "set": primary[0], "value": primary[1]}
    if amplitude is not None:
        out["amplitude_ratio"] = {"set": amplitude[0], "level": amplitude[1], "value": amplitude[2]}
    return out


def beats(candidate: float, champion: float, direction: Direction) -> bool:
    """Strictly better (a tie keeps the champion); NaN never beats."""
    if not math.isfinite(candidate):
        return False
    if not math.isfinite(champion):
        return True
    return candidate < champion if direction == "lower" else candidate > champion
