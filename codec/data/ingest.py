"""The ingest stage: a folder of recordings in, mono clips at one sample rate out.

Every entry under the source folder is accounted for: it becomes one clip (or, for a long
recording, several utterances) in ``data/raw/`` with rows in ``manifest.csv``, or a row in
``rejected.csv`` with a reason; every input is named in one or the other, always. Speakers,
transcripts and segment times come from the corpus's own metadata, in the layout it was
published in (:mod:`codec.data.layouts`), and what the layout found is in ``corpus.json``.
Recordings longer than ``ingest.max_duration_s`` are cut at pauses into utterances of
``min_segment_s``..``max_segment_s`` (:mod:`codec.data.segment`), streamed in blocks.
Levels are measured here and left alone (normalization is the next stage), so the raw
manifest shows the spread of recording levels the data arrived with.

Reasons a file is rejected (the ``reason`` column):

=================== ==========================================================
not_a_file          a directory (or other non-file) with an audio extension
unsupported_format  not an audio extension (.wav, .flac, .ogg, .oga, .mp3, .m4a, .aac, .opus, …)
unreadable          the decoder refused it (corrupt header, wrong format…)
truncated           shorter than its header declares
empty               no samples
nan_or_inf          holds NaN or infinite samples
too_short/too_long  outside [ingest.min_duration_s, ingest.max_duration_s]; too_long only with
                    ``segment_long: false`` (decided from the header when it says, before
                    anything is decoded) or for a corpus's own segment
silent              peak below ingest.silence_peak_dbfs
channels_cancel     the channels cancel when mixed down to mono (one in anti-phase: the mix is
                    more than 30 dB below them)
dc_only             a constant offset and nothing else (peak below silence once it is removed)
too_quiet_to_meter  no 400 ms block above BS.1770's -70 LUFS gate
duplicate           same audio content as an accepted clip (hash of the samples), or a link
                    to a folder that is read already
symlink_loop        a symbolic link that leads back to itself or to a folder it is inside
bad_name            a file or folder name that is not UTF-8 text (shown with ``\\x`` escapes;
                    a folder's files are not read): rename it
metadata            the corpus's own metadata (line_index.tsv, wav.scp, …): read, not audio
not_in_metadata     audio that no row of the corpus's metadata names
no_speaker          the layout finds no speaker for it (file id, ingest.speaker_pattern)
invalidated         Common Voice: only invalidated.tsv names it
no_segments         Kaldi: wav.scp names it, segments gives it no utterance
missing_audio, …    (against a metadata file) a row naming a file the source lacks, a row
                    that cannot be read (bad_row, duplicate_row, unknown_recording,
                    unsupported_wav_scp)
=================== ==========================================================

A rejected piece of a long recording carries its time span in ``detail``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import hashlib
import json
import math
import os
import re
import typing as tp
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from codec.audio.decode import FFMPEG_EXTENSIONS, INGEST_EXTENSIONS, DecodeError, iter_blocks, read_all, stream_info
from codec.audio.io import (
    AudioTooLongError,
    TruncatedAudioError,
    check_riff_data_size,
    mixdown_drop_db,
    mixdown_energies,
    open_sound,
    read_audio,
    to_mono,
    write_wav,
)
from codec.audio.levels import clipped_fraction, peak_dbfs, rms_dbfs
from codec.audio.loudness import integrated_lufs
from codec.audio.resample import resample
from codec.data.corpus import CorpusParams
from codec.data.layouts import Entry, Layout, Plan, plan, speaker_from_path
from codec.data.segment import cut_at_pauses, cut_spans
from codec.errors import UserError
from codec.files import manifest_owned, staged_dir, write_text_atomic
from codec.parallel import parallel_map
from codec.params import load_section

__all__ = ["IngestParams", "IngestResult", "ingest", "list_inputs", "make_ids", "speaker_from_path"]

# The columns of manifest.csv before layouts and long recordings (a data/raw written then is still ours).
_OLD_COLUMNS = [
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
# recording: the source recording an utterance came from (the corpus's id for it, else the file's);
# start_s/end_s: where in it (empty for a whole file); text: the corpus's transcript, if any.
_LAYOUT_COLUMNS = [*_OLD_COLUMNS, "recording", "start_s", "end_s", "text"]
# subset: the corpus's own train/dev/test list the clip is in ("" : none), which the split follows.
MANIFEST_COLUMNS = [*_LAYOUT_COLUMNS, "subset"]
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
    layout: Layout = "auto"
    speaker_pattern: str | None = None
    segment_long: bool = True
    min_segment_s: float = 2.0
    max_segment_s: float = 20.0
    corpus: CorpusParams = dataclasses.field(default_factory=CorpusParams)

    def check(self, where: str) -> None:
        if not 4000 <= self.sample_rate <= 192000:
            raise UserError(f"{where}.sample_rate must be within 4000..192000 Hz, got {self.sample_rate}")
        if not 0.4 <= self.min_duration_s < self.max_duration_s:
            raise UserError(
                f"{where}: need 0.4 <= min_duration_s < max_duration_s (BS.1770 needs a 400 ms block), "
                f"got {self.min_duration_s} and {self.max_duration_s}"
            )
        if (
            self.segment_long
            and not self.min_duration_s <= self.min_segment_s < self.max_segment_s <= self.max_duration_s
        ):
            raise UserError(
                f"{where}: need min_duration_s <= min_segment_s < max_segment_s <= max_duration_s, got "
                f"{self.min_duration_s}, {self.min_segment_s}, {self.max_segment_s}, {self.max_duration_s}; "
                "the utterances a long recording is cut into must be clips ingest accepts"
            )
        if self.speaker_pattern is not None:
            try:
                rx = re.compile(self.speaker_pattern)
            except re.error as e:
                raise UserError(
                    f"{where}.speaker_pattern {self.speaker_pattern!r} is not a regular expression: {e}"
                ) from None
            if "speaker" not in rx.groupindex:
                raise UserError(
                    f"{where}.speaker_pattern {self.speaker_pattern!r} has no group named speaker; "
                    r"write one, e.g. '(?P<speaker>[^/]+)_\d+\.wav$'"
                )
        if self.layout == "pattern" and not self.speaker_pattern:
            raise UserError(f"{where}.layout is 'pattern' but speaker_pattern is not set; set it (see README)")


@dataclasses.dataclass(frozen=True)
class IngestResult:
    accepted: pd.DataFrame  # MANIFEST_COLUMNS
    rejected: pd.DataFrame  # REJECTED_COLUMNS
    inputs: int
    report: dict[str, tp.Any] = dataclasses.field(default_factory=dict)  # corpus.json


@dataclasses.dataclass(frozen=True)
class _Job:
    source: str  # absolute path
    rel: str  # path relative to the source folder (POSIX)
    clip_id: str
    out_dir: str
    params: IngestParams
    reject: tuple[str, str] | None = None  # decided while listing (links) or by the layout
    entry: Entry = dataclasses.field(default_factory=lambda: Entry(""))
    span_ids: tuple[str, ...] = ()  # clip ids of entry.spans


@dataclasses.dataclass(frozen=True)
class Input:
    """One entry under the source folder that ingest must account for."""

    path: Path
    rel: str  # relative to the source folder (POSIX)
    reject: tuple[str, str] | None = None  # (reason, detail) decided while listing


def printable_name(name: str) -> str:
    """``name`` as text: a byte that is not UTF-8 (a surrogate escape from the file system)
    written as ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:
        return False


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
            p, r = Path(entry.path), f"{rel}{printable_name(entry.name)}"
            if r != f"{rel}{entry.name}":  # not UTF-8: no manifest, CSV or JSON could name it
                what = "folder name (its files were not read)" if _is_dir(entry) else "file name"
                found.append(Input(p, r, ("bad_name", f"the {what} is not UTF-8 text; rename it")))
                continue
            if not _is_dir(entry):
                reason = _link_problem(p) if entry.is_symlink() else None
                found.append(Input(p, r, reason))
                continue
            if entry.name.lower().endswith(INGEST_EXTENSIONS):
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


def make_ids(rels: list[str]) -> list[str]:
    """A readable, unique id per relative path: ``spk1/utt 01.wav`` -> ``spk1__utt_01``."""
    return unique_ids([rel.rsplit(".", 1)[0] if "." in rel.rsplit("/", 1)[-1] else rel for rel in rels])


# Longest id (ASCII): its files' names (``<id>__0001.wav``, ``<id>_2.wav``) stay far below the
# 255 bytes a file name may have, whatever the depth of the folders it was flattened from.
MAX_ID_CHARS = 120


def unique_ids(names: tp.Iterable[str], taken: tp.Iterable[str] = ()) -> list[str]:
    """A plain, unique id per name (``a/b c`` -> ``a__b_c``), none of them in ``taken``; one
    longer than :data:`MAX_ID_CHARS` keeps its start and ends with a hash of the whole name."""
    ids: list[str] = []
    seen: set[str] = set(taken)
    for name in names:
        base = re.sub(r"[^0-9A-Za-z_-]+", "_", name.replace("/", "__")).strip("_") or "clip"
        if len(base) > MAX_ID_CHARS:
            digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:10]
            base = f"{base[: MAX_ID_CHARS - 11]}_{digest}"
        cand, k = base, 1
        while cand in seen:
            k += 1
            cand = f"{base}_{k}"
        seen.add(cand)
        ids.append(cand)
    return ids


def _reject(job: _Job, reason: str, detail: str) -> dict[str, tp.Any]:
    return {"rejected": True, "source_path": job.rel, "reason": reason, "detail": detail}


@dataclasses.dataclass(frozen=True)
class _Piece:
    """One clip to check and write: a whole file, or an utterance of a longer one."""

    clip_id: str
    speaker: str
    text: str = ""
    start_s: float | None = None  # in the recording; None: the whole file
    end_s: float | None = None
    label: str = ""  # how a rejection names it ("utt7 [12.00-15.50 s]: ")


def _ingest_one(job: _Job) -> list[dict[str, tp.Any]]:
    """Decode, check, convert and measure one input (one row, or one per utterance). Runs in a worker process."""
    p = job.params
    src = Path(job.source)
    if job.reject is not None:
        return [_reject(job, *job.reject)]
    if not src.is_file():
        kind = "a directory" if src.is_dir() else "not a regular file"
        return [_reject(job, "not_a_file", f"{kind} with an audio file name")]
    if not job.rel.lower().endswith(INGEST_EXTENSIONS):
        return [_reject(job, "unsupported_format", f"extension not one of {', '.join(INGEST_EXTENSIONS)}")]
    if src.stat().st_size == 0:
        return [_reject(job, "empty", "zero bytes")]
    recording = job.entry.recording or job.clip_id
    try:
        if job.entry.spans:
            return _ingest_spans(job, recording)
        try:
            data, rate, fmt = _read_whole(src, p.max_duration_s)
        except AudioTooLongError as e:
            if not p.segment_long:
                return [_reject(job, "too_long", f"{e} > max_duration_s {p.max_duration_s}")]
            return _ingest_long(job, recording)
    except AudioTooLongError as e:
        return [_reject(job, "too_long", f"{e} > max_duration_s {p.max_duration_s}")]
    except TruncatedAudioError as e:
        return [_reject(job, "truncated", str(e))]
    except MemoryError:
        return [_reject(job, "unreadable", "decoding it needs more memory than this machine has")]
    except (sf.LibsndfileError, DecodeError, RuntimeError, ValueError) as e:
        return [_reject(job, "unreadable", str(e).replace(str(src), job.rel))]
    return [_clip(job, data, rate, fmt, recording, _Piece(job.clip_id, job.entry.speaker, job.entry.text))]


def _read_whole(src: Path, max_seconds: float) -> tuple[np.ndarray, int, str]:
    """``([T, C], rate, format)`` of a file no longer than ``max_seconds`` (``AudioTooLongError`` otherwise)."""
    if src.suffix.lower() in FFMPEG_EXTENSIONS:
        try:
            open_sound(src).close()
        except (sf.LibsndfileError, RuntimeError):
            data, rate = read_all(src, max_seconds)  # libsndfile can't: FFmpeg (M4A/AAC, …)
            return data, rate, stream_info(src).format
    data, rate = read_audio(src, max_seconds=max_seconds)
    with open_sound(src) as f:
        return data, rate, f.format


def _ingest_long(job: _Job, recording: str) -> list[dict[str, tp.Any]]:
    """A recording longer than max_duration_s, cut at pauses as it streams past."""
    p = job.params
    src = Path(job.source)
    info = stream_info(src)
    if info.seconds is not None and info.seconds > MAX_RECORDING_S:
        raise AudioTooLongError(info.seconds, from_header=True)
    if info.format in ("WAV", "WAVEX", "RF64"):
        check_riff_data_size(src)
    # The speaker-disjoint split keys on the speaker: an unlabelled recording is its own
    # speaker, so its utterances stay on one side of the split (codec.data.split).
    speaker = job.entry.speaker or recording
    rows: list[dict[str, tp.Any]] = []
    got = 0
    with _unwritten_on_error(job, rows):
        for k, piece in enumerate(cut_at_pauses(iter_blocks(src), info.rate, p.min_segment_s, p.max_segment_s), 1):
            a = piece.start / info.rate
            b = a + piece.data.shape[0] / info.rate
            spec = _Piece(f"{job.clip_id}__{k:04d}", speaker, "", a, b, f"piece {k} [{a:.2f}-{b:.2f} s]: ")
            rows.append(_clip(job, piece.data, info.rate, info.format, recording, spec))
            got = piece.start + piece.data.shape[0]
        if info.seconds is not None and info.exact and got < round(info.seconds * info.rate):
            raise TruncatedAudioError(
                f"header declares {round(info.seconds * info.rate)} frames but only {got} could be read"
            )
    return rows or [_reject(job, "empty", "no samples")]


# A header that claims more than a day is a lie or a mistake far more often than a recording,
# and cutting it would hold one worker for hours: such a file is too_long, decided from the header.
MAX_RECORDING_S = 24 * 3600.0


@contextlib.contextmanager
def _unwritten_on_error(job: _Job, rows: list[dict[str, tp.Any]]) -> tp.Iterator[None]:
    """On an error part-way through a recording, remove the utterances of it already written:
    the recording is then one rejected row, and nothing unlisted stays in the folder."""
    try:
        yield
    except BaseException:
        for r in rows:
            if not r["rejected"]:
                (Path(job.out_dir) / r["path"]).unlink(missing_ok=True)
        raise


def _ingest_spans(job: _Job, recording: str) -> list[dict[str, tp.Any]]:
    """The utterances a corpus times inside one recording (Kaldi ``segments``), in one pass over it."""
    src = Path(job.source)
    info = stream_info(src)
    spans = job.entry.spans
    rows: list[dict[str, tp.Any]] = []
    with _unwritten_on_error(job, rows):
        for i, data in cut_spans(iter_blocks(src), info.rate, [(s.start_s, s.end_s) for s in spans]):
            s = spans[i]
            a = s.start_s
            b = a + data.shape[0] / info.rate
            label = f"{s.utt} [{a:.2f}-{(s.end_s if s.end_s is not None else b):.2f} s]: "
            if s.end_s is not None and data.shape[0] < round((s.end_s - s.start_s) * info.rate) - 1:
                rows.append(_reject(job, "truncated", f"{label}the segment runs past the recording's end ({b:.2f} s)"))
                continue
            piece = _Piece(job.span_ids[i], s.speaker or recording, s.text, a, b, label)
            rows.append(_clip(job, data, info.rate, info.format, recording, piece))
    return rows


def _clip(job: _Job, data: np.ndarray, rate: int, fmt: str, recording: str, piece: _Piece) -> dict[str, tp.Any]:
    """Check, convert, measure and write one clip (``data``: float32 ``[T, C]`` at ``rate``)."""
    p = job.params
    lab = piece.label
    if data.shape[0] == 0:
        return _reject(job, "empty", f"{lab}no samples")
    if not np.all(np.isfinite(data)):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        return _reject(job, "nan_or_inf", f"{lab}{bad} of {data.size} samples are NaN or infinite")
    duration = data.shape[0] / rate
    if duration < p.min_duration_s:
        return _reject(job, "too_short", f"{lab}{duration:.3f} s < min_duration_s {p.min_duration_s}")
    if duration > p.max_duration_s:
        return _reject(job, "too_long", f"{lab}{duration:.3f} s > max_duration_s {p.max_duration_s}")
    peak = peak_dbfs(data)
    if peak < p.silence_peak_dbfs:
        return _reject(job, "silent", f"{lab}peak {peak:.1f} dBFS < silence_peak_dbfs {p.silence_peak_dbfs}")
    if data.ndim == 2 and data.shape[1] > 1:
        drop_db = mixdown_drop_db(*mixdown_energies(data), data.shape[0])
        if drop_db is not None:
            return _reject(
                job,
                "channels_cancel",
                f"{lab}its {data.shape[1]} channels cancel when mixed down to mono ({drop_db:.0f} dB below them: "
                "one is in anti-phase); re-export it with one channel or the phase fixed",
            )
    mono_src = to_mono(data)
    dc = float(np.mean(mono_src, dtype=np.float64))
    ac_peak = peak_dbfs(mono_src - np.float32(dc))
    if ac_peak < p.silence_peak_dbfs:
        return _reject(
            job,
            "dc_only",
            f"{lab}a constant offset ({dc:+.4f}) with no signal: peak {ac_peak:.1f} dBFS once it is removed",
        )
    mono = resample(mono_src, rate, p.sample_rate)
    lufs = integrated_lufs(mono, p.sample_rate)
    if not math.isfinite(lufs):
        return _reject(job, "too_quiet_to_meter", f"{lab}no 400 ms block above the -70 LUFS absolute gate")
    pcm16 = np.clip(np.round(mono * 32767.0), -32768, 32767).astype("<i2")
    write_wav(Path(job.out_dir) / f"{piece.clip_id}.wav", mono, p.sample_rate, atomic=False)  # into the staging folder
    return {
        "rejected": False,
        "id": piece.clip_id,
        "path": f"{piece.clip_id}.wav",
        "source_path": job.rel,
        "speaker": piece.speaker,
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
        "recording": recording,
        "start_s": None if piece.start_s is None else round(piece.start_s, 3),
        "end_s": None if piece.end_s is None else round(piece.end_s, 3),
        "text": piece.text,
        "subset": job.entry.subset,
    }


def _jobs(inputs: list[Input], layout: Plan, staging: Path, params: IngestParams) -> list[_Job]:
    """One job per input, with what the layout says about it and unique clip ids for all."""
    described = [layout.describe(i.rel) for i in inputs]
    ids = make_ids([i.rel for i in inputs])
    span_names = [s.utt for d in described if isinstance(d, Entry) for s in d.spans]
    span_ids = iter(unique_ids(span_names, taken=ids))
    jobs = []
    for i, cid, d in zip(inputs, ids, described, strict=True):
        if isinstance(d, Entry):
            sids = tuple(next(span_ids) for _ in d.spans)
            jobs.append(_Job(str(i.path.absolute()), i.rel, cid, str(staging), params, i.reject, d, sids))
        else:
            jobs.append(_Job(str(i.path.absolute()), i.rel, cid, str(staging), params, i.reject or d))
    return jobs


def _owned(folder: Path) -> bool:
    """A data/raw this stage wrote, now or before layouts (its manifest header)."""
    return any(manifest_owned(c)(folder) for c in (MANIFEST_COLUMNS, _LAYOUT_COLUMNS, _OLD_COLUMNS))


def ingest(source: Path, out: Path, params: IngestParams) -> IngestResult:
    """Read every recording under ``source`` into ``out`` (replaced as a whole).

    Writes ``out/<id>.wav`` (float32 mono at ``params.sample_rate``), ``out/manifest.csv``,
    ``out/rejected.csv`` and ``out/corpus.json`` (what the layout found).
    """
    if not source.exists():
        raise UserError(
            f"ingest source {source} does not exist; set ingest.source in params.yaml to a folder of "
            "recordings (or to data/corpus for the embedded Telugu corpus)"
        )
    if not source.is_dir():
        raise UserError(f"ingest source {source} is not a folder; point ingest.source at a folder of recordings")
    inputs = list_inputs(source)
    layout = plan(source, [i.rel for i in inputs], params.layout, params.speaker_pattern)
    with staged_dir(out, inputs=[source], owned=_owned) as staging:
        jobs = _jobs(inputs, layout, staging, params)
        results = [row for rows in parallel_map(_ingest_one, jobs, params.workers, desc="ingest") for row in rows]
        accepted, rejected = [], []
        first_by_hash: dict[str, str] = {}
        ids: set[str] = set()
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
                if r["id"] in ids:  # a piece's id equal to another file's: rare, renamed, never lost
                    new = unique_ids([r["id"]], taken=ids | {str(x["id"]) for x in results if not x["rejected"]})[0]
                    (staging / r["path"]).rename(staging / f"{new}.wav")
                    r = {**r, "id": new, "path": f"{new}.wav"}
                ids.add(r["id"])
                accepted.append({k: r[k] for k in MANIFEST_COLUMNS})
        rejected += [{"source_path": s, "reason": why, "detail": d} for s, why, d in layout.problems]
        acc = pd.DataFrame(accepted, columns=MANIFEST_COLUMNS)
        rej = pd.DataFrame(rejected, columns=REJECTED_COLUMNS)
        lost = {i.rel for i in inputs} - set(acc["source_path"]) - set(rej["source_path"])
        if lost:  # the invariant users rely on
            raise AssertionError(f"ingest lost {len(lost)} of {len(inputs)} inputs, e.g. {sorted(lost)[0]}")
        report = corpus_report(layout, acc, rej)
        write_text_atomic(staging / "manifest.csv", acc.to_csv(index=False))
        write_text_atomic(staging / "rejected.csv", rej.to_csv(index=False))
        write_text_atomic(staging / "corpus.json", json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    return IngestResult(acc, rej, len(inputs), report)


# Rejections that say how the corpus's metadata and its files disagree.
MISMATCH_REASONS = (
    "missing_audio", "not_in_metadata", "no_speaker", "no_segments", "invalidated",
    "unknown_recording", "unsupported_wav_scp", "bad_row", "duplicate_row",
)  # fmt: skip


def corpus_report(layout: Plan, acc: pd.DataFrame, rej: pd.DataFrame) -> dict[str, tp.Any]:
    """What the layout found: speakers with their clips and hours, and where metadata and files disagree."""
    by_speaker = acc.groupby(acc["speaker"].fillna(""), sort=True)["duration_s"].agg(["count", "sum"])
    mismatches = rej[rej["reason"].isin(MISMATCH_REASONS)]
    has_text = acc["text"].fillna("").astype(str).str.len() > 0
    return {
        "layout": layout.layout,
        "metadata": layout.metadata,
        "clips": len(acc),
        "hours": round(float(acc["duration_s"].sum()) / 3600, 4),
        "speakers": {
            str(spk): {"clips": int(row["count"]), "hours": round(float(row["sum"]) / 3600, 4)}
            for spk, row in by_speaker.iterrows()
        },
        "clips_without_speaker": int((acc["speaker"].fillna("") == "").sum()),
        "clips_with_text": int(has_text.sum()),
        "cut_recordings": int(acc.loc[acc["start_s"].notna(), "recording"].nunique()),
        "mismatches": mismatches.to_dict(orient="records"),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        type=Path,
        help="folder of recordings (any format, nested); default: ingest.source of the params file. "
        "dvc.yaml leaves it to the params file, so the path never passes through a shell",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (data/raw)")
    parser.add_argument("--params", default="params.yaml", help="params file (reads the ingest section)")


def summary(result: IngestResult, out: Path, max_speakers: int = 12) -> list[str]:
    """The lines ``codec ingest`` prints."""
    r = result.report
    acc = result.accepted
    minutes = acc["duration_s"].sum() / 60 if len(acc) else 0.0
    lines = [
        f"codec ingest: {result.inputs} inputs -> {len(acc)} clips ({minutes:.1f} min of audio), "
        f"{len(result.rejected)} rejected rows (see {out / 'rejected.csv'})",
        f"  layout {r['layout']}"
        + (f" from {', '.join(r['metadata'][:3])}{' …' if len(r['metadata']) > 3 else ''}" if r["metadata"] else "")
        + f": {len(r['speakers'])} speakers, {r['clips_with_text']} clips with a transcript"
        + (f", {r['cut_recordings']} long recordings cut at pauses" if r["cut_recordings"] else "")
        + (f", {r['clips_without_speaker']} clips without a speaker" if r["clips_without_speaker"] else ""),
    ]
    speakers = sorted(r["speakers"].items(), key=lambda kv: -kv[1]["hours"])
    for spk, v in speakers[:max_speakers]:
        lines.append(f"    {spk or '(none)'}: {v['clips']} clips, {v['hours']:.3f} h")
    if len(speakers) > max_speakers:
        lines.append(f"    … and {len(speakers) - max_speakers} more speakers (see {out / 'corpus.json'})")
    if len(result.rejected):
        for reason, n in result.rejected["reason"].value_counts().items():
            lines.append(f"  rejected {n:4d} x {reason}")
    for m in r["mismatches"][:10]:
        lines.append(f"  mismatch: {m['source_path']}: {m['reason']}: {m['detail']}")
    if len(r["mismatches"]) > 10:
        lines.append(f"  … {len(r['mismatches']) - 10} more mismatches between metadata and files (see rejected.csv)")
    return lines


def run(args: argparse.Namespace) -> int:
    params = load_section(IngestParams, "ingest", args.params)
    source = args.source if args.source is not None else Path(params.source)
    result = ingest(source, args.out, params)
    print("\n".join(summary(result, args.out)))
    if result.accepted.empty:
        raise UserError(f"no usable recordings under {source}: every input was rejected (see rejected.csv)")
    return 0
