"""Tests for llmzip.container: round trips, a golden encoding, and hostile/corrupt input."""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmzip import container
from llmzip.container import (
    FORMAT_VERSION,
    MAGIC,
    Header,
    content_checksum,
    header_length_from_prefix,
    read_archive,
    read_header,
    write_archive,
    write_header,
)
from llmzip.errors import (
    CorruptArchiveError,
    LlmzipError,
    NotAnArchiveError,
    UnsupportedFormatError,
)


def make_header(**overrides) -> Header:
    fields = dict(
        model_id="gpt2", fingerprint=bytes(range(32)), engine=1, vocab_size=50257,
        bos_id=50256, freq_bits=20, chunk_tokens=4, group_chunks=2, original_size=30,
        token_count=10, checksum=content_checksum(b"golden"),
    )
    fields.update(overrides)
    return Header(**fields)


def segments_for(header: Header, size: int = 3) -> list[bytes]:
    return [bytes([j % 256]) * (size + j) for j in range(header.segment_count)]


def realistic_archive() -> bytes:
    """10k tokens, 40 chunks of 256, 5 segments of 8 chunks, multi-byte segment lengths."""
    data = b"x" * 40_000
    header = make_header(model_id="openai-community/gpt2", chunk_tokens=256, group_chunks=8,
                         original_size=len(data), token_count=10_000,
                         checksum=content_checksum(data), mixing=True, mix_params=bytes(range(40)))
    return write_archive(header, segments_for(header, 300))


# ---------------------------------------------------------------- independent raw encoder


def leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def u(n: int, size: int) -> bytes:
    return n.to_bytes(size, "little")


def raw_archive(*, magic=MAGIC, version=1, header_length=None, flags=0, engine=1,
                model_id=b"gpt2", model_id_len=None, fingerprint=bytes(32), vocab_size=50257,
                bos_id=50256, freq_bits=20, chunk_tokens=4, group_chunks=2, original_size=30,
                token_count=10, checksum=bytes(16), mix_params=b"", mix_params_len=None,
                segment_count=None, segment_lengths=(3, 2), segment_table=None,
                extra_header=b"", payload=None) -> bytes:
    """Encode arbitrary (possibly invalid) field values with a CORRECT header CRC.

    Written independently of container.py, so bounds checks, not the CRC, must reject them.
    """
    if segment_table is None:
        count = len(segment_lengths) if segment_count is None else segment_count
        segment_table = leb128(count) + b"".join(leb128(n) for n in segment_lengths)
    body = b"".join([
        u(flags, 2), u(engine, 1), u(len(model_id) if model_id_len is None else model_id_len, 1),
        model_id, fingerprint, u(vocab_size, 4), u(bos_id, 4), u(freq_bits, 1),
        u(chunk_tokens, 4), u(group_chunks, 2), u(original_size, 8), u(token_count, 8),
        checksum, u(len(mix_params) if mix_params_len is None else mix_params_len, 2),
        mix_params, segment_table, extra_header,
    ])
    length = 9 + len(body) + 4 if header_length is None else header_length
    head = magic + bytes([version]) + u(length, 4) + body
    if payload is None:
        payload = bytes(sum(segment_lengths))
    return head + u(zlib.crc32(head), 4) + payload


def test_raw_encoder_agrees_with_writer():
    header = make_header(checksum=bytes(16), fingerprint=bytes(32))
    assert raw_archive() == write_archive(header, [bytes(3), bytes(2)])
    assert read_archive(raw_archive())[0] == header


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("header", [
    make_header(original_size=0, token_count=0),
    make_header(mixing=True, mix_params=b"\x00\xffparams" * 50),
    make_header(mixing=True),
    make_header(model_id="é" * 127, engine=255, vocab_size=2**20, bos_id=2**20 - 1,
                freq_bits=28, chunk_tokens=2**20, group_chunks=4096, original_size=2**48,
                token_count=2**43, mixing=True, mix_params=b"m" * 1024),
    make_header(freq_bits=16, chunk_tokens=1, group_chunks=1, original_size=5, token_count=5,
                vocab_size=1, bos_id=0, model_id="x"),
])
def test_round_trip(header):
    segments = segments_for(header)
    blob = write_archive(header, segments)
    got, views = read_archive(blob)
    assert got == header
    assert [bytes(v) for v in views] == segments
    parsed, lengths, offset = read_header(blob[:len(blob) - sum(map(len, segments))])
    assert parsed == header and lengths == [len(s) for s in segments]
    assert offset == len(blob) - sum(lengths) == header_length_from_prefix(blob[:9])


def test_empty_file_has_no_segments():
    header = make_header(original_size=0, token_count=0)
    assert header.chunk_count == header.segment_count == 0
    assert list(header.chunk_lengths()) == []
    assert read_archive(write_archive(header, []))[1] == []


def test_chunk_and_segment_geometry():
    header = make_header(token_count=10, chunk_tokens=4, group_chunks=2)
    assert header.chunk_count == 3 and header.segment_count == 2
    assert list(header.chunk_lengths()) == [4, 4, 2]
    assert [header.chunk_length(i) for i in range(3)] == [4, 4, 2]
    assert header.segment_chunks(0) == range(0, 2) and header.segment_chunks(1) == range(2, 3)
    with pytest.raises(IndexError):
        header.segment_chunks(2)
    with pytest.raises(IndexError):
        header.chunk_length(3)


def test_read_accepts_memoryview_and_bytearray():
    blob = realistic_archive()
    assert read_archive(memoryview(blob))[0] == read_archive(bytearray(blob))[0]


# ---------------------------------------------------------------- golden bytes

# The exact encoding of a fixed header + segments. If this test fails, the on-disk format
# changed: old archives would no longer decode. Do NOT just update the hex; bump
# FORMAT_VERSION (and keep a reader for version 1) and add a new golden vector.
GOLDEN_HEX = (
    "4c4c4d5a016c0000000100010467707432000102030405060708090a0b0c0d0e0f"
    "101112131415161718191a1b1c1d1e1f51c4000050c40000140400000002001e00"
    "0000000000000a00000000000000e400c30bc0c57b7de30c6b3cb756c382030001"
    "0203020302b7c2d5416162636465"
)


def test_golden_encoding():
    header = make_header(mixing=True, mix_params=b"\x01\x02\x03")
    blob = write_archive(header, [b"abc", b"de"])
    assert FORMAT_VERSION == 1
    assert blob.hex() == GOLDEN_HEX
    got, segments = read_archive(bytes.fromhex(GOLDEN_HEX))
    assert got == header and [bytes(s) for s in segments] == [b"abc", b"de"]


# ---------------------------------------------------------------- corruption and truncation


def test_every_single_byte_header_corruption_is_rejected():
    blob = realistic_archive()
    header_length = read_header(blob)[2]
    for offset in range(header_length):
        for mask in (0x01, 0xFF):
            bad = bytearray(blob)
            bad[offset] ^= mask
            expected = (NotAnArchiveError if offset < 4 else
                        (UnsupportedFormatError, CorruptArchiveError) if offset == 4 else
                        CorruptArchiveError)
            with pytest.raises(expected):
                read_archive(bytes(bad))


def test_truncation_at_every_offset_is_rejected():
    blob = realistic_archive()
    for end in range(len(blob)):
        with pytest.raises(NotAnArchiveError if end < 4 else CorruptArchiveError):
            read_archive(blob[:end])


def test_trailing_data_is_rejected():
    blob = realistic_archive()
    for junk in (b"\x00", b"LLMZ", blob):
        with pytest.raises(CorruptArchiveError, match="trailing data"):
            read_archive(blob + junk)


def test_messages():
    blob = realistic_archive()
    with pytest.raises(NotAnArchiveError, match="not an llmzip archive"):
        read_archive(b"PK\x03\x04" + blob[4:])
    with pytest.raises(UnsupportedFormatError, match="unsupported format version 2"):
        read_archive(blob[:4] + b"\x02" + blob[5:])
    with pytest.raises(CorruptArchiveError, match="truncated archive"):
        read_archive(blob[:50])
    with pytest.raises(CorruptArchiveError, match="header checksum mismatch"):
        read_archive(blob[:20] + bytes([blob[20] ^ 4]) + blob[21:])


# ---------------------------------------------------------------- hostile headers (valid CRC)

HUGE = 2**48  # derived segment_count when token_count = 2**48, chunk_tokens = group_chunks = 1


@pytest.mark.parametrize("fields, match", [
    (dict(segment_count=2**60), "segment_count"),
    (dict(original_size=HUGE, token_count=HUGE, chunk_tokens=1, group_chunks=1,
          segment_count=HUGE, segment_lengths=()), "segment_count"),
    (dict(segment_count=3, segment_lengths=(1, 1, 1)), "segment_count"),
    (dict(segment_lengths=(2**63, 2**63), payload=bytes(5)), "truncated archive"),
    (dict(segment_lengths=(3, 2), payload=bytes(4)), "truncated archive"),
    (dict(header_length=2**32 - 1), "header_length"),
    (dict(header_length=16 * 2**20 + 1), "header_length"),
    (dict(header_length=63), "header_length"),
    (dict(header_length=5000), "truncated archive"),
    (dict(extra_header=b"\x00"), "unexpected bytes"),
    (dict(token_count=31), "token_count"),
    (dict(token_count=0, segment_lengths=()), "token_count"),
    (dict(original_size=2**48 + 1, token_count=1, segment_lengths=(1,)), "original_size"),
    (dict(vocab_size=0, bos_id=0), "vocab_size"),
    (dict(vocab_size=2**20 + 1), "vocab_size"),
    (dict(bos_id=50257), "bos_id"),
    (dict(freq_bits=15), "freq_bits"),
    (dict(freq_bits=29), "freq_bits"),
    (dict(chunk_tokens=0), "chunk_tokens"),
    (dict(chunk_tokens=2**20 + 1, segment_lengths=(1,)), "chunk_tokens"),
    (dict(group_chunks=0), "group_chunks"),
    (dict(group_chunks=4097), "group_chunks"),
    (dict(engine=0), "engine"),
    (dict(model_id=b""), "model_id"),
    (dict(model_id=b"\xff\xfe"), "model_id"),
    (dict(model_id=b"gpt\n2"), "model_id"),
    (dict(model_id=b"gpt\xc2\x852"), "model_id"),  # U+0085, a C1 control
    (dict(model_id_len=200), "model_id"),
    (dict(mix_params=b"abc"), "mix_params"),
    (dict(flags=1, mix_params=b"x" * 1025), "mix_params_len"),
    (dict(flags=1, mix_params_len=1000), "run past"),
    (dict(segment_table=b"\x82\x00\x03\x02"), "minimally encoded"),
    (dict(segment_table=b"\x02\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01"), "longer than"),
    (dict(segment_table=b"\x02\x80\x80\x80\x80\x80\x80\x80\x80\x80\x02"), "64 bits"),
    (dict(segment_table=b"\x02\x03"), "segment_count"),
    (dict(segment_table=b"\x02\x03\x80"), "run past"),
    (dict(version=0), "format version"),
])
def test_hostile_header_is_rejected_quickly(fields, match):
    blob = raw_archive(**fields)
    start = time.perf_counter()
    with pytest.raises(CorruptArchiveError, match=match) as info:
        read_archive(blob)
    assert type(info.value) is CorruptArchiveError
    assert time.perf_counter() - start < 0.1


@pytest.mark.parametrize("fields", [dict(flags=2), dict(flags=0x8001), dict(version=255)])
def test_unknown_flags_or_version_are_unsupported(fields):
    with pytest.raises(UnsupportedFormatError):
        read_archive(raw_archive(**fields))


def test_unknown_engine_is_left_to_the_codec():
    assert read_archive(raw_archive(engine=200))[0].engine == 200


# ---------------------------------------------------------------- construction-time validation


@pytest.mark.parametrize("overrides", [
    dict(vocab_size=0), dict(bos_id=50257), dict(token_count=31), dict(freq_bits=29),
    dict(original_size=0), dict(fingerprint=bytes(31)), dict(checksum=bytes(17)),
    dict(mix_params=b"x"), dict(mixing=True, mix_params=bytes(1025)), dict(model_id=""),
    dict(model_id="a" * 256), dict(model_id="tab\tbed"), dict(model_id="\ud800"),
    dict(engine=256), dict(format_version=2),
])
def test_header_rejects_bad_values(overrides):
    with pytest.raises(ValueError):
        make_header(**overrides)


def test_header_rejects_bad_types():
    with pytest.raises(TypeError):
        make_header(vocab_size=True)
    with pytest.raises(TypeError):
        make_header(fingerprint=bytearray(32))


def test_write_header_checks_segment_table():
    header = make_header()
    with pytest.raises(ValueError):
        write_header(header, [1])
    with pytest.raises(ValueError):
        write_header(header, [1, -1])
    with pytest.raises(ValueError):
        write_header(header, [1, 2**64])


class _ClaimsToBeLong(Sequence):
    """A segment table too long for any header, without allocating it."""

    def __len__(self) -> int:
        return 2**25

    def __getitem__(self, i):
        raise AssertionError("write_header must reject the count before reading lengths")


def test_write_header_rejects_oversized_headers(monkeypatch):
    many = make_header(original_size=2**25, token_count=2**25, chunk_tokens=1, group_chunks=1)
    with pytest.raises(ValueError, match="cannot fit"):
        write_header(many, _ClaimsToBeLong())
    monkeypatch.setattr(container, "MAX_HEADER_LENGTH", 200)
    header = make_header(original_size=2**20, token_count=2**20, chunk_tokens=2**16, group_chunks=1)
    assert header.segment_count == 16
    write_header(header, [1] * 16)  # 9 + 95 + 1 + 16 + 4 = 125 bytes: fits
    with pytest.raises(ValueError, match="limit"):
        write_header(header, [2**60] * 16)  # 16 nine-byte varints: 253 bytes


# ---------------------------------------------------------------- property-based


@st.composite
def headers(draw) -> Header:
    segments = draw(st.integers(0, 6))
    group = draw(st.integers(1, 4096))
    chunk = draw(st.integers(1, 2**20))
    token_count = 0 if segments == 0 else draw(
        st.integers((segments - 1) * group * chunk + 1, segments * group * chunk))
    original = 0 if token_count == 0 else draw(st.integers(token_count, 2**48))
    vocab = draw(st.integers(1, 2**20))
    mixing = draw(st.booleans())
    return Header(
        model_id=draw(st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1,
                              max_size=60)),
        fingerprint=draw(st.binary(min_size=32, max_size=32)), engine=draw(st.integers(1, 255)),
        vocab_size=vocab, bos_id=draw(st.integers(0, vocab - 1)),
        freq_bits=draw(st.integers(16, 28)), chunk_tokens=chunk, group_chunks=group,
        original_size=original, token_count=token_count,
        checksum=draw(st.binary(min_size=16, max_size=16)), mixing=mixing,
        mix_params=draw(st.binary(max_size=1024)) if mixing else b"",
    )


@settings(max_examples=200, deadline=None)
@given(headers(), st.data())
def test_random_headers_round_trip(header, data):
    assert header.segment_count == len(list(range(header.segment_count)))
    segments = [data.draw(st.binary(max_size=300)) for _ in range(header.segment_count)]
    got, views = read_archive(write_archive(header, segments))
    assert got == header and [bytes(v) for v in views] == segments


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_raise_only_llmzip_errors(blob):
    for candidate in (blob, MAGIC + blob, MAGIC + b"\x01" + blob):
        try:
            read_archive(candidate)
        except LlmzipError:
            pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(5, 103), st.integers(1, 255)), min_size=1, max_size=4))
def test_mutations_with_fixed_crc_raise_only_llmzip_errors(edits):
    """Mutate header fields and recompute the CRC so the field parser itself is fuzzed."""
    blob = bytearray(raw_archive(flags=1, mix_params=b"abc"))
    for offset, mask in edits:
        blob[offset] ^= mask
    length = int.from_bytes(blob[5:9], "little")
    if 13 <= length <= len(blob):
        blob[length - 4:length] = zlib.crc32(blob[:length - 4]).to_bytes(4, "little")
    try:
        header, _ = read_archive(bytes(blob))
    except LlmzipError:
        return
    assert dataclasses.replace(header) == header  # a header that parses is a valid Header
