"""Unsigned LEB128 varints, the one encoding every llmzip format uses for its sizes.

Seven bits a byte, the lowest first, the high bit set on every byte but the last; at most
:data:`MAX_BYTES` bytes, values in ``[0, 2**64)``. Only the minimal encoding is valid (no
trailing zero group, as in ``0x80 0x00`` for 0), so every value has one encoding and every
archive one byte string.

Reading is strict and reports a malformed varint as :class:`VarintError`; each format turns it
into its own typed error naming the field being read (a container header field, a frame record,
an LM payload), since only the caller knows what the bytes were meant to be.
"""

from __future__ import annotations

from typing import Callable, Union

from .errors import CorruptArchiveError

MAX_BYTES = 10
LIMIT = 1 << 64         # values are below this
BytesLike = Union[bytes, bytearray, memoryview]


class VarintError(CorruptArchiveError):
    """A malformed varint. The message is a predicate ("is not minimally encoded") that the
    caller prefixes with the field it was reading."""


def encode(value: int) -> bytes:
    """The minimal encoding of ``value`` (ValueError unless it is an int in ``[0, 2**64)``)."""
    if type(value) is not int or not 0 <= value < LIMIT:
        raise ValueError(f"varint value out of range: {value!r}")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read(next_byte: Callable[[], int]) -> int:
    """Read one varint, a byte per call of ``next_byte`` (which raises its caller's own error
    when the input ends: a stream reader says "truncated archive", a buffer reader names the field).

    Raises:
        VarintError: not minimally encoded, longer than 10 bytes, or 2**64 or more.
    """
    value = 0
    for i in range(MAX_BYTES):
        byte = next_byte()
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise VarintError("is not minimally encoded")
            if value >= LIMIT:
                raise VarintError("exceeds 64 bits")
            return value
    raise VarintError(f"is longer than {MAX_BYTES} bytes")


def decode(buf: BytesLike, pos: int = 0, end: int | None = None) -> tuple[int, int]:
    """The varint at ``buf[pos:]``, read no further than ``end`` (default: the end of ``buf``),
    and the offset just after it.

    Raises:
        VarintError: as :func:`read`, or "runs past the end" when ``end`` comes first.
    """
    stop = len(buf) if end is None else min(end, len(buf))
    cursor = pos

    def next_byte() -> int:
        nonlocal cursor
        if cursor >= stop:
            raise VarintError("runs past the end")
        cursor += 1
        return buf[cursor - 1]

    return read(next_byte), cursor
