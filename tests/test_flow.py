"""The Prefect flow: real DVC stages in a scratch repo, against a real (temporary) Prefect API.

The expensive part is one run of the data stages on a 24-utterance corpus; the other
flow tests reuse that repository (the retry test finds it up to date, the peak test
works on a copy and re-runs only normalize and validate).
"""

from __future__ import annotations

import ast
import contextvars
import inspect
import json
import shutil
import threading
import time
import typing as tp
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
import zc.lockfile
from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    TaskRunFilter,
    TaskRunFilterState,
    TaskRunFilterStateName,
)
from prefect.client.schemas.objects import TaskRun
from prefect.states import Completed, Failed, State
from prefect.testing.utilities import prefect_test_harness

from flows import artifacts as art
from flows.dvc_stages import (
    DataQualityFailure,
    GateFailure,
    PipelineConfigError,
    StageInfo,
    StageRefused,
    TransientStageError,
    classify_failure,
    pipeline_stages,
)
from flows.pipeline import codec_pipeline, is_transient, select_stages
from tests.conftest import REPO, make_dvc_repo

TINY = {
    "ingest.corpus.n_utterances": 24,
    "ingest.workers": 2,
    "normalize.workers": 2,
    "validate.min_files": 10,
}

EVAL_CSV = """bitrate_kbps,codec,snr_db,amplitude_ratio,mel_distance,pesq,stoi
6.0,ours,9.1,0.98,0.91,2.61,0.88
6.0,opus,7.4,1.0,1.12,2.35,0.86
1.5,ours,4.2,0.97,1.35,1.72,0.79
1.5,opus,,,,,
"""
PROMOTION = {
    "model_name": "telugu-speech-codec",
    "version": "3",
    "decision": "champion",
    "alias": "champion",
    "all_gates_passed": True,
    "failed_gates": [],
    "reasons": ["every gate passed; there was no champion"],
    "bitrate": "6kbps",
    "gates": [
        {
            "name": "min_snr_db",
            "metric": "ours.6kbps.snr_db",
            "value": 9.1,
            "limit": 5.0,
            "rule": ">= 5",
            "passed": True,
        },
        {
            "name": "amplitude_ratio",
            "metric": "ours.6kbps.amplitude_ratio",
            "value": 0.98,
            "limit": [0.9, 1.1],
            "rule": "within [0.9, 1.1]",
            "passed": True,
        },
    ],
    "comparison": {"metric": "mel_distance", "direction": "lower", "source": "no champion yet"},
    "mlflow_run_id": "0f1e2d3c4b5a",
    "model_uri": "models:/m-1",
    "eval_set_fingerprint": "abc",
    "git_commit": None,
    "data_version": None,
}


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """A temporary Prefect server and database for the whole session (several seconds to start)."""
    with prefect_test_harness(server_startup_timeout=120):
        yield


class Run(tp.NamedTuple):
    repo: Path
    state: State[tp.Any]


def flow_run_id(state: State[tp.Any]) -> uuid.UUID:
    fid = state.state_details.flow_run_id
    assert fid is not None
    return fid


def task_runs(state: State[tp.Any]) -> list[TaskRun]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id(state)])))
    return sorted(runs, key=lambda r: (r.start_time or r.expected_start_time or 0, r.name))


def artifacts(state: State[tp.Any]) -> dict[str, tp.Any]:
    """The run's artifacts by key: tables as lists of dicts, Markdown as text."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id(state)]))
        )
    out: dict[str, tp.Any] = {}
    for a in found:
        if a.key is None:  # the stored result of a failed run, not one of ours
            continue
        out[a.key] = json.loads(a.data) if a.type == "table" and isinstance(a.data, str) else a.data
    return out


@pytest.fixture(scope="module")
def data_run(prefect_api: None, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The flow, end to end up to validate, on the tiny corpus in a fresh git + DVC repo."""
    repo = make_dvc_repo(tmp_path_factory.mktemp("flow") / "repo", TINY)
    (repo / "reports" / "evaluate").mkdir(parents=True)
    (repo / "reports" / "evaluate" / "bitrates.csv").write_text(EVAL_CSV)
    (repo / "reports" / "promote").mkdir(parents=True)
    (repo / "reports" / "promote" / "promotion.json").write_text(json.dumps(PROMOTION))
    state = codec_pipeline(
        repo=str(repo),
        until="validate",
        retry_delay_s=1,
        evaluation_table="reports/evaluate/bitrates.csv",
        promotion_file="reports/promote/promotion.json",
        return_state=True,
    )
    return Run(repo, state)


# ---------------------------------------------------------------- the flow, for real


@pytest.mark.slow
def test_flow_runs_the_data_stages_and_publishes_the_artifacts(data_run: Run) -> None:
    assert data_run.state.is_completed(), data_run.state.message
    arts = artifacts(data_run.state)
    assert {art.KEY_DATA_QUALITY, art.KEY_EVALUATION, art.KEY_PROMOTION, art.KEY_RUN} <= set(arts)

    dq = {row["check"]: row for row in arts[art.KEY_DATA_QUALITY]}
    spread = dq["RMS spread, std (dB)"]
    assert spread["raw"] > 5  # the field-level spread the corpus arrives with ...
    assert spread["normalized"] < 1.5 and spread["result"] == "pass"  # ... gone after normalization
    assert spread["limit"] == "std <= 1.5 dB"
    assert abs(dq["loudness mean (LUFS)"]["normalized"] - (-16.0)) < 0.1
    assert dq["loudness spread, std (LU)"]["raw"] > 5 > dq["loudness spread, std (LU)"]["normalized"]
    assert dq["files"]["raw"] == dq["files"]["normalized"] == 24
    assert dq["expectation: rms_spread"]["result"] == "pass"
    summary = json.loads((data_run.repo / "reports" / "validate" / "summary.json").read_text())
    assert spread["normalized"] == round(summary["normalized"]["rms_dbfs_std"], 3)

    ev = arts[art.KEY_EVALUATION]
    assert [(r["bitrate_kbps"], r["codec"]) for r in ev] == [(1.5, "opus"), (1.5, "ours"), (6.0, "opus"), (6.0, "ours")]
    assert ev[3]["pesq"] == 2.61 and ev[2]["mel_distance"] == 1.12
    promo = arts[art.KEY_PROMOTION]
    assert "**champion**" in promo and "version **3**" in promo and "`0f1e2d3c4b5a`" in promo
    assert "| amplitude_ratio | yes | 0.98 | within [0.9, 1.1] |" in promo
    assert "| validate | ran |" in arts[art.KEY_RUN]

    lock = yaml.safe_load((data_run.repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"corpus", "ingest", "normalize", "validate"}  # DVC recorded every stage


@pytest.mark.slow
def test_the_flow_tasks_are_the_dvc_stages_in_order(data_run: Run) -> None:
    declared = list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
    found = [s.name for s in pipeline_stages(data_run.repo)]
    assert sorted(found) == sorted(declared)  # the whole list, whatever stages dvc.yaml has now
    assert found[: found.index("validate") + 1] == ["corpus", "ingest", "normalize", "validate"]
    runs = task_runs(data_run.state)
    assert [r.name for r in runs] == ["corpus", "ingest", "normalize", "validate"]
    assert all(r.run_count == 1 for r in runs)


def test_no_stage_logic_in_flows() -> None:
    """flows/ orchestrates: it imports no audio, array or ML library and no stage module (only
    the errors it maps to exit codes, the params file reader its overrides share with the
    stages, and the schema of the promotion record it shows)."""
    allowed = {"__future__", "argparse", "csv", "dataclasses", "json", "math", "os", "re", "subprocess", "sys"}
    allowed |= {"time", "typing", "collections", "pathlib", "yaml", "prefect", "dvc", "networkx", "flows"}
    allowed |= {"shutil", "tempfile", "functools"}
    for path in sorted((REPO / "flows").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                ok = name.split(".")[0] in allowed or name in ("codec.errors", "codec.params", "codec.registry.record")
                assert ok, f"{path.name} imports {name}"


@pytest.mark.slow
def test_transient_failure_is_retried_and_the_run_completes(data_run: Run) -> None:
    """Another DVC process holds the repository lock: the first stage fails, is retried, and the run completes."""
    lock = zc.lockfile.LockFile(str(data_run.repo / ".dvc" / "tmp" / "lock"))  # what a running `dvc` holds
    released = threading.Event()

    def release_after_first_retry() -> None:
        # Holds the lock until Prefect has recorded a retry, so the test does not depend on timing.
        try:
            with get_client(sync_client=True) as client:
                deadline = time.monotonic() + 120
                waiting = TaskRunFilterStateName(any_=["AwaitingRetry", "Retrying"])
                while time.monotonic() < deadline:
                    if client.read_task_runs(task_run_filter=TaskRunFilter(state=TaskRunFilterState(name=waiting))):
                        break
                    time.sleep(0.2)
        finally:
            lock.close()
            released.set()

    ctx = contextvars.copy_context()  # the harness's API URL lives in a context variable
    watcher = threading.Thread(target=ctx.run, args=(release_after_first_retry,), daemon=True)
    watcher.start()
    try:
        state = codec_pipeline(repo=str(data_run.repo), until="ingest", retries=2, retry_delay_s=1, return_state=True)
    finally:
        watcher.join(timeout=150)
    assert released.is_set()
    assert state.is_completed(), state.message
    runs = {r.name: r for r in task_runs(state)}
    assert runs["corpus"].run_count == 2  # failed on the lock, then succeeded
    assert runs["ingest"].run_count == 1  # and the run went on
    arts = artifacts(state)
    # Stages this run did not reach get an artifact that says so, not an earlier run's report.
    assert "`validate` was not part of this run" in arts[art.KEY_DATA_QUALITY]
    assert "`promote` was not part of this run" in arts[art.KEY_PROMOTION]


@pytest.mark.slow
def test_peak_mode_fails_at_validation_naming_rms_spread(data_run: Run, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(data_run.repo, repo, symlinks=True)
    state = codec_pipeline(
        repo=str(repo), set_params={"normalize.mode": "peak"}, until="validate", retry_delay_s=1, return_state=True
    )
    assert state.is_failed()
    assert state.message is not None and "rms_spread" in state.message
    assert "data-quality gate failed" in state.message and "limit std <= 1.5 dB" in state.message
    with pytest.raises(DataQualityFailure):
        state.result()
    runs = {r.name: r for r in task_runs(state)}
    assert runs["validate"].state_type is not None and runs["validate"].state_type.value == "FAILED"
    assert runs["validate"].run_count == 1  # a refused gate is not retried
    # The task's state says which gate stopped it; the run's (above) adds the failed expectations.
    assert runs["validate"].state is not None and "data-quality gate failed" in (runs["validate"].state.message or "")
    dq = {row["check"]: row for row in artifacts(state)[art.KEY_DATA_QUALITY]}
    assert dq["expectation: rms_spread"]["result"] == "FAIL" and dq["expectation: rms_spread"]["normalized"] > 1.5
    assert dq["expectation: rms_spread"]["worst_files"]
    # params.yaml says what the outputs were made with, as after `dvc exp run -S`.
    assert yaml.safe_load((repo / "params.yaml").read_text())["normalize"]["mode"] == "peak"
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert lock["stages"]["normalize"]["params"]["params.yaml"]["normalize"]["mode"] == "peak"


def flow_logs(fid: uuid.UUID) -> list[str]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        return [e.message for e in client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[fid])))]


@pytest.mark.slow
def test_a_run_failing_at_validate_publishes_no_report_of_another_run(
    data_run: Run, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The whole pipeline (not --until validate) with the peak bug: the run stops at validate, so
    evaluate and promote are not reached. reports/ still holds an earlier run's evaluation table
    and promotion.json (data_run's, published by it): this run's evaluation and promotion
    artifacts carry none of their content, and name the flow run the last ones came from as
    stale. The gate's verdict is said once, without a traceback (issue 26)."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    from flows.pipeline import main

    repo = tmp_path / "repo"
    shutil.copytree(data_run.repo, repo, symlinks=True)
    assert (repo / "reports/evaluate/bitrates.csv").is_file() and (repo / "reports/promote/promotion.json").is_file()
    code = main(["run", "--repo", str(repo), "--set", "normalize.mode=peak", "--retry-delay", "1"])
    assert code == 3
    with get_client(sync_client=True) as client:
        latest = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["codec-pipeline"])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )[0]
    assert latest.state is not None and latest.state.is_failed()
    assert "rms_spread (observed" in (latest.state.message or "")
    this = latest.id
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[this])))
    arts = {a.key: a for a in found if a.key}
    dq = arts[art.KEY_DATA_QUALITY]
    assert dq.type == "table" and "rms_spread" in str(dq.data)  # validate's own report: this run's
    for key in (art.KEY_EVALUATION, art.KEY_PROMOTION):
        a = arts[key]
        text = str(a.data)
        assert a.type == "markdown", (key, a.type)  # a note, not the earlier run's table
        assert "0f1e2d3c4b5a" not in text and "champion" not in text and "2.61" not in text, text
        assert "was not reached" in text and "**stale**" in text, text
        # The note names the flow run the last real report came from; that run is not this one
        # and it did publish that report under this key.
        import re

        named = re.search(r"\(([0-9a-f-]{36})\)", text)
        assert named is not None, text
        other = uuid.UUID(named.group(1))
        assert other != this
        with get_client(sync_client=True) as client:
            theirs = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[other]))
            )
        assert any(
            (t.key == key and t.type != "markdown") or "Promotion decision" in (t.description or "") for t in theirs
        )
    summary = str(arts[art.KEY_RUN].data)
    assert "| validate | **FAILED** |" in summary and "| evaluate | not run |" in summary

    # Said once, no traceback: in the run's logs (what the UI shows) and on the terminal.
    logs = flow_logs(this)
    assert not [m for m in logs if "Traceback" in m or "Encountered exception" in m]
    # At most once (the run's final state, above; Prefect may send that log line after the run ends).
    assert len([m for m in logs if "rms_spread (observed" in m]) <= 1, [m for m in logs if "rms_spread" in m]
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert err.count("rms_spread (observed") <= 1, err[-3000:]


def test_data_quality_cells_do_not_render_as_markdown_blocks() -> None:
    summary = {
        "raw": {"files": 24},
        "normalized": {"files": 24},
        "expectations": {
            "min_files": {"success": True, "observed": 24, "limit": ">= 20 files", "worst_files": ["a_b__c"]},
            "rms_spread": {"success": True, "observed": 0.4, "limit": "std <= 1.5 dB", "worst_files": ["x*y.wav"]},
        },
    }
    rows = {r["check"]: r for r in art.data_quality_rows(summary)}
    assert rows["files"]["limit"] == "\\>= 20 files"  # renders ">= 20 files", not a block quote
    assert rows["expectation: rms_spread"]["limit"] == "std <= 1.5 dB"
    assert rows["expectation: rms_spread"]["worst_files"] == "x\\*y.wav"
    assert rows["expectation: min_files"]["worst_files"] == "a_b__c"
    assert art.md_cell("1. first") == "1\\. first" and art.md_cell("12.5 dB") == "12.5 dB"
    assert art.md_cell(-16.5) == -16.5 and art.md_cell(None) is None


# A short training of the demo model that writes a checkpoint every few steps (seconds on a CPU).
SHORT_TRAIN = {
    "train.steps": 120,
    "train.batch_size": 2,
    "train.segment_s": 0.2,
    "train.checkpoint_every": 10,
    "train.val_every": 1000,
    "train.val_clips": 2,
    "train.val_seconds": 0.5,
    "train.log_every": 10,
    "train.audio_samples": 1,
    "train.threads": 1,
    "train.progress": False,
}


def _kill_training_after(repo: Path, step: int, killed: dict[str, int]) -> None:
    """SIGKILL the ``codec train`` process running in ``repo`` once its checkpoint reaches ``step``
    (a preempted machine, an OOM kill: no chance to clean up)."""
    import psutil
    import torch

    ckpt = repo / "models" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if ckpt.is_file():
            try:
                at = int(torch.load(ckpt, weights_only=True, map_location="cpu")["step"])
            except Exception:  # being replaced right now: read it again
                at = -1
            if at >= step:
                for proc in psutil.process_iter(["cmdline", "cwd"]):
                    cmd = proc.info["cmdline"] or []
                    if proc.info["cwd"] == str(repo) and "train" in cmd and "--val-plots" in cmd:
                        proc.kill()
                        killed["at_checkpoint"] = at
                        return
        time.sleep(0.02)


@pytest.mark.slow
def test_training_killed_mid_run_is_retried_from_its_checkpoint_to_the_same_weights(
    data_run: Run, tmp_path: Path
) -> None:
    import torch

    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    for repo in (uninterrupted, interrupted):
        shutil.copytree(data_run.repo, repo, symlinks=True)
    state = codec_pipeline(
        repo=str(uninterrupted), set_params=SHORT_TRAIN, until="train", retry_delay_s=1, return_state=True
    )
    assert state.is_completed(), state.message

    killed: dict[str, int] = {}
    ctx = contextvars.copy_context()
    killer = threading.Thread(target=ctx.run, args=(_kill_training_after, interrupted, 30, killed), daemon=True)
    killer.start()
    state = codec_pipeline(
        repo=str(interrupted), set_params=SHORT_TRAIN, until="train", retries=2, retry_delay_s=1, return_state=True
    )
    killer.join(timeout=10)
    assert state.is_completed(), state.message
    assert 30 <= killed["at_checkpoint"] < SHORT_TRAIN["train.steps"]  # killed mid-run
    runs = {r.name: r for r in task_runs(state)}
    assert runs["train"].run_count == 2  # killed, then retried
    a = torch.load(uninterrupted / "models" / "codec.pt", weights_only=True)
    b = torch.load(interrupted / "models" / "codec.pt", weights_only=True)
    assert a["step"] == b["step"] == SHORT_TRAIN["train.steps"]
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k  # resumed, not restarted: the same weights
    # Same weights alone would not tell a resume from a restart (training is deterministic): the
    # retry's own log says it continued from the checkpoint the kill left.
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id(state)])))
    text = "\n".join(entry.message for entry in logs)
    assert "CODEC_TRAIN_RESUME=1: continuing the stopped run" in text, text[-3000:]


# ---------------------------------------------------------------- the pieces, without Prefect runs


def test_failures_are_classified_by_the_stage_exit_code() -> None:
    def dvc_output(code: int) -> list[str]:
        return [
            "Running stage 'validate':",
            "> codec validate --in data/normalized",
            "codec validate: error: data-quality gate failed: 1 expectation(s) not met",
            "  ✗ rms_spread [expect_column_stdev_to_be_between, column rms_dbfs]: observed 6.1, limit std <= 1.5 dB",
            "ERROR: failed to reproduce 'validate': failed to run: codec validate --in data/normalized, "
            f"exited with {code}",
        ]

    dq = classify_failure("validate", 255, dvc_output(3))
    assert isinstance(dq, DataQualityFailure) and not dq.transient and dq.exit_code == 3
    assert "rms_spread" in str(dq) and "ERROR: failed to reproduce" not in str(dq)
    assert isinstance(classify_failure("promote", 255, dvc_output(4)), GateFailure)
    assert isinstance(classify_failure("ingest", 255, dvc_output(2)), StageRefused)
    for code in (1, -9, 130):  # a traceback (OSError, database is locked), OOM-killed, interrupted
        assert isinstance(classify_failure("train", 255, dvc_output(code)), TransientStageError)
    busy = ["ERROR: Unable to acquire lock. Most likely another DVC process is running"]
    assert isinstance(classify_failure("ingest", 255, busy), TransientStageError)
    bad = ["ERROR: failed to reproduce 'ingest': dependency 'data/corpus' does not exist"]
    assert isinstance(classify_failure("ingest", 255, bad), PipelineConfigError)


def test_retry_condition_retries_only_transient_failures() -> None:
    def failed(exc: Exception) -> State[tp.Any]:
        return Failed(data=exc, message=str(exc))

    assert is_transient(None, tp.cast(TaskRun, None), failed(TransientStageError("ingest", 1, "boom")))
    assert is_transient(None, tp.cast(TaskRun, None), failed(OSError(5, "Input/output error")))
    assert not is_transient(None, tp.cast(TaskRun, None), failed(DataQualityFailure("validate", 3, "rms_spread")))
    assert not is_transient(None, tp.cast(TaskRun, None), failed(GateFailure("promote", 4, "min_pesq")))
    assert not is_transient(None, tp.cast(TaskRun, None), failed(ValueError("a bug")))
    assert not is_transient(None, tp.cast(TaskRun, None), Completed())


def test_stage_selection() -> None:
    stages = [StageInfo(n, "", (), (), ()) for n in ("corpus", "ingest", "normalize", "validate", "train")]
    assert [s.name for s in select_stages(stages, None, "normalize", [])] == ["corpus", "ingest", "normalize"]
    assert [s.name for s in select_stages(stages, ["validate", "ingest"], None, [])] == ["ingest", "validate"]
    with pytest.raises(ValueError, match="unknown stage"):
        select_stages(stages, None, "evaluat", [])


def test_report_paths_come_from_the_stages_declared_outputs(tmp_path: Path) -> None:
    evaluate = StageInfo(
        "evaluate",
        "codec evaluate",
        ("reports/evaluate/metrics.json", "reports/evaluate/bitrates.csv", "reports/evaluate/samples"),
        ("reports/evaluate/metrics.json",),
        ("reports/evaluate/bitrates.csv",),
    )
    assert art.evaluation_table_path(evaluate) == "reports/evaluate/bitrates.csv"
    assert art.evaluation_table_path(None) is None
    promote = StageInfo("promote", "codec promote", ("reports/promote/promotion.json",), (), ())
    assert art.promotion_path(promote) == "reports/promote/promotion.json"
    nested = tmp_path / "m.json"
    nested.write_text(json.dumps({"per_bitrate": {"6.0": {"ours": {"pesq": 2.6}, "opus": {"pesq": 2.3}}}}))
    assert art.evaluation_rows(nested) == [
        {"bitrate": 6.0, "codec": "opus", "pesq": 2.3},
        {"bitrate": 6.0, "codec": "ours", "pesq": 2.6},
    ]
    gate = {
        "name": "min_pesq",
        "metric": "ours.6kbps.pesq",
        "value": 1.3,
        "limit": 1.5,
        "rule": ">= 1.5",
        "passed": False,
    }
    failed = dict(PROMOTION, decision="rejected", alias=None, version=None, gates=[gate])
    text = art.promotion_markdown(failed, "promotion.json")  # type: ignore[arg-type]
    assert "**rejected**" in text and "| min_pesq | NO | 1.3 | >= 1.5 |" in text and "(none: rejected)" in text
    assert "not registered in `telugu-speech-codec` (rejected: the candidate stays a run)" in text
    assert "version **None**" not in text


def test_each_report_is_published_or_said_missing_or_not_run(prefect_api: None, tmp_path: Path) -> None:
    """publish_artifacts, per report: the report's artifact when it is there; a note when its
    stage was not part of the run (unless its path was given); a note when it is missing."""
    from prefect import flow

    from flows.pipeline import publish_artifacts

    stages = [
        StageInfo("validate", "codec validate", ("reports/validate/summary.json",), (), ()),
        StageInfo("evaluate", "codec evaluate", (), (), ("reports/evaluate/bitrates.csv",)),
        StageInfo("promote", "codec promote", ("reports/promote/promotion.json",), (), ()),
    ]
    (tmp_path / "reports/evaluate").mkdir(parents=True)
    (tmp_path / "reports/evaluate/bitrates.csv").write_text(EVAL_CSV)
    summary = {"success": True, "files": 24, "raw": {"rms_dbfs_std": 6.2}, "normalized": {"rms_dbfs_std": 0.4}}

    @flow
    def publish(promotion_file: str | None, in_run: list[str]) -> dict[str, tp.Any]:
        return publish_artifacts(tmp_path, stages, None, None, promotion_file, in_run=set(in_run))

    state = publish(None, ["validate", "evaluate"], return_state=True)
    assert state.result() == {}
    arts = artifacts(state)
    assert "`reports/validate/summary.json` does not exist yet. Run the data stages" in arts[art.KEY_DATA_QUALITY]
    assert [(r["bitrate_kbps"], r["codec"]) for r in arts[art.KEY_EVALUATION]][:2] == [(1.5, "opus"), (1.5, "ours")]
    assert "`promote` was not part of this run" in arts[art.KEY_PROMOTION]

    (tmp_path / "reports/validate/summary.json").parent.mkdir(parents=True)
    (tmp_path / "reports/validate/summary.json").write_text(json.dumps(summary))
    (tmp_path / "promotion.json").write_text(json.dumps(PROMOTION))
    state = publish("promotion.json", ["validate"], return_state=True)  # a given path is published
    assert state.result() == summary
    arts = artifacts(state)
    rms = {row["check"]: row for row in arts[art.KEY_DATA_QUALITY]}["RMS spread, std (dB)"]
    assert (rms["raw"], rms["normalized"]) == (6.2, 0.4)
    assert "`evaluate` was not part of this run" in arts[art.KEY_EVALUATION]
    assert "**champion**" in arts[art.KEY_PROMOTION] and "version **3**" in arts[art.KEY_PROMOTION]


def test_prefect_yaml_deploys_from_git_and_dvc_one_run_at_a_time() -> None:
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    steps = [next(iter(step)) for step in config["pull"]]
    assert steps[0] == "prefect.deployments.steps.git_clone"  # what is in git, not this machine's copy
    scripts = [next(iter(s.values())).get("script", "") for s in config["pull"]]
    assert any("make setup" in s for s in scripts) and any("dvc pull" in s for s in scripts)
    assert config["deployments"]
    for d in config["deployments"]:
        path, _, name = d["entrypoint"].partition(":")
        assert (REPO / path).is_file() and f"def {name}(" in (REPO / path).read_text()
        assert d["concurrency_limit"]["limit"] == 1
        assert set(d["parameters"]) <= set(inspect.signature(codec_pipeline.fn).parameters)


def test_a_profile_composes_params_yaml_as_dvc_exp_run_does(tmp_path: Path) -> None:
    """The flow's ``profile`` (the GPU deployment's ["train=gpu", "promote=gpu"]) writes what
    ``dvc exp run -S train=gpu -S promote=gpu`` composes from conf/; a choice that does not
    exist changes nothing and says which options there are."""
    from dvc.utils.hydra import compose_and_dump

    from flows.overrides import compose_profile
    from tests.conftest import run_cli

    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(REPO / "conf", repo / "conf")
    shutil.copy(REPO / "params.yaml", repo / "params.yaml")
    run_cli("git", "init", "-q", cwd=repo, check=True)
    run_cli("dvc", "init", "-q", cwd=repo, check=True)
    with pytest.raises(ValueError, match="Hydra composition is off"):
        compose_profile(repo, ["train=gpu"])
    run_cli("dvc", "config", "hydra.enabled", "true", cwd=repo, check=True)

    changed = compose_profile(repo, ["train=gpu", "promote=gpu"])
    assert changed["train.steps"] == (600, 40000) and changed["promote.gate_profile"] == ("cpu-demo", "gpu")
    assert not [k for k in changed if k.split(".")[0] not in ("train", "promote")]
    expected = tmp_path / "expected.yaml"
    compose_and_dump(expected, str(REPO / "conf"), None, "config", "", ["train=gpu", "promote=gpu"])
    assert (repo / "params.yaml").read_text() == expected.read_text()

    before = (repo / "params.yaml").read_text()
    options = r"train=tpu: refused: .*'train/tpu'.* options in 'train': cpu, frame, gpu, seed-recipe, waveform$"
    with pytest.raises(ValueError, match=options):
        compose_profile(repo, ["train=tpu"])
    assert (repo / "params.yaml").read_text() == before
