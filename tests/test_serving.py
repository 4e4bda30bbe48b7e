"""The registered model behind a real ``mlflow models serve`` server answers what the user's
``codec encode`` + ``codec decode`` give: the same samples, the same bitstream, the input's level,
and a 400 with a message for input the CLI refuses (issue 22; issue 23, row 7).

One server for the module. It serves the reference model shipped with the package (a trained
codec): the tiny test model is untrained, its decoder returns ~22 dB less than it is given,
more than the energy side information corrects (at most 12 dB), so only a trained model can
show the level kept."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import typing as tp
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from codec.model.checkpoint import REFERENCE_CHECKPOINT
from codec.tracking import CHECKPOINT_ARTIFACT, MODEL_NAME
from tests import test_evaluate as te
from tests.conftest import free_port, run_cli, stop
from tests.synth import speechlike

mlflow_template = te.mlflow_template

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


class Server(tp.NamedTuple):
    url: str
    checkpoint: Path
    tracking_uri: str
    version: str


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path) -> tp.Iterator[Server]:
    """A registered version logged as the train stage logs it (the checkpoint artifact and the
    served model), behind ``mlflow models serve --env-manager local``."""
    import mlflow

    from codec.inference.served import log_model

    root = tmp_path_factory.mktemp("serving")
    checkpoint = root / "codec.pt"
    shutil.copy(REFERENCE_CHECKPOINT, checkpoint)
    shutil.copy(mlflow_template, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # artifacts land here
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("serving")
        with mlflow.start_run() as run:
            mlflow.log_artifact(str(checkpoint), "checkpoint")
            log_model(checkpoint)
        version = str(mlflow.register_model(f"runs:/{run.info.run_id}/codec", MODEL_NAME).version)
    port = free_port()
    log = (root / "serve.log").open("wb")
    # --env-manager local: the test's own environment (a virtualenv would download torch).
    serve = ["models", "serve", "-m", f"models:/{MODEL_NAME}/{version}", "-p", str(port), "-h", "127.0.0.1", "-w", "1"]
    proc = subprocess.Popen(
        [str(MLFLOW), *serve, "--env-manager", "local"],
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/ping", proc)
        yield Server(f"http://127.0.0.1:{port}", checkpoint, uri, version)
    finally:
        stop(proc)
        log.close()


def post(server: Server, body: dict[str, tp.Any]) -> tuple[int, dict[str, tp.Any]]:
    """(HTTP status, JSON answer) of one request to ``/invocations``."""
    request = urllib.request.Request(
        f"{server.url}/invocations", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def clip(rate: int, seconds: float, peak_dbfs: float, seed: int = 0) -> np.ndarray:
    """Speech-like float32 samples at ``rate``, their peak at ``peak_dbfs``."""
    x = speechlike(seconds, np.random.default_rng(seed), rate=rate)
    return (x * 10 ** (peak_dbfs / 20) / np.abs(x).max()).astype(np.float32)


def cli_roundtrip(x: np.ndarray, rate: int, kbps: float | None, folder: Path, model: str) -> tuple[np.ndarray, bytes]:
    """``codec decode(codec encode(x))`` through the real CLI, ``x`` written as a FLOAT WAV, on the
    torch runtime the served model runs (the ONNX runtime's bound against it:
    tests/test_onnx_runtime.py)."""
    folder.mkdir()
    wav, tscb, out = folder / "in.wav", folder / "out.tscb", folder / "out.wav"
    sf.write(wav, x, rate, subtype="FLOAT")
    bitrate = [] if kbps is None else ["--kbps", f"{kbps:g}"]
    torch = ("--runtime", "torch")
    run_cli("codec", "encode", "-q", str(wav), str(tscb), "--model", model, *bitrate, *torch, check=True)
    run_cli("codec", "decode", "-q", str(tscb), str(out), "--model", model, *torch, check=True)
    decoded, out_rate = sf.read(out, dtype="float32")
    assert out_rate == rate
    return decoded, tscb.read_bytes()


@pytest.mark.parametrize(("rate", "kbps"), [(16000, None), (24000, 1.5)])
def test_a_served_response_is_codec_decode_of_codec_encode(
    server: Server, tmp_path: Path, rate: int, kbps: float | None
) -> None:
    x = clip(rate, 1.7, -6.0)
    params: dict[str, tp.Any] = {"sample_rate": rate, "return_bitstream": True}
    if kbps is not None:
        params["kbps"] = kbps
    status, body = post(server, {"inputs": {"audio": x.tolist()}, "params": params})
    assert status == 200, body
    (row,) = body["predictions"]
    served = np.asarray(row["audio"], dtype=np.float32)
    expected, stream = cli_roundtrip(x, rate, kbps, tmp_path / "cli", str(server.checkpoint))
    assert served.shape == x.shape == expected.shape  # the input's rate and length
    np.testing.assert_array_equal(served, expected)  # sample for sample
    assert base64.b64decode(row["bitstream"]) == stream  # the file codec encode writes


def test_the_registered_version_codes_as_its_checkpoint_and_as_served(server: Server, tmp_path: Path) -> None:
    """``codec encode --model models:/NAME/V`` reads the version's plain checkpoint
    (``checkpoint/codec.pt`` in its run): the same bitstream as the served model returns."""
    x = clip(16000, 1.0, -20.0, seed=1)
    status, body = post(server, {"inputs": {"audio": x.tolist()}, "params": {"return_bitstream": True}})
    assert status == 200, body
    wav, tscb = tmp_path / "in.wav", tmp_path / "out.tscb"
    sf.write(wav, x, 16000, subtype="FLOAT")
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.tracking_uri}
    model = f"models:/{MODEL_NAME}/{server.version}"
    proc = subprocess.run(
        ["codec", "encode", "-q", str(wav), str(tscb), "--model", model], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert CHECKPOINT_ARTIFACT == "checkpoint/codec.pt"
    assert base64.b64decode(body["predictions"][0]["bitstream"]) == tscb.read_bytes()


@pytest.mark.parametrize("peak_dbfs", [-6.0, -10.5])
def test_a_loud_request_comes_back_at_its_level(server: Server, peak_dbfs: float) -> None:
    x = clip(16000, 2.0, peak_dbfs, seed=2)
    status, body = post(server, {"inputs": {"audio": x.tolist()}})
    assert status == 200, body
    (row,) = body["predictions"]
    y = np.asarray(row["audio"], dtype=np.float64)
    assert row["bitstream"] is None  # only on request
    ratio_db = 20 * np.log10(np.sqrt(np.mean(y**2)) / np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    assert abs(ratio_db) < 1.0, ratio_db  # the bare network gave 0.68-0.71 (-3 dB) at -6 dBFS


def test_a_batch_of_recordings_of_different_lengths(server: Server) -> None:
    a, b = clip(16000, 1.2, -12.0, seed=3), clip(16000, 0.5, -18.0, seed=4)
    split = {"columns": ["audio"], "data": [[a.tolist()], [b.tolist()]]}
    status, body = post(server, {"dataframe_split": split})
    assert status == 200, body
    rows = body["predictions"]
    assert [len(r["audio"]) for r in rows] == [a.size, b.size]
    status, single = post(server, {"inputs": {"audio": b.tolist()}})
    assert status == 200
    np.testing.assert_array_equal(np.float32(rows[1]["audio"]), np.float32(single["predictions"][0]["audio"]))
    # A bad row is named; digital silence is coded when the request allows it (--allow-silence).
    split["data"][1] = [[0.0] * 4000]
    status, body = post(server, {"dataframe_split": split})
    assert status == 400 and "recording 2: holds only digital silence" in body["message"], body
    status, body = post(server, {"dataframe_split": split, "params": {"allow_silence": True}})
    assert status == 200 and len(body["predictions"][1]["audio"]) == 4000, body


@pytest.mark.parametrize(
    ("audio", "params", "says"),
    [
        ("nan", {}, "NaN or infinite"),
        ([], {}, "no audio samples"),
        ("ok", {"kbps": 5.0}, "does not serve 5 kbps; choose one of 1.5, 3, 6"),
        ("ok", {"sample_rate": 0}, "sample_rate 0"),
        ("zeros", {}, "allow_silence"),
    ],
)
def test_a_bad_request_is_answered_400_with_what_to_send(
    server: Server, audio: tp.Any, params: dict[str, tp.Any], says: str
) -> None:
    x = clip(16000, 0.5, -20.0, seed=5)
    if audio == "nan":
        x[1234] = np.nan  # one NaN sample: the bare network answered 3,217 NaN samples
        audio = x.tolist()
    elif audio == "zeros":
        audio = np.zeros(8000).tolist()
    elif audio == "ok":
        audio = x.tolist()
    status, body = post(server, {"inputs": {"audio": audio}, "params": params})
    assert status == 400, body
    assert body["error_code"] == "INVALID_PARAMETER_VALUE" and says in body["message"], body["message"]
    with urllib.request.urlopen(f"{server.url}/ping", timeout=5) as r:  # the server lives on
        assert r.status == 200
