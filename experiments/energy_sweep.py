"""Choosing the energy side information's block size and level step by measurement.

Runs the trained model (``models/codec.pt``) through the inference path on every evaluation
set of ``params.yaml: evaluate`` (the held-out speakers, the same clips through a telephone
band, a cheap microphone, a room and noise, the unseen synthesizer, and the sets of
``data/eval_sets``: Festival's Telugu voice and yours), at each bitrate, with
the side information off and at each block size x step, and writes per setting the mean and
worst amplitude ratio, the worst per-clip level error, SNR, PESQ and STOI (means over every
clip of the out-of-domain sets) and the side information's share of the bitrate.

    python experiments/energy_sweep.py            # writes experiments/energy_sweep.{csv,md}

About 4 minutes on 2 cores for the default grid.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch

from codec.evaluation import metrics as m
from codec.evaluation.params import HELD_OUT
from codec.evaluation.stage import held_out_clips, load_params
from codec.evaluation.suite import build_sets, load_user_set, user_set_folders
from codec.inference import energy as side
from codec.inference.pipeline import roundtrip
from codec.model.checkpoint import load_codec, read_checkpoint
from codec.model.serving import for_inference

HERE = Path(__file__).resolve().parent


def level_error_db(ref: np.ndarray, est: np.ndarray) -> float:
    a = float(np.mean(np.square(ref, dtype=np.float64)))
    b = float(np.mean(np.square(est, dtype=np.float64)))
    return abs(10 * math.log10(b / a)) if a > 0 and b > 0 else math.inf


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/codec.pt")
    ap.add_argument("--data", default="data/normalized")
    ap.add_argument("--raw", default="data/raw")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--user-sets", default="data/eval_sets", help="folders of evaluation sets (festival_voice, yours)")
    ap.add_argument("--blocks-s", default="0.2,0.5,1.0", help="block sizes, seconds")
    ap.add_argument("--steps-db", default="0.5,1.0,2.0", help="level steps, dB")
    ap.add_argument("--kbps", default=None, help="bitrates (default: every one the model serves)")
    ap.add_argument("--out", default=str(HERE / "energy_sweep"))
    args = ap.parse_args()
    torch.set_num_threads(1)

    params, levels = load_params(args.params)
    model_path = Path(args.model)
    model = for_inference(load_codec(model_path))
    rate = int(model.config.sample_rate)
    frame_rate = rate / model.config.hop_length
    clips, _ = held_out_clips(model_path, read_checkpoint(model_path), args, params, rate)
    users = [load_user_set(n, f, params, rate) for n, f in user_set_folders(Path(args.user_sets)).items()]
    sets = build_sets(clips, params, users)
    rates = [float(k) for k in args.kbps.split(",")] if args.kbps else list(model.config.bitrates_kbps)
    settings: list[tuple[str, side.EnergySettings | bool]] = [("off", False)]
    for block_s in (float(b) for b in args.blocks_s.split(",")):
        for step in (float(s) for s in args.steps_db.split(",")):
            block = max(1, round(block_s * frame_rate))
            bits = max(2, math.ceil(math.log2((side.DEFAULT.floor_db * -1 + 6.0) / step + 2)))
            settings.append(
                (
                    f"{block_s:g}s/{step:g}dB",
                    dataclasses.replace(side.DEFAULT, block_frames=block, step_db=step, bits=bits),
                )
            )

    rows = []
    started = time.time()
    for kbps in rates:
        for name, energy in settings:
            per_set: dict[str, list[dict[str, float]]] = {}
            for set_name, set_clips in sets.items():
                for clip in set_clips:
                    y = roundtrip(
                        model,
                        clip.audio,
                        clip.sample_rate,
                        kbps,
                        levels.target_lufs,
                        peak_ceiling_db=levels.peak_ceiling_db,
                        limiter_window_ms=levels.limiter_window_ms,
                        energy=energy,
                        chunk_frames=500,
                    )
                    per_set.setdefault(set_name, []).append(
                        {
                            "amp": m.amplitude_ratio(clip.audio, y),
                            "err": level_error_db(clip.audio, y),
                            "snr": m.snr_db(clip.audio, y),
                            "pesq": m.pesq_wb(clip.audio, y, clip.sample_rate).value,
                            "stoi": m.stoi(clip.audio, y, clip.sample_rate).value,
                        }
                    )
            ood = [v for s, vals in per_set.items() if s != HELD_OUT for v in vals]
            every = [v for vals in per_set.values() for v in vals]
            side_bps = energy.bits_per_second(frame_rate) if isinstance(energy, side.EnergySettings) else 0.0
            set_amps = {s: float(np.mean([v["amp"] for v in vals])) for s, vals in per_set.items()}
            row = {
                "kbps": kbps,
                "setting": name,
                "side_pct": round(100 * side_bps / (kbps * 1000), 3),
                "amp_ood": round(float(np.mean([v["amp"] for v in ood])), 4),
                "worst_set_amp": round(max(set_amps.values(), key=lambda a: abs(math.log(a))), 4),
                "max_clip_err_db": round(max(v["err"] for v in every), 3),
                "snr_ood": round(float(np.nanmean([v["snr"] for v in ood])), 3),
                "pesq_ood": round(float(np.nanmean([v["pesq"] for v in ood])), 3),
                "stoi_ood": round(float(np.nanmean([v["stoi"] for v in ood])), 4),
            }
            rows.append(row)
            print(row, f"({time.time() - started:.0f} s)", flush=True)

    out = Path(args.out)
    with out.with_suffix(".csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = [
        "# Energy side information: block size and level step, measured",
        "",
        f"`python experiments/energy_sweep.py` on `{model_path}`: every evaluation set "
        f"({', '.join(f'{k} ({len(v)})' for k, v in sets.items())} clips), amplitude and level "
        "error over every clip, SNR/PESQ/STOI means over the out-of-domain sets (all but held_out).",
        "",
        "| kbps | setting | side % | amplitude (OOD) | worst set amplitude | worst clip level error dB | "
        "SNR dB | PESQ | STOI |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['kbps']:g} | {r['setting']} | {r['side_pct']:.2f} | {r['amp_ood']:.3f} | {r['worst_set_amp']:.3f} | "
            f"{r['max_clip_err_db']:.2f} | {r['snr_ood']:.2f} | {r['pesq_ood']:.3f} | {r['stoi_ood']:.3f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.csv')} and {out.with_suffix('.md')} in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
