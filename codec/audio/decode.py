"""Audio files read as a stream of blocks: libsndfile where it can, PyAV (FFmpeg) where it can't.

libsndfile reads WAV at any width, FLAC, OGG (Vorbis, Opus) and MP3; M4A/AAC (Kathbath,
phone recordings) needs FFmpeg, which the ``av`` wheels bundle. Blocks are float32
``[T, C]`` at the file's own rate, so a one-hour recording is never held whole: memory
follows the block size, whatever the file's length.
"""

from __future__ import annotations

import dataclasses
import typing as tp
from pathlib import Path

import numpy as np
import soundfile as sf

from codec.audio.io import AUDIO_EXTENSIONS, AudioTooLongError, open_sound

# What ingest reads: libsndfile's formats plus the containers only FFmpeg opens.
FFMPEG_EXTENSIONS = (".m4a", ".aac", ".mp4", ".opus", ".webm", ".wma")
INGEST_EXTENSIONS = AUDIO_EXTENSIONS + FFMPEG_EXTENSIONS

BLOCK_SECONDS = 10.0


class DecodeError(RuntimeError):
    """Neither libsndfile nor FFmpeg could decode the file (the message says why)."""


@dataclasses.dataclass(frozen=True)
class StreamInfo:
    rate: int
    channels: int
    format: str  # libsndfile's format name (WAV, FLAC, MP3, …) or FFmpeg's codec (aac, opus, …)
    seconds: float | None  # from the header; None where the container does not say
    exact: bool = True  # the header's length is the sample count (libsndfile's WAV, FLAC, …), not an estimate


def stream_info(path: str | Path) -> StreamInfo:
    """Rate, channels, format and (declared) length, without decoding samples."""
    try:
        with open_sound(path) as f:
            exact = f.format not in ("MP3", "OGG")  # those headers estimate the length
            return StreamInfo(f.samplerate, f.channels, f.format, f.frames / f.samplerate if exact else None)
    except (sf.LibsndfileError, RuntimeError):
        pass
    import av  # here: PyAV's import costs ~0.2 s that files libsndfile reads never need

    try:
        with av.open(str(path)) as c:
            s = _audio_stream(c, path)
            seconds = float(s.duration * s.time_base) if s.duration is not None and s.time_base else None
            rate, channels = int(s.codec_context.sample_rate), int(s.codec_context.channels)
            # A container's duration leaves out the codec's priming and padding: an estimate.
            return StreamInfo(rate, channels, s.codec_context.name, seconds, exact=False)
    except (av.FFmpegError, ValueError) as e:
        raise DecodeError(f"neither libsndfile nor FFmpeg can decode it ({e})") from None


def iter_blocks(path: str | Path, block_seconds: float = BLOCK_SECONDS) -> tp.Iterator[np.ndarray]:
    """float32 ``[T, C]`` blocks of about ``block_seconds`` each, at the file's rate (see :func:`stream_info`)."""
    try:
        f = open_sound(path)
    except (sf.LibsndfileError, RuntimeError):
        yield from _ffmpeg_blocks(path, block_seconds)
        return
    with f:
        n = max(1, int(block_seconds * f.samplerate))
        while True:
            block = f.read(n, dtype="float32", always_2d=True)
            if block.shape[0] == 0:
                return
            yield block


def _audio_stream(container: tp.Any, path: str | Path) -> tp.Any:
    if not container.streams.audio:
        raise DecodeError(f"{Path(path).name} holds no audio stream")
    return container.streams.audio[0]


def _ffmpeg_blocks(path: str | Path, block_seconds: float) -> tp.Iterator[np.ndarray]:
    import av  # here: see stream_info

    try:
        with av.open(str(path)) as c:
            s = _audio_stream(c, path)
            rate = int(s.codec_context.sample_rate)
            n = max(1, int(block_seconds * rate))
            # Planar float at the stream's own rate and layout: only the sample format changes.
            resampler = av.AudioResampler(format="fltp")
            pending: list[np.ndarray] = []
            have = 0
            for frame in c.decode(s):
                for out in resampler.resample(frame):
                    pending.append(out.to_ndarray().T)
                    have += out.samples
                if have >= n:
                    data = np.concatenate(pending)
                    while data.shape[0] >= n:
                        yield np.ascontiguousarray(data[:n], dtype=np.float32)
                        data = data[n:]
                    pending, have = [data], data.shape[0]
            for out in resampler.resample(None):
                pending.append(out.to_ndarray().T)
            if pending and sum(p.shape[0] for p in pending):
                yield np.ascontiguousarray(np.concatenate(pending), dtype=np.float32)
    except av.FFmpegError as e:
        raise DecodeError(f"FFmpeg cannot decode it ({e})") from None


def read_all(path: str | Path, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """The whole file as float32 ``[T, C]`` and its rate, through :func:`iter_blocks`; raises
    :class:`codec.audio.io.AudioTooLongError` past ``max_seconds`` (decoding stops there)."""
    info = stream_info(path)
    limit = None if max_seconds is None else int(max_seconds * info.rate)
    blocks, got = [], 0
    for b in iter_blocks(path):
        blocks.append(b)
        got += b.shape[0]
        if limit is not None and got > limit:
            raise AudioTooLongError(got / info.rate, from_header=False)
    data = np.concatenate(blocks) if blocks else np.zeros((0, info.channels), np.float32)
    return data, info.rate
