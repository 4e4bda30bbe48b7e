"""The training core: data in, trained codec out. Imports only torch, torchaudio, numpy,
soundfile, tqdm and this project's torch-only modules, so it runs on a bare GPU box;
MLflow tracking wraps it in :mod:`codec.train_stage`.

- Device: CUDA when present (bf16 autocast, TF32 matmuls and convolutions), else CPU fp32.
- Determinism: the model is built from ``seed``; batches, segment offsets and quantizer
  dropout come from one ``torch.Generator`` seeded with ``seed``. Its state, the
  global RNG states, the optimizer and the scheduler go into every checkpoint, so a run
  resumed from a checkpoint ends where an uninterrupted one does.
- DDP under ``torchrun`` (gloo on CPU, nccl on GPU): every rank draws the same *global*
  batch (and the same dropout settings) and takes its own slice, so N processes with
  batch ``B / N`` each compute the same update as one process with batch ``B``.
- Checkpoints (``out/checkpoints/last.pt``) are written atomically by rank 0 and read
  with ``torch.load(weights_only=True)``: configs are plain dicts, RNG states tensors.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import typing as tp
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from codec.dataset import SegmentSampler, read_manifest, split_clips, validation_audio
from codec.errors import UserError
from codec.losses import DEFAULT_WEIGHTS, MultiScaleMelLoss, amplitude_ratio, snr_db, weighted_total
from codec.model import Codec, CodecConfig, build_codec, read_checkpoint, save_checkpoint
from codec.quantize import codebook_usage

CHECKPOINT = "checkpoints/last.pt"
MODEL_FILE = "codec.pt"

# kind ("train" or "val"), step, metrics
Callback = tp.Callable[[str, int, dict[str, float]], None]


@dataclasses.dataclass
class MelParams:
    """Multi-scale mel loss: STFT window sizes and mel bands per scale."""

    windows: tuple[int, ...] = (64, 256, 1024)
    n_mels: tuple[int, ...] = (10, 40, 80)


@dataclasses.dataclass
class TrainParams:
    """The ``train`` section of ``params.yaml``."""

    seed: int = 0
    steps: int = 1000
    # Global batch: split across DDP ranks (must divide by the number of processes).
    batch_size: int = 8
    segment_s: float = 0.5
    lr: float = 1e-3
    betas: tuple[float, ...] = (0.8, 0.99)
    # Per-step exponential learning-rate decay (DAC: 0.999996 over 400k steps).
    lr_gamma: float = 1.0
    grad_clip: float = 100.0
    # Steps trained as a plain autoencoder before the codebooks are fitted (k-means on
    # the latents) and quantization starts: codebooks fitted to a trained latent space
    # start useful instead of chasing a moving one.
    quantizer_warmup_steps: int = 0
    val_fraction: float = 0.1
    val_every: int = 250
    val_clips: int = 8
    val_seconds: float = 4.0
    checkpoint_every: int = 250
    log_every: int = 10
    resume: bool = False
    device: tp.Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bf16 autocast on CUDA, fp32 on CPU.
    precision: tp.Literal["auto", "bf16", "fp32"] = "auto"
    # CPU threads for torch (0: leave torch's default).
    threads: int = 0
    cache_audio: bool = True
    progress: bool = True
    # Validation clips logged as audio (input and decoded) by the stage.
    audio_samples: int = 2
    loss_weights: dict[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    mel: MelParams = dataclasses.field(default_factory=MelParams)
    # Multi-period and multi-resolution STFT discriminators with feature matching
    # (codec/discriminator.py): adv/gen_loss and adv/feat_loss join the loss from
    # adv_start_step on (a discriminator is wasted on a codec that can't code yet).
    adversarial: bool = False
    disc_lr: float = 1e-4
    disc_grad_clip: float = 10.0
    adv_start_step: int = 0
    # Widths: the period discriminators' conv channels, the STFT discriminators' channels.
    disc_channels: tuple[int, ...] = (32, 128, 512, 1024)
    disc_stft_channels: int = 32
    # Stop after this many seconds of training in this process (0: no limit), with a
    # checkpoint, as if stopped; train.resume continues. For fixed-time comparisons.
    time_limit_s: float = 0.0
    model: CodecConfig = dataclasses.field(default_factory=CodecConfig)

    def check(self, where: str = "train params") -> None:
        """Raise :class:`UserError` naming the bad value."""
        known = {"loss/l1", "loss/nmse", "loss/level", "loss/mel", "vq/commitment_loss", "vq/codebook_loss"}
        known |= {"adv/gen_loss", "adv/feat_loss"}
        unknown = sorted(set(self.loss_weights) - known)
        if unknown:
            raise UserError(
                f"{where}.loss_weights: unknown loss name(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        for name, value in [
            ("steps", self.steps),
            ("batch_size", self.batch_size),
            ("val_every", self.val_every),
            ("checkpoint_every", self.checkpoint_every),
            ("log_every", self.log_every),
        ]:
            if value < 1:
                raise UserError(f"{where}.{name}: {value} must be at least 1")
        if not 0.0 < self.val_fraction < 1.0:
            raise UserError(f"{where}.val_fraction: {self.val_fraction} must be between 0 and 1")
        if self.segment_s * self.model.sample_rate < self.model.hop_length:
            raise UserError(
                f"{where}.segment_s: {self.segment_s} s is shorter than one frame ({self.model.hop_length} samples)"
            )
        if self.adv_start_step < 0 or self.time_limit_s < 0:
            raise UserError(f"{where}: adv_start_step and time_limit_s must not be negative")
        if len(self.betas) != 2:
            raise UserError(f"{where}.betas: {list(self.betas)} must be two numbers")
        self.model.check(f"{where}.model")

    def to_dict(self) -> dict[str, tp.Any]:
        """Plain nested dict (lists, not tuples): checkpoints, JSON, MLflow."""
        return _plain(dataclasses.asdict(self))


def _plain(x: tp.Any) -> tp.Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def level_loss(y: Tensor, x: Tensor, floor: float = 1e-4) -> Tensor:
    """Mean over items of ``(ln rms(y) − ln rms(x))²`` for ``[B, 1, T]`` audio (near-silent
    items, RMS below ``floor``, are left out: their level carries no information)."""
    rx = x.pow(2).mean(dim=(1, 2)).sqrt()
    ry = y.pow(2).mean(dim=(1, 2)).sqrt()
    keep = rx > floor
    if not bool(keep.any()):
        return y.new_zeros(())
    return (torch.log(ry[keep].clamp_min(floor)) - torch.log(rx[keep])).pow(2).mean()


def params_from_dict(data: tp.Mapping[str, tp.Any]) -> TrainParams:
    """Inverse of :meth:`TrainParams.to_dict` (for a checkpoint's ``params``)."""
    d = dict(data)
    d["mel"] = MelParams(**d.get("mel", {}))
    d["model"] = CodecConfig.from_dict(d.get("model", {}))
    return TrainParams(**d)


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns (on every rank; ``history`` and ``val`` filled on rank 0)."""

    model: Codec
    step: int
    history: list[dict[str, float]]
    val: dict[str, float]
    seconds: float
    audio_seconds_per_second: float
    device: str
    precision: str
    world_size: int
    rank: int
    model_path: Path
    checkpoint_path: Path


@dataclasses.dataclass
class Runtime:
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype, None for fp32
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_runtime(params: TrainParams) -> Runtime:
    """Device, precision and DDP rank from ``params`` and the ``torchrun`` environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if params.device == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device is 'cuda' but no CUDA device is visible; set train.device to auto or cpu")
    use_cuda = params.device == "cuda" or (params.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    else:
        device = torch.device("cpu")
        # Quiet passages of speech decay into denormal floats, which x86 handles in
        # microcode at a large cost; flushing them to zero changes no result that matters.
        torch.set_flush_denormal(True)
    if params.precision == "bf16" and not use_cuda:
        raise UserError(
            "train.precision bf16 needs CUDA here (CPU trains in fp32); set train.precision to auto or fp32"
        )
    dtype = torch.bfloat16 if use_cuda and params.precision in ("auto", "bf16") else None
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if world > 1 and params.batch_size % world:
        raise UserError(
            f"train.batch_size {params.batch_size} does not divide among {world} processes; "
            f"make it a multiple of {world}"
        )
    return Runtime(device, dtype, rank, world, local_rank)


def _rng_state(generator: torch.Generator) -> dict[str, Tensor]:
    state = {"data": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(generator: torch.Generator, state: dict[str, Tensor]) -> None:
    generator.set_state(state["data"].cpu())
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


@torch.no_grad()
def validate(
    model: Codec,
    clips: list[tuple[str, Tensor]],
    mel_loss: nn.Module,
    device: torch.device,
    dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Mean SNR (dB), amplitude ratio and mel distance over ``clips`` at each served bitrate,
    plus codebook usage at the top one.

    Keys: ``val/<kbps>kbps/{snr_db,amplitude_ratio,mel_distance}``, the top bitrate's
    also as ``val/{snr_db,amplitude_ratio,mel_distance}``, and ``vq/usage``,
    ``vq/perplexity`` (means over codebooks).
    """
    was_training = model.training
    model.eval()
    cfg = model.config
    out: dict[str, float] = {}
    top = max(cfg.bitrates_kbps)
    codes_top = []
    for kbps in cfg.bitrates_kbps:
        n_q = cfg.n_quantizers_for(kbps)
        snr, amp, mel = [], [], []
        for _, x in clips:
            x = x.to(device)
            with torch.autocast(device_type=device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                res = model(x, n_q)
            y = res.audio.float()
            snr.append(float(snr_db(y, x)[0]))
            amp.append(float(amplitude_ratio(y, x)[0]))
            mel.append(float(mel_loss(y, x)))
            if kbps == top:
                codes_top.append(res.codes)
        tag = f"val/{kbps:g}kbps"
        out[f"{tag}/snr_db"] = sum(snr) / len(snr)
        out[f"{tag}/amplitude_ratio"] = sum(amp) / len(amp)
        out[f"{tag}/mel_distance"] = sum(mel) / len(mel)
    for name in ("snr_db", "amplitude_ratio", "mel_distance"):
        out[f"val/{name}"] = out[f"val/{top:g}kbps/{name}"]
    codes = torch.cat(codes_top, dim=2)
    used, perplexity = codebook_usage(codes, cfg.codebook_size)
    out["vq/usage"] = float(used.mean())
    out["vq/perplexity"] = float(perplexity.mean())
    model.train(was_training)
    return out


def train(
    params: TrainParams,
    data_dir: str | Path,
    out_dir: str | Path,
    callback: Callback | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train a codec on ``data_dir/manifest.csv``; write ``out_dir/codec.pt`` and checkpoints.

    ``callback(kind, step, metrics)`` runs on rank 0 every ``log_every`` steps
    (``kind="train"``) and after each validation (``kind="val"``). ``stop_after``
    stops after that step as if the run had been killed (tests of resume).
    """
    params.check()
    if params.threads > 0:
        torch.set_num_threads(params.threads)
    rt = pick_runtime(params)
    out_dir = Path(out_dir)
    ckpt_path = out_dir / CHECKPOINT
    model_path = out_dir / MODEL_FILE
    cfg = params.model

    clips = read_manifest(data_dir, sample_rate=cfg.sample_rate)
    train_clips, val_clips = split_clips(clips, params.val_fraction)
    segment = max(round(params.segment_s * cfg.sample_rate) // cfg.hop_length, 1) * cfg.hop_length
    sampler = SegmentSampler(train_clips, segment, cache=params.cache_audio)
    val_audio = validation_audio(val_clips, params.val_clips, params.val_seconds) if rt.is_main else []

    model = build_codec(cfg, seed=params.seed).to(rt.device)
    mel_loss = MultiScaleMelLoss(cfg.sample_rate, params.mel.windows, params.mel.n_mels).to(rt.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.lr, betas=(params.betas[0], params.betas[1]))
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=params.lr_gamma)
    adv: tp.Any = None
    if params.adversarial:
        from codec.discriminator import AdversarialTrainer

        adv = AdversarialTrainer(
            cfg.sample_rate,
            params.disc_lr,
            (params.betas[0], params.betas[1]),
            params.lr_gamma,
            rt.device,
            params.seed,
            grad_clip=params.disc_grad_clip,
            period_channels=tuple(params.disc_channels),
            stft_channels=params.disc_stft_channels,
        )

    generator = torch.Generator().manual_seed(params.seed)
    torch.manual_seed(params.seed)
    step = 0
    history: list[dict[str, float]] = []
    val: dict[str, float] = {}
    if params.resume and ckpt_path.is_file():
        # Loaded on the CPU: load_state_dict moves weights and optimizer state to the
        # parameters' device, and the RNG states must stay CPU ByteTensors.
        ckpt = read_checkpoint(ckpt_path, map_location="cpu")
        if ckpt["model_config"] != cfg.to_dict():
            raise UserError(
                f"{ckpt_path} was trained with another model config; set train.resume: false to start over, "
                "or restore the params it was trained with"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if adv is not None:
            if "adversarial" not in ckpt:
                raise UserError(f"{ckpt_path} has no discriminator state; set train.resume: false to start over")
            adv.load_state_dict(ckpt["adversarial"])
        step = int(ckpt["step"])
        history = list(ckpt.get("history", []))
        val = dict(ckpt.get("val", {}))
        _set_rng_state(generator, ckpt["rng"])

    def fit_codebooks() -> None:
        # Codebooks from the data (identical on every rank: same seed, same batch).
        # Enough segments for every code to get its own latent vector.
        init_gen = torch.Generator().manual_seed(params.seed + 1)
        n_init = min(max(math.ceil(cfg.codebook_size / (segment // cfg.hop_length)), params.batch_size), 256)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            z = model.encode_latents(sampler.sample(n_init, init_gen).to(rt.device))
            model.quantizer.init_codebooks(z, init_gen)
        model.train(was_training)

    net: nn.Module = model
    if rt.world_size > 1:
        net = DistributedDataParallel(
            model,
            device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
            # Gradient-trained codebooks sit idle during the autoencoder warm-up.
            find_unused_parameters=params.quantizer_warmup_steps > 0 and cfg.quantizer == "factorized",
        )

    def save(path: Path, with_state: bool) -> None:
        extra: dict[str, tp.Any] = {"params": params.to_dict(), "step": step, "val": val}
        if with_state:
            extra.update(
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                rng=_rng_state(generator),
                history=history,
            )
            if adv is not None:
                extra["adversarial"] = adv.state_dict()
        save_checkpoint(path, model, extra)

    local_batch = params.batch_size // rt.world_size
    lo, hi = rt.rank * local_batch, (rt.rank + 1) * local_batch
    bar = None
    if rt.is_main and params.progress and step < params.steps:
        from tqdm import tqdm

        bar = tqdm(total=params.steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
    start = time.perf_counter()
    start_step = step
    net.train()
    while step < params.steps:
        if step == params.quantizer_warmup_steps:
            fit_codebooks()
        quantize = step >= params.quantizer_warmup_steps
        batch = sampler.sample(params.batch_size, generator)
        n_q = model.quantizer.sample_n_quantizers(params.batch_size, generator)
        x = batch[lo:hi].to(rt.device, non_blocking=True)
        n_q = n_q[lo:hi]
        with torch.autocast(device_type=rt.device.type, dtype=rt.dtype or torch.bfloat16, enabled=rt.dtype is not None):
            res = net(x, n_q, quantize=quantize)
        y = res.audio.float()
        losses: dict[str, Tensor] = {
            "loss/l1": (y - x).abs().mean(),
            # Error energy over signal energy: 1/SNR, free of the data's level.
            "loss/nmse": (y - x).pow(2).sum() / x.pow(2).sum().clamp_min(1e-8),
            # The seed's failure in one number: output level over input level, per item,
            # as a squared log ratio. A waveform loss alone rewards shrinking what the
            # codes can't pin down (the MSE-optimal output has RMS ratio sqrt(1 - 1/SNR));
            # holding the level costs ~0.3 dB of SNR at 5 dB and keeps the ratio at ~1.
            "loss/level": level_loss(y, x),
            "loss/mel": mel_loss(y, x),
            "vq/commitment_loss": res.commitment_loss,
            "vq/codebook_loss": res.codebook_loss,
        }
        if adv is not None and step >= params.adv_start_step:
            losses.update(adv.step(y, x, rt.dtype))
        # adv/disc_* are the discriminators' own (logged, never weighted into the codec's loss).
        total = weighted_total({k: v for k, v in losses.items() if not k.startswith("adv/disc_")}, params.loss_weights)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1

        if step % params.log_every == 0 or step == params.steps:
            with torch.no_grad():
                stats = torch.stack(
                    [
                        total.detach(),
                        *[v.detach().float() for v in losses.values()],
                        snr_db(y.detach(), x).mean(),
                        amplitude_ratio(y.detach(), x).mean(),
                        grad_norm.float(),
                    ]
                )
            if rt.world_size > 1:
                dist.all_reduce(stats)
                stats /= rt.world_size
            names = ["loss/total", *losses, "train/snr_db", "train/amplitude_ratio", "train/grad_norm"]
            metrics = {k: float(v) for k, v in zip(names, stats.tolist(), strict=True)}
            metrics["train/lr"] = float(scheduler.get_last_lr()[0])
            if adv is not None:
                metrics["adv/lr"] = adv.lr
            if rt.is_main:
                history.append({"step": float(step), **metrics})
                if callback is not None:
                    callback("train", step, metrics)
                if bar is not None:
                    bar.set_postfix(
                        loss=f"{metrics['loss/total']:.3f}",
                        snr=f"{metrics['train/snr_db']:.1f}dB",
                        amp=f"{metrics['train/amplitude_ratio']:.2f}",
                        refresh=False,
                    )
        if bar is not None:
            bar.update(1)

        if (step % params.val_every == 0 or step == params.steps) and rt.is_main:
            val = validate(model, val_audio, mel_loss, rt.device, rt.dtype)
            history.append({"step": float(step), **val})
            if callback is not None:
                callback("val", step, val)
            if bar is not None:
                bar.write(
                    f"step {step}: val snr {val['val/snr_db']:.2f} dB, amplitude ratio "
                    f"{val['val/amplitude_ratio']:.3f}, codebook usage {val['vq/usage']:.2f}"
                )
        out_of_time = params.time_limit_s > 0 and _agreed(time.perf_counter() - start >= params.time_limit_s, rt)
        if step % params.checkpoint_every == 0 or step == params.steps or step == stop_after or out_of_time:
            if rt.is_main:
                save(ckpt_path, with_state=True)
            if rt.world_size > 1:
                dist.barrier()
        if (stop_after is not None and step >= stop_after) or out_of_time:
            break
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start
    trained_audio = (step - start_step) * params.batch_size * segment / cfg.sample_rate
    if step >= params.steps and rt.is_main:
        save(model_path, with_state=False)
    if rt.world_size > 1:
        dist.barrier()
    return TrainResult(
        model=model,
        step=step,
        history=history,
        val=val,
        seconds=seconds,
        audio_seconds_per_second=trained_audio / seconds if seconds > 0 else math.nan,
        device=str(rt.device),
        precision="bf16" if rt.dtype is not None else "fp32",
        world_size=rt.world_size,
        rank=rt.rank,
        model_path=model_path,
        checkpoint_path=ckpt_path,
    )


def _agreed(flag: bool, rt: Runtime) -> bool:
    """``flag`` on rank 0, on every rank (clocks differ: all ranks must stop at the same step)."""
    if rt.world_size == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=rt.device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def finish_distributed() -> None:
    """Tear down the process group ``train`` started under ``torchrun`` (if any)."""
    if dist.is_initialized():
        dist.destroy_process_group()


__all__ = [
    "CodecConfig",
    "MelParams",
    "TrainParams",
    "TrainResult",
    "finish_distributed",
    "params_from_dict",
    "train",
    "validate",
]
