"""Typed exceptions raised by the llmzip library.

The CLI maps each class to one exit status and one line on stderr (see ``llmzip/cli/status.py``);
library code never prints and never exits.
"""

from __future__ import annotations


class LlmzipError(Exception):
    """Base class of every error llmzip raises on purpose."""


class CorruptArchiveError(LlmzipError):
    """The archive is damaged: bad checksum, out-of-range field, truncated payload."""


class NotAnArchiveError(CorruptArchiveError):
    """The input does not start with the llmzip magic bytes."""


class UnsupportedFormatError(LlmzipError):
    """The archive uses a format version or a setting this build cannot decode."""


class ModelMismatchError(LlmzipError):
    """The model available for decoding is not the one the archive was made with."""


class ModelLoadError(LlmzipError):
    """A model or tokenizer could not be loaded, or is not usable by llmzip."""


class TokenizerError(ModelLoadError):
    """The tokenizer cannot map tokens to exact bytes, so it cannot be used losslessly."""


class FrameError(CorruptArchiveError):
    """A frame of a format-2 archive is damaged; ``index`` and ``offset`` (of its record in the
    archive) say which."""

    def __init__(self, reason: str, index: int, offset: int) -> None:
        super().__init__(f"frame {index} at offset {offset}: {reason}")
        self.reason, self.index, self.offset = reason, index, offset


class WorkerError(LlmzipError):
    """A worker process of the codec died (killed, out of memory) or could not report its failure."""
