"""``codec profile``: a params profile applied to params.yaml key by key, comments kept, checked first."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from codec.cli.main import main
from codec.params import load_section
from codec.registry.gates import PromoteParams
from codec.training.params import TrainParams

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    for name in ("params.yaml", "params-gpu.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def comments(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("#")]


def flat(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_the_gpu_profile_sets_its_keys_and_keeps_every_comment_and_other_key(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = repo / "params.yaml"
    before_text = params.read_text()
    before = flat(yaml.safe_load(before_text))
    profile = flat(yaml.safe_load((repo / "params-gpu.yaml").read_text()))

    assert main(["profile", "gpu", "--params", str(params), "--dry-run"]) == 0
    assert params.read_text() == before_text  # a dry run writes nothing
    assert "train.steps: 2000 -> 40000" in capsys.readouterr().out

    assert main(["profile", "gpu", "--params", str(params)]) == 0
    after_text = params.read_text()
    after = flat(yaml.safe_load(after_text))
    assert comments(after_text) == comments(before_text)  # every comment, in order
    assert list(after) == list(before)  # same keys, same order
    assert {k: after[k] for k in profile} == profile
    assert {k: v for k, v in after.items() if k not in profile} == {k: v for k, v in before.items() if k not in profile}
    # What the stages read: the GPU schedule and the GPU profile's gates.
    train = load_section(TrainParams, "train", params)
    gates = load_section(PromoteParams, "promote", params)
    assert (train.steps, train.batch_size, train.model.latent_dim) == (40000, 32, 128)
    assert (gates.gate_profile, gates.max_pesq_below_opus) == ("gpu", 0.0)
    # Applied twice: nothing more to change.
    assert main(["profile", "gpu", "--params", str(params)]) == 0
    assert params.read_text() == after_text and "already holds" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ("train:\n  stepz: 10\n", "train.stepz is not in params.yaml"),
        ("train:\n  steps: -5\n", "would be refused"),
        ("promote:\n  model_amplitude_ratio_band: [1.2, 0.8]\n", "would be refused"),
        ("train: 3\n", "is a value, but params.yaml holds a section"),
    ],
)
def test_a_profile_that_does_not_fit_changes_nothing(
    repo: Path, profile: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    params = repo / "params.yaml"
    before = params.read_text()
    (repo / "params-bad.yaml").write_text(profile)
    assert main(["profile", "bad", "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert params.read_text() == before
    assert sorted(p.name for p in repo.iterdir()) == ["params-bad.yaml", "params-gpu.yaml", "params.yaml"]


def test_an_unknown_profile_names_the_ones_there_are(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "tpu", "--params", str(repo / "params.yaml")]) == 2
    assert "no profile 'tpu'" in (err := capsys.readouterr().err) and "profiles here: gpu" in err
