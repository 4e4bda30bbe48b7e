"""The data half under DVC, end to end, in a scratch repo: repro, no-op repro, params, remote, experiments."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import yaml

from tests.conftest import REPO, make_dvc_repo, run_cli

DATA_STAGES = ("corpus", "ingest", "normalize", "validate")


def test_dvc_repro_data_half_end_to_end(tmp_path: Path) -> None:
    repo = make_dvc_repo(
        tmp_path / "repo",
        {"ingest.corpus.n_utterances": 16, "validate.min_files": 10, "ingest.workers": 2, "normalize.workers": 2},
        stages=DATA_STAGES,
    )
    first = run_cli("dvc", "repro", cwd=repo, check=True)
    for stage in DATA_STAGES:
        assert f"Running stage '{stage}'" in first.stdout
    summary = json.loads((repo / "reports/validate/summary.json").read_text())
    assert summary["success"] and summary["files"] == 16
    assert summary["normalized"]["rms_dbfs_std"] < 1.5 < summary["raw"]["rms_dbfs_std"]
    assert (repo / "reports/validate/data_docs/index.html").is_file()
    raw = pd.read_csv(repo / "data/raw/manifest.csv")
    norm = pd.read_csv(repo / "data/normalized/manifest.csv")
    assert len(raw) == len(norm) == 16
    assert (norm["lufs"] - (-16.0)).abs().max() <= 0.1

    # Twice in a row: nothing runs the second time.
    second = run_cli("dvc", "repro", cwd=repo, check=True)
    assert "Running stage" not in second.stdout
    assert "up to date" in second.stdout

    # A validate param re-runs validation only.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["validate"]["lufs_tolerance"] = 0.4
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = run_cli("dvc", "repro", cwd=repo, check=True)
    assert "Running stage 'validate'" in third.stdout
    for stage in ("corpus", "ingest", "normalize"):
        assert f"Running stage '{stage}'" not in third.stdout

    # Each validate run joins the history (persist: DVC leaves it in place), named after the
    # data version in dvc.lock; the Data Docs, rebuilt from it, list every run kept.
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    md5 = next(o["md5"] for o in lock["stages"]["normalize"]["outs"] if o["path"] == "data/normalized")
    kept = sorted((repo / "reports/validate/history").glob("normalized_audio/*/*"))  # run name/run time
    assert len(kept) == 2  # the first and the third repro (the second ran nothing)
    assert {p.parent.name for p in kept} == {f"data-{md5.removesuffix('.dir')[:8]}_git-unknown"}  # no commit yet
    index = (repo / "reports/validate/data_docs/index.html").read_text()
    assert index.count('data-suite="normalized_audio" data-status="passed"') == 2
    assert index.count('data-suite="raw_audio_profile" data-status="information"') == 2

    # The metric is visible to DVC.
    metrics = run_cli("dvc", "metrics", "show", "--json", cwd=repo, check=True)
    assert json.loads(metrics.stdout)[""]["data"]["reports/validate/gate.json"]["data"] == {
        "spread_db": summary["normalized"]["rms_dbfs_std"]
    }

    # A local remote: push, lose the cache and the workspace data, pull it back.
    remote = tmp_path / "remote"
    run_cli("dvc", "remote", "add", "-d", "local", str(remote), cwd=repo, check=True)
    run_cli("dvc", "push", cwd=repo, check=True)
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "data" / "normalized")
    run_cli("dvc", "pull", cwd=repo, check=True)
    assert pd.read_csv(repo / "data/normalized/manifest.csv").equals(norm)

    # An experiment with the seed's bug: the gate stops the pipeline and names the expectation.
    run_cli("git", "add", "-A", cwd=repo, check=True)
    run_cli("git", "commit", "-qm", "baseline", cwd=repo, check=True)
    exp = run_cli("dvc", "exp", "run", "-S", "normalize.mode=peak", cwd=repo)
    assert exp.returncode != 0
    out = exp.stdout + exp.stderr
    assert "rms_spread" in out and "data-quality gate failed" in out
    index = (repo / "reports/validate/data_docs/index.html").read_text()
    assert index.count('data-suite="normalized_audio" data-status="failed"') == 1  # beside the two that passed


def test_dvc_metrics_show_fits_a_120_column_terminal(tmp_path: Path) -> None:
    """The headline metrics dvc.yaml declares, as the last `dvc repro` here wrote them: one
    column per number (the stages share names), in 120 columns, without --precision or --json."""
    import subprocess

    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    declared = [next(iter(m)) for st in dvc_yaml["stages"].values() for m in st.get("metrics", [])]
    assert sorted(declared) == [
        "reports/evaluate/headline.json",
        "reports/train/headline.json",
        "reports/validate/gate.json",
    ]
    repo = tmp_path / "repo"
    repo.mkdir()
    run_cli("git", "init", "-q", cwd=repo, check=True)
    run_cli("dvc", "init", "-q", cwd=repo, check=True)
    for path in declared:
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / path, repo / path)
        data = json.loads((REPO / path).read_text())
        assert data and all(isinstance(v, (int, float)) for v in data.values()), path  # flat and numeric
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"metrics": declared}))
    env = {**os.environ, "COLUMNS": "200"}  # DVC does not wrap to the terminal: measure what it prints
    shown = subprocess.run(["dvc", "metrics", "show"], cwd=repo, env=env, text=True, capture_output=True, check=True)
    lines = shown.stdout.splitlines()
    assert len(lines) == 4 and max(len(line) for line in lines) <= 120, shown.stdout
