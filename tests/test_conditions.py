"""Evaluation conditions (telephone, cheap mic, reverb, noise) and the unseen-voice set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.signal as sps

from codec.audio.levels import rms_dbfs
from codec.data.corpus import VOICE_VARIANTS
from codec.errors import UserError
from codec.evaluation import conditions as C
from codec.evaluation.unseen import UNSEEN_VOICES, render_unseen
from tests.synth import speechlike

RATE = 16000


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return speechlike(4.0, np.random.default_rng(3))


@pytest.fixture(scope="module")
def white() -> np.ndarray:
    return (0.05 * np.random.default_rng(4).standard_normal(4 * RATE)).astype(np.float32)


def _above_4k_db(y: np.ndarray) -> float:
    """Energy above 4 kHz relative to that in 300..3400 Hz (Welch PSD), dB."""
    f, p = sps.welch(y.astype(np.float64), RATE, nperseg=1024)
    return float(10 * np.log10(p[f > 4000].sum() / p[(f >= 300) & (f <= 3400)].sum()))


@pytest.mark.parametrize("kind", ["speech", "white"])
def test_telephone_band_limits(kind: str, request: pytest.FixtureRequest) -> None:
    x = request.getfixturevalue(kind)
    assert _above_4k_db(x) > -10  # the input has real energy up there
    assert _above_4k_db(C.telephone(x, RATE, 300.0, 3400.0)) < -40


@pytest.mark.parametrize("snr_db", [5.0, 20.0])
def test_noise_at_the_stated_snr(speech: np.ndarray, snr_db: float) -> None:
    seed = (0, 7)
    y = C.add_noise(speech, RATE, snr_db, seed).astype(np.float64)
    # The output is g·(x + a·n) for the seeded unit noise n: recover g and g·a by least squares.
    n = C.pink_noise(speech.size, RATE, np.random.default_rng(seed))
    x = speech.astype(np.float64)
    (gx, gn), *_ = np.linalg.lstsq(np.stack([x, n], axis=1), y, rcond=None)
    measured = 10 * np.log10(gx**2 * np.sum(x * x) / (gn**2 * np.sum(n * n)))
    assert abs(measured - snr_db) < 0.2
    assert np.max(np.abs(y - (gx * x + gn * n))) < 1e-5  # nothing else in the output


@pytest.mark.parametrize("rt60_s", [0.3, 0.8])
def test_synthetic_ir_decays_at_the_requested_rt60(rt60_s: float) -> None:
    for seed in range(3):
        ir = C.synthetic_ir(RATE, rt60_s, 0.0, np.random.default_rng(seed))
        assert C.rt60_schroeder(ir, RATE) == pytest.approx(rt60_s, rel=0.1)


def test_rt60_schroeder_of_an_exact_exponential() -> None:
    t = np.arange(RATE) / RATE
    ir = (10 ** (-3 * t / 0.5)).astype(np.float32)  # energy falls 60 dB in 0.5 s
    assert C.rt60_schroeder(ir, RATE) == pytest.approx(0.5, rel=0.02)


@pytest.mark.parametrize("name", sorted(C.CONDITIONS))
def test_conditions_keep_length_and_level_and_repeat(name: str, speech: np.ndarray) -> None:
    params = C.ConditionParams(seed=5)
    y = C.apply(name, speech, RATE, params, 3)
    assert y.dtype == np.float32 and y.shape == speech.shape
    assert np.all(np.isfinite(y))
    assert abs(rms_dbfs(y) - rms_dbfs(speech)) < 0.01
    assert np.array_equal(y, C.apply(name, speech, RATE, params, 3))
    assert not np.allclose(y, speech, atol=1e-3)  # it did something


@pytest.mark.parametrize("name", ["reverb", "noise"])
def test_seeded_conditions_differ_per_clip_and_seed(name: str, speech: np.ndarray) -> None:
    y = C.apply(name, speech, RATE, C.ConditionParams(seed=5), 3)
    assert not np.array_equal(y, C.apply(name, speech, RATE, C.ConditionParams(seed=5), 4))
    assert not np.array_equal(y, C.apply(name, speech, RATE, C.ConditionParams(seed=6), 3))


def test_cheap_mic_cuts_the_lows() -> None:
    t = np.arange(4 * RATE) / RATE
    tones = {f: (0.1 * np.sin(2 * np.pi * f * t)).astype(np.float32) for f in (50.0, 1000.0)}
    # Compare the gain at each frequency; each output is rescaled to its input's RMS,
    # so measure both tones in one signal.
    y = C.cheap_mic(tones[50.0] + tones[1000.0], RATE, -3.0).astype(np.float64)[RATE:-RATE]
    level = {f: 20 * np.log10(abs(2 * np.mean(y * np.exp(-2j * np.pi * f * t[RATE:-RATE])))) for f in tones}
    assert level[1000.0] - level[50.0] > 10


def test_unknown_condition_is_refused(speech: np.ndarray) -> None:
    with pytest.raises(UserError, match="known conditions are telephone, cheap_mic, reverb, noise"):
        C.apply("underwater", speech, RATE, C.ConditionParams(), 0)


def test_condition_params_check() -> None:
    C.ConditionParams().check("evaluate.conditions")
    with pytest.raises(UserError, match="telephone band"):
        C.ConditionParams(telephone_low_hz=3500.0).check("evaluate.conditions")
    with pytest.raises(UserError, match="reverb_rt60_s"):
        C.ConditionParams(reverb_rt60_s=0.0).check("evaluate.conditions")
    with pytest.raises(UserError, match="noise_snr_db"):
        C.ConditionParams(noise_snr_db=float("nan")).check("evaluate.conditions")


def test_render_unseen_is_repeatable_and_unseen() -> None:
    assert not set(UNSEEN_VOICES) & set(VOICE_VARIANTS)
    clips = render_unseen(2, 1.5, RATE, seed=11, rms_dbfs=-26.0)
    again = render_unseen(2, 1.5, RATE, seed=11, rms_dbfs=-26.0)
    assert [c.id for c in clips] == [f"unseen_{UNSEEN_VOICES[0]}_0", f"unseen_{UNSEEN_VOICES[1]}_1"]
    for c, d in zip(clips, again, strict=True):
        assert c.sample_rate == RATE and c.audio.dtype == np.float32 and c.audio.shape == (round(1.5 * RATE),)
        assert abs(rms_dbfs(c.audio) - (-26.0)) < 0.01
        assert c.audio.tobytes() == d.audio.tobytes()
    with pytest.raises(UserError, match="training corpus"):
        render_unseen(1, 1.0, RATE, seed=0, voices=(VOICE_VARIANTS[0],))


def test_the_corpus_speaks_with_espeaks_default_engine_only_and_refuses_unknown_voices() -> None:
    """Every default corpus voice keeps espeak-ng's formant engine (its Klatt variants are the
    unseen evaluation set), the voices and the rate and pitch ranges are params, and a voice
    espeak-ng does not have is refused naming it."""
    from codec.data.corpus import CorpusParams, espeak_variants_folder, load_sentences, plan
    from codec.params import from_dict

    folder = espeak_variants_folder()
    assert len(VOICE_VARIANTS) == 68
    assert not [v for v in VOICE_VARIANTS if "klatt" in (folder / v).read_text(errors="replace").lower()]
    utterances = plan(CorpusParams(), load_sentences())
    assert len({u.voice for u in utterances}) > 50  # 160 utterances over many speakers
    assert min(u.rate_wpm for u in utterances) >= 100 and max(u.rate_wpm for u in utterances) <= 220
    fixed = from_dict(CorpusParams, {"voices": ["m3", "f2"], "rate_wpm": [150, 150], "pitch": [40, 40]}, "corpus")
    assert {(u.voice, u.rate_wpm, u.pitch) for u in plan(fixed, load_sentences())} <= {("m3", 150, 40), ("f2", 150, 40)}
    with pytest.raises(UserError, match=r"corpus\.voices: espeak-ng has no voice variant nosuch"):
        from_dict(CorpusParams, {"voices": ["m1", "nosuch"]}, "corpus")
    with pytest.raises(UserError, match=r"corpus\.rate_wpm must be \[low, high\]"):
        from_dict(CorpusParams, {"rate_wpm": [200, 100]}, "corpus")


def test_the_corpus_mixes_in_the_shipped_diphone_voices_without_changing_its_espeak_utterances(
    tmp_path: Path,
) -> None:
    """ingest.corpus.diphone_utterances adds utterances of the shipped voices cut from people's
    recordings (data/diphone_voices), each voice a speaker folder, after the espeak-ng ones,
    which stay byte for byte what they were; every diphone voice speaks; the NSK speaker of the
    festival_voice evaluation set is not among them; a missing folder is a clear error."""
    import soundfile as sf

    from codec.data.corpus import CorpusParams, write_corpus
    from codec.params import from_dict

    shipped = Path(__file__).resolve().parents[1] / "data" / "diphone_voices"
    voices = sorted(d.name for d in shipped.iterdir() if d.is_dir())
    assert len(voices) == 11 and not [v for v in voices if "nsk" in v.lower()]
    base = {"n_utterances": 3, "seed": 5, "voices": ["m1", "f2"]}
    plain, mixed = tmp_path / "plain", tmp_path / "mixed"
    write_corpus(plain, from_dict(CorpusParams, base, "corpus"), workers=1)
    params = {**base, "diphone_utterances": 11, "diphone_voices": str(shipped)}
    write_corpus(mixed, from_dict(CorpusParams, params, "corpus"), workers=1)
    espeak = sorted(p.relative_to(plain) for p in plain.rglob("utt_*.*"))
    assert len(espeak) == 3
    for rel in espeak:
        assert (mixed / rel).read_bytes() == (plain / rel).read_bytes()
    diphone = sorted(p for p in mixed.rglob("utt_*.*") if p.parent.name.startswith("speaker_diphone-"))
    assert sorted({p.parent.name.removeprefix("speaker_diphone-") for p in diphone}) == voices
    assert [int(p.stem[4:]) for p in sorted(diphone, key=lambda p: p.name)] == list(range(3, 14))
    for path in diphone:
        audio, rate = sf.read(path)
        assert rate in (16000, 44100) and audio.shape[0] / rate > 2.5  # whole sentences, not stubs
        assert np.sqrt(np.mean(np.square(audio))) > 10 ** (-50 / 20)  # a recording level, not silence
    missing = from_dict(CorpusParams, {**params, "diphone_voices": str(tmp_path / "none")}, "corpus")
    with pytest.raises(UserError, match=r"corpus\.diphone_voices: no folder .*diphone_utterances: 0"):
        write_corpus(tmp_path / "never", missing, workers=1)
    assert not (tmp_path / "never").exists()
