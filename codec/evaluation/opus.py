"""The Opus baseline: what a user would otherwise pick, at the same bitrate.

:func:`opus_roundtrip` encodes mono audio with libopus (through PyAV's codec
contexts, no container) and decodes it again, returning audio aligned sample for
sample with the input, at the input's rate and length, plus the bitrate Opus
actually spent, measured from the packet sizes.

How the round trip is made exact:

- **Rates.** libopus takes 8, 12, 16, 24 or 48 kHz; other inputs are resampled to
  48 kHz first (soxr, linear phase, no delay). The libopus decoder in FFmpeg always
  returns 48 kHz, which is resampled back to the input's rate.
- **Delay.** The encoder delays the signal by its look-ahead and announces it as the
  pre-skip in its ``OpusHead`` extradata (312 samples at 48 kHz = 6.5 ms). Giving that
  extradata to the decoder makes it drop exactly the pre-skip, so the output starts
  at the input's first sample (``tests/test_opus.py`` checks the lag is 0 by
  cross-correlation at a transparent bitrate).
- **Length.** The last frame is zero-padded to a whole Opus frame and the encoder
  is flushed; the output is then trimmed to the input's length.

What libopus does at low bitrates (measured on 10 s of espeak-ng Telugu at 16 kHz,
20 ms frames, ``application=voip``; libopus in PyAV 18):

=========  ==================  ==================  =========================
requested  VBR (default)       CBR (``vbr=False``)  note
=========  ==================  ==================  =========================
1.5 kbps   5.5 kbps, PESQ 1.2  1.6 kbps, PESQ 1.05  VBR floors SILK at ~5.5
3 kbps     5.5 kbps, PESQ 1.2  3.2 kbps, PESQ 1.05  CBR below 6 kbps: unusable
6 kbps     6.5 kbps, PESQ 1.7  6.0 kbps, PESQ 1.3
12 kbps    12.0 kbps, PESQ 3.0 12.0 kbps, PESQ 2.6
=========  ==================  ==================  =========================

So below 6 kbps Opus does not honour the request in its default (VBR) mode: it
spends about 5.5 kbps whatever is asked. :class:`OpusResult` reports the requested
and the effective bitrate side by side, so a comparison "at equal bitrate" can say
honestly that Opus got more bits at 1.5 and 3 kbps. The effective bitrate counts
the Opus packets only (TOC byte included), not an Ogg container's ~1 % framing.
"""

from __future__ import annotations

import dataclasses
import fractions
import typing as tp

import numpy as np
import numpy.typing as npt

from codec.audio.resample import resample
from codec.errors import UserError

OPUS_RATES = (8000, 12000, 16000, 24000, 48000)  # input rates libopus accepts
DECODER_RATE = 48000  # FFmpeg's libopus decoder always returns 48 kHz
MIN_BITRATE_BPS = 500  # libopus' range for one channel
MAX_BITRATE_BPS = 512000
FRAME_MS = (10, 20, 40, 60)  # frame durations libopus takes (2.5 and 5 ms: CELT only, omitted)
Application = tp.Literal["voip", "audio", "lowdelay"]


class OpusError(UserError):
    """An Opus round trip was asked for with settings libopus cannot honour."""


@dataclasses.dataclass(frozen=True)
class OpusResult:
    """What :func:`opus_roundtrip` returns.

    - ``audio``: decoded audio ``[T]`` float32, at the input's rate and length, aligned
      with it (no delay)
    - ``requested_bps``: the bitrate asked of the encoder
    - ``effective_bps``: bits in the Opus packets / input duration; libopus may spend
      more (it floors VBR speech at ~5.5 kbps) or a little less (silence)
    - ``n_packets``, ``payload_bytes``: the packets and their total size
    - ``opus_rate``: the rate given to the encoder (the input's, or 48 kHz)
    - ``vbr``, ``frame_ms``, ``application``: the encoder settings used
    """

    audio: npt.NDArray[np.float32]
    requested_bps: int
    effective_bps: float
    n_packets: int
    payload_bytes: int
    opus_rate: int
    vbr: bool
    frame_ms: int
    application: str

    @property
    def effective_kbps(self) -> float:
        return self.effective_bps / 1000.0


def _check(audio: npt.NDArray[np.floating[tp.Any]], sample_rate: int, bitrate_bps: int, frame_ms: int) -> None:
    if audio.ndim != 1:
        raise OpusError(f"opus_roundtrip expects mono audio of shape [T], got {audio.shape}; mix down first")
    if sample_rate <= 0:
        raise OpusError(f"sample rate must be positive, got {sample_rate}")
    if not MIN_BITRATE_BPS <= bitrate_bps <= MAX_BITRATE_BPS:
        raise OpusError(
            f"Opus bitrate {bitrate_bps} bps is outside libopus' range of "
            f"{MIN_BITRATE_BPS}..{MAX_BITRATE_BPS} bps for one channel"
        )
    if frame_ms not in FRAME_MS:
        raise OpusError(f"Opus frame duration {frame_ms} ms is not one of {', '.join(map(str, FRAME_MS))} ms")


def opus_roundtrip(
    audio: npt.NDArray[np.floating[tp.Any]],
    sample_rate: int,
    bitrate_bps: int,
    *,
    vbr: bool = True,
    frame_ms: int = 20,
    application: Application = "voip",
) -> OpusResult:
    """Encode mono ``audio`` (``[T]`` at ``sample_rate``) with libopus at ``bitrate_bps``
    and decode it; see the module docstring for the alignment and what libopus does at
    low bitrates.

    ``vbr=True`` is libopus' default and what a user would get; ``vbr=False`` asks for
    constant bitrate, which keeps to the requested rate below 6 kbps at a large cost in
    quality. ``application="voip"`` tunes the encoder for speech.
    """
    import av  # PyAV, with libopus; only the baseline needs it

    x = np.asarray(audio, dtype=np.float32)
    _check(x, sample_rate, bitrate_bps, frame_ms)
    n = x.shape[0]
    opus_rate = sample_rate if sample_rate in OPUS_RATES else DECODER_RATE
    xin = np.ascontiguousarray(resample(x, sample_rate, opus_rate))

    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate = opus_rate
    enc.layout = "mono"
    enc.format = "flt"
    enc.bit_rate = int(bitrate_bps)
    enc.time_base = fractions.Fraction(1, opus_rate)
    enc.options = {"vbr": "on" if vbr else "off", "frame_duration": str(frame_ms), "application": application}
    enc.open()
    frame = int(enc.frame_size)
    packets = []
    padded = np.zeros(-(-xin.shape[0] // frame) * frame if xin.size else 0, dtype=np.float32)
    padded[: xin.shape[0]] = xin
    for start in range(0, padded.shape[0], frame):
        chunk = av.AudioFrame.from_ndarray(padded[None, start : start + frame], format="flt", layout="mono")
        chunk.sample_rate = opus_rate
        chunk.pts = start
        chunk.time_base = enc.time_base
        packets.extend(enc.encode(chunk))
    packets.extend(enc.encode(None))
    payload = int(sum(p.size for p in packets))

    dec = av.CodecContext.create("libopus", "r")
    dec.extradata = enc.extradata  # OpusHead: carries the pre-skip the decoder drops
    dec.open()
    decoded: list[npt.NDArray[np.float32]] = []
    out_rate = DECODER_RATE
    for packet in [*packets, None]:
        for f in dec.decode(packet):
            out_rate = int(f.sample_rate)
            pcm = f.to_ndarray().reshape(-1)
            # FFmpeg's libopus decoder hands out s16 unless told otherwise; scale integers to [-1, 1).
            scale = 1.0 / 32768.0 if np.issubdtype(pcm.dtype, np.integer) else 1.0
            decoded.append((pcm * scale).astype(np.float32))
    y = np.concatenate(decoded) if decoded else np.zeros(0, np.float32)
    y = resample(y, out_rate, sample_rate)
    if y.shape[0] < n:  # never seen (the flush returns the look-ahead), but keep the contract
        y = np.pad(y, (0, n - y.shape[0]))
    duration = n / sample_rate
    return OpusResult(
        audio=np.ascontiguousarray(y[:n], dtype=np.float32),
        requested_bps=int(bitrate_bps),
        effective_bps=8.0 * payload / duration if duration > 0 else 0.0,
        n_packets=len(packets),
        payload_bytes=payload,
        opus_rate=opus_rate,
        vbr=vbr,
        frame_ms=frame_ms,
        application=application,
    )
