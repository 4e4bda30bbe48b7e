"""The registry's comparison path, run for real after ``make demo`` (issue 16, item 4).

``make demo`` ends with the demo model as ``@champion`` under the CPU demo's gates. This
script then runs three more experiments through the whole pipeline (train, evaluate,
promote), each a DVC experiment in a temporary copy (``dvc exp run --temp``) that promotes
into the repository's MLflow store (``MLFLOW_TRACKING_URI`` points at it), one at a time:

- ``seed-recipe``: the seed's recipe (tanh output, L1 waveform loss + mel, no nmse, no level
  loss), as long as the demo: the gates the demo passes must reject it;
- ``fewer-steps``: the demo's recipe at half the steps: worse than the champion, so it may
  not take the alias (challenger, or rejected where a gate fails);
- ``more-steps``: the demo's recipe at 1.5x the steps: if it beats the champion on the
  primary metric (mel distance on its worst evaluation set), it takes ``@champion``.

What each promotion decided is read back from the registry (the version's tags and the
aliases) and written to ``experiments/champion_path.md``::

    python experiments/champion_path.py            # about 15 min on 2 cores after make demo
    python experiments/champion_path.py --only seed-recipe

The seed's recipe is a train option of conf/ (``conf/train/seed-recipe.yaml``), chosen with
``-S train=seed-recipe`` like any other profile. Each promotion's result is read back from
MLflow: the candidate's run (its ``decision`` and ``gates`` tags, its worst-set metric) and the
registry's aliases (a rejected candidate has no version).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import typing as tp
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EXPERIMENTS: dict[str, list[str]] = {
    "seed-recipe": ["train=seed-recipe"],
    "fewer-steps": ["train.steps=1000"],
    "more-steps": ["train.steps=3000"],
}


def registry_state(uri: str, name: str) -> tuple[dict[str, str], dict[str, str]]:
    """(alias -> version, run id -> version) of the registered model."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    aliases = {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}
    versions = {str(mv.run_id): str(mv.version) for mv in client.search_model_versions(f"name = '{name}'")}
    return aliases, versions


def newest_candidate(uri: str) -> tp.Any:
    """The newest run codec promote decided on (every candidate's run carries a decision tag)."""
    from mlflow import MlflowClient

    from codec.tracking import EXPERIMENT

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs(
        [exp.experiment_id], "tags.decision != ''", order_by=["attributes.start_time DESC"], max_results=1
    )
    return runs[0]


def worst_mel(run: tp.Any) -> str:
    found = [v for k, v in run.data.metrics.items() if k.startswith("worst_set/mel_distance_")]
    return f"{found[0]:.5f}" if found else "n/a"


def run_one(name: str, sets: list[str], env: dict[str, str]) -> float:
    start = time.monotonic()
    args = [x for s in sets for x in ("-S", s)]
    proc = subprocess.run(["dvc", "exp", "run", "--temp", "-f", "-n", name, *args], cwd=ROOT, env=env)
    if proc.returncode != 0:
        sys.exit(f"dvc exp run {name} failed ({proc.returncode})")
    return time.monotonic() - start


def main() -> int:
    from codec.tracking import MODEL_NAME

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=list(EXPERIMENTS), action="append", help="run only these (repeatable)")
    args = ap.parse_args()
    uri = f"sqlite:///{ROOT / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    aliases, versions = registry_state(uri, MODEL_NAME)
    champion = aliases.get("champion")
    if champion is None:
        sys.exit("no @champion in ./mlflow.db: run make demo first (it must end with one)")
    before = newest_candidate(uri)
    lines = [
        "# The registry's comparison path (`python experiments/champion_path.py`)",
        "",
        f"Before: `@champion` = version {champion} ({before.data.tags.get('gates', '?')}; worst-set mel "
        f"distance {worst_mel(before)}).",
        "",
        "| experiment | minutes | decision | version | gates | worst-set mel | aliases after |",
        "| --- | ---: | --- | ---: | --- | ---: | --- |",
    ]
    for name in args.only or list(EXPERIMENTS):
        seconds = run_one(name, EXPERIMENTS[name], env)
        run = newest_candidate(uri)
        aliases, versions = registry_state(uri, MODEL_NAME)
        after = ", ".join(f"@{a} = v{v}" for a, v in sorted(aliases.items()))
        lines.append(
            f"| {name} | {seconds / 60:.1f} | {run.data.tags.get('decision')} | "
            f"{versions.get(run.info.run_id, '- (a run, no version)')} | {run.data.tags.get('gates')} | "
            f"{worst_mel(run)} | {after} |"
        )
        print(lines[-1], flush=True)
    (ROOT / "experiments" / "champion_path.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
