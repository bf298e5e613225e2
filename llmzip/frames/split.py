"""Where frames start and end: a content test per block, runs of text and binary, frame cuts.

The input is cut into frames of at most ``frame_size`` bytes. With content-aware splitting
(the default) a frame also ends where the input changes between text and binary, so that in
a tar of documents and executables the text lands in frames the language model may code and
the binaries in frames only the fallbacks see. The test is per 1 KiB block: printable ASCII,
whitespace and valid UTF-8 make text. Runs shorter than ``MIN_RUN`` are absorbed by their
neighbours, so a string table in a binary or a stray control byte in a text does not cut it.
Only the encoder plans: the decoder follows the frames the archive holds, so planning may
change between versions without changing what decodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Iterator

import numpy as np

BLOCK = 1024
MIN_RUN = 16 * BLOCK
TEXT_SHARE = 0.97         # of a block's bytes must be text bytes
TEXT, BINARY = "text", "binary"

_ASCII_TEXT = np.zeros(256, dtype=bool)
_ASCII_TEXT[[9, 10, 12, 13]] = True
_ASCII_TEXT[32:127] = True


@dataclass(frozen=True)
class Span:
    """A planned frame: ``length`` bytes at ``offset`` of the input, of one ``kind``."""

    offset: int
    length: int
    kind: str


def _utf8_valid_bytes(block: bytes) -> int:
    """Bytes of ``block`` that are part of valid UTF-8 (a sequence cut at either edge counts)."""
    return len(block.decode("utf-8", "ignore").encode("utf-8")) + min(3, len(block))


def block_kinds(data: bytes) -> list[str]:
    """TEXT or BINARY for every ``BLOCK`` bytes of ``data`` (the last block may be shorter)."""
    arr = np.frombuffer(data, dtype=np.uint8)
    whole = len(arr) // BLOCK * BLOCK
    text = _ASCII_TEXT[arr[:whole]].reshape(-1, BLOCK).sum(axis=1).tolist()
    high = (arr[:whole] >= 0x80).reshape(-1, BLOCK).sum(axis=1).tolist()
    sizes = [BLOCK] * len(text)
    if whole < len(arr):
        tail = arr[whole:]
        text.append(int(np.count_nonzero(_ASCII_TEXT[tail])))
        high.append(int(np.count_nonzero(tail >= 0x80)))
        sizes.append(len(tail))
    kinds = []
    for i, (t, h, n) in enumerate(zip(text, high, sizes)):
        if h and t + h >= TEXT_SHARE * n:     # only then can valid UTF-8 make it text
            t += min(h, _utf8_valid_bytes(data[i * BLOCK:i * BLOCK + n]) - t)
        kinds.append(TEXT if t >= TEXT_SHARE * n else BINARY)
    return kinds


def runs(data: bytes) -> list[Span]:
    """Maximal runs of one kind, after absorbing runs shorter than MIN_RUN into a neighbour."""
    raw: list[list] = []
    for i, kind in enumerate(block_kinds(data)):
        if raw and raw[-1][2] == kind:
            raw[-1][1] += 1
        else:
            raw.append([i, 1, kind])
    merged: list[list] = []
    for start, count, kind in raw:
        if merged and (count * BLOCK < MIN_RUN or merged[-1][2] == kind):
            merged[-1][1] += count            # short: joins the run before it
        elif merged and merged[-1][1] * BLOCK < MIN_RUN and len(merged) == 1:
            merged[-1] = [merged[-1][0], merged[-1][1] + count, kind]   # a short first run joins this one
        else:
            merged.append([start, count, kind])
    spans = [Span(s * BLOCK, n * BLOCK, k) for s, n, k in merged]
    if spans:
        last = spans[-1]
        spans[-1] = Span(last.offset, len(data) - last.offset, last.kind)
    return spans


def next_span(window: bytes, frame_size: int, content_aware: bool) -> Span:
    """The first frame of ``window`` (the rest of the input, or at least frame_size + MIN_RUN of it)."""
    if not content_aware:     # one frame per frame_size bytes, of the kind most of its blocks are
        kinds = block_kinds(window[:frame_size])
        return Span(0, min(frame_size, len(window)), TEXT if 2 * kinds.count(TEXT) >= len(kinds) else BINARY)
    first = runs(window[:frame_size + MIN_RUN])[0]
    return Span(0, min(first.length, frame_size), first.kind)


def plan(data: bytes, frame_size: int, content_aware: bool = True) -> list[Span]:
    """Every frame of ``data``, in order (what :func:`iter_spans` yields, as offsets)."""
    spans, offset = [], 0
    while offset < len(data):
        span = next_span(data[offset:offset + frame_size + MIN_RUN], frame_size, content_aware)
        spans.append(Span(offset, span.length, span.kind))
        offset += span.length
    return spans


def iter_spans(stream: BinaryIO, frame_size: int, content_aware: bool = True) -> Iterator[tuple[bytes, str]]:
    """Read ``stream`` and yield ``(frame bytes, kind)``; holds at most frame_size + MIN_RUN bytes
    (plus one read) at a time."""
    buf = bytearray()
    eof = False
    while True:
        while not eof and len(buf) < frame_size + MIN_RUN:
            chunk = stream.read(frame_size + MIN_RUN - len(buf))
            eof = not chunk
            buf += chunk
        if not buf:
            return
        span = next_span(bytes(buf[:frame_size + MIN_RUN]), frame_size, content_aware)
        yield bytes(buf[:span.length]), span.kind
        del buf[:span.length]
