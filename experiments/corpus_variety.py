"""Does the wider corpus with augmentation make a codec that does better on speech it never
heard, at the same training time? (issue 16, item 3)

Two runs of the CPU demo's training (conf/train/cpu.yaml, the same steps and seed):

- ``before``: the corpus as it was, 24 espeak-ng voices at 120-190 wpm and pitch 30-75
  (``codec.data.corpus.CLASSIC_VOICES``), no augmentation;
- ``after``: the corpus now, 68 voices at 100-220 wpm and pitch 20-90, with the on-the-fly
  augmentation of ``train.augment``.

Both models are then scored by ``codec evaluate`` on the **same** audio: the held-out speakers
of the ``after`` corpus (voices the ``before`` corpus never had or also held out: neither model
heard them), the same clips through a telephone band, a cheap microphone, a room and noise,
espeak-ng's Klatt voices (``unseen_voice``) and Festival's Telugu diphone voice
(``festival_voice``, data/eval_sets/), ours (with the energy side information) beside Opus::

    python experiments/corpus_variety.py          # ~40 min on 2 cores; writes experiments/corpus_variety.{md,csv}
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from codec.data.corpus import CLASSIC_VOICES, CorpusParams, write_corpus  # noqa: E402
from codec.data.ingest import IngestParams, ingest  # noqa: E402
from codec.data.normalize import NormalizeParams, normalize  # noqa: E402
from codec.params import from_dict, read_params  # noqa: E402
from codec.training.loop import train  # noqa: E402
from codec.training.params import TrainParams  # noqa: E402

METRICS = ("pesq", "stoi", "snr_db", "amplitude_ratio", "mel_distance")


def data(work: Path, corpus: CorpusParams, params: dict) -> Path:
    """Corpus -> data/raw -> data/normalized under ``work`` (kept from an earlier run of the same
    ``--work`` folder: the corpus is deterministic); returns the normalized folder."""
    if (work / "normalized" / "manifest.csv").is_file():
        return work / "normalized"
    ing = from_dict(
        IngestParams, {k: v for k, v in params["ingest"].items() if k not in ("source", "corpus")}, "ingest"
    )
    norm = from_dict(NormalizeParams, params["normalize"], "normalize")
    write_corpus(work / "corpus", corpus)
    ingest(work / "corpus", work / "raw", ing)
    normalize(work / "raw", work / "normalized", norm)
    return work / "normalized"


def evaluate(model: Path, wide: Path, out: Path, params_file: Path) -> dict:
    """``codec evaluate`` of ``model`` on the held-out speakers of the wide corpus and every set."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "codec", "evaluate", "--no-mlflow", "--params", str(params_file),
        "--model", str(model), "--data", str(wide / "normalized"), "--raw", str(wide / "raw"),
        "--user-sets", str(ROOT / "data" / "eval_sets"), "--metrics", str(out / "metrics.json"),
        "--table", str(out / "bitrates.csv"), "--plot", str(out / "vs_opus.csv"),
        "--evaluation", str(out / "evaluation.json"), "--report", str(out / "report.md"),
        "--media", str(out / "media"),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "evaluation.json").read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: conf/train/cpu.yaml's)")
    ap.add_argument("--work", type=Path, default=None, help="keep the corpora and models here")
    args = ap.parse_args()
    params = read_params(ROOT / "params.yaml")
    base = from_dict(TrainParams, params["train"], "train")
    if args.steps:
        base = dataclasses.replace(base, steps=args.steps)
    base = dataclasses.replace(base, progress=False)
    corpus = params["ingest"]["corpus"]
    classic = {**corpus, "voices": list(CLASSIC_VOICES), "rate_wpm": [120, 190], "pitch": [30, 75]}
    runs = {
        "before": (
            from_dict(CorpusParams, classic, "corpus"),
            dataclasses.replace(base, augment=dataclasses.replace(base.augment, enabled=False)),
        ),
        "after": (from_dict(CorpusParams, corpus, "corpus"), base),
    }
    work = args.work or Path(tempfile.mkdtemp(prefix="corpus-variety-"))
    rows: list[dict] = []
    seconds: dict[str, float] = {}
    for name, (corpus_params, train_params) in runs.items():
        folder = work / name
        normalized = data(folder, corpus_params, params)
        start = time.monotonic()
        train(train_params, normalized, folder / "models")
        seconds[name] = time.monotonic() - start
        print(f"{name}: trained {train_params.steps} steps in {seconds[name]:.0f} s", flush=True)
    for name in runs:
        record = evaluate(
            work / name / "models" / "codec.pt", work / "after", work / name / "eval", ROOT / "params.yaml"
        )
        for set_name, entry in record["sets"].items():
            m = entry["metrics"]
            for k, by in m["ours"].items():
                row = {"model": name, "set": set_name, "kbps": k.removesuffix("kbps")}
                row.update({f"ours_{x}": by.get(x) for x in METRICS})
                row["opus_pesq"] = (m.get("opus") or {}).get(k, {}).get("pesq")
                row["opus_stoi"] = (m.get("opus") or {}).get(k, {}).get("stoi")
                rows.append(row)
        print(f"{name}: evaluated", flush=True)
    out = ROOT / "experiments" / "corpus_variety"
    with out.with_suffix(".csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = [
        "# Corpus variety and augmentation, before and after (`python experiments/corpus_variety.py`)",
        "",
        f"Training: {base.steps} steps each, {seconds['before']:.0f} s (before) and {seconds['after']:.0f} s (after) "
        f"on this machine. Evaluation: the same clips for both (held-out speakers of the new corpus; neither "
        f"model heard them), ours with the energy side information.",
        "",
        "| set | kbps | PESQ before → after | STOI before → after | SNR dB before → after | Opus PESQ |",
        "| --- | ---: | --- | --- | --- | ---: |",
    ]
    by = {(r["model"], r["set"], r["kbps"]): r for r in rows}
    for (model, set_name, kbps), r in by.items():
        if model != "after":
            continue
        b = by[("before", set_name, kbps)]
        lines.append(
            f"| {set_name} | {kbps} | {b['ours_pesq']:.3f} → {r['ours_pesq']:.3f} | {b['ours_stoi']:.3f} → "
            f"{r['ours_stoi']:.3f} | {b['ours_snr_db']:.2f} → {r['ours_snr_db']:.2f} | {r['opus_pesq']:.3f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"work folder: {work}" if args.work else "", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    sys.exit(main())
