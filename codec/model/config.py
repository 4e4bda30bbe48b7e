"""A codec's architecture as plain data (:class:`CodecConfig`): what every checkpoint saves and
what the ONNX export (:mod:`codec.model.export`) carries. No torch here, so the torch-free runtime
(:mod:`codec.inference.onnx_codec`) reads the same config, bitrates and checks."""

from __future__ import annotations

import dataclasses
import math
import typing as tp
from pathlib import Path

from codec.errors import UserError

# The reference model shipped with the package (docs/reference_model.md): the default of
# codec encode/decode before any training. Named here, where no torch is imported.
REFERENCE_CHECKPOINT = Path(__file__).resolve().with_name("reference") / "codec.pt"


@dataclasses.dataclass
class CodecConfig:
    """Architecture of a :class:`Codec`; saved (as a plain dict) in every checkpoint."""

    sample_rate: int = 16000
    # Encoder: channels of the first conv, doubled after each stride.
    encoder_channels: int = 32
    encoder_strides: tuple[int, ...] = (2, 4, 5, 8)
    latent_dim: int = 256
    # Decoder: channels after the first conv, halved at each stride.
    decoder_channels: int = 512
    decoder_strides: tuple[int, ...] = (8, 5, 4, 2)
    # Dilations of the residual units in each encoder and decoder block.
    dilations: tuple[int, ...] = (1, 3, 9)
    n_codebooks: int = 12
    codebook_size: int = 1024
    codebook_dim: int = 8
    # Share of training items coded with fewer quantizers (one of the served settings).
    quantizer_dropout: float = 0.5
    bitrates_kbps: tuple[float, ...] = (1.5, 3.0, 6.0)
    output_activation: tp.Literal["linear", "tanh"] = "linear"
    # "ema": Euclidean codes, k-means init, EMA updates, dead-code restarts (SoundStream,
    # EnCodec). "factorized": DAC's low-dimensional l2-normalized codes trained by gradients.
    quantizer: tp.Literal["ema", "factorized"] = "ema"
    ema_decay: float = 0.99
    # A learned analysis/synthesis filter bank (one strided conv in, one transposed conv
    # out, window 2·hop) added around the conv stacks; see Codec.
    linear_path: bool = True
    # "waveform": the conv stacks above, at the audio rate (DAC). "frame": every layer at the
    # frame rate and an inverse-STFT head (codec.model.frame, Vocos); there encoder_strides
    # are (STFT hop h, down r) and decoder_strides (up r, inverse-STFT hop h), the channels
    # are the ConvNeXt widths, and frame_blocks counts its blocks (encoder, decoder at the
    # frame rate, decoder at r times it), each a depthwise conv of frame_kernel frames.
    architecture: tp.Literal["waveform", "frame"] = "waveform"
    frame_blocks: tuple[int, ...] = (4, 5, 2)
    frame_kernel: int = 5
    frame_head: tp.Literal["polar", "complex"] = "polar"
    # The frame architecture with no look-ahead in its layers (an experiment of issue 27: what a
    # model for live coding costs in quality; codec.model.frame). Left out of to_dict() when
    # false, so every model's fingerprint from before it stays what it was.
    frame_causal: bool = False

    def __post_init__(self) -> None:
        # Lists (from YAML or a checkpoint) become tuples, so configs compare and hash.
        self.encoder_strides = tuple(int(s) for s in self.encoder_strides)
        self.decoder_strides = tuple(int(s) for s in self.decoder_strides)
        self.dilations = tuple(int(d) for d in self.dilations)
        self.frame_blocks = tuple(int(b) for b in self.frame_blocks)
        self.bitrates_kbps = tuple(float(b) for b in self.bitrates_kbps)

    def check(self, where: str = "model config") -> None:
        """Raise :class:`UserError` naming the inconsistent field."""
        if math.prod(self.encoder_strides) != math.prod(self.decoder_strides):
            raise UserError(
                f"{where}: encoder_strides {list(self.encoder_strides)} and decoder_strides "
                f"{list(self.decoder_strides)} must have the same product (the hop length)"
            )
        if self.codebook_size < 2 or self.codebook_size & (self.codebook_size - 1):
            raise UserError(f"{where}: codebook_size {self.codebook_size} must be a power of two (whole bits per code)")
        if not 0.0 <= self.quantizer_dropout <= 1.0:
            raise UserError(f"{where}: quantizer_dropout {self.quantizer_dropout} must be within 0..1")
        if self.quantizer not in ("ema", "factorized"):
            raise UserError(f"{where}: quantizer {self.quantizer!r} must be 'ema' or 'factorized'")
        if not 0.0 < self.ema_decay < 1.0:
            raise UserError(f"{where}: ema_decay {self.ema_decay} must be within (0, 1)")
        if self.architecture not in ("waveform", "frame"):
            raise UserError(f"{where}: architecture {self.architecture!r} must be 'waveform' or 'frame'")
        if self.architecture == "frame":
            self._check_frame(where)
        elif self.frame_causal:
            raise UserError(f"{where}: frame_causal is a setting of the frame architecture, not {self.architecture!r}")
        if not self.bitrates_kbps:
            raise UserError(f"{where}: bitrates_kbps is empty; list at least one served bitrate")
        for kbps in self.bitrates_kbps:
            n = kbps * 1000.0 / (self.frame_rate * self.bits_per_code)
            if abs(n - round(n)) > 1e-6 or not 1 <= round(n) <= self.n_codebooks:
                raise UserError(
                    f"{where}: bitrate {kbps} kbps needs {n:g} quantizers at {self.frame_rate:g} frames/s and "
                    f"{self.bits_per_code} bits per code; choose bitrates that are whole multiples of "
                    f"{self.kbps_per_quantizer:g} kbps up to {self.n_codebooks * self.kbps_per_quantizer:g} kbps"
                )

    def _check_frame(self, where: str) -> None:
        enc, dec = self.encoder_strides, self.decoder_strides
        if len(enc) != 2 or tuple(reversed(dec)) != enc:
            raise UserError(
                f"{where}: the frame architecture takes encoder_strides [STFT hop, down] and decoder_strides "
                f"[up, STFT hop], the same two numbers reversed (got {list(enc)} and {list(dec)}), "
                "e.g. [160, 2] and [2, 160]"
            )
        if enc[0] < 2 or enc[0] % 2 or enc[1] < 1:
            raise UserError(
                f"{where}: the frame architecture's STFT hop {enc[0]} must be even and its down factor >= 1"
            )
        if len(self.frame_blocks) != 3 or min(self.frame_blocks) < 0:
            raise UserError(
                f"{where}: frame_blocks {list(self.frame_blocks)} must be three counts >= 0 "
                "(encoder, decoder at the frame rate, decoder after the up-sampling)"
            )
        if self.frame_kernel < 1 or self.frame_kernel % 2 == 0:
            raise UserError(f"{where}: frame_kernel {self.frame_kernel} must be odd and >= 1")
        if self.frame_head not in ("polar", "complex"):
            raise UserError(f"{where}: frame_head {self.frame_head!r} must be 'polar' or 'complex'")
        if self.linear_path:
            raise UserError(f"{where}: linear_path must be false for the frame architecture (it has its own STFT)")
        if not isinstance(self.frame_causal, bool):
            raise UserError(f"{where}: frame_causal {self.frame_causal!r} must be true or false")

    @property
    def hop_length(self) -> int:
        """Samples per frame (product of the encoder strides)."""
        return math.prod(self.encoder_strides)

    @property
    def frame_rate(self) -> float:
        """Frames per second."""
        return self.sample_rate / self.hop_length

    @property
    def bits_per_code(self) -> int:
        """Bits to send one code index: log2(codebook_size)."""
        return int(math.log2(self.codebook_size))

    @property
    def kbps_per_quantizer(self) -> float:
        """Bitrate one quantizer adds, in kbit/s."""
        return self.frame_rate * self.bits_per_code / 1000.0

    def bitrate_kbps(self, n_quantizers: int) -> float:
        """Bitrate of ``n_quantizers`` quantizers, in kbit/s."""
        return n_quantizers * self.kbps_per_quantizer

    def n_quantizers_for(self, kbps: float) -> int:
        """Quantizers that give ``kbps``; ``ValueError`` for a bitrate this model does not serve."""
        for served in self.bitrates_kbps:
            if math.isclose(kbps, served, rel_tol=1e-6):
                return round(served * 1000.0 / (self.frame_rate * self.bits_per_code))
        raise ValueError(f"{kbps} kbps is not served by this model; served bitrates: {list(self.bitrates_kbps)} kbps")

    @property
    def served_n_quantizers(self) -> tuple[int, ...]:
        """Quantizer counts of the served bitrates, in the order of ``bitrates_kbps``."""
        return tuple(self.n_quantizers_for(k) for k in self.bitrates_kbps)

    def to_dict(self) -> dict[str, tp.Any]:
        """Plain dict (lists, not tuples) for checkpoints, JSON and MLflow.

        A waveform model's dict leaves out the frame architecture's fields: it is the dict its
        checkpoint was written with before they existed, so its fingerprint (which hashes this
        dict, and which every bitstream carries) is unchanged and old streams still decode.
        """
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        if self.architecture == "waveform":
            for key in FRAME_FIELDS:
                d.pop(key)
        if not self.frame_causal:
            d.pop("frame_causal")
        return d

    @classmethod
    def from_dict(cls, data: tp.Mapping[str, tp.Any]) -> CodecConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**dict(data))


FRAME_FIELDS = ("architecture", "frame_blocks", "frame_kernel", "frame_head")
