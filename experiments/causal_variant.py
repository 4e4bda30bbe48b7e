"""What a causal model for live coding costs (issue 27): the reference model fine-tuned for the same
CPU minutes as it is (non-causal: 16 frames of look-ahead give its live latency of 740 ms) and
as the causal variant (``train.model.frame_causal``: no layer reads a later frame; its decoder
reads at most one frame of codes ahead through the inverse STFT's window), both from the
reference's weights (same shapes; the causal one starts misaligned and must re-learn), scored by
``codec evaluate`` on every evaluation set (held-out speakers, the conditions, the unseen
voices) beside Opus.

    python experiments/causal_variant.py --minutes 8     # writes experiments/causal_variant.md

Work folders: ``work/causal/{noncausal,causal}`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import sys
import typing as tp
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from codec.model.checkpoint import read_checkpoint, save_checkpoint  # noqa: E402
from codec.model.codec import Codec  # noqa: E402
from codec.model.config import REFERENCE_CHECKPOINT, CodecConfig  # noqa: E402
from codec.params import from_dict  # noqa: E402
from codec.training.loop import CHECKPOINT, train  # noqa: E402
from codec.training.params import TrainParams  # noqa: E402
from experiments.corpus_variety import evaluate  # noqa: E402
from experiments.cpu_curves import compose  # noqa: E402

WORK = ROOT / "work" / "causal"
OUT = ROOT / "experiments" / "causal_variant.md"


def causal_start() -> Path:
    """The reference's weights in a causal model's checkpoint (train.init_from wants the same config)."""
    ckpt = read_checkpoint(REFERENCE_CHECKPOINT)
    config = CodecConfig.from_dict({**ckpt["model_config"], "frame_causal": True})
    model = Codec(config)
    model.load_state_dict({k: v.float() for k, v in ckpt["model"].items()})
    path = WORK / "causal-start.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, model, {"level": ckpt.get("level", {}), "target_lufs": ckpt.get("target_lufs", -16.0)})
    return path


def run(name: str, minutes: float, overrides: dict[str, tp.Any]) -> tuple[dict[str, tp.Any], int]:
    params = compose("cpu", overrides)
    work = WORK / name
    work.mkdir(parents=True, exist_ok=True)
    params_file = work / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    p = from_dict(TrainParams, params["train"], "train")
    p.steps, p.time_limit_s, p.progress = 10**7, minutes * 60.0, False
    result = train(p, ROOT / "data" / "normalized", work / "models")
    print(f"{name}: {result.step} steps in {result.seconds / 60:.1f} min; evaluating", flush=True)
    return evaluate(work / "models" / CHECKPOINT, ROOT / "data", work / "eval", params_file), result.step


def table(records: dict[str, tuple[dict[str, tp.Any], int]], minutes: float) -> str:
    names = list(records)
    sets = list(next(iter(records.values()))[0]["sets"])
    lines = [
        f"# The causal variant against the non-causal model, {minutes:g} CPU minutes of fine-tuning each",
        "",
        "Command: `python experiments/causal_variant.py --minutes "
        f"{minutes:g}` (2 cores; both from the reference's weights at the demo profile's lr 1e-4).",
        "",
        "Steps: " + ", ".join(f"{n} {records[n][1]}" for n in names) + ".",
        "",
        "| set | " + " | ".join(f"{n} PESQ / STOI" for n in names) + " | Opus PESQ / STOI |",
        "| --- | " + " | ".join("---" for _ in names) + " | --- |",
    ]
    for s in sets:
        cells = []
        for n in names:
            m = records[n][0]["sets"][s]["metrics"]["ours"]["6kbps"]
            cells.append(f"{m['pesq']:.2f} / {m['stoi']:.3f}")
        opus = records[names[0]][0]["sets"][s]["metrics"].get("opus", {}).get("6kbps", {})
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {opus.get('pesq', float('nan')):.2f} / "
                     f"{opus.get('stoi', float('nan')):.3f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=8.0)
    args = ap.parse_args()
    start = causal_start()
    records = {
        "non-causal": run("noncausal", args.minutes, {}),
        "causal": run("causal", args.minutes, {"model": {"frame_causal": True}, "init_from": str(start)}),
    }
    OUT.write_text(table(records, args.minutes))
    (WORK / "records.json").write_text(json.dumps({k: v[1] for k, v in records.items()}))
    print(OUT.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
