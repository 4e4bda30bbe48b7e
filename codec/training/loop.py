"""The training loop: data in, trained codec out (DAC's ``scripts/train.py`` shape).

:func:`load` builds a :class:`State` (model, optimizers, losses, data, RNG, step);
:func:`train_step` runs one optimizer step and returns the named losses; :func:`train`
is the short outer loop (logging, validation, checkpoints). Imports only torch and this
project's torch-only modules, so it runs on a bare GPU box; MLflow wraps it in
:mod:`codec.training.stage`.

- Device: CUDA when present (bf16 autocast or fp32 with TF32), else CPU fp32.
- Determinism: the model is built from ``seed``; batches, segment offsets and quantizer
  dropout come from one ``torch.Generator`` seeded with ``seed``. Its state, the global
  RNG states, the optimizers and schedulers go into every checkpoint, so a resumed run
  ends where an uninterrupted one does.
- DDP under ``torchrun``: every rank draws the same *global* batch and dropout settings
  and takes its own slice, so N processes with ``B / N`` each make the update one process
  with ``B`` makes.
- Checkpoints (``out/checkpoints/last.pt``) are written atomically by rank 0 and read with
  ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import math
import time
import typing as tp
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from codec.errors import UserError
from codec.model.checkpoint import read_checkpoint, save_checkpoint
from codec.model.codec import Codec, build_codec
from codec.model.discriminator import AdversarialTrainer
from codec.model.quantize import code_usage
from codec.training.dataset import BatchStream, SegmentSampler, read_clips, split_clips, validation_audio
from codec.training.losses import (
    BandEnvelopeLoss,
    MultiScaleMelLoss,
    amplitude_ratio,
    level_loss,
    snr_db,
    weighted_total,
)
from codec.training.params import TrainParams
from codec.training.runtime import Runtime, agreed, pick_runtime, rng_state, set_rng_state

CHECKPOINT = "checkpoints/last.pt"
MODEL_FILE = "codec.pt"

# kind ("train" or "val"), step, metrics
Callback = tp.Callable[[str, int, dict[str, float]], None]


@dataclasses.dataclass
class State:
    """Everything a run holds; built by :func:`load`, advanced by :func:`train_step`."""

    params: TrainParams
    rt: Runtime
    model: Codec
    net: nn.Module  # the model, wrapped for DDP when there are several processes
    mel_loss: MultiScaleMelLoss
    envelope_loss: BandEnvelopeLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    adv: AdversarialTrainer | None
    sampler: SegmentSampler
    generator: torch.Generator
    val_audio: list[tuple[str, Tensor]]
    segment: int  # samples per training segment (a whole number of frames)
    step: int = 0
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    val: dict[str, float] = dataclasses.field(default_factory=dict)
    batches: BatchStream | None = None  # the training batches from ``generator`` (open_batches)


@dataclasses.dataclass
class Step:
    """What :func:`train_step` returns: named losses (``loss/total`` first), the batch and output."""

    losses: dict[str, Tensor]
    x: Tensor
    y: Tensor
    grad_norm: Tensor


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
            snr.append(float(snr_db(x, y)[0]))
            amp.append(float(amplitude_ratio(x, y)[0]))
            mel.append(float(mel_loss(x, y)))
            if kbps == top:
                codes_top.append(res.codes)
        tag = f"val/{kbps:g}kbps"
        out[f"{tag}/snr_db"] = sum(snr) / len(snr)
        out[f"{tag}/amplitude_ratio"] = sum(amp) / len(amp)
        out[f"{tag}/mel_distance"] = sum(mel) / len(mel)
    for name in ("snr_db", "amplitude_ratio", "mel_distance"):
        out[f"val/{name}"] = out[f"val/{top:g}kbps/{name}"]
    codes = torch.cat(codes_top, dim=2)
    used, perplexity = code_usage(codes, cfg.codebook_size)
    out["vq/usage"] = float(used.mean())
    out["vq/perplexity"] = float(perplexity.mean())
    model.train(was_training)
    return out


def load(params: TrainParams, data_dir: str | Path, resume_from: Path | None = None) -> State:
    """Build the run's state from ``params`` and the clips of ``data_dir``; continue from the
    checkpoint ``resume_from`` when it is given and exists."""
    rt = pick_runtime(params)
    cfg = params.model
    train_clips, val_clips = split_clips(read_clips(data_dir, sample_rate=cfg.sample_rate), params.val_fraction)
    segment = max(round(params.segment_s * cfg.sample_rate) // cfg.hop_length, 1) * cfg.hop_length
    model = build_codec(cfg, seed=params.seed).to(rt.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.lr, betas=(params.betas[0], params.betas[1]))
    adv = None
    if params.adversarial:
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
    state = State(
        params=params,
        rt=rt,
        model=model,
        net=model,
        mel_loss=MultiScaleMelLoss(cfg.sample_rate, params.mel.windows, params.mel.n_mels).to(rt.device),
        envelope_loss=BandEnvelopeLoss(cfg.sample_rate).to(rt.device),
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=params.lr_gamma),
        adv=adv,
        sampler=SegmentSampler(
            train_clips,
            segment,
            cache=params.cache_audio,
            augment=params.augment,
            cache_bytes=int(params.cache_audio_mb * 2**20),
        ),
        generator=torch.Generator().manual_seed(params.seed),
        val_audio=validation_audio(val_clips, params.val_clips, params.val_seconds) if rt.is_main else [],
        segment=segment,
    )
    torch.manual_seed(params.seed)
    if resume_from is not None and resume_from.is_file():
        restore(state, resume_from)
    elif params.init_from:
        initialize(model, Path(params.init_from))
    if rt.world_size > 1:
        state.net = DistributedDataParallel(
            model,
            device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
            # Gradient-trained codebooks sit idle during the autoencoder warm-up.
            find_unused_parameters=params.quantizer_warmup_steps > 0 and cfg.quantizer == "factorized",
        )
    return state


def restore(state: State, path: Path) -> None:
    """Continue ``state`` from the checkpoint at ``path`` (same model config required)."""
    # Read on the CPU: load_state_dict moves weights and optimizer state to the parameters'
    # device, and the RNG states must stay CPU ByteTensors.
    ckpt = read_checkpoint(path, map_location="cpu")
    if ckpt["model_config"] != state.params.model.to_dict():
        raise UserError(
            f"{path} was trained with another model config; set train.resume: false to start over, "
            "or restore the params it was trained with"
        )
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    if state.adv is not None:
        if "adversarial" not in ckpt:
            raise UserError(f"{path} has no discriminator state; set train.resume: false to start over")
        state.adv.load_state_dict(ckpt["adversarial"])
    state.step = int(ckpt["step"])
    state.history = list(ckpt.get("history", []))
    state.val = dict(ckpt.get("val", {}))
    set_rng_state(state.generator, ckpt["rng"])


def initialize(model: Codec, path: Path) -> None:
    """``model``'s weights and codebooks from the checkpoint at ``path`` (``train.init_from``), which
    must hold the same architecture: fine-tuning, not a new model."""
    ckpt = read_checkpoint(path, map_location="cpu")
    if ckpt["model_config"] != model.config.to_dict():
        diff = sorted(k for k in {**ckpt["model_config"], **model.config.to_dict()}
                      if ckpt["model_config"].get(k) != model.config.to_dict().get(k))  # fmt: skip
        raise UserError(
            f"train.init_from: {path} holds another model (model config differs in {', '.join(diff)}); "
            "use train.model settings that match it, or set train.init_from: null to train from scratch"
        )
    model.load_state_dict(ckpt["model"])


def save(state: State, path: Path, with_state: bool) -> None:
    """The model (and, ``with_state``, everything :func:`restore` needs) to ``path``, atomically."""
    extra: dict[str, tp.Any] = {"params": state.params.to_dict(), "step": state.step, "val": state.val}
    if with_state:
        extra.update(
            optimizer=state.optimizer.state_dict(),
            scheduler=state.scheduler.state_dict(),
            rng=rng_state(state.generator, state.batches.rng_state if state.batches else None),
            history=state.history,
        )
        if state.adv is not None:
            extra["adversarial"] = state.adv.state_dict()
    save_checkpoint(path, state.model, extra)


def fit_codebooks(state: State) -> None:
    """Codebooks from the data by k-means on the latents (identical on every rank: same seed,
    same batch), with enough segments for every code to get its own latent vector."""
    cfg, model = state.params.model, state.model
    init_gen = torch.Generator().manual_seed(state.params.seed + 1)
    n_init = min(max(math.ceil(cfg.codebook_size / (state.segment // cfg.hop_length)), state.params.batch_size), 256)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        z = model.encode_latents(state.sampler.sample(n_init, init_gen).to(state.rt.device))
        model.quantizer.init_codebooks(z, init_gen)
    model.train(was_training)


def open_batches(state: State) -> BatchStream:
    """``state``'s batches from its generator as it stands (after any restore): each batch's plan,
    then its quantizer dropout, the order one-at-a-time drawing has always had."""
    p = state.params
    return BatchStream(
        state.sampler,
        p.batch_size,
        state.generator,
        lambda g: state.model.quantizer.sample_n_quantizers(p.batch_size, g),
        workers=p.loader_workers,
        prefetch=p.prefetch_batches,
    )


def train_step(state: State) -> Step:
    """One optimizer step on the next batch of ``state``'s stream; returns the named losses."""
    p, rt = state.params, state.rt
    if state.step == p.quantizer_warmup_steps and not p.init_from:  # a fine-tune keeps its codebooks
        fit_codebooks(state)
    quantize = state.step >= p.quantizer_warmup_steps or bool(p.init_from)
    local = p.batch_size // rt.world_size
    lo, hi = rt.rank * local, (rt.rank + 1) * local
    if state.batches is None:
        state.batches = open_batches(state)
    batch, n_q = next(state.batches)
    n_q = n_q[lo:hi]
    x = batch[lo:hi].to(rt.device, non_blocking=True)
    with torch.autocast(device_type=rt.device.type, dtype=rt.dtype or torch.bfloat16, enabled=rt.dtype is not None):
        res = state.net(x, n_q, quantize=quantize)
    y = res.audio.float()
    energy = x.pow(2).sum()
    if rt.world_size > 1:
        # NMSE is a ratio of sums over the *global* batch: divide this rank's error by the mean
        # energy per rank, so DDP's average of the ranks' gradients is one process's gradient.
        energy = energy.detach().clone()
        dist.all_reduce(energy)
        energy = energy / rt.world_size
    losses: dict[str, Tensor] = {
        "loss/l1": (y - x).abs().mean(),
        # Error energy over signal energy: 1/SNR, free of the data's level.
        "loss/nmse": (y - x).pow(2).sum() / energy.clamp_min(1e-8),
        # Output level over input level, per item, as a squared log ratio: a waveform loss
        # alone rewards shrinking what the codes can't pin down (the MSE-optimal output has
        # RMS ratio sqrt(1 - 1/SNR)), which is how a codec ends at 47 %.
        "loss/level": level_loss(x, y),
        "loss/mel": state.mel_loss(x, y),
        "vq/commitment_loss": res.commitment_loss,
        "vq/codebook_loss": res.codebook_loss,
    }
    if p.loss_weights.get("loss/envelope", 0.0):  # computed (and logged) only when it is trained on
        losses["loss/envelope"] = state.envelope_loss(x, y)
    if state.adv is not None and state.step >= p.adv_start_step:
        losses.update(state.adv.step(x, y, rt.dtype))
    # adv/disc_* are the discriminators' own (logged, never weighted into the codec's loss).
    total = weighted_total({k: v for k, v in losses.items() if not k.startswith("adv/disc_")}, p.loss_weights)
    state.optimizer.zero_grad(set_to_none=True)
    total.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), p.grad_clip)
    state.optimizer.step()
    state.scheduler.step()
    state.step += 1
    return Step({"loss/total": total, **losses}, x, y, grad_norm)


def step_metrics(state: State, out: Step) -> dict[str, float]:
    """The step's losses and training SNR, amplitude ratio, gradient norm and learning rates as
    floats (averaged over DDP ranks; one host sync)."""
    x, y = out.x, out.y.detach()
    with torch.no_grad():
        stats = torch.stack(
            [
                *[v.detach().float() for v in out.losses.values()],
                snr_db(x, y).mean(),
                amplitude_ratio(x, y).mean(),
                out.grad_norm.float(),
            ]
        )
    if state.rt.world_size > 1:
        dist.all_reduce(stats)
        stats /= state.rt.world_size
    names = [*out.losses, "train/snr_db", "train/amplitude_ratio", "train/grad_norm"]
    metrics = {k: float(v) for k, v in zip(names, stats.tolist(), strict=True)}
    metrics["train/lr"] = float(state.scheduler.get_last_lr()[0])
    if state.adv is not None:
        metrics["adv/lr"] = state.adv.lr
    return metrics


def record(state: State, kind: str, metrics: dict[str, float], callback: Callback | None, bar: tp.Any) -> None:
    """On rank 0: ``metrics`` into the history, to the callback and onto the progress bar."""
    if not state.rt.is_main:
        return
    state.history.append({"step": float(state.step), **metrics})
    if callback is not None:
        callback(kind, state.step, metrics)
    if bar is None:
        return
    if kind == "train":
        bar.set_postfix(
            loss=f"{metrics['loss/total']:.3f}",
            snr=f"{metrics['train/snr_db']:.1f}dB",
            amp=f"{metrics['train/amplitude_ratio']:.2f}",
            refresh=False,
        )
    else:
        bar.write(
            f"step {state.step}: val snr {metrics['val/snr_db']:.2f} dB, amplitude ratio "
            f"{metrics['val/amplitude_ratio']:.3f}, codebook usage {metrics['vq/usage']:.2f}"
        )


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
    out_dir = Path(out_dir)
    ckpt_path, model_path = out_dir / CHECKPOINT, out_dir / MODEL_FILE
    state = load(params, data_dir, ckpt_path if params.resume else None)
    rt = state.rt
    bar = None
    if rt.is_main and params.progress and state.step < params.steps:
        from tqdm import tqdm  # a progress bar only for an interactive run

        # disable=None: drawn on a terminal only; a log (DVC's, Prefect's) gets the validation lines.
        bar = tqdm(total=params.steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True, disable=None)
    start, start_step = time.perf_counter(), state.step
    state.net.train()
    while state.step < params.steps:
        out = train_step(state)
        step = state.step
        if step % params.log_every == 0 or step == params.steps:
            record(state, "train", step_metrics(state, out), callback, bar)
        if bar is not None:
            bar.update(1)
        if (step % params.val_every == 0 or step == params.steps) and rt.is_main:
            state.val = validate(state.model, state.val_audio, state.mel_loss, rt.device, rt.dtype)
            record(state, "val", state.val, callback, bar)
        out_of_time = params.time_limit_s > 0 and agreed(time.perf_counter() - start >= params.time_limit_s, rt)
        if step % params.checkpoint_every == 0 or step == params.steps or step == stop_after or out_of_time:
            if rt.is_main:
                save(state, ckpt_path, with_state=True)
            if rt.world_size > 1:
                dist.barrier()
        if (stop_after is not None and step >= stop_after) or out_of_time:
            break
    if state.batches is not None:
        state.batches.close()
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start
    if state.step >= params.steps and rt.is_main:
        save(state, model_path, with_state=False)
    if rt.world_size > 1:
        dist.barrier()
    trained_audio = (state.step - start_step) * params.batch_size * state.segment / params.model.sample_rate
    return TrainResult(
        model=state.model,
        step=state.step,
        history=state.history,
        val=state.val,
        seconds=seconds,
        audio_seconds_per_second=trained_audio / seconds if seconds > 0 else math.nan,
        device=str(rt.device),
        precision="bf16" if rt.dtype is not None else "fp32",
        world_size=rt.world_size,
        rank=rt.rank,
        model_path=model_path,
        checkpoint_path=ckpt_path,
    )
