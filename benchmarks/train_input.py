"""Training input on a corpus larger than the cache should hold: throughput of the batch stream
with DataLoader workers against the in-process sampler, and peak memory of a training run.

    python benchmarks/train_input.py [--hours 10] [--workers 2] [--batches 60] [--steps 30]

Writes a generated corpus of ``--hours`` (10 s clips, 16 kHz 16-bit WAV, a ``manifest.csv`` as
normalize writes it) into a temporary folder, then:

1. **Throughput** (reading only, no model): batches of the training profile's shape
   (``params.yaml``'s ``train.batch_size`` x ``train.segment_s``, its augmentation) drawn from the
   same seed by today's in-process sampler with the cache off and on, and by the stream with
   ``--workers`` DataLoader workers (cache off), in segments per second; ratios printed. On a
   2-core machine the workers share the cores with this process; on a GPU host they run beside
   a busy GPU instead.
2. **Memory**: ``params.yaml``'s model trained ``--steps`` steps on that corpus in a subprocess,
   with the cache off and workers (the GPU profile's input settings) and with the cache on and no
   workers (the CPU profiles'), each's peak resident memory summed over the training process and
   its workers (proportional set size, sampled with psutil), and what the cache holds after those steps. A cache that
   kept the whole corpus would hold it all as float32 (printed): the cache-off run's memory does
   not grow with the corpus.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from codec.params import load_section  # noqa: E402
from codec.training.dataset import BatchStream, SegmentSampler, read_clips  # noqa: E402
from codec.training.params import TrainParams  # noqa: E402

RATE = 16000
CLIP_S = 10.0

TRAIN = """
import json, sys, dataclasses
sys.path.insert(0, {root!r})
import torch
from codec.params import load_section
from codec.training.loop import train
from codec.training.params import TrainParams
p = load_section(TrainParams, "train", {params!r})
p = dataclasses.replace(p, steps={steps}, progress=False, val_every=10**6, checkpoint_every=10**6,
                        cache_audio={cache}, loader_workers={workers}, init_from=None)
torch.set_num_threads(2)
r = train(p, {data!r}, {out!r})
print(json.dumps({{"steps": r.step, "seconds": r.seconds}}))
"""


def write_corpus(folder: Path, hours: float) -> int:
    """``hours`` of speech-like 10 s clips (a harmonic voice with a moving pitch and syllable
    envelope over noise, each clip its own slice, level and noise) and their manifest."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(120 * RATE)) / RATE
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) ** 2
    voice = (voice / np.abs(voice).max() * 0.3).astype(np.float32)
    n_clips, n = round(hours * 3600 / CLIP_S), int(CLIP_S * RATE)
    rows = []
    for i in range(n_clips):
        start = int(rng.integers(0, voice.size - n))
        x = voice[start : start + n] * np.float32(10 ** (rng.uniform(-6, 0) / 20))
        x = x + (rng.standard_normal(n) * 3e-3).astype(np.float32)
        name = f"c{i:05d}.wav"
        sf.write(folder / name, x, RATE, subtype="PCM_16")
        rows.append(
            {"id": f"c{i:05d}", "path": name, "duration_s": CLIP_S, "sample_rate": RATE, "speaker": f"s{i % 97}"}
        )
    with (folder / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return n_clips


def throughput(data: Path, p: TrainParams, workers: int, cache: bool, batches: int) -> float:
    """Segments per second of the batch stream (first batch excluded: worker start-up)."""
    segment = max(round(p.segment_s * RATE) // p.model.hop_length, 1) * p.model.hop_length
    sampler = SegmentSampler(read_clips(data), segment, cache=cache, augment=p.augment)
    stream = BatchStream(sampler, p.batch_size, torch.Generator().manual_seed(0), lambda g: None, workers, 4)
    next(stream)
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    seconds = time.perf_counter() - start
    stream.close()
    return batches * p.batch_size / seconds


def peak_memory(data: Path, out: Path, params: str, steps: int, cache: bool, workers: int) -> tuple[float, dict]:
    """(peak memory in MB: proportional set size summed over the training process and its worker
    processes, so pages the forked workers share with it count once; its result)."""
    code = TRAIN.format(root=str(ROOT), params=params, steps=steps, cache=cache, workers=workers, data=str(data),
                        out=str(out))  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            rss = sum(q.memory_full_info().pss for q in [ps, *ps.children(recursive=True)])
        except psutil.Error:
            rss = 0
        peak = max(peak, rss)
        time.sleep(0.1)
    stdout = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise SystemExit(f"training failed (exit {proc.returncode})")
    return peak / 2**20, json.loads(stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    args = ap.parse_args()
    p = load_section(TrainParams, "train", args.params)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "normalized"
        start = time.perf_counter()
        n = write_corpus(data, args.hours)
        whole_mb = n * CLIP_S * RATE * 4 / 2**20
        print(f"corpus: {n} clips, {args.hours:g} h ({whole_mb:.0f} MB as float32), written in "
              f"{time.perf_counter() - start:.0f} s")  # fmt: skip
        print(f"\nthroughput, batches of {p.batch_size} x {p.segment_s:g} s, augmentation "
              f"{'on' if p.augment.enabled else 'off'} ({args.batches} batches):")  # fmt: skip
        base = throughput(data, p, 0, False, args.batches)
        cached = throughput(data, p, 0, True, args.batches)
        streamed = throughput(data, p, args.workers, False, args.batches)
        print(f"  in process, cache off:  {base:7.1f} segments/s")
        print(f"  in process, cache on:   {cached:7.1f} segments/s (first reads of each clip)")
        print(f"  {args.workers} workers, cache off:  {streamed:7.1f} segments/s = {streamed / base:.2f}x in process")
        print(f"\npeak memory training {args.steps} steps ({p.model.architecture} model of {args.params}):")
        inproc_mb, inproc = peak_memory(data, Path(tmp) / "m0", args.params, args.steps, False, 0)
        off_mb, off = peak_memory(data, Path(tmp) / "m1", args.params, args.steps, False, args.workers)
        on_mb, on = peak_memory(data, Path(tmp) / "m2", args.params, args.steps, True, 0)
        print(f"  cache off, in process: {inproc_mb:6.0f} MB ({inproc['seconds']:.0f} s)")
        print(f"  cache off, {args.workers} workers: {off_mb:6.0f} MB ({off['seconds']:.0f} s)")
        print(f"  cache on, in process: {on_mb:6.0f} MB ({on['seconds']:.0f} s; the cache grows with every clip it "
              f"reads, up to the whole corpus: {whole_mb:.0f} MB)")  # fmt: skip
        print(f"  ratio cache on / cache off after {args.steps} steps: {on_mb / off_mb:.2f}")


if __name__ == "__main__":
    main()
