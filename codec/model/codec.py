"""The codec: a convolutional encoder, residual VQ and a mirrored decoder (DAC family).

Kumar et al. 2023, "High-fidelity audio compression with improved RVQGAN" (DAC), after
Zeghidour et al. 2021 (SoundStream). At 16 kHz with strides 2·4·5·8 the hop is 320
samples, so there are 50 frames per second; with 1024-entry codebooks (10 bits) each
quantizer adds 0.5 kbps: 3, 6 and 12 quantizers serve 1.5, 3 and 6 kbps.

Output layer: linear, not the seed's tanh (``CodecConfig.output_activation`` keeps
``"tanh"`` selectable). The data is normalized to -16 LUFS under a -1 dBFS ceiling, so
no output needs bounding. Measured side by side with the demo recipe
(``experiments/output_layer.py``, held-out clips at 6 kbps): tanh brought the loudest 5 %
of frames back at 0.890 of their level and 6.71 dB SNR, linear at 0.917 and 6.77 dB.
Callers that write PCM clamp to [-1, 1].

Shapes: ``B`` batch, ``T`` samples, ``Q`` quantizers, ``F`` frames (``T / hop``).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from codec.model.config import FRAME_FIELDS, CodecConfig
from codec.model.frame import FrameDecoder, FrameEncoder
from codec.model.layers import DecoderBlock, EncoderBlock, Snake, wn_conv1d
from codec.model.quantize import ResidualVQ

__all__ = ["FRAME_FIELDS", "Codec", "CodecConfig", "CodecOutput"]


@dataclasses.dataclass
class CodecOutput:
    """What :meth:`Codec.forward` returns.

    - ``audio``: reconstruction ``[B, 1, T]`` (trimmed to the input's length)
    - ``codes``: ``[B, Q, F]`` long
    - ``latents``: encoder output before quantization ``[B, D, F]``
    - ``commitment_loss`` / ``codebook_loss``: scalars
    """

    audio: Tensor
    codes: Tensor
    latents: Tensor
    commitment_loss: Tensor
    codebook_loss: Tensor


@torch.no_grad()
def _zero_output(conv: nn.Module) -> None:
    """Make a weight-normalized conv output zero (its gain ``g`` and bias), trainable still
    (a plain one, :func:`codec.model.layers.plain_convolutions`: its weight)."""
    if hasattr(conv, "parametrizations"):
        getattr(conv, "parametrizations").weight.original0.zero_()  # noqa: B009 - typed as Tensor | Module
    else:
        getattr(conv, "weight").zero_()  # noqa: B009
    bias = getattr(conv, "bias")  # noqa: B009
    if bias is not None:
        bias.zero_()


def _quantizer(c: CodecConfig) -> ResidualVQ:
    return ResidualVQ(
        c.latent_dim,
        c.n_codebooks,
        c.codebook_size,
        c.codebook_dim,
        quantizer_dropout=c.quantizer_dropout,
        dropout_choices=c.served_n_quantizers,
        kind=c.quantizer,
        ema_decay=c.ema_decay,
    )


class Codec(nn.Module):
    """Encoder → residual VQ → decoder, on mono audio ``[B, 1, T]``."""

    def __init__(self, config: CodecConfig) -> None:
        super().__init__()
        config.check()
        self.config = config
        c = config
        self.output_tanh = c.output_activation == "tanh"
        self.linear_encoder: nn.Module | None = None
        self.linear_decoder: nn.Module | None = None
        if c.architecture == "frame":
            (hop, down), blocks = c.encoder_strides, c.frame_blocks
            self.encoder: nn.Module = FrameEncoder(
                (hop, down), c.encoder_channels, c.latent_dim, blocks[0], c.frame_kernel, c.frame_causal
            )
            self.quantizer = _quantizer(c)
            self.decoder: nn.Module = FrameDecoder(
                (down, hop),
                c.decoder_channels,
                c.latent_dim,
                (blocks[1], blocks[2]),
                c.frame_kernel,
                c.frame_head,
                c.frame_causal,
            )
            return
        enc: list[nn.Module] = [wn_conv1d(1, c.encoder_channels, kernel_size=7)]
        ch = c.encoder_channels
        for stride in c.encoder_strides:
            enc.append(EncoderBlock(ch, ch * 2, stride, c.dilations))
            ch *= 2
        enc += [Snake(ch), wn_conv1d(ch, c.latent_dim, kernel_size=3)]
        self.encoder = nn.Sequential(*enc)
        self.quantizer = _quantizer(c)

        dec: list[nn.Module] = [wn_conv1d(c.latent_dim, c.decoder_channels, kernel_size=7)]
        ch = c.decoder_channels
        for stride in c.decoder_strides:
            out = max(ch // 2, 1)
            dec.append(DecoderBlock(ch, out, stride, c.dilations))
            ch = out
        dec += [Snake(ch), wn_conv1d(ch, 1, kernel_size=7)]
        self.decoder = nn.Sequential(*dec)

        # The linear path: a learned frame transform (like an MDCT's analysis and
        # synthesis windows, but learned) from the waveform to the latent and back.
        # Measured on the embedded corpus: alone it reaches ~10 dB SNR unquantized in
        # 400 CPU steps, where the conv stacks alone stay at 0 dB for hundreds of steps.
        # The conv stacks start at zero output (their last layer's gain is zero), so
        # training starts as a transform codec and the Snake/conv stacks learn what the
        # linear transform misses; on a long GPU run they carry the model.
        if c.linear_path:
            hop = c.hop_length
            self.linear_encoder = nn.Conv1d(1, c.latent_dim, 2 * hop, stride=hop, padding=hop // 2)
            self.linear_decoder = nn.ConvTranspose1d(c.latent_dim, 1, 2 * hop, stride=hop, padding=hop // 2)
            for last in (enc[-1], dec[-1]):
                _zero_output(last)

    def _pad(self, audio: Tensor) -> Tensor:
        hop = self.config.hop_length
        pad = (-audio.shape[-1]) % hop
        return nn.functional.pad(audio, (0, pad)) if pad else audio

    # True in a copy made by for_inference(): the conv stacks take [B, C, 1, T] channels-last.
    channels_last_2d = False
    # Set on copies made for serving (fold_weight_norm, for_inference): the fingerprint of
    # the model they were made from, which model_fingerprint returns for them.
    source_fingerprint: bytes | None = None

    def _to_layout(self, x: Tensor) -> Tensor:
        return x.unsqueeze(2).contiguous(memory_format=torch.channels_last) if self.channels_last_2d else x

    def _from_layout(self, x: Tensor) -> Tensor:
        return x.squeeze(2).contiguous() if self.channels_last_2d else x

    def encode_latents(self, audio: Tensor) -> Tensor:
        """Audio ``[B, 1, T]`` → continuous latents ``[B, D, ceil(T / hop)]`` (before quantization)."""
        x = self._to_layout(self._pad(audio))
        z = self.encoder(x)
        if self.linear_encoder is not None:
            z = z + self.linear_encoder(x)
        return self._from_layout(z)

    def decode_latents(self, z: Tensor) -> Tensor:
        """(Quantized) latents ``[B, D, F]`` → audio ``[B, 1, F * hop]``."""
        z = self._to_layout(z)
        y = self.decoder(z)
        if self.linear_decoder is not None:
            y = y + self.linear_decoder(z)
        y = self._from_layout(y)
        # The seed's model ended in tanh; kept as an option only (it squashes peaks).
        return torch.tanh(y) if self.output_tanh else y

    def encode(self, audio: Tensor, n_quantizers: int | None = None) -> Tensor:
        """Audio ``[B, 1, T]`` → codes ``[B, n_quantizers, ceil(T / hop)]`` (long).

        ``n_quantizers=None`` uses all ``n_codebooks``.
        """
        n = self.config.n_codebooks if n_quantizers is None else n_quantizers
        z = self.encode_latents(audio)
        return self.quantizer(z, n).codes[:, :n]

    def decode(self, codes: Tensor) -> Tensor:
        """Codes ``[B, Q, F]`` → audio ``[B, 1, F * hop]`` (callers trim to their length)."""
        return self.decode_latents(self.quantizer.decode(codes))

    def forward(self, audio: Tensor, n_quantizers: int | Tensor | None = None, quantize: bool = True) -> CodecOutput:
        """Encode and decode ``audio`` ``[B, 1, T]``.

        ``n_quantizers``: ``None`` (all; quantizer dropout while training), an ``int``,
        or a long tensor ``[B]`` with one setting per item.
        """
        length = audio.shape[-1]
        z = self.encode_latents(audio)
        if not quantize:  # the autoencoder warm-up before the codebooks are fitted
            zero = z.new_zeros(())
            codes = torch.zeros(z.shape[0], 0, z.shape[-1], dtype=torch.long, device=z.device)
            return CodecOutput(self.decode_latents(z)[..., :length], codes, z, zero, zero)
        q = self.quantizer(z, n_quantizers)
        y = self.decode_latents(q.z.to(z.dtype))
        return CodecOutput(
            audio=y[..., :length],
            codes=q.codes,
            latents=z,
            commitment_loss=q.commitment_loss,
            codebook_loss=q.codebook_loss,
        )


# --- factories ---------------------------------------------------------------------------


def cpu_demo_config() -> CodecConfig:
    """The model of the CPU demo profile (``conf/train/cpu.yaml``): trains in minutes on 2 cores."""
    return CodecConfig(encoder_channels=4, latent_dim=64, decoder_channels=32, dilations=(1,))


def gpu_config() -> CodecConfig:
    """The real model (the GPU profile, ``conf/train/gpu.yaml``), sized to code speech at ~7x EnCodec's speed on a
    2-core CPU (``benchmarks/codec_speed.py``): DAC's blocks (three dilated residual units
    per stride), 128-dim latents as EnCodec's, narrow stacks at the audio rate, and strides
    4·4·4·5 so the blocks below the audio rate run at 4 kHz, not 8 kHz. DAC's own widths
    (64/1536) run at 1x real time there: a codec nobody would use from the command line.
    """
    return CodecConfig(
        encoder_channels=8,
        encoder_strides=(4, 4, 4, 5),
        latent_dim=128,
        decoder_channels=128,
        decoder_strides=(5, 4, 4, 4),
        dilations=(1, 3, 9),
    )


def frame_config() -> CodecConfig:
    """The frame-rate model (``conf/train/frame.yaml``, the reference model's architecture): STFT
    hop 160, ConvNeXt widths 256, 64-dim latents, the complex inverse-STFT head (codec.model.frame)."""
    return CodecConfig(
        architecture="frame",
        encoder_strides=(160, 2),
        decoder_strides=(2, 160),
        encoder_channels=256,
        decoder_channels=256,
        latent_dim=64,
        dilations=(1,),
        quantizer_dropout=0.3,
        frame_blocks=(4, 5, 2),
        frame_kernel=5,
        frame_head="complex",
        linear_path=False,
    )


def build_codec(config: CodecConfig, seed: int | None = None) -> Codec:
    """A freshly initialized codec (deterministic when ``seed`` is given)."""
    if seed is None:
        return Codec(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Codec(config)
