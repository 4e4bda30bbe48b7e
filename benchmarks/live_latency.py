"""Live coding's latency, measured through pipes in real time, and what less look-ahead costs.

    python benchmarks/live_latency.py [--model SPEC] [--seconds 20] [--skip-quality]

1. **Delay**: ``codec encode --live - - | codec decode --live - -`` as two processes (the ONNX
   runtime, as a user runs them), fed a WAV stream of 16 kHz speech in 20 ms blocks at real
   time (each block written when its last sample would have been recorded). The decoder's
   output is read as it comes; a block's delay is the time from writing its last input sample
   to reading its last output sample. Printed: the algorithmic latency the design imposes
   (chunk + look-ahead at both ends, :func:`codec.inference.live.algorithmic_latency_ms`), the
   measured delay (median, 95th percentile, largest; after the first second), and the ratio of
   the two processes' CPU time to the audio's duration (below 1: faster than real time).
2. **Look-ahead against quality**: the same audio through :class:`codec.inference.live.LiveEncoder`
   and the live decoder in process with 16, 8, 4, 2 and 0 frames of look-ahead on each side
   (100 ms chunks; and 20 ms chunks with 2 and 0), PESQ (wide band) against the input at 6 kbps,
   the algorithmic latency of each, and the stream's bitrate (chunk records and gains included). The model
   was trained non-causal: fewer frames than its receptive field feed it padding it never saw,
   so this is an upper bound on what a model trained causally would lose at that latency.

The speech is festival_voice (a real speaker, committed), joined and repeated to ``--seconds``.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CODEC = str(Path(sys.executable).with_name("codec"))
FESTIVAL = ROOT / "data" / "eval_sets" / "festival_voice"
RATE, BLOCK = 16000, 320  # 20 ms blocks


def speech(seconds: float) -> np.ndarray:
    parts = [sf.read(p, dtype="float32")[0] for p in sorted(FESTIVAL.glob("*.flac"))]
    joined = np.concatenate(parts)
    return np.tile(joined, int(np.ceil(seconds * RATE / joined.shape[0])))[: int(seconds * RATE)]


def measure_delay(x: np.ndarray, model: list[str]) -> tuple[list[float], float]:
    """Per-block delays (s) and CPU seconds of both processes."""
    from codec.audio.io import pcm16, wav_stream_header

    enc = subprocess.Popen(
        [CODEC, "encode", "--live", "-", "-", "-q", *model], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    decode = [CODEC, "decode", "--live", "-", "-", "-q", "--subtype", "PCM_16", *model]
    dec = subprocess.Popen(decode, stdin=enc.stdout, stdout=subprocess.PIPE)
    assert enc.stdin is not None and dec.stdout is not None and enc.stdout is not None
    enc.stdout.close()  # the decoder holds it
    arrivals: list[tuple[float, int]] = []  # (time, output samples so far)

    def reader() -> None:
        assert dec.stdout is not None
        header = dec.stdout.read(44)
        assert header[:4] == b"RIFF"
        got = 0
        while True:
            data = os.read(dec.stdout.fileno(), 65536)
            if not data:
                return
            got += len(data)
            arrivals.append((time.perf_counter(), got // 2))

    thread = threading.Thread(target=reader)
    thread.start()
    time.sleep(3.0)  # both processes load their model before the first sample is "recorded"
    enc.stdin.write(wav_stream_header(RATE, 1))
    enc.stdin.flush()
    written = []
    start = time.perf_counter()
    for k in range(0, x.shape[0], BLOCK):
        due = start + (k + BLOCK) / RATE
        time.sleep(max(0.0, due - time.perf_counter()))
        enc.stdin.write(pcm16(x[k : k + BLOCK]))
        enc.stdin.flush()
        written.append(time.perf_counter())
    enc.stdin.close()
    usage = [os.wait4(p.pid, 0)[2] for p in (enc, dec)]
    thread.join()
    cpu = sum(u.ru_utime + u.ru_stime for u in usage)
    times = np.array([t for t, _ in arrivals])
    counts = np.array([n for _, n in arrivals])
    delays = []
    for i, t_in in enumerate(written):
        end = (i + 1) * BLOCK
        j = int(np.searchsorted(counts, end))
        if j < counts.shape[0] and end > RATE:  # after the first second
            delays.append(float(times[j] - t_in))
    return delays, cpu


def lookahead_table(x: np.ndarray, spec: str | None) -> list[tuple[float, int, float, float, float]]:
    from pesq import pesq

    from codec.inference.live import LiveEncoder, algorithmic_latency_ms
    from codec.inference.model_source import load_model
    from codec.inference.pipeline import decode_from_stream

    loaded = load_model(spec, "auto")
    rows = []
    for chunk_ms, context in ((100, 16), (100, 8), (100, 4), (100, 2), (100, 0), (20, 2), (20, 0)):
        buf = io.BytesIO()
        enc = LiveEncoder(
            loaded.model,
            loaded.levels,
            6.0,
            RATE,
            1,
            buf,
            fingerprint=loaded.fingerprint,
            context_frames=context,
            chunk_ms=chunk_ms,
        )
        for k in range(0, x.shape[0], BLOCK):
            enc.feed(x[k : k + BLOCK])
        enc.finish()
        _, blocks = decode_from_stream(loaded.model, io.BytesIO(buf.getvalue()), context_frames=context)
        y = np.concatenate(list(blocks))
        score = float(pesq(RATE, x[RATE:], y[RATE:], "wb"))
        kbps = len(buf.getvalue()) * 8 / (x.shape[0] / RATE) / 1000
        rows.append((chunk_ms, context, algorithmic_latency_ms(enc.chunk, context, 1000 * enc.hop / RATE), score, kbps))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--skip-quality", action="store_true")
    args = ap.parse_args()
    from codec.inference.live import algorithmic_latency_ms

    model = [] if args.model is None else ["--model", args.model]
    x = speech(args.seconds)
    delays, cpu = measure_delay(x, model)
    print(f"live, 100 ms chunks, 16 frames of look-ahead each side, 6 kbps, {args.seconds:g} s fed in real time:")
    print(f"  algorithmic latency {algorithmic_latency_ms(5, 16, 20.0):.0f} ms (chunk 100 + 2 x 320 ms look-ahead)")
    print(
        f"  measured input-to-output delay: median {1000 * statistics.median(delays):.0f} ms, "
        f"95th percentile {1000 * float(np.percentile(delays, 95)):.0f} ms, largest {1000 * max(delays):.0f} ms"
    )
    print(f"  compute / real time (CPU of encoder + decoder over the audio's duration): {cpu / args.seconds:.2f}")
    if not args.skip_quality:
        print("look-ahead against quality (PESQ-WB at 6 kbps of codes, in process; the stream's bitrate with framing):")
        for chunk_ms, context, latency, score, kbps in lookahead_table(x, args.model):
            print(
                f"  chunks of {chunk_ms:3.0f} ms, {context:2d} frames of look-ahead: algorithmic latency "
                f"{latency:4.0f} ms, PESQ {score:.2f}, {kbps:.2f} kbps"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
