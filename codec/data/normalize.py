"""The normalize stage: every clip to one loudness, under a peak ceiling.

Modes (``normalize.mode``):

- ``lufs`` (default): gain each clip so its BS.1770 integrated loudness is
  ``target_lufs`` (-16 LUFS, as DAC does). Loudness tracks what a listener hears,
  and the gating ignores pauses, so clips with long silences are not pushed up.
- ``rms``: gain each clip so its RMS level is ``target_rms_dbfs`` (the seed's fix).
- ``peak``: scale each clip so its peak is ``peak_target`` (0.95). This is the
  seed's bug, kept so the data gate can be shown catching it: recording levels
  then carry no consistent meaning and the per-file RMS spread is wide.

The peak ceiling (``peak_ceiling_db``) is enforced by a look-ahead limiter that
only touches the samples around peaks above it (see :func:`limit`); because
limiting lowers loudness a little, the gain is then raised by the measured
shortfall and the clip limited again, so loudness stays on target. The
manifest records, per file, the gain applied, whether the ceiling acted, the
largest gain reduction and the fraction of samples it touched.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing as tp
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import soundfile as sf

from codec.audio import Array
from codec.audio.io import TruncatedAudioError, read_audio, to_mono, write_wav
from codec.audio.level import LIMITER_WINDOW_MS, PEAK_CEILING_DB, TARGET_LUFS
from codec.audio.levels import db
from codec.audio.limiter import LimiterSpans, limit_spans
from codec.audio.loudness import LoudnessMeter
from codec.audio.resample import resample
from codec.data.manifest import read_manifest
from codec.errors import UserError
from codec.files import manifest_owned, staged_dir, write_text_atomic
from codec.parallel import parallel_map
from codec.params import from_dict, read_params

Mode = tp.Literal["lufs", "rms", "peak"]

# How close the make-up loop brings a limited clip to the target level (LU or dB);
# unlimited clips land on it exactly. A tenth of a loudness unit is inaudible.
LEVEL_TOLERANCE_DB = 0.05

_BEFORE_SUBSET = [
    "id",
    "path",
    "speaker",
    "duration_s",
    "sample_rate",
    "mode",
    "input_lufs",
    "input_rms_dbfs",
    "input_peak_dbfs",
    "gain_db",
    "lufs",
    "rms_dbfs",
    "peak_dbfs",
    "clipped_fraction",
    "ceiling_applied",
    "ceiling_reduction_db",
    "ceiling_samples_fraction",
]
# subset: the corpus's own train/dev/test list (ingest's column), which the split follows.
MANIFEST_COLUMNS = [*_BEFORE_SUBSET, "subset"]


@dataclasses.dataclass(frozen=True)
class NormalizeParams:
    """``normalize`` in params.yaml."""

    mode: Mode = "lufs"
    target_lufs: float = TARGET_LUFS
    target_rms_dbfs: float = -16.0
    peak_target: float = 0.95
    peak_ceiling_db: float = PEAK_CEILING_DB
    limiter_window_ms: float = LIMITER_WINDOW_MS
    sample_rate: int = 16000
    clip_threshold: float = 0.999
    subtype: tp.Literal["PCM_16", "PCM_24", "FLOAT"] = "PCM_16"
    workers: int = 0

    def check(self, where: str) -> None:
        if not -70.0 < self.target_lufs < 0.0:
            raise UserError(f"{where}.target_lufs must be within -70..0 LUFS, got {self.target_lufs}")
        if not -20.0 <= self.peak_ceiling_db <= 0.0:
            raise UserError(f"{where}.peak_ceiling_db must be within -20..0 dBFS, got {self.peak_ceiling_db}")
        if not 0.0 < self.peak_target <= 1.0:
            raise UserError(f"{where}.peak_target must be within (0, 1], got {self.peak_target}")
        if not 0.1 <= self.limiter_window_ms <= 100.0:
            raise UserError(f"{where}.limiter_window_ms must be within 0.1..100 ms, got {self.limiter_window_ms}")


@dataclasses.dataclass(frozen=True)
class _Job:
    clip_id: str
    source: str
    out: str
    params: NormalizeParams
    speaker: str = ""
    subset: str = ""


def normalize_clip(x: Array, rate: int, p: NormalizeParams) -> tuple[Array, dict[str, tp.Any]]:
    """Normalize mono ``x`` (``[T]`` at ``rate``, already at ``p.sample_rate``).

    Returns the output and its manifest fields (levels before and after). The meter, energy
    and magnitude are computed once here, on the per-file hot path that benchmarks/ times,
    and shared by the limiter's make-up loop (:func:`_limit_and_make_up`) and the fields.
    """
    x = np.asarray(x, np.float32)
    meter = LoudnessMeter(x, rate)
    in_lufs = meter.lufs()
    # One pass each for energy and peak, shared by every level below (float32 BLAS
    # accumulation: ~1e-6 relative, far below the manifest's 4 decimals of a dB).
    energy = float(np.dot(x, x))
    magnitude = np.abs(x)
    in_rms = db(float(np.sqrt(energy / x.size)))
    in_peak = db(float(np.max(magnitude)))
    if not np.isfinite(in_lufs):
        raise UserError("clip is below the -70 LUFS gate: cannot be loudness-normalized")
    if p.mode == "lufs":
        gain_db = p.target_lufs - in_lufs
    elif p.mode == "rms":
        gain_db = p.target_rms_dbfs - in_rms
    else:
        gain_db = 20 * np.log10(p.peak_target) - in_peak
    ceiling = 10 ** (p.peak_ceiling_db / 20)
    out_lufs = in_lufs + gain_db  # exact: loudness is linear in gain
    spans = LimiterSpans.none()
    lost = 0.0  # energy of x the limiter removes, before gain
    if 10 ** ((in_peak + gain_db) / 20) > ceiling:
        window = max(1, round(p.limiter_window_ms * 1e-3 * rate))
        gain_db, spans, out_lufs, lost = _limit_and_make_up(x, magnitude, meter, energy, p, ceiling, window, gain_db)
    g = float(10 ** (gain_db / 20))
    y = x * np.float32(g)
    y[spans.index] *= spans.gain
    touched = spans.touched()
    out_peak = max(float(np.max(y)), -float(np.min(y)))
    clipped = int(np.count_nonzero(np.abs(y) >= p.clip_threshold)) if out_peak >= p.clip_threshold else 0
    fields = {
        "mode": p.mode,
        "input_lufs": round(in_lufs, 4),
        "input_rms_dbfs": round(in_rms, 4),
        "input_peak_dbfs": round(in_peak, 4),
        "gain_db": round(float(gain_db), 4),
        "lufs": round(float(out_lufs), 4),
        "rms_dbfs": round(db(float(np.sqrt(max(g * g * (energy - lost), 0.0) / y.size))), 4),
        "peak_dbfs": round(db(out_peak), 4),
        "clipped_fraction": clipped / y.size,
        "ceiling_applied": touched > 0,
        "ceiling_reduction_db": round(float(-20 * np.log10(spans.min_gain)), 4),
        "ceiling_samples_fraction": touched / max(1, y.size),
    }
    return y, fields


def _limit_and_make_up(
    x: Array,
    magnitude: Array,
    meter: LoudnessMeter,
    energy: float,
    p: NormalizeParams,
    ceiling: float,
    window: int,
    gain_db: float,
) -> tuple[float, LimiterSpans, float, float]:
    """Limit ``x`` at ``gain_db`` to ``ceiling``, then make up the loudness the limiter took,
    until the level is within LEVEL_TOLERANCE_DB of the target (``peak`` mode: limit once).
    Returns the gain (dB), the limiter's spans, the output loudness (LUFS) and the energy of
    ``x`` the limiter removes (before gain).

    The start is the gain that an estimate of the shortfall (no re-metering) calls for, so
    one exact round usually suffices, at most three on speech: the limiter touches only
    milliseconds around each peak. Each round re-meters only the limited spans, and only
    samples within 12 dB of the ceiling are looked at.
    """
    first_gain_db = gain_db
    candidates = np.flatnonzero(magnitude > ceiling / (10 ** ((first_gain_db + 12.0) / 20)))
    slope = 0.87  # level gained per dB of gain: < 1, as more is limited at a higher gain
    previous: tuple[float, float] | None = None
    if p.mode != "peak":
        shortfall = _predicted_shortfall(x, magnitude, meter, energy, p.mode, ceiling, window, gain_db, candidates)
        gain_db = min(gain_db + shortfall / slope, first_gain_db + 12.0)
    for round_ in range(8):
        g = float(10 ** (gain_db / 20))
        spans = limit_spans(x, ceiling, window, gain=g, magnitude=magnitude, candidates=candidates)
        part = x[spans.index]
        removed = part * np.float32(g) * (1 - spans.gain)
        out_lufs = meter.lufs_minus(g, spans.starts, spans.lengths, removed)
        lost = float(np.sum(np.square(part, dtype=np.float64) * (1 - np.square(spans.gain, dtype=np.float64))))
        if p.mode == "peak":
            break
        if p.mode == "lufs":
            level, target = out_lufs, p.target_lufs
        else:
            level, target = 10 * np.log10(g * g * (energy - lost) / x.size), p.target_rms_dbfs
        if abs(target - level) < LEVEL_TOLERANCE_DB or round_ == 7:
            break
        if previous is not None and gain_db != previous[0]:  # secant step
            slope = float(np.clip((level - previous[1]) / (gain_db - previous[0]), 0.3, 1.0))
        previous = (gain_db, level)
        step = (target - level) / slope
        if gain_db + step > first_gain_db + 12.0:
            break  # more than 12 dB of make-up: keep this round's result
        gain_db += step
    return gain_db, spans, out_lufs, lost


def _predicted_shortfall(
    x: Array,
    magnitude: Array,
    meter: LoudnessMeter,
    energy: float,
    mode: Mode,
    ceiling: float,
    window: int,
    gain_db: float,
    candidates: npt.NDArray[np.int64],
) -> float:
    """The level (LU or dB) that limiting ``x`` at ``gain_db`` takes, estimated without re-metering:
    the energy the limiter removes over the clip's energy, for loudness weighted by the
    K-filter's gain over the limited spans (within 0.05 LU of the metered value for ~90 %
    of limited speech clips). The make-up loop starts from the gain this predicts, so
    its first exact metering usually lands on the target.
    """
    g = float(10 ** (gain_db / 20))
    spans = limit_spans(x, ceiling, window, gain=g, magnitude=magnitude, candidates=candidates)
    part = x[spans.index]
    lost = float(np.dot(part, part * (1 - np.square(spans.gain))))
    total = energy
    if mode == "lufs":
        k_part = meter.kx[spans.index]
        lost *= float(np.dot(k_part, k_part)) / max(float(np.dot(part, part)), 1e-30)
        total = meter.energy
    if total <= 0 or lost >= total:
        return 0.0
    return -10.0 * math.log10(1.0 - lost / total)


def _normalize_one(job: _Job) -> dict[str, tp.Any]:
    try:
        data, rate = read_audio(job.source)
    except (sf.LibsndfileError, TruncatedAudioError, RuntimeError, OSError) as e:  # changed since it was listed
        raise UserError(f"{job.source}: cannot be read ({e}); re-run the stage that writes it (dvc repro)") from None
    x = resample(to_mono(data), rate, job.params.sample_rate)
    try:
        y, fields = normalize_clip(x, job.params.sample_rate, job.params)
    except UserError as e:
        raise UserError(f"{job.source}: {e}") from None
    name = f"{job.clip_id}.wav"
    # Into the staging folder, which is swapped in as a whole: no per-file rename needed.
    write_wav(Path(job.out) / name, y, job.params.sample_rate, subtype=job.params.subtype, atomic=False)
    return {
        "id": job.clip_id,
        "path": name,
        "speaker": job.speaker,
        "duration_s": round(y.shape[0] / job.params.sample_rate, 6),
        "sample_rate": job.params.sample_rate,
        **fields,
        "subset": job.subset,
    }


def _every_clip_written(staging: Path) -> None:
    """``complete`` for :func:`codec.files.staged_dir`: the staging holds its manifest and
    every file that manifest lists (what is published is what this run completed)."""
    try:
        paths = pd.read_csv(staging / "manifest.csv", usecols=["path"])["path"]
    except (OSError, ValueError) as e:
        raise UserError(f"normalize: the staging folder {staging} has no readable manifest ({e}); re-run") from None
    missing = [str(p) for p in paths if not (staging / str(p)).is_file()]
    if missing:
        raise UserError(
            f"normalize: {len(missing)} of {len(paths)} clips the manifest lists are missing from the staging "
            f"folder {staging} (e.g. {missing[0]}); nothing was published. Re-run the stage"
        )


def normalize(raw: Path, out: Path, params: NormalizeParams) -> pd.DataFrame:
    """Normalize every clip in ``raw``'s manifest into ``out`` (replaced as a whole, only once
    every clip of the manifest is written: see :func:`codec.files.staged_dir`)."""
    manifest = read_manifest(raw)  # ids and paths checked: nothing read or written outside the folders

    def owned(folder: Path) -> bool:
        return manifest_owned(MANIFEST_COLUMNS)(folder) or manifest_owned(_BEFORE_SUBSET)(folder)

    def column(name: str) -> list[str]:
        values = manifest[name] if name in manifest.columns else [""] * len(manifest)
        return ["" if pd.isna(v) else str(v) for v in values]

    with staged_dir(out, inputs=[raw], owned=owned, complete=_every_clip_written) as staging:
        jobs = [
            _Job(str(cid), str(raw / path), str(staging), params, spk, sub)
            for cid, path, spk, sub in zip(
                manifest["id"], manifest["path"], column("speaker"), column("subset"), strict=True
            )
        ]
        rows = parallel_map(_normalize_one, jobs, params.workers, desc=f"normalize ({params.mode})")
        df = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
        write_text_atomic(staging / "manifest.csv", df.to_csv(index=False))
    return df


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--in", dest="raw", type=Path, required=True, help="ingested clips (data/raw)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (data/normalized)")
    parser.add_argument("--params", default="params.yaml", help="params file (reads normalize, ingest.sample_rate)")


def load_params(path: str | Path) -> NormalizeParams:
    """``normalize`` of the params file, with the sample rate and clip threshold of ``ingest``."""
    all_params = read_params(path)
    section = dict(all_params.get("normalize") or {})
    # The clips are already at ingest.sample_rate; normalize keeps them there.
    ingest = all_params.get("ingest") or {}
    for key in ("sample_rate", "clip_threshold"):
        if key in ingest:
            section.setdefault(key, ingest[key])
    return from_dict(NormalizeParams, section, f"{path}: normalize")


def run(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    df = normalize(args.raw, args.out, params)
    limited = int(df["ceiling_applied"].sum())
    print(
        f"codec normalize: {len(df)} clips to "
        + {
            "lufs": f"{params.target_lufs} LUFS",
            "rms": f"{params.target_rms_dbfs} dB RMS",
            "peak": f"peak {params.peak_target}",
        }[params.mode]
        + f"; ceiling {params.peak_ceiling_db} dBFS limited {limited} clip(s)"
        + (f" (largest reduction {df['ceiling_reduction_db'].max():.2f} dB)" if limited else "")
    )
    print(
        f"  loudness {df['lufs'].mean():.2f} ± {df['lufs'].std():.2f} LU, "
        f"RMS spread (std) {df['rms_dbfs'].std():.2f} dB"
    )
    return 0
