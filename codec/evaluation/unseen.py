"""An unseen-synthesizer evaluation set: Telugu spoken by espeak-ng's Klatt formant voices.

The training corpus (:mod:`codec.data.corpus`) speaks with espeak-ng's other voice
variants; the ``klatt*`` variants drive a Klatt cascade/parallel formant synthesizer
instead, with its own glottal source, so they test the codec on a voice production it
never heard. Sentences come from the corpus sentence file, so the language is the same.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import typing as tp

import numpy as np

from codec.audio import Array
from codec.audio.levels import rms_dbfs as level_dbfs
from codec.audio.resample import resample
from codec.data.corpus import VOICE_VARIANTS, Espeak, load_sentences
from codec.errors import UserError
from codec.evaluation.sets import EvalClip
from codec.parallel import resolve_workers

UNSEEN_VOICES = ("klatt", "klatt2", "klatt3", "klatt4")  # spoken as te+klatt, te+klatt2, ...
SENTENCES_PER_CLIP = 4  # drawn per clip; spoken in turn until the clip is full
PAUSE_S = 0.25  # between sentences


@dataclasses.dataclass(frozen=True)
class _Job:
    voice: str
    sentences: tuple[str, ...]
    rate_wpm: int
    pitch: int
    espeak_seed: int
    seconds: float


def _synthesize(job: _Job) -> tuple[Array, int]:
    """Speak ``job.sentences`` in turn until ``job.seconds`` are filled. Runs in a fresh
    process: libespeak-ng keeps global state, see :func:`codec.data.corpus.write_corpus`."""
    engine = Espeak()
    engine.seed(job.espeak_seed)
    sr = engine.sample_rate
    parts: list[Array] = []
    n = 0
    for text in job.sentences:
        speech = engine.say(text, job.voice, job.rate_wpm, job.pitch)
        parts += [speech, np.zeros(round(PAUSE_S * sr), np.float32)]
        n += speech.size + parts[-1].size
        if n >= job.seconds * sr:
            break
    return np.concatenate(parts), sr


def _check_voices(voices: tp.Sequence[str]) -> None:
    import espeakng_loader

    folder = os.path.join(espeakng_loader.get_data_path(), "voices", "!v")
    for voice in voices:
        if voice in VOICE_VARIANTS:
            raise UserError(
                f"voice {voice} is one the training corpus speaks with (codec.data.corpus.VOICE_VARIANTS); "
                f"an unseen set needs others, e.g. {', '.join(UNSEEN_VOICES)}"
            )
        if not os.path.isfile(os.path.join(folder, voice)):
            klatt = sorted(v for v in os.listdir(folder) if v.startswith("klatt"))
            raise UserError(
                f"espeak-ng has no voice variant {voice} in {folder}; its Klatt ones are {', '.join(klatt)}"
            )


def render_unseen(
    n_clips: int,
    seconds: float,
    rate: int,
    seed: int,
    voices: tp.Sequence[str] = UNSEEN_VOICES,
    rms_dbfs: float = -26.0,
    workers: int = 0,
) -> list[EvalClip]:
    """``n_clips`` clips ``unseen_<voice>_<i>``, clip ``i`` spoken by ``voices[i % len(voices)]``.

    Each is float32 ``[round(seconds·rate)]`` at ``rate`` (espeak-ng's 22.05 kHz resampled
    with libsoxr), cut or zero-padded to ``seconds`` and scaled to ``rms_dbfs``. Sentences,
    speaking rate (120–190 wpm) and pitch (30–75) are drawn from ``seed``; each clip is
    synthesized in a fresh process (``workers`` at once, 0 = every core), so the same
    arguments give byte-identical clips.
    """
    if n_clips < 1 or seconds <= 0 or not voices:
        raise UserError(f"unseen set: need n_clips >= 1, seconds > 0 and a voice; got {n_clips}, {seconds}, {voices}")
    _check_voices(voices)
    sentences = load_sentences()
    rng = np.random.default_rng(seed)
    jobs = []
    for i in range(n_clips):
        picks = rng.choice(len(sentences), size=min(SENTENCES_PER_CLIP, len(sentences)), replace=False)
        jobs.append(
            _Job(
                voice=voices[i % len(voices)],
                sentences=tuple(sentences[int(j)] for j in picks),
                rate_wpm=int(rng.integers(120, 191)),
                pitch=int(rng.integers(30, 76)),
                espeak_seed=seed * 100_003 + i,
                seconds=seconds,
            )
        )
    ctx = multiprocessing.get_context("fork")
    pool = ctx.Pool(min(n_clips, resolve_workers(workers)), maxtasksperchild=1)
    try:
        spoken = pool.map(_synthesize, jobs, chunksize=1)
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    pool.close()  # not terminate(): see codec.data.corpus.write_corpus
    pool.join()
    n = round(seconds * rate)
    clips = []
    for i, (job, (speech, sr)) in enumerate(zip(jobs, spoken, strict=True)):
        x = resample(speech, sr, rate)[:n]
        x = np.pad(x, (0, n - x.size))
        gain = 10 ** ((rms_dbfs - level_dbfs(x)) / 20)
        clips.append(EvalClip(f"unseen_{job.voice}_{i}", (x.astype(np.float64) * gain).astype(np.float32), rate))
    return clips
