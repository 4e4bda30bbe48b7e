"""Corpora as they are published: miniature corpora in each layout (real encoded audio, a few
speakers), read by ingest without flags. The manifest's speakers are the corpus's, transcripts
travel with the audio, metadata and files that disagree are listed, long recordings are cut
into utterances that stay on one side of the split, and every input is accounted for."""

from __future__ import annotations

import json
import tracemalloc
import typing as tp
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from codec.audio.resample import resample
from codec.data.ingest import IngestParams, IngestResult, ingest
from codec.data.segment import cut_at_pauses
from codec.data.split import speaker_of, split_of
from codec.errors import UserError
from codec.params import from_dict
from tests.synth import RATE, speechlike

TELUGU = ["నమస్కారం", "ఈ రోజు వాతావరణం బాగుంది", "మీరు ఎలా ఉన్నారు", "ధన్యవాదాలు"]


def _speech(seed: int, seconds: float = 1.0, rate: int = RATE) -> np.ndarray:
    return speechlike(seconds, np.random.default_rng(seed), rate=rate)


def _encode(path: Path, x: np.ndarray, rate: int, codec: str, container: str | None = None) -> Path:
    """A real encoded file through FFmpeg (PyAV): AAC in M4A, MP3, Opus in OGG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=container) as c:
        stream = c.add_stream(codec, rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(x[None, :].astype(np.float32), format="fltp", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            c.mux(packet)
    return path


def _wav(path: Path, x: np.ndarray, rate: int = RATE, **kw: tp.Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, rate, **kw)
    return path


def _ingest(src: Path, out: Path, **params: tp.Any) -> IngestResult:
    res = ingest(src, out, IngestParams(workers=1, **params))
    # Nothing lost: every input is in the manifest or in rejected.csv.
    inputs = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()}
    assert inputs <= set(res.accepted["source_path"]) | set(res.rejected["source_path"])
    assert json.loads((out / "corpus.json").read_text()) == res.report
    return res


def _reasons(res: IngestResult) -> dict[str, str]:
    return {f"{s}:{r}": d for s, r, d in res.rejected[["source_path", "reason", "detail"]].itertuples(index=False)}


def _assert_speaker_disjoint(res: IngestResult) -> None:
    sides: dict[str, set[str]] = {}
    for cid, spk in zip(res.accepted["id"], res.accepted["speaker"], strict=True):
        sides.setdefault(spk, set()).add(split_of(speaker_of(cid, spk), 0.5))
    assert all(len(s) == 1 for s in sides.values())
    # ... and so do the pieces of a recording of one voice (a conversation's voices are split apart).
    for _, group in res.accepted.groupby("recording"):
        if group["speaker"].nunique() == 1:
            pairs = zip(group["id"], group["speaker"], strict=True)
            assert len({split_of(speaker_of(c, s), 0.5) for c, s in pairs}) == 1


# --- layouts -----------------------------------------------------------------------------------


def test_openslr_speakers_come_from_the_file_ids_not_the_gender_folders(tmp_path: Path) -> None:
    src = tmp_path / "slr66"
    speakers = {"te_in_female": ["tef_02063", "tef_05510", "tef_07711"], "te_in_male": ["tem_01109", "tem_03333"]}
    seed = 0
    for folder, spks in speakers.items():
        lines = []
        for spk in spks:
            for _ in range(2):
                fid = f"{spk}_{1000 + 7 * seed:011d}"
                rate = 48000 if folder == "te_in_male" else RATE
                _wav(src / folder / f"{fid}.wav", _speech(seed, rate=rate), rate)
                lines.append(f"{fid}\t{TELUGU[seed % 4]}")
                seed += 1
        if folder == "te_in_female":
            lines.append("tef_09999_00000000001\tనమస్కారం")  # the disk lacks it
        (src / folder / "line_index.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _wav(src / "te_in_female" / "stray.wav", _speech(99))  # no line names it
    (src / "LICENSE").write_text("CC-BY-SA 4.0")

    res = _ingest(src, tmp_path / "raw")

    assert res.report["layout"] == "openslr"
    assert set(res.accepted["speaker"]) == {s for spks in speakers.values() for s in spks}
    assert {k: v["clips"] for k, v in res.report["speakers"].items()} == {s: 2 for v in speakers.values() for s in v}
    row = res.accepted.set_index("source_path").loc["te_in_female/tef_02063_00000001000.wav"]
    assert row["text"] == TELUGU[0] and row["speaker"] == "tef_02063"
    reasons = _reasons(res)
    assert "tef_09999_00000000001" in reasons["te_in_female/line_index.tsv:missing_audio"]
    assert "te_in_female/stray.wav:not_in_metadata" in reasons
    assert "te_in_male/line_index.tsv:metadata" in reasons
    assert {m["reason"] for m in res.report["mismatches"]} == {"missing_audio", "not_in_metadata"}
    _assert_speaker_disjoint(res)


def test_common_voice_speakers_are_client_ids_and_invalidated_clips_are_listed(tmp_path: Path) -> None:
    src = tmp_path / "cv-corpus-te"
    clients = ["c0ffee01", "beef0002", "f00d0003"]
    rows = []
    for i in range(6):
        name = f"common_voice_te_{4000 + i}.mp3"
        _encode(src / "clips" / name, _speech(10 + i, rate=32000), 32000, "libmp3lame", "mp3")
        rows.append(f"{clients[i % 3]}\t{name}\t{TELUGU[i % 4]}\t2\t0\t\t\t\tte\t")
    _encode(src / "clips" / "common_voice_te_4100.mp3", _speech(30, rate=32000), 32000, "libmp3lame", "mp3")
    _encode(src / "clips" / "common_voice_te_4200.mp3", _speech(31, rate=32000), 32000, "libmp3lame", "mp3")
    header = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment"
    tsv = header + "\n" + "\n".join(rows) + "\n"
    (src / "validated.tsv").write_text(tsv + "deadbeef\tcommon_voice_te_9.mp3\tx\t2\t0\t\t\t\tte\t\n")
    (src / "train.tsv").write_text(header + "\n" + "\n".join(rows[:4]) + "\n")
    (src / "invalidated.tsv").write_text(
        header + f"\n{clients[0]}\tcommon_voice_te_4100.mp3\tబాగుంది\t0\t2\t\t\t\tte\t\n"
    )
    (src / "reported.tsv").write_text("sentence_id\tsentence\tlocale\treason\n")

    res = _ingest(src, tmp_path / "raw")

    assert res.report["layout"] == "commonvoice"
    assert set(res.accepted["speaker"]) == set(clients)  # not "clips", not one speaker per clip
    assert len(res.accepted) == 6 and set(res.accepted["source_format"]) == {"MP3"}
    assert res.accepted.set_index("source_path").loc["clips/common_voice_te_4001.mp3", "text"] == TELUGU[1]
    reasons = _reasons(res)
    assert "clips/common_voice_te_4100.mp3:invalidated" in reasons
    assert "clips/common_voice_te_4200.mp3:not_in_metadata" in reasons
    assert "common_voice_te_9.mp3" in reasons["validated.tsv:missing_audio"]
    assert "reported.tsv:metadata" in reasons
    _assert_speaker_disjoint(res)


def test_kaldi_segments_cut_recordings_into_utterances_with_their_speakers(tmp_path: Path) -> None:
    src = tmp_path / "kaldi"
    gap = np.zeros(RATE // 2, np.float32)
    utts, segments, utt2spk, text = [], [], [], []
    for r, (rec, spks) in enumerate({"rec1": ["spkA", "spkB"], "rec2": ["spkB", "spkA"]}.items()):
        audio, t = [], 0.0
        for k in range(4):
            x = _speech(40 + 4 * r + k, 1.5)
            utt = f"{spks[k % 2]}-{rec}-{k}"
            segments.append(f"{utt} {rec} {t:.2f} {t + 1.5:.2f}")
            utt2spk.append(f"{utt} {spks[k % 2]}")
            text.append(f"{utt} {TELUGU[k]}")
            utts.append(utt)
            audio += [x, gap]
            t += 2.0
        _wav(src / "audio" / f"{rec}.flac", np.concatenate(audio), format="FLAC")
    _wav(src / "audio" / "unsegmented.wav", _speech(60))
    segments.append("spkA-rec2-late rec2 7.80 9.50")  # past the end of rec2 (8 s)
    d = src / "data" / "train"
    d.mkdir(parents=True)
    (d / "wav.scp").write_text(
        "rec1 audio/rec1.flac\nrec2 audio/rec2.flac\nrec3 audio/unsegmented.wav\n"
        "rec4 audio/gone.wav\nrec5 sox audio/x.wav -t wav - |\n"
    )
    (d / "segments").write_text("\n".join(segments) + "\n")
    (d / "utt2spk").write_text("\n".join(utt2spk) + "\n")
    (d / "text").write_text("\n".join(text) + "\n", encoding="utf-8")
    (d / "spk2utt").write_text("spkA ...\n")

    res = _ingest(src, tmp_path / "raw")

    assert res.report["layout"] == "kaldi"
    acc = res.accepted.set_index("id")
    assert sorted(acc.index) == sorted(utts)
    assert set(acc["speaker"]) == {"spkA", "spkB"} and set(acc["recording"]) == {"rec1", "rec2"}
    assert acc.loc["spkB-rec1-1", ["start_s", "end_s"]].tolist() == [2.0, 3.5]
    assert acc.loc["spkB-rec1-1", "text"] == TELUGU[1]
    assert np.allclose(acc["duration_s"], 1.5)
    reasons = _reasons(res)
    assert "audio/rec2.flac:truncated" in reasons and "spkA-rec2-late" in reasons["audio/rec2.flac:truncated"]
    assert "audio/unsegmented.wav:no_segments" in reasons
    assert "audio/gone.wav" in reasons["data/train/wav.scp:missing_audio"]
    assert "rec5" in reasons["data/train/wav.scp:unsupported_wav_scp"]
    assert "data/train/spk2utt:metadata" in reasons
    _assert_speaker_disjoint(res)


def test_the_split_follows_a_corpuss_own_train_dev_and_test_lists(tmp_path: Path) -> None:
    """Common Voice's train/dev/test.tsv and Kaldi's data/train, data/test folders become the
    manifest's subset, and the split follows them whatever the hash would say: a speaker in a dev
    or test list is held out with every clip of it (even one the train list also names), a
    speaker only in train lists trains, one in no list goes by the hash. Training and the
    evaluation's held-out set agree."""
    from codec.data.layouts import subset_of
    from codec.data.split import split_of
    from codec.evaluation.sets import held_out_ids
    from codec.training.dataset import read_clips, split_clips

    assert [subset_of(n) for n in ("train.tsv", "dev.tsv", "test.tsv", "validated.tsv", "other.tsv")] == [
        "train", "dev", "test", "", ""
    ]  # fmt: skip
    assert [subset_of(n) for n in ("train_clean_100", "dev_clean", "eval2000", "valid", "trainee")] == [
        "train", "dev", "test", "dev", ""
    ]  # fmt: skip
    # Speakers whose hash at val_fraction 0.5 says the opposite of the lists.
    hashed_val = [f"spk{i}" for i in range(40) if split_of(f"spk{i}", 0.5) == "val"]
    hashed_train = [f"spk{i}" for i in range(40) if split_of(f"spk{i}", 0.5) == "train"]
    lists = {"train.tsv": [hashed_val[0], hashed_val[1]], "dev.tsv": [hashed_train[0]], "test.tsv": [hashed_train[1]]}
    src = tmp_path / "cv"
    header = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment"
    validated, k = [], 0
    for tsv, speakers in lists.items():
        rows = []
        for spk in speakers:
            name = f"c{k}.wav"
            _wav(src / "clips" / name, _speech(100 + k))
            rows.append(f"{spk}\t{name}\tx\t2\t0\t\t\t\tte\t")
            k += 1
        (src / tsv).write_text(header + "\n" + "\n".join(rows) + "\n")
        validated += rows
    both = f"{hashed_val[1]}\tc{k}.wav\tx\t2\t0\t\t\t\tte\t"  # also in test.tsv: held out
    _wav(src / "clips" / f"c{k}.wav", _speech(100 + k))
    (src / "test.tsv").write_text((src / "test.tsv").read_text() + both + "\n")
    unlisted = f"{hashed_val[2]}\tc{k + 1}.wav\tx\t2\t0\t\t\t\tte\t"  # in validated.tsv only: the hash
    _wav(src / "clips" / f"c{k + 1}.wav", _speech(101 + k))
    (src / "validated.tsv").write_text(header + "\n" + "\n".join([*validated, both, unlisted]) + "\n")

    res = _ingest(src, tmp_path / "raw")

    subset = dict(zip(res.accepted["source_path"], res.accepted["subset"].fillna(""), strict=True))
    assert subset == {"clips/c0.wav": "train", "clips/c1.wav": "train", "clips/c2.wav": "dev",
                      "clips/c3.wav": "test", "clips/c4.wav": "test", "clips/c5.wav": ""}  # fmt: skip
    train, val = split_clips(read_clips(tmp_path / "raw"), 0.5)
    by_speaker = {c.speaker: "train" for c in train} | {c.speaker: "val" for c in val}
    assert by_speaker == {hashed_val[0]: "train", hashed_val[1]: "val", hashed_train[0]: "val",
                          hashed_train[1]: "val", hashed_val[2]: "val"}  # fmt: skip
    assert held_out_ids(tmp_path / "raw", 0.5) == sorted(c.id for c in val)

    kaldi = tmp_path / "kaldi"
    for folder, spk in (("train", "spkT"), ("test_clean", "spkE")):
        _wav(kaldi / "audio" / f"{spk}.wav", _speech(len(spk) + ord(spk[-1])))
        d = kaldi / "data" / folder
        d.mkdir(parents=True)
        (d / "wav.scp").write_text(f"{spk}-r audio/{spk}.wav\n")
        (d / "utt2spk").write_text(f"{spk}-r {spk}\n")
    res = _ingest(kaldi, tmp_path / "kraw")
    assert dict(zip(res.accepted["speaker"], res.accepted["subset"], strict=True)) == {"spkT": "train", "spkE": "test"}


def test_ljspeech_and_indictts_metadata_csv(tmp_path: Path) -> None:
    src = tmp_path / "tts"
    lines = []
    for i in range(3):  # LJSpeech: id|text|normalized text, one speaker (the folder's name)
        _wav(src / "telugu_female" / "wavs" / f"TF{i:03d}.flac", _speech(70 + i, rate=22050), 22050, subtype="PCM_24")
        lines.append(f"TF{i:03d}|{TELUGU[i]}|{TELUGU[i]}")
    (src / "telugu_female" / "metadata.csv").write_text("\n".join([*lines, "TF999|gone|gone"]) + "\n")
    # A Hugging Face audiofolder: a header, relative paths, a speaker column.
    _wav(src / "hf" / "a.wav", _speech(80), subtype="PCM_16")
    _wav(src / "hf" / "b.wav", _speech(81), subtype="PCM_16")
    (src / "hf" / "metadata.csv").write_text(f"file_name,transcription,speaker_id\na.wav,{TELUGU[0]},s1\nb.wav,x,s2\n")

    res = _ingest(src, tmp_path / "raw")

    assert res.report["layout"] == "metadata_csv"
    assert res.report["speakers"]["telugu_female"]["clips"] == 3
    spk = dict(zip(res.accepted["source_path"], res.accepted["speaker"], strict=True))
    assert spk["hf/a.wav"] == "s1" and spk["hf/b.wav"] == "s2"
    assert res.accepted.set_index("source_path").loc["telugu_female/wavs/TF002.flac", "text"] == TELUGU[2]
    assert "TF999" in _reasons(res)["telugu_female/metadata.csv:missing_audio"]
    _assert_speaker_disjoint(res)


def test_a_speaker_pattern_reads_speakers_from_file_names_in_m4a(tmp_path: Path) -> None:
    src = tmp_path / "kathbath"
    for i, spk in enumerate(["844424930", "844424931", "844424930"]):
        _encode(src / "test" / f"{spk}-{i:05d}.m4a", _speech(90 + i, rate=44100), 44100, "aac", "mp4")
    _encode(src / "test" / "noise.m4a", _speech(95, rate=44100), 44100, "aac", "mp4")

    res = _ingest(src, tmp_path / "raw", speaker_pattern=r"(?P<speaker>\d+)-\d+\.m4a$")

    assert res.report["layout"] == "pattern"
    assert sorted(res.accepted["speaker"]) == ["844424930", "844424930", "844424931"]
    assert "test/noise.m4a:no_speaker" in _reasons(res)


def test_a_forced_layout_without_its_metadata_is_one_clear_error(tmp_path: Path) -> None:
    _wav(tmp_path / "rec" / "spk1" / "a.wav", _speech(1))
    with pytest.raises(UserError, match=r"ingest.layout is 'kaldi' but no wav.scp"):
        ingest(tmp_path / "rec", tmp_path / "raw", IngestParams(workers=1, layout="kaldi"))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"speaker_pattern": r"(\d+)_"}, "no group named speaker"),
        ({"speaker_pattern": r"(?P<speaker>"}, "not a regular expression"),
        ({"layout": "pattern"}, "speaker_pattern is not set"),
        ({"layout": "lectures"}, "is not one of"),
        ({"min_segment_s": 30.0}, "min_segment_s < max_segment_s"),
        ({"max_segment_s": 90.0}, "max_segment_s <= max_duration_s"),
    ],
)
def test_layout_and_segment_params_are_checked(params: dict[str, tp.Any], message: str) -> None:
    with pytest.raises(UserError, match=message):
        from_dict(IngestParams, params, "params.yaml: ingest")


# --- formats -----------------------------------------------------------------------------------

FORMATS = {  # name -> (writer, source rate)
    "pcm8_8k.wav": (lambda p, x, r: _wav(p, x, r, subtype="PCM_U8"), 8000),
    "pcm24_48k.wav": (lambda p, x, r: _wav(p, x, r, subtype="PCM_24"), 48000),
    "float_44k.wav": (lambda p, x, r: _wav(p, x, r, subtype="FLOAT"), 44100),
    "int32_22k.wav": (lambda p, x, r: _wav(p, x, r, subtype="PCM_32"), 22050),
    "take.flac": (lambda p, x, r: _wav(p, x, r, format="FLAC", subtype="PCM_24"), 96000),
    "vorbis.ogg": (lambda p, x, r: _wav(p, x, r, format="OGG", subtype="VORBIS"), 32000),
    "opus.ogg": (lambda p, x, r: _encode(p, x, r, "libopus", "ogg"), 48000),
    "take.opus": (lambda p, x, r: _encode(p, x, r, "libopus", "ogg"), 48000),
    "take.mp3": (lambda p, x, r: _encode(p, x, r, "libmp3lame", "mp3"), 44100),
    "take.m4a": (lambda p, x, r: _encode(p, x, r, "aac", "mp4"), 44100),
    "take.aac": (lambda p, x, r: _encode(p, x, r, "aac", "adts"), 24000),
}


@pytest.fixture(scope="module")
def formats(tmp_path_factory: pytest.TempPathFactory) -> tuple[IngestResult, dict[str, float]]:
    root = tmp_path_factory.mktemp("formats")
    levels = {}
    for i, (name, (write, rate)) in enumerate(FORMATS.items()):
        x = _speech(200 + i, 1.5, rate)
        write(root / "src" / "spk" / name, x, rate)
        y = resample(x, rate, RATE)  # what ingest measures: the clip at 16 kHz (no highs above 8 kHz)
        levels[name] = float(20 * np.log10(np.sqrt(np.mean(np.square(y, dtype=np.float64)))))
    return ingest(root / "src", root / "raw", IngestParams(workers=1)), levels


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_each_format_is_decoded_at_its_level_and_length(
    formats: tuple[IngestResult, dict[str, float]], name: str
) -> None:
    res, levels = formats
    assert res.rejected.empty, res.rejected.to_dict(orient="records")
    row = res.accepted.set_index("source_path").loc[f"spk/{name}"]
    assert row["source_sample_rate"] == FORMATS[name][1] and row["sample_rate"] == RATE
    # Lossy codecs pad a frame or two at the ends (AAC's 1024-sample priming): 1.5 s give or take 0.1.
    assert abs(row["duration_s"] - 1.5) < 0.1
    assert abs(row["rms_dbfs"] - levels[name]) < 1.5  # 8-bit and lossy coding change the level a little


# --- long recordings ----------------------------------------------------------------------------


def _lecture(seconds: float, seed: int, rate: int = RATE) -> np.ndarray:
    """Speech in stretches of 2-7 s with pauses of 0.4-1 s between them, over a noise floor."""
    rng = np.random.default_rng(seed)
    parts, total = [], 0
    while total < seconds * rate:
        x = speechlike(rng.uniform(2.0, 7.0), rng, rate=rate)
        pause = (rng.standard_normal(int(rng.uniform(0.4, 1.0) * rate)) * 3e-4).astype(np.float32)
        parts += [x, pause]
        total += len(x) + len(pause)
    return np.concatenate(parts)[: int(seconds * rate)] + (
        np.random.default_rng(seed).standard_normal(int(seconds * rate)) * 1e-4
    ).astype(np.float32)


def test_a_long_recording_is_cut_at_pauses_into_utterances_that_stay_together(tmp_path: Path) -> None:
    src = tmp_path / "rec"
    lecture = _lecture(150.0, 1)
    _wav(src / "talk.flac", lecture, format="FLAC")  # directly in the source: no speaker known
    _encode(src / "spk9" / "radio.mp3", _lecture(75.0, 2, 44100), 44100, "libmp3lame", "mp3")
    _wav(src / "spk9" / "short.wav", _speech(5))

    res = _ingest(src, tmp_path / "raw")

    acc = res.accepted
    talk = acc[acc["source_path"] == "talk.flac"].sort_values("start_s")
    assert len(talk) >= 8 and talk["duration_s"].between(2.0, 20.0).all()
    assert talk["start_s"].iloc[0] == 0.0 and abs(talk["end_s"].iloc[-1] - 150.0) < 1e-3
    assert np.allclose(
        talk["start_s"].iloc[1:].to_numpy(), talk["end_s"].iloc[:-1].to_numpy(), atol=2e-3
    )  # nothing dropped
    # Cut in the pauses: the audio around each cut is far quieter than the speech.
    for t in talk["start_s"].iloc[1:]:
        around = lecture[int(t * RATE) - 800 : int(t * RATE) + 800]
        assert 20 * np.log10(np.sqrt(np.mean(np.square(around))) + 1e-9) < -45
    # An unlabelled recording is its own speaker: its utterances share one side of the split.
    assert set(talk["speaker"]) == set(talk["recording"]) == {"talk"}
    radio = acc[acc["source_path"] == "spk9/radio.mp3"]
    assert len(radio) >= 4 and set(radio["speaker"]) == {"spk9"} and set(radio["recording"]) == {"spk9__radio"}
    assert res.report["cut_recordings"] == 2
    _assert_speaker_disjoint(res)
    # Written as utterances of the model's rate, each exactly as long as the manifest says.
    for path, dur in zip(talk["path"], talk["duration_s"], strict=True):
        info = sf.info(str(tmp_path / "raw" / path))
        assert info.samplerate == RATE and abs(info.frames / RATE - dur) < 1e-6

    kept = ingest(src, tmp_path / "raw2", IngestParams(workers=1, segment_long=False))
    assert set(kept.rejected.loc[kept.rejected["reason"] == "too_long", "source_path"]) == {
        "talk.flac",
        "spk9/radio.mp3",
    }


def test_cutting_holds_one_utterance_not_the_recording() -> None:
    rate, block = RATE, RATE * 5
    rng = np.random.default_rng(3)
    speech = speechlike(4.0, rng)

    def blocks() -> tp.Iterator[np.ndarray]:  # ten minutes of talk, made as it is read
        for _ in range(120):
            x = np.zeros(block, np.float32)
            x[: len(speech)] = speech
            yield x[:, None]

    tracemalloc.start()
    try:
        total = 0
        for piece in cut_at_pauses(blocks(), rate, 2.0, 20.0):
            assert 2.0 <= piece.data.shape[0] / rate <= 20.0
            total += piece.data.shape[0]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 120 * block
    assert peak < 12 * 1024 * 1024  # the whole stream would be 38 MB as float32


def test_an_old_data_raw_is_still_replaced(tmp_path: Path) -> None:
    """A data/raw written before the manifest had recording/start_s/end_s/text is the stage's own."""
    _wav(tmp_path / "rec" / "spk1" / "a.wav", _speech(1))
    old = tmp_path / "raw"
    old.mkdir()
    header = "id,path,source_path,speaker,duration_s,sample_rate,source_sample_rate,channels,source_format,"
    header += "peak_dbfs,rms_dbfs,lufs,clipped_fraction,dc_offset,content_hash\n"
    (old / "manifest.csv").write_text(header)
    res = ingest(tmp_path / "rec", old, IngestParams(workers=1))
    assert list(pd.read_csv(old / "manifest.csv").columns)[-5:] == ["recording", "start_s", "end_s", "text", "subset"]
    assert len(res.accepted) == 1
