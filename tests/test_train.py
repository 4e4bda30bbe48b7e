"""Training: resume equals uninterrupted, DDP (two CPU processes, gloo) matches one
process, one batch overfits, a trained tiny model keeps the level, the stage logs to MLflow."""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import soundfile as sf
import torch
import yaml

from codec.model.checkpoint import load_codec
from codec.training.loop import train
from codec.training.params import MelParams, TrainParams
from tests.presets import tiny_config
from tests.synth import write_dataset

REPO = Path(__file__).resolve().parents[1]


def tiny_params(**overrides: object) -> TrainParams:
    """A few-second training of the tiny model on 0.1 s segments."""
    base = TrainParams(
        seed=3,
        steps=6,
        batch_size=4,
        segment_s=0.08,
        lr=2e-3,
        val_fraction=0.25,
        val_every=1000,
        val_clips=2,
        val_seconds=0.5,
        checkpoint_every=1000,
        log_every=1,
        progress=False,
        audio_samples=1,
        mel=MelParams(windows=(64, 256), n_mels=(10, 40)),
        model=tiny_config(quantizer_dropout=0.5),
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("train") / "normalized", n_clips=12, seconds=1.0, seed=1)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return dict(torch.load(path, weights_only=True)["model"])


def test_resume_equals_uninterrupted(data: Path, tmp_path: Path) -> None:
    full = train(tiny_params(), data, tmp_path / "full")
    stopped = train(tiny_params(), data, tmp_path / "resumed", stop_after=3)
    assert stopped.step == 3 and not (tmp_path / "resumed" / "codec.pt").exists()
    ckpt = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 3 and {"optimizer", "scheduler", "rng", "params", "model_config"} <= set(ckpt)
    resumed = train(tiny_params(resume=True), data, tmp_path / "resumed")
    assert resumed.step == 6
    a, b = _weights(full.model_path), _weights(resumed.model_path)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["loss/total"] for r in full.history if "loss/total" in r] == [
        r["loss/total"] for r in resumed.history if "loss/total" in r
    ]


def test_worker_processes_read_the_same_batches_and_a_prefetching_run_resumes_exactly(
    data: Path, tmp_path: Path
) -> None:
    """Batches read by DataLoader workers (prefetching ahead, cache off, augmentation on) train
    the same weights as batches read in process, and a run stopped while workers had drawn
    batches ahead resumes from the last batch it trained, not the last one drawn."""
    from codec.training.augment import AugmentParams

    common = {"augment": AugmentParams(enabled=True), "steps": 8}
    inline = train(tiny_params(**common), data, tmp_path / "inline")
    streamed = tiny_params(**common, loader_workers=2, prefetch_batches=3, cache_audio=False)
    workers = train(streamed, data, tmp_path / "workers")
    stopped = train(streamed, data, tmp_path / "resumed", stop_after=3)
    assert stopped.step == 3
    resumed = train(dataclasses.replace(streamed, resume=True), data, tmp_path / "resumed")
    a = _weights(inline.model_path)
    for other in (workers, resumed):
        b = _weights(other.model_path)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k


def test_the_audio_cache_keeps_what_fits_its_budget(data: Path) -> None:
    """cache_audio_mb caps the clips kept in memory; past it segments come from disk, the same."""
    from codec.training.dataset import SegmentSampler, read_clips

    clips = read_clips(data)
    budget = int(2.5 * 4 * 16000)  # two and a half one-second clips of float32
    capped = SegmentSampler(clips, 1280, cache=True, cache_bytes=budget)
    free = SegmentSampler(clips, 1280, cache=False)
    for _ in range(6):
        plan = capped.plan(4, torch.Generator().manual_seed(len(capped._audio)))
        assert torch.equal(capped.read(plan), free.read(plan))
    assert 1 <= len(capped._audio) <= 2 and capped._cached_bytes <= budget
    assert not free._audio


def test_a_retry_resumes_only_a_stopped_run_of_the_same_params(data: Path, tmp_path: Path) -> None:
    from codec.training.stage import resumable
    from flows.dvc_stages import retry_env

    assert retry_env(1) == {} and retry_env(2) == {"CODEC_TRAIN_RESUME": "1"}
    ckpt = tmp_path / "out" / "checkpoints" / "last.pt"
    assert resumable(ckpt, tiny_params()) == f"no checkpoint at {ckpt}"
    train(tiny_params(), data, tmp_path / "out", stop_after=3)  # killed at step 3 (CUDA OOM, say)
    assert resumable(ckpt, tiny_params()) is None
    assert resumable(ckpt, tiny_params(threads=2, progress=True)) is None  # speed and display: same run
    assert "other params (lr)" in str(resumable(ckpt, tiny_params(lr=1e-3)))  # another run's checkpoint
    assert "other params (steps)" in str(resumable(ckpt, tiny_params(steps=8)))
    train(tiny_params(resume=True), data, tmp_path / "out")
    assert "finished run" in str(resumable(ckpt, tiny_params()))


def test_two_process_ddp_matches_one_process(data: Path, tmp_path: Path) -> None:
    single = train(tiny_params(steps=3), data, tmp_path / "single")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(REPO / "tests" / "ddp_worker.py"), str(data), str(tmp_path / "ddp")],
        capture_output=True, text=True, env=env, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 1 of 2 done at step 3" in proc.stdout
    ddp = torch.load(tmp_path / "ddp" / "codec.pt", weights_only=True)
    # Same global batches and dropout draws; only the order of float sums differs.
    a, b = _weights(single.model_path), ddp["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-3, msg=k)
    assert ddp["val"]["val/snr_db"] == pytest.approx(single.val["val/snr_db"], abs=1e-3)


@pytest.mark.slow
def test_overfits_one_batch(data: Path) -> None:
    """The tiny codec fits one batch past +10 dB SNR within 500 steps (L1, all quantizers)."""
    from codec.model.codec import build_codec
    from codec.training.dataset import SegmentSampler, read_clips
    from codec.training.losses import snr_db

    torch.manual_seed(0)
    cfg = tiny_config()
    model = build_codec(cfg, seed=0)
    sampler = SegmentSampler(read_clips(data), 3200)
    g = torch.Generator().manual_seed(0)
    x = sampler.sample(2, g)
    with torch.no_grad():
        model.quantizer.init_codebooks(model.encode_latents(sampler.sample(64, g)), g)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.8, 0.99))
    best = -100.0
    for step in range(1, 501):
        out = model(x, cfg.n_codebooks)
        loss = (out.audio - x).abs().mean() + 0.25 * out.commitment_loss + out.codebook_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0:
            best = max(best, float(snr_db(x, out.audio.detach()).mean()))
            if best > 10.0:
                break
    assert best > 10.0, f"SNR reached only {best:.2f} dB in {step} steps"


def test_trained_tiny_model_keeps_the_level_on_held_out_clips(small_corpus: Path, tmp_path: Path) -> None:
    """The demo recipe (autoencoder warm-up, k-means codebooks, NMSE + level + mel) on a
    tiny model and the embedded Telugu corpus: on clips it never saw, output RMS / input RMS
    at the top bitrate is within 0.9–1.1 over the held-out set (the seed's model: 0.47), no
    clip strays past 0.8–1.2, and the waveform is reproduced (SNR above 1.5 dB in 400 steps)."""
    from codec.data.ingest import IngestParams, ingest
    from codec.data.normalize import NormalizeParams, normalize
    from codec.training.dataset import read_clips, split_clips
    from codec.training.losses import amplitude_ratio, snr_db

    ingest(small_corpus, tmp_path / "raw", IngestParams(workers=2))
    data = tmp_path / "normalized"
    normalize(tmp_path / "raw", data, NormalizeParams(workers=2))
    params = tiny_params(
        steps=400,
        batch_size=8,
        segment_s=0.4,
        lr=1e-3,
        quantizer_warmup_steps=100,
        val_fraction=0.2,
        loss_weights={"loss/nmse": 1.0, "loss/level": 1.0, "loss/mel": 0.1, "vq/commitment_loss": 0.1},
        model=tiny_config(quantizer_dropout=0.3, codebook_size=256, bitrates_kbps=(1.2, 2.4, 4.8)),
    )
    result = train(params, data, tmp_path / "out")
    model = load_codec(result.model_path).eval()
    held_out = split_clips(read_clips(data), params.val_fraction)[1]
    assert len(held_out) >= 3
    top = model.config.n_codebooks
    ratios, xs, ys = [], [], []
    with torch.no_grad():
        for clip in held_out:
            x = torch.from_numpy(sf.read(clip.path, dtype="float32")[0])[None, None]
            y = model.decode(model.encode(x, top))[..., : x.shape[-1]]
            ratios.append(float(amplitude_ratio(x, y)))
            xs.append(x)
            ys.append(y)
    x_all, y_all = torch.cat(xs, dim=-1), torch.cat(ys, dim=-1)
    assert 0.9 <= float(amplitude_ratio(x_all, y_all)) <= 1.1, ratios
    assert all(0.8 <= r <= 1.2 for r in ratios), ratios
    assert float(snr_db(x_all, y_all)) > 1.5  # the seed's model: -0.9 dB


def _write_params(path: Path, params: TrainParams) -> None:
    d = params.to_dict()
    path.write_text(yaml.safe_dump({"train": d}))


def test_stage_logs_an_mlflow_run(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    from codec.training import stage as train_stage

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    _write_params(tmp_path / "params.yaml", tiny_params(steps=2, val_every=2))
    parser = argparse.ArgumentParser()
    train_stage.add_arguments(parser)
    args = parser.parse_args(["--data", str(data), "--out", "models", "--params", "params.yaml"])
    assert train_stage.run(args) == 0

    assert load_codec(tmp_path / "models" / "codec.pt").config == tiny_config(quantizer_dropout=0.5)
    ckpt = torch.load(tmp_path / "models" / "codec.pt", weights_only=True)
    # The loudness of the training clips, which codec encode brings inputs to.
    expected = float(pd.read_csv(data / "manifest.csv")["lufs"].median())
    assert ckpt["level"]["target_lufs"] == pytest.approx(expected, abs=0.01) and -30 < expected < -10
    metrics = yaml.safe_load((tmp_path / "reports/train/metrics.json").read_text())
    assert metrics["step"] == 2 and "val_snr_db" in metrics
    assert (tmp_path / "reports/train/curves.csv").read_text().startswith("step,loss,")

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(train_stage.EXPERIMENT)
    assert exp is not None
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("train 2 steps cpu ")  # what it is, not a random name
    monkeypatch.setenv("DVC_EXP_NAME", "seed-recipe")  # under dvc exp run -n seed-recipe
    named = train_stage.run_name(tiny_params(steps=3), "cpu", "0" * 40)
    assert named == "seed-recipe: train 3 steps cpu 0000000"
    assert run.data.params["model.n_codebooks"] == "12"
    assert run.data.params["loss_weights.loss/nmse"] == "1.0" and run.data.params["loss_weights.loss/l1"] == "0.0"
    assert "val/snr_db" in run.data.metrics and "vq/usage" in run.data.metrics
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss/total")] == [1, 2]
    assert run.data.tags["device"] == "cpu" and run.data.tags["data_version"].endswith(".dir")
    assert run.data.tags["git_commit"]
    samples = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    assert "samples/spectrograms.png" in samples and any(p.endswith("_input.wav") for p in samples)
    # The checkpoint is logged; the served model is logged into this run by codec evaluate
    # (tests/test_evaluate.py), so the train stage does not depend on the inference code.
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == ["checkpoint/codec.pt"]


def test_git_commit_is_dirty_for_source_changes_not_for_what_the_pipeline_writes(tmp_path: Path) -> None:
    from codec.provenance import git_commit

    def git(*args: str) -> str:
        env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
        env["GIT_COMMITTER_EMAIL"] = "t@t"
        return subprocess.run(["git", *args], cwd=tmp_path, env=env, check=True, capture_output=True, text=True).stdout

    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump(
            {"stages": {"s": {"cmd": "x", "outs": ["models"], "metrics": [{"reports/m.json": {"cache": False}}]}}}
        )
    )
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/m.json").write_text("{}")
    (tmp_path / "dvc.lock").write_text("a")
    (tmp_path / "code.py").write_text("x = 1")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "c")
    head = git("rev-parse", "HEAD").strip()
    assert git_commit(tmp_path) == head
    # A stage ran: its lock entry and metrics changed. Still the clean commit.
    (tmp_path / "dvc.lock").write_text("b")
    (tmp_path / "reports/m.json").write_text('{"snr": 1}')
    assert git_commit(tmp_path) == head
    (tmp_path / "code.py").write_text("x = 2")
    assert git_commit(tmp_path) == head + "-dirty"
    assert git_commit(tmp_path / "nowhere") == "unknown"
