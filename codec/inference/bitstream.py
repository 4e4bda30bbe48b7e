"""The codec's file format: a header, then chunks of codes packed to their bit width.

A bitstream is written and read chunk by chunk, so neither side holds a long file's
codes (or audio) in memory, and every byte is covered by a CRC-32 (``zlib.crc32``).
It does not depend on the model: the header carries the model's 8-byte fingerprint
(:func:`codec.model.checkpoint.model_fingerprint`) and the decoder compares it with the model it
loaded (:func:`check_model`).

All integers are little-endian. Two versions: version 2 (what ``codec encode`` writes) adds
energy side information (:mod:`codec.inference.energy`) to version 1; a stream encoded with
it turned off is written as version 1, and both are read. Header (64 bytes in version 1,
76 in version 2):

======  ====  ======  =============================================================
offset  size  type    field
======  ====  ======  =============================================================
0       4     bytes   magic ``b"TSCB"`` (Telugu Speech Codec Bitstream)
4       2     u16     format version (1 or 2)
6       2     u16     header size in bytes (64 in version 1, 76 in version 2)
8       8     bytes   model fingerprint
16      4     u32     sample rate of the original input (Hz); decode writes this rate
20      8     u64     length of the original input, in samples at that rate
28      2     u16     channels of the original input (information only: the codec
                      codes the mono mix-down and decode writes mono)
30      2     u16     model hop length (samples per frame at the model's rate)
32      4     u32     model sample rate (Hz)
36      1     u8      quantizers per frame ``Q`` (sets the bitrate)
37      1     u8      bits per code ``b`` (log2 of the codebook size)
38      2     u16     reserved, 0
40      4     u32     frames per chunk ``C`` (every chunk but the last has exactly C)
44      8     u64     frame count ``F`` (all chunks together)
52      4     f32     input loudness, LUFS (BS.1770; -inf for silence)
56      4     f32     gain applied before encoding, dB (decode applies its negative)
60      4     u32     version 1: CRC-32 of bytes 0..59 (the header ends here)
60      2     u16     version 2: energy block ``B``, frames per level code (divides ``C``)
62      1     u8      version 2: bits per level code ``e`` (2..16)
63      1     u8      version 2: reserved, 0
64      4     f32     version 2: level step, dB
68      4     f32     version 2: level floor, dBFS (code 1; code 0 is "below it")
72      4     u32     version 2: CRC-32 of bytes 0..71
======  ====  ======  =============================================================

Then ``ceil(F / C)`` chunk records, chunk ``k`` (from 0) being:

======  ============  ======  =====================================================
offset  size          type    field
======  ============  ======  =====================================================
0       4             u32     frames in this chunk ``n`` (1..C; C unless it is the last)
4       4             u32     CRC-32 of the 4-byte chunk index ``k`` (u32), the frame
                              count field, and the payload: a chunk moved, repeated
                              or dropped fails too
8       ceil(n·Q·b/8)  bytes   payload: the codes frame by frame (frame 0's Q codes, then
                              frame 1's, …), each ``b`` bits, most significant bit
                              first, the last byte padded with zero bits
…       ceil(m·e/8)   bytes   version 2: the ``m = ceil(n/B)`` level codes of the
                              chunk's blocks, ``e`` bits each, packed the same way
======  ============  ======  =====================================================

The CRC of a version-2 chunk covers its level codes too. The file ends right after the
last chunk. Size (version 1): ``64 + ceil(F/C)·8 + Σ payload``:
at 50 frames/s and 10 bits per code, 6 kbps for 10 s is 7,500 payload bytes plus 72
(1 %), 1.5 kbps is 1,875 plus 72 (3.8 %); each further chunk of ``C = 500`` frames
(10 s) adds 8 bytes, 0.8 byte/s. Version 2 adds 12 header bytes and, at the default 8 bits
per 0.5 s block, 16 bit/s (1.07 % of 1.5 kbps).

A reader treats the file as untrusted: every header value is checked against the
bounds below before anything is allocated from it, a chunk is at most
``MAX_CHUNK_FRAMES·MAX_QUANTIZERS·MAX_BITS/8`` = 256 KiB (reading one peaks at about
6 MB, measured in ``tests/test_bitstream.py``), and every failure is a
:class:`BitstreamError` with a one-line message. The bounds are what the encoder writes,
so a header outside them was not written by it: the sample rate is at most 192 kHz
(the encoder refuses faster inputs) and the gain within ±60 dB (the encoder refuses an
input more than 60 dB louder than its target), so a decoder's output holds at most
24 h at 192 kHz and is at most 1000 times (60 dB) the model's output level. A reader
given the file's size (``read_stream(size=…)``) also checks, before reading any chunk,
that the file holds exactly the bytes the header's frame count implies.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import typing as tp
import zlib

import numpy as np
import numpy.typing as npt

from codec.errors import UserError
from codec.inference.energy import EnergySettings

MAGIC = b"TSCB"
FORMAT_VERSION = 2  # what the encoder writes (with energy side information)
LIVE_VERSION = 3  # what codec encode --live writes (see "Live streams" above)
SUPPORTED_VERSIONS = (1, 2, 3)
_HEADER = struct.Struct("<4sHH8sIQHHIBBHIQffI")
HEADER_SIZE = _HEADER.size  # 64: version 1
_ENERGY = struct.Struct("<HBBff")
HEADER_SIZES = {1: HEADER_SIZE, 2: HEADER_SIZE + _ENERGY.size, 3: HEADER_SIZE + _ENERGY.size}  # 64, 76, 76
_GAIN = struct.Struct("<f")  # a live chunk's gain, dB
_END = struct.Struct("<QQ")  # a live stream's end record: length (samples at the input's rate), frame count
MAX_HEADER_SIZE = max(HEADER_SIZES.values())
_CHUNK = struct.Struct("<II")
CHUNK_HEADER_SIZE = _CHUNK.size  # 8
_INDEX = struct.Struct("<I")

# Bounds on header values: refuse before allocating.
MIN_SAMPLE_RATE = 1000
# Decode writes the input's rate, so this rate bounds the output per second of codes: 192 kHz
# is the highest rate of mainstream recording gear; the encoder refuses faster inputs.
MAX_SAMPLE_RATE = 192_000
MAX_CHANNELS = 256
MAX_QUANTIZERS = 32
MAX_BITS = 16
MAX_CHUNK_FRAMES = 4096
DEFAULT_CHUNK_FRAMES = 500  # 10 s at 50 frames/s: 8 bytes of chunk record per 10 s
MAX_SECONDS = 24 * 3600  # one day of audio
FRAME_COUNT_TOLERANCE = 2  # frames, for the resampler's rounding of the length
# The gain the encoder applies (target - loudness, at most +max_gain_db): decode applies its
# negative, so MIN_GAIN_DB bounds how far decode may amplify (60 dB, x1000). The encoder refuses
# inputs more than 60 dB louder than the target (+44 LUFS at -16: float samples in the hundreds).
MIN_GAIN_DB = -60.0
MAX_GAIN_DB = 60.0
LUFS_RANGE = (-400.0, 100.0)

Codes = npt.NDArray[np.int64]


class BitstreamError(UserError):
    """A bitstream that cannot be decoded: truncated, corrupted, not ours, or from
    another version or model. The message is one line."""


class ModelMismatchError(BitstreamError):
    """The bitstream was encoded by a different model than the one decoding it."""


@dataclasses.dataclass(frozen=True)
class Header:
    """The bitstream header (see the module docstring for the layout). ``input_lufs``
    and ``gain_db`` are rounded to float32, the precision the file holds.

    ``frame_count`` is what the chunks hold together; ``length`` and ``sample_rate``
    are the original input's, so decode can give back exactly its rate and length.
    """

    fingerprint: bytes
    sample_rate: int
    length: int
    channels: int
    model_rate: int
    hop_length: int
    n_quantizers: int
    bits_per_code: int
    frame_count: int
    chunk_frames: int
    input_lufs: float
    gain_db: float
    energy: EnergySettings | None = None  # the side information's settings (version 2)
    live: bool = False  # version 3: length and frame count come at the end, a gain per chunk

    def __post_init__(self) -> None:
        # The file holds the loudness and gain as float32: round them here, so the header
        # a writer returns equals the one a reader gets back.
        with np.errstate(over="ignore"):
            object.__setattr__(self, "input_lufs", float(np.float32(self.input_lufs)))
            object.__setattr__(self, "gain_db", float(np.float32(self.gain_db)))

    @property
    def version(self) -> int:
        """1 without energy side information, 2 with it, 3 for a live stream."""
        return LIVE_VERSION if self.live else 1 if self.energy is None else 2

    @property
    def header_size(self) -> int:
        return HEADER_SIZES[self.version]

    @property
    def frame_rate(self) -> float:
        """Frames per second."""
        return self.model_rate / self.hop_length

    @property
    def bitrate_bps(self) -> float:
        """Nominal bitrate of the codes (frames/s · Q · b), header and chunk records aside."""
        return self.frame_rate * self.n_quantizers * self.bits_per_code

    @property
    def side_bps(self) -> float:
        """Bitrate of the energy side information (0 without it)."""
        return 0.0 if self.energy is None else self.energy.bits_per_second(self.frame_rate)

    @property
    def duration_s(self) -> float:
        return self.length / self.sample_rate

    @property
    def n_chunks(self) -> int:
        return -(-self.frame_count // self.chunk_frames)

    def chunk_payload_bytes(self, frames: int) -> int:
        """Payload bytes of a chunk of ``frames`` frames (its codes, then its level codes)."""
        return self.chunk_code_bytes(frames) + self.chunk_level_bytes(frames)

    def chunk_code_bytes(self, frames: int) -> int:
        return (frames * self.n_quantizers * self.bits_per_code + 7) // 8

    def chunk_levels(self, frames: int) -> int:
        """Level codes in a chunk of ``frames`` frames (0 without side information)."""
        return 0 if self.energy is None else -(-frames // self.energy.block_frames)

    def chunk_level_bytes(self, frames: int) -> int:
        return 0 if self.energy is None else (self.chunk_levels(frames) * self.energy.bits + 7) // 8

    def stream_bytes(self) -> int:
        """Exact size of the whole bitstream."""
        full, last = divmod(self.frame_count, self.chunk_frames)
        size = self.header_size + self.n_chunks * CHUNK_HEADER_SIZE + full * self.chunk_payload_bytes(self.chunk_frames)
        return size + (self.chunk_payload_bytes(last) if last else 0)

    def check(self, name: str = "bitstream") -> None:
        """Raise :class:`BitstreamError` naming the first value out of bounds."""

        def bad(what: str, value: object, limit: str) -> BitstreamError:
            return BitstreamError(
                f"{name}: header {what} {value} is out of bounds ({limit}); the file is corrupted or not a bitstream"
            )

        if self.version not in SUPPORTED_VERSIONS:
            raise BitstreamError(
                f"{name}: bitstream format version {self.version} is not supported (this codec reads "
                f"version {', '.join(map(str, SUPPORTED_VERSIONS))}); decode it with the codec version that wrote it"
            )
        if len(self.fingerprint) != 8:
            raise bad("model fingerprint length", len(self.fingerprint), "8 bytes")
        for what, rate in (("sample rate", self.sample_rate), ("model sample rate", self.model_rate)):
            if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
                raise bad(what, rate, f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")
        if not 1 <= self.channels <= MAX_CHANNELS:
            raise bad("channel count", self.channels, f"1..{MAX_CHANNELS}")
        if not 1 <= self.hop_length <= 65535:
            raise bad("hop length", self.hop_length, "1..65535")
        if not 1 <= self.n_quantizers <= MAX_QUANTIZERS:
            raise bad("quantizer count", self.n_quantizers, f"1..{MAX_QUANTIZERS}")
        if not 1 <= self.bits_per_code <= MAX_BITS:
            raise bad("bits per code", self.bits_per_code, f"1..{MAX_BITS}")
        if not 1 <= self.chunk_frames <= MAX_CHUNK_FRAMES:
            raise bad("frames per chunk", self.chunk_frames, f"1..{MAX_CHUNK_FRAMES}")
        if self.live:
            self._check_live(bad)
            return
        max_length = self.sample_rate * MAX_SECONDS
        if not 1 <= self.length <= max_length:
            raise bad("length", self.length, f"1..{max_length} samples, {MAX_SECONDS // 3600} h")
        expected = self.length * self.model_rate / (self.sample_rate * self.hop_length)
        lo = max(1, math.floor(expected) - FRAME_COUNT_TOLERANCE)
        hi = math.ceil(expected) + FRAME_COUNT_TOLERANCE
        if not lo <= self.frame_count <= hi:
            raise bad("frame count", self.frame_count, f"{lo}..{hi} for {self.length} samples")
        if not (math.isfinite(self.gain_db) and MIN_GAIN_DB <= self.gain_db <= MAX_GAIN_DB):
            raise bad("gain", f"{self.gain_db:g} dB", f"{MIN_GAIN_DB:g}..{MAX_GAIN_DB:g} dB, what the encoder writes")
        if not (self.input_lufs == -math.inf or LUFS_RANGE[0] <= self.input_lufs <= LUFS_RANGE[1]):
            raise bad("input loudness", self.input_lufs, f"{LUFS_RANGE[0]:g}..{LUFS_RANGE[1]:g} LUFS or -inf")
        if self.energy is not None and self.chunk_frames % self.energy.block_frames:
            raise bad(
                "energy block", self.energy.block_frames, f"a divisor of the {self.chunk_frames} frames per chunk"
            )

    def _check_live(self, bad: tp.Callable[[str, object, str], BitstreamError]) -> None:
        """A live header: no length or frame count yet (its end record has them), energy side
        information, and the gain of the first chunk in bounds (each chunk carries its own)."""
        if self.energy is None:
            raise bad("energy settings", None, "a live stream carries energy side information")
        if self.length != 0 or self.frame_count != 0:
            raise bad("length and frame count", (self.length, self.frame_count), "0 in a live header")
        if not (math.isfinite(self.gain_db) and MIN_GAIN_DB <= self.gain_db <= MAX_GAIN_DB):
            raise bad("gain", f"{self.gain_db:g} dB", f"{MIN_GAIN_DB:g}..{MAX_GAIN_DB:g} dB, what the encoder writes")
        if self.chunk_frames % self.energy.block_frames:
            raise bad(
                "energy block", self.energy.block_frames, f"a divisor of the {self.chunk_frames} frames per chunk"
            )

    def with_end(self, length: int, frame_count: int) -> Header:
        """A live header with its stream's length and frame count, as its end record gives them."""
        return dataclasses.replace(self, length=length, frame_count=frame_count)

    def pack(self) -> bytes:
        """The header bytes (64 in version 1, 76 in version 2), CRC included (checks the values first)."""
        self.check("header")
        body = _HEADER.pack(
            MAGIC,
            self.version,
            self.header_size,
            self.fingerprint,
            self.sample_rate,
            self.length,
            self.channels,
            self.hop_length,
            self.model_rate,
            self.n_quantizers,
            self.bits_per_code,
            0,
            self.chunk_frames,
            self.frame_count,
            self.input_lufs,
            self.gain_db,
            0,
        )[:-4]
        if self.energy is not None:
            e = self.energy
            body += _ENERGY.pack(e.block_frames, e.bits, 0, e.step_db, e.floor_db)
        return body + struct.pack("<I", zlib.crc32(body))

    @classmethod
    def unpack(cls, data: bytes, name: str = "bitstream") -> Header:
        """Parse and check the header at the start of ``data`` (64 or 76 bytes; more are
        ignored); :class:`BitstreamError` on any problem."""
        if not data:
            raise BitstreamError(f"{name}: the file is empty; pass a file written by 'codec encode'")
        if data[:4] != MAGIC and not (len(data) < 4 and MAGIC.startswith(data)):
            raise BitstreamError(
                f"{name}: not a codec bitstream (starts with {bytes(data[:4])!r}, expected {MAGIC!r}); "
                "pass a file written by 'codec encode'"
            )
        if len(data) < 8:
            raise BitstreamError(f"{name}: truncated: the file ends after {len(data)} bytes, inside the header")
        version, header_size = struct.unpack_from("<HH", data, 4)
        if version not in SUPPORTED_VERSIONS:
            raise BitstreamError(
                f"{name}: bitstream format version {version} is not supported (this codec reads version "
                f"{', '.join(map(str, SUPPORTED_VERSIONS))}); decode it with the codec version that wrote it"
            )
        expected_size = HEADER_SIZES[version]
        if header_size != expected_size:
            raise BitstreamError(
                f"{name}: header size {header_size} does not match version {version}'s {expected_size} bytes; "
                "the file is corrupted"
            )
        if len(data) < expected_size:
            raise BitstreamError(f"{name}: truncated: the file ends after {len(data)} bytes, inside the header")
        fields = _HEADER.unpack(data[:HEADER_SIZE])
        (_, _, _, fp, rate, length, channels, hop, model_rate, n_q, bits, reserved, chunk, frames, lufs, gain, crc) = (
            fields
        )
        energy: EnergySettings | None = None
        if version >= 2:
            (crc,) = struct.unpack_from("<I", data, expected_size - 4)
        if zlib.crc32(data[: expected_size - 4]) != crc:
            raise BitstreamError(
                f"{name}: corrupted: the header checksum does not match; re-encode or re-copy the file"
            )
        if reserved != 0:
            raise BitstreamError(f"{name}: header reserved field is {reserved}, expected 0; the file is corrupted")
        if version >= 2:
            block, e_bits, e_reserved, step, floor = _ENERGY.unpack_from(data, HEADER_SIZE - 4)
            if e_reserved != 0:
                raise BitstreamError(
                    f"{name}: header energy reserved field is {e_reserved}, expected 0; the file is corrupted"
                )
            try:
                energy = EnergySettings(block_frames=block, step_db=step, bits=e_bits, floor_db=floor)
            except ValueError as e:
                raise BitstreamError(f"{name}: header {e}; the file is corrupted or not a bitstream") from None
        header = cls(
            live=version == LIVE_VERSION,
            fingerprint=fp,
            sample_rate=rate,
            length=length,
            channels=channels,
            model_rate=model_rate,
            hop_length=hop,
            n_quantizers=n_q,
            bits_per_code=bits,
            frame_count=frames,
            chunk_frames=chunk,
            input_lufs=float(lufs),
            gain_db=float(gain),
            energy=energy,
        )
        header.check(name)
        return header


# --- packing ----------------------------------------------------------------------------


def pack_codes(codes: npt.NDArray[np.integer[tp.Any]], bits: int) -> bytes:
    """Codes ``[Q, n]`` → bytes: frame by frame, ``bits`` bits per code, MSB first."""
    flat = np.ascontiguousarray(np.asarray(codes).T).reshape(-1).astype(np.uint32)
    bit_array = np.empty((flat.shape[0], bits), dtype=np.uint8)
    for i in range(bits):
        bit_array[:, i] = (flat >> np.uint32(bits - 1 - i)) & 1
    return np.packbits(bit_array.reshape(-1)).tobytes()


def unpack_codes(payload: bytes, n_quantizers: int, frames: int, bits: int) -> Codes:
    """Inverse of :func:`pack_codes`: ``[Q, n]`` int64.

    Builds the values one bit plane at a time, so the peak memory is the unpacked bits
    (1 byte per bit) plus the int64 result, not 8 bytes per bit.
    """
    count = n_quantizers * frames
    bit_array = np.unpackbits(np.frombuffer(payload, dtype=np.uint8), count=count * bits).reshape(count, bits)
    values = np.zeros(count, dtype=np.int64)
    for i in range(bits):
        values <<= 1
        values |= bit_array[:, i]
    return np.ascontiguousarray(values.reshape(frames, n_quantizers).T)


# --- writing ----------------------------------------------------------------------------


def write_header(fileobj: tp.BinaryIO, header: Header) -> int:
    """Write the header (64 bytes in version 1, 76 in version 2); returns the bytes written."""
    data = header.pack()
    fileobj.write(data)
    return len(data)


def write_chunk(
    fileobj: tp.BinaryIO,
    header: Header,
    index: int,
    codes: npt.NDArray[np.integer[tp.Any]],
    levels: npt.NDArray[np.integer[tp.Any]] | None = None,
    gain_db: float | None = None,
) -> int:
    """Write chunk ``index`` holding ``codes`` ``[Q, n]`` (and, in version 2, the level
    codes ``[ceil(n / B)]`` of its blocks; in a live stream, the chunk's gain too); returns the
    bytes written.

    ``n`` must be ``header.chunk_frames`` except for the last chunk. Raises
    ``ValueError`` for codes that do not fit the header (a bug in the caller).
    """
    arr = np.asarray(codes)
    if arr.ndim != 2 or arr.shape[0] != header.n_quantizers:
        raise ValueError(f"chunk codes must be [{header.n_quantizers}, frames], got {arr.shape}")
    frames = arr.shape[1]
    if not 1 <= frames <= header.chunk_frames:
        raise ValueError(f"a chunk holds 1..{header.chunk_frames} frames, got {frames}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"codes must be integers, got {arr.dtype}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= 1 << header.bits_per_code):
        raise ValueError(f"codes must lie in 0..{(1 << header.bits_per_code) - 1} for {header.bits_per_code} bits")
    payload = pack_codes(arr, header.bits_per_code)
    if header.energy is not None:
        lv = np.asarray(levels if levels is not None else np.zeros(0, np.int64)).reshape(-1)
        if lv.shape[0] != header.chunk_levels(frames):
            raise ValueError(
                f"a chunk of {frames} frames holds {header.chunk_levels(frames)} level codes, got {lv.shape[0]}"
            )
        if lv.size and (int(lv.min()) < 0 or int(lv.max()) > header.energy.max_code):
            raise ValueError(f"level codes must lie in 0..{header.energy.max_code}")
        payload += pack_codes(lv.reshape(1, -1), header.energy.bits)
    elif levels is not None:
        raise ValueError("level codes given for a version-1 stream (no energy side information)")
    if header.live != (gain_db is not None):
        raise ValueError("a live stream's chunks carry a gain, and only theirs")
    if gain_db is not None:
        if not (math.isfinite(gain_db) and MIN_GAIN_DB <= gain_db <= MAX_GAIN_DB):
            raise ValueError(f"a chunk gain must lie in {MIN_GAIN_DB:g}..{MAX_GAIN_DB:g} dB, got {gain_db}")
        payload = _GAIN.pack(gain_db) + payload
    count = struct.pack("<I", frames)
    crc = zlib.crc32(payload, zlib.crc32(count, zlib.crc32(_INDEX.pack(index))))
    record = count + struct.pack("<I", crc) + payload
    fileobj.write(record)
    return len(record)


def write_end(fileobj: tp.BinaryIO, index: int, length: int, frame_count: int) -> int:
    """A live stream's end record, after its ``index`` chunks: the input's length (samples at
    its rate) and the frames written; returns the bytes written."""
    count = struct.pack("<I", 0)
    body = _END.pack(length, frame_count)
    crc = zlib.crc32(body, zlib.crc32(count, zlib.crc32(_INDEX.pack(index))))
    record = count + struct.pack("<I", crc) + body
    fileobj.write(record)
    return len(record)


def write_stream(
    fileobj: tp.BinaryIO,
    header: Header,
    blocks: tp.Iterable[npt.NDArray[np.integer[tp.Any]]],
    levels: npt.NDArray[np.integer[tp.Any]] | None = None,
) -> int:
    """Write the header and then ``blocks`` of codes (``[Q, n]`` each, any ``n``), cut
    into chunks of ``header.chunk_frames``; returns the bytes written. A version-2 header
    needs ``levels``, the level codes of every block of the stream (``[ceil(F / B)]``,
    :func:`codec.inference.energy.level_codes`; 2 bytes a second at most).

    Holds at most one chunk plus one block in memory. Raises ``ValueError`` if the
    blocks do not add up to ``header.frame_count`` frames.
    """
    if header.energy is not None:
        if levels is None:
            raise ValueError("a version-2 stream needs the level codes of its blocks")
        all_levels = np.asarray(levels).reshape(-1)
        want = -(-header.frame_count // header.energy.block_frames)
        if all_levels.shape[0] != want:
            raise ValueError(f"{header.frame_count} frames need {want} level codes, got {all_levels.shape[0]}")
        per_chunk = header.chunk_frames // header.energy.block_frames

    def chunk_levels(index: int) -> npt.NDArray[np.integer[tp.Any]] | None:
        if header.energy is None:
            return None
        return all_levels[index * per_chunk : (index + 1) * per_chunk]

    written = write_header(fileobj, header)
    pending: list[npt.NDArray[np.integer[tp.Any]]] = []
    n_pending = 0
    index = 0
    total = 0
    for block in blocks:
        arr = np.asarray(block)
        if arr.ndim != 2 or arr.shape[0] != header.n_quantizers:
            raise ValueError(f"code blocks must be [{header.n_quantizers}, frames], got {arr.shape}")
        total += arr.shape[1]
        if total > header.frame_count:
            raise ValueError(f"blocks hold more than the header's {header.frame_count} frames")
        pending.append(arr)
        n_pending += arr.shape[1]
        while n_pending >= header.chunk_frames:
            joined = np.concatenate(pending, axis=1)
            written += write_chunk(fileobj, header, index, joined[:, : header.chunk_frames], chunk_levels(index))
            index += 1
            pending, n_pending = [joined[:, header.chunk_frames :]], n_pending - header.chunk_frames
    if n_pending:
        written += write_chunk(fileobj, header, index, np.concatenate(pending, axis=1), chunk_levels(index))
    if total != header.frame_count:
        raise ValueError(f"blocks hold {total} frames; the header promises {header.frame_count}")
    return written


# --- reading ----------------------------------------------------------------------------


def _read_exact(fileobj: tp.BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes: fewer only at the end of the file (loops over short reads)."""
    parts = []
    remaining = n
    while remaining > 0:
        part = fileobj.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


@dataclasses.dataclass
class Chunk:
    """One chunk record: its codes ``[Q, n]`` and its level codes ``[ceil(n / B)]``
    (empty in version 1), and in a live stream its gain (dB)."""

    codes: Codes
    levels: Codes
    gain_db: float | None = None


@dataclasses.dataclass
class Stream:
    """What :func:`read_stream` returns: the checked header, and the chunk records,
    read lazily from the file as they are iterated (``chunks``: their codes only)."""

    header: Header
    records: tp.Iterator[Chunk]
    # A live stream's header as a file's: with the length and frame count of its end record, once read.
    ended: list[Header] = dataclasses.field(default_factory=list)

    @property
    def chunks(self) -> tp.Iterator[Codes]:
        return (record.codes for record in self.records)


def read_stream(
    fileobj: tp.BinaryIO, max_frames: int | None = None, name: str = "bitstream", *, size: int | None = None
) -> Stream:
    """Read and check the header now; return it with an iterator over the chunks.

    ``max_frames`` lets the caller refuse streams longer than it is willing to decode.
    ``size``, the file's size in bytes when known, is checked against the size the header
    implies (:meth:`Header.stream_bytes`) now, so a header that claims more (or fewer)
    frames than the file holds is refused before any chunk is read or decoded.
    Iterating raises :class:`BitstreamError` at the first truncated, corrupted,
    misplaced or extra chunk (after yielding the good chunks before it), and after the
    last chunk checks that the file ends there.
    """
    head = _read_exact(fileobj, 8)
    if len(head) == 8 and head[:4] == MAGIC:
        version, _ = struct.unpack_from("<HH", head, 4)
        head += _read_exact(fileobj, HEADER_SIZES.get(version, HEADER_SIZE) - 8)
    header = Header.unpack(head, name)
    if header.live:  # its length comes at the end: checked while reading
        ended: list[Header] = []
        return Stream(header, _iter_live_chunks(fileobj, header, name, max_frames, ended), ended)
    if size is not None:
        check_size(header, size, name)
    if max_frames is not None and header.frame_count > max_frames:
        raise BitstreamError(
            f"{name}: {header.frame_count} frames ({header.duration_s:.0f} s) exceed this decoder's limit of "
            f"{max_frames} frames"
        )
    return Stream(header, _iter_chunks(fileobj, header, name))


def check_size(header: Header, size: int, name: str = "bitstream") -> None:
    """Raise :class:`BitstreamError` unless a file of ``size`` bytes is exactly the stream
    ``header`` describes (the header's frame count is what the payload holds)."""
    expected = header.stream_bytes()
    if size == expected:
        return
    declared = (
        f"the header declares {header.frame_count} frames ({header.duration_s:.1f} s) in {expected} bytes "
        f"but the file has {size}"
    )
    if size < expected:
        raise BitstreamError(f"{name}: truncated: {declared}; re-encode or re-copy it")
    raise BitstreamError(
        f"{name}: corrupted: {declared}: data continues after the last of {header.n_chunks} chunks; "
        "the file was appended to or is not one bitstream"
    )


def _iter_chunks(fileobj: tp.BinaryIO, header: Header, name: str) -> tp.Iterator[Chunk]:
    done = 0
    for index in range(header.n_chunks):
        expected = min(header.chunk_frames, header.frame_count - done)
        head = _read_exact(fileobj, CHUNK_HEADER_SIZE)
        if len(head) < CHUNK_HEADER_SIZE:
            raise BitstreamError(
                f"{name}: truncated: the file ends at chunk {index + 1} of {header.n_chunks} "
                f"({done} of {header.frame_count} frames read); re-encode or re-copy it"
            )
        frames, crc = _CHUNK.unpack(head)
        if frames != expected:
            raise BitstreamError(
                f"{name}: corrupted: chunk {index + 1} of {header.n_chunks} says {frames} frames, expected "
                f"{expected}; re-encode or re-copy the file"
            )
        size = header.chunk_payload_bytes(frames)
        payload = _read_exact(fileobj, size)
        if len(payload) < size:
            raise BitstreamError(
                f"{name}: truncated: chunk {index + 1} of {header.n_chunks} ends after {len(payload)} of its "
                f"{size} bytes; re-encode or re-copy the file"
            )
        if zlib.crc32(payload, zlib.crc32(head[:4], zlib.crc32(_INDEX.pack(index)))) != crc:
            raise BitstreamError(
                f"{name}: corrupted: chunk {index + 1} of {header.n_chunks} fails its checksum; "
                "re-encode or re-copy the file"
            )
        done += frames
        code_bytes = header.chunk_code_bytes(frames)
        codes = unpack_codes(payload[:code_bytes], header.n_quantizers, frames, header.bits_per_code)
        levels = np.zeros(0, np.int64)
        if header.energy is not None:
            levels = unpack_codes(payload[code_bytes:], 1, header.chunk_levels(frames), header.energy.bits)[0]
        yield Chunk(codes, levels)
    extra = fileobj.read(1)
    if extra:
        raise BitstreamError(
            f"{name}: corrupted: data continues after the last of {header.n_chunks} chunks; "
            "the file was appended to or is not one bitstream"
        )


def _iter_live_chunks(
    fileobj: tp.BinaryIO, header: Header, name: str, max_frames: int | None, ended: list[Header]
) -> tp.Iterator[Chunk]:
    """A live stream's chunks, read as they arrive (a pipe), up to its end record; every chunk
    but the last holds ``chunk_frames`` frames; the end record's length and frame count must
    agree with what was read, and the file must end there."""
    done = index = 0
    short = False  # a chunk under chunk_frames was read: only the end record may follow
    limit = MAX_SECONDS * header.model_rate // header.hop_length if max_frames is None else max_frames
    while True:
        head = _read_exact(fileobj, CHUNK_HEADER_SIZE)
        if len(head) < CHUNK_HEADER_SIZE:
            raise BitstreamError(
                f"{name}: truncated: the live stream ends at chunk {index + 1} ({done} frames read) without its "
                "end record; the encoder was stopped or the copy is incomplete"
            )
        frames, crc = _CHUNK.unpack(head)
        if frames == 0:
            break
        if frames > header.chunk_frames or short:
            raise BitstreamError(f"{name}: corrupted: live chunk {index + 1} says {frames} frames; re-encode it")
        size = _GAIN.size + header.chunk_payload_bytes(frames)
        payload = _read_exact(fileobj, size)
        if len(payload) < size or zlib.crc32(payload, zlib.crc32(head[:4], zlib.crc32(_INDEX.pack(index)))) != crc:
            raise BitstreamError(f"{name}: corrupted or truncated: live chunk {index + 1} fails its checksum")
        (gain,) = _GAIN.unpack_from(payload)
        if not (math.isfinite(gain) and MIN_GAIN_DB <= gain <= MAX_GAIN_DB):
            raise BitstreamError(f"{name}: corrupted: live chunk {index + 1} has a gain of {gain:g} dB")
        done += frames
        if done > limit:
            raise BitstreamError(f"{name}: the live stream exceeds this decoder's limit of {limit} frames")
        short = frames < header.chunk_frames
        body = payload[_GAIN.size :]
        code_bytes = header.chunk_code_bytes(frames)
        codes = unpack_codes(body[:code_bytes], header.n_quantizers, frames, header.bits_per_code)
        assert header.energy is not None  # a live header has it (Header.check)
        levels = unpack_codes(body[code_bytes:], 1, header.chunk_levels(frames), header.energy.bits)[0]
        yield Chunk(codes, levels, float(gain))
        index += 1
    body = _read_exact(fileobj, _END.size)
    if len(body) < _END.size or zlib.crc32(body, zlib.crc32(head[:4], zlib.crc32(_INDEX.pack(index)))) != crc:
        raise BitstreamError(f"{name}: corrupted or truncated: the live stream's end record fails its checksum")
    length, frame_count = _END.unpack(body)
    if frame_count != done or done == 0:
        raise BitstreamError(f"{name}: corrupted: the end record says {frame_count} frames, the chunks hold {done}")
    final = dataclasses.replace(header, live=False, length=length, frame_count=frame_count)
    try:
        final.check(name)  # the length against the frames, as in a file's header
    except BitstreamError as e:
        raise BitstreamError(f"{e} (in the live stream's end record)") from None
    if fileobj.read(1):
        raise BitstreamError(f"{name}: corrupted: data continues after the live stream's end record")
    ended.append(final)


def read_all(fileobj: tp.BinaryIO, max_frames: int | None = None, name: str = "bitstream") -> tuple[Header, Codes]:
    """The header and all codes ``[Q, F]`` at once (for short streams and tests)."""
    stream = read_stream(fileobj, max_frames=max_frames, name=name)
    chunks = list(stream.chunks)
    return stream.header, np.concatenate(chunks, axis=1)


def check_model(header: Header, fingerprint: bytes, name: str = "bitstream") -> None:
    """Raise :class:`ModelMismatchError` unless the stream was encoded by the model
    whose :func:`codec.model.checkpoint.model_fingerprint` is ``fingerprint``."""
    if header.fingerprint != fingerprint:
        raise ModelMismatchError(
            f"{name}: encoded by model {header.fingerprint.hex()} but the decoder loaded model {fingerprint.hex()}; "
            "decode with the model that encoded it (--model)"
        )
