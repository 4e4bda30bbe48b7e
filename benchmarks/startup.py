"""Start-up of ``codec encode`` on a 1.5 s clip, and encode + decode speed, torch against the
torch-free ONNX runtime, side by side in one run.

    python benchmarks/startup.py [--model SPEC] [--runs 7] [--long-s 60]

``--model`` defaults to what ``codec encode`` loads by default (after ``make demo``: the
registry's champion; on a fresh clone: the reference model). Three ways are timed: the torch
path without the model cache (``CODEC_CACHE_DIR=off``: every call asks MLflow and downloads the
checkpoint, as before the cache), the torch path with it, and the ONNX runtime (the default).
Each runtime gets one warm-up call
first (the ONNX runtime's first call downloads and exports the model into the model cache, once
per model; that call is timed and printed separately). Then ``--runs`` calls of each, in turn:
wall time (median) and peak resident memory (``ru_maxrss`` of the process, the largest), and
encode + decode of a ``--long-s`` recording in one process each, as a real-time factor (audio
seconds per wall second). The clip is the first festival_voice recording (committed), cut to
1.5 s; the long recording is the set's recordings joined and repeated.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
CODEC = str(Path(sys.executable).with_name("codec"))
FESTIVAL = ROOT / "data" / "eval_sets" / "festival_voice"


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one command, from its own rusage."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        err = proc.stderr.read().decode() if proc.stderr else ""
        sys.exit(f"{' '.join(cmd)} failed: {err.strip()}")
    return wall, usage.ru_maxrss / 1024.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="as codec encode --model (default: its default)")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--long-s", type=float, default=60.0)
    args = ap.parse_args()
    model = [] if args.model is None else ["--model", args.model]
    recordings = [sf.read(p, dtype="float32") for p in sorted(FESTIVAL.glob("*.flac"))]
    rate = recordings[0][1]
    with tempfile.TemporaryDirectory() as tmp:
        clip, long = Path(tmp) / "clip.wav", Path(tmp) / "long.wav"
        sf.write(clip, recordings[0][0][: int(1.5 * rate)], rate)
        joined = np.concatenate([r[0] for r in recordings])
        reps = int(np.ceil(args.long_s * rate / joined.shape[0]))
        sf.write(long, np.tile(joined, reps)[: int(args.long_s * rate)], rate)

        def encode(runtime: str, src: Path, out: str) -> list[str]:
            return [CODEC, "encode", str(src), str(Path(tmp) / out), "--overwrite", "-q", "--runtime", runtime, *model]

        first = timed(encode("auto", clip, "warm.tscb"))
        timed(encode("torch", clip, "warm.tscb"))
        rows: dict[str, list[tuple[float, float]]] = {"uncached": [], "torch": [], "onnx": []}
        uncached = {**os.environ, "CODEC_CACHE_DIR": "off"}  # every call asks MLflow and downloads
        for _ in range(args.runs):
            rows["uncached"].append(timed(encode("torch", clip, "x.tscb"), uncached))
            rows["torch"].append(timed(encode("torch", clip, "x.tscb")))
            rows["onnx"].append(timed(encode("auto", clip, "x.tscb")))
        speed = {}
        for runtime in ("torch", "onnx"):
            flag = runtime if runtime == "torch" else "auto"
            enc, _ = timed(encode(flag, long, f"{runtime}.tscb"))
            dec_cmd = [CODEC, "decode", str(Path(tmp) / f"{runtime}.tscb"), str(Path(tmp) / f"{runtime}.wav")]
            dec, _ = timed([*dec_cmd, "--overwrite", "-q", "--runtime", flag, *model])
            speed[runtime] = (args.long_s / enc, args.long_s / dec)
    print(f"first call of the ONNX runtime (download/export into the model cache, once): {first[0]:.2f} s")
    print(f"codec encode of a 1.5 s clip, median of {args.runs} (model: {args.model or 'the default'}):")
    names = {
        "uncached": "torch, no model cache (the path before it)",
        "torch": "torch, cached checkpoint",
        "onnx": "onnx runtime (the default)",
    }
    for runtime, values in rows.items():
        walls, mems = [v[0] for v in values], [v[1] for v in values]
        print(f"  {names[runtime]:44s} {statistics.median(walls):.2f} s, peak memory {max(mems):.0f} MiB")
    onnx = statistics.median(v[0] for v in rows["onnx"])
    for anchor in ("uncached", "torch"):
        print(f"  ratio {anchor} / onnx: {statistics.median(v[0] for v in rows[anchor]) / onnx:.1f}x")
    print(f"encode + decode of {args.long_s:g} s, real-time factor (audio s per wall s, start-up included):")
    for runtime, (e, d) in speed.items():
        print(f"  {runtime:5s} encode {e:.1f}x, decode {d:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
