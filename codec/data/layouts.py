"""Corpus layouts: who speaks in each file, and what they say, read from the corpus's own metadata.

The speaker-disjoint split is only as honest as the speakers it is given, so a corpus is read
the way it was published (``ingest.layout``, recognized by default):

============= =================================================================================
folders       a folder per speaker: the first folder level under the source (``spk07/a.wav``)
openslr       Google's crowdsourced corpora (SLR63–SLR80, Telugu SLR66): ``line_index*.tsv``
              (``FileID<TAB>transcript``) beside the WAVs; the speaker is inside the file id,
              ``<language+gender>_<speaker>_<utterance>`` (``tef_02063_00064419497`` -> ``tef_02063``)
commonvoice   Mozilla Common Voice: ``*.tsv`` with ``client_id``, ``path``, ``sentence`` beside a
              ``clips/`` folder; clips only ``invalidated.tsv`` names are rejected (voted down)
kaldi         Kaldi data folders: ``wav.scp`` (plain paths), ``utt2spk``, ``text``, and optional
              ``segments`` (utterance, recording, start, end) into long recordings
metadata_csv  LJSpeech / IndicTTS: ``metadata.csv`` as ``id|text|…`` (one speaker: the folder it is
              in), or with a header naming ``file_name``, a text and optionally a speaker column
pattern       anything else: ``ingest.speaker_pattern``, a regular expression searched in the
              relative path, whose group ``speaker`` names the speaker
============= =================================================================================

:func:`plan` returns, for each file under the source, an :class:`Entry` (speaker, transcript,
recording, and for Kaldi ``segments`` the utterances in it) or a ``(reason, detail)`` the file is
rejected for: the metadata files themselves (``metadata``), audio no metadata row names
(``not_in_metadata``), and so on. Rows that name a file the source lacks, or cannot be read,
are :attr:`Plan.problems`, listed in ``rejected.csv`` against the metadata file.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import posixpath
import re
import typing as tp
from pathlib import Path

from codec.audio.decode import INGEST_EXTENSIONS
from codec.errors import UserError

Layout = tp.Literal["auto", "folders", "openslr", "commonvoice", "kaldi", "metadata_csv", "pattern"]
Verdict = tuple[str, str]  # (reason, detail) a file is rejected for

KALDI_FILES = frozenset(
    {
        "wav.scp", "utt2spk", "spk2utt", "text", "segments", "reco2dur", "utt2dur", "utt2num_frames",
        "spk2gender", "reco2file_and_channel", "utt2lang", "frame_shift", "feats.scp", "cmvn.scp", "glm", "stm",
    }
)  # fmt: skip
# The shape of an OpenSLR crowdsourced file id: <language+gender>_<speaker>_<utterance>.
OPENSLR_ID = re.compile(r"(?P<speaker>[A-Za-z]+_[0-9A-Za-z]+)_[0-9A-Za-z]+")
METADATA_FILE_COLUMNS = ("file_name", "filename", "file", "path", "audio", "wav", "id")
METADATA_TEXT_COLUMNS = ("text", "transcription", "transcript", "sentence", "normalized_text")
METADATA_SPEAKER_COLUMNS = ("speaker", "speaker_id", "speaker_name", "client_id")


@dataclasses.dataclass(frozen=True)
class Span:
    """One utterance of a long recording, as the corpus times it (Kaldi ``segments``)."""

    utt: str
    start_s: float
    end_s: float | None  # None: to the end of the recording
    speaker: str
    text: str


@dataclasses.dataclass(frozen=True)
class Entry:
    """What the corpus says about one audio file."""

    speaker: str  # "" when the corpus does not say
    text: str = ""
    recording: str = ""  # the corpus's id for the recording ("" : ingest names it after the file)
    spans: tuple[Span, ...] = ()  # the utterances in it; empty: the whole file is one
    # The corpus's own list it is in: "train", "dev" or "test" (Common Voice's train/dev/test.tsv,
    # a Kaldi data/train, data/test folder); "" when it has none. codec.data.split follows them.
    subset: str = ""


def subset_of(name: str) -> str:
    """The subset a corpus list or folder name stands for: ``train``, ``dev`` (dev, valid,
    validation, val) or ``test`` (test, eval), as a whole word at its start (``dev_clean`` ->
    ``dev``, ``test.tsv`` -> ``test``); ``""`` for anything else (``validated.tsv``, ``other.tsv``)."""
    stem = name.lower().rsplit(".", 1)[0] if "." in name else name.lower()
    m = re.match(r"(train|dev|valid|validation|val|test|eval)(?:$|[^a-z])", stem)
    if m is None:
        return ""
    return {"train": "train", "test": "test", "eval": "test"}.get(m.group(1), "dev")


@dataclasses.dataclass
class Plan:
    """A corpus as its layout describes it (see the module's docstring)."""

    layout: str
    metadata: list[str] = dataclasses.field(default_factory=list)  # metadata files read (relative paths)
    entries: dict[str, Entry] = dataclasses.field(default_factory=dict)  # audio named by the metadata
    verdicts: dict[str, Verdict] = dataclasses.field(default_factory=dict)  # files rejected by the layout
    problems: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)  # (metadata file, reason, detail)
    rule: tp.Callable[[str], Entry | Verdict] | None = None  # folders and pattern: from the path alone

    def describe(self, rel: str) -> Entry | Verdict:
        """The entry of the file at ``rel``, or why it is rejected."""
        if rel in self.verdicts:
            return self.verdicts[rel]
        if self.rule is not None:
            return self.rule(rel)
        if rel in self.entries:
            return self.entries[rel]
        if is_audio(rel):
            named = ", ".join(self.metadata[:3]) + (" …" if len(self.metadata) > 3 else "")
            return ("not_in_metadata", f"no row of the {self.layout} metadata ({named}) names it")
        return Entry("")  # not audio: ingest rejects it as unsupported_format


def is_audio(rel: str) -> bool:
    return rel.lower().endswith(INGEST_EXTENSIONS)


def speaker_from_path(rel: str) -> str:
    """The speaker of the folders layout: the first folder level under the source (``spk07/a.wav`` ->
    ``spk07``), or ``""`` for a file directly in the source folder (no speaker known)."""
    head, sep, _ = rel.partition("/")
    return head if sep else ""


def plan(source: Path, rels: tp.Sequence[str], layout: Layout = "auto", speaker_pattern: str | None = None) -> Plan:
    """Read the corpus at ``source`` (whose files are ``rels``, POSIX paths relative to it)."""
    name: str = layout
    if layout == "auto":
        name = "pattern" if speaker_pattern else detect(rels)
    readers: dict[str, tp.Callable[[Path, tp.Sequence[str]], Plan]] = {
        "openslr": _openslr,
        "commonvoice": _commonvoice,
        "kaldi": _kaldi,
        "metadata_csv": _metadata_csv,
    }
    if name == "folders":
        return Plan("folders", rule=lambda rel: Entry(speaker_from_path(rel)))
    if name == "pattern":
        if not speaker_pattern:
            raise UserError("ingest.layout is 'pattern' but ingest.speaker_pattern is not set; set it (see README)")
        return _pattern(speaker_pattern)
    return readers[name](source, rels)


def detect(rels: tp.Sequence[str]) -> str:
    """The layout the files ``rels`` look like (see the module's docstring for the order)."""
    names = {posixpath.basename(r).lower() for r in rels}
    if "wav.scp" in names:
        return "kaldi"
    if _commonvoice_tsvs(rels):
        return "commonvoice"
    if any(_is_line_index(r) for r in rels):
        return "openslr"
    if "metadata.csv" in names:
        return "metadata_csv"
    return "folders"


def _pattern(pattern: str) -> Plan:
    rx = re.compile(pattern)

    def rule(rel: str) -> Entry | Verdict:
        m = rx.search(rel)
        if m is None or not m.group("speaker"):
            return ("no_speaker", f"ingest.speaker_pattern {pattern!r} finds no speaker in its path")
        return Entry(m.group("speaker"))

    return Plan("pattern", rule=rule)


def _read_text(source: Path, rel: str) -> str:
    try:
        return (source / rel).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{source / rel}: not UTF-8 text ({e.reason} at byte {e.start}); convert it (iconv -t UTF-8) and re-run"
        ) from None
    except OSError as e:
        raise UserError(f"{source / rel}: cannot read it ({e.strerror}); fix its permissions and re-run") from None


def _audio_by_stem(rels: tp.Sequence[str], folder: str) -> dict[str, str]:
    """stem -> relative path of the audio files under ``folder`` (the shallowest when names repeat)."""
    prefix = f"{folder}/" if folder else ""
    out: dict[str, str] = {}
    for r in sorted((r for r in rels if r.startswith(prefix) and is_audio(r)), key=lambda r: (r.count("/"), r)):
        stem = posixpath.splitext(posixpath.basename(r))[0]
        out.setdefault(stem, r)
    return out


def _metadata_verdict(layout: str, what: str) -> Verdict:
    return ("metadata", f"the corpus's {what}, read for speakers and transcripts ({layout} layout), not audio")


# --- OpenSLR ---------------------------------------------------------------------------------


def _is_line_index(rel: str) -> bool:
    name = posixpath.basename(rel).lower()
    return name.startswith("line_index") and name.endswith(".tsv")


def _openslr(source: Path, rels: tp.Sequence[str]) -> Plan:
    p = Plan("openslr")
    tsvs = [r for r in rels if _is_line_index(r)]
    if not tsvs:
        raise UserError(f"ingest.layout is 'openslr' but no line_index.tsv is under {source}; set ingest.layout: auto")
    for tsv in tsvs:
        p.metadata.append(tsv)
        p.verdicts[tsv] = _metadata_verdict("openslr", "line index")
        folder = posixpath.dirname(tsv)
        audio = _audio_by_stem(rels, folder)
        for n, line in enumerate(_read_text(source, tsv).splitlines(), start=1):
            if not line.strip():
                continue
            fid, _, text = line.partition("\t")
            fid, text = fid.strip(), text.strip()
            rel = audio.get(fid)
            if rel is None:
                p.problems.append((tsv, "missing_audio", f"line {n}: {fid}: no audio file named {fid}.* beside it"))
                continue
            if rel in p.entries:
                p.problems.append((tsv, "duplicate_row", f"line {n}: {fid} is named again; the first row is kept"))
                continue
            m = OPENSLR_ID.fullmatch(fid)
            if m is None:
                p.verdicts[rel] = (
                    "no_speaker",
                    f"{tsv} line {n}: file id {fid!r} is not <language+gender>_<speaker>_<utterance>; "
                    "set ingest.layout: pattern and ingest.speaker_pattern",
                )
                continue
            p.entries[rel] = Entry(m.group("speaker"), text)
    return p


# --- Common Voice ----------------------------------------------------------------------------


def _tsv_rows(text: str) -> list[dict[str, str]]:
    # Common Voice writes sentences with quotes in them unescaped: no quoting at all.
    return list(csv.DictReader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE))


def _commonvoice_tsvs(rels: tp.Sequence[str]) -> list[str]:
    """The ``*.tsv`` files beside a ``clips/`` folder (every one is Common Voice's metadata)."""
    clip_dirs = {
        posixpath.dirname(posixpath.dirname(r)) for r in rels if posixpath.basename(posixpath.dirname(r)) == "clips"
    }
    return [r for r in rels if r.lower().endswith(".tsv") and posixpath.dirname(r) in clip_dirs]


def _commonvoice(source: Path, rels: tp.Sequence[str]) -> Plan:
    p = Plan("commonvoice")
    tsvs = _commonvoice_tsvs(rels)
    if not tsvs:
        raise UserError(
            f"ingest.layout is 'commonvoice' but no *.tsv beside a clips/ folder is under {source}; "
            "set ingest.layout: auto"
        )
    present = set(rels)
    named_in: dict[str, list[str]] = {}  # clip -> the lists naming it
    reported: set[str] = set()
    for tsv in tsvs:
        p.metadata.append(tsv)
        p.verdicts[tsv] = _metadata_verdict("commonvoice", "clip list")
        rows = _tsv_rows(_read_text(source, tsv))
        if not rows or not {"client_id", "path"} <= set(rows[0]):
            continue  # reported.tsv, clip_durations.tsv, *_sentences.tsv: no clips with speakers
        folder = posixpath.dirname(tsv)
        name = posixpath.basename(tsv)
        for n, row in enumerate(rows, start=2):
            clip = (row.get("path") or "").strip()
            rel = posixpath.normpath(posixpath.join(folder, "clips", clip)) if clip else ""
            if rel not in present:
                if rel not in reported:
                    reported.add(rel)
                    p.problems.append((tsv, "missing_audio", f"line {n}: clips/{clip} is not there"))
                continue
            named_in.setdefault(rel, []).append(name)
            if name.lower() != "invalidated.tsv" and rel not in p.entries:
                p.entries[rel] = Entry((row.get("client_id") or "").strip(), (row.get("sentence") or "").strip())
            if rel in p.entries and subset_of(name):  # train/dev/test.tsv: the corpus's own split
                p.entries[rel] = dataclasses.replace(p.entries[rel], subset=subset_of(name))
    for rel in named_in:
        if rel not in p.entries:
            p.verdicts[rel] = ("invalidated", "Common Voice's listeners voted it down (only invalidated.tsv names it)")
    return p


# --- Kaldi -----------------------------------------------------------------------------------


def _kaldi_table(source: Path, rel: str) -> list[tuple[int, str, str]]:
    """``(line, key, rest)`` of a Kaldi table file (``key value…`` per line)."""
    out = []
    for n, line in enumerate(_read_text(source, rel).splitlines(), start=1):
        key, _, rest = line.strip().partition(" ")
        if key:
            out.append((n, key, rest.strip()))
    return out


def _resolve(source: Path, folder: str, path: str, present: set[str]) -> str | None:
    """The relative path under ``source`` a ``wav.scp`` path names, or None. Kaldi paths are
    relative to the recipe folder (usually the data folder's grandparent) or absolute."""
    if os.path.isabs(path):
        try:
            rel = Path(os.path.normpath(path)).relative_to(source.absolute()).as_posix()
        except ValueError:
            return None
        return rel if rel in present else None
    base = folder
    while True:
        rel = posixpath.normpath(posixpath.join(base, path))
        if rel in present:
            return rel
        if not base:
            return None
        base = posixpath.dirname(base)


def _kaldi(source: Path, rels: tp.Sequence[str]) -> Plan:
    p = Plan("kaldi")
    scps = [r for r in rels if posixpath.basename(r) == "wav.scp"]
    if not scps:
        raise UserError(f"ingest.layout is 'kaldi' but no wav.scp is under {source}; set ingest.layout: auto")
    present = set(rels)
    spans: dict[str, list[Span]] = {}
    for scp in scps:
        folder = posixpath.dirname(scp)
        for r in rels:
            if posixpath.dirname(r) == folder and posixpath.basename(r) in KALDI_FILES:
                p.metadata.append(r)
                p.verdicts[r] = _metadata_verdict("kaldi", posixpath.basename(r))

        def table(name: str, folder: str = folder) -> dict[str, str]:
            rel = posixpath.join(folder, name) if folder else name
            return {k: v for _, k, v in _kaldi_table(source, rel)} if rel in present else {}

        utt2spk, text = table("utt2spk"), table("text")
        subset = subset_of(posixpath.basename(folder))  # data/train, data/dev_clean, data/test
        recordings: dict[str, str] = {}  # recording id -> relative path
        for n, key, rest in _kaldi_table(source, scp):
            if rest.endswith("|") or re.search(r"\.ark:\d+$", rest):
                p.problems.append(
                    (scp, "unsupported_wav_scp", f"line {n}: {key} is a command or an archive offset, not a file; "
                     "write the audio to files and name them in wav.scp")
                )  # fmt: skip
                continue
            rel = _resolve(source, folder, rest, present)
            if rel is None:
                p.problems.append((scp, "missing_audio", f"line {n}: {key}: {rest} is not under the source folder"))
                continue
            recordings[key] = rel
        seg_rel = posixpath.join(folder, "segments") if folder else "segments"
        if seg_rel not in present:
            for key, rel in recordings.items():
                p.entries[rel] = Entry(utt2spk.get(key, ""), text.get(key, ""), key, subset=subset)
            continue
        for n, utt, rest in _kaldi_table(source, seg_rel):
            fields = rest.split()
            try:
                rec, start, end = fields[0], float(fields[1]), float(fields[2])
            except (IndexError, ValueError):
                p.problems.append((seg_rel, "bad_row", f"line {n}: expected 'utterance recording start end'"))
                continue
            if rec not in recordings:
                p.problems.append((seg_rel, "unknown_recording", f"line {n}: {utt}: recording {rec} is not in wav.scp"))
                continue
            if start < 0 or (end >= 0 and end <= start):
                p.problems.append((seg_rel, "bad_row", f"line {n}: {utt}: start {start} and end {end} make no span"))
                continue
            span = Span(utt, start, None if end < 0 else end, utt2spk.get(utt, ""), text.get(utt, ""))
            spans.setdefault(recordings[rec], []).append(span)
        for key, rel in recordings.items():
            if rel in spans:
                p.entries[rel] = Entry("", "", key, tuple(spans[rel]), subset=subset)
            else:
                p.verdicts[rel] = ("no_segments", f"{scp} names it ({key}) but {seg_rel} gives it no utterance")
    return p


# --- metadata.csv (LJSpeech, IndicTTS, Hugging Face audiofolder) ----------------------------


def _metadata_csv(source: Path, rels: tp.Sequence[str]) -> Plan:
    p = Plan("metadata_csv")
    files = [r for r in rels if posixpath.basename(r).lower() == "metadata.csv"]
    if not files:
        raise UserError(
            f"ingest.layout is 'metadata_csv' but no metadata.csv is under {source}; set ingest.layout: auto"
        )
    present = set(rels)
    for meta in files:
        p.metadata.append(meta)
        p.verdicts[meta] = _metadata_verdict("metadata_csv", "metadata.csv")
        folder = posixpath.dirname(meta)
        default_speaker = posixpath.basename(folder) or source.absolute().name
        audio = _audio_by_stem(rels, folder)
        text = _read_text(source, meta)
        first = text.split("\n", 1)[0]
        delimiter = "|" if "|" in first else ","
        rows = list(
            csv.reader(
                io.StringIO(text),
                delimiter=delimiter,
                quoting=csv.QUOTE_NONE if delimiter == "|" else csv.QUOTE_MINIMAL,
            )
        )
        if not rows:
            continue
        header = [c.strip().lower() for c in rows[0]]
        if header and header[0] in METADATA_FILE_COLUMNS:
            col_file = 0
            col_text = next((header.index(c) for c in METADATA_TEXT_COLUMNS if c in header), None)
            col_spk = next((header.index(c) for c in METADATA_SPEAKER_COLUMNS if c in header), None)
            body, first_line = rows[1:], 2
        else:
            col_file, col_text, col_spk, body, first_line = 0, 1, None, rows, 1
        for n, row in enumerate(body, start=first_line):
            if not row or not row[col_file].strip():
                continue
            name = row[col_file].strip()
            joined = posixpath.normpath(posixpath.join(folder, name))
            rel = joined if joined in present else audio.get(posixpath.splitext(posixpath.basename(name))[0])
            if rel is None:
                p.problems.append(
                    (meta, "missing_audio", f"line {n}: {name}: no audio file of that name under its folder")
                )
                continue
            if rel in p.entries:
                p.problems.append((meta, "duplicate_row", f"line {n}: {name} is named again; the first row is kept"))
                continue
            said = row[col_text].strip() if col_text is not None and col_text < len(row) else ""
            spk = row[col_spk].strip() if col_spk is not None and col_spk < len(row) else ""
            p.entries[rel] = Entry(spk or default_speaker, said)
    return p
