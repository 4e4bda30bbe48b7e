"""``params.yaml: train`` as typed dataclasses (saved in every checkpoint and logged to MLflow)."""

from __future__ import annotations

import dataclasses
import typing as tp

from codec.errors import UserError
from codec.model.codec import CodecConfig
from codec.training.augment import AugmentParams
from codec.training.losses import DEFAULT_WEIGHTS


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
    # Training clips kept in memory after their first read, up to cache_audio_mb of float32
    # audio (0: no limit); false reads every segment from disk (a corpus larger than memory).
    cache_audio: bool = True
    cache_audio_mb: float = 0.0
    # Worker processes that read and augment batches ahead of the model (0: in the training
    # process), each keeping prefetch_batches ready. The batches are the same for any number.
    loader_workers: int = 0
    prefetch_batches: int = 2
    progress: bool = True
    # Validation clips logged as audio (input and decoded) by the stage.
    audio_samples: int = 2
    loss_weights: dict[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    mel: MelParams = dataclasses.field(default_factory=MelParams)
    # On-the-fly augmentation of the training segments (codec/training/augment.py).
    augment: AugmentParams = dataclasses.field(default_factory=AugmentParams)
    # Multi-period and multi-resolution STFT discriminators with feature matching
    # (codec/model/discriminator.py): adv/gen_loss and adv/feat_loss join the loss from
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
    # Start from this checkpoint's weights and codebooks (fine-tuning: same model config, no
    # autoencoder warm-up, no k-means refit) instead of from scratch (null). The demo starts
    # from the reference model shipped with the package (codec/model/reference/).
    init_from: str | None = None
    model: CodecConfig = dataclasses.field(default_factory=CodecConfig)

    def check(self, where: str = "train params") -> None:
        """Raise :class:`UserError` naming the bad value."""
        known = set(DEFAULT_WEIGHTS)  # every loss the loop computes, keyed as logged
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
        for name, rate in [
            ("lr", self.lr),
            ("disc_lr", self.disc_lr),
            ("grad_clip", self.grad_clip),
            ("disc_grad_clip", self.disc_grad_clip),
        ]:
            if not rate > 0:
                raise UserError(f"{where}.{name}: {rate} must be greater than 0")
        if not 0.0 < self.lr_gamma <= 1.0:
            raise UserError(f"{where}.lr_gamma: {self.lr_gamma} must be within (0, 1] (1: no decay)")
        if self.loader_workers < 0 or self.prefetch_batches < 1 or self.cache_audio_mb < 0:
            raise UserError(
                f"{where}: loader_workers must be 0 or more, prefetch_batches at least 1, cache_audio_mb not negative"
            )
        if self.adv_start_step < 0 or self.time_limit_s < 0:
            raise UserError(f"{where}: adv_start_step and time_limit_s must not be negative")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise UserError(f"{where}.betas: {list(self.betas)} must be two numbers within [0, 1)")
        self.augment.check(f"{where}.augment")
        self.model.check(f"{where}.model")
        if self.init_from is not None and not isinstance(self.init_from, str):
            raise UserError(f"{where}.init_from: {self.init_from!r} must be a checkpoint path or null")

    def result_dict(self) -> dict[str, tp.Any]:
        """:meth:`to_dict` without the keys that change nothing in the result (:data:`NO_EFFECT_KEYS`)."""
        return {k: v for k, v in self.to_dict().items() if k not in NO_EFFECT_KEYS}

    def to_dict(self) -> dict[str, tp.Any]:
        """Plain nested dict (lists, not tuples): checkpoints, JSON, MLflow."""
        d = _plain(dataclasses.asdict(self))
        d["model"] = self.model.to_dict()  # without the fields a waveform model never had
        return d


# Keys that change how fast a run goes, what it shows, or whether a stopped run is continued
# (to the same result), but not the model or the reports: the train stage does not depend on
# them in dvc.yaml (tests/test_layout.py), and a retried run may resume across them.
NO_EFFECT_KEYS = frozenset(
    {"threads", "progress", "cache_audio", "cache_audio_mb", "loader_workers", "prefetch_batches", "resume"}
)


def _plain(x: tp.Any) -> tp.Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def params_from_dict(data: tp.Mapping[str, tp.Any]) -> TrainParams:
    """Inverse of :meth:`TrainParams.to_dict` (for a checkpoint's ``params``)."""
    d = dict(data)
    d["mel"] = MelParams(**d.get("mel", {}))
    # A checkpoint from before augmentation existed was trained without it.
    d["augment"] = AugmentParams(**d["augment"]) if "augment" in d else AugmentParams(enabled=False)
    d["model"] = CodecConfig.from_dict(d.get("model", {}))
    return TrainParams(**d)
