"""The one varint codec (llmzip.varint): exact bytes, strict reading, and how each format reports
a malformed varint with its own typed error."""

from __future__ import annotations

import io
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmzip import varint
from llmzip.errors import CorruptArchiveError, FrameError
from llmzip.frames import format as fmt
from llmzip.frames import lm
from llmzip.frames.methods import DecodeFailed

PINNED = [
    (0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02"),
    (16_383, b"\xff\x7f"), (16_384, b"\x80\x80\x01"), (2**32, b"\x80\x80\x80\x80\x10"),
    (2**64 - 1, b"\xff" * 9 + b"\x01"),
]
MALFORMED = [     # bytes, reason
    (b"", "runs past the end"),
    (b"\x80", "runs past the end"),
    (b"\xff" * 9, "runs past the end"),
    (b"\x80\x00", "is not minimally encoded"),                 # 0 in two bytes
    (b"\xac\x82\x00", "is not minimally encoded"),             # 300 with a zero group after it
    (b"\xff" * 9 + b"\x02", "exceeds 64 bits"),                # 2**64
    (b"\x80" * 9 + b"\x7f", "exceeds 64 bits"),
    (b"\x80" * 10 + b"\x01", "is longer than 10 bytes"),
]


@pytest.mark.parametrize("value, encoded", PINNED)
def test_pinned_bytes(value, encoded):
    assert varint.encode(value) == encoded
    assert varint.decode(encoded) == (value, len(encoded))
    assert varint.decode(b"junk" + encoded + b"\x80", 4) == (value, 4 + len(encoded))


@pytest.mark.parametrize("value", [-1, 2**64, 2**70, True, 1.0, "1", None])
def test_encode_refuses_what_has_no_encoding(value):
    with pytest.raises(ValueError, match="varint value out of range"):
        varint.encode(value)


@pytest.mark.parametrize("blob, reason", MALFORMED)
def test_decode_refuses_malformed_varints(blob, reason):
    with pytest.raises(varint.VarintError, match=f"^{reason}$"):
        varint.decode(blob)
    with pytest.raises(CorruptArchiveError):        # uncaught by a format, it still reads as damage
        varint.decode(blob)


def test_decode_stops_at_end():
    assert varint.decode(b"\xac\x02", 0, 2) == (300, 2)
    with pytest.raises(varint.VarintError, match="runs past the end"):
        varint.decode(b"\xac\x02", 0, 1)


@given(st.integers(0, 2**64 - 1))
def test_round_trip_and_length(value):
    encoded = varint.encode(value)
    assert varint.decode(encoded) == (value, len(encoded))
    assert len(encoded) == max(1, -(-value.bit_length() // 7))
    assert encoded[-1] != 0 or value == 0


# --- each format turns a malformed varint into its own error -----------------------------------

def _record(raw_size: bytes, payload: bytes = b"x") -> bytes:
    head = (bytes([1]) + raw_size + varint.encode(len(payload)) + fmt.checksum(payload)
            + zlib.crc32(payload).to_bytes(4, "little"))
    return head + zlib.crc32(head).to_bytes(4, "little") + payload


def test_frame_record_sizes_are_frame_errors():
    reader = fmt.RecordReader(io.BytesIO(_record(b"\x81\x00")))
    with pytest.raises(FrameError, match=r"^frame 0 at offset 5: a size is not minimally encoded$"):
        reader.next_frame()
    reader = fmt.RecordReader(io.BytesIO(_record(b"\x80" * 10 + b"\x01")))
    with pytest.raises(FrameError, match="a size is longer than 10 bytes"):
        reader.next_frame()
    reader = fmt.RecordReader(io.BytesIO(_record(b"\x81")[:3]))   # ends inside raw_size
    with pytest.raises(FrameError, match="truncated archive"):
        reader.next_frame()


def _archive_with_index(raw_size: bytes) -> bytes:
    """One stored frame of b"x", its trailer's raw_size written as ``raw_size`` (CRC made good)."""
    record = _record(b"\x01")
    body = (bytes([fmt.END_MARKER]) + b"\x01\x01" + raw_size + b"\x01" + fmt.stream_digest([fmt.checksum(b"x")]))
    body += zlib.crc32(body).to_bytes(4, "little")
    return fmt.STREAM_HEADER + record + body + len(body).to_bytes(4, "little")


def test_trailer_index_entries_are_corrupt_archive_errors():
    good = _archive_with_index(b"\x01")
    assert [(i.raw_size, i.payload_size) for i in fmt.read_index(io.BytesIO(good), len(good))] == [(1, 1)]
    bad = _archive_with_index(b"\x81\x00")
    with pytest.raises(CorruptArchiveError, match="^trailer index is not minimally encoded$"):
        fmt.read_index(io.BytesIO(bad), len(bad))


def test_lm_payload_fields_are_decode_failures():
    start = bytes([4]) + b"gpt2" + bytes(32) + bytes([1])     # model id, fingerprint, engine
    with pytest.raises(DecodeFailed, match="^a language-model frame field is not minimally encoded$"):
        lm.read_fields(start + b"\x80\x00")
    with pytest.raises(DecodeFailed, match="runs past the payload"):
        lm.read_fields(start + b"\x80")
