"""The registered model behind a real ``mlflow models serve`` server: a 2.7 s request decoded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from codec.model.codec import build_codec
from codec.tracking import MODEL_NAME
from tests import test_evaluate as te
from tests.conftest import free_port, stop
from tests.presets import tiny_config

mlflow_template = te.mlflow_template
mlflow_uri = te.mlflow_uri

MLFLOW = Path(sys.executable).with_name("mlflow")


def wait_for(url: str, proc: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow models serve exited {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {timeout:.0f} s")


def test_mlflow_models_serve_decodes_a_2_7_s_request_like_the_loaded_model(mlflow_uri: str, tmp_path: Path) -> None:
    import mlflow

    from codec.model.serving import log_model

    model = build_codec(tiny_config(), seed=0).eval()
    mlflow.set_experiment("serving")
    with mlflow.start_run() as run:
        log_model(model)
    version = mlflow.register_model(f"runs:/{run.info.run_id}/codec", MODEL_NAME).version
    uri = f"models:/{MODEL_NAME}/{version}"

    rate = model.config.sample_rate
    t = np.arange(int(2.7 * rate)) / rate
    x = (0.2 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)[None, None]
    expected = np.asarray(mlflow.pyfunc.load_model(uri).predict(x))

    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    # --env-manager local: the test's own environment (a virtualenv would download torch).
    serve = ["models", "serve", "-m", uri, "-p", str(port), "-h", "127.0.0.1", "-w", "1", "--env-manager", "local"]
    proc = subprocess.Popen(
        [str(MLFLOW), *serve],
        env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/ping", proc)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": x.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as r:
            body = json.loads(r.read())
        served = np.asarray(body["predictions"], dtype=np.float32)
        assert served.shape == x.shape == (1, 1, 43200)
        assert np.isfinite(served).all() and np.abs(served).max() > 1e-4
        np.testing.assert_allclose(served, expected, atol=1e-5)
        # A wrong shape is refused with a message, not a crash of the server.
        bad = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": [[1.0, 2.0]]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(bad, timeout=60)
        assert 400 <= err.value.code < 500
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as r:
            assert r.status == 200
    finally:
        stop(proc)
        log.close()
