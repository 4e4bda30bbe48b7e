"""Files per second of ``codec encode`` on a folder of short clips: one process per file (the
anchor: how a folder had to be encoded before ``--out-dir``, and what a shell loop still does)
against one call for the whole folder (one start-up, one model load).

    python benchmarks/encode_folder.py [--clips 100] [--anchor-clips 10] [--model models/codec.pt]

The clips are the first ``--clips`` recordings of ``data/raw`` cut to 1.5 s (run ``make demo``
or ``dvc repro ingest`` first), written as WAV into a temporary folder. The anchor runs on the
first ``--anchor-clips`` of them (each call pays the same start-up, so files/s does not depend
on how many) and prints files/s both ways and the ratio.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
CODEC = str(Path(sys.executable).with_name("codec"))


def make_clips(raw: Path, out: Path, n: int, seconds: float = 1.5) -> list[Path]:
    sources = sorted(raw.rglob("*.wav"))
    if len(sources) < n:
        sys.exit(f"{raw} has {len(sources)} WAV files, {n} asked; run make demo (or dvc repro ingest) first")
    out.mkdir(parents=True)
    clips = []
    for i, src in enumerate(sources[:n]):
        audio, rate = sf.read(src, dtype="float32", always_2d=False)
        dst = out / f"clip{i:03d}.wav"
        sf.write(dst, audio[: int(seconds * rate)], rate)
        clips.append(dst)
    return clips


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=100)
    ap.add_argument("--anchor-clips", type=int, default=10)
    ap.add_argument("--model", default=str(ROOT / "models" / "codec.pt"))
    ap.add_argument("--raw", type=Path, default=ROOT / "data" / "raw")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        clips = make_clips(args.raw, Path(tmp) / "in", args.clips)
        one_by_one = Path(tmp) / "one_by_one"
        one_by_one.mkdir()
        start = time.perf_counter()
        for clip in clips[: args.anchor_clips]:
            cmd = [CODEC, "encode", "-q", "--model", args.model, str(clip), str(one_by_one / f"{clip.stem}.tscb")]
            subprocess.run(cmd, check=True)
        anchor = args.anchor_clips / (time.perf_counter() - start)

        folder = Path(tmp) / "folder"
        start = time.perf_counter()
        cmd = [CODEC, "encode", "-q", "--model", args.model, "--out-dir", str(folder), str(Path(tmp) / "in")]
        subprocess.run(cmd, check=True)
        ours = args.clips / (time.perf_counter() - start)
        written = sorted(folder.rglob("*.tscb"))
        if len(written) != args.clips:
            sys.exit(f"expected {args.clips} bitstreams, found {len(written)}")
        shutil.rmtree(folder)
    print(f"one process per file ({args.anchor_clips} clips): {anchor:.2f} files/s")
    print(f"one call for the folder ({args.clips} clips):    {ours:.2f} files/s")
    print(f"ratio: {ours / anchor:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
