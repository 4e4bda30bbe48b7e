"""The promote stage on a real MLflow SQLite store: the seed's 0.47 collapse is rejected by
the amplitude gate, a good model becomes @champion, a worse one does not replace it, a
failure halfway leaves the registry as it was, and fail_on_gate exits 4."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import typing as tp
from pathlib import Path

import pytest
import yaml
from torch import nn

from codec.errors import GateError, UserError
from codec.evaluation import evaluate as ev
from codec.evaluation import params as ep
from codec.evaluation import report, sets, suite
from codec.evaluation.record import evaluation_from_json
from codec.model.checkpoint import save_checkpoint
from codec.model.serving import for_inference
from codec.registry import promote as pr
from codec.registry.record import read_promotion
from codec.registry.versions import format_table, rejected_runs, table
from codec.tracking import MODEL_NAME, model_id_of
from tests import test_evaluate as te
from tests.presets import tiny_codec
from tests.test_evaluate import NO_LIMITER, Collapsed, PcmCodec, make_clips, write_data

# The shared fixtures: a real MLflow store per test; one torch thread (conftest).
mlflow_template = te.mlflow_template
mlflow_uri = te.mlflow_uri
pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The per-clip level gate at 1 dB: the registry tests tell models apart by gains down to 0.93 (-0.6 dB).
GATES = pr.PromoteParams(min_snr_db=10.0, min_pesq=2.0, max_mel_distance=2.0, max_clip_level_error_db=1.0)
# The registry's mechanics, with models told apart by their decoder's gain: measured without
# the energy side information, which corrects a gain (tests/test_energy.py); the test below
# shows the gates with it on.
EVAL = ep.EvaluateParams(levels_dbfs=[-40.0, -6.0], opus_modes=[], seconds=1.5, sets=["held_out"], side_info=False)


@pytest.fixture(scope="module")
def clips() -> list[sets.EvalClip]:
    return make_clips(2)


def evaluated(model: nn.Module, clips: list[sets.EvalClip], params: ep.EvaluateParams = EVAL) -> dict[str, tp.Any]:
    """evaluation.json for ``model``, with a real MLflow run (and a logged model in it, as codec
    train and codec evaluate leave) standing for its training run."""
    import mlflow

    result = ev.evaluate_model(tp.cast(tp.Any, model), clips, params, NO_LIMITER)
    mlflow.set_experiment("telugu-speech-codec")
    with mlflow.start_run() as run:
        mlflow.log_metrics(report.flat_metrics(result))
        logged = mlflow.initialize_logged_model(name="codec", source_run_id=run.info.run_id)
    return report.evaluation_record(
        result,
        eval_set_fingerprint=suite.sets_fingerprint(suite.build_sets(clips, params), params),
        mlflow_run_id=run.info.run_id,
        model_uri=f"runs:/{run.info.run_id}/codec",
        model_id=logged.model_id,
        model_fingerprint=type(model).__name__,
        params=dataclasses.asdict(params),
        level_settings=dataclasses.asdict(NO_LIMITER),
    )


def promote(
    client: tp.Any, record: dict[str, tp.Any], params: pr.PromoteParams, out: Path, **kw: tp.Any
) -> pr.Promotion:
    """:func:`pr.promote` on ``record`` (evaluation.json as a dict), read as codec promote reads the file."""
    return pr.promote(client, evaluation_from_json(record), params, out, **kw)


def registry(uri: str, name: str = MODEL_NAME) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """(aliases, version -> tags) of the registered model; empty when it does not exist."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(uri)
    try:
        aliases = {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}
    except MlflowException:
        return {}, {}
    versions = {str(mv.version): dict(mv.tags) for mv in client.search_model_versions(f"name = '{name}'")}
    return aliases, versions


def test_collapse_is_rejected_good_becomes_champion_worse_stays_challenger(
    clips: list[sets.EvalClip], tmp_path: Path, mlflow_uri: str
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)

    # The seed's collapse: output at 47% of the input. The amplitude gate names it.
    seed = evaluated(Collapsed(PcmCodec()), clips)
    collapsed = promote(client, seed, GATES, tmp_path / "p1.json")
    doc = json.loads((tmp_path / "p1.json").read_text())
    assert collapsed.decision == doc["decision"] == "rejected" and doc["alias"] is None
    amp = next(g for g in doc["gates"] if g["name"] == "amplitude_ratio")
    assert amp["passed"] is False and amp["value"] == pytest.approx(0.47, abs=1e-3)
    assert amp["limit"] == [0.9, 1.1] and amp["metric"] == "ours.320kbps.amplitude_ratio"
    assert {"amplitude_ratio", "amplitude_ratio_at_-40dBFS", "amplitude_ratio_at_-6dBFS"} <= set(doc["failed_gates"])
    assert any("amplitude_ratio" in r and "0.47" in r for r in doc["reasons"])
    # Every clip 6.6 dB under its input level, at each bitrate and level of the sweep.
    clip = next(g for g in doc["gates"] if g["name"] == "clip_level_error_db")
    assert not clip["passed"] and clip["value"] == pytest.approx(-20 * math.log10(0.47), abs=0.02)
    assert clip["limit"] == 1.0 and clip["metric"].endswith(".worst_clip_level_error_db")
    # Rejected: no version; the candidate stays a run that says so.
    assert doc["version"] is None and registry(mlflow_uri) == ({}, {})
    run_tags = client.get_run(seed["mlflow_run_id"]).data.tags
    n_failed, n_gates = len(doc["failed_gates"]), len(doc["gates"])
    assert run_tags["decision"] == "rejected"
    assert run_tags["gates"].startswith(f"{n_failed} of {n_gates} default gates fail on 1 evaluation set at 320 kbps: ")
    assert "amplitude_ratio 0.47 (required within [0.9, 1.1])" in run_tags["gates"]

    # A good model: every gate passes and there is no champion.
    good = promote(client, evaluated(PcmCodec(), clips), GATES, tmp_path / "p2.json")
    assert good.decision == "champion" and good.all_gates_passed and good.version == "1"
    assert registry(mlflow_uri)[0] == {"champion": good.version}

    # A later, worse model (5% quieter: inside the amplitude band, mel distance 0.022 instead
    # of ~0): passes the gates, loses on the primary metric, so it is challenger.
    worse = promote(client, evaluated(PcmCodec(gain=0.95), clips), GATES, tmp_path / "p3.json")
    doc = json.loads((tmp_path / "p3.json").read_text())
    assert worse.decision == doc["decision"] == "challenger" and doc["all_gates_passed"]
    assert doc["comparison"]["champion_version"] == good.version
    assert doc["comparison"]["source"] == "its logged metric (same evaluation set)"
    assert doc["comparison"]["candidate"] > doc["comparison"]["champion"]  # mel distance: lower is better
    aliases, versions = registry(mlflow_uri)
    assert aliases == {"champion": good.version, "challenger": worse.version}
    # A handful of tags: the decision and where it came from. The numbers are metrics.
    fingerprint = doc["eval_set_fingerprint"]
    assert versions[good.version] == {
        "decision": "champion",
        "gates": f"all {n_gates} default gates pass on 1 evaluation set at 320 kbps",
        "eval_set": fingerprint,
        "git_commit": "",
        "data_version": "",
    }
    mv = client.get_model_version(MODEL_NAME, good.version)
    assert mv.description.endswith(": every default gate passed; there was no champion")  # why, in words
    assert mv.description.startswith("champion on 20")
    model_id = model_id_of(mv)
    assert model_id and mv.source == f"models:/{model_id}" and mv.run_id  # the logged model, and its run
    # The logged model lists the version made from it (its page in the MLflow UI shows it).
    assert json.loads(client.get_logged_model(model_id).tags["mlflow.modelVersions"]) == [
        {"name": MODEL_NAME, "version": good.version}
    ]
    metrics = {(m.key, m.dataset_name, m.dataset_digest): m.value for m in client.get_logged_model(model_id).metrics}
    assert metrics[("held_out/pesq_320kbps", "held_out", fingerprint)] == pytest.approx(
        doc_metrics(tmp_path / "p2.json", "pesq"), rel=1e-9
    )
    assert ("worst_set/mel_distance_320kbps", "worst_set", fingerprint) in metrics
    assert {key for key, _, _ in metrics} >= {
        f"held_out/{m}_320kbps" for m in ("snr_db", "amplitude_ratio", "mel_distance", "pesq", "stoi")
    }

    rows = table(client, MODEL_NAME)
    assert [(r["version"], r["aliases"], r["decision"], r["kbps"]) for r in rows] == [
        ("2", "challenger", "challenger", "320"),
        ("1", "champion", "champion", "320"),
    ]
    assert float(rows[1]["mel"]) < float(rows[0]["mel"]) and "mel" in format_table(rows)
    (rejected,) = rejected_runs(client)
    assert rejected["run"] == seed["mlflow_run_id"][:8] and "amplitude_ratio" in rejected["gates"]


def doc_metrics(path: Path, metric: str) -> float:
    """``metric`` of ours on the held-out set at the gate bitrate, from a promotion's evaluation."""
    doc = json.loads(path.read_text())
    return float(next(g["value"] for g in doc["gates"] if g["name"] == f"min_{metric}"))


def test_a_failure_halfway_leaves_the_registry_as_it_was(
    clips: list[sets.EvalClip], tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    blocked = tmp_path / "blocked.json"

    def disk_full(path: Path, text: str) -> None:  # the last step fails, after the registry changed
        if Path(path) == blocked:
            raise OSError(28, "No space left on device", str(path))
        Path(path).write_text(text)

    monkeypatch.setattr(pr, "write_text_atomic", disk_full)
    good = evaluated(PcmCodec(), clips)

    # No registered model before: none after.
    with pytest.raises(OSError):
        promote(client, good, GATES, blocked)
    assert registry(mlflow_uri) == ({}, {})

    # A champion and a challenger before; a better candidate fails halfway: both aliases stay.
    promote(client, evaluated(PcmCodec(gain=0.95), clips), GATES, tmp_path / "a.json")
    promote(client, evaluated(PcmCodec(gain=0.93), clips), GATES, tmp_path / "b.json")
    before = registry(mlflow_uri)
    assert before[0] == {"champion": "1", "challenger": "2"}
    with pytest.raises(OSError):
        promote(client, good, GATES, blocked)
    assert registry(mlflow_uri) == before


def test_fail_on_gate_exits_4_after_recording_the_decision(
    clips: list[sets.EvalClip], tmp_path: Path, mlflow_uri: str
) -> None:
    record = evaluated(Collapsed(PcmCodec()), clips)
    (tmp_path / "evaluation.json").write_text(json.dumps(record))
    section = {k: v for k, v in dataclasses.asdict(GATES).items()}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"promote": {**section, "fail_on_gate": True}}))
    parser = argparse.ArgumentParser()
    pr.add_arguments(parser)
    args = parser.parse_args(["--evaluation", "evaluation.json", "--out", "promotion.json", "--params", "params.yaml"])
    with pytest.raises(GateError, match=r"amplitude_ratio 0\.47") as caught:
        pr.run(args)
    assert caught.value.exit_code == 4
    doc = json.loads((tmp_path / "promotion.json").read_text())
    assert doc["decision"] == "rejected" and doc["version"] is None


def real_codec(clips: list[sets.EvalClip], seed: int = 3) -> nn.Module:
    """A real (untrained) codec that codes the clips into more than one code (see tiny_codec)."""
    return tiny_codec([c.audio[: c.sample_rate] for c in clips], seed=seed)


OPEN_GATES = pr.PromoteParams(
    min_snr_db=-100.0,
    amplitude_ratio_band=[1e-6, 1e6],
    amplitude_band_at_every_level=False,
    min_pesq=0.0,
    max_mel_distance=100.0,
    max_clip_level_error_db=None,
)


def registered_checkpoint(
    model: nn.Module, record: dict[str, tp.Any], folder: Path, payload: bytes | None = None
) -> None:
    """Log ``model`` into the record's run the way codec train does (``checkpoint/codec.pt``, weights
    only), or ``payload`` as that file, and point the record's ``model_uri`` at it."""
    import mlflow

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "codec.pt"
    if payload is None:
        save_checkpoint(path, model)
    else:
        path.write_bytes(payload)
    with mlflow.start_run(run_id=record["mlflow_run_id"]):
        mlflow.log_artifact(str(path), "checkpoint")
    record.update(model_id=None, model_uri=f"runs:/{record['mlflow_run_id']}/checkpoint")


def test_a_champion_from_another_evaluation_set_is_re_evaluated_on_this_one(
    clips: list[sets.EvalClip], tmp_path: Path, mlflow_uri: str
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    raw, _ = write_data(tmp_path / "data", clips)
    # The champion: a real codec measured on 1.0 s of each clip, registered as codec train logs it.
    trained = real_codec(clips)
    champion = for_inference(trained)
    old = evaluated(champion, clips, dataclasses.replace(EVAL, seconds=1.0))
    registered_checkpoint(trained, old, tmp_path / "old")
    assert promote(client, old, OPEN_GATES, tmp_path / "a.json").decision == "champion"

    # The candidate is measured on the full 1.5 s: the champion's tags don't apply, so the stage
    # loads the champion's weights-only checkpoint and measures it on the candidate's clips.
    candidate = real_codec(clips, seed=4)
    new = evaluated(for_inference(candidate), clips)
    registered_checkpoint(candidate, new, tmp_path / "new")
    assert new["eval_set_fingerprint"] != old["eval_set_fingerprint"]
    p = promote(
        client,
        new,
        OPEN_GATES,
        tmp_path / "b.json",
        re_evaluate=pr.champion_re_evaluator(evaluation_from_json(new), raw),
    )
    assert p.comparison.source == "re-evaluated on this evaluation set", p.comparison.note
    kbps = max(champion.config.bitrates_kbps)
    expected = ev.evaluate_model(champion, clips, EVAL, NO_LIMITER, bitrates_kbps=[kbps], sweep=False, opus=False)
    assert p.comparison.champion == pytest.approx(expected.row("ours", kbps).metrics["mel_distance"], rel=1e-6)
    beats = p.comparison.candidate < p.comparison.champion
    assert p.decision == ("champion" if beats else "challenger")
    assert read_promotion(tmp_path / "b.json")["comparison"]["champion"] == pytest.approx(p.comparison.champion)


class _Payload:
    """Unpickling this runs ``open(path, "w")``: what a tampered registry artifact would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[tp.Any, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_a_tampered_champion_artifact_is_never_executed(
    clips: list[sets.EvalClip], tmp_path: Path, mlflow_uri: str
) -> None:
    import pickle

    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    raw, _ = write_data(tmp_path / "data", clips)
    champion = for_inference(real_codec(clips))
    old = evaluated(champion, clips, dataclasses.replace(EVAL, seconds=1.0))
    marker = tmp_path / "pwned"
    registered_checkpoint(champion, old, tmp_path / "old", payload=pickle.dumps({"model": _Payload(marker)}))
    assert promote(client, old, OPEN_GATES, tmp_path / "a.json").decision == "champion"

    new = evaluated(for_inference(real_codec(clips, seed=4)), clips)
    p = promote(
        client,
        new,
        OPEN_GATES,
        tmp_path / "b.json",
        re_evaluate=pr.champion_re_evaluator(evaluation_from_json(new), raw),
    )
    assert not marker.exists()
    # Not loadable, so not compared: the candidate cannot be shown to beat it.
    assert p.comparison.source == "not compared" and "not a readable codec checkpoint" in p.comparison.note
    assert p.decision == "challenger" and registry(mlflow_uri)[0] == {"champion": "1", "challenger": "2"}


def test_a_gate_failing_on_one_set_only_fails_the_promotion_and_names_that_set(
    clips: list[sets.EvalClip], tmp_path: Path, mlflow_uri: str
) -> None:
    from mlflow import MlflowClient

    record = evaluated(PcmCodec(), clips)
    held = record["metrics"]
    k = f"{held['kbps']:g}kbps"
    # The same model on a telephone channel: fine on the held-out set, PESQ far lower there.
    phone = json.loads(json.dumps(held))
    phone["ours"][k]["pesq"] = 1.05
    phone["levels"][k]["-6dBFS"]["amplitude_ratio"] = 0.62
    record["sets"] = {"held_out": {"metrics": held}, "telephone": {"metrics": phone}}
    gates = dataclasses.replace(
        OPEN_GATES, min_pesq=1.2, amplitude_ratio_band=[0.8, 1.25], amplitude_band_at_every_level=True
    )
    assert held["ours"][k]["pesq"] >= 1.2  # the held-out set alone would pass
    p = promote(MlflowClient(mlflow_uri), record, gates, tmp_path / "p.json")
    assert p.decision == "rejected"
    failed = sorted(g.name for g in p.gates if not g.passed)
    assert failed == ["telephone:amplitude_ratio_at_-6dBFS", "telephone:min_pesq"]
    saved = read_promotion(tmp_path / "p.json")
    assert saved["failed_gates"] == [g.name for g in p.gates if not g.passed]
    assert {g["eval_set"] for g in saved["gates"]} == {"held_out", "telephone"}
    assert saved["worst"]["amplitude_ratio"] == {"set": "telephone", "level": "-6dBFS", "value": 0.62}
    assert any("telephone:min_pesq" in r for r in saved["reasons"])
    # The worst failure first in the one-line summary on the run (no version is made).
    gates_tag = MlflowClient(mlflow_uri).get_run(record["mlflow_run_id"]).data.tags["gates"]
    assert gates_tag.startswith("2 of ") and "on 2 evaluation sets" in gates_tag
    assert gates_tag.index("telephone:amplitude_ratio_at_-6dBFS") < gates_tag.index("telephone:min_pesq")


def test_with_side_information_a_collapsed_decoder_is_still_rejected_on_its_own_amplitude(
    clips: list[sets.EvalClip], tmp_path: Path, mlflow_uri: str
) -> None:
    """The side information brings the seed's 47 % back to the input's level (what users
    hear), so the delivered amplitude passes; the model_amplitude_ratio gate, on the same
    clips without it, still refuses the model."""
    from mlflow import MlflowClient

    with_side = dataclasses.replace(EVAL, side_info=True)
    record = evaluated(Collapsed(PcmCodec()), clips, with_side)
    promote(MlflowClient(mlflow_uri), record, GATES, tmp_path / "p.json")
    doc = json.loads((tmp_path / "p.json").read_text())
    gates = {g["name"]: g for g in doc["gates"]}
    assert doc["decision"] == "rejected"
    assert gates["amplitude_ratio"]["passed"] and 0.97 <= gates["amplitude_ratio"]["value"] <= 1.03
    model = gates["model_amplitude_ratio"]
    assert not model["passed"] and model["value"] == pytest.approx(0.47, abs=1e-3)
    assert model["metric"] == "ours_no_side_info.320kbps.amplitude_ratio" and model["limit"] == [0.8, 1.25]
    assert doc["failed_gates"] == ["model_amplitude_ratio"]


def test_the_gates_are_named_in_the_decision_and_pesq_can_be_held_to_opus(
    clips: list[sets.EvalClip], tmp_path: Path, mlflow_uri: str
) -> None:
    """promote.gate_profile names the gates in promotion.json, the version's tags and the
    reasons; max_pesq_below_opus holds ours' PESQ to Opus' at the gate bitrate, and fails
    closed when Opus was not scored."""
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    record = evaluated(PcmCodec(), clips)
    k = f"{record['metrics']['kbps']:g}kbps"
    ours = record["metrics"]["ours"][k]["pesq"]
    demo = dataclasses.replace(OPEN_GATES, gate_profile="cpu-demo")

    strict = dataclasses.replace(demo, max_pesq_below_opus=0.0)
    p = promote(client, record, strict, tmp_path / "none.json")
    gate = next(g for g in p.gates if g.name == "pesq_vs_opus")
    assert p.decision == "rejected" and not gate.passed and "Opus not scored" in gate.rule

    record["metrics"]["opus"] = {k: {"pesq": ours + 0.3}}
    p = promote(client, record, dataclasses.replace(demo, max_pesq_below_opus=0.2), tmp_path / "behind.json")
    gate = next(g for g in p.gates if g.name == "pesq_vs_opus")
    assert p.decision == "rejected" and gate.value == pytest.approx(-0.3) and gate.limit == -0.2
    assert p.to_dict()["failed_gates"] == ["pesq_vs_opus"]

    p = promote(client, record, dataclasses.replace(demo, max_pesq_below_opus=0.5), tmp_path / "ok.json")
    saved = read_promotion(tmp_path / "ok.json")
    assert p.decision == saved["decision"] == "champion" and saved["gate_profile"] == "cpu-demo"
    assert saved["reasons"] == ["every cpu-demo gate passed; there was no champion"]
    _, tags = registry(mlflow_uri)
    assert tags[p.version]["gates"] == f"all {len(saved['gates'])} cpu-demo gates pass on 1 evaluation set at 320 kbps"


def test_stoi_can_be_held_to_opus(clips: list[sets.EvalClip], tmp_path: Path, mlflow_uri: str) -> None:
    """max_stoi_below_opus holds ours' STOI to Opus' at the gate bitrate on every set (the bar of
    issue 24: within 0.02), fails closed where Opus' STOI was not scored, and is off when null."""
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    record = evaluated(PcmCodec(), clips)
    k = f"{record['metrics']['kbps']:g}kbps"
    ours = record["metrics"]["ours"][k]["stoi"]
    demo = dataclasses.replace(OPEN_GATES, gate_profile="cpu-demo")
    p = promote(client, record, demo, tmp_path / "off.json")  # null: no such gate
    assert p.decision == "champion" and not any(g.name == "stoi_vs_opus" for g in p.gates)

    record["metrics"]["opus"] = {k: {"pesq": 1.0}}  # Opus' STOI not scored
    p = promote(client, record, dataclasses.replace(demo, max_stoi_below_opus=0.02), tmp_path / "none.json")
    gate = next(g for g in p.gates if g.name == "stoi_vs_opus")
    assert p.decision == "rejected" and not gate.passed and "Opus not scored" in gate.rule

    record["metrics"]["opus"] = {k: {"pesq": 1.0, "stoi": ours + 0.03}}
    p = promote(client, record, dataclasses.replace(demo, max_stoi_below_opus=0.02), tmp_path / "behind.json")
    gate = next(g for g in p.gates if g.name == "stoi_vs_opus")
    assert p.decision == "rejected" and gate.value == pytest.approx(-0.03) and gate.limit == -0.02
    assert gate.metric == f"ours.{k}.stoi - opus.{k}.stoi"
    assert p.to_dict()["failed_gates"] == ["stoi_vs_opus"]

    p = promote(client, record, dataclasses.replace(demo, max_stoi_below_opus=0.05), tmp_path / "ok.json")
    assert p.decision in ("champion", "challenger") and next(g for g in p.gates if g.name == "stoi_vs_opus").passed
    with pytest.raises(UserError, match=r"max_stoi_below_opus -0\.01 must be null or >= 0"):
        dataclasses.replace(demo, max_stoi_below_opus=-0.01).check("promote")


def test_a_rejected_promotion_prints_the_decision_first_in_at_most_15_lines(
    clips: list[sets.EvalClip], tmp_path: Path, mlflow_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """codec promote as DVC runs it: the decision on the first line, the worst failing gates (at
    most ten) and where the rest is, in at most 15 lines; --verbose prints every gate once (the
    reasons of a rejection are its gates: not printed again)."""
    record = evaluated(Collapsed(PcmCodec()), clips)
    # The collapse on three evaluation sets: 21 of 27 gates fail.
    record["sets"] = {name: {"metrics": record["metrics"]} for name in ("held_out", "telephone", "noise")}
    (tmp_path / "evaluation.json").write_text(json.dumps(record))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"promote": dataclasses.asdict(GATES)}))
    parser = argparse.ArgumentParser()
    pr.add_arguments(parser)
    argv = ["--evaluation", "evaluation.json", "--out", "promotion.json", "--params", "params.yaml"]

    assert pr.run(parser.parse_args(argv)) == 0
    lines = capsys.readouterr().out.splitlines()
    doc = json.loads((tmp_path / "promotion.json").read_text())
    n_failed, n_gates = len(doc["failed_gates"]), len(doc["gates"])
    assert n_gates == 27 and n_failed > pr.MAX_GATES
    assert len(lines) <= 15, "\n".join(lines)
    assert lines[0] == f"codec promote: rejected (default gates): {n_failed} of {n_gates} gates failed at 320 kbps"
    fails = [line for line in lines if line.startswith("  FAIL  ")]
    assert len(fails) <= 10 and not any(line.startswith("  pass ") or line.startswith("  gate ") for line in lines)
    # The worst first: every clip 6.6 dB under its level, 6.6 times the 1 dB allowed.
    assert "clip_level_error_db: 6.5" in fails[0]
    assert f"... and {n_failed - len(fails)} more failing gates" in lines[-2]
    assert "promotion.json" in lines[-1] and record["mlflow_run_id"] in lines[-1]

    assert pr.run(parser.parse_args([*argv, "--verbose"])) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("codec promote: rejected (default gates): ")
    gate_lines = [line for line in lines if line.startswith(("  pass  ", "  FAIL  "))]
    assert sorted(line.split()[1].rstrip(":") for line in gate_lines) == sorted(g["name"] for g in doc["gates"])
    for g in doc["gates"]:  # each gate once, in no other line either
        assert sum(f" {g['name']}:" in line for line in lines) == 1, g["name"]
