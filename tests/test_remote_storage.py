"""Team storage as docs/team_setup.md sets it up, against real servers on the loopback interface:
the data stages pushed to and pulled from a DVC remote on S3 (moto's S3-compatible server), and
train, evaluate, promote and load through an MLflow tracking server whose artifacts it proxies
into that S3 store. The doc's tested blocks are read from the doc and run as written, with only
their placeholders replaced, so the doc and the test cannot drift apart."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import time
import typing as tp
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import BIN, REPO, free_port, make_dvc_repo, run_cli, stop

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        any(importlib.util.find_spec(m) is None for m in ("moto", "boto3", "dvc_s3")),
        reason="needs moto[server], boto3 and dvc-s3 (the dev group: make setup)",
    ),
]

DOC = REPO / "docs" / "team_setup.md"
# moto accepts any credentials, but DVC and boto3 send none without them.
ACCESS_KEY_ID, SECRET_ACCESS_KEY = "team-access-key", "team-secret-key"
DATA_STAGES = ("corpus", "ingest", "normalize", "validate")
TINY_DATA = {"ingest.corpus.n_utterances": 12, "validate.min_files": 10, "ingest.workers": 2, "normalize.workers": 2}
CACHED_OUTS = ("data/corpus", "data/raw", "data/normalized")  # the data stages' outs that DVC caches and pushes


# --- the doc's tested blocks --------------------------------------------------------------------


def doc_lines(name: str, placeholders: tp.Mapping[str, str]) -> list[list[str]]:
    """The commands of the block marked ``<!-- tested: name -->`` in docs/team_setup.md, as argv
    lists, with ``placeholders`` replaced (in their order) and ``\\`` continuations joined."""
    found = re.search(rf"<!-- tested: {re.escape(name)} -->\n```bash\n(.*?)\n```", DOC.read_text(), re.S)
    assert found, f"{DOC} has no bash block marked '<!-- tested: {name} -->'"
    text = found.group(1).replace("\\\n", " ")
    for placeholder, value in placeholders.items():
        text = text.replace(placeholder, value)
    return [words for line in text.splitlines() if (words := shlex.split(line, comments=True))]


def doc_dvc_commands(name: str, placeholders: tp.Mapping[str, str]) -> list[list[str]]:
    """The ``dvc`` commands of a tested block; its other lines may only be what the test does its own way."""
    commands = doc_lines(name, placeholders)
    others = [" ".join(c) for c in commands if c[0] != "dvc"]
    assert all(o.startswith(("make setup", "git ")) for o in others), others
    return [c for c in commands if c[0] == "dvc"]


# --- servers --------------------------------------------------------------------------------------


def http_get(url: str, host: str | None = None) -> int:
    """The status of a GET to ``url`` (0: no answer), never through a proxy."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with opener.open(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


@contextlib.contextmanager
def running(
    argv: list[str], env: dict[str, str], ready_url: str, log: Path, timeout_s: float = 120.0
) -> tp.Iterator[None]:
    """Run ``argv`` in its own process group (cwd: ``log``'s folder) until ``ready_url`` answers
    200, and stop the whole group when the block ends, however it ends."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=log.parent, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout_s
        while http_get(ready_url) != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                state = (
                    f"exited with {proc.returncode}" if proc.poll() is not None else f"not ready in {timeout_s:.0f} s"
                )
                raise AssertionError(f"{' '.join(argv)}: {state}; its log ({log}):\n{log.read_text()[-4000:]}")
            time.sleep(0.2)
        yield
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> tp.Iterator[str]:
    """A local S3-compatible server (moto's server mode) on a free loopback port."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    argv = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with running(argv, os.environ.copy(), f"http://127.0.0.1:{port}/moto-api/", log):
        yield f"http://127.0.0.1:{port}"


def s3_client(endpoint: str) -> tp.Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        region_name="us-east-1",
    )


def bucket_objects(s3: tp.Any, bucket: str, prefix: str) -> dict[str, int]:
    """key -> size of every object under ``prefix``."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: int(o["Size"]) for page in pages for o in page.get("Contents", [])}


# What a developer's shell may hold that would make the tests pass without the doc's set-up.
INHERITED = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE")
INHERITED += ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL", "CODEC_REGISTRY_LOCK")


def no_credentials_here(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """This process and its children see no AWS credentials (no AWS_* variable, no ~/.aws, no
    instance metadata) and reach loopback without a proxy: what they need must come from the
    set-up the doc describes."""
    for var in INHERITED:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, ",".join(filter(None, [os.environ.get(var), "127.0.0.1", "localhost"])))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_hashes(root: Path, folders: tp.Iterable[str]) -> dict[str, str]:
    """relative path -> SHA-256 of every file under ``folders``."""
    return {
        p.relative_to(root).as_posix(): sha256(p) for f in folders for p in sorted((root / f).rglob("*")) if p.is_file()
    }


# --- DVC ------------------------------------------------------------------------------------------


def test_dvc_pushes_the_data_stages_to_s3_and_a_new_machine_pulls_them(
    tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_credentials_here(monkeypatch, tmp_path)
    repo = make_dvc_repo(tmp_path / "repo", TINY_DATA, stages=DATA_STAGES)
    run_cli("dvc", "repro", cwd=repo, check=True)
    produced = tree_hashes(repo, CACHED_OUTS)
    assert sum(p.startswith("data/normalized/") and p.endswith(".wav") for p in produced) == 12

    bucket = "team-data"
    s3 = s3_client(s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    placeholders = {
        "my-team-bucket": bucket,
        "https://minio.example.com:9000": s3_endpoint,
        "YOUR_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "YOUR_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
    }
    for block in ("dvc-s3-remote", "dvc-s3-credentials"):
        for argv in doc_dvc_commands(block, placeholders):
            run_cli(*argv, cwd=repo, check=True)
    # The committed config names the bucket and the endpoint; the keys are only in the git-ignored one.
    config = (repo / ".dvc" / "config").read_text()
    assert f"s3://{bucket}/telugu-codec/dvc" in config and s3_endpoint in config
    assert ACCESS_KEY_ID not in config and SECRET_ACCESS_KEY not in config
    assert SECRET_ACCESS_KEY in (repo / ".dvc" / "config.local").read_text()
    assert run_cli("git", "check-ignore", "-q", ".dvc/config.local", cwd=repo).returncode == 0

    pushed = [run_cli(*argv, cwd=repo, check=True) for argv in doc_dvc_commands("dvc-s3-push", placeholders)]
    assert [c[:2] for c in doc_dvc_commands("dvc-s3-push", placeholders)] == [["dvc", "push"], ["dvc", "status"]]
    assert "Cache and remote 'storage' are in sync." in pushed[-1].stdout, pushed[-1].stdout
    # Every file in the cache is an object in the bucket, under the same name (files/md5/xx/yyy), and
    # each file's bytes are there: its name is the MD5 of its content.
    cache = repo / ".dvc" / "cache"
    cached = {p.relative_to(cache).as_posix() for p in (cache / "files").rglob("*") if p.is_file()}
    prefix = "telugu-codec/dvc/"
    objects = {k.removeprefix(prefix) for k in bucket_objects(s3, bucket, prefix)}
    assert objects == cached and len(objects) > 3 * 12
    for key in objects:
        body = s3.get_object(Bucket=bucket, Key=prefix + key)["Body"].read()
        if not key.endswith(".dir"):
            assert hashlib.md5(body).hexdigest() == key.removeprefix("files/md5/").replace("/", ""), key

    # Lose the cache and the outputs: dvc pull brings back the same bytes, and nothing is out of date.
    shutil.rmtree(cache)
    for out in CACHED_OUTS:
        shutil.rmtree(repo / out)
    run_cli("dvc", "pull", cwd=repo, check=True)
    assert tree_hashes(repo, CACHED_OUTS) == produced
    assert "Data and pipelines are up to date." in run_cli("dvc", "status", cwd=repo, check=True).stdout

    # A new machine: a clone has the remote (committed) but no keys; the doc's block gives them and pulls.
    run_cli("git", "add", "-A", cwd=repo, check=True)
    run_cli("git", "commit", "-qm", "data stages and the team remote", cwd=repo, check=True)
    clone = tmp_path / "clone"
    run_cli("git", "clone", "-q", str(repo), str(clone), check=True)
    assert not (clone / ".dvc" / "config.local").exists() and not (clone / "data" / "normalized").exists()
    new_machine = [run_cli(*a, cwd=clone, check=True) for a in doc_dvc_commands("dvc-s3-new-machine", placeholders)]
    assert tree_hashes(clone, CACHED_OUTS) == produced
    assert "Data and pipelines are up to date." in new_machine[-1].stdout, new_machine[-1].stdout


# --- MLflow ---------------------------------------------------------------------------------------


def stage_args(module: tp.Any, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return tp.cast(argparse.Namespace, parser.parse_args(argv))


def tiny_pipeline_params() -> dict[str, tp.Any]:
    """Two training steps of the tiny model, the held-out set at one level, and gates that any
    finite result passes (this test is about where things are stored, not about quality)."""
    from tests.test_train import tiny_params

    return {
        "train": tiny_params(steps=2, val_every=2).to_dict(),
        "normalize": {"target_lufs": -16.0, "peak_ceiling_db": -1.0, "limiter_window_ms": 5.0},
        "evaluate": {
            "max_clips": 2,
            "seconds": 1.0,
            "levels_dbfs": [-16.0],
            "opus_modes": [],
            "audio_samples": 1,
            "threads": 1,
            "sets": ["held_out"],
        },
        "promote": {
            "gate_profile": "storage-test",
            "min_snr_db": -100.0,
            "amplitude_ratio_band": [0.01, 100.0],
            "model_amplitude_ratio_band": None,
            "max_clip_level_error_db": None,  # two steps: the decoder's own output is mostly its DC bias
            "min_pesq": 0.0,
            "max_mel_distance": 100.0,
        },
    }


def test_an_mlflow_server_with_artifacts_in_s3_tracks_registers_and_serves_the_model(
    tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    import torch
    from mlflow import MlflowClient

    from codec.evaluation import stage as evaluate_stage
    from codec.inference.model_source import load_model
    from codec.model.checkpoint import model_fingerprint
    from codec.registry import promote as promote_stage
    from codec.registry.lock import LOCK_ENV, lock_file
    from codec.tracking import CHAMPION, EXPERIMENT, MODEL_NAME, logged_model_id
    from codec.training import stage as train_stage
    from tests.synth import write_dataset

    no_credentials_here(monkeypatch, tmp_path)
    bucket = "team-mlflow"
    s3 = s3_client(s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    port = free_port()
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    placeholders = {
        "my-team-bucket": bucket,
        "https://minio.example.com:9000": s3_endpoint,
        "YOUR_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "YOUR_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "mlflow.example.com:5000": f"127.0.0.1:{port}",
        "--port 5000": f"--port {port}",
        "mlflow.example.com": "127.0.0.1",
        "0.0.0.0": "127.0.0.1",
    }
    # The doc's server: its exports go to the server's environment only; SQLite stands in for PostgreSQL.
    server_env = os.environ.copy()
    server_argv: list[str] = []
    for words in doc_lines("mlflow-server", placeholders):
        if words[0] == "export":
            server_env.update(w.split("=", 1) for w in words[1:])
        else:
            assert words[:2] == ["mlflow", "server"] and not server_argv, words
            server_argv = [re.sub(r"^postgresql://.*", f"sqlite:///{server_dir / 'mlflow.db'}", w) for w in words]
    assert f"s3://{bucket}/telugu-codec/mlartifacts" in server_argv and server_env["AWS_ACCESS_KEY_ID"] == ACCESS_KEY_ID
    # Two cores: one request worker and no GenAI job workers (docs/team_setup.md says why that is fine).
    server_argv += ["--workers", "1"]
    server_env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"

    work = tmp_path / "work"
    work.mkdir()
    torch_threads = torch.get_num_threads()
    with running(server_argv, server_env, f"http://127.0.0.1:{port}/health", server_dir / "server.log"):
        # The client: MLFLOW_TRACKING_URI from the doc, and nothing about S3 (no_credentials_here).
        for words in doc_lines("mlflow-client", placeholders):
            assert words[0] == "export", words
            for name, value in (w.split("=", 1) for w in words[1:]):
                monkeypatch.setenv(name, value)
        uri = f"http://127.0.0.1:{port}"
        assert os.environ["MLFLOW_TRACKING_URI"] == uri
        # --allowed-hosts: the name clients use is answered, others are refused (localhost too, once listed).
        api = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
        assert http_get(api) == 200 and http_get(api, host=f"localhost:{port}") == 403
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # fail in seconds, not minutes, if it dies
        assert lock_file(uri) is None  # no local file stands for a server's registry...
        lock = tmp_path / "shared" / "registry.lock"
        monkeypatch.setenv(LOCK_ENV, str(lock))  # ...so the doc's shared lock file does
        monkeypatch.chdir(work)
        data = write_dataset(work / "data" / "normalized", n_clips=12, seconds=1.0, seed=1)
        (work / "params.yaml").write_text(yaml.safe_dump(tiny_pipeline_params(), sort_keys=False))
        (work / ".gitignore").write_text("data/\nmodels/\nreports/\n")
        for argv in (
            ["init", "-q"],
            ["add", "-A"],
            ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
        ):
            run_cli("git", *argv, cwd=work, check=True)
        head = run_cli("git", "rev-parse", "HEAD", cwd=work, check=True).stdout.strip()
        torch.set_num_threads(1)
        try:
            # codec train, as dvc repro runs it.
            args = ["--data", str(data), "--out", "models", "--params", "params.yaml"]
            assert train_stage.run(stage_args(train_stage, args)) == 0
            local_ckpt = work / "models" / "codec.pt"

            # Read back through the server: params, metrics, artifacts.
            client = MlflowClient()
            exp = client.get_experiment_by_name(EXPERIMENT)
            assert exp is not None and exp.artifact_location.startswith("mlflow-artifacts:/")  # proxied
            (run,) = client.search_runs([exp.experiment_id], filter_string="tags.stage = 'train'")
            run_id = run.info.run_id
            assert run.info.status == "FINISHED" and run.data.params["steps"] == "2"
            assert run.data.params["model.n_codebooks"] == "12" and "val/snr_db" in run.data.metrics
            assert [m.step for m in client.get_metric_history(run_id, "loss/total")] == [1, 2]
            samples = {a.path for a in client.list_artifacts(run_id, "samples")}
            assert "samples/spectrograms.png" in samples and any(p.endswith("_input.wav") for p in samples)
            downloaded = Path(client.download_artifacts(run_id, "checkpoint/codec.pt", str(tmp_path)))
            assert sha256(downloaded) == sha256(local_ckpt)

            # codec evaluate: logs into the training run; codec promote: registers it, under the shared lock.
            reports = work / "reports"
            args = ["--model", str(local_ckpt), "--data", str(data), "--raw", str(data), "--params", "params.yaml"]
            args += ["--evaluation", str(reports / "evaluation.json"), "--media", str(reports / "media")]
            args += ["--metrics", str(reports / "metrics.json"), "--table", str(reports / "bitrates.csv")]
            args += ["--plot", str(reports / "vs_opus.csv"), "--report", str(reports / "report.md")]
            assert evaluate_stage.run(stage_args(evaluate_stage, args)) == 0
            record = json.loads((reports / "evaluation.json").read_text())
            assert record["mlflow_run_id"] == run_id and record["model_id"] == logged_model_id(run_id)
            args = ["--evaluation", str(reports / "evaluation.json"), "--raw", str(data), "--params", "params.yaml"]
            args += ["--out", str(reports / "promotion.json")]
            assert promote_stage.run(stage_args(promote_stage, args)) == 0
            promotion = json.loads((reports / "promotion.json").read_text())
            assert promotion["decision"] == "champion", promotion["reasons"]
            assert lock.read_text().startswith("codec promote, pid")
            version = promotion["version"]
            champion = client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
            assert str(champion.version) == version and champion.tags["decision"] == "champion"
            assert promotion["gate_profile"] == "storage-test"

            # What the MLflow UI shows first (issue 26): a few metrics grouped on '/', the commit as
            # MLflow's own source tag (the UI links it), the training data and the evaluation sets
            # as the run's datasets, a description with each stage's part.
            shown = client.get_run(run_id)
            keys = sorted(shown.data.metrics)
            assert len(keys) <= 60 and not [k for k in keys if "/" not in k or "." in k.split("/")[0]], keys
            assert shown.data.tags["mlflow.source.git.commit"] == head
            assert shown.data.tags["mlflow.source.name"] == "codec train"
            inputs = {d.dataset.name: d for d in shown.inputs.dataset_inputs}
            assert len(inputs) >= 2 and "held_out" in inputs
            note = shown.data.tags["mlflow.note.content"]
            assert [s in note for s in ("**Training.**", "**Evaluation.**", "**Promotion.**")] == [True] * 3

            # The registered model loads through the server, and it is the model trained here.
            trained = load_model(str(local_ckpt))
            for spec in (f"models:/{MODEL_NAME}/{version}", f"models:/{MODEL_NAME}@{CHAMPION}"):
                loaded = load_model(spec)
                assert f"version {version}, run {run_id}" in loaded.source
                assert model_fingerprint(loaded.model) == model_fingerprint(trained.model)
                assert loaded.target_lufs == trained.target_lufs
        finally:
            torch.set_num_threads(torch_threads)
            mlflow.set_tracking_uri(None)  # unset again (and MLFLOW_TRACKING_URI): not this dead server

    # The artifacts are objects in the bucket (the checkpoint's bytes included), none on local disks.
    prefix = f"telugu-codec/mlartifacts/{exp.experiment_id}/"
    objects = bucket_objects(s3, bucket, prefix)
    in_run = f"{prefix}{run_id}/artifacts/"
    for name in ("checkpoint/codec.pt", "samples/spectrograms.png", "train_params.json", "evaluation/report.md"):
        assert in_run + name in objects, (name, sorted(objects)[:20])
    stored = s3.get_object(Bucket=bucket, Key=in_run + "checkpoint/codec.pt")["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == sha256(local_ckpt)
    assert f"{prefix}models/{record['model_id']}/artifacts/MLmodel" in objects  # the logged served model
    for folder in (work, server_dir):
        assert not (folder / "mlruns").exists() and not (folder / "mlartifacts").exists()
