"""Discriminators for adversarial training (``train.adversarial``; off in the CPU demo).

- Multi-period discriminator (Kong et al. 2020, HiFi-GAN): the waveform folded into a
  ``[T / p, p]`` grid for each period ``p`` (2, 3, 5, 7, 11), so 2-D convolutions along
  the first axis see samples ``p`` apart: periodic structure (pitch) at many periods.
- Multi-resolution STFT discriminator (EnCodec; DAC uses a multi-band variant): 2-D
  convolutions over the real and imaginary parts of complex STFTs at several window
  sizes, strided along frequency: the spectral detail a waveform loss misses.

Least-squares GAN losses (Mao et al. 2017), as HiFi-GAN and DAC use them, plus feature
matching: L1 between the discriminators' inner activations on real and decoded audio.

:class:`AdversarialTrainer` owns the discriminators, their optimizer and schedule;
``train`` calls :meth:`AdversarialTrainer.step` once per generator step. Imports only
torch, so the training core stays importable on a bare GPU box.

Shapes: audio ``[B, 1, T]``. Each sub-discriminator returns ``(logits, features)``.
"""

from __future__ import annotations

import contextlib
import typing as tp

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.nn.utils.parametrizations import weight_norm

Output = tuple[Tensor, list[Tensor]]  # logits, inner activations

LEAK = 0.1


def _wn_conv2d(
    cin: int,
    cout: int,
    kernel: tuple[int, int],
    stride: tuple[int, int] = (1, 1),
    dilation: tuple[int, int] = (1, 1),
) -> nn.Module:
    padding = ((kernel[0] - 1) * dilation[0] // 2, (kernel[1] - 1) * dilation[1] // 2)
    return weight_norm(nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation))


class PeriodDiscriminator(nn.Module):
    """Convolutions over the waveform folded at one period: ``[B, 1, T]`` → ``[B, 1, T / p / 3^k, p]``."""

    def __init__(self, period: int, channels: tuple[int, ...] = (32, 128, 512, 1024)) -> None:
        super().__init__()
        self.period = period
        layers = []
        cin = 1
        for cout in channels:
            layers.append(_wn_conv2d(cin, cout, (5, 1), stride=(3, 1)))
            cin = cout
        layers.append(_wn_conv2d(cin, cin, (5, 1)))
        self.convs = nn.ModuleList(layers)
        self.out = _wn_conv2d(cin, 1, (3, 1))

    def forward(self, x: Tensor) -> Output:
        b, c, t = x.shape
        pad = (-t) % self.period
        if pad:
            x = nn.functional.pad(x, (0, pad), mode="reflect" if pad < t else "constant")
        h = x.view(b, c, -1, self.period)
        features = []
        for conv in self.convs:
            h = nn.functional.leaky_relu(conv(h), LEAK)
            features.append(h)
        return self.out(h), features


class STFTDiscriminator(nn.Module):
    """Convolutions over one complex STFT (real and imaginary parts as two channels),
    time × frequency, strided along frequency: ``[B, 1, T]`` → ``[B, 1, frames, bins / 8]``."""

    def __init__(self, n_fft: int, channels: int = 32) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, n_fft // 4
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.convs = nn.ModuleList(
            [
                _wn_conv2d(2, channels, (3, 9)),
                _wn_conv2d(channels, channels, (3, 9), stride=(1, 2), dilation=(1, 1)),
                _wn_conv2d(channels, channels, (3, 9), stride=(1, 2), dilation=(2, 1)),
                _wn_conv2d(channels, channels, (3, 9), stride=(1, 2), dilation=(4, 1)),
                _wn_conv2d(channels, channels, (3, 3)),
            ]
        )
        self.out = _wn_conv2d(channels, 1, (3, 3))

    def forward(self, x: Tensor) -> Output:
        # The STFT in fp32 whatever the autocast state (no bf16 FFTs).
        with torch.autocast(device_type=x.device.type, enabled=False):
            window = tp.cast(Tensor, self.window)
            spec = torch.stft(
                x.float().squeeze(1), self.n_fft, self.hop, window=window, center=True, return_complex=True
            )
        h = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)  # [B, 2, frames, bins]
        features = []
        for conv in self.convs:
            h = nn.functional.leaky_relu(conv(h), LEAK)
            features.append(h)
        return self.out(h), features


class Discriminators(nn.Module):
    """All sub-discriminators; ``forward`` returns one :data:`Output` each."""

    def __init__(
        self,
        sample_rate: int = 16000,
        periods: tuple[int, ...] = (2, 3, 5, 7, 11),
        period_channels: tuple[int, ...] = (32, 128, 512, 1024),
        stft_sizes: tuple[int, ...] | None = None,
        stft_channels: int = 32,
    ) -> None:
        super().__init__()
        if stft_sizes is None:  # EnCodec's 2048/1024/512 at 24 kHz, scaled to the rate
            base = 2 ** round(torch.log2(torch.tensor(2048.0 * sample_rate / 24000)).item())
            stft_sizes = (base, base // 2, base // 4)
        self.subs = nn.ModuleList(
            [PeriodDiscriminator(p, period_channels) for p in periods]
            + [STFTDiscriminator(n, stft_channels) for n in stft_sizes]
        )

    def forward(self, x: Tensor) -> list[Output]:
        return [sub(x) for sub in self.subs]


def _split(outs: list[Output], n: int) -> tuple[list[Output], list[Output]]:
    """Outputs of a batch ``cat([a, b])`` (``a`` of ``n`` items) → outputs of ``a`` and of ``b``."""
    first = [(logits[:n], [f[:n] for f in feats]) for logits, feats in outs]
    second = [(logits[n:], [f[n:] for f in feats]) for logits, feats in outs]
    return first, second


def discriminator_loss(real: list[Output], fake: list[Output]) -> Tensor:
    """LSGAN: real logits to 1, fake to 0; mean over sub-discriminators."""
    terms = [(r.float() - 1).pow(2).mean() + f.float().pow(2).mean() for (r, _), (f, _) in zip(real, fake, strict=True)]
    return torch.stack(terms).mean()


def generator_loss(fake: list[Output]) -> Tensor:
    """LSGAN: fake logits to 1; mean over sub-discriminators."""
    return torch.stack([(f.float() - 1).pow(2).mean() for f, _ in fake]).mean()


def feature_matching_loss(real: list[Output], fake: list[Output]) -> Tensor:
    """L1 between inner activations on real (detached) and fake audio, each layer's L1
    divided by the mean magnitude of its real activations (so layers of every scale weigh
    alike), averaged over layers and sub-discriminators. Normalized per item, so the mean
    over a batch split across DDP ranks is the mean over the whole batch."""
    terms = []
    for (_, rf), (_, ff) in zip(real, fake, strict=True):
        for r, f in zip(rf, ff, strict=True):
            r = r.detach().float().flatten(1)
            err = (r - f.float().flatten(1)).abs().mean(dim=1)
            terms.append(err / r.abs().mean(dim=1).clamp_min(1e-5))
    return torch.stack(terms).mean()


class AdversarialTrainer:
    """The discriminators with their AdamW optimizer and exponential LR decay.

    :meth:`step` updates the discriminators once on (real ``x``, decoded ``y``, detached;
    gradient norm clipped at ``grad_clip``, 10 as in DAC) and returns the generator's
    adversarial and feature-matching losses (with gradients into ``y``) and, detached for
    logging, the discriminator loss and gradient norm. Under DDP the discriminators'
    gradients are averaged across ranks. Deterministic for a seed.
    """

    def __init__(
        self,
        sample_rate: int,
        lr: float,
        betas: tuple[float, float],
        lr_gamma: float,
        device: torch.device,
        seed: int,
        grad_clip: float = 10.0,
        **sizes: tp.Any,
    ) -> None:
        self.grad_clip = grad_clip
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1_000_003)  # apart from the codec's own init
            self.disc = Discriminators(sample_rate, **sizes).to(device)
        self.net: nn.Module = self.disc
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            self.net = DistributedDataParallel(self.disc, device_ids=[device.index] if device.type == "cuda" else None)
        self.optimizer = torch.optim.AdamW(self.disc.parameters(), lr=lr, betas=betas)
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=lr_gamma)

    def _autocast(self, x: Tensor, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[tp.Any]:
        return torch.autocast(device_type=x.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)

    def step(self, x: Tensor, y: Tensor, dtype: torch.dtype | None) -> dict[str, Tensor]:
        """Update the discriminators on real ``x`` and decoded ``y`` (``[B, 1, T]``); return the
        codec's adversarial terms (with gradient into ``y``) and the discriminators' own loss."""
        n = x.shape[0]
        # 1. Discriminator update: real and decoded audio in one batch (one forward per
        #    backward, as DDP wants).
        with self._autocast(x, dtype):
            real, fake = _split(self.net(torch.cat([x, y.detach()])), n)
            d_loss = discriminator_loss(real, fake)
        self.optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.disc.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        # 2. Generator terms through the updated discriminators, without gradients for
        #    their weights (the codec's optimizer steps on what flows into ``y``).
        for p in self.disc.parameters():
            p.requires_grad_(False)
        try:
            with self._autocast(x, dtype):
                real, fake = _split(self.disc(torch.cat([x, y])), n)
                gen = generator_loss(fake)
                feat = feature_matching_loss(real, fake)
        finally:
            for p in self.disc.parameters():
                p.requires_grad_(True)
        return {
            "adv/gen_loss": gen,
            "adv/feat_loss": feat,
            "adv/disc_loss": d_loss.detach(),
            "adv/disc_grad_norm": grad_norm.detach().float(),
        }

    @property
    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def state_dict(self) -> dict[str, tp.Any]:
        """Weights, optimizer and scheduler state: plain tensors and dicts (``weights_only`` loads)."""
        return {
            "model": self.disc.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: tp.Mapping[str, tp.Any]) -> None:
        self.disc.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
