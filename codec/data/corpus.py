"""The embedded Telugu corpus: speech synthesized with espeak-ng, recorded at field levels.

The ``espeakng-loader`` wheel bundles ``libespeak-ng`` with its voice data (Telugu,
``te``, included), so this runs with no system package. Each utterance is one to
``max_sentences_per_utterance`` sentences from ``corpus_te.txt`` spoken by one of
espeak-ng's voice variants at a random rate and pitch, then given the level of a
field recording: an RMS level spread uniformly over [min_rms_dbfs, max_rms_dbfs],
a few clips driven to near full scale (and a couple clipped), loud takes
caught by a recorder's limiter, a few with background noise, some with a
handling bump or plosive pop louder than the speech, and a faint noise floor
under all of them. Containers vary the
way a real folder does (16-bit WAV at 22.05 kHz, 24-bit stereo WAV at 44.1 kHz,
FLAC), so the folder ingest, resampling, normalization and the data gate all have
real work to do. Everything is deterministic for a given ``seed``.

``codec corpus --out data/corpus`` writes the folder; ``ingest.source`` points at it
by default.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import multiprocessing
import os
import re
import typing as tp
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from tqdm import tqdm

from codec.audio import Array
from codec.audio.levels import rms_dbfs
from codec.audio.limiter import limit
from codec.errors import UserError
from codec.files import staged_dir
from codec.parallel import resolve_workers
from codec.params import from_dict, read_params

SENTENCES_FILE = Path(__file__).with_name("corpus_te.txt")
# The speakers: espeak-ng's voice variants that keep its default (formant) engine and sound like
# a person: 68 of its 104, each a speaker of the corpus (the split is by speaker,
# codec.data.split, so with train.val_fraction 0.2 about a fifth are never heard in training).
# Left out: the variants that switch to its Klatt synthesizer (they are the evaluation's
# "unseen synthesizer" set, codec.evaluation.unseen), and the robot, whisper, croak and novelty
# ones (robosoft*, UniRobot, RicishayMax*, Tweaky, Demonic, anikaRobot, croak, fast, whisper*).
VOICE_VARIANTS = (
    *("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8"),
    *("f1", "f2", "f3", "f4", "f5"),
    *("Alex", "Alicia", "Andrea", "Andy", "Annie", "Denis", "Diogo", "Gene", "Gene2", "Henrique", "Hugo"),
    *("Jacky", "Lee", "Marco", "Mario", "Michael", "Mike", "Nguyen", "Storm", "anika", "antonio", "aunty"),
    *("belinda", "boris", "ed", "grandma", "grandpa", "gustave", "ian", "iven", "iven2", "iven3", "iven4"),
    *("john", "kaukovalta", "linda", "marcelo", "max", "michel", "miguel", "norbert", "pablo", "paul"),
    *("pedro", "quincy", "rob", "robert", "sandro", "shelby", "steph", "steph2", "steph3", "travis"),
    *("victor", "zac"),
)
# Before 2026-12 the corpus spoke with these 24 at 120-190 wpm, pitch 30-75 (experiments/corpus_variety.py).
CLASSIC_VOICES = (
    *("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8"),
    *("f1", "f2", "f3", "f4", "f5"),
    *("Alex", "Annie", "Denis", "Gene", "Lee", "Michael", "adam", "anika", "aunty", "belinda", "linda"),
)


@dataclasses.dataclass(frozen=True)
class CorpusParams:
    """``ingest.corpus`` in params.yaml."""

    n_utterances: int = 160
    seed: int = 1234
    min_rms_dbfs: float = -45.0
    max_rms_dbfs: float = -3.0
    near_clipping_fraction: float = 0.05
    noisy_fraction: float = 0.1
    transient_fraction: float = 0.2
    max_sentences_per_utterance: int = 2
    # Who speaks (espeak-ng voice variants: te+<voice>), and the speaking rate (words per
    # minute) and pitch (espeak-ng's 0-99) ranges each utterance draws from.
    voices: list[str] | None = None  # None: VOICE_VARIANTS
    rate_wpm: list[int] = dataclasses.field(default_factory=lambda: [100, 220])
    pitch: list[int] = dataclasses.field(default_factory=lambda: [20, 90])
    # Utterances spoken by voices cut from people's recordings (Festival's diphone voices,
    # experiments/diphone_voices.py): dry clips in ``diphone_voices/<voice>/*.flac``, one folder
    # per speaker, given the same recording conditions as the espeak-ng utterances. They come
    # after the ``n_utterances`` espeak-ng ones, which stay the same whatever this count.
    diphone_utterances: int = 0
    diphone_voices: str | None = None

    def diphone_clips(self) -> dict[str, list[str]]:
        """Each diphone voice's dry clips (paths relative to ``diphone_voices``), in name order."""
        if not self.diphone_utterances or self.diphone_voices is None:
            return {}
        root = Path(self.diphone_voices)
        return {
            d.name: sorted(f.relative_to(root).as_posix() for f in d.glob("*.flac"))
            for d in sorted(root.iterdir())
            if d.is_dir() and any(d.glob("*.flac"))
        }

    @property
    def speakers(self) -> tuple[str, ...]:
        return tuple(self.voices) if self.voices is not None else VOICE_VARIANTS

    def check(self, where: str) -> None:
        if self.n_utterances < 1:
            raise UserError(f"{where}.n_utterances must be at least 1, got {self.n_utterances}")
        if not self.min_rms_dbfs <= self.max_rms_dbfs < 0:
            raise UserError(f"{where}: need min_rms_dbfs <= max_rms_dbfs < 0 dBFS")
        for name in ("near_clipping_fraction", "noisy_fraction", "transient_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise UserError(f"{where}.{name} must be within 0..1, got {v}")
        if self.max_sentences_per_utterance < 1:
            raise UserError(f"{where}.max_sentences_per_utterance must be at least 1")
        if self.voices is not None and (not self.voices or len(set(self.voices)) != len(self.voices)):
            raise UserError(f"{where}.voices must be null (every voice of VOICE_VARIANTS) or name voices, each once")
        for name, (lo, hi), top in (("rate_wpm", self.rate_wpm, 450), ("pitch", self.pitch, 99)):
            if not 0 <= lo <= hi <= top:
                raise UserError(f"{where}.{name} must be [low, high] within 0..{top}, got [{lo}, {hi}]")
        if self.diphone_utterances < 0:
            raise UserError(f"{where}.diphone_utterances must be 0 or more, got {self.diphone_utterances}")
        missing = [v for v in self.speakers if not espeak_voice_exists(v)]
        if missing:
            raise UserError(
                f"{where}.voices: espeak-ng has no voice variant {', '.join(missing)} "
                f"(its variants are the files in {espeak_variants_folder()})"
            )

    def check_diphone_voices(self, where: str) -> None:
        """The diphone voices' folder has clips (checked when the corpus is written: the folder
        is relative to the stage's working directory, the repository)."""
        if not self.diphone_utterances:
            return
        if self.diphone_voices is None or not Path(self.diphone_voices).is_dir():
            raise UserError(
                f"{where}.diphone_voices: no folder {self.diphone_voices!r} for the {self.diphone_utterances} "
                "diphone_utterances (the repository ships data/diphone_voices; or set diphone_utterances: 0)"
            )
        if not self.diphone_clips():
            raise UserError(
                f"{where}.diphone_voices: {self.diphone_voices} has no <voice>/*.flac clips "
                "(experiments/diphone_voices.py writes them; or set diphone_utterances: 0)"
            )


def espeak_variants_folder() -> Path:
    """Where espeak-ng keeps its voice variants (the wheel's data folder)."""
    import espeakng_loader

    return Path(espeakng_loader.get_data_path()) / "voices" / "!v"


def espeak_voice_exists(voice: str) -> bool:
    return bool(re.fullmatch(r"[\w+-]+", voice)) and (espeak_variants_folder() / voice).is_file()


def load_sentences(path: Path = SENTENCES_FILE) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]


class Espeak:
    """A synchronous espeak-ng synthesizer over ctypes (one per process)."""

    _AUDIO_OUTPUT_SYNCHRONOUS = 2
    _POS_CHARACTER = 1
    _CHARS_UTF8 = 1
    _RATE, _PITCH = 1, 3

    def __init__(self) -> None:
        import espeakng_loader

        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data_dir = os.path.dirname(espeakng_loader.get_data_path())
        self._lib.espeak_Initialize.restype = ctypes.c_int
        rate = self._lib.espeak_Initialize(self._AUDIO_OUTPUT_SYNCHRONOUS, 0, data_dir.encode(), 0)
        if rate <= 0:
            raise RuntimeError(f"espeak-ng failed to initialize (data at {data_dir})")
        self.sample_rate = int(rate)
        self._chunks: list[np.ndarray] = []
        callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

        def on_audio(wav: tp.Any, n: int, _events: tp.Any) -> int:
            if n > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._callback = callback_type(on_audio)  # keep a reference: C holds the pointer
        self._lib.espeak_SetSynthCallback(self._callback)

    def seed(self, seed: int) -> None:
        """Seed espeak-ng's voicing noise (its own generator and libc's rand())."""
        self._lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))
        ctypes.CDLL(None).srand(ctypes.c_uint(seed & 0xFFFFFFFF))

    def say(self, text: str, voice: str, rate_wpm: int, pitch: int) -> Array:
        """Synthesize ``text`` with voice ``te+<voice>``; returns float32 ``[T]`` at ``sample_rate``."""
        if self._lib.espeak_SetVoiceByName(f"te+{voice}".encode()) != 0:
            raise RuntimeError(f"espeak-ng has no voice te+{voice}")
        self._lib.espeak_SetParameter(self._RATE, rate_wpm, 0)
        self._lib.espeak_SetParameter(self._PITCH, pitch, 0)
        self._chunks = []
        data = text.encode("utf-8")
        err = self._lib.espeak_Synth(
            ctypes.c_char_p(data),
            ctypes.c_size_t(len(data) + 1),
            0,
            self._POS_CHARACTER,
            0,
            self._CHARS_UTF8,
            None,
            None,
        )
        self._lib.espeak_Synchronize()
        if err != 0 or not self._chunks:
            raise RuntimeError(f"espeak-ng failed to synthesize {text!r} (error {err})")
        return (np.concatenate(self._chunks).astype(np.float32) / 32768.0).astype(np.float32)


def _colored_noise(rng: np.random.Generator, n: int, slope_db_per_octave: float) -> Array:
    """Noise with a spectral slope (0 = white, -3 = pink, -6 = brown), unit RMS."""
    spec = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    f = np.arange(n // 2 + 1, dtype=np.float64)
    f[0] = 1.0
    spec *= f ** (slope_db_per_octave / 20.0 / np.log10(2.0))
    x = np.fft.irfft(spec, n)
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Utterance:
    name: str  # relative path in the corpus folder
    text: str
    voice: str
    rate_wpm: int
    pitch: int
    level: str  # "normal" | "near_clipping" | "clipped" | "noisy"
    transient: bool  # a mic bump / click louder than the speech
    clips: tuple[str, ...] = ()  # a diphone voice's dry clips, spoken in turn (not espeak-ng)


def _condition(rng: np.random.Generator, params: CorpusParams) -> tuple[str, str]:
    """A take's recording level and container: (level, file extension)."""
    u = rng.random()
    if u < params.near_clipping_fraction:
        level = "near_clipping" if rng.random() < 0.7 else "clipped"
    elif u < params.near_clipping_fraction + params.noisy_fraction:
        level = "noisy"
    else:
        level = "normal"
    return level, ("wav" if rng.random() < 0.85 else "flac")


def _diphone_plan(params: CorpusParams, first_index: int) -> list[Utterance]:
    """The diphone voices' utterances: each voice in turn, one or two of its dry clips."""
    voices = params.diphone_clips()
    rng = np.random.default_rng([params.seed, 1])
    out = []
    for n in range(params.diphone_utterances):
        voice = sorted(voices)[n % len(voices)]
        k = int(rng.integers(1, min(params.max_sentences_per_utterance, len(voices[voice])) + 1))
        clips = tuple(voices[voice][int(j)] for j in rng.choice(len(voices[voice]), size=k, replace=False))
        level, ext = _condition(rng, params)
        i = first_index + n
        out.append(
            Utterance(
                name=f"speaker_diphone-{voice}/utt_{i:05d}.{ext}",
                text="",
                voice=voice,
                rate_wpm=0,
                pitch=0,
                level=level,
                transient=bool(rng.random() < params.transient_fraction),
                clips=clips,
            )
        )
    return out


def plan(params: CorpusParams, sentences: list[str]) -> list[Utterance]:
    """Decide every utterance's text, voice and recording condition from the seed."""
    rng = np.random.default_rng(params.seed)
    out = []
    for i in range(params.n_utterances):
        k = int(rng.integers(1, params.max_sentences_per_utterance + 1))
        text = " ".join(sentences[int(j)] for j in rng.choice(len(sentences), size=k, replace=False))
        voice = params.speakers[int(rng.integers(len(params.speakers)))]
        level, ext = _condition(rng, params)
        out.append(
            Utterance(
                name=f"speaker_{voice}/utt_{i:05d}.{ext}",
                text=text,
                voice=voice,
                rate_wpm=int(rng.integers(params.rate_wpm[0], params.rate_wpm[1] + 1)),
                pitch=int(rng.integers(params.pitch[0], params.pitch[1] + 1)),
                level=level,
                transient=bool(rng.random() < params.transient_fraction),
            )
        )
    return out + _diphone_plan(params, params.n_utterances)


def _diphone_speech(utt: Utterance, params: CorpusParams, index: int) -> tuple[Array, int]:
    """A diphone voice's dry clips, spoken in turn with a breath's pause between them."""
    assert params.diphone_voices is not None
    rng = np.random.default_rng([params.seed, index, 1])
    parts: list[Array] = []
    rate = 0
    for clip in utt.clips:
        x, rate = sf.read(str(Path(params.diphone_voices) / clip), dtype="float32")
        if parts:
            parts.append(np.zeros(int(rng.uniform(0.15, 0.4) * rate), np.float32))
        parts.append(np.asarray(x, np.float32))
    return np.concatenate(parts), rate


def render(engine: Espeak | None, utt: Utterance, params: CorpusParams, index: int) -> tuple[Array, int]:
    """Synthesize one utterance and give it its recording level and conditions."""
    rng = np.random.default_rng([params.seed, index])
    if utt.clips:
        speech, sr = _diphone_speech(utt, params, index)
    else:
        assert engine is not None
        speech, sr = engine.say(utt.text, utt.voice, utt.rate_wpm, utt.pitch), engine.sample_rate
    lead, tail = (int(rng.uniform(0.15, 0.5) * sr) for _ in range(2))
    x = np.concatenate([np.zeros(lead, np.float32), speech, np.zeros(tail, np.float32)])
    speech_rms = 10 ** (rms_dbfs(speech) / 20)
    if utt.transient:
        # A handling bump or a plosive pop: a few ms, 3-15 dB above the speech peak.
        # This is what makes per-clip peak normalization arbitrary in real recordings.
        n = int(rng.uniform(0.001, 0.004) * sr)
        at = int(rng.integers(lead, lead + speech.size - n))
        bump = np.hanning(n) * np.sign(rng.standard_normal()) * np.max(np.abs(speech)) * 10 ** (rng.uniform(3, 15) / 20)
        x[at : at + n] += bump.astype(np.float32)
    if utt.level == "noisy":
        snr_db = rng.uniform(8.0, 25.0)
        x = x + _colored_noise(rng, x.size, -3.0) * speech_rms * 10 ** (-snr_db / 20)
    # A room/microphone noise floor 55-70 dB under the speech.
    x = x + _colored_noise(rng, x.size, -1.5) * speech_rms * 10 ** (-rng.uniform(55, 70) / 20)
    if utt.level == "near_clipping":
        x = x / np.max(np.abs(x)) * 10 ** (-rng.uniform(0.01, 0.3) / 20)
    elif utt.level == "clipped":
        x = np.clip(x / np.max(np.abs(x)) * 10 ** (rng.uniform(1.0, 3.0) / 20), -1.0, 1.0)
    else:
        target = rng.uniform(params.min_rms_dbfs, params.max_rms_dbfs)
        x = x * 10 ** ((target - rms_dbfs(x)) / 20)
        if np.max(np.abs(x)) > 0.999:  # a loud take: the recorder's limiter caught it
            x, _ = limit(x.astype(np.float32), 0.999, max(1, sr // 200))
    return x.astype(np.float32), sr


def _render_to_file(job: tuple[Path, Utterance, CorpusParams, int]) -> None:
    """Synthesize and write one utterance. Runs in a fresh process (see write_corpus)."""
    staging, utt, params, i = job
    engine = None
    if not utt.clips:
        engine = Espeak()
        engine.seed(params.seed * 100_003 + i)
    x, sr = render(engine, utt, params, i)
    path = staging / utt.name
    path.parent.mkdir(parents=True, exist_ok=True)
    if i % 5 == 4:  # some takes come from a 44.1 kHz stereo recorder
        y = soxr.resample(x, sr, 44100).astype(np.float32)
        sf.write(str(path), np.stack([y, 0.97 * y], axis=1), 44100, subtype="PCM_24")
    elif path.suffix == ".flac":
        sf.write(str(path), x, sr, subtype="PCM_16", format="FLAC")
    else:
        sf.write(str(path), x, sr, subtype="PCM_16")


def _corpus_owned(folder: Path) -> bool:
    """The folder holds only what :func:`write_corpus` writes (``speaker_*/utt_NNNNN.wav|flac``)."""
    for path in folder.rglob("*"):
        rel = path.relative_to(folder).as_posix()
        if path.is_dir() and not path.is_symlink():
            if not re.fullmatch(r"speaker_[\w+-]+", rel):
                return False
        elif not re.fullmatch(r"speaker_[\w+-]+/utt_\d{5}\.(wav|flac)", rel):
            return False
    return True


def write_corpus(out: Path, params: CorpusParams, workers: int = 0) -> int:
    """Write the corpus folder ``out`` (replaced atomically as a whole). Returns the clip count.

    libespeak-ng keeps state in globals that survive even espeak_Terminate, so a
    second utterance in the same process comes out a few samples different from
    the same utterance spoken first. Each utterance is therefore synthesized in a
    fresh process (a pool with one task per child), which makes the corpus
    byte-identical from run to run and spreads the work over the cores.
    """
    params.check_diphone_voices("ingest.corpus")
    utterances = plan(params, load_sentences())
    with staged_dir(out, owned=_corpus_owned) as staging:
        jobs = [(staging, utt, params, i) for i, utt in enumerate(utterances)]
        ctx = multiprocessing.get_context("fork")
        pool = ctx.Pool(resolve_workers(workers), maxtasksperchild=1)
        try:
            for _ in tqdm(
                pool.imap(_render_to_file, jobs, chunksize=1), total=len(jobs), desc="corpus", leave=False, disable=None
            ):
                pass
        except BaseException:
            pool.terminate()
            pool.join()
            raise
        # Not terminate() after the last result: with one task per child the pool may just
        # have started a replacement worker that terminate() misses, and join() then waits
        # on it forever (CPython issues #78178, #82980; it hung the test suite once here).
        # close() + join() lets every worker take its sentinel and exit.
        pool.close()
        pool.join()
    return len(utterances)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder to write the corpus into")
    parser.add_argument("--params", default="params.yaml", help="params file (reads ingest.corpus)")


def run(args: argparse.Namespace) -> int:
    section = read_params(args.params).get("ingest", {}) or {}
    params = from_dict(CorpusParams, section.get("corpus"), f"{args.params}: ingest.corpus")
    n = write_corpus(args.out, params)
    print(f"codec corpus: wrote {n} Telugu utterances to {args.out}/")
    return 0
