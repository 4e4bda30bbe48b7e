"""The reference model shipped in the package (codec/model/reference/, docs/reference_model.md).

``export`` turns a training checkpoint (the frame-mel run of experiments/cpu_curves.py) into the
shipped weights-only file (float16 tensors, config, resolved training params, provenance), then
codes a committed clip with it through ``codec encode``/``codec decode``, so that a test can check
the shipped model still decodes that stream to that audio::

    python experiments/cpu_curves.py --run frame-mel --minutes 5 20 60 ...   # the training
    python experiments/reference_model.py export work/curves/frame-mel/models/checkpoints/last.pt
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import typing as tp
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from codec.model.checkpoint import REFERENCE_CHECKPOINT, load_codec, read_checkpoint, save_weights_only  # noqa: E402

FOLDER = REFERENCE_CHECKPOINT.parent
CLIP = ROOT / "data" / "eval_sets" / "festival_voice"
STREAM, DECODED = FOLDER / "sample.tscb", FOLDER / "sample_decoded.wav"


def export(source: Path, run_dir: Path | None) -> None:
    ckpt = read_checkpoint(source)
    model = load_codec(source)
    trained = {}
    if run_dir is not None and (run_dir / "trained.json").is_file():
        trained = json.loads((run_dir / "trained.json").read_text())
    params = ckpt.get("params", {})
    extra = {
        "params": params,
        "step": int(ckpt.get("step", 0)),
        "target_lufs": -16.0,
        "training_seconds": float(trained.get("seconds", 0.0)),
        "note": "reference model: experiments/cpu_curves.py --run frame-complex-diphone-envelope2, "
        "docs/reference_model.md",
    }
    FOLDER.mkdir(parents=True, exist_ok=True)
    save_weights_only(REFERENCE_CHECKPOINT, model, extra)
    size = REFERENCE_CHECKPOINT.stat().st_size / 2**20
    print(f"{REFERENCE_CHECKPOINT}: {size:.1f} MiB, step {extra['step']}, {extra['training_seconds'] / 60:.1f} min")
    sample()


def sample() -> None:
    """A committed clip coded at 6 kbps by the shipped model: the stream and its decoded audio."""
    clip = sorted(CLIP.glob("*.flac"))[0]
    model = str(REFERENCE_CHECKPOINT)
    run = [sys.executable, "-m", "codec"]
    STREAM.unlink(missing_ok=True)
    DECODED.unlink(missing_ok=True)
    subprocess.run([*run, "encode", str(clip), str(STREAM), "--model", model, "--kbps", "6"], check=True)
    subprocess.run([*run, "decode", str(STREAM), str(DECODED), "--model", model], check=True)
    print(f"{STREAM.name} ({STREAM.stat().st_size} bytes) from {clip.relative_to(ROOT)} -> {DECODED.name}")


def macs_per_second(model: tp.Any, seconds: float = 4.0) -> float:
    """Multiply-accumulates of the convolutions and linear layers per second of audio, in billions
    (encode and decode at the top bitrate), counted as benchmarks/codec_speed.py counts them."""
    import numpy as np
    import torch

    from benchmarks.codec_speed import conv_gmacs

    def run(audio: np.ndarray) -> None:
        with torch.inference_mode():
            model.decode(model.encode(torch.from_numpy(audio).view(1, 1, -1)))

    audio = (np.random.default_rng(0).standard_normal(int(seconds * model.config.sample_rate)) * 0.1).astype("float32")
    return conv_gmacs(run, [model], audio) / seconds


def card_tables(evaluation: Path) -> str:
    """Every set's PESQ, STOI, SNR and delivered amplitude against Opus at each bitrate (Markdown)."""
    record = json.loads(evaluation.read_text())
    lines = []
    for name, entry in record["sets"].items():
        m = entry["metrics"]
        lines += [f"**{name}** ({len(entry.get('clip_ids', []))} clips)", ""]
        lines += ["| kbps | PESQ ours / Opus | STOI ours / Opus | SNR dB ours / Opus | amplitude |"]
        lines += ["| ---: | --- | --- | --- | ---: |"]
        for k, ours in m["ours"].items():
            opus = (m.get("opus") or {}).get(k, {})
            lines.append(
                f"| {k.removesuffix('kbps')} | {ours['pesq']:.2f} / {opus.get('pesq', float('nan')):.2f} | "
                f"{ours['stoi']:.3f} / {opus.get('stoi', float('nan')):.3f} | "
                f"{ours['snr_db']:.2f} / {opus.get('snr_db', float('nan')):.2f} | {ours['amplitude_ratio']:.3f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="write the shipped checkpoint from a training checkpoint")
    ex.add_argument("checkpoint", type=Path)
    ex.add_argument("--run-dir", type=Path, default=None, help="the run's folder (its trained.json: minutes)")
    sub.add_parser("sample", help="re-code the committed sample with the shipped model")
    card = sub.add_parser("facts", help="print the shipped model's size, MACs and an evaluation's tables")
    card.add_argument("evaluation", type=Path, help="evaluation.json of the shipped model")
    args = ap.parse_args()
    if args.cmd == "export":
        export(args.checkpoint, args.run_dir or args.checkpoint.parents[2])
    elif args.cmd == "facts":
        model = load_codec(REFERENCE_CHECKPOINT)
        ckpt = read_checkpoint(REFERENCE_CHECKPOINT)
        n = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{n:.2f} M parameters, {macs_per_second(model):.3f} GMAC per audio second, step {ckpt['step']}, "
              f"{ckpt.get('training_seconds', 0) / 3600:.2f} CPU-hours (2 cores), "
              f"{REFERENCE_CHECKPOINT.stat().st_size / 2**20:.1f} MiB")  # fmt: skip
        print(card_tables(args.evaluation))
    else:
        sample()
    return 0


if __name__ == "__main__":
    sys.exit(main())
