"""Profiles through DVC's own mechanism, Hydra composition: conf/ composes params.yaml, the GPU
profile is ``dvc exp run -S train=gpu -S promote=gpu``, and params.yaml is exactly what DVC
writes from conf/ (so a ``dvc exp run`` of the defaults changes nothing in git)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from codec.model.codec import cpu_demo_config, frame_config, gpu_config
from codec.params import from_dict
from codec.training.params import TrainParams
from tests.conftest import REPO, run_cli

DEMO_MIN_PESQ = yaml.safe_load((REPO / "conf/promote/cpu-demo.yaml").read_text())["min_pesq"]


def compose(tmp_path: Path, *overrides: str) -> Path:
    """params.yaml as ``dvc exp run -S ...`` writes it from conf/ (DVC's own Hydra helper)."""
    from dvc.utils.hydra import compose_and_dump

    out = tmp_path / f"params-{'-'.join(overrides) or 'default'}.yaml"
    compose_and_dump(out, str(REPO / "conf"), None, "config", "", list(overrides))
    return out


def test_params_yaml_is_what_dvc_composes_from_conf(tmp_path: Path) -> None:
    config = {k: v for k, v in (line.split("=", 1) for line in run_cli("dvc", "config", "-l", cwd=REPO).stdout.split())}
    assert (config["hydra.enabled"], config["hydra.config_dir"], config["hydra.config_name"]) == (
        "true",
        "conf",
        "config",
    )
    # Byte for byte: the first `dvc exp run` of the defaults leaves params.yaml as committed.
    assert compose(tmp_path).read_text() == (REPO / "params.yaml").read_text(), (
        "params.yaml differs from the composition of conf/: edit conf/, then `make params` writes it"
    )
    assert list(yaml.safe_load((REPO / "params.yaml").read_text())) == [
        "ingest",
        "normalize",
        "validate",
        "train",
        "evaluate",
        "promote",
    ]


@pytest.mark.parametrize(
    "overrides",
    [
        ("train=gpu", "promote=gpu"),
        ("train=seed-recipe",),
        ("train=gpu",),
        ("promote=gpu",),
        ("train=frame",),
        ("train=waveform",),
        (),
    ],
)
def test_every_profile_composes_params_every_stage_accepts(tmp_path: Path, overrides: tuple[str, ...]) -> None:
    params = compose(tmp_path, *overrides)
    checked = subprocess.run(
        [sys.executable, "-m", "codec", "check-params", "--params", str(params)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    data = yaml.safe_load(params.read_text())
    default = yaml.safe_load((REPO / "params.yaml").read_text())
    for section in ("ingest", "normalize", "validate", "evaluate"):
        assert data[section] == default[section]  # a profile changes only its own sections
    if "train=gpu" in overrides:
        # The benchmarks time gpu_config(); conf/train/gpu.yaml is what users train: one model.
        assert from_dict(TrainParams, data["train"], "train=gpu").model == gpu_config()
    if "promote=gpu" in overrides:
        assert data["promote"]["gate_profile"] == "gpu" and data["promote"]["min_pesq"] == 2.5
        assert data["promote"]["fail_on_gate"] == default["promote"]["fail_on_gate"]  # the rest from cpu-demo
    train = from_dict(TrainParams, data["train"], "train")
    if "train=seed-recipe" in overrides:
        # The seed's recipe on the waveform demo's model and schedule, from scratch.
        waveform = from_dict(TrainParams, yaml.safe_load(compose(tmp_path, "train=waveform").read_text())["train"], "w")
        assert train.model == dataclasses.replace(waveform.model, output_activation="tanh")
        assert train.steps == waveform.steps and train.init_from is None
        assert (train.loss_weights["loss/l1"], train.loss_weights["loss/level"]) == (1.0, 0.0)
    if "train=waveform" in overrides:
        assert (train.model.architecture, train.model.linear_path, train.init_from) == ("waveform", True, None)
        assert train.model.encoder_channels == cpu_demo_config().encoder_channels
    if "train=frame" in overrides or not overrides:
        # The benchmarks time frame_config(): the model the demo fine-tunes and the reference is.
        assert train.model == frame_config()
        assert train.init_from == (None if overrides else "codec/model/reference/codec.pt")


@pytest.mark.slow
def test_dvc_exp_run_applies_a_profile_and_exp_show_fits_120_columns(tmp_path: Path) -> None:
    """A real repo with the project's conf/ and Hydra on: ``-S train=gpu -S promote=gpu`` reaches
    a stage's params, ``-S train.steps=...`` still names one key, and ``dvc exp show
    --only-changed`` of experiments that differ in a key or two fits a 120-column terminal."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(REPO / "conf", repo / "conf")
    shutil.copy(REPO / "params.yaml", repo / "params.yaml")
    probe = (
        "import json, yaml; p = yaml.safe_load(open('params.yaml')); "
        "json.dump({'steps': p['train']['steps'], 'min_pesq': p['promote']['min_pesq']}, open('out.json', 'w'))"
    )
    stage = {
        "cmd": f'{sys.executable} -c "{probe}"',
        "params": ["train.steps", "train.batch_size", "promote.gate_profile", "promote.min_pesq"],
        "metrics": [{"out.json": {"cache": False}}],
    }
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"probe": stage}}, sort_keys=False))
    for cmd in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "ci@example.com"],
        ["git", "config", "user.name", "ci"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "hydra.enabled", "true"],
        ["dvc", "repro", "-q"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "cpu demo"],
    ):
        run_cli(*cmd, cwd=repo, check=True)
    assert json.loads((repo / "out.json").read_text()) == {"steps": 600, "min_pesq": DEMO_MIN_PESQ}

    run_cli("dvc", "exp", "run", "-n", "gpu", "-S", "train=gpu", "-S", "promote=gpu", cwd=repo, check=True)
    assert json.loads((repo / "out.json").read_text()) == {"steps": 40000, "min_pesq": 2.5}
    gpu = yaml.safe_load((repo / "params.yaml").read_text())
    assert gpu["train"]["model"] == yaml.safe_load((REPO / "conf/train/gpu.yaml").read_text())["model"]

    run_cli("dvc", "exp", "run", "-n", "longer", "-S", "train.steps=4000", cwd=repo, check=True)
    assert json.loads((repo / "out.json").read_text()) == {"steps": 4000, "min_pesq": DEMO_MIN_PESQ}
    # Back on the defaults, composed again: params.yaml is what git holds.
    run_cli("dvc", "exp", "run", "-n", "demo", cwd=repo, check=True)
    assert run_cli("git", "diff", "--quiet", "params.yaml", cwd=repo).returncode == 0

    env = {**os.environ, "COLUMNS": "120"}
    shown = subprocess.run(
        ["dvc", "exp", "show", "--only-changed", "--no-pager", "--drop", "Created"],
        cwd=repo,
        env=env,
        text=True,
        capture_output=True,
        check=True,
    )
    lines = [line for line in shown.stdout.splitlines() if line.strip()]
    assert max(len(line) for line in lines) <= 120, shown.stdout
    text = shown.stdout
    assert "longer" in text and "4000" in text and "gpu" in text and "40000" in text, text
