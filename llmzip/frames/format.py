"""Archive format version 2: a stream of independent frames, then a trailer with an index.

Layout (integers little-endian; varints are unsigned LEB128, minimal: :mod:`llmzip.varint`)::

    stream header   b"LLMZ" | format_version u8 = 2
    frame record    method u8 (1..255) | raw_size varint | payload_size varint
                    | checksum[16] (BLAKE2b-128 of the frame's original bytes)
                    | payload_crc u32 (zlib.crc32 of the payload)
                    | record_crc u32 (zlib.crc32 of the record's bytes before it) | payload
    ...             (one record per frame, in input order)
    trailer         0x00 | frame_count varint | frame_count x (payload_size varint, raw_size varint)
                    | total_size varint | stream_digest[16] | trailer_crc u32 | trailer_length u32

``stream_digest`` is the BLAKE2b-128 of the frames' checksums concatenated in order, so the
whole is checked (no frame lost, added or moved) without hashing the data twice, and frames
coded on different machines can be joined without their data. ``trailer_length`` counts the
trailer from its 0x00 through ``trailer_crc``: a reader that can seek finds the index from the
end of the stream and every frame's offset from it, without decoding the frames before.

A method id names how a payload decodes (:mod:`llmzip.frames.methods`); the record's CRC comes
first, so a damaged id is "corrupt", and only an intact unknown id asks to upgrade llmzip.
The payload's CRC is checked before any decoder sees it: a damaged payload is reported as
such, naming its frame, without running a decoder (or a model) on garbage.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Sequence

from .. import varint
from ..container import MAGIC
from ..errors import CorruptArchiveError, FrameError, NotAnArchiveError, UnsupportedFormatError

STREAM_VERSION = 2
STREAM_HEADER = MAGIC + bytes([STREAM_VERSION])
END_MARKER = 0
CHECKSUM_SIZE = 16
MAX_FRAME_RAW = 1 << 30            # a frame never holds more than 1 GiB of input...
MAX_PAYLOAD_SLACK = 1 << 16        # ...nor a payload over 2x its input + 64 KiB (forged sizes are refused)
_U32 = struct.Struct("<I")


def checksum(data: bytes | memoryview) -> bytes:
    """The per-frame checksum: BLAKE2b-128 of the frame's original bytes."""
    return hashlib.blake2b(data, digest_size=CHECKSUM_SIZE).digest()


def stream_digest(checksums: Iterable[bytes]) -> bytes:
    """The trailer's digest of the whole: BLAKE2b-128 over the frame checksums in order."""
    h = hashlib.blake2b(digest_size=CHECKSUM_SIZE)
    for c in checksums:
        h.update(c)
    return h.digest()


@dataclass(frozen=True)
class Frame:
    """One coded frame: the method that decodes ``payload`` back to ``raw_size`` bytes whose
    BLAKE2b-128 is ``checksum``. Self-contained: it decodes with nothing but this record
    (and, for the language-model method, the model its payload names)."""

    method: int
    raw_size: int
    checksum: bytes
    payload: bytes

    def __post_init__(self) -> None:
        if not 1 <= self.method <= 255:
            raise ValueError(f"method id must be in [1, 255], got {self.method}")
        if not 0 < self.raw_size <= MAX_FRAME_RAW:
            raise ValueError(f"raw_size must be in [1, {MAX_FRAME_RAW}], got {self.raw_size}")
        if len(self.payload) > payload_limit(self.raw_size):
            raise ValueError(f"a payload of {len(self.payload)} bytes is too large for {self.raw_size} bytes")
        if len(self.checksum) != CHECKSUM_SIZE:
            raise ValueError("checksum must be 16 bytes")

    def record(self) -> bytes:
        """The frame's bytes in a stream: record header, CRC, payload."""
        head = (bytes([self.method]) + varint.encode(self.raw_size) + varint.encode(len(self.payload))
                + self.checksum + _U32.pack(zlib.crc32(self.payload)))
        return head + _U32.pack(zlib.crc32(head)) + self.payload

    @property
    def record_size(self) -> int:
        return record_header_size(self.raw_size, len(self.payload)) + len(self.payload)


def payload_limit(raw_size: int) -> int:
    return 2 * raw_size + MAX_PAYLOAD_SLACK


def record_header_size(raw_size: int, payload_size: int) -> int:
    return 1 + len(varint.encode(raw_size)) + len(varint.encode(payload_size)) + CHECKSUM_SIZE + 8


@dataclass(frozen=True)
class FrameInfo:
    """Where a frame is and what it holds, as the index (or a sequential read) tells it."""

    index: int
    offset: int            # of the frame's record in the archive
    input_offset: int      # of the frame's first byte in the original
    method: int
    raw_size: int
    payload_size: int


def trailer(frames: Sequence[tuple[int, int, bytes]]) -> bytes:
    """The trailer for frames given as ``(payload_size, raw_size, checksum)`` in order."""
    body = bytearray([END_MARKER])
    body += varint.encode(len(frames))
    for payload_size, raw_size, _ in frames:
        body += varint.encode(payload_size) + varint.encode(raw_size)
    body += varint.encode(sum(raw for _, raw, _ in frames)) + stream_digest(c for _, _, c in frames)
    body += _U32.pack(zlib.crc32(body))
    return bytes(body) + _U32.pack(len(body))


def join(frames: Iterable[Frame]) -> bytes:
    """A complete format-2 archive of ``frames`` (in memory; see :class:`StreamWriter`)."""
    out = bytearray(STREAM_HEADER)
    index = []
    for frame in frames:
        out += frame.record()
        index.append((len(frame.payload), frame.raw_size, frame.checksum))
    return bytes(out + trailer(index))


def check_stream_header(prefix: bytes) -> None:
    """Refuse anything but a format-2 stream header (``prefix``: its first 5 bytes)."""
    if prefix[:4] != MAGIC:
        raise NotAnArchiveError("not an llmzip archive")
    if len(prefix) < len(STREAM_HEADER):
        raise CorruptArchiveError("truncated archive")
    if prefix[4] == 0:
        raise CorruptArchiveError("invalid format version 0")
    if prefix[4] != STREAM_VERSION:
        raise UnsupportedFormatError(f"unsupported format version {prefix[4]}")


class RecordReader:
    """Reads frame records and the trailer from a byte stream (a file or a pipe), in order.

    Every size is checked before anything proportional to it is read; running out of bytes is
    "truncated archive" naming the frame; a damaged record is "corrupt" naming the frame.
    """

    def __init__(self, stream: BinaryIO, offset: int = len(STREAM_HEADER)) -> None:
        self._stream, self.offset, self.index, self.input_offset = stream, offset, 0, 0
        self._seen: list[tuple[int, int, bytes]] = []
        self._in_trailer = False

    def _read(self, size: int) -> bytes:
        data = self._stream.read(size)
        if len(data) != size:
            raise self._error("truncated archive")
        return data

    def _error(self, reason: str) -> CorruptArchiveError:
        if self._in_trailer:
            return CorruptArchiveError(f"trailer at offset {self.offset}: {reason}")
        return FrameError(reason, self.index, self.offset)

    def _varint(self, head: bytearray) -> int:
        """Read a size, appending its bytes to ``head`` (the record's bytes, for its CRC)."""
        def next_byte() -> int:
            head.append(self._read(1)[0])
            return head[-1]

        try:
            return varint.read(next_byte)
        except varint.VarintError as exc:
            raise self._error(f"a size {exc}") from None

    def next_frame(self) -> tuple[FrameInfo, Frame] | None:
        """The next frame, or None once the trailer has been read and checked."""
        head = bytearray(self._read(1))
        if head[0] == END_MARKER:
            self._read_trailer(head)
            return None
        raw_size, payload_size = self._varint(head), self._varint(head)
        head += self._read(CHECKSUM_SIZE + 4)
        if zlib.crc32(head) != _U32.unpack(self._read(4))[0]:
            raise self._error("frame header checksum mismatch")
        if not 0 < raw_size <= MAX_FRAME_RAW or payload_size > payload_limit(raw_size):
            raise self._error(f"frame sizes out of range ({payload_size} bytes for {raw_size})")
        digest = bytes(head[-CHECKSUM_SIZE - 4:-4])
        payload = self._read(payload_size)
        if zlib.crc32(payload) != _U32.unpack(head[-4:])[0]:
            raise self._error("payload checksum mismatch")
        frame = Frame(head[0], raw_size, digest, payload)
        info = FrameInfo(self.index, self.offset, self.input_offset, head[0], raw_size, payload_size)
        self._seen.append((payload_size, raw_size, digest))
        self.index, self.offset = self.index + 1, self.offset + len(head) + 4 + payload_size
        self.input_offset += raw_size
        return info, frame

    def _read_trailer(self, head: bytearray) -> None:
        self._in_trailer = True
        expected = trailer(self._seen)
        rest = self._read(len(expected) - 1)
        if bytes(head) + rest != expected:
            raise CorruptArchiveError(f"trailer at offset {self.offset}: does not match the frames "
                                      "(damaged trailer, or frames lost or reordered)")
        if self._stream.read(1):
            raise CorruptArchiveError("trailing data after the trailer")


def read_index(stream: BinaryIO, size: int) -> list[FrameInfo]:
    """Every frame's place, from the trailer of a seekable archive of ``size`` bytes (read from
    its end; nothing is decoded). Each frame's method byte is read from its record."""
    if size < len(STREAM_HEADER) + 9:
        raise CorruptArchiveError("truncated archive")
    stream.seek(size - 4)
    length = _U32.unpack(stream.read(4))[0]
    start = size - 4 - length
    if not 6 <= length or start < len(STREAM_HEADER):
        raise CorruptArchiveError("trailer length out of range")
    stream.seek(start)
    body = stream.read(length)
    if body[0] != END_MARKER or zlib.crc32(body[:-4]) != _U32.unpack(body[-4:])[0]:
        raise CorruptArchiveError(f"trailer at offset {start}: checksum mismatch")
    sizes, pos = _parse_index(body)
    infos, offset, input_offset = [], len(STREAM_HEADER), 0
    for i, (payload_size, raw_size) in enumerate(sizes):
        stream.seek(offset)
        infos.append(FrameInfo(i, offset, input_offset, stream.read(1)[0], raw_size, payload_size))
        offset += record_header_size(raw_size, payload_size) + payload_size
        input_offset += raw_size
    if offset != start:
        raise CorruptArchiveError(f"the index does not add up to the trailer's offset {start}")
    return infos


def _parse_index(body: bytes) -> tuple[list[tuple[int, int]], int]:
    """(payload_size, raw_size) per frame from a trailer whose CRC was checked."""
    pos = 1

    def take() -> int:
        nonlocal pos
        try:
            value, pos = varint.decode(body, pos, len(body) - 4 - CHECKSUM_SIZE)
        except varint.VarintError as exc:
            raise CorruptArchiveError(f"trailer index {exc}") from None
        return value

    count = take()
    if count > len(body):
        raise CorruptArchiveError("trailer frame count out of range")
    sizes = [(take(), take()) for _ in range(count)]
    if take() != sum(raw for _, raw in sizes):
        raise CorruptArchiveError("trailer total size does not match its index")
    return sizes, pos
