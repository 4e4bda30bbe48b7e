"""Peak memory of ingest and normalize on one long recording (a lecture or broadcast), which
ingest cuts at its pauses into utterances while it streams through the file.

    python benchmarks/long_recording_memory.py [--minutes 60] [--format flac]

Writes a generated speech-like recording of ``--minutes`` (16 kHz mono, stretches of speech
with pauses, written block by block) into a temporary folder, runs ``codec ingest`` and
``codec normalize`` on it under ``/usr/bin/time -v`` with one worker each, and prints each
stage's peak resident memory (the largest process), its time, and the utterances it made.
The recording as float32 would take 230 MB per hour: a stage that held it whole would show it.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.synth import speechlike

RATE = 16000


def write_recording(path: Path, minutes: float, fmt: str) -> None:
    """Five minutes of speech with pauses, repeated at other levels over fresh noise (every
    utterance differs, so none is a duplicate), written five minutes at a time."""
    rng = np.random.default_rng(0)
    parts, total = [], 0
    while total < 300 * RATE:
        x = speechlike(rng.uniform(2.0, 9.0), rng)
        gap = np.zeros(int(rng.uniform(0.3, 1.2) * RATE), np.float32)
        parts += [x, gap]
        total += len(x) + len(gap)
    base = np.concatenate(parts)[: 300 * RATE]
    with sf.SoundFile(path, "w", RATE, 1, format=fmt.upper(), subtype="PCM_16") as f:
        left = int(minutes * 60 * RATE)
        while left > 0:
            n = min(left, len(base))
            gain = np.float32(10 ** (rng.uniform(-12, 0) / 20))
            f.write(base[:n] * gain + (rng.standard_normal(n) * 2e-4).astype(np.float32))
            left -= n


def run_stage(args: list[str]) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of ``codec <args>`` under /usr/bin/time -v."""
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "codec", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"codec {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}")
    print(p.stdout.strip())
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    assert m is not None, p.stderr
    return int(m.group(1)) / 1024, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--format", choices=["flac", "wav"], default="flac")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "rec").mkdir()
        rec = root / "rec" / f"lecture.{args.format}"
        write_recording(rec, args.minutes, args.format)
        params = yaml.safe_load(Path(args.params).read_text())
        params["ingest"]["workers"] = 1
        params["normalize"]["workers"] = 1
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        p = str(root / "params.yaml")
        ingest_mb, ingest_s = run_stage(
            ["ingest", "--source", str(root / "rec"), "--out", str(root / "raw"), "--params", p]
        )
        norm_mb, norm_s = run_stage(
            ["normalize", "--in", str(root / "raw"), "--out", str(root / "norm"), "--params", p]
        )
        m = pd.read_csv(root / "raw" / "manifest.csv")
        rej = pd.read_csv(root / "raw" / "rejected.csv")
        size = rec.stat().st_size / 1e6
    print(
        f"\n{args.minutes:g} min recording ({args.format}, {size:.0f} MB; {args.minutes * 60 * RATE * 4 / 1e6:.0f} MB "
        f"as float32): {len(m)} utterances of {m['duration_s'].min():.2f}-{m['duration_s'].max():.2f} s "
        f"(median {m['duration_s'].median():.2f} s), {len(rej)} rejected pieces"
    )
    print(f"peak RSS: ingest {ingest_mb:.0f} MB ({ingest_s:.0f} s), normalize {norm_mb:.0f} MB ({norm_s:.0f} s)")


if __name__ == "__main__":
    main()
