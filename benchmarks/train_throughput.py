"""Training throughput in seconds of audio per second of wall time.

CPU: fp32 for the demo model (params.yaml) and, side by side in this process, the
tiny test model as an anchor; prints the ratio. GPU (when present): the GPU profile
model in fp32 (TF32 off) and bf16 autocast, and prints bf16 / fp32.

    python benchmarks/train_throughput.py [--steps 5] [--batch 4] [--segment-s 0.4]
"""

from __future__ import annotations

import argparse
import time

import torch

from codec.losses import MultiScaleMelLoss
from codec.model import CodecConfig, build_codec, cpu_demo_config, gpu_config, tiny_config


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
        loss = (y - x).abs().mean() + mel(y, x) + out.commitment_loss + out.codebook_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch * seg / cfg.sample_rate / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--segment-s", type=float, default=0.4)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    seg = int(a.segment_s * 16000) // 320 * 320
    cpu = torch.device("cpu")
    tiny = throughput(tiny_config(), cpu, None, a.steps, a.batch, seg)
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


if __name__ == "__main__":
    main()
