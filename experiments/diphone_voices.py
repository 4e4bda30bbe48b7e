"""How the shipped folder ``data/diphone_voices/`` was made: dry speech from eleven of Festival's
voices that are cut from real people's recordings, which the embedded corpus mixes in beside
espeak-ng's formant voices (``ingest.corpus.diphone_utterances``; issue 24, item 4).

espeak-ng's voices are rules-based formant synthesis: no human glottal source, no real vocal
tract. Festival's diphone voices concatenate short pieces of one speaker's recordings (LPC
residual-excited, so the source is the person's own), and its Russian voice selects whole units
from a speaker's recorded sentences. The codec trained on formant speech alone lost to Opus on
both sets of other synthesizers (docs/reference_model.md); these voices give it human sources in
training. Each voice speaks sentences of its own language (the codec codes sound, not words).

Kept out on purpose: Debian's NSK voices (``festvox-te-nsk``, ``-hi-nsk``, ``-mr-nsk``): one
speaker, the one of the ``festival_voice`` evaluation set, which must stay unheard.

Each clip is one sentence at a speaking rate drawn from the seed (Festival's
``Duration_Stretch``), written dry (no noise, no level treatment: the corpus stage gives every
utterance its field-recording conditions) at -23 dBFS RMS as 16 kHz 16-bit FLAC. Festival's
synthesis is deterministic, so re-running this writes the same samples. Needs::

    apt-get install festival festvox-kallpc16k festvox-kdlpc16k festvox-italp16k \\
        festvox-itapc16k festvox-ru festvox-czech-dita festvox-czech-krb festvox-czech-machac \\
        festvox-czech-ph festvox-suopuhe-lj festvox-suopuhe-mv
    python experiments/diphone_voices.py [--out data/diphone_voices]

(the pipeline does not: the clips are committed).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

ROOT = Path(__file__).resolve().parents[1]
RATE = 16000
LEVEL_DBFS = -23.0

SENTENCES = {
    "en": (
        "The bus to the market leaves every morning at half past seven.",
        "Could you please read the last number again, a little more slowly?",
        "My grandmother grew rice and lentils on a small farm near the river.",
        "We waited under the old bridge until the heavy rain had stopped.",
        "The doctor said to take two tablets after lunch and one at night.",
        "Nobody expected the little team to win the final match.",
        "Please close the windows before you leave, the wind is getting stronger.",
        "She teaches music to the children of the village on Sundays.",
        "The new library opens at nine and closes late in the evening.",
        "How many kilometres is it from the station to your house?",
    ),
    "cs": (
        "Vlak do Prahy odjíždí každé ráno v sedm hodin.",
        "Můžete mi prosím zopakovat to poslední číslo?",
        "Moje babička pěstovala na zahradě brambory a mrkev.",
        "Čekali jsme pod mostem, dokud nepřestalo pršet.",
        "Lékař řekl, že mám brát dvě tablety po obědě.",
        "Nikdo nečekal, že malý tým vyhraje finále.",
        "Zavřete prosím okna, vítr začíná foukat silněji.",
        "V neděli učí děti ve vesnici hrát na housle.",
        "Nová knihovna otevírá v devět a zavírá večer.",
        "Kolik kilometrů je to od nádraží k vašemu domu?",
    ),
    "fi": (
        "Bussi torille lähtee joka aamu puoli kahdeksalta.",
        "Voisitteko lukea viimeisen numeron uudelleen hitaammin?",
        "Isoäitini kasvatti perunoita pienellä tilalla joen rannalla.",
        "Odotimme vanhan sillan alla, kunnes sade lakkasi.",
        "Lääkäri käski ottaa kaksi tablettia lounaan jälkeen.",
        "Kukaan ei uskonut, että pieni joukkue voittaisi loppuottelun.",
        "Sulkekaa ikkunat ennen lähtöä, tuuli voimistuu.",
        "Hän opettaa sunnuntaisin kylän lapsille musiikkia.",
        "Uusi kirjasto aukeaa yhdeksältä ja sulkeutuu myöhään illalla.",
        "Kuinka monta kilometriä asemalta on teidän talollenne?",
    ),
    "it": (
        "L'autobus per il mercato parte ogni mattina alle sette e mezza.",
        "Potrebbe ripetere l'ultimo numero un po' più lentamente?",
        "Mia nonna coltivava riso e lenticchie vicino al fiume.",
        "Abbiamo aspettato sotto il vecchio ponte finché la pioggia è finita.",
        "Il medico ha detto di prendere due compresse dopo pranzo.",
        "Nessuno pensava che la piccola squadra vincesse la finale.",
        "Chiudete le finestre prima di uscire, il vento è sempre più forte.",
        "La domenica insegna musica ai bambini del paese.",
        "La nuova biblioteca apre alle nove e chiude tardi la sera.",
        "Quanti chilometri ci sono dalla stazione a casa vostra?",
    ),
    "ru": (
        "Автобус на рынок уходит каждое утро в половине восьмого.",
        "Повторите, пожалуйста, последний номер ещё раз, помедленнее.",
        "Моя бабушка выращивала картошку на маленьком огороде у реки.",
        "Мы ждали под старым мостом, пока не кончился сильный дождь.",
        "Врач сказал принимать две таблетки после обеда.",
        "Никто не ожидал, что маленькая команда выиграет финал.",
        "Закройте, пожалуйста, окна, ветер становится сильнее.",
        "По воскресеньям она учит деревенских детей музыке.",
        "Новая библиотека открывается в девять и закрывается поздно вечером.",
        "Сколько километров от вокзала до вашего дома?",
    ),
}

# folder name -> (Festival's voice function, language, the text encoding the voice reads)
VOICES = {
    "kal": ("voice_kal_diphone", "en", "utf-8"),
    "ked": ("voice_ked_diphone", "en", "utf-8"),
    "dita": ("voice_czech_dita", "cs", "iso-8859-2"),
    "krb": ("voice_czech_krb", "cs", "iso-8859-2"),
    "machac": ("voice_czech_machac", "cs", "iso-8859-2"),
    "ph": ("voice_czech_ph", "cs", "iso-8859-2"),
    "suo_lj": ("voice_suo_fi_lj_diphone", "fi", "iso-8859-1"),
    "hy_mv": ("voice_hy_fi_mv_diphone", "fi", "iso-8859-1"),
    "lp": ("voice_lp_diphone", "it", "iso-8859-1"),
    "pc": ("voice_pc_diphone", "it", "iso-8859-1"),
    "msu_nsh": ("voice_msu_ru_nsh_clunits", "ru", "utf-8"),
}


def festival(voice_fn: str, text: str, encoding: str, stretch: float, out: Path) -> np.ndarray:
    """One sentence through one Festival voice; float32 ``[T]`` at 16 kHz."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    script = (
        f"({voice_fn})\n"
        f"(Parameter.set 'Duration_Stretch {stretch:.3f})\n"
        f'(set! utt (utt.synth (Utterance Text "{escaped}")))\n'
        f'(utt.save.wave utt "{out}" \'riff)\n'
    )
    with tempfile.NamedTemporaryFile("wb", suffix=".scm", delete=False) as f:
        f.write(script.encode(encoding))
    try:
        proc = subprocess.run(["festival", "-b", f.name], capture_output=True, text=True, errors="replace")
    finally:
        Path(f.name).unlink()
    if proc.returncode != 0 or not out.is_file():
        sys.exit(f"festival ({voice_fn}) failed on {text!r}: {proc.stderr.strip()[-500:]}")
    audio, rate = sf.read(out, dtype="float32", always_2d=True)
    x = audio.mean(axis=1)
    if rate != RATE:
        x = soxr.resample(x, rate, RATE)
    return np.asarray(x, np.float32)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "diphone_voices")
    ap.add_argument("--voice", action="append", choices=sorted(VOICES), help="only these voices (repeatable)")
    ap.add_argument("--seed", type=int, default=2412)
    args = ap.parse_args()
    if shutil.which("festival") is None:
        sys.exit("festival is not installed (see this script's docstring)")
    with tempfile.TemporaryDirectory() as tmp:
        for v, (voice_fn, lang, encoding) in VOICES.items():
            if args.voice and v not in args.voice:
                continue
            rng = np.random.default_rng([args.seed, sorted(VOICES).index(v)])
            folder = args.out / v
            folder.mkdir(parents=True, exist_ok=True)
            for i, text in enumerate(SENTENCES[lang]):
                stretch = float(rng.uniform(0.85, 1.2))
                x = festival(voice_fn, text, encoding, stretch, Path(tmp) / "s.wav")
                lead = np.zeros(int(rng.uniform(0.1, 0.25) * RATE), np.float32)
                x = np.concatenate([lead, x, np.zeros(int(0.2 * RATE), np.float32)])
                rms = np.sqrt(np.mean(np.square(x, dtype=np.float64)))
                x = np.clip(x * np.float32(10 ** (LEVEL_DBFS / 20) / rms), -1.0, 1.0)
                path = folder / f"{i:02d}.flac"
                sf.write(path, x, RATE, subtype="PCM_16", format="FLAC")
                print(f"{path.relative_to(args.out)}: {x.size / RATE:.2f} s, stretch {stretch:.2f}, {len(text)} chars")
    return 0


if __name__ == "__main__":
    sys.exit(main())
