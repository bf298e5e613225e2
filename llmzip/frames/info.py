"""What an archive holds, without decoding it: ``llmzip list`` and :func:`llmzip.read_info`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

from ..errors import CorruptArchiveError
from . import lm, methods
from .format import FrameInfo, read_index, record_header_size

LM_FIELDS_MAX = 1 + 255 + 32 + 1 + 4 * 10 + 1 + 10 + 1024   # the longest leading fields of an LM payload


@dataclass(frozen=True)
class StreamInfo:
    """A format-2 archive: its frames (from the trailer's index) and, for each language-model
    frame, the fields its payload starts with (model, engine, chunking, mixing)."""

    archive_size: int
    frames: list[FrameInfo]
    lm_fields: dict[int, lm.LMFields]      # frame index -> fields, for LM frames only
    format_version: int = 2

    @property
    def original_size(self) -> int:
        return sum(f.raw_size for f in self.frames)

    def method_mix(self) -> dict[str, dict[str, int]]:
        """Per method name: frames, original bytes and payload bytes, in method-id order."""
        mix: dict[str, dict[str, int]] = {}
        for f in sorted(self.frames, key=lambda f: f.method):
            entry = mix.setdefault(methods.name(f.method), {"frames": 0, "original": 0, "payload": 0})
            entry["frames"] += 1
            entry["original"] += f.raw_size
            entry["payload"] += f.payload_size
        return mix


def stream_info(stream: BinaryIO, size: int) -> StreamInfo:
    """Read the index of a seekable format-2 archive and the leading fields of its LM frames."""
    frames = read_index(stream, size)
    fields = {}
    for f in frames:
        if f.method != methods.LM:
            continue
        stream.seek(f.offset + record_header_size(f.raw_size, f.payload_size))
        try:
            fields[f.index] = lm.read_fields(stream.read(min(f.payload_size, LM_FIELDS_MAX)))[0]
        except methods.DecodeFailed as exc:
            raise CorruptArchiveError(f"frame {f.index} at offset {f.offset}: {exc}") from None
    return StreamInfo(size, frames, fields)
