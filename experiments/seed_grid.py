"""The seed's claim as an experiment grid: does per-clip peak normalization collapse the codec?

The seed blamed per-clip peak normalization (``normalize.mode: peak``) for a codec whose
output came back at 47 % amplitude. This grid trains the same model on ``normalize.mode``
peak / rms / lufs, crossed with two loss recipes, and evaluates every cell through the
evaluate stage on every evaluation set:

- ``ours``: params.yaml as it is (linear output, nmse + level + mel losses);
- ``seed``: the seed's recipe (tanh output, L1 waveform loss + mel, no nmse, no level loss).

Each cell is a DVC experiment (``dvc exp run --queue``, then the queue runs them one at a
time), with the data-quality gate switched off by the param that says so
(``validate.enforce_gate: false``, the summary records it), and stops after ``evaluate``: no
cell touches the model registry. Every cell's training and evaluation lands in the MLflow
store at the repository root (``MLFLOW_TRACKING_URI`` is set to it, as the queue runs each
experiment in a temporary copy). The results are written as a table and a plot::

    python experiments/seed_grid.py                 # or: make seed-experiment
    python experiments/seed_grid.py --collect-only  # re-read the finished experiments

Outputs: ``experiments/seed_grid.md`` (amplitude ratio per input level and SNR per cell,
held-out speakers and the worst evaluation set), ``experiments/seed_grid.csv`` and
``experiments/seed_grid.png``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import subprocess
import sys
import typing as tp
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("peak", "rms", "lufs")
# The recipes are train options of conf/ (Hydra composition: dvc exp run -S train=seed-recipe):
# the seed's is conf/train/seed-recipe.yaml (tanh output, L1 + mel, no nmse, no level loss), on the
# waveform model trained from scratch; ours is the same model and schedule (conf/train/waveform.yaml,
# the demo profile when this grid was run; the demo now fine-tunes the frame-rate reference model).
RECIPES: dict[str, dict[str, tp.Any]] = {
    "ours": {"train": "waveform"},
    "seed": {"train": "seed-recipe"},
}
COMMON = {"validate.enforce_gate": False}
PREFIX = "seedgrid"


def cell_name(mode: str, recipe: str) -> str:
    return f"{PREFIX}-{recipe}-{mode}"


def overrides(mode: str, recipe: str, steps: int | None) -> dict[str, tp.Any]:
    out = {**COMMON, "normalize.mode": mode, **RECIPES[recipe]}
    if steps is not None:
        out["train.steps"] = steps
    return out


def _value(v: tp.Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def dvc(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["dvc", *args], cwd=ROOT, text=True, capture_output=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"dvc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def queue(steps: int | None, env: dict[str, str]) -> None:
    for mode in MODES:
        for recipe in RECIPES:
            sets = [x for k, v in overrides(mode, recipe, steps).items() for x in ("-S", f"{k}={_value(v)}")]
            dvc("exp", "run", "--queue", "-f", "-n", cell_name(mode, recipe), *sets, "evaluate", env=env)
            print(f"queued {cell_name(mode, recipe)}", flush=True)


def _experiments(tree: tp.Any) -> tp.Iterator[tuple[str, dict[str, tp.Any]]]:
    """(name, data) of every experiment in ``dvc exp show --json`` output, whatever its nesting."""
    if isinstance(tree, list):
        for x in tree:
            yield from _experiments(x)
    elif isinstance(tree, dict):
        if isinstance(tree.get("name"), str) and isinstance(tree.get("data"), dict):
            yield tree["name"], tree["data"]
        for v in tree.values():
            if isinstance(v, (list, dict)):
                yield from _experiments(v)


def _metric_file(data: dict[str, tp.Any], path: str) -> dict[str, tp.Any]:
    entry = (data.get("metrics") or {}).get(path) or {}
    return entry.get("data") or {}


def collect() -> list[dict[str, tp.Any]]:
    shown = json.loads(dvc("exp", "show", "--json", "--no-pager").stdout or "[]")
    found = {name: data for name, data in _experiments(shown) if name.startswith(PREFIX)}
    rows = []
    for mode in MODES:
        for recipe in RECIPES:
            data = found.get(cell_name(mode, recipe))
            if data is None:
                print(f"{cell_name(mode, recipe)}: not found among the experiments (did it fail? dvc queue logs)")
                continue
            m = _metric_file(data, "reports/evaluate/metrics.json")
            v = _metric_file(data, "reports/validate/summary.json")
            k = f"{m.get('kbps', 0):g}kbps"
            levels = (m.get("levels") or {}).get(k) or {}
            sets = m.get("sets") or {}
            worst = min(
                sets.items(),
                key=lambda kv: -abs(math.log(kv[1]["amplitude_ratio"])) if kv[1].get("amplitude_ratio") else -math.inf,
                default=(None, {}),
            )
            rows.append(
                {
                    "normalize.mode": mode,
                    "recipe": recipe,
                    "rms_spread_db": (v.get("normalized") or {}).get("rms_dbfs_std"),
                    "kbps": m.get("kbps"),
                    "amplitude_ratio": m.get("amplitude_ratio"),
                    "snr_db": m.get("snr_db"),
                    "pesq": m.get("pesq"),
                    "mel_distance": m.get("mel_distance"),
                    **{f"amp_{lv}": e.get("amplitude_ratio") for lv, e in levels.items()},
                    **{f"snr_{lv}": e.get("snr_db") for lv, e in levels.items()},
                    "worst_set": worst[0],
                    "worst_set_amplitude_ratio": (worst[1] or {}).get("amplitude_ratio"),
                }
            )
    return rows


def _f(v: tp.Any, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"


def write(rows: list[dict[str, tp.Any]], out: Path) -> None:
    if not rows:
        sys.exit("no finished cells to report")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, columns, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    out.with_suffix(".csv").write_text(buf.getvalue())
    levels = [c.removeprefix("amp_") for c in columns if c.startswith("amp_")]
    lines = [
        "# The seed's claim: amplitude per cell (held-out speakers, top bitrate)",
        "",
        "Made by `python experiments/seed_grid.py` (`make seed-experiment`); data gate off "
        "(`validate.enforce_gate: false`). `spread`: per-file RMS spread after normalize (dB).",
        "",
        "| normalize.mode | recipe | spread dB | amplitude | "
        + " | ".join(f"amp. {lv}" for lv in levels)
        + " | SNR dB | PESQ | worst set (amplitude) |",
        "| --- | --- | ---: | ---: | " + " ---: |" * len(levels) + " ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['normalize.mode']} | {r['recipe']} | {_f(r['rms_spread_db'], 2)} | {_f(r['amplitude_ratio'])} | "
            + " | ".join(_f(r.get(f"amp_{lv}")) for lv in levels)
            + f" | {_f(r['snr_db'], 2)} | {_f(r['pesq'], 2)} | "
            + f"{r['worst_set']} ({_f(r['worst_set_amplitude_ratio'])}) |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [float(lv.removesuffix("dBFS")) for lv in levels]
    for r in rows:
        ys = [r.get(f"amp_{lv}") or math.nan for lv in levels]
        ax.plot(
            xs,
            ys,
            marker="o",
            linestyle="-" if r["recipe"] == "ours" else "--",
            label=f"{r['recipe']}, {r['normalize.mode']}",
        )
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xlabel("input level (RMS dBFS)")
    ax.set_ylabel("amplitude ratio (output / input RMS)")
    ax.set_title("Amplitude per input level: normalization mode x loss recipe")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print("\n".join(lines))


def main(argv: tp.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, help="train.steps per cell (default: params.yaml's)")
    parser.add_argument("--collect-only", action="store_true", help="only read the finished experiments")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "seed_grid", help="output path stem")
    args = parser.parse_args(argv)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT / 'mlflow.db'}"),
    }
    if not args.collect_only:
        queue(args.steps, env)
        print("running the queue one experiment at a time (dvc exp run --run-all -j 1) ...", flush=True)
        subprocess.run(["dvc", "exp", "run", "--run-all", "-j", "1"], cwd=ROOT, env=env, check=False)
    write(collect(), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
