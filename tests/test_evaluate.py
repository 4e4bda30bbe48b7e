"""The evaluate stage: metrics that match hand-computed values on synthetic signals (a
known gain gives a known SNR, amplitude ratio and mel distance, at every input level),
Opus rows at every bitrate, and the stage end to end with a real MLflow store."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import shutil
import typing as tp
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import soxr
import torch
import yaml
from torch import nn

from codec.evaluation import evaluate as ev
from codec.evaluation import params as ep
from codec.evaluation import report, sets, stage
from codec.model.checkpoint import save_checkpoint
from codec.model.codec import build_codec
from tests.presets import tiny_codec, tiny_config
from tests.synth import RATE, speechlike

# --- shared helpers (also used by test_promote.py) --------------------------------------------


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class PcmConfig:
    """Config of :class:`PcmCodec`: one frame per sample, ``bits`` per code, 1 or 2 stages."""

    def __init__(self, bits: int) -> None:
        self.sample_rate = RATE
        self.hop_length = 1
        self.bits_per_code = bits
        self.bitrates_kbps = (RATE * bits / 1000.0, 2 * RATE * bits / 1000.0)

    def n_quantizers_for(self, kbps: float) -> int:
        for n, served in enumerate(self.bitrates_kbps, start=1):
            if math.isclose(kbps, served):
                return n
        raise ValueError(f"{kbps} kbps is not served")


class PcmCodec(nn.Module):
    """A deterministic stand-in codec: uniform PCM over [-1, 1] with ``bits`` per stage,
    the second stage coding the first one's residual, and the decoded audio multiplied by
    ``gain``. With 10 bits and two stages it is transparent (~20-bit PCM)."""

    source_fingerprint = b"pcm-eval"  # no weights to fingerprint: the bitstream names it so

    def __init__(self, bits: int = 10, gain: float = 1.0) -> None:
        super().__init__()
        self.config = PcmConfig(bits)
        self.levels = 2**bits
        self.gain = gain
        self.register_buffer("step", torch.tensor(2.0 / (self.levels - 1), dtype=torch.float64))

    def encode(self, audio: torch.Tensor, n_quantizers: int | None = None) -> torch.Tensor:
        x = audio[:, 0].double().clamp(-1.0, 1.0)
        coarse = torch.round((x + 1.0) / self.step).clamp(0, self.levels - 1)
        residual = x - (coarse * self.step - 1.0)
        fine = torch.round(residual / (self.step / self.levels) + self.levels // 2).clamp(0, self.levels - 1)
        return torch.stack([coarse, fine], dim=1).long()[:, : n_quantizers or 2]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        c = codes.double()
        x = c[:, 0] * self.step - 1.0
        if c.shape[1] > 1:
            x = x + (c[:, 1] - self.levels // 2) * (self.step / self.levels)
        return (self.gain * x).float().unsqueeze(1)


class Collapsed(nn.Module):
    """The seed's failure: a codec whose decoder gives 47% of the input's amplitude."""

    source_fingerprint = b"collapse"  # no weights to fingerprint: the bitstream names it so

    def __init__(self, inner: PcmCodec, factor: float = 0.47) -> None:
        super().__init__()
        self.inner = inner
        self.factor = factor

    @property
    def config(self) -> PcmConfig:
        return self.inner.config

    def encode(self, audio: torch.Tensor, n_quantizers: int | None = None) -> torch.Tensor:
        return self.inner.encode(audio, n_quantizers)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.inner.decode(codes) * self.factor


def make_clips(n: int = 3, seconds: float = 1.5, seed: int = 0) -> list[sets.EvalClip]:
    """Speech-like clips with a noise bed 10 dB down (no digital silence, so the mel floor
    never hides a gain), at recorded levels -25, -15, -5, ... dBFS."""
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(n):
        x = (
            speechlike(seconds, rng, rms_dbfs=-20.0)
            + rng.standard_normal(int(seconds * RATE)).astype(np.float32) * 0.01
        )
        level = -25.0 + 10.0 * (i % 3)
        x = x * np.float32(10 ** (level / 20) / np.sqrt(np.mean(x.astype(np.float64) ** 2)))
        clips.append(sets.EvalClip(f"clip{i:03d}", x.astype(np.float32), RATE))
    return clips


def write_data(root: Path, clips: tp.Sequence[sets.EvalClip]) -> tuple[Path, Path]:
    """``root/raw`` and ``root/normalized`` folders with manifests, as the data stages write them."""
    raw, norm = root / "raw", root / "normalized"
    raw.mkdir(parents=True)
    norm.mkdir(parents=True)
    rows = []
    for c in clips:
        sf.write(str(raw / f"{c.id}.wav"), c.audio, RATE, subtype="FLOAT")
        rows.append({"id": c.id, "path": f"{c.id}.wav", "duration_s": len(c.audio) / RATE, "sample_rate": RATE})
    for folder in (raw, norm):
        with (folder / "manifest.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return raw, norm


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated MLflow SQLite store (creating one takes seconds; copying it, none)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.getbasetemp() / "mlflow-template.db"  # one per session, whichever module asks first
    if not path.is_file():
        staging = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
        MlflowClient(f"sqlite:///{staging}").search_experiments()
        shutil.copy(staging, path)
    return path


@pytest.fixture
def mlflow_uri(mlflow_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh real MLflow store in ``tmp_path`` (the cwd, so artifacts land there too)."""
    import mlflow

    shutil.copy(mlflow_template, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    return uri


NO_LIMITER = ep.LevelSettings(target_lufs=-16.0, peak_ceiling_db=12.0)  # the level path is tested in test_inference


# --- metrics on synthetic signals -------------------------------------------------------------


@pytest.mark.parametrize("gain", [0.9, 0.47])
def test_a_known_gain_reads_as_hand_computed_metrics_at_every_level(gain: float) -> None:
    clips = make_clips(2)
    # The metrics' arithmetic: without the energy side information, which would correct g.
    params = ep.EvaluateParams(levels_dbfs=[-40.0, -16.0, -6.0], opus_modes=[], side_info=False)
    result = ev.evaluate_model(PcmCodec(gain=gain), clips, params, NO_LIMITER, bitrates_kbps=[320.0])
    row = result.row("ours", 320.0).metrics
    # est = g·ref: SNR = -20·log10|1 - g|, amplitude ratio g, SI-SDR blind to the gain,
    # log-mel distance |log10 g| in every bin.
    assert row["amplitude_ratio"] == pytest.approx(gain, abs=2e-4)
    assert row["snr_db"] == pytest.approx(-20 * math.log10(1 - gain), abs=0.01)
    assert row["si_sdr_db"] > 60.0
    assert row["mel_distance"] == pytest.approx(abs(math.log10(gain)), abs=0.01)
    assert [lv.level_dbfs for lv in result.levels] == [-40.0, -16.0, -6.0]
    for lv in result.levels:
        assert lv.amplitude_ratio == pytest.approx(gain, abs=2e-4)
        assert lv.snr_db == pytest.approx(-20 * math.log10(1 - gain), abs=0.01)
    flat = report.flat_metrics(result)
    assert flat["held_out/amplitude_ratio_320kbps"] == pytest.approx(gain, abs=2e-4)
    levels = stage.evaluation_tables({"held_out": result})["levels"]
    assert levels.set_index("level_dbfs").loc[-40.0, "amplitude_ratio"] == pytest.approx(gain, abs=2e-4)
    # With it (the default, what codec encode sends): the level comes back at every input
    # level, and the path without it is scored beside, not gated as ours.
    shaped = ev.evaluate_model(
        PcmCodec(gain=gain), clips, dataclasses.replace(params, side_info=True), NO_LIMITER, bitrates_kbps=[320.0]
    )
    assert 0.97 <= shaped.row("ours", 320.0).metrics["amplitude_ratio"] <= 1.03
    assert all(0.97 <= lv.amplitude_ratio <= 1.03 for lv in shaped.levels)
    assert [r.codec for r in shaped.without_side] == ["ours_no_side_info"]
    assert shaped.without_side[0].metrics["amplitude_ratio"] == pytest.approx(gain, abs=2e-4)
    side_flat = report.flat_metrics(shaped)
    assert side_flat["held_out/model_amplitude_ratio_320kbps"] == pytest.approx(gain, abs=2e-4)
    # The side information is counted in ours' bitrate: a block of 500 samples here, 8 bits.
    assert shaped.row("ours", 320.0).effective_kbps == pytest.approx(320.0 + 16000 / 500 * 8 / 1000)


def test_a_transparent_codec_reads_as_transparent() -> None:
    clips = make_clips(2)
    params = ep.EvaluateParams(levels_dbfs=[-26.0], opus_modes=[])
    result = ev.evaluate_model(PcmCodec(), clips, params, NO_LIMITER)
    top = result.row("ours", 320.0).metrics
    assert top["snr_db"] > 80.0 and top["amplitude_ratio"] == pytest.approx(1.0, abs=1e-4)
    assert top["pesq"] > 4.4 and top["stoi"] > 0.99 and top["mel_distance"] < 0.01
    # 10-bit PCM of speech at -16 LUFS: quantization noise step/sqrt(12) ~ -65 dBFS, SNR ~ 45 dB.
    assert 35.0 < result.row("ours", 160.0).metrics["snr_db"] < 60.0


# --- Opus side by side, and the stage end to end ------------------------------------------------


def test_stage_writes_ours_and_opus_at_every_bitrate_and_logs_to_the_training_run(
    tmp_path: Path, mlflow_uri: str
) -> None:
    import mlflow
    from mlflow import MlflowClient

    clips = make_clips(6, seconds=1.2)
    raw, norm = write_data(tmp_path / "data", clips)
    cfg = tiny_config()
    ckpt = tmp_path / "models" / "codec.pt"
    save_checkpoint(ckpt, tiny_codec([c.audio for c in clips]), {"params": {"val_fraction": 0.5}})
    # A training run that logged this checkpoint (as codec train does), and a newer one that did not.
    mlflow.set_experiment("telugu-speech-codec")
    with mlflow.start_run(tags={"stage": "train"}) as train_run:
        mlflow.log_artifact(str(ckpt), "checkpoint")
    with mlflow.start_run(tags={"stage": "train"}):
        pass
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(
            {
                "normalize": {"target_lufs": -16.0, "peak_ceiling_db": -1.0, "limiter_window_ms": 5.0, "mode": "lufs"},
                "evaluate": {
                    "max_clips": 2,
                    "seconds": 1.0,
                    "levels_dbfs": [-40.0, -6.0],
                    "opus_modes": ["cbr", "vbr"],
                    "audio_samples": 1,
                    "threads": 1,
                },
                "promote": {"min_pesq": 1.0},
            }
        )
    )
    out = tmp_path / "reports" / "evaluate"
    # A user's evaluation set: two recordings (one stereo at 44.1 kHz), a broken file and notes.
    field = tmp_path / "eval_sets" / "field recordings"
    (field / "spk1").mkdir(parents=True)
    sf.write(field / "spk1" / "a.wav", clips[0].audio, 16000, subtype="PCM_16")
    stereo = np.stack([clips[1].audio, clips[1].audio], axis=1)
    sf.write(field / "b.flac", soxr.resample(stereo, 16000, 44100), 44100, format="FLAC")
    (field / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00not really a wav")
    (field / "notes.txt").write_text("mic: phone")
    parser = argparse.ArgumentParser()
    stage.add_arguments(parser)
    paths = {"metrics": "metrics.json", "table": "bitrates.csv", "plot": "vs_opus.csv", "evaluation": "evaluation.json"}
    argv = ["--model", str(ckpt), "--data", str(norm), "--raw", str(raw), "--params", "params.yaml"]
    argv += ["--user-sets", str(tmp_path / "eval_sets"), "--headline", str(out / "headline.json")]
    argv += ["--levels", str(out / "levels.csv"), "--sets-plot", str(out / "sets.csv")]
    argv += [x for k, v in {**paths, "report": "report.md", "media": "media"}.items() for x in (f"--{k}", str(out / v))]
    args = parser.parse_args(argv)
    assert stage.run(args) == 0

    record = json.loads((out / "evaluation.json").read_text())
    held_out = sets.held_out_ids(norm, 0.5)[:2]
    assert record["clip_ids"] == held_out and len(held_out) == 2
    assert record["mlflow_run_id"] == train_run.info.run_id  # found by the checkpoint's hash, not by recency
    with (out / "bitrates.csv").open() as f:
        rows = list(csv.DictReader(f))
    for kbps in cfg.bitrates_kbps:
        got = {r["codec"] for r in rows if float(r["kbps"]) == kbps}
        assert got == {"ours", "opus", "opus_vbr"}, kbps
        cbr = next(r for r in rows if r["codec"] == "opus" and float(r["kbps"]) == kbps)
        assert float(cbr["effective_kbps"]) == pytest.approx(kbps, rel=0.25)  # CBR keeps to the request
    vbr = next(r for r in rows if r["codec"] == "opus_vbr" and float(r["kbps"]) == 0.9)
    assert float(vbr["effective_kbps"]) > 2.0  # libopus' VBR floor: far above the 0.9 kbps asked
    wide = (out / "vs_opus.csv").read_text().splitlines()
    assert wide[0].startswith("kbps,ours_mel_distance,opus_mel_distance,opus_vbr_mel_distance,ours_pesq")
    assert [line.split(",")[0] for line in wide[1:]] == ["0.9", "1.8", "3.6"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kbps"] == 3.6 and set(metrics["opus"]) == {"0.9kbps", "1.8kbps", "3.6kbps"}
    assert set(metrics["levels"]["3.6kbps"]) == {"-40dBFS", "-6dBFS"}
    report = (out / "report.md").read_text()
    assert "| 3.6 | opus |" in report and "Per input level" in report and "Gates preview" not in report
    # Every evaluation set, scored like the held-out one: in the record, the metrics and the report.
    names = ["held_out", "telephone", "cheap_mic", "reverb", "noise", "unseen_voice"]
    assert list(record["sets"]) == [*names, "field_recordings"]
    assert record["sets"]["held_out"]["metrics"] == record["metrics"]
    assert record["sets"]["telephone"]["clip_ids"] == held_out  # the same clips through the channel
    assert [c.startswith("unseen_klatt") for c in record["sets"]["unseen_voice"]["clip_ids"]] == [True] * 4
    for name in [*names, "field_recordings"]:
        entry = record["sets"][name]["metrics"]
        assert set(entry["ours"]) == {"0.9kbps", "1.8kbps", "3.6kbps"} and set(entry["opus"]) == set(entry["ours"])
        assert set(entry["levels"]["3.6kbps"]) == {"-40dBFS", "-6dBFS"}
        assert f"| {name} |" in report
    assert record["sets"]["noise"]["metrics"]["ours"]["3.6kbps"] != record["metrics"]["ours"]["3.6kbps"]
    assert set(metrics["sets"]) == {*names, "field_recordings"} and "opus_pesq" in metrics["sets"]["reverb"]
    user = record["sets"]["field_recordings"]
    assert user["clip_ids"] == ["field_recordings/b", "field_recordings/spk1__a"]
    assert (user["inputs"], user["accepted"]) == (4, 2)
    assert {r["source_path"]: r["reason"] for r in user["rejected"]} == {
        "broken.wav": "unreadable",
        "notes.txt": "unsupported_format",
    }
    assert set(user["metrics"]["ours"]) == {"0.9kbps", "1.8kbps", "3.6kbps"}
    assert "rejected `broken.wav`: unreadable" in report and "| field_recordings |" in report
    media = sorted(p.relative_to(out / "media").as_posix() for p in (out / "media").rglob("*") if p.is_file())
    assert f"spectrograms/{held_out[0]}.png" in media and f"{held_out[0]}_opus_3.6kbps.wav" in media
    assert all(p.endswith(".png") for p in media if p.startswith("spectrograms/"))  # DVC's image plot
    head = json.loads((out / "headline.json").read_text())
    assert list(head) == ["amp", "snr_db", "pesq", "opus_pesq", "mel", "worst_amp", "worst_pesq"]
    assert head["amp"] == pytest.approx(metrics["amplitude_ratio"], abs=1e-4)
    assert head["worst_pesq"] <= head["pesq"] and all(isinstance(v, float) for v in head.values())
    levels = (out / "levels.csv").read_text().splitlines()
    assert levels[0].startswith("level_dbfs,amp_held_out,amp_telephone") and [r.split(",")[0] for r in levels[1:]] == [
        "-40",
        "-6",
    ]
    # The DVC plots' table: per bitrate, every set's delivered and own amplitude, SNR and PESQ.
    plot = list(csv.DictReader(io.StringIO((out / "sets.csv").read_text())))
    assert [float(r["kbps"]) for r in plot] == sorted(float(k.removesuffix("kbps")) for k in metrics["ours"])
    top = plot[-1]
    assert float(top["amp_held_out"]) == pytest.approx(metrics["amplitude_ratio"], abs=1e-4)
    assert float(top["snr_held_out"]) == pytest.approx(metrics["snr_db"], abs=1e-3)
    assert {f"{m}_{s}" for m in ("amp", "snr", "pesq") for s in record["sets"]} <= set(top)

    client = MlflowClient(mlflow_uri)
    logged = client.get_run(train_run.info.run_id)
    assert logged.data.metrics["held_out/amplitude_ratio_3.6kbps"] == pytest.approx(
        metrics["ours"]["3.6kbps"]["amplitude_ratio"], abs=1e-4
    )
    assert logged.data.metrics["field_recordings/pesq_3.6kbps"] == pytest.approx(
        record["sets"]["field_recordings"]["metrics"]["ours"]["3.6kbps"]["pesq"], abs=1e-4
    )
    # Every bitrate, level and clip as tables, not as metrics; the sets as the run's datasets.
    assert not [k for k in logged.data.metrics if "." in k.split("/")[0] or "/" not in k]
    tables = {a.path for a in client.list_artifacts(train_run.info.run_id, "evaluation")}
    assert {"evaluation/bitrates.json", "evaluation/levels.json", "evaluation/clips.json"} <= tables
    datasets = {d.dataset.name: d for d in logged.inputs.dataset_inputs}
    assert set(datasets) == {*names, "field_recordings"}
    assert datasets["telephone"].dataset.digest == record["eval_set_fingerprint"]
    assert "Held-out speakers at 3.6 kbps" in logged.data.tags["mlflow.note.content"]
    assert logged.data.tags["eval_set_fingerprint"] == record["eval_set_fingerprint"]
    # The served model (codec encode + decode) is logged into the training run by evaluate.
    served = mlflow.pyfunc.load_model(record["model_uri"])
    tone = (0.1 * np.sin(np.arange(1600) / 5.0)).tolist()
    assert np.asarray(served.predict(pd.DataFrame({"audio": [tone]}))["audio"][0]).shape == (1600,)
    names = {a.path for a in client.list_artifacts(train_run.info.run_id, "evaluation")}
    assert {"evaluation/report.md", "evaluation/bitrates.csv", f"evaluation/{held_out[0]}_spectrograms.png"} <= names


def test_a_checkpoint_without_its_split_is_refused(tmp_path: Path) -> None:
    from codec.errors import UserError

    clips = make_clips(2, seconds=0.5)
    raw, norm = write_data(tmp_path / "data", clips)
    ckpt = tmp_path / "codec.pt"
    save_checkpoint(ckpt, build_codec(tiny_config(), seed=0))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"evaluate": {"max_clips": 1}}))
    parser = argparse.ArgumentParser()
    stage.add_arguments(parser)
    args = parser.parse_args(["--model", str(ckpt), "--data", str(norm), "--raw", str(raw), "--no-mlflow"])
    args.params = str(tmp_path / "params.yaml")
    with pytest.raises(UserError, match="val_fraction"):
        stage.run(args)


def test_held_out_clips_are_spread_over_the_held_out_speakers() -> None:
    ids = [f"spk{s}_{k}" for s in "abc" for k in range(4)] + ["loose"]
    speakers = {i: i.split("_")[0] for i in ids if i != "loose"}
    picked = sets.spread_over_speakers(ids, speakers, 5)
    assert picked == ["loose", "spka_0", "spka_1", "spkb_0", "spkc_0"]  # every voice before a second clip
    assert sets.spread_over_speakers(ids, speakers, 100) == sorted(ids)


def test_the_logged_model_serves_any_length_and_needs_no_private_package(
    mlflow_uri: str, tmp_path: Path, ckpt: Path
) -> None:
    import mlflow
    import pandas as pd

    from codec.inference.served import log_model

    mlflow.set_experiment("serving")
    with mlflow.start_run() as run:
        log_model(ckpt)
    uri = f"runs:/{run.info.run_id}/codec"
    served = mlflow.pyfunc.load_model(uri)
    for seconds in (2.0, 0.37):  # not the example's 0.25 s
        x = np.zeros(int(seconds * 16000), np.float32)
        x[::50] = 0.1
        (y,) = served.predict(pd.DataFrame({"audio": [x.tolist()]}))["audio"]
        assert y.shape == x.shape and np.isfinite(y).all()
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "dl")))
    requirements = (local / "requirements.txt").read_text()
    assert "telugu-speech-codec" not in requirements and "torch==" in requirements and "soxr==" in requirements
    assert (local / "code" / "codec" / "inference" / "served.py").is_file()  # the code travels with it
    assert not (local / "code" / "codec" / "model" / "reference").exists()  # not the shipped 14 MB model
    assert not (local / "uv.lock").exists()  # nor the repository's lock file (the whole project's environment)
    # The model is code and the plain checkpoint: nothing pickled.
    assert (local / "artifacts" / "codec.pt").is_file() and not list(local.rglob("*.pkl"))


# --- what the stage prints -----------------------------------------------------------------------


def test_the_stage_prints_a_few_lines_per_set_and_progress_only_on_a_terminal() -> None:
    """By default codec evaluate prints ours beside Opus at the top bitrate and the amplitude per
    set, then the worst set and where the report is (--verbose: the report); progress is one line
    rewritten on a terminal, and nothing at all in a log."""
    clips = make_clips(2)
    params = ep.EvaluateParams(levels_dbfs=[-40.0, -6.0], opus_modes=["cbr"], side_info=True)
    fine = ev.evaluate_model(PcmCodec(), clips, params, NO_LIMITER, bitrates_kbps=[160.0])
    coarse = ev.evaluate_model(PcmCodec(bits=3), clips, params, NO_LIMITER, bitrates_kbps=[96.0])
    lines = stage.console_summary(report.sets_summary({"held_out": fine, "coarse": coarse}), "reports/report.md")
    assert len(lines) == 1 + 2 * 2 + 2, lines  # a heading, two lines per set, the worst set and the report
    assert lines[0].startswith("codec evaluate: 2 evaluation sets")
    assert lines[1].startswith("  held_out (2 clips) at 160 kbps: ours PESQ 4.") and "; Opus PESQ " in lines[1]
    assert lines[2].startswith("    amplitude ") and float(lines[2].split()[1]) == pytest.approx(1.0, abs=0.03)
    assert "worst input level, -" in lines[2] and "; without side information " in lines[2]
    assert lines[3].startswith("  coarse (2 clips) at 96 kbps: ours PESQ ")
    assert lines[-2].startswith("  worst set: coarse (PESQ ") and "reports/report.md" in lines[-1]
    assert max(map(len, lines)) <= 120

    log = io.StringIO()  # not a terminal
    quiet = stage.TerminalProgress(log)
    quiet("1/2 parts done (held_out at 160 kbps)")
    quiet.close()
    assert log.getvalue() == ""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    shown = stage.TerminalProgress(tty)
    steps = ["1/2 parts done (held_out at 160 kbps)", "2/2 parts done (coarse at 96 kbps)"]
    for step in steps:
        shown(step)
    shown.close()
    out = tty.getvalue()
    assert out.count("\r") == len(steps) + 1 and "\n" not in out  # one line, rewritten, cleared at the end
    assert "codec evaluate: 2/2 parts done (coarse at 96 kbps)" in out


def test_sets_and_bitrates_evaluated_in_two_processes_read_as_in_one(tmp_path: Path) -> None:
    """Issue 26: codec evaluate fans its sets and bitrates out over evaluate.workers processes. The
    figures, per-clip rows, level sweep and sample audio are those of one process, and each set reads
    as evaluate_model of the whole set; the Opus cache counts the workers' hits and misses."""
    from codec.evaluation.baseline_cache import OpusCache

    sets_ = {"held_out": make_clips(2), "other": make_clips(2, seed=1)}
    params = ep.EvaluateParams(levels_dbfs=[-40.0, -6.0], opus_modes=["cbr"], audio_samples=1, workers=1)
    model = PcmCodec(bits=3)
    one = stage.evaluate_sets(model, sets_, params, NO_LIMITER, OpusCache(tmp_path / "one"))
    cache = OpusCache(tmp_path / "two")
    two = stage.evaluate_sets(model, sets_, dataclasses.replace(params, workers=2), NO_LIMITER, cache)
    assert (cache.hits, cache.misses) == (0, 2 * 2 * 2)  # 2 sets x 2 bitrates x 2 clips, counted from the workers
    whole = ev.evaluate_model(model, sets_["held_out"], params, NO_LIMITER)

    def fields(e: ev.Evaluation) -> str:  # repr: NaN reads equal to NaN
        return repr([e.clip_ids, e.bitrates_kbps, e.rows, e.levels, e.per_clip, e.without_side])

    assert list(two) == list(sets_) and fields(two["held_out"]) == fields(one["held_out"]) == fields(whole)
    assert fields(two["other"]) == fields(one["other"]) and two["held_out"].bitrates_kbps == [48.0, 96.0]
    for name in sets_:
        assert {k: list(v) for k, v in two[name].samples.items()} == {k: list(v) for k, v in one[name].samples.items()}
        for clip_id, audio in one[name].samples.items():
            for key, x in audio.items():
                np.testing.assert_array_equal(two[name].samples[clip_id][key], x)
    assert list(whole.samples["clip000"]) == list(one["held_out"].samples["clip000"])
    assert len(two["held_out"].levels) == 2 * 2 and len(two["held_out"].rows) == 2 * 2  # ours + opus per bitrate


def test_repeated_codings_come_from_memory_and_read_the_same(tmp_path: Path) -> None:
    """Issue 26: codec evaluate codes the same clip at each sweep level and again without the side
    information; a real codec's repeats of the same input or codes are answered from memory, and the
    evaluation is the same to the bit (rows, levels, per-clip metrics, sample audio)."""
    clips = make_clips(2)
    params = ep.EvaluateParams(levels_dbfs=[-40.0, -26.0, -6.0], opus_modes=[], audio_samples=1)
    model = tiny_codec([c.audio for c in clips])
    kbps = [float(model.config.bitrates_kbps[-1])]
    plain = ev.evaluate_model(model, clips, params, NO_LIMITER, bitrates_kbps=kbps)
    remembered = ev.RepeatedCoding(model)
    fast = ev.evaluate_model(remembered, clips, params, NO_LIMITER, bitrates_kbps=kbps)
    assert repr([fast.rows, fast.levels, fast.per_clip, fast.without_side]) == repr(
        [plain.rows, plain.levels, plain.per_clip, plain.without_side]
    )
    for key, audio in plain.samples["clip000"].items():
        np.testing.assert_array_equal(fast.samples["clip000"][key], audio)
    # 2 clips x (1 with + 1 without side information + 3 levels) codings = 10 encodes and 10 decodes:
    # the run without side information encodes its clip again, and every level decodes its clip's codes.
    assert remembered.misses + remembered.hits == 20 and remembered.hits >= 2 + 2
    small = ev.RepeatedCoding(model, max_bytes=1)  # nothing kept: every coding runs
    ev.evaluate_model(small, clips, params, NO_LIMITER, bitrates_kbps=kbps)
    assert small.hits == 0 and small.misses == 20


def test_the_opus_baseline_is_coded_once_and_reused_by_the_next_evaluation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 26: a small experiment re-coded the same clips with Opus at the same bitrates. With
    a cache the second evaluation (another model) codes nothing with Opus and reads the same
    numbers and sample audio; another bitrate, clip or frame length is coded; an unreadable
    entry is coded again and replaced."""
    from codec.evaluation.baseline_cache import OpusCache

    encodes: list[tuple[int, bool]] = []
    real = ev.opus_roundtrip

    def counting(audio: np.ndarray, rate: int, bps: int, **kw: tp.Any) -> tp.Any:
        encodes.append((bps, kw["vbr"]))
        return real(audio, rate, bps, **kw)

    monkeypatch.setattr(ev, "opus_roundtrip", counting)
    clips = make_clips(2)
    params = ep.EvaluateParams(levels_dbfs=[-26.0], opus_modes=["cbr", "vbr"], audio_samples=1)
    cache = OpusCache(tmp_path / "cache")

    def run(model: nn.Module, c: OpusCache | None = cache, **kw: tp.Any) -> ev.Evaluation:
        return ev.evaluate_model(model, clips, params, NO_LIMITER, bitrates_kbps=[160.0], opus_cache=c, **kw)

    first = run(PcmCodec())
    assert len(encodes) == 4 and (cache.hits, cache.misses) == (0, 4)  # 2 clips x 2 modes
    second = run(PcmCodec(gain=0.5))
    assert len(encodes) == 4 and cache.hits == 4  # nothing coded again
    opus_rows = [r for r in first.rows if r.codec.startswith("opus")]
    assert [r for r in second.rows if r.codec.startswith("opus")] == opus_rows
    assert second.row("ours", 160.0) != first.row("ours", 160.0)  # ours is measured each time
    for key, audio in first.samples.items():
        if key[1].startswith("opus"):
            np.testing.assert_array_equal(second.samples[key], audio)
    uncached = run(PcmCodec(), None)
    assert len(encodes) == 8 and [r for r in uncached.rows if r.codec.startswith("opus")] == opus_rows
    # Another frame length is another setting; a broken entry is measured again.
    entry = next((tmp_path / "cache").rglob("*.json"))
    entry.write_text("{not json")
    run(PcmCodec())
    assert len(encodes) == 9 and json.loads(entry.read_text())["effective_kbps"] > 0
    params = dataclasses.replace(params, opus_frame_ms=40)
    run(PcmCodec())
    assert len(encodes) == 13
