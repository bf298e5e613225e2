"""The fallback methods a frame can be coded with, and the registry of method ids.

Each method turns a frame's bytes into a payload and back. The payload carries what the method
needs to decode (e.g. the PPMd order and memory) so the id alone names the decoder. Which
fallbacks ship was measured (``benchmarks/fallbacks.py``, ``benchmarks/results/fallbacks.md``):
PPMd wins on text and some sampled data, LZMA on executables and object files, bzip2 on a raw
image and audio; zstandard never won a file, and brotli -11 won five by at most 1.1 % at about
2.5x the time of the three shipped coders together, so neither ships.
"""

from __future__ import annotations

import bz2
import lzma
from dataclasses import dataclass
from typing import Callable

from ..errors import UnsupportedFormatError

STORED, LZMA, BZ2, PPMD, LM = 1, 2, 3, 4, 8
NAMES = {STORED: "stored", LZMA: "lzma", BZ2: "bz2", PPMD: "ppmd", LM: "lm"}
IDS = {name: mid for mid, name in NAMES.items()}

LZMA_PRESET = 6                    # measured: as small as 9e on every test file, 3x faster
LZMA_DICT_LOG = (12, 23)           # dictionary 4 KiB .. 8 MiB, the smallest power of two >= the frame
# (order, memory log2 over the frame's, at most): order 6 wins on prose and sampled data, 10 on
# markup. Small frames need little memory; from 512 KiB on, both take at least 32 MiB, which
# glibc serves with mmap and returns on free: measured, 16 MiB blocks (served from the heap)
# grew a process by ~0.7 MB per frame, frame after frame, and 32/64 MiB ones did not.
PPMD_ORDERS = ((6, 5, 25), (10, 6, 26))
PPMD_MAX_MEM_LOG = 28


class DecodeFailed(Exception):
    """A payload that does not decode (the caller names the frame)."""


def name(method: int) -> str:
    return NAMES.get(method, f"method {method}")


def check_known(method: int) -> None:
    if method not in NAMES:
        raise UnsupportedFormatError(f"unknown frame method {method}: this archive needs a newer llmzip, "
                                     "upgrade llmzip")


def _lzma_filters(dict_log: int) -> list[dict[str, int]]:
    return [{"id": lzma.FILTER_LZMA2, "preset": LZMA_PRESET, "dict_size": 1 << dict_log}]


def lzma_encode(data: bytes) -> bytes:
    dict_log = min(max(LZMA_DICT_LOG[0], (len(data) - 1).bit_length()), LZMA_DICT_LOG[1])
    return bytes([dict_log]) + lzma.compress(data, format=lzma.FORMAT_RAW, filters=_lzma_filters(dict_log))


def lzma_decode(payload: bytes, size: int) -> bytes:
    if not payload or not LZMA_DICT_LOG[0] <= payload[0] <= LZMA_DICT_LOG[1]:
        raise DecodeFailed("bad LZMA dictionary size")
    dec = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_lzma_filters(payload[0]))
    try:
        out = dec.decompress(payload[1:], max_length=size + 1)
    except lzma.LZMAError as exc:
        raise DecodeFailed(f"LZMA data: {exc}") from None
    if not dec.eof or dec.unused_data:
        raise DecodeFailed("LZMA data does not end where the frame does")
    return out


def bz2_encode(data: bytes) -> bytes:
    return bz2.compress(data, 9)


def bz2_decode(payload: bytes, size: int) -> bytes:
    dec = bz2.BZ2Decompressor()
    try:
        out = dec.decompress(payload, max_length=size + 1)
    except (OSError, ValueError) as exc:
        raise DecodeFailed(f"bzip2 data: {exc}") from None
    if not dec.eof or dec.unused_data:
        raise DecodeFailed("bzip2 data does not end where the frame does")
    return out


PPMD_PIECE = 8192   # pyppmd 1.3's encoder, given a large buffer in one call, can lose the stream's
                    # last byte (measured: 5 of 36 corpus and mixed-set files); fed 8 KiB at a time it
                    # wrote correct streams for all of them. Payloads are verified anyway (best_fallback).


def _ppmd_stream(encoder: object, data: bytes) -> bytes:
    """Feed ``data`` to a pyppmd encoder ``PPMD_PIECE`` bytes at a time, through one reused
    buffer: pyppmd 1.3's ``encode`` keeps a reference to (and an export of) every object it is
    given, so fresh slices would stay in memory for good (measured: the input's size per frame).
    This way at most the buffer and the last short piece stay, about 16 KiB per frame."""
    buffer = bytearray(PPMD_PIECE)
    view = memoryview(buffer)
    out = []
    whole = len(data) - len(data) % PPMD_PIECE
    for start in range(0, whole, PPMD_PIECE):
        view[:] = data[start:start + PPMD_PIECE]
        out.append(encoder.encode(buffer))
    if whole < len(data):
        out.append(encoder.encode(data[whole:]))
    out.append(encoder.flush())
    return b"".join(out)


def ppmd_encode(data: bytes) -> bytes:
    """PPMd variant H with each shipped order; the smaller payload wins."""
    import pyppmd

    best = b""
    for order, extra, most in PPMD_ORDERS:
        mem_log = min(most, max(20, len(data).bit_length() + extra))
        payload = bytes([order, mem_log]) + _ppmd_stream(pyppmd.Ppmd7Encoder(order, 1 << mem_log), data)
        if not best or len(payload) < len(best):
            best = payload
    return best


def ppmd_decode(payload: bytes, size: int) -> bytes:
    import pyppmd

    if len(payload) < 2 or not 2 <= payload[0] <= 64 or not 11 <= payload[1] <= PPMD_MAX_MEM_LOG:
        raise DecodeFailed("bad PPMd order or memory size")
    try:
        return pyppmd.Ppmd7Decoder(payload[0], 1 << payload[1]).decode(payload[2:], size)
    except (ValueError, RuntimeError, pyppmd.PpmdError) as exc:
        raise DecodeFailed(f"PPMd data: {exc}") from None


def stored_decode(payload: bytes, size: int) -> bytes:
    return payload


@dataclass(frozen=True)
class Fallback:
    """A method that needs no model."""

    method: int
    encode: Callable[[bytes], bytes]
    decode: Callable[[bytes, int], bytes]


FALLBACKS = {
    STORED: Fallback(STORED, bytes, stored_decode),
    LZMA: Fallback(LZMA, lzma_encode, lzma_decode),
    BZ2: Fallback(BZ2, bz2_encode, bz2_decode),
    PPMD: Fallback(PPMD, ppmd_encode, ppmd_decode),
}


def decode_fallback(method: int, payload: bytes, size: int) -> bytes:
    """Decode a fallback payload to exactly ``size`` bytes, or raise DecodeFailed."""
    out = FALLBACKS[method].decode(payload, size)
    if len(out) != size:
        raise DecodeFailed(f"{name(method)} data decodes to {len(out)} bytes, not {size}")
    return out


def best_fallback(data: bytes, methods: tuple[int, ...] = tuple(FALLBACKS)) -> tuple[int, bytes]:
    """The smallest payload among ``methods`` that decodes back to ``data`` (stored on ties, then
    the lower id). Every payload kept is decoded once and compared: a coder's bug (see
    PPMD_PIECE) costs a few bytes of ratio, never the data."""
    candidates = sorted(((FALLBACKS[m].encode(data), m) for m in methods), key=lambda c: (len(c[0]), c[1]))
    for payload, method in candidates:
        if method == STORED or _decodes_to(method, payload, data):
            return method, payload
    raise ValueError("no fallback method given")


def _decodes_to(method: int, payload: bytes, data: bytes) -> bool:
    try:
        return decode_fallback(method, payload, len(data)) == data
    except DecodeFailed:
        return False
