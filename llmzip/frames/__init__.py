"""Archive format 2: the input as a stream of independent frames, each coded by the method
that codes it smallest (the language model, or a fallback: stored, LZMA, bzip2, PPMd).

The frame-level API lets frames be coded anywhere (threads, processes, other machines) and
joined in input order::

    from llmzip import frames

    spans = frames.plan(data, frames.DEFAULT_FRAME_SIZE)            # where frames start, their kind
    coded = [frames.encode_frame(data[s.offset:s.offset + s.length], s.kind) for s in spans]
    blob = frames.join(coded)                                       # stream header + frames + trailer
    assert b"".join(frames.decode_frame(f) for f in coded) == data
    assert frames.decompress(blob) == data

:func:`read_index` finds every frame of a seekable archive from its trailer without decoding
any; :func:`read_frames` yields them from a pipe. Format: :mod:`llmzip.frames.format`.
"""

from __future__ import annotations

from .coding import DEFAULT_FRAME_SIZE, Options, decode_frame, encode_frame
from .format import Frame, FrameInfo, join, read_index
from .methods import IDS as METHOD_IDS
from .methods import NAMES as METHOD_NAMES
from .split import BINARY, TEXT, Span, plan
from .stream import (StreamWriter, compress, compress_stream, decompress, decompress_stream, format_version,
                     read_frames)

__all__ = ["DEFAULT_FRAME_SIZE", "Options", "decode_frame", "encode_frame", "Frame", "FrameInfo", "join",
           "read_index", "METHOD_IDS", "METHOD_NAMES", "BINARY", "TEXT", "Span", "plan", "StreamWriter",
           "compress", "compress_stream", "decompress", "decompress_stream", "format_version", "read_frames"]
