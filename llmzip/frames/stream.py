"""Whole streams of frames: compress and decompress frame by frame, from files or pipes.

Memory is bounded by the frame size (and the model), never by the input: the planner holds
at most ``frame_size + MIN_RUN`` input bytes, the writer one frame's payload, and the reader
one frame's record and its decoded bytes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterator

from .. import codec
from ..errors import NotAnArchiveError
from . import lm
from .coding import LazyModel, ModelSource, Options, decode_frame, encode_frame
from .format import STREAM_HEADER, Frame, FrameInfo, RecordReader, check_stream_header, trailer
from .split import iter_spans

OnFrame = Callable[[FrameInfo], None]


@dataclass
class StreamWriter:
    """Writes a format-2 archive to ``out`` one frame at a time; :meth:`close` adds the trailer.

    Frames may be coded anywhere (other processes or machines, see :func:`encode_frame`) and
    written here in input order.
    """

    out: BinaryIO
    offset: int = 0
    input_offset: int = 0
    index: list[tuple[int, int, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.out.write(STREAM_HEADER)
        self.offset = len(STREAM_HEADER)

    def write(self, frame: Frame) -> FrameInfo:
        info = FrameInfo(len(self.index), self.offset, self.input_offset, frame.method, frame.raw_size,
                         len(frame.payload))
        record = frame.record()
        self.out.write(record)
        self.index.append((len(frame.payload), frame.raw_size, frame.checksum))
        self.offset += len(record)
        self.input_offset += frame.raw_size
        return info

    def close(self) -> int:
        """Write the trailer; returns the archive's size."""
        tail = trailer(self.index)
        self.out.write(tail)
        self.offset += len(tail)
        return self.offset


def compress_stream(src: BinaryIO, out: BinaryIO, model: ModelSource | None = None,
                    options: Options | None = None, on_frame: OnFrame | None = None) -> int:
    """Read ``src`` to its end and write its archive to ``out``; returns the archive's size.

    ``model`` loads the compression model, only if a frame needs it (default: embedded).
    ``on_frame`` is called with each frame's place and method once it is written.
    """
    options = options or Options()
    lazy = LazyModel(model) if model is not None else None
    writer = StreamWriter(out)
    for data, kind in iter_spans(src, options.frame_size, options.content_aware):
        info = writer.write(encode_frame(data, kind, lazy, options))
        if on_frame is not None:
            on_frame(info)
    return writer.close()


def read_frames(src: BinaryIO) -> Iterator[tuple[FrameInfo, Frame]]:
    """Every frame of a format-2 archive read from ``src`` in order; the trailer is checked last."""
    check_stream_header(src.read(len(STREAM_HEADER)))
    reader = RecordReader(src)
    while (item := reader.next_frame()) is not None:
        yield item


def decompress_stream(src: BinaryIO, out: BinaryIO | None, model_for: lm.ModelFor | None = None,
                      settings: codec.Settings | None = None, on_frame: OnFrame | None = None) -> int:
    """Decode a format-2 archive from ``src`` frame by frame, writing to ``out`` (None: only
    check it); returns the original size. The stream header must still be unread."""
    total = 0
    for info, frame in read_frames(src):
        data = decode_frame(frame, model_for, settings, info)
        if out is not None:
            out.write(data)
        total += len(data)
        if on_frame is not None:
            on_frame(info)
    return total


def compress(data: bytes, model: Any = None, options: Options | None = None) -> bytes:
    """A format-2 archive of ``data`` in memory; ``model``: a loaded model (default: embedded,
    loaded only if a frame needs it)."""
    out = io.BytesIO()
    compress_stream(io.BytesIO(data), out, None if model is None else lambda: model, options)
    return out.getvalue()


def decompress(blob: bytes, model_for: lm.ModelFor | None = None, settings: codec.Settings | None = None) -> bytes:
    """The original of a format-2 archive held in memory."""
    out = io.BytesIO()
    decompress_stream(io.BytesIO(blob), out, model_for, settings)
    return out.getvalue()


def format_version(prefix: bytes) -> int:
    """The format version an archive starts with (1 or 2, from its first 5 bytes); refuses
    what is not an archive or has a version this build does not know."""
    if prefix[:4] != STREAM_HEADER[:4]:
        raise NotAnArchiveError("not an llmzip archive")
    if len(prefix) >= len(STREAM_HEADER) and prefix[4] == 1:
        return 1
    check_stream_header(prefix)
    return 2
