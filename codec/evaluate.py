"""``codec evaluate``: the trained codec against Opus on held-out speech, through the one inference path.

What is measured (all through :func:`codec.inference.roundtrip_with_codes`: level
normalization, encode, decode, level restore, exactly what a user gets):

- **held-out clips at their recorded level**: the clips of the model's validation split
  (:func:`codec.dataset.split_of` with the ``val_fraction`` saved in the checkpoint), read
  from ``data/raw`` (before normalization, so at the level they were recorded at), cut to
  ``seconds``; at every bitrate the model serves: SNR, SI-SDR, amplitude ratio, multi-scale
  mel distance, wide-band PESQ, STOI (means over clips) and codebook usage;
- **level sweep**: the same clips played in at each of ``levels_dbfs`` (RMS dBFS, float:
  a -6 dBFS clip may peak above full scale, as a float pipeline allows): amplitude ratio and
  SNR per level at the top bitrate (the level path does not depend on the bitrate, and each
  level costs a full round trip of every clip), so a model that collapses quiet or loud
  input is caught;
- **Opus** (libopus through PyAV, :func:`codec.opus.opus_roundtrip`) at each of the same
  nominal bitrates on the same clips, in each of ``opus_modes``. ``cbr`` (default) keeps
  to the requested bitrate; ``vbr`` is what a user gets by default, but libopus spends
  ~5.5 kbps at any lower request. Each Opus row carries the effective bitrate measured
  from its packets, so the comparison says where Opus got more bits than asked.

Outputs (paths from ``dvc.yaml``): the metrics JSON (DVC metric: ``ours`` / ``opus`` /
``opus_vbr`` → ``<kbps>kbps`` → metric, ``levels`` → ``<kbps>kbps`` → ``<level>dBFS``, and
a top-level summary at the top bitrate), the per-bitrate CSV (DVC plot), the full
``evaluation.json`` (per clip, per level, the evaluation-set fingerprint, the MLflow run;
``codec promote`` reads it), ``report.md``, and a media folder with spectrogram PNGs and
decoded WAV samples. All of it is logged to the MLflow run that trained the model (see
:func:`find_model_run`); when none is found, to a new run that logs the model itself.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import math
import tempfile
import typing as tp
from pathlib import Path

import numpy as np
import numpy.typing as npt

from codec.errors import UserError
from codec.params import PARAMS_FILE, from_dict, read_params

if tp.TYPE_CHECKING:
    from mlflow import MlflowClient

    from codec.inference import CodecLike
    from codec.model import Codec

Array = npt.NDArray[np.float32]
OpusMode = tp.Literal["cbr", "vbr"]
Measured = tuple[dict[str, float], dict[str, str]]  # metric values, reasons for NaNs

MODEL_ARTIFACT = "codec"  # codec.train_stage.MODEL_ARTIFACT: the name the model is logged under
OURS = "ours"
OPUS_NAMES: dict[str, str] = {"cbr": "opus", "vbr": "opus_vbr"}
# Metrics of a row of the per-bitrate table, in column order; lower is better only for mel_distance.
CLIP_METRICS = ("snr_db", "si_sdr_db", "amplitude_ratio", "mel_distance", "pesq", "stoi")
EVALUATION_VERSION = 1


@dataclasses.dataclass
class EvaluateParams:
    """``params.yaml: evaluate``."""

    # Input levels of the sweep, RMS dBFS.
    levels_dbfs: list[float] = dataclasses.field(default_factory=lambda: [-40.0, -26.0, -16.0, -6.0])
    # Held-out clips evaluated (the first in id order), and seconds of each.
    max_clips: int = 8
    seconds: float = 4.0
    # Opus encoder modes to compare with: cbr (keeps to the bitrate) and/or vbr (libopus' default).
    opus_modes: list[OpusMode] = dataclasses.field(default_factory=lambda: tp.cast(list[OpusMode], ["cbr"]))
    opus_frame_ms: int = 20
    # Clips whose decoded audio and spectrograms are written and logged.
    audio_samples: int = 2
    # torch threads (0 = leave torch's default).
    threads: int = 1

    def check(self, where: str) -> None:
        if self.max_clips < 1:
            raise UserError(f"{where}.max_clips is {self.max_clips}; evaluate at least 1 clip")
        if self.seconds <= 0:
            raise UserError(f"{where}.seconds is {self.seconds}; it must be positive")
        if self.audio_samples < 0 or self.threads < 0:
            raise UserError(f"{where}: audio_samples and threads must be >= 0")
        if len(set(self.opus_modes)) != len(self.opus_modes):
            raise UserError(f"{where}.opus_modes {self.opus_modes} lists a mode twice")


@dataclasses.dataclass(frozen=True)
class LevelSettings:
    """The training data's loudness (``params.yaml: normalize``), which inference normalizes to."""

    target_lufs: float = -16.0
    peak_ceiling_db: float = -1.0
    limiter_window_ms: float = 5.0


@dataclasses.dataclass(frozen=True)
class EvalClip:
    """One held-out clip: mono float32 ``audio`` ``[T]`` at ``sample_rate``, at its recorded level."""

    id: str
    audio: Array
    sample_rate: int


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

    def row(self, codec: str, kbps: float) -> Row:
        for r in self.rows:
            if r.codec == codec and math.isclose(r.kbps, kbps):
                return r
        raise KeyError(f"no {codec} row at {kbps:g} kbps")

    @property
    def top_kbps(self) -> float:
        return max(self.bitrates_kbps)


def kbps_key(kbps: float) -> str:
    """``6.0`` → ``"6kbps"``, ``1.5`` → ``"1.5kbps"`` (the key in the metrics JSON)."""
    return f"{kbps:g}kbps"


# --- the evaluation set -----------------------------------------------------------------


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise UserError(f"{path} not found; run the data stages first (dvc repro validate)")
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def held_out_ids(normalized: Path, val_fraction: float) -> list[str]:
    """Ids of the validation split among the clips that passed normalization, in id order."""
    from codec.dataset import split_of

    rows = _read_csv(normalized / "manifest.csv")
    return sorted(r["id"] for r in rows if split_of(r["id"], val_fraction) == "val")


def load_eval_clips(raw: Path, ids: tp.Sequence[str], seconds: float, sample_rate: int) -> list[EvalClip]:
    """The clips ``ids`` from ``raw`` (at their recorded level), each cut to its first ``seconds``."""
    from codec.dataset import read_audio

    by_id = {r["id"]: r for r in _read_csv(raw / "manifest.csv")}
    clips = []
    for clip_id in ids:
        row = by_id.get(clip_id)
        if row is None:
            raise UserError(
                f"held-out clip {clip_id} is in the normalized manifest but not in {raw / 'manifest.csv'}; "
                "re-run the data stages (dvc repro normalize)"
            )
        rate = int(float(row["sample_rate"]))
        if rate != sample_rate:
            raise UserError(f"{raw / row['path']} is at {rate} Hz, the model at {sample_rate} Hz; re-run ingest")
        path = raw / row["path"]
        if not path.is_file():
            raise UserError(f"{path} (clip {clip_id}) is missing; re-run the data stages (dvc repro ingest)")
        audio = read_audio(path, frames=round(seconds * rate))
        clips.append(EvalClip(clip_id, audio.astype(np.float32), rate))
    return clips


def eval_set_fingerprint(clips: tp.Sequence[EvalClip], params: EvaluateParams, levels: LevelSettings) -> str:
    """SHA-256 (first 16 hex digits) of the clip ids, their samples and every setting that
    changes our metrics: two evaluations compare only when their fingerprints are equal."""
    h = hashlib.sha256()
    settings = {
        "version": EVALUATION_VERSION,
        "levels_dbfs": [float(v) for v in params.levels_dbfs],
        "seconds": params.seconds,
        "level_settings": dataclasses.asdict(levels),
    }
    h.update(json.dumps(settings, sort_keys=True).encode())
    for clip in clips:
        h.update(clip.id.encode() + b"\0" + str(clip.sample_rate).encode() + b"\0")
        h.update(np.ascontiguousarray(clip.audio, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


# --- measuring ----------------------------------------------------------------------------


def measure(ref: Array, est: Array, sample_rate: int) -> tuple[dict[str, float], dict[str, str]]:
    """Every clip metric of ``est`` against ``ref`` (``[T]`` each): (values, reasons for NaNs)."""
    from codec import metrics as m

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


def evaluate_model(
    model: CodecLike,
    clips: tp.Sequence[EvalClip],
    params: EvaluateParams,
    levels: LevelSettings = LevelSettings(),
    *,
    bitrates_kbps: tp.Sequence[float] | None = None,
    opus: bool = True,
    sweep: bool = True,
    codebook_size: int | None = None,
) -> Evaluation:
    """Measure ``model`` (and Opus) on ``clips``; see the module docstring.

    ``bitrates_kbps`` defaults to every bitrate the model serves; ``opus=False`` and
    ``sweep=False`` skip the baseline and the level sweep (re-evaluating a champion needs
    neither). ``codebook_size`` defaults to ``2 ** model.config.bits_per_code``.
    """
    from codec.inference import RoundTrip, roundtrip_with_codes
    from codec.metrics import amplitude_ratio, codebook_usage, snr_db
    from codec.opus import opus_roundtrip

    if not clips:
        raise UserError("no held-out clips to evaluate; add clips or raise train.val_fraction")
    rates = list(bitrates_kbps if bitrates_kbps is not None else model.config.bitrates_kbps)
    size = codebook_size or 2 ** int(model.config.bits_per_code)

    def code(x: Array, rate: int, kbps: float) -> RoundTrip:
        return roundtrip_with_codes(
            model,
            x,
            rate,
            kbps,
            levels.target_lufs,
            peak_ceiling_db=levels.peak_ceiling_db,
            limiter_window_ms=levels.limiter_window_ms,
        )

    sample_ids = {c.id for c in clips[: params.audio_samples]}
    samples: dict[str, dict[str, Array]] = {c.id: {"input": c.audio} for c in clips if c.id in sample_ids}
    rows: list[Row] = []
    level_rows: list[LevelRow] = []
    per_clip: list[dict[str, tp.Any]] = []

    def add_row(codec: str, kbps: float, eff: list[float], results: list[Measured]) -> Row:
        failures: dict[str, list[str]] = {}
        for clip, (_, reasons) in zip(clips, results, strict=True):
            for name, reason in reasons.items():
                failures.setdefault(name, []).append(f"{clip.id}: {reason}")
        row = Row(
            codec=codec,
            kbps=float(kbps),
            effective_kbps=_mean(eff),
            metrics={k: _mean(v[k] for v, _ in results) for k in CLIP_METRICS},
            n_clips=len(clips),
            failures=failures,
        )
        rows.append(row)
        return row

    for kbps in rates:
        results: list[Measured] = []
        codes = []
        for clip in clips:
            rt = code(clip.audio, clip.sample_rate, kbps)
            values, reasons = measure(clip.audio, rt.audio, clip.sample_rate)
            results.append((values, reasons))
            codes.append(rt.codes)
            per_clip.append({"codec": OURS, "kbps": kbps, "id": clip.id, **values, "reasons": reasons})
            if clip.id in samples:
                samples[clip.id][f"{OURS}_{kbps_key(kbps)}"] = rt.audio
        row = add_row(OURS, kbps, [kbps] * len(clips), results)
        usage = codebook_usage(np.concatenate(codes, axis=1), size)
        row.metrics["codebook_usage"] = usage.mean_used_fraction
        row.metrics["codebook_perplexity"] = usage.mean_perplexity

        if sweep and kbps == max(rates):  # the level path is the same at every bitrate; time is not
            for level in params.levels_dbfs:
                snrs, ratios = [], []
                for clip in clips:
                    x = _at_level(clip.audio, level)
                    y = code(x, clip.sample_rate, kbps).audio
                    snrs.append(snr_db(x, y))
                    ratios.append(amplitude_ratio(x, y))
                finite = [r for r in ratios if math.isfinite(r)] or [float("nan")]
                level_rows.append(
                    LevelRow(float(kbps), float(level), _mean(snrs), _mean(ratios), min(finite), max(finite))
                )

        if opus:
            for mode in params.opus_modes:
                name = OPUS_NAMES[mode]
                results, eff = [], []
                for clip in clips:
                    res = opus_roundtrip(
                        clip.audio,
                        clip.sample_rate,
                        round(kbps * 1000),
                        vbr=mode == "vbr",
                        frame_ms=params.opus_frame_ms,
                    )
                    values, reasons = measure(clip.audio, res.audio, clip.sample_rate)
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
                    if clip.id in samples:
                        samples[clip.id][f"{name}_{kbps_key(kbps)}"] = res.audio
                add_row(name, kbps, eff, results)

    return Evaluation(
        clip_ids=[c.id for c in clips],
        sample_rate=int(clips[0].sample_rate),
        bitrates_kbps=[float(k) for k in rates],
        rows=rows,
        levels=level_rows,
        per_clip=per_clip,
        samples=samples,
    )


# --- outputs --------------------------------------------------------------------------------


def _num(v: float, digits: int = 5) -> float | None:
    """JSON-safe rounded number (``None`` for NaN/inf, which JSON can't hold)."""
    return round(float(v), digits) if math.isfinite(v) else None


def metrics_dict(ev: Evaluation) -> dict[str, tp.Any]:
    """The DVC metrics JSON: summary at the top bitrate, then codec → kbps → metric, and levels."""
    top = ev.top_kbps
    ours = ev.row(OURS, top)
    out: dict[str, tp.Any] = {"kbps": top, "n_clips": len(ev.clip_ids)}
    out.update({k: _num(v) for k, v in ours.metrics.items()})
    for r in ev.rows:
        if r.codec != OURS and math.isclose(r.kbps, top):
            out.update({f"{r.codec}_{k}": _num(r.metrics[k]) for k in ("mel_distance", "pesq", "snr_db")})
            out[f"{r.codec}_effective_kbps"] = _num(r.effective_kbps, 3)
    worst = [lv for lv in ev.levels if math.isclose(lv.kbps, top)]
    if worst:
        out["worst_level_amplitude_ratio"] = _num(
            max((lv.amplitude_ratio for lv in worst), key=lambda a: abs(math.log(a)) if a > 0 else math.inf)
        )
    for r in ev.rows:
        entry = {k: _num(v) for k, v in r.metrics.items()}
        entry["effective_kbps"] = _num(r.effective_kbps, 3)
        out.setdefault(r.codec, {})[kbps_key(r.kbps)] = entry
    for lv in ev.levels:
        out.setdefault("levels", {}).setdefault(kbps_key(lv.kbps), {})[f"{lv.level_dbfs:g}dBFS"] = {
            "snr_db": _num(lv.snr_db),
            "amplitude_ratio": _num(lv.amplitude_ratio),
        }
    return out


def flat_metrics(ev: Evaluation) -> dict[str, float]:
    """``{"ours.6kbps.snr_db": ..., "levels.6kbps.-40dBFS.amplitude_ratio": ...}`` (finite values only)."""
    out: dict[str, float] = {}

    def walk(d: tp.Mapping[str, tp.Any], prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out[f"{prefix}{k}"] = float(v)

    walk(metrics_dict(ev), "")
    return out


TABLE_COLUMNS = ("codec", "kbps", "effective_kbps", *CLIP_METRICS, "codebook_usage", "n_clips")


def table_csv(ev: Evaluation) -> str:
    """The per-bitrate table (one row per codec and bitrate), the DVC plot."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(TABLE_COLUMNS)
    for r in sorted(ev.rows, key=lambda r: (r.kbps, r.codec != OURS, r.codec)):
        cells = [f"{r.metrics[k]:.6g}" if k in r.metrics else "" for k in (*CLIP_METRICS, "codebook_usage")]
        w.writerow([r.codec, f"{r.kbps:g}", f"{r.effective_kbps:.4g}", *cells, r.n_clips])
    return buf.getvalue()


def plot_csv(ev: Evaluation, metrics: tp.Sequence[str] = ("mel_distance", "pesq", "stoi", "snr_db")) -> str:
    """The same table wide, one row per bitrate (``kbps, ours_mel_distance, opus_mel_distance, …``):
    what ``dvc plots`` draws as one line per codec."""
    codecs = sorted({r.codec for r in ev.rows}, key=lambda c: (c != OURS, c))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["kbps", *(f"{c}_{m}" for m in metrics for c in codecs)])
    for kbps in sorted(ev.bitrates_kbps):
        w.writerow([f"{kbps:g}", *(f"{ev.row(c, kbps).metrics[m]:.6g}" for m in metrics for c in codecs)])
    return buf.getvalue()


def _fmt(v: float, digits: int = 2) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:.{digits}f}"


def report_markdown(
    ev: Evaluation, context: tp.Mapping[str, str], gates: tp.Sequence[tp.Mapping[str, tp.Any]] = ()
) -> str:
    """``report.md``: ours vs Opus per bitrate, the level sweep, the gates preview."""
    lines = ["# Evaluation: ours vs Opus on held-out Telugu speech", ""]
    lines += [f"- {k}: `{v}`" for k, v in context.items()]
    lines += [
        f"- clips: {len(ev.clip_ids)} held-out clips at their recorded level ({', '.join(ev.clip_ids)})",
        "",
        "## Per bitrate",
        "",
        "Means over clips. Mel distance: lower is better; the others higher, amplitude ratio 1.0. "
        "`eff. kbps`: what the codec spent (Opus from its packets).",
        "",
        "| kbps | codec | eff. kbps | SNR dB | SI-SDR dB | amplitude | mel dist. | PESQ | STOI | codebook use |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(ev.rows, key=lambda r: (r.kbps, r.codec != OURS, r.codec)):
        m = r.metrics
        use = _fmt(m["codebook_usage"]) if "codebook_usage" in m else ""
        lines.append(
            f"| {r.kbps:g} | {r.codec} | {r.effective_kbps:.2f} | {_fmt(m['snr_db'])} | {_fmt(m['si_sdr_db'])} | "
            f"{_fmt(m['amplitude_ratio'], 3)} | {_fmt(m['mel_distance'], 3)} | {_fmt(m['pesq'])} | "
            f"{_fmt(m['stoi'], 3)} | {use} |"
        )
    verdicts = []
    for kbps in ev.bitrates_kbps:
        ours = ev.row(OURS, kbps).metrics
        for r in ev.rows:
            if r.codec == OURS or not math.isclose(r.kbps, kbps):
                continue
            mel = "beats" if ours["mel_distance"] < r.metrics["mel_distance"] else "does not beat"
            pesq = "beats" if ours["pesq"] > r.metrics["pesq"] else "does not beat"
            verdicts.append(
                f"- {kbps:g} kbps: ours {mel} {r.codec} on mel distance ({_fmt(ours['mel_distance'], 3)} vs "
                f"{_fmt(r.metrics['mel_distance'], 3)}) and {pesq} it on PESQ ({_fmt(ours['pesq'])} vs "
                f"{_fmt(r.metrics['pesq'])}); {r.codec} spent {r.effective_kbps:.2f} kbps"
            )
    lines += ["", *verdicts]
    failures = [(r, k, v) for r in ev.rows for k, v in r.failures.items()]
    if failures:
        lines += ["", "Metrics left out of a mean (NaN) and why:", ""]
        for r, k, reasons in failures:
            lines.append(f"- {r.codec} {r.kbps:g} kbps {k}: {len(reasons)} clip(s), e.g. {reasons[0]}")
    if ev.levels:
        levels = sorted({lv.level_dbfs for lv in ev.levels})
        lines += [
            "",
            "## Per input level (ours)",
            "",
            "The same clips played in at each RMS level; amplitude ratio should read 1.0 at every level.",
            "",
            "| kbps | " + " | ".join(f"{lv:g} dBFS: amp. / SNR" for lv in levels) + " |",
            "| ---: |" + " ---: |" * len(levels),
        ]
        for kbps in sorted({lv.kbps for lv in ev.levels}):
            cells = []
            for level in levels:
                lv = next(x for x in ev.levels if math.isclose(x.kbps, kbps) and x.level_dbfs == level)
                cells.append(f"{_fmt(lv.amplitude_ratio, 3)} / {_fmt(lv.snr_db, 1)}")
            lines.append(f"| {kbps:g} | " + " | ".join(cells) + " |")
    if gates:
        lines += [
            "",
            "## Gates preview (params.yaml: promote)",
            "",
            "| gate | value | limit | result |",
            "| --- | ---: | --- | --- |",
        ]
        for g in gates:
            lines.append(
                f"| {g['name']} | {_fmt(g['value'], 3)} | {g['limit']} | {'pass' if g['passed'] else '**FAIL**'} |"
            )
    lines.append("")
    return "\n".join(lines)


def _spectrogram_png(clip_id: str, audios: tp.Mapping[str, Array], sample_rate: int) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from codec.plots import spectrogram_panel

    fig, axes = plt.subplots(len(audios), 1, figsize=(9, 1.9 * len(audios)), squeeze=False)
    for ax, (name, x) in zip(axes[:, 0], audios.items(), strict=True):
        spectrogram_panel(ax, x, sample_rate, f"{clip_id}: {name}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=70)
    plt.close(fig)
    return buf.getvalue()


def write_media(ev: Evaluation, folder: Path) -> None:
    """Spectrogram PNGs (input, ours and Opus at each bitrate) and the decoded WAVs of the sample clips
    (float WAVs with the same bytes for the same audio, so the out's DVC hash only moves with the audio)."""
    from codec.audio import write_wav

    folder.mkdir(parents=True, exist_ok=True)
    for clip_id, audios in ev.samples.items():
        (folder / f"{clip_id}_spectrograms.png").write_bytes(_spectrogram_png(clip_id, audios, ev.sample_rate))
        for name, x in audios.items():
            write_wav(folder / f"{clip_id}_{name}.wav", np.clip(x, -1.0, 1.0), ev.sample_rate, subtype="FLOAT")


def evaluation_record(ev: Evaluation, **extra: tp.Any) -> dict[str, tp.Any]:
    """``evaluation.json``: everything measured, JSON-safe, with ``extra`` (run, fingerprints, params)."""

    def clean(v: tp.Any) -> tp.Any:
        if isinstance(v, float):
            return _num(v, 6)
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return clean(
        {
            "version": EVALUATION_VERSION,
            **extra,
            "clip_ids": ev.clip_ids,
            "bitrates_kbps": ev.bitrates_kbps,
            "metrics": metrics_dict(ev),
            "rows": [dataclasses.asdict(r) for r in ev.rows],
            "levels": [dataclasses.asdict(lv) for lv in ev.levels],
            "per_clip": ev.per_clip,
        }
    )


# --- MLflow -----------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_model_run(
    client: MlflowClient, experiment: str, checkpoint: Path, ckpt: tp.Mapping[str, tp.Any], max_runs: int = 20
) -> str | None:
    """The id of the MLflow run that trained ``checkpoint``, or ``None``.

    ``codec train`` does not (yet) record its run id in the checkpoint; when a future
    checkpoint carries ``mlflow_run_id`` it is used. Otherwise the newest finished runs
    tagged ``stage=train`` are searched for one whose logged ``checkpoint/<name>``
    artifact has the same SHA-256 as ``checkpoint`` (a tag alone could name the wrong model).
    """
    run_id = ckpt.get("mlflow_run_id")
    if isinstance(run_id, str) and run_id:
        return run_id
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    digest = _sha256(checkpoint)
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string="tags.stage = 'train' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=max_runs,
    )
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            names = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}
            artifact = f"checkpoint/{checkpoint.name}"
            if artifact not in names:
                continue
            local = Path(client.download_artifacts(run.info.run_id, artifact, tmp))
            if _sha256(local) == digest:
                return run.info.run_id
    return None


def logged_model_id(run_id: str, name: str = MODEL_ARTIFACT) -> str | None:
    """The id of the model ``name`` that run ``run_id`` logged (MLflow 3 logged models), or None."""
    import mlflow

    run = mlflow.get_run(run_id)
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{name}'",
        output_format="list",
    )
    return str(models[0].model_id) if models else None


def log_to_mlflow(
    run_id: str | None,
    experiment: str,
    flat: tp.Mapping[str, float],
    tags: tp.Mapping[str, str],
    folder: Path,
    model: Codec,
) -> tuple[str, str]:
    """Log the evaluation into run ``run_id`` (artifacts under ``evaluation/``, metrics as
    ``eval.<key>``), or into a new run tagged ``stage=evaluate`` when ``run_id`` is None.
    ``model`` is logged there too unless the run already holds it. Returns (run id, model id)."""
    import mlflow

    from codec.train_stage import log_model

    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_id=run_id) as run:
        if run_id is None:
            mlflow.set_tag("stage", "evaluate")
        model_id = logged_model_id(run.info.run_id)
        if model_id is None:
            log_model(model)
            model_id = logged_model_id(run.info.run_id)
        if model_id is None:  # pragma: no cover (log_model always records one)
            raise UserError(f"MLflow run {run.info.run_id}: the logged model could not be found after logging it")
        mlflow.set_tags(dict(tags))
        mlflow.log_metrics({f"eval.{k}": v for k, v in flat.items()})
        mlflow.log_artifacts(str(folder), "evaluation")
        return str(run.info.run_id), model_id


# --- the stage entry ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="models/codec.pt", help="checkpoint to evaluate (default: %(default)s)")
    parser.add_argument("--data", default="data/normalized", help="normalized data: the split (default: %(default)s)")
    parser.add_argument("--raw", default="data/raw", help="the clips at their recorded level (default: %(default)s)")
    parser.add_argument("--metrics", default="reports/evaluate/metrics.json", help="DVC metrics JSON")
    parser.add_argument("--table", default="reports/evaluate/bitrates.csv", help="per-bitrate table CSV (DVC plot)")
    parser.add_argument("--plot", default="reports/evaluate/vs_opus.csv", help="wide per-bitrate CSV (DVC plot)")
    parser.add_argument("--evaluation", default="reports/evaluate/evaluation.json", help="full results JSON")
    parser.add_argument("--report", default="reports/evaluate/report.md", help="Markdown report")
    parser.add_argument("--media", default="reports/evaluate/media", help="folder for spectrograms and WAVs")
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default: %(default)s)")
    parser.add_argument("--experiment", default="telugu-speech-codec", help="MLflow experiment (default: %(default)s)")
    parser.add_argument("--no-mlflow", action="store_true", help="evaluate without logging to MLflow")


def load_params(path: str | Path) -> tuple[EvaluateParams, LevelSettings, dict[str, tp.Any] | None]:
    """(``evaluate``, the loudness keys of ``normalize``, the raw ``promote`` section or None)."""
    data = read_params(path)
    if "evaluate" not in data:
        raise UserError(f"{path}: section 'evaluate' is missing; add it (see README: Parameters)")
    params = from_dict(EvaluateParams, data["evaluate"], f"{path}: evaluate")
    norm = data.get("normalize") or {}
    levels = from_dict(
        LevelSettings,
        {k: norm[k] for k in ("target_lufs", "peak_ceiling_db", "limiter_window_ms") if k in norm},
        f"{path}: normalize",
    )
    return params, levels, data.get("promote")


def run(args: argparse.Namespace) -> int:
    import torch

    from codec.files import write_text_atomic
    from codec.model import for_inference, load_codec, model_fingerprint, read_checkpoint
    from codec.train_stage import data_version, git_commit, repo_root, tracking_uri

    params, levels, promote_section = load_params(args.params)
    if params.threads:
        torch.set_num_threads(params.threads)
    model_path = Path(args.model)
    ckpt = read_checkpoint(model_path)
    trained = load_codec(model_path)
    model = for_inference(trained)  # same outputs and fingerprint, faster on a CPU
    val_fraction = (ckpt.get("params") or {}).get("val_fraction")
    if not isinstance(val_fraction, (int, float)):
        raise UserError(
            f"{model_path} does not record the val_fraction it was trained with (params.val_fraction), so the "
            "held-out clips are unknown; retrain with codec train"
        )
    ids = held_out_ids(Path(args.data), float(val_fraction))[: params.max_clips]
    if not ids:
        raise UserError(f"no held-out clips in {args.data} with val_fraction={val_fraction}; add clips")
    clips = load_eval_clips(Path(args.raw), ids, params.seconds, model.config.sample_rate)
    fingerprint = eval_set_fingerprint(clips, params, levels)
    ev = evaluate_model(model, clips, params, levels)

    gates: list[dict[str, tp.Any]] = []
    if promote_section is not None:
        from codec.promote import PromoteParams, check_gates

        pp = from_dict(PromoteParams, promote_section, f"{args.params}: promote")
        gates = [dataclasses.asdict(g) for g in check_gates(metrics_dict(ev), pp)]

    root = repo_root()
    context = {
        "model": str(model_path),
        "model fingerprint": model_fingerprint(model).hex(),
        "evaluation-set fingerprint": fingerprint,
        "git commit": git_commit(root),
        "data version (data/normalized)": data_version(Path(args.data), root)[0],
    }
    metrics = metrics_dict(ev)
    report = report_markdown(ev, context, gates)
    media = Path(args.media)
    write_media(ev, media)
    run_id: str | None = None
    model_id: str | None = None
    if not args.no_mlflow:
        import mlflow
        from mlflow import MlflowClient

        mlflow.set_tracking_uri(tracking_uri())
        client = MlflowClient()
        train_run = find_model_run(client, args.experiment, model_path, ckpt)
        if train_run is None:
            print(f"no MLflow training run holds {model_path}; logging the model in a new evaluation run")
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp)
            (staged / "report.md").write_text(report, encoding="utf-8")
            (staged / "bitrates.csv").write_text(table_csv(ev), encoding="utf-8")
            (staged / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
            for f in media.iterdir():
                (staged / f.name).write_bytes(f.read_bytes())
            tags = {
                "eval_set_fingerprint": fingerprint,
                "model_fingerprint": context["model fingerprint"],
            }
            run_id, model_id = log_to_mlflow(train_run, args.experiment, flat_metrics(ev), tags, staged, trained)
        print(f"evaluation logged to MLflow run {run_id} in {mlflow.get_tracking_uri()}")
    record = evaluation_record(
        ev,
        model_path=str(model_path),
        model_fingerprint=context["model fingerprint"],
        eval_set_fingerprint=fingerprint,
        mlflow_run_id=run_id,
        model_id=model_id,
        model_uri=f"models:/{model_id}" if model_id else None,
        git_commit=context["git commit"],
        params=dataclasses.asdict(params),
        level_settings=dataclasses.asdict(levels),
        val_fraction=float(val_fraction),
    )
    write_text_atomic(args.evaluation, json.dumps(record, indent=2) + "\n")
    write_text_atomic(args.metrics, json.dumps(metrics, indent=2) + "\n")
    write_text_atomic(args.table, table_csv(ev))
    write_text_atomic(args.plot, plot_csv(ev))
    write_text_atomic(args.report, report)
    print(report)
    return 0
