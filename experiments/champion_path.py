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

The seed's loss weights have keys with a ``/``, which ``dvc exp run -S`` cannot name; they are
applied with ``codec profile`` from ``experiments/params-seed-recipe.yaml`` for the moment the
experiment starts (it snapshots the workspace) and params.yaml is put back right after.
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

EXPERIMENTS: dict[str, dict[str, tp.Any]] = {
    "seed-recipe": {"profile": "experiments/params-seed-recipe.yaml", "set": {}},
    "fewer-steps": {"profile": None, "set": {"train.steps": 1000}},
    "more-steps": {"profile": None, "set": {"train.steps": 3000}},
}


def registry_state(uri: str, name: str) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    aliases = {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}
    versions = {str(mv.version): dict(mv.tags) for mv in client.search_model_versions(f"name = '{name}'")}
    return aliases, versions


def run_one(name: str, spec: dict[str, tp.Any], env: dict[str, str]) -> float:
    from codec.cli.profile import apply

    params = ROOT / "params.yaml"
    original = params.read_text()
    try:
        if spec["profile"]:
            apply(str(ROOT / spec["profile"]), params)
        sets = [x for k, v in spec["set"].items() for x in ("-S", f"{k}={v}")]
        start = time.monotonic()
        proc = subprocess.run(["dvc", "exp", "run", "--temp", "-f", "-n", name, *sets], cwd=ROOT, env=env)
    finally:
        params.write_text(original)
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
    lines = [
        "# The registry's comparison path (`python experiments/champion_path.py`)",
        "",
        f"Before: `@champion` = version {champion} "
        f"({versions[champion].get('gate_profile', '?')} gates, worst-set mel distance "
        f"{versions[champion].get(next((t for t in versions[champion] if t.startswith('worst.')), ''), '?')}).",
        "",
        "| experiment | minutes | version | decision | failed gates | worst-set mel | aliases after |",
        "| --- | ---: | ---: | --- | --- | ---: | --- |",
    ]
    for name in args.only or list(EXPERIMENTS):
        seconds = run_one(name, EXPERIMENTS[name], env)
        aliases, versions = registry_state(uri, MODEL_NAME)
        newest = max(versions, key=int)
        tags = versions[newest]
        mel = next((v for t, v in tags.items() if t.startswith("worst.") and t.endswith("mel_distance")), "n/a")
        after = ", ".join(f"@{a} = v{v}" for a, v in sorted(aliases.items()))
        lines.append(
            f"| {name} | {seconds / 60:.1f} | {newest} | {tags.get('decision')} | {tags.get('failed_gates')} | "
            f"{mel} | {after} |"
        )
        print(lines[-1], flush=True)
    (ROOT / "experiments" / "champion_path.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
