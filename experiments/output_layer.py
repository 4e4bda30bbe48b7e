"""Output layer by measurement: the seed's tanh against a linear output, same recipe.

Trains the ``train`` profile of ``params.yaml`` twice on ``data/normalized`` (same
seed, same batches), once with ``model.output_activation: tanh`` and once ``linear``,
and measures on the held-out clips at the top bitrate:

- amplitude ratio (output RMS / input RMS) over all held-out audio, and over the
  loudest 5 % of 20 ms frames (where a bounded output would squash first);
- peak ratio (largest output sample / largest input sample);
- SNR.

    python experiments/output_layer.py [--steps 600] [--params params.yaml]

Prints one row per output layer. Takes two training runs of the demo profile.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from codec.evaluation.metrics import amplitude_ratio, snr_db
from codec.params import load_section
from codec.training.dataset import read_clips, split_clips
from codec.training.loop import train
from codec.training.params import TrainParams


def held_out_scores(model: torch.nn.Module, params: TrainParams, data: Path) -> dict[str, float]:
    clips = split_clips(read_clips(data), params.val_fraction)[1]
    top = params.model.n_codebooks
    xs, ys = [], []
    with torch.inference_mode():
        for clip in clips:
            x = torch.from_numpy(sf.read(clip.path, dtype="float32")[0])[None, None]
            y = model.decode(model.encode(x, top))[..., : x.shape[-1]]  # type: ignore[operator]
            xs.append(x.flatten().numpy())
            ys.append(y.flatten().numpy())
    x, y = np.concatenate(xs), np.concatenate(ys)
    frame = 320
    n = len(x) // frame * frame
    fx = np.sqrt(np.mean(x[:n].reshape(-1, frame) ** 2, axis=1))
    fy = np.sqrt(np.mean(y[:n].reshape(-1, frame) ** 2, axis=1))
    loud = fx >= np.quantile(fx, 0.95)
    return {
        "clips": float(len(clips)),
        "amplitude_ratio": amplitude_ratio(x, y),
        "loud_frames_ratio": amplitude_ratio(fx[loud], fy[loud]),  # RMS over the loud frames' RMS values
        "peak_ratio": float(np.max(np.abs(y)) / np.max(np.abs(x))),
        "snr_db": snr_db(x, y),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", type=Path, default=Path("data/normalized"))
    ap.add_argument("--steps", type=int, default=0, help="training steps (0: the profile's)")
    args = ap.parse_args()
    base = load_section(TrainParams, "train", args.params)
    if args.steps:
        base = dataclasses.replace(base, steps=args.steps)
    rows = {}
    for activation in ("tanh", "linear"):
        model_cfg = dataclasses.replace(base.model, output_activation=activation)
        params = dataclasses.replace(base, model=model_cfg, progress=False, resume=False)
        with tempfile.TemporaryDirectory(prefix=f"output-{activation}-") as out:
            result = train(params, args.data, out)
            rows[activation] = held_out_scores(result.model.eval(), params, args.data)
    print(f"{base.steps} steps of the {args.params} train profile; held-out clips at the top bitrate")
    print(f"{'output':<8} {'amplitude':>10} {'loud 5%':>8} {'peak':>6} {'SNR dB':>7}")
    for name, r in rows.items():
        print(
            f"{name:<8} {r['amplitude_ratio']:10.3f} {r['loud_frames_ratio']:8.3f} {r['peak_ratio']:6.3f} "
            f"{r['snr_db']:7.2f}"
        )


if __name__ == "__main__":
    main()
