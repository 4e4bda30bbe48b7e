"""What the training augmentation costs: steps per second of the demo profile with
``train.augment`` off (the anchor) and on, side by side in one process, and the data
path alone (a batch drawn and augmented, no model) for both.

    python benchmarks/augment_cost.py [--steps 150] [--rounds 2] [--params params.yaml]

Trains ``--steps`` steps on ``data/normalized`` into a temporary folder, alternating off
and on for ``--rounds`` rounds (the machines are shared: the ratio means more than either
number), and prints steps/s each way and on / off.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch

from codec.params import load_section
from codec.training.dataset import SegmentSampler, read_clips, split_clips
from codec.training.loop import train
from codec.training.params import TrainParams


def steps_per_s(params: TrainParams, data: Path, steps: int) -> float:
    p = dataclasses.replace(params, steps=steps, val_every=10**9, checkpoint_every=10**9, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train(p, data, tmp)
        return steps / (time.perf_counter() - start)


def batches_per_s(params: TrainParams, data: Path, augment: bool, n: int = 200) -> float:
    clips, _ = split_clips(read_clips(data, params.model.sample_rate), params.val_fraction)
    seg = round(params.segment_s * params.model.sample_rate)
    sampler = SegmentSampler(clips, seg, augment=dataclasses.replace(params.augment, enabled=augment))
    g = torch.Generator().manual_seed(0)
    sampler.sample(params.batch_size, g)  # reads the clips into the cache
    start = time.perf_counter()
    for _ in range(n):
        sampler.sample(params.batch_size, g)
    return n / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", type=Path, default=Path("data/normalized"))
    args = ap.parse_args()
    params = load_section(TrainParams, "train", args.params)
    torch.set_num_threads(params.threads or 2)
    off = dataclasses.replace(params, augment=dataclasses.replace(params.augment, enabled=False))
    on = dataclasses.replace(params, augment=dataclasses.replace(params.augment, enabled=True))
    print(
        f"data path alone: {batches_per_s(params, args.data, False):.0f} batches/s without augmentation, "
        f"{batches_per_s(params, args.data, True):.0f} with (batch {params.batch_size} x {params.segment_s} s)"
    )
    rates: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(args.rounds):
        rates["off"].append(steps_per_s(off, args.data, args.steps))
        rates["on"].append(steps_per_s(on, args.data, args.steps))
    a, b = statistics.median(rates["off"]), statistics.median(rates["on"])
    print(f"training: {a:.2f} steps/s without augmentation (anchor), {b:.2f} with; on / off = {b / a:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
