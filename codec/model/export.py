"""``codec export``: a trained codec as two ONNX graphs that run without torch.

The folder it writes (:func:`export_model`) holds:

- ``encoder.onnx``: samples ``[1, 1, T]`` (float32 at the model's rate, ``T`` a multiple of the
  hop), or for the frame architecture their STFT features (:func:`encoder_input`) → codes
  ``[1, n_codebooks, T / hop]`` (int64, every quantizer: residual quantization makes the first
  ``n`` of them the codes at ``n`` quantizers, so the runtime keeps the ones a bitrate needs);
- ``decoder.onnx``: codes ``[1, Q, F]`` (any ``Q`` up to ``n_codebooks``) → samples
  ``[1, 1, F · hop]``;
- ``codec.json``: what the runtime needs beside the graphs: the model's
  config, the level settings it was trained for, and its fingerprint, the one every bitstream
  carries, so streams coded by the export and by the checkpoint decode with either.

Both graphs have a dynamic length (and the decoder a dynamic number of quantizers). The frame
architecture's inverse STFT, complex in torch, becomes one ``ConvTranspose`` with the inverse
DFT's cosine and sine rows (the window folded in): the inverse DFT and the overlap-add at once.
Its analysis STFT stays outside the graph, in float64 as torch computes it. The
quantizers' decode is one table lookup: every code's latent vector (projections applied) is
computed once at export. Same codes as the torch model except at near-ties of the nearest-code
search, audio within float rounding (checked at export by :func:`verify`, and in tests).

The runtime that reads this folder is :class:`codec.inference.onnx_codec.OnnxCodec`.
"""

from __future__ import annotations

import contextlib
import math
import typing as tp
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from codec.model.codec import Codec
from codec.model.config import CodecConfig
from codec.model.frame import COMPRESSION, MAX_COMPRESSED, MAX_LOG_MAGNITUDE, FrameDecoder, FrameEncoder, analysis
from codec.model.quantize import EMAVectorQuantizer, VectorQuantizer

# The files of an export folder (codec.inference.onnx_codec, which reads them, names them).
ENCODER_FILE, DECODER_FILE = "encoder.onnx", "decoder.onnx"
OPSET = 17


def synthesis_basis(hop: int) -> Tensor:
    """The frame synthesis' windowed inverse real DFT as transposed-convolution weights
    ``[2 (2h + 1), 1, 4h]``: ``conv_transpose1d(spectrum, basis, stride=h)`` is
    ``torch.fft.irfft`` of each frame times the Hann window, overlap-added (the imaginary parts
    of the DC and Nyquist bins count for nothing, as in ``irfft``)."""
    n_fft = 4 * hop
    t = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(2 * hop + 1, dtype=torch.float64)
    w = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    scale = torch.full((k.shape[0],), 2.0 / n_fft, dtype=torch.float64)
    scale[0] = scale[-1] = 1.0 / n_fft
    angle = 2 * math.pi * k[:, None] * t[None, :] / n_fft
    real = scale[:, None] * torch.cos(angle) * w
    imag = -scale[:, None] * torch.sin(angle) * w
    imag[0] = imag[-1] = 0.0
    return torch.cat([real, imag]).unsqueeze(1).float()


def encoder_input(config: CodecConfig) -> str:
    """What the encoder graph takes: ``"audio"`` (the waveform architecture: samples
    ``[1, 1, T]``) or ``"stft"`` (the frame architecture: :func:`codec.model.frame.analysis`'
    features ``[1, 2 (2h + 1), T / h]``, which the runtime computes in float64 with NumPy, as torch
    does, so both paths quantize the same numbers)."""
    return "stft" if config.architecture == "frame" else "audio"


class EncoderGraph(nn.Module):
    """The encoder's input (:func:`encoder_input`) → codes ``[1, n_codebooks, F]``."""

    def __init__(self, model: Codec) -> None:
        super().__init__()
        self.model = model
        self.frame = isinstance(model.encoder, FrameEncoder)

    def latents(self, x: Tensor) -> Tensor:
        if not self.frame:
            return self.model.encode_latents(x)
        return tp.cast(FrameEncoder, self.model.encoder).features(x)

    def forward(self, x: Tensor) -> Tensor:
        residual = self.latents(x).float()
        codes = []
        for vq in self.model.quantizer.quantizers:
            if isinstance(vq, EMAVectorQuantizer):
                flat = residual[0].transpose(0, 1)  # [F, D]
                book = vq.embed
                dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ book.t() + book.pow(2).sum(1)[None]
                code = dist.argmin(dim=1)
            else:
                assert isinstance(vq, VectorQuantizer)
                z_e = vq.in_proj(residual)[0].transpose(0, 1)  # [F, d]
                flat = nn.functional.normalize(z_e, dim=1)
                book = nn.functional.normalize(vq.codebook.weight, dim=1)
                code = (flat @ book.t()).argmax(dim=1)
            residual = residual - vq.decode(code[None])
            codes.append(code)
        return torch.stack(codes)[None]


class DecoderGraph(nn.Module):
    """Codes ``[1, Q, F]`` → samples ``[1, 1, F · hop]``."""

    basis: Tensor
    table: Tensor

    def __init__(self, model: Codec) -> None:
        super().__init__()
        self.model = model
        quantizers = model.quantizer.quantizers
        size = model.config.codebook_size
        with torch.no_grad():
            everything = torch.arange(size)[None]
            table = torch.cat([tp.cast(Tensor, tp.cast(tp.Any, vq).decode(everything))[0].t() for vq in quantizers])
        self.register_buffer("table", table.float())  # [Q·K, D]: every code's latent vector
        self.codebook_size = size
        self.frame = isinstance(model.decoder, FrameDecoder)
        if self.frame:
            self.register_buffer("basis", synthesis_basis(tp.cast(FrameDecoder, model.decoder).hop))

    def forward(self, codes: Tensor) -> Tensor:
        offsets = torch.arange(codes.shape[1], dtype=torch.int64) * self.codebook_size
        z = self.table[codes[0] + offsets[:, None]].sum(0).t()[None]  # [1, D, F]
        if not self.frame:
            return self.model.decode_latents(z)
        dec = tp.cast(FrameDecoder, self.model.decoder)
        out = dec.spectrum_parts(z)
        a, b = out[:, : dec.bins], out[:, dec.bins :]
        if dec.polar:
            magnitude = a.clamp(max=MAX_LOG_MAGNITUDE).exp()
            real, imag = magnitude * torch.cos(b), magnitude * torch.sin(b)
        else:
            size = torch.sqrt(a * a + b * b).clamp(min=1e-7, max=MAX_COMPRESSED)
            scale = size.pow(1.0 / COMPRESSION - 1.0)
            real, imag = a * scale, b * scale
        hop = dec.hop
        y = nn.functional.conv_transpose1d(torch.cat([real, imag], dim=1), self.basis, stride=hop)
        window = torch.hann_window(4 * hop, periodic=True)
        ones = torch.ones_like(real[:, :1])
        envelope = nn.functional.conv_transpose1d(ones, window.square()[None, None], stride=hop)
        pad = (4 * hop - hop) // 2
        n = real.shape[-1] * hop
        y = y[..., pad : pad + n] / envelope[..., pad : pad + n].clamp_min(1e-8)
        return torch.tanh(y) if self.model.output_tanh else y


def write_graphs(model: Codec, folder: Path) -> None:
    hop = model.config.hop_length
    if encoder_input(model.config) == "stft":
        audio = analysis(torch.randn(1, 1, 50 * hop) * 0.1, tp.cast(FrameEncoder, model.encoder).hop)
    else:
        audio = torch.randn(1, 1, 50 * hop) * 0.1
    codes = torch.zeros(1, model.config.n_codebooks, 50, dtype=torch.int64)
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(None):
        warnings.simplefilter("ignore")  # the tracer's notes on shapes read as Python numbers
        graphs: list[tuple[nn.Module, Tensor, str, dict[str, dict[int, str]]]] = [
            (EncoderGraph(model), audio, ENCODER_FILE, {"input": {2: "length"}, "codes": {2: "frames"}}),
            (
                DecoderGraph(model),
                codes,
                DECODER_FILE,
                {"codes": {1: "quantizers", 2: "frames"}, "audio": {2: "samples"}},
            ),
        ]
        for graph, example, name, axes in graphs:
            inp, out = list(axes)
            torch.onnx.export(
                graph.eval(),
                (example,),
                str(folder / name),
                input_names=[inp],
                output_names=[out],
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
            )
