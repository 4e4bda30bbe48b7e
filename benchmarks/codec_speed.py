"""Encode+decode speed on CPU (2 threads): our codec against EnCodec 24 kHz at 6 kbps.

Side by side in one process, interleaved round by round (the machines are shared and
noisy: only the ratio means much):

- ``gpu-profile``: :func:`codec.model.codec.gpu_config`'s architecture (the real model);
- ``cpu-demo``: :func:`codec.model.codec.cpu_demo_config` (the waveform demo, conf/train/waveform.yaml);
- ``frame``: :func:`codec.model.codec.frame_config` (the frame-rate model: the reference model's
  architecture and the CPU demo's, conf/train/frame.yaml);
- each as trained (weight-normalized 1-D convolutions) and as ``codec encode``/``decode``
  run it (:func:`codec.model.serving.for_inference`: weight norm folded, convolutions as
  channels-last 2-D ones; same codes and audio);
- ``encodec-24k``: ``EncodecModel.encodec_model_24khz(pretrained=False)`` with
  ``set_target_bandwidth(6.0)``: the anchor.

Ours runs the functions ``codec encode``/``codec decode`` run, at 6 kbps (12 quantizers), with
the samples in memory instead of a file and without model loading:
:func:`codec.inference.pipeline.encode_to_stream` (:func:`codec.inference.prepare.prepare`: the
same blocks, resampling, loudness meter and gain as ``codec encode``'s ``prepare_file``; then
:func:`codec.inference.pipeline.encode_prepared`, the encoder ``codec encode`` calls: limiter,
chunked encode with context, energy side information, bit packing) into memory, then
:func:`codec.inference.pipeline.decode_from_stream` (what ``codec decode`` calls: unpacking,
chunked decode with context, energy shaping, level restore). EnCodec runs ``encode`` then
``decode`` on the same duration at 24 kHz. Weights are random: speed does not depend on them.

    python benchmarks/codec_speed.py [--seconds 10] [--rounds 3] [--threads 2]

prints, per model, the real-time factor (compute seconds per audio second; lower is
faster), the speed as a multiple of real time, and the speed relative to EnCodec's.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
import typing as tp

import numpy as np
import torch

from codec.inference import pipeline
from codec.model.codec import Codec, build_codec, cpu_demo_config, frame_config, gpu_config
from codec.model.serving import for_inference

SR = 16000
KBPS = 6.0
TARGET_SPEEDUP = 5.0
FINGERPRINT = b"\0" * 8  # hashing the weights is a per-load cost, not a per-second one


def speechlike(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """Harmonic bursts with pauses at about -20 dBFS (speed does not depend on content)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(h * phase) / h for h in range(1, 20))
    envelope = (np.sin(2 * np.pi * 2.5 * t) > -0.3).astype(np.float64)
    x = voiced * envelope + 0.01 * rng.standard_normal(t.shape[0])
    return (0.1 * x / np.sqrt(np.mean(x**2))).astype(np.float32)


def ours(model: Codec) -> tp.Callable[[np.ndarray], None]:
    def run(audio: np.ndarray) -> None:
        buf = io.BytesIO()
        pipeline.encode_to_stream(model, audio, SR, KBPS, buf, fingerprint=FINGERPRINT)
        buf.seek(0)
        _, blocks = pipeline.decode_from_stream(model, buf, fingerprint=FINGERPRINT)
        for _ in blocks:
            pass

    return run


def encodec_24k() -> tuple[tp.Callable[[np.ndarray], None], torch.nn.Module]:
    from encodec import EncodecModel

    model = EncodecModel.encodec_model_24khz(pretrained=False)
    model.set_target_bandwidth(6.0)
    model.eval()

    def run(audio: np.ndarray) -> None:
        x = torch.from_numpy(audio).view(1, 1, -1)
        with torch.no_grad():
            model.decode(model.encode(x))

    return run, model


def conv_gmacs(run: tp.Callable[[np.ndarray], None], modules: list[torch.nn.Module], audio: np.ndarray) -> float:
    """Multiply-accumulates of the convolutions and linear layers in one ``run(audio)``, in billions
    (LSTMs, FFTs and element-wise work such as Snake are left out: the layers are the bulk)."""
    total = 0

    def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, torch.nn.ConvTranspose1d):  # each input sample meets every weight
            total += inputs[0].numel() * module.out_channels * module.kernel_size[0] // module.groups
        elif isinstance(module, torch.nn.Conv1d):
            total += output.numel() * module.in_channels * module.kernel_size[0] // module.groups
        elif isinstance(module, torch.nn.Linear):
            total += output.numel() * module.in_features

    handles = [
        m.register_forward_hook(hook)
        for root in modules
        for m in root.modules()
        if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d, torch.nn.Linear))
    ]
    try:
        run(audio)
    finally:
        for h in handles:
            h.remove()
    return total / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="audio per call (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after a warm-up (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    gpu = build_codec(gpu_config(), seed=0).eval()
    demo = build_codec(cpu_demo_config(), seed=0).eval()
    frame = build_codec(frame_config(), seed=0).eval()
    encodec_run, encodec = encodec_24k()
    systems: dict[str, tuple[tp.Callable[[np.ndarray], None], np.ndarray]] = {
        "encodec-24k": (encodec_run, speechlike(args.seconds, 24000)),
        "gpu-profile": (ours(gpu), speechlike(args.seconds, SR)),
        "gpu-profile served": (ours(for_inference(gpu)), speechlike(args.seconds, SR)),
        "cpu-demo": (ours(demo), speechlike(args.seconds, SR)),
        "cpu-demo served": (ours(for_inference(demo)), speechlike(args.seconds, SR)),
        "frame": (ours(frame), speechlike(args.seconds, SR)),
        "frame served": (ours(for_inference(frame)), speechlike(args.seconds, SR)),
    }
    modules = {"encodec-24k": encodec, "gpu-profile": gpu, "cpu-demo": demo, "frame": frame}
    params = {name: sum(p.numel() for p in m.parameters()) / 1e6 for name, m in modules.items()}
    with torch.inference_mode():
        gmacs = {n: conv_gmacs(systems[n][0], [m], systems[n][1]) / args.seconds for n, m in modules.items()}
    times: dict[str, list[float]] = {name: [] for name in systems}
    with torch.inference_mode():
        for run, audio in systems.values():  # warm-up: allocator, kernels
            run(audio)
        for _ in range(args.rounds):
            for name, (run, audio) in systems.items():
                start = time.perf_counter()
                run(audio)
                times[name].append(time.perf_counter() - start)

    rtf = {name: statistics.median(t) / args.seconds for name, t in times.items()}
    anchor = rtf["encodec-24k"]
    print(
        f"encode+decode of {args.seconds:g} s at 6 kbps on CPU, {args.threads} threads, median of {args.rounds} rounds"
    )
    print(f"{'model':<20} {'params':>8} {'GMAC/s':>8} {'RTF':>8} {'x real time':>12} {'vs EnCodec':>11}")
    for name, value in rtf.items():
        base = name.split()[0]
        print(
            f"{name:<20} {params[base]:7.1f}M {gmacs[base]:8.2f} {value:8.4f} {1 / value:12.1f} {anchor / value:10.2f}x"
        )
    for name in ("gpu-profile", "cpu-demo", "frame"):
        best = rtf[f"{name} served"]  # what the CLI runs
        verdict = "meets" if anchor / best >= TARGET_SPEEDUP else "misses"
        print(f"{name}: {anchor / best:.2f}x EnCodec's speed {verdict} the {TARGET_SPEEDUP:g}x target")


if __name__ == "__main__":
    main()
