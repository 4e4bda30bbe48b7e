"""The schema of ``evaluation.json``, shared by the evaluate stage (writer) and its readers.

As :mod:`codec.registry.record` is for ``promotion.json``: the evaluate stage writes the metrics
JSON through the rules here (:func:`kbps_key`, :func:`level_key`, :func:`level_entry`,
:func:`worst_amplitude`), and the promote stage reads the file with :func:`read_evaluation`
into an :class:`EvaluationRecord`, by field. No torch, no MLflow: a reader (the registry, the
Prefect flow) pays for neither.

The metrics JSON of one evaluation set (:class:`SetMetrics` reads it)::

    {"kbps": 6.0, "n_clips": 8, "snr_db": ..., "opus_pesq": ..., "worst_level_amplitude_ratio": ...,
     "ours": {"6kbps": {"snr_db": ..., "amplitude_ratio": ..., "effective_kbps": ...}, ...},
     "ours_no_side_info": {...}, "opus": {...},
     "levels": {"6kbps": {"-40dBFS": {"snr_db": ..., "amplitude_ratio": ..., ...}, ...}, ...}}
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing as tp
from pathlib import Path

from codec.errors import UserError
from codec.evaluation.params import HELD_OUT

T = tp.TypeVar("T")

OURS = "ours"
OURS_NO_SIDE = "ours_no_side_info"  # ours with the energy side information turned off (not gated but one gate)
OPUS = "opus"
# The metrics of a codec at a bitrate that a gate or the primary metric may name.
METRICS = ("snr_db", "si_sdr_db", "amplitude_ratio", "mel_distance", "pesq", "stoi")


# --- the rules, one function each ---------------------------------------------------------------


def kbps_key(kbps: float) -> str:
    """``6.0`` → ``"6kbps"``, ``1.5`` → ``"1.5kbps"`` (a bitrate's key in the metrics JSON)."""
    return f"{kbps:g}kbps"


def level_key(level_dbfs: float) -> str:
    """``-40.0`` → ``"-40dBFS"`` (an input level's key in the metrics JSON)."""
    return f"{level_dbfs:g}dBFS"


def json_number(v: float, digits: int = 5) -> float | None:
    """JSON-safe rounded number (``None`` for NaN/inf, which JSON can't hold)."""
    return round(float(v), digits) if math.isfinite(v) else None


def number(v: object) -> float:
    """A number read from the JSON: ``float`` of an int or float, NaN for anything else (``null``:
    not measured)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def amplitude_error(ratio: float) -> float:
    """How far an amplitude ratio is from 1.0, on a log scale (0.5 and 2.0 are as far); infinite
    for a NaN, zero, negative or infinite ratio."""
    return abs(math.log(ratio)) if math.isfinite(ratio) and ratio > 0 else math.inf


def worst_amplitude(items: tp.Iterable[T], ratio: tp.Callable[[T], float]) -> T:
    """The item whose amplitude ratio (``ratio(item)``) is farthest from 1.0 (:func:`amplitude_error`;
    the first of equals). ``ValueError`` when there is none."""
    return max(items, key=lambda item: amplitude_error(ratio(item)))


def clip_level_error_db(min_ratio: float, max_ratio: float) -> float:
    """How far (dB) the clip farthest from its input level came out, from the smallest and largest
    per-clip amplitude ratio at one bitrate and level (infinite when either is not a ratio)."""
    ratios = [min_ratio, max_ratio]
    if not all(math.isfinite(r) and r > 0 for r in ratios):
        return math.inf
    return max(abs(20.0 * math.log10(r)) for r in ratios)


def metric_path(codec: str, kbps: float, metric: str) -> str:
    """``ours.6kbps.snr_db``: where a codec's metric at a bitrate is in the metrics JSON."""
    return f"{codec}.{kbps_key(kbps)}.{metric}"


# --- the writer's shapes ------------------------------------------------------------------------


class LevelEntry(tp.TypedDict):
    """``levels.<kbps>.<level>`` of the metrics JSON: ours with the clips played in at one level."""

    snr_db: float | None
    amplitude_ratio: float | None
    min_amplitude_ratio: float | None
    max_amplitude_ratio: float | None
    # The clip farthest from its input level, in dB (the per-clip level error gate reads it).
    worst_clip_level_error_db: float | None


def level_entry(snr_db: float, amplitude_ratio: float, min_ratio: float, max_ratio: float) -> LevelEntry:
    """One input level's entry, rounded for JSON."""
    return {
        "snr_db": json_number(snr_db),
        "amplitude_ratio": json_number(amplitude_ratio),
        "min_amplitude_ratio": json_number(min_ratio),
        "max_amplitude_ratio": json_number(max_ratio),
        "worst_clip_level_error_db": json_number(clip_level_error_db(min_ratio, max_ratio), 4),
    }


class EvaluationJSON(tp.TypedDict):
    """``evaluation.json`` as written (:func:`codec.evaluation.report.evaluation_record`): what was
    measured, then what the evaluate stage adds (``NotRequired``: absent in a record written by a
    caller that had none, e.g. ``--no-mlflow`` leaves the run ``null``)."""

    version: int
    clip_ids: list[str]
    bitrates_kbps: list[float]
    metrics: dict[str, tp.Any]  # the held-out set's metrics JSON (module docstring)
    rows: list[dict[str, tp.Any]]  # codec.evaluation.evaluate.Row fields
    levels: list[dict[str, tp.Any]]  # codec.evaluation.evaluate.LevelRow fields
    per_clip: list[dict[str, tp.Any]]
    eval_set_fingerprint: tp.NotRequired[str]  # codec.evaluation.suite.sets_fingerprint
    mlflow_run_id: tp.NotRequired[str | None]
    model_id: tp.NotRequired[str | None]
    model_uri: tp.NotRequired[str | None]
    model_path: tp.NotRequired[str]
    model_fingerprint: tp.NotRequired[str]
    git_commit: tp.NotRequired[str]
    params: tp.NotRequired[dict[str, tp.Any]]  # params.yaml: evaluate
    level_settings: tp.NotRequired[dict[str, tp.Any]]
    val_fraction: tp.NotRequired[float]
    # Every evaluation set: {"clip_ids": [...], "metrics": {...}} (a user's folder: and what it held).
    sets: tp.NotRequired[dict[str, dict[str, tp.Any]]]
    user_sets_dir: tp.NotRequired[str]
    set_summary: tp.NotRequired[dict[str, dict[str, float | None]]]


# --- the reader's record ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Scores:
    """A codec at one bitrate on one evaluation set: means over clips (NaN: not measured)."""

    snr_db: float = math.nan
    si_sdr_db: float = math.nan
    amplitude_ratio: float = math.nan
    mel_distance: float = math.nan
    pesq: float = math.nan
    stoi: float = math.nan
    effective_kbps: float = math.nan

    def metric(self, name: str) -> float:
        """The metric called ``name`` (one of :data:`METRICS`; NaN for any other)."""
        return float(getattr(self, name)) if name in METRICS else math.nan


NOT_SCORED = Scores()


@dataclasses.dataclass(frozen=True)
class LevelScores:
    """Ours at one bitrate with the clips played in at one input level."""

    bitrate: str  # its key, "6kbps"
    level: str  # its key, "-40dBFS"
    snr_db: float
    amplitude_ratio: float
    worst_clip_level_error_db: float  # NaN: not measured (a record written before the gate)

    def path(self, metric: str) -> str:
        """``levels.6kbps.-40dBFS.amplitude_ratio``: where ``metric`` is in the metrics JSON."""
        return f"levels.{self.bitrate}.{self.level}.{metric}"


@dataclasses.dataclass(frozen=True)
class SetMetrics:
    """One evaluation set's metrics JSON, by field."""

    kbps: float  # the top bitrate (the summary's)
    ours: tp.Mapping[str, Scores]  # bitrate key -> scores
    no_side: tp.Mapping[str, Scores]  # ours without the energy side information, where scored
    opus: tp.Mapping[str, Scores]
    levels: tuple[LevelScores, ...]  # every bitrate and input level of the sweep, in file order

    def ours_at(self, kbps: float) -> Scores:
        return self.ours.get(kbps_key(kbps), NOT_SCORED)

    def no_side_at(self, kbps: float) -> Scores | None:
        """``None`` where the evaluation did not score ours without the side information."""
        return self.no_side.get(kbps_key(kbps))

    def opus_at(self, kbps: float) -> Scores:
        return self.opus.get(kbps_key(kbps), NOT_SCORED)

    def levels_at(self, kbps: float) -> list[LevelScores]:
        return [lv for lv in self.levels if lv.bitrate == kbps_key(kbps)]


@dataclasses.dataclass(frozen=True)
class EvaluationRecord:
    """``evaluation.json``, the fields its readers use (the rest is on disk for people)."""

    source: str  # where it was read from, for messages
    eval_set_fingerprint: str
    metrics: SetMetrics  # the held-out set's
    sets: tp.Mapping[str, SetMetrics]  # every evaluation set (held_out first); a record before sets: held_out
    mlflow_run_id: str | None = None  # None: evaluated with --no-mlflow
    model_uri: str | None = None
    model_id: str | None = None  # the logged model (MLflow 3), when codec evaluate made one
    clip_ids: tuple[str, ...] = ()
    params: tp.Mapping[str, tp.Any] = dataclasses.field(default_factory=dict)  # params.yaml: evaluate
    level_settings: tp.Mapping[str, tp.Any] = dataclasses.field(default_factory=dict)
    user_sets_dir: str | None = None


class _Reader:
    """Walks the JSON of ``source``; a value of the wrong kind is a :class:`UserError` naming the
    file and the key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, what: str) -> tp.NoReturn:
        raise UserError(f"{self.source}: {key} {what}; not an evaluation.json codec evaluate wrote, re-run it")

    def obj(self, value: object, key: str) -> dict[str, tp.Any]:
        if not isinstance(value, dict):
            self.fail(key, f"must be a JSON object, not {type(value).__name__}")
        return value

    def text(self, value: object, key: str, optional: bool = True) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value:
            self.fail(key, "must be a non-empty string" + (" or null" if optional else ""))
        return value

    def scores(self, value: object, key: str) -> dict[str, Scores]:
        by_rate = self.obj(value or {}, key)
        fields = [f.name for f in dataclasses.fields(Scores)]
        return {
            str(rate): Scores(**{f: number(entry.get(f)) for f in fields})
            for rate, entry in ((r, self.obj(e, f"{key}.{r}")) for r, e in by_rate.items())
        }

    def set_metrics(self, value: object, key: str) -> SetMetrics:
        m = self.obj(value, key)
        if not math.isfinite(number(m.get("kbps"))):
            self.fail(f"{key}.kbps", "must be the top bitrate, a number")
        levels: list[LevelScores] = []
        for rate, by_level in self.obj(m.get("levels") or {}, f"{key}.levels").items():
            for level, value in self.obj(by_level or {}, f"{key}.levels.{rate}").items():
                entry = self.obj(value, f"{key}.levels.{rate}.{level}")
                levels.append(
                    LevelScores(
                        bitrate=str(rate),
                        level=str(level),
                        snr_db=number(entry.get("snr_db")),
                        amplitude_ratio=number(entry.get("amplitude_ratio")),
                        worst_clip_level_error_db=number(entry.get("worst_clip_level_error_db")),
                    )
                )
        return SetMetrics(
            kbps=number(m["kbps"]),
            ours=self.scores(m.get(OURS), f"{key}.{OURS}"),
            no_side=self.scores(m.get(OURS_NO_SIDE), f"{key}.{OURS_NO_SIDE}"),
            opus=self.scores(m.get(OPUS), f"{key}.{OPUS}"),
            levels=tuple(levels),
        )

    def record(self, data: object) -> EvaluationRecord:
        d = self.obj(data, "the top level")
        for key in ("metrics", "eval_set_fingerprint"):
            if key not in d:
                self.fail(key, "is missing")
        metrics = self.set_metrics(d["metrics"], "metrics")
        sets = {
            str(name): self.set_metrics(self.obj(entry, f"sets.{name}").get("metrics"), f"sets.{name}.metrics")
            for name, entry in self.obj(d.get("sets") or {}, "sets").items()
        }
        return EvaluationRecord(
            source=self.source,
            eval_set_fingerprint=str(self.text(d["eval_set_fingerprint"], "eval_set_fingerprint", optional=False)),
            metrics=metrics,
            sets=sets or {HELD_OUT: metrics},
            mlflow_run_id=self.text(d.get("mlflow_run_id"), "mlflow_run_id"),
            model_uri=self.text(d.get("model_uri"), "model_uri"),
            model_id=self.text(d.get("model_id"), "model_id"),
            clip_ids=tuple(str(c) for c in d.get("clip_ids") or ()),
            params=self.obj(d.get("params") or {}, "params"),
            level_settings=self.obj(d.get("level_settings") or {}, "level_settings"),
            user_sets_dir=self.text(d.get("user_sets_dir"), "user_sets_dir"),
        )


def evaluation_from_json(data: object, source: str = "evaluation.json") -> EvaluationRecord:
    """The record in ``data`` (``evaluation.json`` parsed); :class:`UserError` naming ``source``
    and the key when it is not one codec evaluate wrote."""
    return _Reader(source).record(data)


def read_evaluation(path: str | Path) -> EvaluationRecord:
    """``evaluation.json`` at ``path``; :class:`UserError` when it is missing, not JSON or malformed."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p} not found; run codec evaluate first (dvc repro evaluate)")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{p} is not valid JSON ({e}); re-run codec evaluate") from None
    return evaluation_from_json(data, str(p))
