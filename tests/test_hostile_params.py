"""Hostile params files (issue 23 rows 5, 12, 13): the one reader (``codec.params.read_params``)
and ``codec check-params`` refuse alias bombs, duplicate keys, deep nesting, non-finite and
out-of-range numbers and empty names with one line and exit status 2, never a traceback and
never after expanding anything."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from codec.cli.main import main
from codec.errors import UserError
from codec.params import read_params

REPO = Path(__file__).resolve().parents[1]
PARAMS = (REPO / "params.yaml").read_text(encoding="utf-8")


def _params(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _replaced(old: str, new: str) -> str:
    assert PARAMS.count(old) == 1, old
    return PARAMS.replace(old, new)


def _refused(capsys: pytest.CaptureFixture[str], path: Path, message: str) -> str:
    """``codec check-params --params path`` exits 2 with one line matching ``message``."""
    before = path.read_bytes()
    rc = main(["check-params", "--params", str(path)])
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    assert out == ""
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"codec check-params: error: {path}")
    assert message in err, err
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["params.yaml"]  # nothing written beside it
    return err


def test_a_yaml_alias_bomb_in_a_key_nothing_reads_is_refused_before_it_expands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Row 12: nine levels of ten aliases (10^10 leaves) under an unused key. The project's
    params files have no anchors or aliases at all (checked here), so any is refused."""
    for own in [REPO / "params.yaml", *sorted((REPO / "conf").rglob("*.yaml"))]:
        assert read_params(own) is not None  # the project's own files still read
    bomb = "bomb:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
    bomb += "".join(f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10))
    path = _params(tmp_path, PARAMS + bomb)
    err = _refused(capsys, path, "YAML anchors and aliases (&name, *name) are not allowed in a params file")
    assert f"line {PARAMS.count(chr(10)) + 2}:" in err  # the first anchor's line
    start = time.perf_counter()
    with pytest.raises(UserError, match="anchors and aliases"):
        read_params(path)
    assert time.perf_counter() - start < 0.5  # refused while composing, nothing expanded
    # one harmless alias is refused too: the reader does not count, it refuses
    with pytest.raises(UserError, match="anchors and aliases"):
        read_params(_params(tmp_path, _replaced("  seed: 0\n  steps: 600", "  seed: &s 0\n  steps: *s")))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "  max_rms_spread_db: 1.5",
            "  max_rms_spread_db: .nan",
            "validate.max_rms_spread_db: expected a finite number, got nan",
        ),
        (
            "  lufs_tolerance: 0.5",
            "  lufs_tolerance: .nan",
            "validate.lufs_tolerance: expected a finite number, got nan",
        ),
        ("  min_snr_db: 4.0", "  min_snr_db: .nan", "promote.min_snr_db: expected a finite number, got nan"),
        (
            "  max_mel_distance: 0.5",
            "  max_mel_distance: .inf",
            "promote.max_mel_distance: expected a finite number, got inf",
        ),
        ("  lr: 0.0001", "  lr: .nan", "train.lr: expected a finite number, got nan"),
        ("  seconds: 4.0", "  seconds: -.inf", "evaluate.seconds: expected a finite number, got -inf"),
        ("    rt60_s:\n    - 0.1", "    rt60_s:\n    - .nan", "train.augment.rt60_s[0]: expected a finite number"),
        ("    loss/mel: 1.0", "    loss/mel: .nan", "train.loss_weights.loss/mel: expected a finite number"),
        ("  lr: 0.0001", "  lr: 0.0001\n  lr: 0.1", "key 'lr' appears twice (first on line"),
        ("  lr: 0.0001", "  lr: -1", "train.lr: -1.0 must be greater than 0"),
        ("  lr: 0.0001", "  lr: 0", "train.lr: 0.0 must be greater than 0"),
        (
            "  max_rms_spread_db: 1.5",
            "  max_rms_spread_db: 0",
            "validate.max_rms_spread_db: 0.0 must be greater than 0",
        ),
        ("  model_name: telugu-speech-codec", "  model_name: ''", "promote.model_name: expected a non-empty string"),
        ("  model_name: telugu-speech-codec", "  model_name: '  '", "promote.model_name: expected a non-empty string"),
    ],
    ids=[
        "nan-spread",
        "nan-lufs-tolerance",
        "nan-min-snr",
        "inf-mel-distance",
        "nan-lr",
        "inf-seconds",
        "nan-in-a-list",
        "nan-in-a-mapping",
        "duplicate-key",
        "negative-lr",
        "zero-lr",
        "zero-spread",
        "empty-model-name",
        "blank-model-name",
    ],
)
def test_nan_duplicate_keys_a_negative_lr_and_an_empty_name_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, message: str
) -> None:
    """Row 13: finite numbers in every float field (refused in from_dict, not key by key), one
    key once per mapping, train.lr > 0, non-empty names."""
    _refused(capsys, _params(tmp_path, _replaced(old, new)), message)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("  lr: 0.0001", "  lr: " + "9" * 400, "train.lr: expected a finite number, got a 400-digit integer"),
        ("  steps: 600", "  steps: " + "9" * 400, "train.steps: expected an integer within +-2**63"),
        ("promote:\n", "deep: " + "[" * 5000 + "]" * 5000 + "\npromote:\n", "values nested more than 32 levels deep"),
    ],
    ids=["huge-float", "huge-int", "deep-list"],
)
def test_a_400_digit_number_and_a_5000_deep_list_are_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, message: str
) -> None:
    """Row 5 (check-params): OverflowError and RecursionError were tracebacks."""
    _refused(capsys, _params(tmp_path, _replaced(old, new)), message)


def test_a_params_file_that_is_not_utf8_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(PARAMS.encode("utf-8").replace(b"telugu-speech-codec", b"caf\xe9"))
    _refused(capsys, path, "is not UTF-8 text")
