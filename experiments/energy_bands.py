"""Would coding the energy in two bands beat one? (issue 16: "and, if measurement favours it,
per band")

Simulated on the decoded audio, with the format's own quantizer and shaper
(:mod:`codec.inference.energy`): the model's output without side information, then

- ``1 band``: what ``codec encode/decode`` does (the level of every 0.5 s block, 0.5 dB steps);
- ``2 bands @ f``: the same on a low and a high band split at ``f`` Hz (complementary
  raised-cosine masks in the frequency domain, so the bands add up to the signal exactly),
  each band with its own levels and shaper, at twice the side information,

on every out-of-domain evaluation set (telephone, cheap microphone, room, noise, the unseen
synthesizer and the user sets of ``data/eval_sets``) and the held-out speakers, at every bitrate.
Levels are measured on the signals at their recorded level (the product measures them at the
training loudness, before the limiter: the same up to a gain)::

    python experiments/energy_bands.py [--model models/codec.pt --data data/normalized --raw data/raw]
"""

from __future__ import annotations

import argparse
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
ROOT = HERE.parent


def split(x: np.ndarray, rate: int, fc: float, width: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) with low + high == x: a raised-cosine crossover ``width`` octaves wide at ``fc``."""
    spec = np.fft.rfft(x.astype(np.float64))
    f = np.fft.rfftfreq(x.shape[0], 1.0 / rate)
    octaves = np.log2(np.maximum(f, 1e-9) / fc) / width  # -0.5..0.5 across the transition
    low = np.clip(0.5 - 0.5 * np.sin(np.pi * np.clip(octaves, -0.5, 0.5)), 0.0, 1.0)
    lo = np.fft.irfft(spec * low, x.shape[0])
    return lo.astype(np.float32), (x.astype(np.float64) - lo).astype(np.float32)


def shaped(ref: np.ndarray, dec: np.ndarray, hop: int, rate: int, settings: side.EnergySettings) -> np.ndarray:
    codes = side.level_codes(ref, hop, settings)
    out = side.shape(dec, codes, settings, hop, rate)
    return np.asarray(out[: dec.shape[0]], np.float32)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "codec.pt"))
    ap.add_argument("--data", default=str(ROOT / "data" / "normalized"))
    ap.add_argument("--raw", default=str(ROOT / "data" / "raw"))
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--user-sets", default=str(ROOT / "data" / "eval_sets"))
    ap.add_argument("--crossovers", default="1000,2000,4000", help="crossover frequencies, Hz")
    ap.add_argument("--out", default=str(HERE / "energy_bands"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    params, levels = load_params(args.params)
    model_path = Path(args.model)
    model = for_inference(load_codec(model_path))
    rate = int(model.config.sample_rate)
    hop = int(model.config.hop_length)
    clips, _ = held_out_clips(model_path, read_checkpoint(model_path), args, params, rate)
    users = [load_user_set(n, f, params, rate) for n, f in user_set_folders(Path(args.user_sets)).items()]
    sets = build_sets(clips, params, users)
    settings = side.settings_for(rate / hop, 500)
    crossovers = [float(f) for f in args.crossovers.split(",")]
    names = ["off", "1 band", *(f"2 bands @ {f / 1000:g} kHz" for f in crossovers)]
    rows: list[dict[str, float | str]] = []
    started = time.time()
    for kbps in model.config.bitrates_kbps:
        results: dict[str, dict[str, list[float]]] = {n: {} for n in names}
        for set_name, set_clips in sets.items():
            for clip in set_clips:
                x = clip.audio
                dec = roundtrip(
                    model,
                    x,
                    rate,
                    kbps,
                    levels.target_lufs,
                    peak_ceiling_db=levels.peak_ceiling_db,
                    limiter_window_ms=levels.limiter_window_ms,
                    energy=False,
                    chunk_frames=500,
                )
                outs = {"off": dec, "1 band": shaped(x, dec, hop, rate, settings)}
                for fc, name in zip(crossovers, names[2:], strict=True):
                    (xl, xh), (dl, dh) = split(x, rate, fc), split(dec, rate, fc)
                    outs[name] = shaped(xl, dl, hop, rate, settings) + shaped(xh, dh, hop, rate, settings)
                for name, y in outs.items():
                    r = results[name]
                    ood = set_name != HELD_OUT
                    err = abs(
                        10
                        * math.log10(
                            float(np.mean(np.square(y, dtype=np.float64)))
                            / float(np.mean(np.square(x, dtype=np.float64)))
                        )
                    )
                    r.setdefault("err", []).append(err)
                    r.setdefault("amp", []).append(m.amplitude_ratio(x, y))
                    if ood:
                        r.setdefault("snr", []).append(m.snr_db(x, y))
                        r.setdefault("pesq", []).append(m.pesq_wb(x, y, rate).value)
                        r.setdefault("stoi", []).append(m.stoi(x, y, rate).value)
        for name in names:
            r = results[name]
            bands = 0 if name == "off" else (1 if name == "1 band" else 2)
            row: dict[str, float | str] = {
                "kbps": kbps,
                "setting": name,
                "side_pct": round(100 * bands * settings.bits_per_second(rate / hop) / (kbps * 1000), 2),
                "amp_min": round(min(r["amp"]), 4),
                "amp_max": round(max(r["amp"]), 4),
                "worst_clip_err_db": round(max(r["err"]), 3),
                "snr_ood": round(float(np.nanmean(r["snr"])), 3),
                "pesq_ood": round(float(np.nanmean(r["pesq"])), 3),
                "stoi_ood": round(float(np.nanmean(r["stoi"])), 4),
            }
            rows.append(row)
            print(row, f"({time.time() - started:.0f} s)", flush=True)
    lines = [
        "# Energy side information: one band or two (`python experiments/energy_bands.py`)",
        "",
        f"`{model_path}` on {', '.join(f'{k} ({len(v)})' for k, v in sets.items())} clips. Amplitude (per clip, "
        "min and max) and level error over every clip; SNR, PESQ and STOI means over the out-of-domain sets.",
        "",
        "| kbps | setting | side % | amplitude per clip | worst clip level error dB | SNR dB | PESQ | STOI |",
        "| ---: | --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['kbps']:g} | {r['setting']} | {r['side_pct']} | {r['amp_min']}–{r['amp_max']} | "
            f"{r['worst_clip_err_db']} | {r['snr_ood']} | {r['pesq_ood']} | {r['stoi_ood']} |"
        )
    Path(args.out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
