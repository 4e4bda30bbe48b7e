"""Quality against CPU training time (issue 24, item 1): each candidate trains on this machine's
2 cores in time-limited pieces (``train.time_limit_s``, resumed from its checkpoint), and after
each piece ``codec evaluate`` scores the checkpoint on every evaluation set at every served
bitrate, through the user's inference path (energy side information on), beside Opus at the same
bitrate. Training time is the training loop's own wall time (validation included, evaluation not).

Candidates (``--run NAME``, repeatable), each a train profile of conf/train/ plus overrides:

- ``waveform``: the CPU demo as it was (conv stacks at 16 kHz, 0.17 M params); its point is the
  demo model of 7c3f288 (``--baseline``: 2000 steps in 226 s, its committed evaluation, whose
  per-set rows are computed as here)
- ``frame``: the frame-rate model (conf/train/frame.yaml) with the demo's loss weights
- ``frame-mel``: the frame-rate model with the mel loss weighted 10x and the waveform loss 0.1x
- ``frame-complex`` / ``frame-complex-mel``: the same with the complex head (``frame_head``)
- ``frame-v0`` / ``frame-v0-mel``: the first revision (polar head, a LayerNorm before the
  quantizer and before the head), 5 minutes each; kept as measured, not re-runnable

::

    python experiments/cpu_curves.py --run frame-mel --minutes 5 20 60   # budgets are cumulative
    python experiments/cpu_curves.py --report                             # tables and plot only

Runs live in ``--work`` (default ``work/curves/NAME``, git-ignored) and continue where they
stopped; results go to experiments/cpu_curves.{csv,md,png}.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
import typing as tp
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from codec.params import from_dict  # noqa: E402
from codec.training.loop import CHECKPOINT, train  # noqa: E402
from codec.training.params import TrainParams  # noqa: E402
from experiments.corpus_variety import evaluate  # noqa: E402  (codec evaluate of a checkpoint, no MLflow)

OUT = ROOT / "experiments" / "cpu_curves"
FIELDS = (
    "run",
    "minutes",
    "steps",
    "set",
    "kbps",
    "pesq",
    "stoi",
    "snr_db",
    "amplitude_ratio",
    "opus_pesq",
    "opus_stoi",
)

MEL_HEAVY = {"loss/nmse": 0.1, "loss/mel": 1.0}


def warm_start(
    init_from: str, lr: float, lr_gamma: float, loss_weights: dict[str, float] | None = None
) -> tuple[str, dict[str, tp.Any]]:
    """A frame-rate run (complex head) from the weights of ``init_from`` with a fresh AdamW at
    ``lr`` decaying ``lr_gamma`` a step, ``loss_weights`` merged over the profile's."""
    overrides: dict[str, tp.Any] = {"model": {"frame_head": "complex"}, "lr": lr, "lr_gamma": lr_gamma}
    if loss_weights:
        overrides["loss_weights"] = loss_weights
    return "frame", {**overrides, "init_from": init_from}


# name -> (train profile, overrides of the composed train section)
RUNS: dict[str, tuple[str, dict[str, tp.Any]]] = {
    "waveform": ("cpu", {}),
    "frame": ("frame", {"model": {"frame_head": "polar"}}),
    "frame-mel": ("frame", {"model": {"frame_head": "polar"}, "loss_weights": MEL_HEAVY}),
    "frame-complex": ("frame", {"model": {"frame_head": "complex"}}),
    "frame-complex-mel": ("frame", {"model": {"frame_head": "complex"}, "loss_weights": MEL_HEAVY}),
    # frame-complex continued from its 60-minute checkpoint on the corpus with the diphone voices
    # (ingest.corpus.diphone_utterances; --data names that corpus' normalized folder)
    "frame-complex-diphone": ("frame", {"model": {"frame_head": "complex"}}),
    # ... then annealed: the weights of its 105-minute checkpoint with a fresh AdamW at 5e-4,
    # decaying 0.99945 a step (to ~6e-5 after 4000 steps, about 20 minutes here); its folder's
    # trained.json starts at 105 minutes (steps count from 0 again)
    "frame-complex-diphone-anneal": warm_start(
        "work/dip/frame-complex-diphone/models/checkpoints/last-105min.pt", 5e-4, 0.99945
    ),
    # ... then a warm restart: the annealed weights at 125 minutes with a fresh AdamW at 3e-4,
    # decaying 0.999774 a step (to ~2e-5 after 12,000 steps, about 60 minutes here); its folder's
    # trained.json starts at 125 minutes (steps count from 0 again)
    "frame-complex-diphone-restart": warm_start(
        "experiments/curves/frame-complex-diphone-anneal/models/checkpoints/last.pt", 3e-4, 0.999774
    ),
    # ... then fine-tuned with the mel loss weighted 10x (1.0): the restart's weights at 185 minutes,
    # a fresh AdamW at 1e-4 decaying 0.999424 a step (to 1e-5 after 4000 steps, about 20 minutes);
    # its folder's trained.json starts at 185 minutes. Why: the restart loses 4-11 dB at 1.8-3.5 kHz
    # even unquantized (experiments/klatt_bands.md), where the waveform loss barely looks.
    "frame-complex-diphone-mel": warm_start(
        "experiments/curves/frame-complex-diphone-restart/models/checkpoints/last.pt", 1e-4, 0.999424, {"loss/mel": 1.0}
    ),
    # ... then the band-envelope loss (loss/envelope, codec.training.losses.BandEnvelopeLoss) added at
    # 1.0: the mel run's weights at 197 minutes (step 2300), a fresh AdamW at 1e-4 decaying 0.999424;
    # its folder's trained.json starts at 197 minutes
    "frame-complex-diphone-envelope": warm_start(
        "work/curves/frame-complex-diphone-mel/models/checkpoints/last-197min.pt",
        1e-4,
        0.999424,
        {"loss/mel": 1.0, "loss/envelope": 1.0},
    ),
    # ... then the envelope loss doubled (2.0): its weights at 213 minutes (step 2933), a fresh
    # AdamW at 1e-4 decaying 0.999424; its folder's trained.json starts at 213 minutes
    "frame-complex-diphone-envelope2": warm_start(
        "work/curves/frame-complex-diphone-envelope/models/checkpoints/last-213min.pt",
        1e-4,
        0.999424,
        {"loss/mel": 1.0, "loss/envelope": 2.0},
    ),
}


def compose(profile: str, overrides: dict[str, tp.Any]) -> dict[str, tp.Any]:
    """params.yaml as DVC composes it with ``train=<profile>``, then ``overrides`` merged into train."""
    from dvc.utils.hydra import compose_and_dump

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "params.yaml"
        compose_and_dump(str(out), str(ROOT / "conf"), None, "config", "", [f"train={profile}"])
        params = yaml.safe_load(out.read_text())
    for key, value in overrides.items():
        if isinstance(value, dict):
            params["train"][key] = {**params["train"][key], **value}
        else:
            params["train"][key] = value
    # Curves: the evaluation at the training loudness only (the level sweep is flat by construction).
    params["evaluate"]["levels_dbfs"] = [-16.0]
    return params


def rows_of(run: str, minutes: float, steps: int, record: dict[str, tp.Any]) -> list[dict[str, tp.Any]]:
    rows = []
    for set_name, entry in record["sets"].items():
        m = entry["metrics"]
        for k, ours in m["ours"].items():
            opus = (m.get("opus") or {}).get(k, {})
            rows.append(
                {
                    "run": run, "minutes": round(minutes, 2), "steps": steps, "set": set_name,
                    "kbps": k.removesuffix("kbps"), "pesq": ours.get("pesq"), "stoi": ours.get("stoi"),
                    "snr_db": ours.get("snr_db"), "amplitude_ratio": ours.get("amplitude_ratio"),
                    "opus_pesq": opus.get("pesq"), "opus_stoi": opus.get("stoi"),
                }
            )  # fmt: skip
    return rows


def read_rows() -> list[dict[str, tp.Any]]:
    path = OUT.with_suffix(".csv")
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_rows(rows: list[dict[str, tp.Any]]) -> None:
    with OUT.with_suffix(".csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(FIELDS))
        w.writeheader()
        w.writerows(rows)


def run_curve(name: str, budgets_min: list[float], work: Path, data: Path = ROOT / "data") -> None:
    profile, overrides = RUNS[name]
    params = compose(profile, overrides)
    work.mkdir(parents=True, exist_ok=True)
    params_file = work / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    state_file = work / "trained.json"
    trained = json.loads(state_file.read_text()) if state_file.is_file() else {"seconds": 0.0, "steps": 0}
    for budget in budgets_min:
        remaining = budget * 60.0 - trained["seconds"]
        if remaining <= 1.0:
            continue
        tp_ = from_dict(TrainParams, params["train"], "train")
        tp_.steps, tp_.time_limit_s, tp_.progress = 10**7, remaining, False
        tp_.resume = (work / "models" / CHECKPOINT).is_file()
        result = train(tp_, data / "normalized", work / "models")
        trained = {"seconds": trained["seconds"] + result.seconds, "steps": result.step}
        state_file.write_text(json.dumps(trained))
        minutes = trained["seconds"] / 60.0
        print(f"{name}: {result.step} steps in {minutes:.1f} min of training; evaluating", flush=True)
        start = time.monotonic()
        record = evaluate(work / "models" / CHECKPOINT, data, work / f"eval-{round(minutes)}min", params_file)
        rows = [r for r in read_rows() if not (r["run"] == name and float(r["minutes"]) == round(minutes, 2))]
        write_rows(rows + rows_of(name, minutes, result.step, record))
        print(f"{name}: evaluated in {time.monotonic() - start:.0f} s", flush=True)
        report()


def baseline(commit: str = "7c3f288") -> None:
    """The waveform demo's point: main's committed evaluation of its 2000-step model."""
    show = ["git", "-C", str(ROOT), "show"]
    record = json.loads(subprocess.run([*show, f"{commit}:reports/evaluate/evaluation.json"], capture_output=True,
                                       check=True, text=True).stdout)  # fmt: skip
    trained = json.loads(subprocess.run([*show, f"{commit}:reports/train/metrics.json"], capture_output=True,
                                        check=True, text=True).stdout)  # fmt: skip
    minutes = trained["seconds"] / 60.0
    rows = [r for r in read_rows() if r["run"] != "waveform"]
    write_rows(rows + rows_of("waveform", minutes, int(trained["step"]), record))


def _f(x: tp.Any) -> float:
    return float(x) if x not in (None, "") else float("nan")


def report() -> None:
    rows = read_rows()
    if not rows:
        return
    runs = sorted({(r["run"], float(r["minutes"]), int(r["steps"])) for r in rows}, key=lambda t: (t[0], t[1]))
    sets = list(dict.fromkeys(r["set"] for r in rows))
    kbps_list = sorted({r["kbps"] for r in rows}, key=float)
    by = {(r["run"], float(r["minutes"]), r["set"], r["kbps"]): r for r in rows}
    lines = [
        "# Quality against CPU training time (`python experiments/cpu_curves.py`)",
        "",
        "2-core CPU, fp32; training time is the training loop's wall time. Each cell: ours / Opus at "
        "the same bitrate, through `codec encode/decode`'s path (energy side information on), on the "
        "clips at the training loudness (-16 LUFS).",
        "",
    ]
    for kbps in kbps_list:
        lines += [
            f"## PESQ (wide-band) at {kbps} kbps",
            "",
            "| run | min | steps | " + " | ".join(sets) + " | worst |",
            "| --- | ---: | ---: | " + " | ".join("---:" for _ in sets) + " | ---: |",
        ]
        for run, minutes, steps in runs:
            cells, worst = [], float("inf")
            for s in sets:
                r = by.get((run, minutes, s, kbps))
                if r is None:
                    cells.append("")
                    continue
                worst = min(worst, _f(r["pesq"]))
                cells.append(f"{_f(r['pesq']):.2f} / {_f(r['opus_pesq']):.2f}")
            lines.append(f"| {run} | {minutes:.0f} | {steps} | " + " | ".join(cells) + f" | {worst:.2f} |")
        lines.append("")
    lines += ["## STOI at 6 kbps (ours / Opus)", "", "| run | min | " + " | ".join(sets) + " |"]
    lines.append("| --- | ---: | " + " | ".join("---:" for _ in sets) + " |")
    for run, minutes, _ in runs:
        cells = []
        for s in sets:
            r = by.get((run, minutes, s, "6"))
            cells.append("" if r is None else f"{_f(r['stoi']):.3f} / {_f(r['opus_stoi']):.3f}")
        lines.append(f"| {run} | {minutes:.0f} | " + " | ".join(cells) + " |")
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot(rows, sets)


def plot(rows: list[dict[str, tp.Any]], sets: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kbps_list = sorted({r["kbps"] for r in rows}, key=float)
    fig, axes = plt.subplots(1, len(kbps_list), figsize=(5 * len(kbps_list), 4), sharey=True, squeeze=False)
    for ax, kbps in zip(axes[0], kbps_list, strict=True):
        for run in sorted({r["run"] for r in rows}):
            pts: dict[float, list[float]] = {}
            for r in rows:
                if r["run"] == run and r["kbps"] == kbps:
                    pts.setdefault(float(r["minutes"]), []).append(_f(r["pesq"]))
            xs = sorted(pts)
            ax.plot(xs, [min(pts[x]) for x in xs], "o--", label=f"{run} (worst set)")
            ax.plot(xs, [sum(pts[x]) / len(pts[x]) for x in xs], "o-", label=f"{run} (mean)")
        opus = [_f(r["opus_pesq"]) for r in rows if r["kbps"] == kbps]
        if opus:
            ax.axhline(sum(opus) / len(opus), color="k", lw=1, label="Opus (mean over sets)")
            ax.axhline(min(opus), color="k", lw=1, ls=":", label="Opus (worst set)")
        ax.set_xscale("log")
        ax.set_xlabel("CPU training minutes (2 cores)")
        ax.set_title(f"{kbps} kbps")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("PESQ (wide-band)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT.with_suffix(".png"), dpi=100)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", choices=sorted(RUNS), default=[], help="candidate (repeatable)")
    ap.add_argument("--minutes", type=float, nargs="+", default=[5.0], help="cumulative training budgets")
    ap.add_argument("--work", type=Path, default=ROOT / "work" / "curves", help="runs' folders")
    ap.add_argument("--data", type=Path, default=ROOT / "data", help="the corpus' folder (its normalized/ and raw/)")
    ap.add_argument("--report", action="store_true", help="only rewrite the tables and plot")
    ap.add_argument("--baseline", action="store_true", help="add the waveform demo's point (main's evaluation)")
    args = ap.parse_args()
    if args.baseline:
        baseline()
    if not args.report:
        for name in args.run:
            run_curve(name, args.minutes, args.work / name, args.data)
    report()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    sys.exit(main())
