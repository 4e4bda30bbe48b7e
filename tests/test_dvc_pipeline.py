"""The data half under DVC, end to end, in a scratch repo: repro, no-op repro, params, remote, experiments."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import yaml

from tests.conftest import REPO, in_terminal, make_dvc_repo, run_cli

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


def test_dvc_metrics_and_experiments_fit_a_120_column_terminal(tmp_path: Path) -> None:
    """The metrics files dvc.yaml declares, with the values the last `dvc repro` here wrote, in a
    real DVC repo whose stages have the project's metric files and dependency paths: `dvc metrics
    show` and `make compare` (dvc exp show --only-changed without the hash columns) of three
    experiments fit a 120-column terminal with nothing hidden, and every metric keeps its bare name
    (DVC prefixes a name two files share with the file's path)."""
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    declared = [next(iter(m)) for st in dvc_yaml["stages"].values() for m in st.get("metrics", [])]
    assert sorted(declared) == ["reports/evaluate/headline.json", "reports/validate/gate.json"]
    keys: list[str] = []
    for path in declared:
        data = json.loads((REPO / path).read_text())
        assert data and all(isinstance(v, (int, float)) for v in data.values()), path  # flat and numeric
        keys += list(data)
    assert len(keys) == len(set(keys)), keys  # unique across the files

    repo = tmp_path / "repo"
    (repo / "reports/validate").mkdir(parents=True)
    shutil.copy(REPO / "params.yaml", repo / "params.yaml")
    shutil.copy(REPO / "reports/validate/gate.json", repo / "reports/validate/gate.json")
    head = json.loads((REPO / "reports/evaluate/headline.json").read_text())
    # A model file that depends on the training params, and headline numbers that depend on it.
    train = "import yaml; p = yaml.safe_load(open('params.yaml'))['train']; open('models/codec.pt', 'w').write(str(p))"
    # (Opus' numbers do not move with the model.)
    evaluate = (
        "import json, zlib; s = zlib.crc32(open('models/codec.pt', 'rb').read()) % 97 / 1000; "
        f"h = {head!r}; json.dump({{k: v if k.startswith('opus') else round(v * (1 - s), 4) for k, v in h.items()}}, "
        "open('reports/evaluate/headline.json', 'w'))"
    )
    stages = {
        "train": {
            "cmd": f'mkdir -p models && {sys.executable} -c "{train}"',
            "deps": ["data/normalized"],
            "params": ["train.steps", "train.lr", "train.augment"],
            "outs": ["models"],
        },
        "evaluate": {
            "cmd": f'mkdir -p reports/evaluate && {sys.executable} -c "{evaluate}"',
            "deps": ["models/codec.pt", "data/normalized"],
            "metrics": [{"reports/evaluate/headline.json": {"cache": False}}],
        },
    }
    (repo / "dvc.yaml").write_text(
        yaml.safe_dump({"stages": stages, "metrics": ["reports/validate/gate.json"]}, sort_keys=False)
    )
    (repo / "data/normalized").mkdir(parents=True)
    (repo / "data/normalized/manifest.csv").write_text("id,path\n")
    for cmd in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "ci@example.com"],
        ["git", "config", "user.name", "ci"],
        ["dvc", "init", "-q"],
        ["dvc", "add", "-q", "data/normalized"],
        ["dvc", "repro", "-q"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "demo"],
        # Two experiments from the same baseline, a key each.
        ["dvc", "exp", "run", "-q", "-n", "more-steps", "-S", "train.steps=3000"],
        ["git", "checkout", "-q", "params.yaml"],
        ["dvc", "exp", "run", "-q", "-n", "faster-lr", "-S", "train.lr=0.002"],
        ["git", "checkout", "-q", "params.yaml"],
        ["dvc", "exp", "run", "-q", "-n", "baseline"],
    ):
        run_cli(*cmd, cwd=repo, check=True)

    shown = in_terminal(["dvc", "metrics", "show"], repo)
    assert "…" not in shown and max(map(len, shown.splitlines())) <= 120, shown
    assert all(k in shown.splitlines()[0] for k in keys), shown  # bare names, a column each

    compared = in_terminal(["make", "-s", "-f", str(REPO / "Makefile"), "compare"], repo)
    print(compared)
    lines = [line for line in compared.splitlines() if line.strip()]
    assert "…" not in compared and max(map(len, lines)) <= 120, compared
    header = lines[1]
    for column in ("train.steps", "train.lr", "amp", "snr_db", "pesq", "mel", "worst_amp", "worst_pesq"):
        assert f" {column} " in f" {header} ", compared
    assert "opus_pesq" not in header and "spread_db" not in header  # unchanged: --only-changed
    assert "codec.pt" not in header and "data/normalized" not in header and "Created" not in header
    assert all(name in compared for name in ("more-steps", "faster-lr", "baseline"))


def test_every_plot_has_its_own_axis_and_no_line_is_a_constant() -> None:
    """dvc.yaml's plots, on the reports the last `dvc repro` here wrote: only top-level plots (a
    stage's own plots would draw its CSVs against the row index), each with an x column every file
    it reads has, and no y column that is the same number all the way (a plot of a constant)."""
    import csv

    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert not [name for name, st in dvc_yaml["stages"].items() if st.get("plots")]
    images = [p for p in dvc_yaml["plots"] if isinstance(p, str)]
    assert images == ["reports/evaluate/media/spectrograms"]  # the spectrogram PNGs, as images
    checked = 0
    for entry in (p for p in dvc_yaml["plots"] if isinstance(p, dict)):
        ((name, spec),) = entry.items()
        assert spec.get("x") and spec.get("title"), name
        for path, columns in spec["y"].items():
            rows = list(csv.DictReader((REPO / path).open()))
            assert len(rows) >= 2, (name, path)
            assert spec["x"] in rows[0], (name, path, spec["x"])
            for column in [columns] if isinstance(columns, str) else columns:
                values = {r[column] for r in rows if r[column] != ""}
                assert len(values) > 1, f"plot {name}: {path}:{column} is constant ({values})"
                checked += 1
    assert checked >= 20
