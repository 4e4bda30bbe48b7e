"""The bitstream: exact round trips, sizes at the nominal bitrate, and a reader that
refuses anything else with a BitstreamError, in bounded memory."""

from __future__ import annotations

import io
import math
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codec.errors import UserError
from codec.inference import bitstream as bs

FP = bytes.fromhex("0123456789abcdef")


def make_header(
    seconds: float = 10.0,
    n_quantizers: int = 12,
    bits: int = 10,
    chunk_frames: int = bs.DEFAULT_CHUNK_FRAMES,
    sample_rate: int = 16000,
) -> bs.Header:
    length = round(seconds * sample_rate)
    frames = math.ceil(length * 16000 / sample_rate / 320)
    return bs.Header(
        fingerprint=FP,
        sample_rate=sample_rate,
        length=length,
        channels=1,
        model_rate=16000,
        hop_length=320,
        n_quantizers=n_quantizers,
        bits_per_code=bits,
        frame_count=frames,
        chunk_frames=chunk_frames,
        input_lufs=-31.25,
        gain_db=15.25,
    )


def encode(header: bs.Header, codes: np.ndarray, block: int = 97) -> bytes:
    f = io.BytesIO()
    n = bs.write_stream(f, header, (codes[:, i : i + block] for i in range(0, codes.shape[1], block)))
    assert n == len(f.getvalue()) == header.stream_bytes()
    return f.getvalue()


def random_codes(header: bs.Header, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 1 << header.bits_per_code, (header.n_quantizers, header.frame_count))


def read(data: bytes, max_frames: int | None = None) -> tuple[bs.Header, np.ndarray]:
    return bs.read_all(io.BytesIO(data), max_frames=max_frames)


@pytest.mark.parametrize(("n_q", "bits", "chunk"), [(12, 10, 500), (3, 10, 7), (1, 1, 1), (32, 16, 4096), (5, 3, 64)])
def test_random_codes_round_trip_exactly(n_q: int, bits: int, chunk: int) -> None:
    header = make_header(seconds=3.3, n_quantizers=n_q, bits=bits, chunk_frames=chunk, sample_rate=44100)
    codes = random_codes(header)
    got_header, got = read(encode(header, codes))
    assert got_header == header  # the float fields are exact float32 values here
    np.testing.assert_array_equal(got, codes)
    assert got.dtype == np.int64


def test_chunks_stream_one_at_a_time() -> None:
    header = make_header(seconds=10.0, chunk_frames=120)
    codes = random_codes(header)
    stream = bs.read_stream(io.BytesIO(encode(header, codes)))
    sizes = [c.shape for c in stream.chunks]
    assert sizes == [(12, 120)] * 4 + [(12, 20)]


def test_loudness_side_information_is_float32() -> None:
    header = make_header()
    header = bs.Header(**{**header.__dict__, "input_lufs": -math.inf, "gain_db": 0.1})
    got, _ = read(encode(header, random_codes(header)))
    assert got.input_lufs == -math.inf
    assert got.gain_db == float(np.float32(0.1))


@pytest.mark.parametrize(("kbps", "n_q"), [(1.5, 3), (3.0, 6), (6.0, 12)])
def test_size_is_the_nominal_bitrate_plus_a_small_header(kbps: float, n_q: int) -> None:
    header = make_header(seconds=10.0, n_quantizers=n_q)
    assert header.bitrate_bps == kbps * 1000
    data = encode(header, random_codes(header))
    nominal = kbps * 1000 * 10.0 / 8
    assert len(data) == nominal + bs.HEADER_SIZE + bs.CHUNK_HEADER_SIZE  # 72 bytes for one 10 s chunk
    assert len(data) / nominal < 1.04  # 3.8 % at 1.5 kbps, 1 % at 6 kbps


def test_long_streams_cost_under_a_byte_per_second() -> None:
    one_hour = make_header(seconds=3600.0, n_quantizers=3)
    overhead = one_hour.stream_bytes() - 1500 * 3600 / 8
    assert overhead == bs.HEADER_SIZE + 360 * bs.CHUNK_HEADER_SIZE
    assert overhead / 3600 < 1.0


# --- error messages ----------------------------------------------------------------------


def good_stream() -> tuple[bs.Header, bytes]:
    header = make_header(seconds=2.0, chunk_frames=40)
    return header, encode(header, random_codes(header))


def test_errors_are_one_line_user_errors_naming_the_problem() -> None:
    _, data = good_stream()
    cases = {
        "empty": b"",
        "not a codec bitstream": b"RIFF" + data[4:],
        "version 7 is not supported": data[:4] + struct.pack("<H", 7) + data[6:],
        "header checksum": data[:20] + bytes([data[20] ^ 1]) + data[21:],
        "truncated: the file ends after 30 bytes": data[:30],
        "truncated: chunk 2 of 3": data[: bs.HEADER_SIZE + 2 * bs.CHUNK_HEADER_SIZE + 600 + 100],
        "truncated: the file ends at chunk 3 of 3": data[: bs.HEADER_SIZE + 2 * (bs.CHUNK_HEADER_SIZE + 600)],
        "chunk 1 of 3 fails its checksum": data[:100] + bytes([data[100] ^ 0x10]) + data[101:],
        "data continues after the last": data + b"\0",
    }
    for expected, bad in cases.items():
        with pytest.raises(bs.BitstreamError, match=expected) as info:
            read(bad)
        assert "\n" not in str(info.value)
        assert isinstance(info.value, UserError) and info.value.exit_code != 0


def test_swapped_chunks_fail_their_checksum() -> None:
    header, data = good_stream()
    rec = bs.CHUNK_HEADER_SIZE + header.chunk_payload_bytes(header.chunk_frames)
    first, second = data[bs.HEADER_SIZE : bs.HEADER_SIZE + rec], data[bs.HEADER_SIZE + rec : bs.HEADER_SIZE + 2 * rec]
    swapped = data[: bs.HEADER_SIZE] + second + first + data[bs.HEADER_SIZE + 2 * rec :]
    with pytest.raises(bs.BitstreamError, match="chunk 1 of 3 fails its checksum"):
        read(swapped)


def craft_header(**fields: object) -> bytes:
    """A header with any field values and a correct CRC (what a hostile file would hold)."""
    values: dict[str, object] = dict(
        magic=bs.MAGIC, version=1, size=64, fp=FP, rate=16000, length=32000, channels=1, hop=320, model_rate=16000,
        n_q=12, bits=10, reserved=0, chunk=500, frames=100, lufs=-20.0, gain=4.0,
    )  # fmt: skip
    values.update(fields)
    body = struct.pack("<4sHH8sIQHHIBBHIQff", *values.values())
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"rate": 10**9}, "sample rate 1000000000 is out of bounds"),
        ({"length": 2**63}, "length 9223372036854775808 is out of bounds"),
        ({"frames": 2**60}, "frame count .* is out of bounds"),
        ({"n_q": 200}, "quantizer count 200"),
        ({"bits": 0}, "bits per code 0"),
        ({"chunk": 2**31}, "frames per chunk 2147483648"),
        ({"hop": 0}, "hop length 0"),
        ({"gain": float("nan")}, "gain nan"),
        ({"gain": -200.0}, r"gain -200 dB is out of bounds \(-60\.\.60 dB"),  # decode would amplify 1e10 times
        ({"gain": 60.5}, "gain 60.5 dB"),
        ({"rate": 192_001, "length": 384_002}, r"sample rate 192001 is out of bounds \(1000\.\.192000 Hz\)"),
        ({"lufs": float("inf")}, "input loudness inf"),
        ({"size": 4096}, "header size 4096"),
        ({"reserved": 3}, "reserved field"),
    ],
)
def test_absurd_header_values_are_refused_before_allocating(fields: dict[str, object], message: str) -> None:
    with pytest.raises(bs.BitstreamError, match=message):
        read(craft_header(**fields))


def test_a_reader_given_the_size_checks_it_against_the_header_first() -> None:
    header, data = good_stream()
    assert bs.read_all(io.BytesIO(data))[0] == header
    assert bs.read_stream(io.BytesIO(data), size=len(data)).header == header
    # Refused before a chunk is read, however the rest of the file looks.
    for size, message in [(len(data) - 1, "truncated: the header declares 100 frames"), (10**9, "data continues")]:
        with pytest.raises(bs.BitstreamError, match=message):
            bs.read_stream(io.BytesIO(data), size=size)


def test_decoder_limit_and_model_mismatch() -> None:
    header, data = good_stream()
    with pytest.raises(bs.BitstreamError, match="exceed this decoder's limit of 10 frames"):
        read(data, max_frames=10)
    bs.check_model(header, FP)
    with pytest.raises(bs.ModelMismatchError, match="encoded by model 0123456789abcdef but the decoder loaded"):
        bs.check_model(header, b"\xff" * 8)


def test_writer_refuses_codes_that_do_not_fit() -> None:
    header = make_header(seconds=1.0, n_quantizers=2, bits=4)
    with pytest.raises(ValueError, match=r"0\.\.15"):
        bs.write_stream(io.BytesIO(), header, [np.full((2, header.frame_count), 16)])
    with pytest.raises(ValueError, match="promises 50"):
        bs.write_stream(io.BytesIO(), header, [np.zeros((2, 10), np.int64)])
    with pytest.raises(UserError, match="quantizer count 0"):
        bs.Header(**{**header.__dict__, "n_quantizers": 0}).pack()


# --- property-based: nothing but data or a BitstreamError, in bounded memory ---------------

# Bytes. The largest chunk is 256 KiB of payload; reading it peaks at ~5.5 MB (2 MiB of
# unpacked bits, the int64 codes twice, the caller's previous chunk).
MEMORY_LIMIT = 8 * 2**20


def read_safely(data: bytes) -> None:
    """Read ``data`` fully; it must give consistent codes or a BitstreamError, and never
    allocate more than MEMORY_LIMIT while doing so."""
    tracemalloc.start()
    try:
        try:
            stream = bs.read_stream(io.BytesIO(data))
            h = stream.header
            total = 0
            for chunk in stream.chunks:
                assert chunk.shape[0] == h.n_quantizers and 1 <= chunk.shape[1] <= h.chunk_frames
                assert chunk.min() >= 0 and chunk.max() < 1 << h.bits_per_code
                total += chunk.shape[1]
            assert total == h.frame_count
        except bs.BitstreamError as e:
            assert "\n" not in str(e)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_LIMIT


@st.composite
def valid_streams(draw: st.DrawFn) -> bytes:
    header = make_header(
        seconds=draw(st.floats(0.02, 3.0)),
        n_quantizers=draw(st.integers(1, 12)),
        bits=draw(st.integers(1, 16)),
        chunk_frames=draw(st.integers(1, 64)),
        sample_rate=draw(st.sampled_from([8000, 16000, 44100])),
    )
    return encode(header, random_codes(header, seed=draw(st.integers(0, 2**16))))


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_the_largest_chunks_read_in_bounded_memory() -> None:
    """A valid stream at every maximum (32 quantizers × 16 bits × 4096 frames per chunk),
    a truncated one, and a hostile chunk record claiming the maximum over a short file."""
    header = make_header(seconds=2 * 4096 * 320 / 16000, n_quantizers=32, bits=16, chunk_frames=4096)
    data = encode(header, random_codes(header), block=4096)
    assert header.chunk_payload_bytes(4096) == 256 * 1024
    read_safely(data)
    read_safely(data[: len(data) // 2])
    read_safely(data[: bs.HEADER_SIZE] + struct.pack("<II", 4096, 0) + b"\0" * 100)


@SETTINGS
@given(st.binary(max_size=512))
def test_random_bytes(data: bytes) -> None:
    read_safely(data)
    read_safely(bs.MAGIC + b"\x01\x00" + data)


@SETTINGS
@given(valid_streams(), st.data())
def test_single_mutations_of_valid_streams_are_always_caught(data: bytes, draw: st.DataObject) -> None:
    """Every byte is under a CRC-32, which catches any single-bit error; truncation and
    extension are caught by the frame count and the end-of-file check."""
    kind = draw.draw(st.sampled_from(["flip", "truncate", "extend"]))
    if kind == "flip":
        pos = draw.draw(st.integers(0, len(data) * 8 - 1))
        bad = bytearray(data)
        bad[pos // 8] ^= 1 << (pos % 8)
        mutated = bytes(bad)
    elif kind == "truncate":
        mutated = data[: draw.draw(st.integers(0, len(data) - 1))]
    else:
        mutated = data + draw.draw(st.binary(min_size=1, max_size=64))
    with pytest.raises(bs.BitstreamError):
        read(mutated)
    read_safely(mutated)


@SETTINGS
@given(valid_streams(), st.lists(st.tuples(st.integers(0, 10**6), st.binary(max_size=16)), min_size=1, max_size=4))
def test_arbitrary_splices_of_valid_streams(data: bytes, edits: list[tuple[int, bytes]]) -> None:
    for pos, insert in edits:
        pos %= len(data) + 1
        data = data[:pos] + insert + data[pos + len(insert) // 2 :]
    read_safely(data)


@SETTINGS
@given(
    st.fixed_dictionaries(
        {
            "rate": st.integers(0, 2**32 - 1),
            "length": st.integers(0, 2**64 - 1),
            "channels": st.integers(0, 2**16 - 1),
            "hop": st.integers(0, 2**16 - 1),
            "model_rate": st.integers(0, 2**32 - 1),
            "n_q": st.integers(0, 255),
            "bits": st.integers(0, 255),
            "chunk": st.integers(0, 2**32 - 1),
            "frames": st.integers(0, 2**64 - 1),
            "lufs": st.floats(width=32),
            "gain": st.floats(width=32),
        }
    ),
    st.binary(max_size=256),
)
def test_hostile_headers_with_valid_checksums(fields: dict[str, object], tail: bytes) -> None:
    read_safely(craft_header(**fields) + tail)
