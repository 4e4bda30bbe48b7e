"""The registry under concurrency and kills, on real MLflow SQLite stores: two ``codec promote``
processes at once leave one champion that holds the alias; a ``kill -9`` between two registry
calls is reported by ``codec models`` and repaired by the next promotion; a rollback undoes only
its own changes; an unwritable ``--out`` or a run missing from the store is a message, before
the registry is touched."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import typing as tp
from pathlib import Path

import pytest
import yaml

from codec.cli import main as cli
from codec.cli import models
from codec.evaluation import evaluate as ev
from codec.evaluation import report, sets
from codec.registry import transaction
from codec.registry.consistency import problems, repair
from codec.tracking import MODEL_NAME
from tests import test_evaluate as te
from tests.test_evaluate import NO_LIMITER, PcmCodec, make_clips
from tests.test_promote import EVAL, GATES, promote, registry

mlflow_template = te.mlflow_template
mlflow_uri = te.mlflow_uri
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clips() -> list[sets.EvalClip]:
    return make_clips(2)


@pytest.fixture(scope="module")
def measured(clips: list[sets.EvalClip]) -> dict[float, tp.Any]:
    """Evaluation results of PcmCodec at two gains (1.0 beats 0.95 on mel distance)."""
    return {g: ev.evaluate_model(PcmCodec(gain=g), clips, EVAL, NO_LIMITER) for g in (1.0, 0.95)}


def record(uri: str, result: tp.Any, clips: list[sets.EvalClip]) -> dict[str, tp.Any]:
    """evaluation.json for ``result``, with a new run in the store at ``uri`` standing for its model."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(MODEL_NAME)
    with mlflow.start_run() as run:
        mlflow.log_metrics(report.flat_metrics(result))
    return report.evaluation_record(
        result,
        eval_set_fingerprint=sets.eval_set_fingerprint(clips, EVAL),
        mlflow_run_id=run.info.run_id,
        model_uri=f"runs:/{run.info.run_id}/codec",
        model_fingerprint="PcmCodec",
        params=dataclasses.asdict(EVAL),
        level_settings=dataclasses.asdict(NO_LIMITER),
    )


def write_params(folder: Path) -> None:
    (folder / "params.yaml").write_text(yaml.safe_dump({"promote": dataclasses.asdict(GATES)}))


def promote_args(evaluation: str, out: str) -> list[str]:
    return ["promote", "--evaluation", evaluation, "--out", out, "--params", "params.yaml"]


def invariant(uri: str) -> tuple[str, dict[str, dict[str, str]]]:
    """Assert: exactly one version is tagged champion, @champion is on it, nothing is pending."""
    from mlflow import MlflowClient

    aliases, versions = registry(uri)
    assert versions, "the registry is empty"
    champions = [v for v, t in versions.items() if t["decision"] == "champion"]
    assert champions == [aliases.get("champion")], (aliases, {v: t["decision"] for v, t in versions.items()})
    assert not [v for v, t in versions.items() if t["decision"] == "pending"]
    assert problems(MlflowClient(uri), MODEL_NAME) == []
    return champions[0], versions


# The steps of a registry transaction (codec.registry.transaction.register) a test stops a
# promotion at: right after one MlflowClient call (method, and an argument that picks the call;
# None: any call). The tests patch the client in the process under test; the code is as shipped.
STEPS: dict[str, tuple[str, str | None]] = {
    "version-created": ("create_model_version", None),
    "alias-set": ("set_registered_model_alias", None),
    "previous-retagged": ("set_model_version_tag", "replaced_by"),
}


def after_call(step: str, then: tp.Callable[[str], None]) -> tuple[str, tp.Callable[..., tp.Any]]:
    """(the MlflowClient method of ``step``, a stand-in that makes the real call and then calls
    ``then(step)``): to patch in with ``setattr(MlflowClient, *after_call(...))``."""
    from mlflow import MlflowClient

    method, arg = STEPS[step]
    real = getattr(MlflowClient, method)

    def call_then(self: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        out = real(self, *args, **kwargs)
        if arg is None or arg in args:
            then(step)
        return out

    return method, call_then


def pausing_at(step: str, seconds: float) -> str:
    """Python source that patches MlflowClient to pause ``seconds`` at ``step`` of this process's
    promotion, saying so on stderr: the start of a ``python -c`` program a test can ``kill -9``."""
    return "\n".join(
        [
            "import sys, time, typing as tp",
            f"STEPS = {STEPS!r}",
            inspect.getsource(after_call),
            "def pause(step):",
            "    print(f'codec promote: paused at {step}', file=sys.stderr, flush=True)",
            f"    time.sleep({seconds!r})",
            "from mlflow import MlflowClient",
            f"setattr(MlflowClient, *after_call({step!r}, pause))",
            "",
        ]
    )


# Each worker runs one promotion per store, starting together with the other worker (a file
# barrier), and stays inside the registry's critical section a while (paused a second after it
# created its version) so the two overlap: the race the lock must close, three times for one
# interpreter start-up each.
WORKER = (
    pausing_at("version-created", 1.0)
    + """
import os, sys, time
from pathlib import Path
from codec.cli.main import main
me = os.environ["WORKER"]
for store in map(Path, sys.argv[1:]):
    (store / f"ready-{me}").touch()
    give_up = time.monotonic() + 60
    while len(list(store.glob("ready-*"))) < 2:
        if time.monotonic() > give_up:
            sys.exit(f"{store.name}: the other worker never came (it died?)")
        time.sleep(0.002)
    os.chdir(store)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
    rc = main(["promote", "--evaluation", f"evaluation-{me}.json", "--out", f"promotion-{me}.json",
               "--params", "params.yaml"])
    print(f"{store.name}: exit {rc}", flush=True)
"""
)


def test_two_promotions_at_once_leave_one_champion_holding_the_alias(
    clips: list[sets.EvalClip], measured: dict[float, tp.Any], mlflow_template: Path, tmp_path: Path
) -> None:
    stores = []
    for trial in range(3):
        store = tmp_path / f"trial{trial}"
        store.mkdir()
        shutil.copy(mlflow_template, store / "mlflow.db")
        uri = f"sqlite:///{store / 'mlflow.db'}"
        for me in "ab":  # equal models, a first-ever promotion: the hardest case
            (store / f"evaluation-{me}.json").write_text(json.dumps(record(uri, measured[1.0], clips)))
        write_params(store)
        stores.append(store)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, *map(str, stores)],
            env={**os.environ, "WORKER": me},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me in "ab"
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0 and "Traceback" not in err, err
        assert out.count("exit 0") == 3, out + err
    assert any("waiting for the registry lock" in out for out, _ in outs), outs  # they did overlap
    for store in stores:
        champion, versions = invariant(f"sqlite:///{store / 'mlflow.db'}")
        assert len(versions) == 2
        other = next(v for v in versions if v != champion)
        # the other one lost the comparison (challenger) or was replaced by a strictly better twin
        assert versions[other]["decision"] in ("challenger", "former-champion"), versions[other]
        decisions = sorted(json.loads((store / f"promotion-{me}.json").read_text())["version"] for me in "ab")
        assert decisions == sorted(versions)


def test_kill_9_after_the_alias_moved_is_reported_and_repaired(
    clips: list[sets.EvalClip],
    measured: dict[float, tp.Any],
    tmp_path: Path,
    mlflow_uri: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    first = promote(client, record(mlflow_uri, measured[0.95], clips), GATES, tmp_path / "p1.json")
    assert first.decision == "champion"
    before = registry(mlflow_uri)
    (tmp_path / "evaluation.json").write_text(json.dumps(record(mlflow_uri, measured[1.0], clips)))
    write_params(tmp_path)

    # A better model's promotion, killed right after @champion moved to its (still pending) version.
    program = pausing_at("alias-set", 3600.0) + "from codec.cli.main import main\nsys.exit(main(sys.argv[1:]))\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", program, *promote_args("evaluation.json", "promotion.json")],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "paused at alias-set" in line:
            break
    else:
        proc.wait()
        pytest.fail("codec promote never paused between setting the alias and committing:\n" + "".join(seen))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    aliases, versions = registry(mlflow_uri)
    assert aliases == {"champion": "2"} and versions["2"]["decision"] == "pending"
    assert versions["1"]["decision"] == "champion"  # not yet retagged: it claims an alias it lost

    # codec models says what disagrees and what the next promotion does about it.
    assert models.run(argparse.Namespace(name=MODEL_NAME)) == 0
    shown = capsys.readouterr().out
    assert "version 2 is pending" in shown and "did not finish" in shown
    assert "@champion is on it (it was on version 1 before)" in shown
    assert "puts @champion back on version 1" in shown

    # The next promotion repairs first (and says so), then decides against the real champion.
    assert cli.main(promote_args("evaluation.json", "promotion.json")) == 0
    said = capsys.readouterr()
    assert "repaired: version 2 is pending" in said.out and "put @champion back on version 1" in said.out
    assert "Traceback" not in said.err
    champion, versions = invariant(mlflow_uri)
    assert champion == "3" and "2" not in versions
    assert versions["1"]["decision"] == "former-champion" and versions["1"]["replaced_by"] == "3"
    assert before[0] == {"champion": "1"}
    # Committed: the pending version's intent tag is gone, five tags say what it is.
    assert set(versions["3"]) == {"decision", "gates", "eval_set", "git_commit", "data_version"}


@pytest.mark.parametrize("step", ["version-created", "alias-set", "previous-retagged"])
def test_a_promotion_that_dies_at_any_step_is_undone_by_the_next_repair(
    step: str,
    clips: list[sets.EvalClip],
    measured: dict[float, tp.Any],
    tmp_path: Path,
    mlflow_uri: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same as a kill, in-process: the step raises something that skips the rollback."""
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    promote(client, record(mlflow_uri, measured[0.95], clips), GATES, tmp_path / "p1.json")
    before = registry(mlflow_uri)

    class Killed(BaseException):
        pass

    def die(at: str) -> None:
        raise Killed(at)

    with monkeypatch.context() as m:
        m.setattr(MlflowClient, *after_call(step, die))
        m.setattr(transaction, "rollback", lambda *a: [])  # a killed process undoes nothing
        with pytest.raises(Killed):
            promote(client, record(mlflow_uri, measured[1.0], clips), GATES, tmp_path / "p2.json")
    versions = registry(mlflow_uri)[1]
    assert versions["2"]["decision"] == "pending"  # never champion without the alias
    assert "pending" in [p.kind for p in problems(client, MODEL_NAME)]
    done = repair(client, MODEL_NAME, exclusive=True)
    assert done and done[0].startswith("repaired: version 2 is pending")
    assert registry(mlflow_uri) == before


def test_a_rollback_undoes_only_what_its_own_process_did(tmp_path: Path, mlflow_uri: str) -> None:
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    mlflow.set_experiment(MODEL_NAME)
    with mlflow.start_run() as run:
        pass
    rid, src = run.info.run_id, f"runs:/{run.info.run_id}/codec"

    def other_process_registers_then_we_fail(version: str) -> None:
        mv = client.create_model_version(MODEL_NAME, source=src, run_id=rid, tags={"decision": "champion"})
        client.set_registered_model_alias(MODEL_NAME, "champion", mv.version)
        raise OSError(28, "No space left on device")

    register_args: dict[str, tp.Any] = dict(
        source=src,
        run_id=rid,
        tags={"decision": "champion"},
        alias="champion",
        finish=other_process_registers_then_we_fail,
    )
    # This process creates the registered model, then fails after another one registered in it.
    with pytest.raises(OSError):
        transaction.register(client, MODEL_NAME, **register_args)
    aliases, versions = registry(mlflow_uri)
    assert list(versions) == ["2"] and aliases == {"champion": "2"}  # the other's version and alias stay

    # An alias that moved on since this process set it stays where the other process put it.
    with pytest.raises(OSError):
        transaction.register(client, MODEL_NAME, **register_args)
    aliases, versions = registry(mlflow_uri)
    assert sorted(versions) == ["2", "4"] and aliases == {"champion": "4"}
    assert versions["2"]["decision"] == "former-champion"  # replaced (by ours, undone; then by 4's process)


def test_unwritable_out_is_a_message_and_nothing_is_registered(
    clips: list[sets.EvalClip],
    measured: dict[float, tp.Any],
    tmp_path: Path,
    mlflow_uri: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "evaluation.json").write_text(json.dumps(record(mlflow_uri, measured[1.0], clips)))
    write_params(tmp_path)
    (tmp_path / "taken").mkdir()
    (tmp_path / "a-file").write_text("")
    outs = ["taken", "a-file/promotion.json"]
    if os.geteuid() != 0:  # root writes anywhere: a read-only folder only stops others
        (tmp_path / "locked").mkdir(mode=0o500)
        outs.append("locked/promotion.json")
    for out in outs:
        assert cli.main(promote_args("evaluation.json", out)) == 2
        err = capsys.readouterr().err
        assert f"--out {out}" in err and "nothing was registered" in err and "Traceback" not in err
    assert registry(mlflow_uri) == ({}, {})


@pytest.mark.parametrize("missing", ["run", "logged model"])
def test_a_run_or_logged_model_missing_from_the_store_is_a_message(
    missing: str,
    clips: list[sets.EvalClip],
    measured: dict[float, tp.Any],
    tmp_path: Path,
    mlflow_uri: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rec = record(mlflow_uri, measured[1.0], clips)
    if missing == "run":
        rec["mlflow_run_id"] = "0" * 32  # evaluated against another store
    else:
        rec.update(model_id="m-0123456789abcdef", model_uri="models:/m-0123456789abcdef")  # as codec evaluate
    (tmp_path / "evaluation.json").write_text(json.dumps(rec))
    write_params(tmp_path)
    assert cli.main(promote_args("evaluation.json", "promotion.json")) == 2
    err = capsys.readouterr().err
    assert f"names MLflow {missing}" in err and "nothing was registered" in err
    assert registry(mlflow_uri) == ({}, {}) and not (tmp_path / "promotion.json").exists()
