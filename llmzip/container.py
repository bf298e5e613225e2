"""The llmzip archive container (format version 1): header layout, writing and strict parsing.

Layout (all integers little-endian)::

    magic b"LLMZ" | format_version u8 | header_length u32 | flags u16 | engine u8
    | model_id_len u8 + model_id | fingerprint[32] | vocab_size u32 | bos_id u32 | freq_bits u8
    | chunk_tokens u32 | group_chunks u16 | original_size u64 | token_count u64 | checksum[16]
    | mix_params_len u16 + mix_params | segment_count varint | segment_count x varint length
    | header_crc u32 (zlib.crc32 of every header byte before it)
    then the segments, concatenated, and nothing else.

Invariants enforced by the reader: every field is bounds-checked before anything sized by it is
allocated; the header is exactly ``header_length`` bytes; varints are canonical (minimal); the
payload is exactly ``sum(segment_lengths)`` bytes. Each archive therefore has one encoding, and
any malformed input raises an :class:`~llmzip.errors.LlmzipError` subclass, never anything else.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass
from typing import Iterator, Sequence, Union

from llmzip import varint
from llmzip.errors import CorruptArchiveError, NotAnArchiveError, UnsupportedFormatError

MAGIC = b"LLMZ"
FORMAT_VERSION = 1
FLAG_MIXING = 0x0001
PREFIX_SIZE = 9  # magic + format_version + header_length: enough to learn the header size
MIN_HEADER_LENGTH = 64
MAX_HEADER_LENGTH = 16 * 1024 * 1024
MAX_MIX_PARAMS = 1024
FINGERPRINT_SIZE = 32
CHECKSUM_SIZE = 16

BytesLike = Union[bytes, bytearray, memoryview]
# Fixed-size runs of fields: flags, engine, model_id_len | fingerprint .. mix_params_len.
_PRE_MODEL = struct.Struct("<HBB")
_POST_MODEL = struct.Struct("<32sIIBIHQQ16sH")

# Inclusive bounds of the integer fields of Header (cross-field rules live in Header.validate).
_INT_BOUNDS = {
    "engine": (1, 255), "vocab_size": (1, 2**20), "bos_id": (0, 2**32 - 1), "freq_bits": (16, 28),
    "chunk_tokens": (1, 2**20), "group_chunks": (1, 4096), "original_size": (0, 2**48),
    "token_count": (0, 2**48), "format_version": (FORMAT_VERSION, FORMAT_VERSION),
}


def content_checksum(data: BytesLike) -> bytes:
    """Return the BLAKE2b-128 digest of ``data`` (the ``checksum`` header field)."""
    return hashlib.blake2b(data, digest_size=CHECKSUM_SIZE).digest()


@dataclass(frozen=True)
class Header:
    """Everything a decoder needs besides the payload. Validated on construction.

    Invariants: ``bos_id < vocab_size``; ``token_count <= original_size``; ``token_count == 0``
    iff ``original_size == 0``; ``mix_params`` is empty unless ``mixing``; ``model_id`` is 1..255
    UTF-8 bytes without control characters. ``engine`` is only range-checked (1..255): whether
    the engine is known is the codec's business.
    """

    model_id: str
    fingerprint: bytes
    engine: int
    vocab_size: int
    bos_id: int
    freq_bits: int
    chunk_tokens: int
    group_chunks: int
    original_size: int
    token_count: int
    checksum: bytes
    mixing: bool = False
    mix_params: bytes = b""
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field against the format's bounds.

        Raises:
            TypeError: a field has the wrong type.
            ValueError: a field is out of range; the message names the field.
        """
        for name, (low, high) in _INT_BOUNDS.items():
            value = getattr(self, name)
            if type(value) is not int:
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if not low <= value <= high:
                raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
        if self.bos_id >= self.vocab_size:
            raise ValueError(f"bos_id {self.bos_id} must be < vocab_size {self.vocab_size}")
        if self.token_count > self.original_size:
            raise ValueError(
                f"token_count {self.token_count} exceeds original_size {self.original_size}")
        if (self.token_count == 0) != (self.original_size == 0):
            raise ValueError("token_count must be 0 exactly when original_size is 0")
        _check_bytes("fingerprint", self.fingerprint, FINGERPRINT_SIZE, FINGERPRINT_SIZE)
        _check_bytes("checksum", self.checksum, CHECKSUM_SIZE, CHECKSUM_SIZE)
        _check_bytes("mix_params", self.mix_params, 0, MAX_MIX_PARAMS)
        if type(self.mixing) is not bool:
            raise TypeError(f"mixing must be a bool, got {type(self.mixing).__name__}")
        if self.mix_params and not self.mixing:
            raise ValueError("mix_params must be empty when mixing is off")
        _model_id_bytes(self.model_id)

    @property
    def chunk_count(self) -> int:
        """Number of chunks: ``ceil(token_count / chunk_tokens)``."""
        return -(-self.token_count // self.chunk_tokens)

    @property
    def segment_count(self) -> int:
        """Number of arithmetic-coded segments: ``ceil(chunk_count / group_chunks)``."""
        return -(-self.chunk_count // self.group_chunks)

    def chunk_length(self, i: int) -> int:
        """Tokens in chunk ``i``, BOS excluded: ``[i*chunk_tokens, min(.., token_count))``."""
        if not 0 <= i < self.chunk_count:
            raise IndexError(f"chunk {i} out of range [0, {self.chunk_count})")
        return min(self.chunk_tokens, self.token_count - i * self.chunk_tokens)

    def chunk_lengths(self) -> Iterator[int]:
        """Yield the length of every chunk in order (a generator: chunk_count may be huge)."""
        full, rest = divmod(self.token_count, self.chunk_tokens)
        for _ in range(full):
            yield self.chunk_tokens
        if rest:
            yield rest

    def segment_chunks(self, j: int) -> range:
        """Indices of the chunks coded in lockstep in segment ``j``."""
        if not 0 <= j < self.segment_count:
            raise IndexError(f"segment {j} out of range [0, {self.segment_count})")
        start = j * self.group_chunks
        return range(start, min(start + self.group_chunks, self.chunk_count))


def _check_bytes(name: str, value: object, low: int, high: int) -> None:
    if type(value) is not bytes:
        raise TypeError(f"{name} must be bytes, got {type(value).__name__}")
    if not low <= len(value) <= high:
        raise ValueError(f"{name} must be {low}..{high} bytes, got {len(value)}")


def _model_id_bytes(model_id: object) -> bytes:
    """Encode ``model_id``; ValueError unless it is 1..255 UTF-8 bytes without control chars."""
    if type(model_id) is not str:
        raise TypeError(f"model_id must be a str, got {type(model_id).__name__}")
    try:
        raw = model_id.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("model_id is not encodable as UTF-8") from None
    if not 1 <= len(raw) <= 255:
        raise ValueError(f"model_id must be 1..255 UTF-8 bytes, got {len(raw)}")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in model_id):
        raise ValueError("model_id contains control characters")
    return raw


def write_header(header: Header, segment_lengths: Sequence[int]) -> bytes:
    """Serialize ``header`` with its segment table, including the trailing CRC.

    Raises:
        ValueError: wrong number of segment lengths, a length outside [0, 2**64), or a header
            that would exceed the 16 MiB limit.
    """
    header.validate()
    if len(segment_lengths) != header.segment_count:
        raise ValueError(
            f"expected {header.segment_count} segment lengths, got {len(segment_lengths)}")
    if len(segment_lengths) > MAX_HEADER_LENGTH:  # cheap pre-check: a varint is >= 1 byte
        raise ValueError(f"{len(segment_lengths)} segments cannot fit in a header")
    model_id = _model_id_bytes(header.model_id)
    body = b"".join([
        _PRE_MODEL.pack(FLAG_MIXING if header.mixing else 0, header.engine, len(model_id)),
        model_id,
        _POST_MODEL.pack(header.fingerprint, header.vocab_size, header.bos_id, header.freq_bits,
                         header.chunk_tokens, header.group_chunks, header.original_size,
                         header.token_count, header.checksum, len(header.mix_params)),
        header.mix_params, varint.encode(len(segment_lengths)), *map(varint.encode, segment_lengths),
    ])
    length = PREFIX_SIZE + len(body) + 4
    if length > MAX_HEADER_LENGTH:
        raise ValueError(f"header would be {length} bytes, over the {MAX_HEADER_LENGTH} limit")
    head = MAGIC + struct.pack("<BI", header.format_version, length) + body
    return head + struct.pack("<I", zlib.crc32(head))


def write_archive(header: Header, segments: Sequence[BytesLike]) -> bytes:
    """Return the complete archive: header, then ``segments`` concatenated."""
    parts = [bytes(s) for s in segments]
    return write_header(header, [len(p) for p in parts]) + b"".join(parts)


class _Reader:
    """Cursor over ``buf[pos:end]`` whose reads never go past ``end``.

    Every read names its field, so running out of bytes raises a CorruptArchiveError saying
    which field did not fit; nothing is allocated before its size has been checked.
    """

    def __init__(self, buf: memoryview, pos: int, end: int) -> None:
        self._buf, self.pos, self._end = buf, pos, end

    @property
    def remaining(self) -> int:
        return self._end - self.pos

    def take(self, size: int, field: str) -> bytes:
        if size > self.remaining:
            raise CorruptArchiveError(f"header field(s) {field} run past the end of the header")
        self.pos += size
        return bytes(self._buf[self.pos - size:self.pos])

    def varint(self, field: str) -> int:
        try:
            return varint.read(lambda: self.take(1, field)[0])
        except varint.VarintError as exc:
            raise CorruptArchiveError(f"header field {field} {exc}") from None


def _as_view(blob: BytesLike) -> memoryview:
    view = memoryview(blob)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def header_length_from_prefix(prefix: BytesLike) -> int:
    """Check magic, version and header_length from the first PREFIX_SIZE+ bytes of an archive.

    Lets a streaming reader learn how many bytes to read before calling :func:`read_header`.
    Raises NotAnArchiveError, UnsupportedFormatError or CorruptArchiveError.
    """
    view = _as_view(prefix)
    if len(view) < len(MAGIC) or bytes(view[:4]) != MAGIC:
        raise NotAnArchiveError("not an llmzip archive")
    if len(view) < PREFIX_SIZE:
        raise CorruptArchiveError("truncated archive")
    version = view[4]
    if version > FORMAT_VERSION:
        raise UnsupportedFormatError(f"unsupported format version {version}")
    if version < 1:
        raise CorruptArchiveError(f"invalid format version {version}")
    length = int.from_bytes(view[5:9], "little")
    if not MIN_HEADER_LENGTH <= length <= MAX_HEADER_LENGTH:
        raise CorruptArchiveError(f"header field header_length out of range: {length}")
    return length


def read_header(blob: BytesLike) -> tuple[Header, list[int], int]:
    """Parse and validate the header at the start of ``blob`` (the payload may be absent).

    Returns:
        ``(header, segment_lengths, payload_offset)``; ``payload_offset == header_length``.
    """
    view = _as_view(blob)
    length = header_length_from_prefix(view)
    if length > len(view):
        raise CorruptArchiveError("truncated archive")
    if zlib.crc32(view[:length - 4]) != int.from_bytes(view[length - 4:length], "little"):
        raise CorruptArchiveError("header checksum mismatch")
    reader = _Reader(view, PREFIX_SIZE, length - 4)
    header = _read_fields(reader)
    count = reader.varint("segment_count")
    if count != header.segment_count:
        raise CorruptArchiveError(
            f"header field segment_count is {count}, expected {header.segment_count}")
    if count > reader.remaining:  # every varint takes at least one byte
        raise CorruptArchiveError("header field segment_count exceeds the header size")
    lengths = [reader.varint("segment_length") for _ in range(count)]
    if reader.remaining:
        raise CorruptArchiveError(f"{reader.remaining} unexpected bytes at the end of the header")
    return header, lengths, length


def _read_fields(r: _Reader) -> Header:
    """Read the fixed fields after the prefix; range errors become CorruptArchiveError."""
    flags, engine, id_len = _PRE_MODEL.unpack(r.take(_PRE_MODEL.size, "flags..model_id_len"))
    if flags & ~FLAG_MIXING:
        raise UnsupportedFormatError(f"unsupported flags 0x{flags:04x}")
    try:
        model_id = r.take(id_len, "model_id").decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptArchiveError("header field model_id is not valid UTF-8") from None
    (fingerprint, vocab_size, bos_id, freq_bits, chunk_tokens, group_chunks, original_size,
     token_count, checksum, mix_len) = _POST_MODEL.unpack(
        r.take(_POST_MODEL.size, "fingerprint..mix_params_len"))
    if mix_len > MAX_MIX_PARAMS:
        raise CorruptArchiveError(f"header field mix_params_len out of range: {mix_len}")
    mix_params = r.take(mix_len, "mix_params")
    try:
        return Header(model_id=model_id, fingerprint=fingerprint, engine=engine,
                      vocab_size=vocab_size, bos_id=bos_id, freq_bits=freq_bits,
                      chunk_tokens=chunk_tokens, group_chunks=group_chunks,
                      original_size=original_size, token_count=token_count, checksum=checksum,
                      mixing=bool(flags & FLAG_MIXING), mix_params=mix_params)
    except ValueError as exc:
        raise CorruptArchiveError(f"invalid header field: {exc}") from None


def read_archive(blob: BytesLike) -> tuple[Header, list[memoryview]]:
    """Parse a complete archive; returns the header and zero-copy views of each segment.

    The payload must be exactly ``sum(segment_lengths)`` bytes: fewer is "truncated archive",
    more is "trailing data" (both CorruptArchiveError).
    """
    view = _as_view(blob)
    header, lengths, offset = read_header(view)
    payload = len(view) - offset
    total = sum(lengths)
    if total > payload:
        raise CorruptArchiveError("truncated archive")
    if total < payload:
        raise CorruptArchiveError("trailing data")
    segments = []
    for n in lengths:
        segments.append(view[offset:offset + n])
        offset += n
    return header, segments
