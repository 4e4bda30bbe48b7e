"""Building blocks of the codec: Snake, weight-normalized convolutions, residual units.

Shapes use ``B`` (batch), ``C`` (channels), ``T`` (time steps at the block's rate).

- Snake (Ziyin et al. 2020, "Neural networks fail to learn periodic functions and how
  to fix it"; used by BigVGAN and DAC): ``x + sin²(αx)/α`` with a learned ``α`` per
  channel. Its periodic part suits waveforms better than a ReLU or a tanh.
- Weight normalization (Salimans & Kingma 2016) through
  ``torch.nn.utils.parametrizations.weight_norm``: the library's version, which
  survives ``state_dict`` round trips and DDP, rather than a hand-written one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm


class Snake(nn.Module):
    """Snake activation ``x + sin²(αx) / α`` with one ``α`` per channel.

    Input and output: ``[B, C, T]``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        # The 1e-9 keeps 1/α finite if training drives an α to zero.
        return x + torch.sin(self.alpha * x).pow(2) / (self.alpha + 1e-9)


def wn_conv1d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    dilation: int = 1,
    padding: int | None = None,
) -> nn.Module:
    """A weight-normalized ``Conv1d``; by default padded to keep ``T`` (for ``stride=1``)."""
    if padding is None:
        padding = (kernel_size - 1) * dilation // 2
    conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation, padding=padding)
    return weight_norm(conv)


def wn_conv_transpose1d(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """A weight-normalized ``ConvTranspose1d`` that maps ``T`` to exactly ``T * stride``.

    Kernel ``2·stride``, padding ``ceil(stride/2)`` and output padding ``stride % 2``
    make the length exact for odd strides too (the 5 in 2·4·5·8 = 320).
    """
    conv = nn.ConvTranspose1d(
        in_channels,
        out_channels,
        kernel_size=2 * stride,
        stride=stride,
        padding=math.ceil(stride / 2),
        output_padding=stride % 2,
    )
    return weight_norm(conv)


class ResidualUnit(nn.Module):
    """Snake → dilated conv (k=7) → Snake → conv (k=1), plus the input.

    Input and output: ``[B, C, T]``.
    """

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            Snake(channels),
            wn_conv1d(channels, channels, kernel_size=7, dilation=dilation),
            Snake(channels),
            wn_conv1d(channels, channels, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class EncoderBlock(nn.Module):
    """Residual units at ``in_channels``, then a strided conv down by ``stride``.

    ``[B, in_channels, T]`` → ``[B, out_channels, T / stride]`` (``T`` a multiple of ``stride``).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.block = nn.Sequential(
            *[ResidualUnit(in_channels, d) for d in dilations],
            Snake(in_channels),
            wn_conv1d(in_channels, out_channels, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2)),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class DecoderBlock(nn.Module):
    """A transposed conv up by ``stride``, then residual units at ``out_channels``.

    ``[B, in_channels, T]`` → ``[B, out_channels, T * stride]``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.block = nn.Sequential(
            Snake(in_channels),
            wn_conv_transpose1d(in_channels, out_channels, stride),
            *[ResidualUnit(out_channels, d) for d in dilations],
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)
