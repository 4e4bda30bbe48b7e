"""Normalize-stage throughput against a straightforward single-process pyloudnorm loop.

Both sides do the same job on the same files: read 22.05 kHz speech, resample to
16 kHz, meter BS.1770 loudness, gain to -16 LUFS, keep peaks under -1 dBFS, write
a WAV. The anchor is the loop a practitioner would write first (soundfile,
scipy's polyphase resampler, pyloudnorm's meter and normalize, a peak scale-down
for the ceiling); ours is ``codec.data.normalize.normalize`` as the stage runs it (all
cores, soxr, vectorized gating, a look-ahead limiter that keeps loudness on target).

    python benchmarks/normalize_throughput.py --minutes 60

prints each side's throughput as a multiple of real time and their ratio. The
speech is the embedded corpus (espeak-ng at 22.05 kHz), synthesized once into
``benchmarks/.cache/`` (about a minute). Outputs go to a temporary folder
(``--out-dir`` to choose): on some hosts creating a file costs ~0.5–1 ms (a watched
workspace; ext4 after many deletes), which is the host's cost, not either side's,
and which the single-process loop pays on one core: ``--out-dir /dev/shm`` (tmpfs)
leaves it out.

The stage writes 16-bit WAVs by default (``normalize.subtype``: the limiter keeps
peaks under -1 dBFS, so nothing clips, and quantization noise sits ~80 dB under
speech at -16 LUFS); the loop writes float, libsndfile's default for float data.
A third line runs the stage with ``subtype=FLOAT``, to tell the two apart.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyloudnorm
import scipy.signal
import soundfile as sf

from codec.data.corpus import CorpusParams, write_corpus
from codec.data.normalize import NormalizeParams, normalize

CACHE = Path(__file__).resolve().parent / ".cache"


def make_input(minutes: float) -> tuple[Path, float]:
    """A folder of 22.05 kHz mono 16-bit speech of at least ``minutes``, plus its manifest."""
    # ~5.2 s per utterance on average; the mono WAVs are at espeak's native 22.05 kHz.
    n = int(minutes * 60 / 3.8) + 1  # a fifth of the corpus is 44.1 kHz stereo: those are skipped
    folder = CACHE / f"speech22k_{n}"
    manifest = folder / "manifest.csv"
    if not manifest.exists():
        corpus = CACHE / f"corpus_{n}"
        if not corpus.exists():
            write_corpus(corpus, CorpusParams(n_utterances=n, seed=99))
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for i, src in enumerate(sorted(p for p in corpus.rglob("*") if p.is_file())):
            x, sr = sf.read(src, dtype="float32", always_2d=True)
            if sr != 22050:  # the corpus has some 44.1 kHz stereo takes: keep the benchmark at 22.05 kHz
                continue
            name = f"clip_{i:05d}.wav"
            sf.write(folder / name, x[:, 0], 22050, subtype="PCM_16")
            rows.append({"id": f"clip_{i:05d}", "path": name, "duration_s": len(x) / sr})
        pd.DataFrame(rows).to_csv(manifest, index=False)
    m = pd.read_csv(manifest)
    total = float(m["duration_s"].sum())
    if total < minutes * 60:
        shutil.rmtree(folder)
        raise SystemExit(f"only {total / 60:.1f} min of 22 kHz audio; rerun (the cache was cleared)")
    return folder, total


def straightforward_loop(src: Path, out: Path, target: float = -16.0, ceiling_db: float = -1.0) -> None:
    """The anchor: one process, one file at a time, library defaults."""
    out.mkdir(parents=True, exist_ok=True)
    meter = pyloudnorm.Meter(16000)
    ceiling = 10 ** (ceiling_db / 20)
    for path in sorted(src.glob("*.wav")):
        x, sr = sf.read(path)
        x = scipy.signal.resample_poly(x, 16000 // 50, sr // 50)  # 22050 -> 16000 is 320/441
        loudness = meter.integrated_loudness(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pyloudnorm warns when the result clips
            y = pyloudnorm.normalize.loudness(x, loudness, target)
        peak = np.max(np.abs(y))
        if peak > ceiling:
            y = y * (ceiling / peak)
        sf.write(out / path.name, y, 16000, subtype="FLOAT")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="audio to process (default: one hour)")
    ap.add_argument("--workers", type=int, default=0, help="our worker processes (0 = all cores)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each side, alternating; the best counts")
    ap.add_argument("--out-dir", type=Path, default=None, help="where outputs go (default: a temporary folder)")
    args = ap.parse_args()
    src, seconds = make_input(args.minutes)
    work = Path(tempfile.mkdtemp(prefix="normalize-bench-", dir=args.out_dir)) / "out"
    results: dict[str, float] = {}
    sides = [
        ("straightforward loop", lambda o: straightforward_loop(src, o)),
        ("codec normalize", lambda o: normalize(src, o, NormalizeParams(workers=args.workers))),
        ("  same, FLOAT output", lambda o: normalize(src, o, NormalizeParams(workers=args.workers, subtype="FLOAT"))),
    ]
    for _ in range(args.repeats):  # alternate, so drift in machine load hits both sides
        for name, fn in sides:
            shutil.rmtree(work, ignore_errors=True)
            t0 = time.perf_counter()
            fn(work)
            results[name] = min(results.get(name, float("inf")), time.perf_counter() - t0)
    shutil.rmtree(work.parent, ignore_errors=True)
    for name, t in results.items():
        print(f"{name:22s} {t:7.2f} s  = {seconds / t:7.0f}x real time (best of {args.repeats})")
    ratio = results["straightforward loop"] / results["codec normalize"]
    print(f"audio: {seconds / 3600:.2f} h of 22.05 kHz speech; ratio (ours / loop throughput): {ratio:.2f}x")


if __name__ == "__main__":
    main()
