"""One reader of params files (``codec.params.read_params``) for the stages and the flow:
its dotted keys, and the flow's overrides read through it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from codec.errors import UserError
from codec.params import flatten, read_params
from flows.overrides import apply_overrides, collect_overrides

REPO = Path(__file__).resolve().parents[1]


def test_flatten_gives_the_dotted_keys_of_dvc_exp_run_set() -> None:
    nested = {"normalize": {"mode": "peak", "limits": {"low": 1}}, "train": {"bitrates": [1.5, 6.0], "extra": {}}}
    assert flatten(nested) == {
        "normalize.mode": "peak",
        "normalize.limits.low": 1,
        "train.bitrates": [1.5, 6.0],  # a list is one value
        "train.extra": {},  # an empty mapping is a value, so -S train.extra=... names a key that exists
    }
    assert flatten(read_params(REPO / "params.yaml"))["normalize.mode"] in ("lufs", "rms", "peak")


def test_a_run_s_overrides_take_a_partial_params_file_then_the_set_values(tmp_path: Path) -> None:
    partial = tmp_path / "partial.yaml"
    partial.write_text("normalize:\n  mode: peak\n  peak_target: 0.9\ntrain:\n  steps: 10\n")
    assert collect_overrides(partial, {"train.steps": 20}) == {
        "normalize.mode": "peak",
        "normalize.peak_target": 0.9,
        "train.steps": 20,  # --set comes after the file
    }
    assert collect_overrides(None, {"train.steps": 20}) == {"train.steps": 20}
    (tmp_path / "empty.yaml").write_text("")
    assert collect_overrides(tmp_path / "empty.yaml", None) == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [("- just\n- a list\n", "must hold a mapping of stage sections"), ("normalize: [\n", "is not valid YAML")],
)
def test_a_params_file_the_reader_refuses_is_refused_for_the_flow_too(tmp_path: Path, text: str, message: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(UserError, match=message):
        read_params(bad)
    with pytest.raises(UserError, match=message):
        collect_overrides(bad, None)
    with pytest.raises(UserError, match="params file not found"):
        apply_overrides(tmp_path, {"normalize.mode": "peak"})  # no params.yaml in the repo


def test_only_read_params_reads_a_params_file() -> None:
    """codec.params' docstring says so: every ``yaml.safe_load``/``yaml.load`` in codec/ and
    flows/ is in read_params, in provenance (dvc.yaml and dvc.lock, not params), in the flow's
    parse_assignment (one ``-S KEY=VALUE`` value, read as YAML the way DVC reads it) or in
    flows.ops' deployment_pools (prefect.yaml's work pools, not params)."""
    allowed = {"codec/params.py:read_params", "flows/overrides.py:parse_assignment", "flows/ops.py:deployment_pools"}
    found = set()
    for path in sorted([*REPO.glob("codec/**/*.py"), *REPO.glob("flows/**/*.py")]):
        rel = path.relative_to(REPO).as_posix()
        for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("safe_load", "load", "full_load", "unsafe_load")
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "yaml"
                ):
                    found.add(f"{rel}:{fn.name}")
    assert {f for f in found if not f.startswith("codec/provenance.py:")} <= allowed
    assert "codec/params.py:read_params" in found
