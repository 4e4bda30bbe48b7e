"""Training throughput in seconds of audio per second of wall time, and on a GPU the
quality reached in a fixed training time.

CPU: fp32 for the demo model (params.yaml) and, side by side in this process, the
tiny test model as an anchor; prints the ratio. GPU (when present): the GPU profile
model in fp32 (TF32 off) and bf16 autocast, and prints bf16 / fp32; then trains the
GPU profile (``conf/train/gpu.yaml``) on ``data/normalized`` for each of
``--quality-minutes`` (default 10 and 20, cumulative: one run, resumed) and prints the
held-out SNR, mel distance and amplitude ratio at the top bitrate after each.

    python benchmarks/train_throughput.py [--steps 5] [--batch 4] [--segment-s 0.4]
    python benchmarks/train_throughput.py --quality-minutes 0.5 1 --quality-device cpu  # the path, on a CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from codec.evaluation.metrics import amplitude_ratio, mel_distance, snr_db
from codec.model.codec import Codec, CodecConfig, build_codec, cpu_demo_config, gpu_config
from codec.model.serving import for_inference
from codec.params import load_section
from codec.training.dataset import read_clips, split_clips
from codec.training.loop import train
from codec.training.losses import MultiScaleMelLoss
from codec.training.params import TrainParams

ROOT = Path(__file__).resolve().parents[1]

# A few-thousand-parameter model: the CPU run of the same code path.
TINY = CodecConfig(
    encoder_channels=4,
    latent_dim=32,
    decoder_channels=64,
    dilations=(1, 3),
    n_codebooks=12,
    codebook_size=64,
    codebook_dim=4,
    bitrates_kbps=(0.9, 1.8, 3.6),
)


def throughput(
    cfg: CodecConfig, device: torch.device, dtype: torch.dtype | None, steps: int, batch: int, seg: int
) -> float:
    """Audio seconds trained per wall second (after one warm-up step)."""
    model = build_codec(cfg, seed=0).to(device).train()
    mel = MultiScaleMelLoss(cfg.sample_rate).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = (torch.randn(batch, 1, seg) * 0.1).to(device)
    start = 0.0
    for i in range(steps + 1):
        if i == 1:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device_type=device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = model(x)
        y = out.audio.float()
        loss = (y - x).abs().mean() + mel(x, y) + out.commitment_loss + out.codebook_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch * seg / cfg.sample_rate / (time.perf_counter() - start)


def held_out(model: Codec, params: TrainParams, data: Path, max_clips: int = 32) -> dict[str, float]:
    """SNR, mel distance and amplitude ratio at the top bitrate over the held-out clips."""
    fast = for_inference(model.to("cpu"))
    clips = split_clips(read_clips(data), params.val_fraction)[1][:max_clips]
    rate, top = params.model.sample_rate, params.model.n_codebooks
    refs, ests = [], []
    with torch.inference_mode():
        for clip in clips:
            x = sf.read(clip.path, dtype="float32")[0]
            y = fast.decode(fast.encode(torch.from_numpy(x)[None, None], top))[0, 0, : len(x)].numpy()
            refs.append(x)
            ests.append(y)
    ref, est = np.concatenate(refs), np.concatenate(ests)
    return {
        "clips": float(len(clips)),
        "snr_db": snr_db(ref, est),
        "mel_distance": mel_distance(ref, est, rate),
        "amplitude_ratio": amplitude_ratio(ref, est),
    }


def composed_params(option: str) -> Path:
    """params.yaml composed from conf/ with ``train=<option>``, as ``dvc exp run -S train=<option>`` writes it."""
    from dvc.utils.hydra import compose_and_dump

    out = Path(tempfile.mkdtemp(prefix="train-profile-")) / "params.yaml"
    compose_and_dump(out, str(ROOT / "conf"), None, "config", "", [f"train={option}"])
    return out


def quality_in_time(
    minutes: list[float], profile: str, data: Path, device: str, precision: str | None, keep: Path | None = None
) -> list[tuple[float, int, dict[str, float]]]:
    """Train ``profile``'s train section for ``minutes`` (cumulative marks, one run resumed at
    each) and score the held-out clips at every mark: (minutes, step, scores). With ``keep``,
    the last checkpoint (weights, optimizer, history) is copied there."""
    base = load_section(TrainParams, "train", composed_params(profile))
    base = dataclasses.replace(base, device=device, precision=precision or base.precision, progress=False, resume=False)  # type: ignore[arg-type]
    rows = []
    with tempfile.TemporaryDirectory(prefix="train-quality-") as out:
        done = 0.0
        for mark in sorted(minutes):
            params = dataclasses.replace(base, resume=done > 0, time_limit_s=(mark - done) * 60.0)
            result = train(params, data, out)
            done = mark
            rows.append((mark, result.step, held_out(result.model, params, data)))
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy2(result.checkpoint_path, keep / "checkpoint.pt")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--segment-s", type=float, default=0.4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quality-minutes", type=float, nargs="*", default=None, help="GPU default: 10 20")
    ap.add_argument("--quality-device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--profile", default="gpu", help="the train option of conf/ to train (conf/train/NAME.yaml)")
    ap.add_argument("--data", type=Path, default=Path("data/normalized"))
    ap.add_argument("--keep", type=Path, default=None, help="copy the quality run's last checkpoint into this folder")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    seg = int(a.segment_s * 16000) // 320 * 320
    cpu = torch.device("cpu")
    tiny = throughput(TINY, cpu, None, a.steps, a.batch, seg)
    demo = throughput(cpu_demo_config(), cpu, None, a.steps, a.batch, seg)
    print(
        f"CPU fp32 ({a.threads} threads): tiny {tiny:.2f} audio-s/s, demo {demo:.2f} audio-s/s, "
        f"demo/tiny {demo / tiny:.3f}"
    )
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
        batch, seg_gpu = 16, 16000 // 320 * 320
        fp32 = throughput(gpu_config(), gpu, None, 20, batch, seg_gpu)
        bf16 = throughput(gpu_config(), gpu, torch.bfloat16, 20, batch, seg_gpu)
        print(
            f"GPU {torch.cuda.get_device_name()}: fp32 {fp32:.1f} audio-s/s, bf16 {bf16:.1f} audio-s/s, "
            f"bf16/fp32 {bf16 / fp32:.2f}"
        )
    else:
        print("no CUDA device: GPU bf16 vs fp32 not measured")
    minutes = a.quality_minutes
    if minutes is None:
        minutes = [10.0, 20.0] if torch.cuda.is_available() else []
    if minutes and a.quality_device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: quality after a fixed GPU time not measured (--quality-device cpu runs the path)")
    elif minutes:
        if not (a.data / "manifest.csv").is_file():
            raise SystemExit(f"{a.data}/manifest.csv not found: run dvc repro validate first")
        precision = None if a.quality_device == "cuda" else "fp32"  # None: the profile's
        print(f"{a.profile} train profile on {a.data}, {a.quality_device}: held-out at the top bitrate")
        print(f"{'minutes':>7} {'steps':>6} {'SNR dB':>7} {'mel dist':>8} {'amplitude':>9}")
        for mark, step, r in quality_in_time(minutes, a.profile, a.data, a.quality_device, precision, a.keep):
            print(f"{mark:7.1f} {step:6d} {r['snr_db']:7.2f} {r['mel_distance']:8.3f} {r['amplitude_ratio']:9.3f}")


if __name__ == "__main__":
    main()
