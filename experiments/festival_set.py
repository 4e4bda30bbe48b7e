"""How the shipped evaluation set ``data/eval_sets/festival_voice/`` was made: Telugu from
another synthesizer, built from a person's recordings.

The training corpus speaks with espeak-ng's formant voices, and the ``unseen_voice`` set with
its Klatt voices: both are rules-based synthesis. Festival's Telugu voice (Debian's
``festvox-te-nsk``, IIIT Hyderabad's NSK diphone voice) concatenates diphones cut from a real
speaker's recordings, so its waveform carries a human glottal source and vocal tract: the
closest to recorded speech that installs offline from a package registry. The codec never hears
it in training, so this set measures how it does on speech unlike its corpus.

The sentences are written for this set (not the corpus' ``corpus_te.txt``): new words too. Each
clip strings sentences until it is longer than ``evaluate.seconds`` (4 s), at its own speaking
rate (Festival's ``Duration_Stretch``) and pitch contour (the DuffInt start/end F0), and is
written at a field-recording level (RMS -38 to -14 dBFS) as 16 kHz 16-bit FLAC. Everything is
fixed by the seed, and Festival's diphone synthesis is deterministic, so re-running this writes
the same samples. Needs ``apt-get install festival festvox-te-nsk`` (the pipeline does not: the
clips are committed)::

    python experiments/festival_set.py [--out data/eval_sets/festival_voice] [--clips 8]
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

ROOT = Path(__file__).resolve().parents[1]
# Written for this set: everyday speech, words the corpus' sentences do not use.
SENTENCES = (
    "మా అక్క పట్నంలో ఆసుపత్రిలో నర్సుగా పని చేస్తోంది.",
    "ఈ సంవత్సరం మామిడి పండ్లు చాలా తీయగా ఉన్నాయి.",
    "రైలు స్టేషనుకు వెళ్ళే దారి ఎటు వైపు ఉంది?",
    "తాతయ్య ప్రతి ఉదయం వార్తాపత్రిక చదువుతారు.",
    "సెలవుల్లో మేము అరకు లోయకు ప్రయాణం చేశాము.",
    "ఈ మందు భోజనం తర్వాత రెండు పూటలా వేసుకోండి.",
    "పొలంలో వరి కోతలు వచ్చే వారం మొదలవుతాయి.",
    "మీ ఫోను నంబరు ఒకసారి మళ్ళీ చెప్పగలరా?",
    "చెల్లెలు సంగీతం నేర్చుకోవడానికి వీణ కొనుక్కుంది.",
    "సాయంత్రం చల్లగాలిలో నది ఒడ్డున నడవడం బాగుంటుంది.",
    "బ్యాంకులో ఖాతా తెరవడానికి ఆధారు కార్డు కావాలి.",
    "వంతెన పనులు పూర్తయ్యేసరికి ఇంకా రెండు నెలలు పడుతుంది.",
    "పండుగ రోజున ఇంటి ముందు రంగుల ముగ్గులు వేశారు.",
    "కొత్త బడిలో గ్రంథాలయం చాలా పెద్దదిగా ఉంది.",
    "వేసవిలో నీళ్ళు ఎక్కువగా తాగడం ఆరోగ్యానికి మంచిది.",
    "మా పక్కింటి అబ్బాయి క్రికెట్ జట్టుకు ఎంపికయ్యాడు.",
)
RATE = 16000  # the voice's own rate: no resampling
SECONDS = 4.5  # a little more than evaluate.seconds, which cuts each clip
PAUSE_S = 0.3


def festival(text: str, stretch: float, f0_start: int, f0_end: int, out: Path) -> np.ndarray:
    """One sentence through Festival's Telugu diphone voice; float32 ``[T]`` at 16 kHz."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    script = (
        "(voice_telugu_NSK_diphone)\n"
        # The voice predates Festival 2.5 and sets no intonation method: DuffInt, a falling contour.
        "(Parameter.set 'Int_Method 'DuffInt)\n"
        "(Parameter.set 'Int_Target_Method Int_Targets_Default)\n"
        f"(set! duffint_params '((start {f0_start}) (end {f0_end})))\n"
        f"(Parameter.set 'Duration_Stretch {stretch:.3f})\n"
        f'(set! utt (utt.synth (Utterance Text "{escaped}")))\n'
        f'(utt.save.wave utt "{out}" \'riff)\n'
    )
    with tempfile.NamedTemporaryFile("w", suffix=".scm", encoding="utf-8", delete=False) as f:
        f.write(script)
    try:
        proc = subprocess.run(["festival", "-b", f.name], capture_output=True, text=True)
    finally:
        Path(f.name).unlink()
    if proc.returncode != 0 or not out.is_file():
        sys.exit(f"festival failed on {text!r}: {proc.stderr.strip()[-500:]}")
    audio, rate = sf.read(out, dtype="float32")
    if rate != RATE:
        sys.exit(f"the Telugu voice spoke at {rate} Hz, not {RATE}")
    return np.asarray(audio, np.float32)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "eval_sets" / "festival_voice")
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args()
    if shutil.which("festival") is None:
        sys.exit("festival is not installed: apt-get install festival festvox-te-nsk")
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(SENTENCES))
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        k = 0
        for i in range(args.clips):
            stretch = float(rng.uniform(0.85, 1.2))
            f0_start = int(rng.integers(115, 165))
            f0_end = int(rng.integers(85, min(f0_start, 125)))
            parts: list[np.ndarray] = [np.zeros(int(rng.uniform(0.1, 0.3) * RATE), np.float32)]
            while sum(p.size for p in parts) < SECONDS * RATE:
                text = SENTENCES[int(order[k % len(order)])]
                k += 1
                parts += [festival(text, stretch, f0_start, f0_end, Path(tmp) / "s.wav")]
                parts.append(np.zeros(int(PAUSE_S * RATE), np.float32))
            x = np.concatenate(parts)
            level = float(rng.uniform(-38.0, -14.0))
            x *= np.float32(10 ** (level / 20) / np.sqrt(np.mean(np.square(x, dtype=np.float64))))
            path = args.out / f"nsk_{i:02d}.flac"
            sf.write(path, np.clip(x, -1.0, 1.0), RATE, subtype="PCM_16", format="FLAC")
            print(
                f"{path}: {x.size / RATE:.2f} s at {level:.1f} dBFS, stretch {stretch:.2f}, F0 {f0_start}->{f0_end} Hz"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
