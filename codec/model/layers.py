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

import contextlib
import contextvars
import math
import typing as tp

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

_WEIGHT_NORM: contextvars.ContextVar[bool] = contextvars.ContextVar("codec_weight_norm", default=True)


@contextlib.contextmanager
def plain_convolutions() -> tp.Iterator[None]:
    """Build modules with plain convolutions instead of weight-normalized ones: the layout of a
    model whose weights come folded from a checkpoint (:func:`codec.model.serving.inference_codec`).
    Nothing is computed for the weight norm on construction, so a model built on the ``meta``
    device this way costs no tracing machinery (weight norm on meta tensors imports torch's
    symbolic-shape and dynamo modules: ~1 s of ``codec encode``'s start-up)."""
    token = _WEIGHT_NORM.set(False)
    try:
        yield
    finally:
        _WEIGHT_NORM.reset(token)


def _normalized(conv: nn.Module) -> nn.Module:
    return weight_norm(conv) if _WEIGHT_NORM.get() else conv


class Snake(nn.Module):
    """Snake activation ``x + sin²(αx) / α`` with one ``α`` per channel.

    Input and output: ``[B, C, T]``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        # [B, C, 1, T] too: the layout of the channels-last inference path (see ChannelsLastConv).
        alpha = self.alpha if x.dim() == 3 else self.alpha.unsqueeze(-1)
        # The 1e-9 keeps 1/α finite if training drives an α to zero.
        if torch.is_grad_enabled():
            return x + torch.sin(alpha * x).pow(2) / (alpha + 1e-9)
        # Inference: one new tensor, updated in place (a third faster on a CPU, where
        # Snake is a third of the decoder's time); the same values as above.
        y = x * alpha
        y.sin_().square_().mul_(1.0 / (alpha + 1e-9))
        return y.add_(x)


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
    return _normalized(conv)


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
    return _normalized(conv)


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


class ChannelsLastConv(nn.Module):
    """A plain ``Conv1d`` or ``ConvTranspose1d`` run as a 2-D convolution over ``[B, C, 1, T]``
    in channels-last memory layout, for inference on a CPU.

    oneDNN's 1-D convolutions are slow with few channels at audio rates (5-12 GMAC/s
    with 8-16 channels on 2 cores); the same convolution as a ``1 × k`` channels-last
    2-D one runs 3-7x faster. The outputs are the same up to float rounding.
    Build from a module without weight normalization (see ``codec.model.serving.for_inference``).
    """

    weight: Tensor
    bias: Tensor | None

    def __init__(self, conv: nn.Conv1d | nn.ConvTranspose1d) -> None:
        super().__init__()
        self.transposed = isinstance(conv, nn.ConvTranspose1d)
        weight = conv.weight.detach().unsqueeze(2).contiguous(memory_format=torch.channels_last)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())
        self.stride = (1, int(conv.stride[0]))
        self.padding = (0, int(tp.cast(tuple[int, ...], conv.padding)[0]))
        self.dilation = (1, int(conv.dilation[0]))
        self.groups = conv.groups
        self.output_padding = (0, int(conv.output_padding[0])) if self.transposed else (0, 0)

    def forward(self, x: Tensor) -> Tensor:
        if self.transposed:
            return nn.functional.conv_transpose2d(
                x, self.weight, self.bias, self.stride, self.padding, self.output_padding, self.groups, self.dilation
            )
        return nn.functional.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
