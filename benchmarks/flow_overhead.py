"""The Prefect flow's overhead over a plain ``dvc repro`` of the same work.

Two identical scratch repositories (git + DVC, the project's dvc.yaml and params.yaml
with a tiny embedded corpus) are built side by side. In each, the same stages run
from a clean state, once with ``dvc repro <until>`` and once with
``python -m flows.pipeline run --until <until>``; then both run again with every
stage up to date, where the flow's cost is all overhead. Both commands run as
subprocesses the way a user runs them, so the flow's figure includes starting Prefect
(a temporary local server when ``PREFECT_API_URL`` is unset, as ``make flow`` does).

    python benchmarks/flow_overhead.py [--until validate] [--n-utterances 24]

The machines are shared: compare the two columns of one run, not runs of different days.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def env() -> dict[str, str]:
    e = os.environ.copy()
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    e.setdefault("GX_ANALYTICS_ENABLED", "false")
    return e


def make_repo(root: Path, n_utterances: int) -> Path:
    """A fresh git + DVC repo with the project's pipeline and a tiny corpus."""
    root.mkdir(parents=True)
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["ingest"]["corpus"]["n_utterances"] = n_utterances
    params["validate"]["min_files"] = min(params["validate"]["min_files"], max(2, n_utterances // 2))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(REPO / "codec", root / "codec", ignore=shutil.ignore_patterns("__pycache__"))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=root, check=True, env=env())
    return root


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--until", default="validate", help="last stage to run (default: %(default)s)")
    parser.add_argument("--n-utterances", type=int, default=24, help="size of the embedded corpus (default: 24)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="flow-overhead-") as tmp:
        plain = make_repo(Path(tmp) / "plain", args.n_utterances)
        flowed = make_repo(Path(tmp) / "flow", args.n_utterances)
        dvc_cmd = [sys.executable, "-m", "dvc", "repro", args.until]
        flow_cmd = [sys.executable, "-m", "flows.pipeline", "run", "--repo", str(flowed), "--until", args.until]
        rows = []
        for label in ("clean state", "up to date"):
            t_dvc = timed(dvc_cmd, plain)
            t_flow = timed(flow_cmd, REPO)
            rows.append((label, t_dvc, t_flow))

    api = os.environ.get("PREFECT_API_URL") or "temporary local server (started by the flow)"
    print(f"stages up to {args.until!r}, {args.n_utterances} utterances; Prefect API: {api}")
    print(f"{'':12} {'dvc repro':>10} {'flow':>10} {'overhead':>10} {'ratio':>7}")
    for label, t_dvc, t_flow in rows:
        print(f"{label:12} {t_dvc:9.1f}s {t_flow:9.1f}s {t_flow - t_dvc:+9.1f}s {t_flow / t_dvc:6.2f}x")


if __name__ == "__main__":
    main()
