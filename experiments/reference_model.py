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
        "note": "reference model: experiments/cpu_curves.py --run frame-mel, docs/reference_model.md",
    }
    FOLDER.mkdir(parents=True, exist_ok=True)
    save_weights_only(REFERENCE_CHECKPOINT, model, extra)
    size = REFERENCE_CHECKPOINT.stat().st_size / 2**20
    print(f"{REFERENCE_CHECKPOINT}: {size:.1f} MiB, step {extra['step']}, {extra['training_seconds'] / 60:.1f} min")
    sample()


def sample() -> None:
    """A committed clip coded at 6 kbps by the shipped model: the stream and its decoded audio."""
    clip = sorted(CLIP.glob("*.wav"))[0]
    model = str(REFERENCE_CHECKPOINT)
    run = [sys.executable, "-m", "codec"]
    STREAM.unlink(missing_ok=True)
    DECODED.unlink(missing_ok=True)
    subprocess.run([*run, "encode", str(clip), str(STREAM), "--model", model, "--kbps", "6"], check=True)
    subprocess.run([*run, "decode", str(STREAM), str(DECODED), "--model", model], check=True)
    print(f"{STREAM.name} ({STREAM.stat().st_size} bytes) from {clip.relative_to(ROOT)} -> {DECODED.name}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="write the shipped checkpoint from a training checkpoint")
    ex.add_argument("checkpoint", type=Path)
    ex.add_argument("--run-dir", type=Path, default=None, help="the run's folder (its trained.json: minutes)")
    sub.add_parser("sample", help="re-code the committed sample with the shipped model")
    args = ap.parse_args()
    if args.cmd == "export":
        export(args.checkpoint, args.run_dir or args.checkpoint.parents[2])
    else:
        sample()
    return 0


if __name__ == "__main__":
    sys.exit(main())
