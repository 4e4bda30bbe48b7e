"""The ingest stage: a folder of recordings in, mono clips at one sample rate out.

Every entry under the source folder is accounted for (and each clip's speaker is the first
folder level under it, see :mod:`codec.data.split`): it becomes a clip in
``data/raw/`` with a row in ``manifest.csv``, or a row in ``rejected.csv`` with a
reason. ``accepted + rejected == inputs``, always. Levels are measured here and
left alone (normalization is the next stage), so the raw manifest shows the
spread of recording levels the data arrived with.

Reasons a file is rejected (the ``reason`` column):

=================== ==========================================================
not_a_file          a directory (or other non-file) with an audio extension
unsupported_format  not an audio extension (.wav, .flac, .ogg, .oga, .mp3)
unreadable          the decoder refused it (corrupt header, wrong format…)
truncated           shorter than its header declares
empty               no samples
nan_or_inf          holds NaN or infinite samples
too_short/too_long  outside [ingest.min_duration_s, ingest.max_duration_s] (too_long from the
                    header when it says, before anything is decoded)
silent              peak below ingest.silence_peak_dbfs
dc_only             a constant offset and nothing else (peak below silence once it is removed)
too_quiet_to_meter  no 400 ms block above BS.1770's -70 LUFS gate
duplicate           same audio content as an accepted clip (hash of the samples), or a link
                    to a folder that is read already
symlink_loop        a symbolic link that leads back to itself or to a folder it is inside
=================== ==========================================================
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import hashlib
import math
import os
import re
import typing as tp
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from codec.audio.io import AUDIO_EXTENSIONS, AudioTooLongError, TruncatedAudioError, read_audio, to_mono, write_wav
from codec.audio.levels import clipped_fraction, peak_dbfs, rms_dbfs
from codec.audio.loudness import integrated_lufs
from codec.audio.resample import resample
from codec.data.corpus import CorpusParams
from codec.errors import UserError
from codec.files import manifest_owned, staged_dir, write_text_atomic
from codec.parallel import parallel_map
from codec.params import load_section

MANIFEST_COLUMNS = [
    "id",
    "path",
    "source_path",
    "speaker",
    "duration_s",
    "sample_rate",
    "source_sample_rate",
    "channels",
    "source_format",
    "peak_dbfs",
    "rms_dbfs",
    "lufs",
    "clipped_fraction",
    "dc_offset",
    "content_hash",
]
REJECTED_COLUMNS = ["source_path", "reason", "detail"]


@dataclasses.dataclass(frozen=True)
class IngestParams:
    """``ingest`` in params.yaml."""

    source: str = "data/corpus"
    sample_rate: int = 16000
    min_duration_s: float = 0.5
    max_duration_s: float = 60.0
    silence_peak_dbfs: float = -60.0
    clip_threshold: float = 0.999
    workers: int = 0
    corpus: CorpusParams = dataclasses.field(default_factory=CorpusParams)

    def check(self, where: str) -> None:
        if not 4000 <= self.sample_rate <= 192000:
            raise UserError(f"{where}.sample_rate must be within 4000..192000 Hz, got {self.sample_rate}")
        if not 0.4 <= self.min_duration_s < self.max_duration_s:
            raise UserError(
                f"{where}: need 0.4 <= min_duration_s < max_duration_s (BS.1770 needs a 400 ms block), "
                f"got {self.min_duration_s} and {self.max_duration_s}"
            )


@dataclasses.dataclass(frozen=True)
class IngestResult:
    accepted: pd.DataFrame  # MANIFEST_COLUMNS
    rejected: pd.DataFrame  # REJECTED_COLUMNS
    inputs: int


@dataclasses.dataclass(frozen=True)
class _Job:
    source: str  # absolute path
    rel: str  # path relative to the source folder (POSIX)
    clip_id: str
    out_dir: str
    params: IngestParams
    reject: tuple[str, str] | None = None  # decided while listing (links)


@dataclasses.dataclass(frozen=True)
class Input:
    """One entry under the source folder that ingest must account for."""

    path: Path
    rel: str  # relative to the source folder (POSIX)
    reject: tuple[str, str] | None = None  # (reason, detail) decided while listing


def list_inputs(source: Path) -> list[Input]:
    """Every entry under ``source`` that ingest must account for.

    Files of any kind (symlinks and dangling links included: they become rejected rows,
    never nothing), plus directories whose name looks like an audio file (``take.wav/``),
    which are inputs a user meant as audio. Symlinked folders are followed; a link to a
    folder that is being read already (a loop, or a second way into the same folder) is
    itself an input, rejected as ``symlink_loop``/``duplicate``. Sorted, so ids and
    duplicate resolution do not depend on the file system's order.
    """
    found: list[Input] = []
    read: dict[tuple[int, int], str] = {}  # folders listed so far -> their relative path

    def walk(folder: Path, rel: str, ancestors: frozenset[tuple[int, int]]) -> None:
        st = folder.stat()
        key = (st.st_dev, st.st_ino)
        read[key] = rel.rstrip("/") or "."
        ancestors = ancestors | {key}
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            raise UserError(f"ingest: cannot list {folder}: {e.strerror}; fix its permissions") from None
        for entry in entries:
            p, r = Path(entry.path), f"{rel}{entry.name}"
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if not is_dir:
                reason = _link_problem(p) if entry.is_symlink() else None
                found.append(Input(p, r, reason))
                continue
            if entry.name.lower().endswith(AUDIO_EXTENSIONS):
                found.append(Input(p, r))  # rejected as not_a_file by the worker
                continue
            st_d = p.stat()
            key_d = (st_d.st_dev, st_d.st_ino)
            if key_d in ancestors:
                found.append(Input(p, r, ("symlink_loop", f"a link to {read[key_d]}, a folder it is inside")))
            elif key_d in read:
                found.append(Input(p, r, ("duplicate", f"a link to the folder {read[key_d]}, read already")))
            else:
                walk(p, r + "/", ancestors)

    walk(source, "", frozenset())
    return sorted(found, key=lambda t: t.rel)


def _link_problem(path: Path) -> tuple[str, str] | None:
    """(reason, detail) for a symlink that does not lead to a file, else ``None``."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return ("symlink_loop", "a symbolic link that leads back to itself")
        return ("not_a_file", f"a symbolic link to {os.readlink(path)}, which does not exist")
    return None


def speaker_from_path(rel: str) -> str:
    """The speaker of an input: its first folder level under the source (``spk07/a.wav`` ->
    ``spk07``), or ``""`` for a file directly in the source folder (no speaker known)."""
    head, sep, _ = rel.partition("/")
    return head if sep else ""


def make_ids(rels: list[str]) -> list[str]:
    """A readable, unique id per relative path: ``spk1/utt 01.wav`` -> ``spk1__utt_01``."""
    ids: list[str] = []
    seen: set[str] = set()
    for rel in rels:
        stem = rel.rsplit(".", 1)[0] if "." in rel.rsplit("/", 1)[-1] else rel
        base = re.sub(r"[^0-9A-Za-z_-]+", "_", stem.replace("/", "__")).strip("_") or "clip"
        cand, k = base, 1
        while cand in seen:
            k += 1
            cand = f"{base}_{k}"
        seen.add(cand)
        ids.append(cand)
    return ids


def _reject(job: _Job, reason: str, detail: str) -> dict[str, tp.Any]:
    return {"rejected": True, "source_path": job.rel, "reason": reason, "detail": detail}


def _ingest_one(job: _Job) -> dict[str, tp.Any]:
    """Decode, check, convert and measure one input. Runs in a worker process."""
    p = job.params
    src = Path(job.source)
    if job.reject is not None:
        return _reject(job, *job.reject)
    if not src.is_file():
        kind = "a directory" if src.is_dir() else "not a regular file"
        return _reject(job, "not_a_file", f"{kind} with an audio file name")
    if not job.rel.lower().endswith(AUDIO_EXTENSIONS):
        return _reject(job, "unsupported_format", f"extension not one of {', '.join(AUDIO_EXTENSIONS)}")
    if src.stat().st_size == 0:
        return _reject(job, "empty", "zero bytes")
    try:
        data, rate = read_audio(src, max_seconds=p.max_duration_s)
        fmt = sf.info(str(src)).format
    except AudioTooLongError as e:
        return _reject(job, "too_long", f"{e} > max_duration_s {p.max_duration_s}")
    except TruncatedAudioError as e:
        return _reject(job, "truncated", str(e))
    except MemoryError:
        return _reject(job, "unreadable", "decoding it needs more memory than this machine has")
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        return _reject(job, "unreadable", str(e).replace(str(src), job.rel))
    if data.shape[0] == 0:
        return _reject(job, "empty", "no samples")
    if not np.all(np.isfinite(data)):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        return _reject(job, "nan_or_inf", f"{bad} of {data.size} samples are NaN or infinite")
    duration = data.shape[0] / rate
    if duration < p.min_duration_s:
        return _reject(job, "too_short", f"{duration:.3f} s < min_duration_s {p.min_duration_s}")
    if duration > p.max_duration_s:
        return _reject(job, "too_long", f"{duration:.3f} s > max_duration_s {p.max_duration_s}")
    peak = peak_dbfs(data)
    if peak < p.silence_peak_dbfs:
        return _reject(job, "silent", f"peak {peak:.1f} dBFS < silence_peak_dbfs {p.silence_peak_dbfs}")
    mono_src = to_mono(data)
    dc = float(np.mean(mono_src, dtype=np.float64))
    ac_peak = peak_dbfs(mono_src - np.float32(dc))
    if ac_peak < p.silence_peak_dbfs:
        return _reject(
            job, "dc_only", f"a constant offset ({dc:+.4f}) with no signal: peak {ac_peak:.1f} dBFS once it is removed"
        )
    mono = resample(mono_src, rate, p.sample_rate)
    lufs = integrated_lufs(mono, p.sample_rate)
    if not math.isfinite(lufs):
        return _reject(job, "too_quiet_to_meter", "no 400 ms block above the -70 LUFS absolute gate")
    pcm16 = np.clip(np.round(mono * 32767.0), -32768, 32767).astype("<i2")
    write_wav(Path(job.out_dir) / f"{job.clip_id}.wav", mono, p.sample_rate, atomic=False)  # into the staging folder
    return {
        "rejected": False,
        "id": job.clip_id,
        "path": f"{job.clip_id}.wav",
        "source_path": job.rel,
        "speaker": speaker_from_path(job.rel),
        "duration_s": round(mono.shape[0] / p.sample_rate, 6),
        "sample_rate": p.sample_rate,
        "source_sample_rate": rate,
        "channels": int(data.shape[1]),
        "source_format": fmt,
        "peak_dbfs": round(peak, 4),
        "rms_dbfs": round(rms_dbfs(mono), 4),
        "lufs": round(lufs, 4),
        "clipped_fraction": clipped_fraction(data, p.clip_threshold),
        "dc_offset": dc,
        "content_hash": hashlib.sha256(pcm16.tobytes()).hexdigest(),
    }


def ingest(source: Path, out: Path, params: IngestParams) -> IngestResult:
    """Read every recording under ``source`` into ``out`` (replaced as a whole).

    Writes ``out/<id>.wav`` (float32 mono at ``params.sample_rate``),
    ``out/manifest.csv`` and ``out/rejected.csv``.
    """
    if not source.exists():
        raise UserError(
            f"ingest source {source} does not exist; set ingest.source in params.yaml to a folder of "
            "recordings (or to data/corpus for the embedded Telugu corpus)"
        )
    if not source.is_dir():
        raise UserError(f"ingest source {source} is not a folder; point ingest.source at a folder of recordings")
    inputs = list_inputs(source)
    ids = make_ids([i.rel for i in inputs])
    with staged_dir(out, inputs=[source], owned=manifest_owned(MANIFEST_COLUMNS)) as staging:
        jobs = [
            _Job(str(i.path.absolute()), i.rel, cid, str(staging), params, i.reject)
            for i, cid in zip(inputs, ids, strict=True)
        ]
        results = parallel_map(_ingest_one, jobs, params.workers, desc="ingest")
        accepted, rejected = [], []
        first_by_hash: dict[str, str] = {}
        for r in results:
            if r["rejected"]:
                rejected.append({k: r[k] for k in REJECTED_COLUMNS})
            elif r["content_hash"] in first_by_hash:
                (staging / r["path"]).unlink()
                rejected.append(
                    {
                        "source_path": r["source_path"],
                        "reason": "duplicate",
                        "detail": f"same audio content as {first_by_hash[r['content_hash']]}",
                    }
                )
            else:
                first_by_hash[r["content_hash"]] = r["source_path"]
                accepted.append({k: r[k] for k in MANIFEST_COLUMNS})
        acc = pd.DataFrame(accepted, columns=MANIFEST_COLUMNS)
        rej = pd.DataFrame(rejected, columns=REJECTED_COLUMNS)
        if len(acc) + len(rej) != len(inputs):  # the invariant users rely on
            raise AssertionError(f"ingest lost files: {len(inputs)} in, {len(acc)} + {len(rej)} out")
        write_text_atomic(staging / "manifest.csv", acc.to_csv(index=False))
        write_text_atomic(staging / "rejected.csv", rej.to_csv(index=False))
    return IngestResult(acc, rej, len(inputs))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        type=Path,
        help="folder of recordings (any format, nested); default: ingest.source of the params file. "
        "dvc.yaml leaves it to the params file, so the path never passes through a shell",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (data/raw)")
    parser.add_argument("--params", default="params.yaml", help="params file (reads the ingest section)")


def run(args: argparse.Namespace) -> int:
    params = load_section(IngestParams, "ingest", args.params)
    source = args.source if args.source is not None else Path(params.source)
    result = ingest(source, args.out, params)
    hours = result.accepted["duration_s"].sum() / 3600 if len(result.accepted) else 0.0
    print(
        f"codec ingest: {result.inputs} inputs -> {len(result.accepted)} accepted ({hours * 60:.1f} min of audio), "
        f"{len(result.rejected)} rejected (see {args.out / 'rejected.csv'})"
    )
    if len(result.rejected):
        for reason, n in result.rejected["reason"].value_counts().items():
            print(f"  rejected {n:4d} x {reason}")
    if result.accepted.empty:
        raise UserError(f"no usable recordings under {source}: every input was rejected (see rejected.csv)")
    return 0
