"""The frame-rate encoder and decoder (``CodecConfig.architecture = "frame"``).

Every layer runs at the frame rate (50 Hz) or twice it, and the samples come from an
inverse STFT, as in Vocos (Siuzdak 2023, "Vocos: closing the gap between time-domain and
Fourier-based neural vocoders"): ConvNeXt blocks (Liu et al. 2022) instead of transposed
convolutions and residual units at the audio rate. The waveform decoder of the CPU demo
spends every multiply-add 16,000 times a second; these layers spend theirs 50 or 100 times
a second, so a CPU trains many more steps (and a wider network) in the same minutes.

- Analysis: a "same"-padded STFT (hop ``h = encoder_strides[0]``, window ``4h``, one frame
  per ``h`` samples), its real and imaginary parts compressed to ``|X|^0.3`` (the magnitude's
  dynamic range, the phase kept), a strided convolution down to the frame rate
  (``encoder_strides[1]``), ConvNeXt blocks, a 1x1 projection to the latent. No normalization
  on the main path (only inside the blocks' residual branches): a frame's level reaches the
  quantizer and the head, which a LayerNorm there would divide out.
- Synthesis: a convolution from the latent, ConvNeXt blocks at the frame rate, a transposed
  convolution up by ``decoder_strides[0]``, ConvNeXt blocks there, then per frame two numbers
  for each of the ``2h + 1`` bins of a ``4h``-point inverse STFT (hop ``h = decoder_strides[1]``),
  overlap-added with a Hann window ("same" padding: ``n`` frames make exactly ``n·h``
  samples). The head (``frame_head``) reads them as a log magnitude and a phase ("polar",
  Vocos) or as the compressed real and imaginary parts that the analysis makes ("complex",
  as APCodec and FreeV predict both parts): the latter can start as a linear path.

Receptive field (frames of 20 ms each side) stays under the inference path's 16 frames of
chunk context (``codec.inference.pipeline.DEFAULT_CONTEXT_FRAMES``), so a chunked encode and
decode equals the whole-file one up to float rounding (tested).

No weight normalization and no buffers: the inference copy is the trained module itself,
built on the ``meta`` device and given the checkpoint's tensors (the STFT window is made per
call). Shapes: ``B`` batch, ``C`` channels, ``F`` frames, ``T`` samples.
"""

from __future__ import annotations

import typing as tp

import torch
from torch import Tensor, nn

# Magnitude compression of the analysis STFT (|X|^0.3): speech spans 60 dB across bins.
COMPRESSION = 0.3
# The synthesis magnitude is exp(log magnitude), capped: one frame's bins never exceed this
# (a full-scale sine's bin is about n_fft / 4 = 160 at h = 160).
MAX_LOG_MAGNITUDE = 8.0
MAX_COMPRESSED = float(torch.tensor(MAX_LOG_MAGNITUDE).exp() ** COMPRESSION)


def window(n_fft: int, like: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """A periodic Hann window of ``n_fft`` points on ``like``'s device (float32 unless asked)."""
    return torch.hann_window(n_fft, periodic=True, device=like.device, dtype=dtype)


def analysis(audio: Tensor, hop: int, causal: bool = False) -> Tensor:
    """Audio ``[B, 1, T]`` (``T`` a multiple of ``hop``) → compressed real and imaginary STFT
    parts ``[B, 2 (2h + 1), T / h]``: window ``4h``, padded ``1.5h`` each side (reflected),
    so frame ``i`` is centred on samples ``i·h … (i + 1)·h``.

    Computed in float64 and rounded to float32 once: the compression lifts the smallest bins
    (``|X|^0.3``), and with it a float32 FFT's rounding, which flipped the nearest code of 0.2 %
    of frames between two float32 implementations (torch's FFT and the ONNX export's); exact
    features are the same everywhere (:func:`codec.inference.onnx_codec.stft_features` computes
    them with NumPy for the torch-free runtime), at a negligible cost (no weights here).

    ``causal``: the window ends with its frame's last sample (padded ``3h`` on the left only), so
    no frame reads a sample after its own."""
    n_fft = 4 * hop
    pad = (n_fft - hop) // 2
    left, right = (2 * pad, 0) if causal else (pad, pad)
    x = audio[:, 0].double()
    mode = "reflect" if x.shape[-1] > max(left, right) else "constant"
    x = nn.functional.pad(x.unsqueeze(1), (left, right), mode=mode)[:, 0]
    spec = torch.stft(x, n_fft, hop, window=window(n_fft, x, torch.float64), center=False, return_complex=True)
    magnitude = spec.abs().clamp_min(1e-7)
    spec = spec * magnitude.pow(COMPRESSION - 1.0)
    return torch.cat([spec.real, spec.imag], dim=1).float()


def polar_spectrum(log_magnitude: Tensor, phase: Tensor) -> Tensor:
    """``exp(log_magnitude) · e^{i·phase}`` (Vocos' head), the magnitude capped."""
    return torch.polar(log_magnitude.float().clamp(max=MAX_LOG_MAGNITUDE).exp(), phase.float())


def compressed_spectrum(real: Tensor, imag: Tensor) -> Tensor:
    """The inverse of :func:`analysis`' compression: ``c·|c|^(1/0.3 − 1)`` for ``c = real + i·imag``,
    so a head that copies the analysis features makes the input's spectrum (a linear path)."""
    c = torch.complex(real.float(), imag.float())
    magnitude = c.abs().clamp(min=1e-7, max=MAX_COMPRESSED)
    return c * magnitude.pow(1.0 / COMPRESSION - 1.0)


def synthesis(spec: Tensor, hop: int) -> Tensor:
    """Inverse STFT of the complex ``spec`` ``[B, 2h + 1, n]`` by overlap-add with a Hann window of
    ``4h`` and "same" padding → audio ``[B, 1, n·h]``."""
    n_fft = 4 * hop
    n = spec.shape[-1]
    w = window(n_fft, spec.real)
    frames = torch.fft.irfft(spec, n_fft, dim=1) * w[None, :, None]  # [B, n_fft, n]
    size = (n - 1) * hop + n_fft
    y = nn.functional.fold(frames, (1, size), kernel_size=(1, n_fft), stride=(1, hop))[:, 0, 0]
    envelope = nn.functional.fold(
        w.square()[None, :, None].expand(1, n_fft, n), (1, size), kernel_size=(1, n_fft), stride=(1, hop)
    )[0, 0, 0]
    pad = (n_fft - hop) // 2
    y = y[:, pad : pad + n * hop] / envelope[pad : pad + n * hop].clamp_min(1e-8)
    return y.unsqueeze(1)


class ConvNeXtBlock(nn.Module):
    """Depthwise conv (``kernel`` frames) → LayerNorm → 1x1 up ×3 → GELU → 1x1 down, scaled by
    a learned per-channel gain (starts at ``1/8``), plus the input. ``[B, C, F]`` → same."""

    def __init__(self, channels: int, kernel: int, causal: bool = False) -> None:
        super().__init__()
        self.causal = kernel - 1 if causal else 0  # left padding of a causal block
        self.dwconv = nn.Conv1d(channels, channels, kernel, padding=0 if causal else kernel // 2, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.up = nn.Linear(channels, 3 * channels)
        self.down = nn.Linear(3 * channels, channels)
        self.gain = nn.Parameter(torch.full((channels,), 0.125))

    def forward(self, x: Tensor) -> Tensor:
        h = self.dwconv(nn.functional.pad(x, (self.causal, 0)) if self.causal else x).transpose(1, 2)  # [B, F, C]
        h = self.down(nn.functional.gelu(self.up(self.norm(h))))
        return x + (h * self.gain).transpose(1, 2)


class FrameEncoder(nn.Module):
    """Audio ``[B, 1, T]`` → latents ``[B, D, T / (h·r)]``, ``h, r = strides``."""

    def __init__(
        self, strides: tuple[int, int], channels: int, latent_dim: int, blocks: int, kernel: int, causal: bool = False
    ) -> None:
        super().__init__()
        self.hop, down = strides
        self.causal = causal
        self.left = down if causal else 0  # a causal down-sampling reads its own frames and earlier ones
        bins = 2 * self.hop + 1
        self.down = nn.Conv1d(2 * bins, channels, 2 * down, stride=down, padding=0 if causal else down // 2)
        self.blocks = nn.Sequential(*[ConvNeXtBlock(channels, kernel, causal) for _ in range(blocks)])
        self.out = nn.Conv1d(channels, latent_dim, 1)

    def features(self, spec: Tensor) -> Tensor:
        """The analysis features → latents."""
        x = nn.functional.pad(spec, (self.left, 0)) if self.left else spec
        return tp.cast(Tensor, self.out(self.blocks(self.down(x))))

    def forward(self, audio: Tensor) -> Tensor:
        return self.features(analysis(audio, self.hop, self.causal))


class FrameDecoder(nn.Module):
    """Latents ``[B, D, F]`` → audio ``[B, 1, F·r·h]``, ``r, h = strides``."""

    def __init__(
        self,
        strides: tuple[int, int],
        channels: int,
        latent_dim: int,
        blocks: tuple[int, int],
        kernel: int,
        head: str = "polar",
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.polar = head == "polar"
        up, self.hop = strides
        self.factor, self.causal = up, causal
        self.bins = 2 * self.hop + 1
        self.inp = nn.Conv1d(latent_dim, channels, 3, padding=0 if causal else 1)
        self.frame_blocks = nn.Sequential(*[ConvNeXtBlock(channels, kernel, causal) for _ in range(blocks[0])])
        self.up = (
            nn.ConvTranspose1d(channels, channels, 2 * up, stride=up, padding=0 if causal else up // 2)
            if up > 1
            else nn.Identity()
        )
        self.fine_blocks = nn.Sequential(*[ConvNeXtBlock(channels, kernel, causal) for _ in range(blocks[1])])
        self.head = nn.Conv1d(channels, 2 * self.bins, 1)

    def spectrum_parts(self, z: Tensor) -> Tensor:
        """Latents ``[B, D, F]`` → the head's two numbers per bin ``[B, 2·bins, F·r]``. Causal: every
        convolution padded on the left only, and the up-sampling's output cut to its first ``F·r``
        frames, so fine frame ``j`` reads latent frames up to ``j / r`` only."""
        if not self.causal:
            return tp.cast(Tensor, self.head(self.fine_blocks(self.up(self.frame_blocks(self.inp(z))))))
        x = self.frame_blocks(self.inp(nn.functional.pad(z, (2, 0))))
        x = self.up(x)[..., : z.shape[-1] * self.factor]
        return tp.cast(Tensor, self.head(self.fine_blocks(x)))

    def forward(self, z: Tensor) -> Tensor:
        out = self.spectrum_parts(z)  # [B, 2·bins, n]
        a, b = out[:, : self.bins], out[:, self.bins :]
        spec = polar_spectrum(a, b) if self.polar else compressed_spectrum(a, b)
        return synthesis(spec, self.hop)
