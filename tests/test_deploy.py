"""prefect.yaml for real: a local Prefect server, ``prefect deploy`` from the repository's own
prefect.yaml, and a process worker that runs the deployment: it clones the repository from
git, runs its pull steps (``make setup``, ``dvc pull``) and the flow's data stages.

The repository the worker clones is a scratch git + DVC repo holding the project's dvc.yaml,
params.yaml (the tiny corpus), flows/, codec/ and prefect.yaml as they are. One stand-in: its
Makefile's ``setup`` links the test's own environment instead of building one from the lock
(minutes, and the same lock), so the pull step that runs ``make setup`` is exercised, not the
install.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, free_port, make_dvc_repo, stop

BIN = Path(sys.executable).parent
TINY = {
    "ingest.corpus.n_utterances": 24,
    "ingest.workers": 2,
    "normalize.workers": 2,
    "validate.min_files": 10,
}
DATA_STAGES = ("corpus", "ingest", "normalize", "validate")


def api(url: str, path: str, body: dict | None = None, tries: int = 6) -> object:
    """One call to the server's REST API, retried the way Prefect's own client retries it.

    The server answers 503 when its SQLite database is busy (``is_client_retryable_exception``
    in prefect/server/api/server.py): with a worker polling and a flow run writing its states,
    that happens on a loaded 2-core machine, and every Prefect client retries it with backoff.
    """
    data = None if body is None else json.dumps(body).encode()
    for attempt in range(tries):
        req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as err:
            if err.code not in (429, 502, 503) or attempt == tries - 1:
                raise
            time.sleep(2**attempt)
    raise AssertionError("unreachable")


def prefect(env: dict[str, str], *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", *args], cwd=cwd, env=env, text=True, capture_output=True, timeout=timeout
    )
    said = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, f"prefect {' '.join(args)}: exit {proc.returncode}\n{said}"
    return proc


def source_repo(root: Path) -> Path:
    """The git repository the deployment clones (``main``), as a team's would be."""
    repo = make_dvc_repo(root, TINY, stages=DATA_STAGES)
    shutil.copytree(REPO / "flows", repo / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "prefect.yaml", repo / "prefect.yaml")
    (repo / "Makefile").write_text(f"setup:\n\tln -sfn {BIN.parent} .venv\n")
    (repo / ".gitignore").write_text(".venv\n")
    remote = root.parent / "dvc-remote"
    remote.mkdir()
    subprocess.run([str(BIN / "dvc"), "remote", "add", "-d", "storage", str(remote)], cwd=repo, check=True)
    for cmd in (["git", "checkout", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "pipeline"]):
        subprocess.run(cmd, cwd=repo, check=True)
    return repo


@pytest.mark.slow
def test_prefect_yaml_deploys_to_a_local_server_and_a_worker_runs_it_from_git(tmp_path: Path) -> None:
    repo = source_repo(tmp_path / "src")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "CODEC_GIT_URL": f"file://{repo}",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                api(url, "/health")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                assert time.monotonic() < deadline, "the Prefect server did not come up in 180 s"
                time.sleep(1)

        # Every pool prefect.yaml's deployments name, made by the project's own setup (make prefect-setup).
        ops = subprocess.run(
            [sys.executable, "-m", "flows.ops", "pools"], cwd=repo, env=env, text=True, capture_output=True
        )
        assert ops.returncode == 0, ops.stderr
        assert ops.stdout.splitlines() == ["work pool gpu: created (process)", "work pool cpu: created (process)"]
        pools = {p["name"]: p["type"] for p in tp_list(api(url, "/work_pools/filter", {}))}
        assert {"gpu": "process", "cpu": "process"}.items() <= pools.items()
        worker_dir = tmp_path / "worker"
        worker_dir.mkdir()
        # The process worker runs each flow in a temporary folder of its own; pin it here to look
        # at the clone afterwards (a job variable, as a team would set the GPU machine's scratch disk).
        prefect(env, "deploy", "--name", "data-check", "--job-variable", f"working_dir={worker_dir}", cwd=repo)
        deployment = tp_dict(api(url, "/deployments/name/codec-pipeline/data-check"))
        assert deployment["work_pool_name"] == "cpu"
        assert deployment["parameters"] == {"repo": ".", "until": "validate"}
        limit = deployment.get("concurrency_limit") or (deployment.get("global_concurrency_limit") or {}).get("limit")
        assert limit == 1
        steps = [next(iter(s)) for s in deployment["pull_steps"]]
        assert steps == [
            "prefect.deployments.steps.git_clone",
            "prefect.deployments.steps.set_working_directory",
            "prefect.deployments.steps.run_shell_script",
            "prefect.deployments.steps.run_shell_script",
        ]
        assert deployment["pull_steps"][0]["prefect.deployments.steps.git_clone"]["repository"] == f"file://{repo}"

        run = tp_dict(api(url, f"/deployments/{deployment['id']}/create_flow_run", {}))
        worker = prefect(env, "worker", "start", "--pool", "cpu", "--run-once", cwd=worker_dir, timeout=600)
        state = tp_dict(api(url, f"/flow_runs/{run['id']}"))
        assert state["state_type"] == "COMPLETED", worker.stdout[-4000:] + worker.stderr[-4000:]
        # The worker ran a fresh clone of main, not the deploying machine's folder.
        clones = [p for p in worker_dir.iterdir() if (p / "dvc.yaml").is_file()]
        assert len(clones) == 1
        summary = json.loads((clones[0] / "reports" / "validate" / "summary.json").read_text())
        assert summary["success"] is True
        assert not (repo / "reports" / "validate" / "summary.json").exists()
        lock = yaml.safe_load((clones[0] / "dvc.lock").read_text())
        assert set(lock["stages"]) == set(DATA_STAGES)

        check_failure_alert(url, env, repo, deployment)
    finally:
        stop(server)
        log.close()


def tp_dict(v: object) -> dict:
    assert isinstance(v, dict), v
    return v


def tp_list(v: object) -> list:
    assert isinstance(v, list), v
    return v


def check_failure_alert(url: str, env: dict[str, str], repo: Path, deployment: dict) -> None:
    """``python -m flows.ops alert --webhook`` on the live server: a failed run of the pipeline
    posts one notification to a receiver on 127.0.0.1 (through Prefect's own automation and
    notification block), naming the run and why; a failed run of another flow posts nothing."""
    import http.server
    import threading

    received: list[dict] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", free_port()), Receiver)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        hook = f"http://127.0.0.1:{httpd.server_address[1]}/hook"
        ops = subprocess.run(
            [sys.executable, "-m", "flows.ops", "alert", "--webhook", hook],
            cwd=repo,
            env=env,
            text=True,
            capture_output=True,
        )
        assert ops.returncode == 0, ops.stderr
        failed = {"type": "FAILED", "name": "Failed", "message": "stage 'validate' data-quality gate failed"}
        other_flow = tp_dict(api(url, "/flows/", {"name": "someone-elses-flow"}))
        other = tp_dict(api(url, "/flow_runs/", {"flow_id": other_flow["id"], "name": "not-ours"}))
        api(url, f"/flow_runs/{other['id']}/set_state", {"state": failed, "force": True})
        run = tp_dict(api(url, f"/deployments/{deployment['id']}/create_flow_run", {"name": "weekly-run"}))
        api(url, f"/flow_runs/{run['id']}/set_state", {"state": failed, "force": True})
        deadline = time.monotonic() + 90
        while not received and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(3)  # a notification for the other flow's run would have come by now too
    finally:
        httpd.shutdown()
    assert len(received) == 1, received
    text = received[0]["text"]
    assert received[0]["subject"] == "codec-pipeline run weekly-run: Failed"
    assert "weekly-run" in text and run["id"] in text and "data-quality gate failed" in text
    assert "Deployment: data-check" in text and "not-ours" not in text
