"""Audio files: read any format libsndfile knows, write WAVs atomically and byte-reproducibly.

Audio is float32 in full-scale units: ``[T, C]`` as read, mono ``[T]`` (:data:`codec.audio.Array`)
after :func:`to_mono`.
"""

from __future__ import annotations

import io
import math
import os
import typing as tp
import wave
from pathlib import Path

import numpy as np
import soundfile as sf

from codec.audio import Array
from codec.files import atomic_path

# The recordings ingest reads and codec encode takes from a folder (what libsndfile decodes).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3")


def read_mono(path: str | Path, start: int = 0, frames: int = -1) -> Array:
    """Mono float32 samples ``[T]`` (the first channel of a multi-channel file), ``frames``
    of them from ``start`` (-1: to the end)."""
    with open_sound(path) as f:
        if start:
            f.seek(start)
        x = f.read(frames, dtype="float32", always_2d=True)
    return np.ascontiguousarray(x[:, 0])


def read_audio(path: str | Path, max_seconds: float | None = None) -> tuple[Array, int]:
    """Read any format libsndfile knows (WAV, FLAC, OGG, MP3, …) as float32 ``[T, C]``.

    Raises ``soundfile.LibsndfileError`` / ``RuntimeError`` for unreadable files,
    ``TruncatedAudioError`` when the file holds fewer frames than its header says, and
    ``AudioTooLongError`` when it is longer than ``max_seconds``: from the header, before
    anything is decoded, or while reading for formats whose header does not know. Samples
    are read in blocks, so memory follows what the file holds, never what a header claims.
    """
    plain = _read_pcm16_wav(Path(path), max_seconds)
    if plain is not None:
        return plain
    with open_sound(path) as f:
        declared = f.frames
        rate = f.samplerate
        fmt = f.format
        limit = None if max_seconds is None else math.floor(max_seconds * rate)
        exact = fmt not in ("MP3", "OGG")  # those headers estimate the length, or leave it out
        if limit is not None and exact and declared > limit:
            raise AudioTooLongError(declared / rate, from_header=True)
        pcm16 = f.subtype == "PCM_16"
        blocks: list[np.ndarray] = []
        got = 0
        while True:
            # Reading 16-bit samples and scaling them here is twice as fast as
            # libsndfile's own float conversion, and gives the same values.
            block = f.read(_BLOCK_FRAMES, dtype="int16" if pcm16 else "float32", always_2d=True)
            if block.shape[0] == 0:
                break
            blocks.append(block)
            got += block.shape[0]
            if limit is not None and got > limit:
                raise AudioTooLongError(got / rate, from_header=False)
        channels = f.channels
    raw = np.concatenate(blocks) if len(blocks) > 1 else (blocks[0] if blocks else np.zeros((0, channels), np.float32))
    data = np.multiply(raw, np.float32(1 / 32768), dtype=np.float32) if pcm16 else raw.astype(np.float32, copy=False)
    if declared > 0 and data.shape[0] < declared and exact:
        raise TruncatedAudioError(f"header declares {declared} frames but only {data.shape[0]} could be read")
    if fmt in ("WAV", "WAVEX", "RF64"):
        check_riff_data_size(Path(path))
    return data, int(rate)


_BLOCK_FRAMES = 1 << 20  # ~65 s at 16 kHz per read


class AudioTooLongError(RuntimeError):
    """The file is longer than the caller accepts (from its header, or found while reading)."""

    def __init__(self, seconds: float, from_header: bool) -> None:
        super().__init__(f"{seconds:.3f} s" + (" (from the header)" if from_header else ""))
        self.seconds = seconds
        self.from_header = from_header


def _placeholder_frames(frames: int, channels: int) -> bool:
    """``frames`` is what the ``wave`` module makes of a placeholder data size (rounded down to
    whole frames) or of a data size past 4 GB: libsndfile reads those."""
    size = frames * channels * 2
    return size >= 0xFFFFFFFF - 3 or any(is_size_placeholder(size + k) for k in range(2 * channels))


def _read_pcm16_wav(path: Path, max_seconds: float | None = None) -> tuple[Array, int] | None:
    """A plain 16-bit PCM WAV through the standard library's reader, or ``None`` for anything else.

    The common case of the data stages: one open and one read, where libsndfile plus
    the RIFF size check open the file twice (half the time per file). Scaled as the
    libsndfile path scales 16-bit samples, so both give identical arrays. Files the
    reader refuses (other encodings, WAVE_FORMAT_EXTENSIBLE, broken headers) and
    data chunks of unknown length go to libsndfile, which reports its own errors.
    """
    if path.suffix.lower() != ".wav":
        return None
    try:
        with open(path, "rb") as f, wave.open(f, "rb") as w:
            channels, width, rate, frames = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            if width != 2 or rate <= 0 or frames <= 0 or _placeholder_frames(frames, channels):
                return None
            if max_seconds is not None and frames > math.floor(max_seconds * rate):
                raise AudioTooLongError(frames / rate, from_header=True)
            # The reader stops at the start of the samples: a header that declares more
            # than the file holds is refused before anything that size is allocated.
            available = (os.fstat(f.fileno()).st_size - f.tell()) // (2 * channels)
            raw = w.readframes(frames) if available >= frames else b""
    except (wave.Error, EOFError, OSError, ValueError):
        return None
    got = len(raw) // (2 * channels) if raw else available
    if got < frames:
        raise TruncatedAudioError(f"header declares {frames} frames but only {got} could be read")
    pcm = np.frombuffer(raw, dtype="<i2").reshape(frames, channels)
    return np.multiply(pcm, np.float32(1 / 32768), dtype=np.float32), rate


def is_size_placeholder(size: int) -> bool:
    """A WAV data size that a writer to a pipe leaves for "unknown, to the end of the file":
    0, 0xFFFFFFFF (ffmpeg, libsndfile), 0x7FFFFFFF (arecord) or sox's 0x7FFFF000 (rounded down
    to its block). Any other size is a size: a file shorter than it is truncated."""
    return size in (0, 0x7FFFFFFF, 0xFFFFFFFF) or 0x7FFFF000 - 256 < size <= 0x7FFFF000


def _riff_data_chunk(path: str | Path) -> tuple[int, int, int] | None:
    """``(offset of the 'data' chunk, its declared size, file size)`` of a RIFF/WAVE or RF64
    file (an RF64's size from its ``ds64`` chunk), or ``None`` for other files."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
            return None
        ds64_data: int | None = None
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk = f.read(8)
            cid, clen = chunk[:4], int.from_bytes(chunk[4:8], "little")
            if cid == b"ds64" and clen >= 16:
                body = f.read(16)
                if len(body) == 16:
                    ds64_data = int.from_bytes(body[8:16], "little")
            if cid == b"data":
                if clen == 0xFFFFFFFF and ds64_data is not None and head[:4] == b"RF64":
                    return pos, ds64_data, size
                return pos, clen, size
            pos += 8 + clen + (clen & 1)
    return None


def check_riff_data_size(path: Path) -> None:
    """Raise ``TruncatedAudioError`` if a RIFF/WAVE (or RF64) 'data' chunk runs past the end of the file.

    libsndfile quietly shortens such files to what is there, which would turn a
    cut-off upload into a shorter, valid-looking clip. RF64 files (WAVs over 4 GB)
    keep the real data size in their ``ds64`` chunk; the 'data' chunk says 0xFFFFFFFF.
    A streaming placeholder (:func:`is_size_placeholder`) is not a size: such a file's
    data runs to its end, and :func:`open_sound` reads it so.
    """
    found = _riff_data_chunk(path)
    if found is None:
        return
    pos, clen, size = found
    if not is_size_placeholder(clen) and pos + 8 + clen > size:
        raise TruncatedAudioError(f"the WAV data chunk declares {clen} bytes but the file ends after {size - pos - 8}")


class _StreamedWav(io.RawIOBase):
    """A streaming WAV's bytes with the RIFF and data sizes of its header set to what the
    file holds (libsndfile reads a data size of 0 as no samples)."""

    def __init__(self, path: str | Path, data_pos: int, size: int) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 (closed by close())
        data_len = min(size - data_pos - 8, 0xFFFFFFFF - 1)
        data_len -= data_len & 1
        self._patches = {4: min(size - 8, 0xFFFFFFFF - 1).to_bytes(4, "little")}
        self._patches[data_pos + 4] = data_len.to_bytes(4, "little")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readinto(self, buffer: tp.Any) -> int:
        start = self._f.tell()
        n = self._f.readinto(buffer)
        view = memoryview(buffer).cast("B")
        for at, value in self._patches.items():
            lo, hi = max(at, start), min(at + len(value), start + n)
            if lo < hi:
                view[lo - start : hi - start] = value[lo - at : hi - at]
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


class _SoundFile(sf.SoundFile):
    """``sf.SoundFile`` that closes the file object it was opened on."""

    _owned: io.RawIOBase | None = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._owned is not None:
                self._owned.close()


def open_sound(path: str | Path) -> sf.SoundFile:
    """``soundfile.SoundFile`` for reading ``path`` (a name that is not UTF-8 opens too); a WAV
    whose data size is a streaming placeholder (:func:`is_size_placeholder`, as ``sox`` and
    ``arecord`` write to a pipe) is read to the end of the file."""
    try:
        found = _riff_data_chunk(path)
    except OSError:  # libsndfile says why
        found = None
    if found is None or not is_size_placeholder(found[1]) or found[0] + 8 >= found[2]:
        return sf.SoundFile(os.fsencode(path))
    raw = _StreamedWav(path, found[0], found[2])
    try:
        f = _SoundFile(raw)
    except BaseException:
        raw.close()
        raise
    f._owned = raw
    return f


class TruncatedAudioError(RuntimeError):
    """The file ends before the number of frames its header declares."""


def to_mono(x: Array) -> Array:
    """Average the channels of ``[T, C]`` audio to ``[T]``."""
    if x.ndim == 1:
        return x
    if x.shape[1] == 1:
        return np.ascontiguousarray(x[:, 0])
    return x.mean(axis=1, dtype=np.float32)


CANCEL_DB = 30.0  # a mono mix this far below its channels has cancelled
SOUND_POWER = 1e-7  # -70 dBFS RMS: below it the channels hold no sound to lose


def mixdown_drop_db(mix_energy: float, channel_energy: float, length: int) -> float | None:
    """How far (dB) a mono mix fell below its channels, when it fell more than :data:`CANCEL_DB`
    while the channels hold sound: channels in anti-phase cancel in :func:`to_mono`. ``None``
    when the mix is fine. ``mix_energy``: the mix's sum of squares; ``channel_energy``: the
    channels' mean sum of squares; ``length``: frames."""
    if length <= 0 or channel_energy / length < SOUND_POWER:
        return None
    drop_db = 10.0 * math.log10(channel_energy / max(mix_energy, 1e-30))
    return min(drop_db, 200.0) if drop_db > CANCEL_DB else None


def mixdown_energies(x: Array) -> tuple[float, float]:
    """(the mono mix's sum of squares, the channels' mean sum of squares) of ``[T, C]`` audio."""
    mono = to_mono(x).astype(np.float64)
    channels = float(np.einsum("ij,ij->", x, x, dtype=np.float64)) / max(1, x.shape[1])
    return float(np.dot(mono, mono)), channels


def write_wav(path: str | Path, x: Array, rate: int, subtype: str = "FLOAT", atomic: bool = True) -> None:
    """Write mono ``[T]`` audio as a WAV file, atomically unless ``atomic=False``.

    The WAV is formatted in memory and written with one system call: libsndfile
    fsyncs every file it closes, which costs more than the rest of a
    normalization. Stages that write into a staging folder swapped in as a whole
    pass ``atomic=False``: the folder's rename already guarantees readers never
    see a partial file, and a temporary name plus a rename per file costs as
    much again as the write.
    """
    if subtype == "PCM_16" and x.ndim == 1:
        # The standard library's writer takes the samples as they are: 4x faster than
        # libsndfile's conversion through Python file callbacks. Scaled by 32768 to
        # mirror ``read_audio``, so what is read back is exactly what was written.
        pcm = np.clip(np.rint(x * np.float32(32768)), -32768, 32767).astype("<i2")

        def emit(target: Path) -> None:
            with wave.open(str(target), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(rate)
                w.writeframes(pcm.data)

    else:
        buf = io.BytesIO()
        if subtype == "FLOAT":
            # scipy's writer, not libsndfile's: libsndfile adds a PEAK chunk stamped with the
            # time of writing to float WAVs, so the same audio gave different bytes (and a
            # new DVC hash for data/raw, re-running every stage after it) on each run.
            import scipy.io.wavfile  # here: scipy.io costs ~0.15 s of codec encode's start-up, which never writes one

            scipy.io.wavfile.write(buf, rate, np.asarray(x, dtype=np.float32))
        else:
            sf.write(buf, x, rate, subtype=subtype, format="WAV")

        def emit(target: Path) -> None:
            target.write_bytes(buf.getbuffer())

    if not atomic:
        emit(Path(path))
        return
    with atomic_path(path) as tmp:
        emit(tmp)


# --- WAV as a stream (live coding: a pipe from a recorder, a pipe to a player) -------------------

_WAV_PCM, _WAV_FLOAT, _WAV_EXTENSIBLE = 1, 3, 0xFFFE
STREAMING_SIZE = 0xFFFFFFFF  # what recorders write for "size unknown" (arecord); 0 from others


class WavStreamError(ValueError):
    """A live input that is not a WAV stream this reader takes (the message says what to send)."""


def _read_exactly(f: tp.BinaryIO, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        part = f.read(n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def read_wav_stream(f: tp.BinaryIO, block_s: float = 0.02) -> tuple[int, int, tp.Iterator[Array]]:
    """A WAV read as it arrives: ``(rate, channels, blocks)``, ``blocks`` float32 ``[n, C]`` of
    ``block_s`` seconds (the last shorter). PCM 8/16/24/32-bit and 32-bit float, plain or
    WAVE_FORMAT_EXTENSIBLE; a data size of 0 or 0xFFFFFFFF (a recorder that cannot seek back)
    means "until the stream ends". :class:`WavStreamError` for anything else."""
    import struct

    head = _read_exactly(f, 12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
        raise WavStreamError("the live input is not a WAV stream; send WAV (e.g. sox -d -t wav - or arecord -t wav)")
    fmt: tuple[int, int, int, int] | None = None
    while True:
        chunk = _read_exactly(f, 8)
        if len(chunk) < 8:
            raise WavStreamError("the live WAV stream ends before its data chunk")
        cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if cid == b"data":
            break
        body = _read_exactly(f, size + (size & 1))
        if cid == b"fmt ":
            tag, channels, rate = struct.unpack_from("<HHI", body)
            bits = struct.unpack_from("<H", body, 14)[0]
            if tag == _WAV_EXTENSIBLE and len(body) >= 26:
                tag = struct.unpack_from("<H", body, 24)[0]
            fmt = (tag, channels, rate, bits)
    if fmt is None:
        raise WavStreamError("the live WAV stream has no fmt chunk before its data")
    tag, channels, rate, bits = fmt
    kinds = {(_WAV_PCM, 8), (_WAV_PCM, 16), (_WAV_PCM, 24), (_WAV_PCM, 32), (_WAV_FLOAT, 32)}
    if (tag, bits) not in kinds or not 1 <= channels <= 256 or not 1 <= rate <= 1_000_000:
        raise WavStreamError(
            f"the live WAV stream is format {tag}, {bits} bits, {channels} channels at {rate} Hz; send PCM "
            "(8/16/24/32-bit) or 32-bit float"
        )
    bounded = size not in (0, STREAMING_SIZE)
    frame_bytes = channels * bits // 8

    def blocks() -> tp.Iterator[Array]:
        left = size if bounded else None
        want = max(1, round(block_s * rate)) * frame_bytes
        carry = b""
        while left is None or left > 0:
            n = want if left is None else min(want, left)
            got = _read_exactly(f, n)
            if left is not None:
                left -= len(got)
            data = carry + got
            usable = len(data) // frame_bytes * frame_bytes
            data, carry = data[:usable], data[usable:]
            if data:
                yield _decode_pcm(data, tag, bits).reshape(-1, channels)
            if len(got) < n:  # the stream ended
                return

    return rate, channels, blocks()


def _decode_pcm(data: bytes, tag: int, bits: int) -> Array:
    if tag == _WAV_FLOAT:
        return np.frombuffer(data, "<f4").astype(np.float32)
    if bits == 8:
        return ((np.frombuffer(data, np.uint8).astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    if bits == 24:
        raw = np.frombuffer(data, np.uint8).reshape(-1, 3)
        values = raw[:, 0].astype(np.int32) | raw[:, 1].astype(np.int32) << 8 | raw[:, 2].astype(np.int32) << 16
        values = np.where(values >= 1 << 23, values - (1 << 24), values)
        return (values / float(1 << 23)).astype(np.float32)
    kind = "<i2" if bits == 16 else "<i4"
    return (np.frombuffer(data, kind).astype(np.float32) / float(1 << (bits - 1))).astype(np.float32)


def wav_stream_header(rate: int, channels: int = 1, float32: bool = False) -> bytes:
    """A WAV header for a stream of unknown length (sizes 0xFFFFFFFF, as arecord writes):
    16-bit PCM, or 32-bit float."""
    import struct

    bits, tag = (32, _WAV_FLOAT) if float32 else (16, _WAV_PCM)
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    return (
        b"RIFF"
        + struct.pack("<I", STREAMING_SIZE)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", STREAMING_SIZE)
    )


def pcm16(x: Array) -> bytes:
    """Float samples as little-endian 16-bit PCM (clipped to full scale, rounded)."""
    return np.asarray(np.clip(np.rint(np.asarray(x, np.float64) * 32767.0), -32768, 32767), "<i2").tobytes()
