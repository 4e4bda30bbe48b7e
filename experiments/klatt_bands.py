"""Where a model loses STOI, per one-third-octave band (issue 24: the Klatt voices' STOI gap).

STOI (Taal et al. 2011) is the mean over 15 one-third-octave bands (150 Hz to 4.3 kHz) and
384 ms segments of the correlation between the clean and the coded band envelopes, silent
frames of the clean signal left out. This script splits that mean by band, and beside it the
band's energy of the coded signal against the clean one (dB), for:

- ``ours``: the model through ``codec encode/decode``'s path at ``--kbps`` (energy side
  information on), as ``codec evaluate`` scores it
- ``unquantized``: the model's encoder and decoder without the quantizer (what the codes can
  at best carry to the decoder; low here, the autoencoder itself loses the band)
- ``opus``: Opus at the same bitrate (CBR, 20 ms frames, as the evaluation runs it)

on the unseen-voice set (espeak-ng's Klatt voices, rendered as ``codec evaluate`` does) and the
committed festival_voice clips. ::

    git show 09b650c:codec/model/reference/codec.pt > work/reference-185min.pt
    python experiments/klatt_bands.py --model 185min=work/reference-185min.pt \
        --model 229min=codec/model/reference/codec.pt --out experiments/klatt_bands.md
"""

from __future__ import annotations

import argparse
import sys
import typing as tp
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from codec.evaluation.evaluate import code, without_dc  # noqa: E402
from codec.evaluation.opus import opus_roundtrip  # noqa: E402
from codec.evaluation.unseen import render_unseen  # noqa: E402
from codec.inference.model_source import load_model  # noqa: E402

FESTIVAL = ROOT / "data" / "eval_sets" / "festival_voice"


def band_scores(clean: np.ndarray, coded: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Per band: mean envelope correlation (pystoi's STOI before the mean over bands) and
    energy of ``coded`` over ``clean`` in dB (over the frames STOI keeps)."""
    from pystoi import utils
    from pystoi.stoi import BETA, DYN_RANGE, FS, N_FRAME, NFFT, OBM, N

    x = utils.resample_oct(clean, FS, rate)
    y = utils.resample_oct(coded, FS, rate)
    x, y = utils.remove_silent_frames(x, y, DYN_RANGE, N_FRAME, N_FRAME // 2)
    x_tob = np.sqrt(OBM @ np.abs(utils.stft(x, N_FRAME, NFFT, overlap=2).T) ** 2)
    y_tob = np.sqrt(OBM @ np.abs(utils.stft(y, N_FRAME, NFFT, overlap=2).T) ** 2)
    xs = np.stack([x_tob[:, m - N : m] for m in range(N, x_tob.shape[1] + 1)])
    ys = np.stack([y_tob[:, m - N : m] for m in range(N, x_tob.shape[1] + 1)])
    ys = ys * np.linalg.norm(xs, axis=2, keepdims=True) / (np.linalg.norm(ys, axis=2, keepdims=True) + utils.EPS)
    ys = np.minimum(ys, xs * (1 + 10 ** (-BETA / 20)))
    ys = ys - ys.mean(axis=2, keepdims=True)
    xs = xs - xs.mean(axis=2, keepdims=True)
    ys /= np.linalg.norm(ys, axis=2, keepdims=True) + utils.EPS
    xs /= np.linalg.norm(xs, axis=2, keepdims=True) + utils.EPS
    corr = (ys * xs).sum(axis=2).mean(axis=0)
    energy_db = 10 * np.log10((y_tob**2).mean(axis=1) / (x_tob**2).mean(axis=1))
    return corr, energy_db


def unquantized(model: tp.Any, audio: np.ndarray, level: float) -> np.ndarray:
    """``audio`` through the encoder and decoder without the quantizer, played in at RMS ``level``
    (linear) and scaled back."""
    gain = level / max(float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))), 1e-9)
    with torch.no_grad():
        y = model(torch.from_numpy((audio * gain).astype(np.float32))[None, None], quantize=False).audio
    return y[0, 0].numpy() / gain


def sets(rate: int, seconds: float, unseen_clips: int, seed: int) -> dict[str, list[tuple[str, np.ndarray]]]:
    out = {"unseen_voice": [(c.id, c.audio) for c in render_unseen(unseen_clips, seconds, rate, seed)]}
    festival = []
    for path in sorted(FESTIVAL.glob("*.flac")):
        audio, sr = sf.read(path, dtype="float32")
        if sr != rate:
            raise SystemExit(f"{path}: {sr} Hz, the model codes {rate} Hz")
        festival.append((path.stem, audio[: round(seconds * rate)]))
    out["festival_voice"] = festival
    return out


def measure(model_spec: str, kbps: float, seconds: float, unseen_clips: int, seed: int) -> dict[str, tp.Any]:
    """Per set: ``ours``, ``unquantized`` and ``opus`` rows (band correlations, band energies, STOI)."""
    from pystoi.stoi import CF

    loaded = load_model(model_spec)
    model, levels = loaded.model, loaded.levels
    rate = int(model.config.sample_rate)
    results: dict[str, tp.Any] = {"bands_hz": [float(f) for f in CF], "sets": {}}
    for name, clips in sets(rate, seconds, unseen_clips, seed).items():
        per: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"ours": [], "unquantized": [], "opus": []}
        for _, audio in clips:
            clean = without_dc(audio)
            coded = {
                "ours": code(model, audio, rate, kbps, levels).audio,
                "unquantized": unquantized(model, clean, 10 ** (levels.target_lufs / 20)),  # ~ the training level
                "opus": opus_roundtrip(audio, rate, round(kbps * 1000), vbr=False, frame_ms=20).audio,
            }
            for key, y in coded.items():
                per[key].append(band_scores(clean, y[: clean.size], rate))
        results["sets"][name] = {
            key: {
                "stoi": float(np.mean([c.mean() for c, _ in v])),
                "corr": np.mean([c for c, _ in v], axis=0).tolist(),
                "energy_db": np.mean([e for _, e in v], axis=0).tolist(),
            }
            for key, v in per.items()
        }
    return results


def markdown(results: tp.Mapping[str, dict[str, tp.Any]], kbps: float) -> str:
    """The tables for every model in ``results`` (label -> :func:`measure`'s result); Opus once."""
    first = next(iter(results.values()))
    bands = first["bands_hz"]
    head = "| | " + " | ".join(f"{b:.0f}" for b in bands) + " | STOI |"
    rule = "| --- | " + " | ".join("---:" for _ in bands) + " | ---: |"
    models = ", ".join(f"`{label}`" for label in results)
    lines = [
        "# STOI per one-third-octave band (`python experiments/klatt_bands.py`)",
        "",
        f"Models: {models}, at {kbps:g} kbps. Band columns: centre frequency in Hz. Envelope correlation "
        "is STOI before its mean over bands (the last column is that mean); energy is the coded band's "
        "over the clean one, in dB, over the frames STOI keeps. `unquantized`: the encoder and decoder "
        "without the quantizer. Opus: CBR, 20 ms frames.",
        "",
    ]
    for name in first["sets"]:
        rows = [
            (f"{label} {key}", v) for label, r in results.items() for key, v in r["sets"][name].items() if key != "opus"
        ]
        rows.append(("opus", first["sets"][name]["opus"]))
        lines += [f"## {name}: envelope correlation", "", head, rule]
        lines += [f"| {k} | " + " | ".join(f"{c:.3f}" for c in v["corr"]) + f" | {v['stoi']:.3f} |" for k, v in rows]
        lines += ["", f"## {name}: band energy, coded over clean (dB)", "", head.replace(" STOI |", ""), rule[:-7]]
        lines += [f"| {k} | " + " | ".join(f"{e:+.1f}" for e in v["energy_db"]) + " |" for k, v in rows]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="a model to measure (repeatable; default: the shipped reference, labelled reference)",
    )
    ap.add_argument("--kbps", type=float, default=6.0)
    ap.add_argument("--seconds", type=float, default=4.0, help="clip length (params.yaml evaluate.seconds)")
    ap.add_argument("--unseen-clips", type=int, default=4, help="params.yaml evaluate.unseen_clips")
    ap.add_argument("--seed", type=int, default=0, help="params.yaml evaluate.conditions.seed")
    ap.add_argument("--out", type=Path, default=None, help="markdown file (default: print)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    specs = args.model or [f"reference={ROOT / 'codec' / 'model' / 'reference' / 'codec.pt'}"]
    results = {}
    for spec in specs:
        label, _, path = spec.partition("=")
        if not path:
            label, path = Path(spec).stem, spec
        results[label] = measure(path, args.kbps, args.seconds, args.unseen_clips, args.seed)
    text = markdown(results, args.kbps)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
