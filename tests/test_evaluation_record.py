"""The typed evaluation record (codec.evaluation.record): evaluation.json as the evaluate stage
writes it reads back field for field, without torch; an older file still reads; a malformed one
is a message naming the file and the key; the rules (bitrate key, worst amplitude, a clip's
level error) give the values the report and the gates have always used."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import typing as tp
from pathlib import Path

import pytest

from codec.cli import main as cli
from codec.errors import UserError
from codec.evaluation import evaluate as ev
from codec.evaluation import params as ep
from codec.evaluation import report, sets
from codec.evaluation.params import HELD_OUT
from codec.evaluation.record import (
    NOT_SCORED,
    clip_level_error_db,
    evaluation_from_json,
    kbps_key,
    level_key,
    read_evaluation,
    worst_amplitude,
)
from codec.registry import gates
from tests.test_evaluate import NO_LIMITER, Collapsed, PcmCodec, make_clips

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EVAL = ep.EvaluateParams(levels_dbfs=[-40.0, -6.0], opus_modes=[], seconds=1.0, sets=["held_out"], side_info=True)


@pytest.fixture(scope="module")
def written() -> dict[str, tp.Any]:
    """evaluation.json of the seed's collapse (47 % amplitude without the side information), as
    the evaluate stage writes it, through JSON."""
    clips: list[sets.EvalClip] = make_clips(2)
    result = ev.evaluate_model(Collapsed(PcmCodec()), clips, EVAL, NO_LIMITER)
    record = report.evaluation_record(result, eval_set_fingerprint="f" * 16, mlflow_run_id="r" * 32)
    return tp.cast(dict[str, tp.Any], json.loads(json.dumps(record)))


def test_the_record_module_and_the_gates_import_without_torch() -> None:
    for module in ("codec.evaluation.record", "codec.registry.gates"):
        run = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", f"import {module}"], capture_output=True, text=True, check=True
        )
        imported = [line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines()]
        assert not [m for m in imported if m.split(".")[0] == "torch"], module


def test_what_the_evaluate_stage_writes_reads_back_field_for_field(written: dict[str, tp.Any], tmp_path: Path) -> None:
    path = tmp_path / "evaluation.json"
    path.write_text(json.dumps(written))
    record = read_evaluation(path)
    assert record.source == str(path) and record.eval_set_fingerprint == "f" * 16
    assert record.mlflow_run_id == "r" * 32 and record.model_uri is None and record.model_id is None
    assert list(record.sets) == [HELD_OUT] and record.sets[HELD_OUT] is record.metrics
    m, top = record.metrics, written["metrics"]["kbps"]
    assert m.kbps == top == 320.0
    key = kbps_key(top)
    for codec, scores in (("ours", m.ours_at(top)), ("ours_no_side_info", m.no_side_at(top))):
        assert scores is not None
        on_disk = written["metrics"][codec][key]
        assert scores.snr_db == on_disk["snr_db"] and scores.pesq == on_disk["pesq"]
        assert scores.amplitude_ratio == on_disk["amplitude_ratio"]
        assert scores.effective_kbps == on_disk["effective_kbps"]
    # The side information brings the collapse back to the input's level; without it, 47 %.
    plain = m.no_side_at(top)
    assert plain is not None and plain.amplitude_ratio == pytest.approx(0.47, abs=1e-3)
    assert 0.97 <= m.ours_at(top).amplitude_ratio <= 1.03
    assert m.opus_at(top) == NOT_SCORED and math.isnan(m.opus_at(top).pesq)  # no Opus in this evaluation
    levels = m.levels_at(top)
    assert [lv.level for lv in levels] == [level_key(-40.0), level_key(-6.0)] == ["-40dBFS", "-6dBFS"]
    for lv in levels:
        on_disk = written["metrics"]["levels"][key][lv.level]
        assert lv.amplitude_ratio == on_disk["amplitude_ratio"]
        assert lv.worst_clip_level_error_db == on_disk["worst_clip_level_error_db"]
        assert lv.path("amplitude_ratio") == f"levels.320kbps.{lv.level}.amplitude_ratio"
    # The summary's worst input level is the rule's choice among the levels on disk.
    assert written["metrics"]["worst_level_amplitude_ratio"] == worst_amplitude(
        [lv.amplitude_ratio for lv in levels], float
    )


def test_a_record_written_before_sets_and_the_clip_gate_still_reads(written: dict[str, tp.Any]) -> None:
    old = json.loads(json.dumps(written))
    for by_level in old["metrics"]["levels"].values():
        for entry in by_level.values():
            del entry["worst_clip_level_error_db"]
    del old["metrics"]["ours_no_side_info"]
    record = evaluation_from_json(old)
    assert list(record.sets) == [HELD_OUT] and record.metrics.no_side_at(320.0) is None
    assert all(math.isnan(lv.worst_clip_level_error_db) for lv in record.metrics.levels)
    checked = {g.name: g for g in gates.check_set_gates(record, gates.PromoteParams())}
    # Not measured is the worst there is: the per-clip level gate fails; no model amplitude gate.
    assert not checked["clip_level_error_db"].passed and checked["clip_level_error_db"].value == math.inf
    assert "model_amplitude_ratio" not in checked
    # With sets: each set's metrics, in the file's order.
    both = {**written, "sets": {"held_out": {"metrics": written["metrics"]}, "telephone": {"metrics": old["metrics"]}}}
    assert list(evaluation_from_json(both).sets) == ["held_out", "telephone"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("metrics"), "metrics is missing"),
        (lambda d: d.pop("eval_set_fingerprint"), "eval_set_fingerprint is missing"),
        (lambda d: d["metrics"].update(ours=[1, 2]), "metrics.ours must be a JSON object, not list"),
        (lambda d: d["metrics"].update(kbps="top"), "metrics.kbps must be the top bitrate, a number"),
        (
            lambda d: d["metrics"]["levels"]["320kbps"].update({"-6dBFS": 0.5}),
            r"metrics.levels.320kbps.-6dBFS must be a JSON object, not float",
        ),
        (lambda d: d.update(sets={"telephone": []}), "sets.telephone must be a JSON object, not list"),
        (lambda d: d.update(mlflow_run_id=7), "mlflow_run_id must be a non-empty string or null"),
    ],
)
def test_a_malformed_record_names_the_file_and_the_key(
    written: dict[str, tp.Any], tmp_path: Path, change: tp.Callable[[dict[str, tp.Any]], object], message: str
) -> None:
    data = json.loads(json.dumps(written))
    change(data)
    path = tmp_path / "evaluation.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))}: {message}; .*re-run"):
        read_evaluation(path)


def test_codec_promote_on_a_bad_evaluation_json_is_a_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("promote: {}\n")
    for content, said in [
        (None, "evaluation.json not found; run codec evaluate first"),
        ("{not json", "evaluation.json is not valid JSON"),
        ('{"eval_set_fingerprint": "x"}', "evaluation.json: metrics is missing"),
    ]:
        if content is not None:
            (tmp_path / "evaluation.json").write_text(content)
        argv = ["promote", "--evaluation", "evaluation.json", "--out", "promotion.json", "--params", "params.yaml"]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err
    assert not (tmp_path / "promotion.json").exists()


def test_the_rules() -> None:
    assert [kbps_key(k) for k in (6.0, 1.5, 320.0, 0.75)] == ["6kbps", "1.5kbps", "320kbps", "0.75kbps"]
    assert level_key(-40.0) == "-40dBFS" and level_key(-6.5) == "-6.5dBFS"
    # Farthest from 1.0 on a log scale: 0.5 (-6.0 dB) is farther than 1.9 (+5.6 dB); ties keep the first.
    assert worst_amplitude([1.9, 0.5, 1.0], float) == 0.5
    assert worst_amplitude([2.0, 0.5], float) == 2.0
    # A ratio that is not one (NaN, zero, infinite) is the farthest there is.
    assert math.isnan(worst_amplitude([0.1, math.nan, 0.0], float))
    assert worst_amplitude([("a", 1.05), ("b", 0.0)], lambda c: c[1]) == ("b", 0.0)
    assert clip_level_error_db(0.5, 1.0) == pytest.approx(6.0206, abs=1e-4)
    assert clip_level_error_db(0.9, 1.2) == pytest.approx(20 * math.log10(1.2))
    assert clip_level_error_db(math.nan, 1.0) == math.inf and clip_level_error_db(0.0, 1.0) == math.inf
