"""What the evaluate stage writes: the metrics JSON, per-bitrate CSVs, ``report.md``,
spectrograms and sample WAVs, ``evaluation.json``."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import typing as tp
from pathlib import Path

import numpy as np

from codec.audio import Array
from codec.audio.io import write_wav
from codec.evaluation.evaluate import CLIP_METRICS, Evaluation, LevelRow
from codec.evaluation.record import (
    OURS,
    EvaluationJSON,
    clip_level_error_db,
    kbps_key,
    level_entry,
    level_key,
    worst_amplitude,
)
from codec.evaluation.record import json_number as _num
from codec.evaluation.sets import EVALUATION_VERSION
from codec.plots import spectrogram_panel


def metrics_dict(ev: Evaluation) -> dict[str, tp.Any]:
    """The DVC metrics JSON: summary at the top bitrate, then codec → kbps → metric, and levels
    (the layout :class:`codec.evaluation.record.SetMetrics` reads)."""
    top = ev.top_kbps
    ours = ev.row(OURS, top)
    out: dict[str, tp.Any] = {"kbps": top, "n_clips": len(ev.clip_ids)}
    out.update({k: _num(v) for k, v in ours.metrics.items()})
    for r in ev.rows:
        if r.codec != OURS and math.isclose(r.kbps, top):
            out.update({f"{r.codec}_{k}": _num(r.metrics[k]) for k in ("mel_distance", "pesq", "snr_db")})
            out[f"{r.codec}_effective_kbps"] = _num(r.effective_kbps, 3)
    worst = _worst_level(ev, top)
    if worst is not None:
        out["worst_level_amplitude_ratio"] = _num(worst.amplitude_ratio)
    for r in [*ev.rows, *ev.without_side]:
        entry = {k: _num(v) for k, v in r.metrics.items()}
        entry["effective_kbps"] = _num(r.effective_kbps, 3)
        out.setdefault(r.codec, {})[kbps_key(r.kbps)] = entry
    for lv in ev.levels:
        out.setdefault("levels", {}).setdefault(kbps_key(lv.kbps), {})[level_key(lv.level_dbfs)] = level_entry(
            lv.snr_db, lv.amplitude_ratio, lv.min_amplitude_ratio, lv.max_amplitude_ratio
        )
    return out


def _clip_error(lv: LevelRow) -> float:
    """How far (dB) the clip farthest from its input level came out, at one bitrate and level."""
    return clip_level_error_db(lv.min_amplitude_ratio, lv.max_amplitude_ratio)


def _worst_level(ev: Evaluation, kbps: float) -> LevelRow | None:
    """The input level whose amplitude ratio is farthest from 1.0 at ``kbps`` (``None``: no sweep there)."""
    rows = [lv for lv in ev.levels if math.isclose(lv.kbps, kbps)]
    return worst_amplitude(rows, lambda lv: lv.amplitude_ratio) if rows else None


def flat_metrics(evs: Evaluation | tp.Mapping[str, Evaluation]) -> dict[str, float]:
    """What an MLflow run carries of an evaluation (a single :class:`Evaluation`: the held-out
    set's): per evaluation set at its top bitrate, :func:`codec.tracking.set_metric_names` (ours
    with the side information, ``opus_pesq``, ``model_amplitude_ratio``: ours without it), keyed
    ``<set>/<metric>_<kbps>kbps`` (:func:`codec.tracking.metric_key`: the keys ``codec promote``
    logs, so the UI groups them per set); finite values only. Every bitrate, codec, input level and
    clip goes to the run's tables (:func:`codec.evaluation.stage.evaluation_tables`) instead."""
    from codec.evaluation.params import HELD_OUT
    from codec.tracking import metric_key, set_metric_names

    summary = sets_summary({HELD_OUT: evs} if isinstance(evs, Evaluation) else evs)
    out: dict[str, float] = {}
    for name, entry in summary.items():
        for metric in set_metric_names(name):
            v = entry.get(_SUMMARY_KEYS.get(metric, metric))
            if v is not None and math.isfinite(v):
                out[metric_key(name, metric, float(entry["kbps"] or 0.0))] = float(v)
    return out


# The names the MLflow metrics give what sets_summary calls otherwise.
_SUMMARY_KEYS = {"model_amplitude_ratio": "no_side_amplitude_ratio"}


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


def _pair(ours: tp.Mapping[str, float], other: tp.Mapping[str, float] | None, key: str, digits: int = 2) -> str:
    """``ours / other`` of metric ``key`` for a report cell (``n/a`` where there is no other)."""
    return f"{_fmt(ours[key], digits)} / {_fmt(other[key], digits) if other is not None else 'n/a'}"


def report_markdown(ev: Evaluation, context: tp.Mapping[str, str]) -> str:
    """``report.md``: ours vs Opus per bitrate and the level sweep (the gates are the promote stage's)."""
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
            "The same clips played in at each RMS level: mean amplitude ratio (1.0 at every level) / SNR dB "
            "/ the worst clip's level error in dB.",
            "",
            "| kbps | " + " | ".join(f"{lv:g} dBFS: amp. / SNR / worst clip" for lv in levels) + " |",
            "| ---: |" + " ---: |" * len(levels),
        ]
        for kbps in sorted({lv.kbps for lv in ev.levels}):
            cells = []
            for level in levels:
                lv = next(x for x in ev.levels if math.isclose(x.kbps, kbps) and x.level_dbfs == level)
                cells.append(f"{_fmt(lv.amplitude_ratio, 3)} / {_fmt(lv.snr_db, 1)} / {_fmt(_clip_error(lv), 2)}")
            lines.append(f"| {kbps:g} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


SET_DESCRIPTIONS = {
    "held_out": "held-out speakers, as recorded",
    "telephone": "the same clips band-limited to a telephone channel",
    "cheap_mic": "the same clips through a cheap microphone's response",
    "reverb": "the same clips in a reverberant room (synthetic impulse response)",
    "noise": "the same clips with background noise",
    "unseen_voice": "speech from a synthesizer the corpus never used (espeak-ng Klatt voices)",
}


def sets_summary(evs: tp.Mapping[str, Evaluation]) -> dict[str, dict[str, float | None]]:
    """Per set, at each set's top bitrate: our headline metrics, Opus' beside them and the worst
    input level's amplitude ratio (the few numbers a team compares; flat, for DVC metrics)."""
    out: dict[str, dict[str, float | None]] = {}
    for name, ev in evs.items():
        top = ev.top_kbps
        ours = ev.row(OURS, top).metrics
        entry: dict[str, float | None] = {"kbps": top, "n_clips": float(len(ev.clip_ids))}
        entry.update({k: _num(ours[k]) for k in ("snr_db", "amplitude_ratio", "mel_distance", "pesq", "stoi")})
        for r in ev.rows:
            if r.codec != OURS and math.isclose(r.kbps, top):
                entry.update({f"{r.codec}_{k}": _num(r.metrics[k]) for k in ("mel_distance", "pesq", "stoi")})
        plain = next((r.metrics for r in ev.without_side if math.isclose(r.kbps, top)), None)
        if plain is not None:
            entry.update({f"no_side_{k}": _num(plain[k]) for k in ("snr_db", "amplitude_ratio", "pesq", "stoi")})
        worst = _worst_level(ev, top)
        entry["worst_level_amplitude_ratio"] = _num(worst.amplitude_ratio if worst else math.nan)
        entry["worst_level_dbfs"] = _num(worst.level_dbfs if worst else math.nan)
        out[name] = entry
    return out


def headline(evs: tp.Mapping[str, Evaluation]) -> dict[str, float | None]:
    """The few numbers a team compares between experiments (``dvc metrics show``, ``dvc exp
    show``): flat, numeric, short names shared with the other stages' headline files (so the
    table is a column per number, not per file and number, and fits 120 columns). Held-out
    speakers at the top bitrate: ``amp`` (output/input RMS), ``snr_db``, ``pesq`` beside
    ``opus_pesq``, ``mel`` (distance); over every evaluation set (and, for amplitude, every input
    level): ``worst_amp`` (the ratio farthest from 1.0) and ``worst_pesq``. Every set, bitrate and
    level is in ``metrics.json``."""
    held = evs["held_out"] if "held_out" in evs else next(iter(evs.values()))
    top = held.top_kbps
    ours = held.row(OURS, top).metrics
    opus = next((r.metrics for r in held.rows if r.codec != OURS and math.isclose(r.kbps, top)), {})
    out: dict[str, float | None] = {
        "amp": _num(ours["amplitude_ratio"], 4),
        "snr_db": _num(ours["snr_db"], 3),
        "pesq": _num(ours["pesq"], 3),
        "opus_pesq": _num(opus.get("pesq", math.nan), 3),
        "mel": _num(ours["mel_distance"], 4),
    }
    amps: list[float] = []
    pesqs: list[float] = []
    for ev in evs.values():
        m = ev.row(OURS, ev.top_kbps).metrics
        amps.append(m["amplitude_ratio"])
        amps += [lv.amplitude_ratio for lv in ev.levels if math.isclose(lv.kbps, ev.top_kbps)]
        pesqs.append(m["pesq"])
    finite = [a for a in amps if math.isfinite(a) and a > 0]
    out["worst_amp"] = _num(worst_amplitude(finite, float), 4) if len(finite) == len(amps) and finite else None
    out["worst_pesq"] = _num(min(pesqs), 3) if all(math.isfinite(p) for p in pesqs) else None
    return out


def levels_csv(evs: tp.Mapping[str, Evaluation]) -> str:
    """Amplitude ratio and SNR per input level, ours at each set's top bitrate, one column per
    evaluation set (``amp_<set>``, ``snr_<set>``): the DVC plot of level handling, x = input level."""
    by_level: dict[float, dict[str, float | None]] = {}
    for name, ev in evs.items():
        for lv in ev.levels:
            if math.isclose(lv.kbps, ev.top_kbps):
                row = by_level.setdefault(lv.level_dbfs, {})
                row[f"amp_{name}"] = _num(lv.amplitude_ratio)
                row[f"snr_{name}"] = _num(lv.snr_db)
    columns = [f"amp_{n}" for n in evs] + [f"snr_{n}" for n in evs]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["level_dbfs", *columns])
    for level in sorted(by_level):
        w.writerow([f"{level:g}", *(by_level[level].get(c, "") for c in columns)])
    return buf.getvalue()


def sets_csv(evs: tp.Mapping[str, Evaluation]) -> str:
    """Per bitrate (``kbps``, the DVC plots' x), one column per evaluation set: ours' delivered
    amplitude ratio (``amp_<set>``, with the energy side information), the model's own without it
    (``model_amp_<set>``, when scored), SNR (``snr_<set>``) and PESQ (``pesq_<set>``). The
    per-input-level table (:func:`levels_csv`) is flat by construction (the inference path brings
    every level to the training loudness), so it is a report, not a plot."""
    rates = sorted({k for ev in evs.values() for k in ev.bitrates_kbps})
    columns: list[tuple[str, str, str, str]] = []  # (column, set, which rows, metric)
    for name, ev in evs.items():
        columns.append((f"amp_{name}", name, OURS, "amplitude_ratio"))
        if ev.without_side:
            columns.append((f"model_amp_{name}", name, "without_side", "amplitude_ratio"))
    columns += [(f"snr_{n}", n, OURS, "snr_db") for n in evs]
    columns += [(f"pesq_{n}", n, OURS, "pesq") for n in evs]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["kbps", *(c for c, _, _, _ in columns)])
    for kbps in rates:
        cells = []
        for _, name, which, metric in columns:
            ev = evs[name]
            rows = ev.without_side if which == "without_side" else [r for r in ev.rows if r.codec == OURS]
            row = next((r for r in rows if math.isclose(r.kbps, kbps)), None)
            cells.append(_num(row.metrics.get(metric, math.nan), 5) if row is not None else "")
        w.writerow([f"{kbps:g}", *("" if v is None else v for v in cells)])
    return buf.getvalue()


def sets_markdown(evs: tp.Mapping[str, Evaluation]) -> str:
    """The report's section on every evaluation set: ours vs Opus at each bitrate, and the
    amplitude ratio per input level at the top one."""
    lines = [
        "## Every evaluation set",
        "",
        "Each set scored like the held-out one; the promotion gates apply to every set, and the "
        "promotion record names the worst. Per bitrate: ours / Opus.",
        "",
        "| set | what | kbps | SNR dB | amplitude | mel dist. ours / opus | PESQ ours / opus | STOI ours / opus |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, ev in evs.items():
        for kbps in ev.bitrates_kbps:
            m = ev.row(OURS, kbps).metrics
            opus = next((r.metrics for r in ev.rows if r.codec != OURS and math.isclose(r.kbps, kbps)), None)
            lines.append(
                f"| {name} | {SET_DESCRIPTIONS.get(name, name)} ({len(ev.clip_ids)} clips) | {kbps:g} | "
                f"{_fmt(m['snr_db'])} | {_fmt(m['amplitude_ratio'], 3)} | {_pair(m, opus, 'mel_distance', 3)} | "
                f"{_pair(m, opus, 'pesq')} | {_pair(m, opus, 'stoi', 3)} |"
            )
    levels = sorted({lv.level_dbfs for ev in evs.values() for lv in ev.levels})
    if levels:
        lines += [
            "",
            "Amplitude ratio / the worst clip's level error (dB) per input level (RMS dBFS), ours at each bitrate:",
            "",
            "| set | kbps | " + " | ".join(f"{lv:g} dBFS" for lv in levels) + " |",
            "| --- | ---: |" + " ---: |" * len(levels),
        ]
        for name, ev in evs.items():
            for kbps in ev.bitrates_kbps:
                cells = []
                for level in levels:
                    lv = next((x for x in ev.levels if math.isclose(x.kbps, kbps) and x.level_dbfs == level), None)
                    cells.append(f"{_fmt(lv.amplitude_ratio, 3)} / {_fmt(_clip_error(lv), 2)}" if lv else "n/a")
                lines.append(f"| {name} | {kbps:g} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def side_info_markdown(evs: tp.Mapping[str, Evaluation]) -> str:
    """The report's section on the energy side information: ours with it (what users get) and
    without it, per set and bitrate, and what it costs (empty when it was not compared)."""
    if not any(ev.without_side for ev in evs.values()):
        return ""
    lines = [
        "## Energy side information: with / without",
        "",
        "Ours with the coded block energies (what `codec encode` sends; the gates read these rows) "
        "and without them (`codec encode --no-energy`; only the model_amplitude_ratio gate reads "
        "these). Side bit/s: what the levels cost, counted in ours' effective bitrate.",
        "",
        "| set | kbps | side bit/s (% of kbps) | amplitude | SNR dB | PESQ | STOI | mel dist. |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, ev in evs.items():
        for plain in ev.without_side:
            row = ev.row(OURS, plain.kbps)
            m, p = row.metrics, plain.metrics
            side_bps = (row.effective_kbps - row.kbps) * 1000.0
            cells = [_pair(m, p, "amplitude_ratio", 3), _pair(m, p, "snr_db"), _pair(m, p, "pesq")]
            cells += [_pair(m, p, "stoi", 3), _pair(m, p, "mel_distance", 3)]
            side = f"{side_bps:.0f} ({100 * side_bps / (row.kbps * 1000):.2f} %)"
            lines.append(f"| {name} | {row.kbps:g} | {side} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def _spectrogram_png(clip_id: str, audios: tp.Mapping[str, Array], sample_rate: int) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    folder.mkdir(parents=True, exist_ok=True)
    images = folder / "spectrograms"  # a folder of images only: DVC's image plot
    images.mkdir(exist_ok=True)
    for clip_id, audios in ev.samples.items():
        (images / f"{clip_id}.png").write_bytes(_spectrogram_png(clip_id, audios, ev.sample_rate))
        for name, x in audios.items():
            write_wav(folder / f"{clip_id}_{name}.wav", np.clip(x, -1.0, 1.0), ev.sample_rate, subtype="FLOAT")


def evaluation_record(ev: Evaluation, **extra: tp.Any) -> EvaluationJSON:
    """``evaluation.json``: everything measured, JSON-safe, with ``extra`` (run, fingerprints, params;
    the keys of :class:`codec.evaluation.record.EvaluationJSON`)."""

    def clean(v: tp.Any) -> tp.Any:
        if isinstance(v, float):
            return _num(v, 6)
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return tp.cast(
        EvaluationJSON,
        clean(
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
        ),
    )
