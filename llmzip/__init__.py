"""llmzip: lossless compression driven by a causal language model.

>>> import llmzip
>>> blob = llmzip.compress(b"hello, world\\n")          # the embedded model
>>> llmzip.decompress(blob)
b'hello, world\\n'

``model`` may be a name (``"embedded"``, a local directory, a Hugging Face id) or a model
object from :func:`llmzip.model.load_model`. Decompression loads the model the archive names
unless one is given; either way its fingerprint must match the archive's.
"""

from __future__ import annotations

from typing import Any

from .errors import (
    CorruptArchiveError,
    LlmzipError,
    ModelLoadError,
    ModelMismatchError,
    NotAnArchiveError,
    TokenizerError,
    UnsupportedFormatError,
)

__version__ = "0.1.0"
__all__ = [
    "compress", "decompress", "read_info", "LlmzipError", "CorruptArchiveError", "NotAnArchiveError",
    "UnsupportedFormatError", "ModelMismatchError", "ModelLoadError", "TokenizerError",
]


def _resolve(model: Any, allow_download: bool = False) -> Any:
    from .model import load_model

    if model is None or isinstance(model, str):
        return load_model(model, allow_download=allow_download)
    return model


def compress(data: bytes, model: Any = None, *, allow_download: bool = False, **options: Any) -> bytes:
    """Compress ``data``; ``options`` are those of :func:`llmzip.codec.compress`.

    A hub model is only downloaded when ``allow_download`` is true.
    """
    from . import codec

    return codec.compress(bytes(data), _resolve(model, allow_download), **options)


def decompress(blob: bytes, model: Any = None, *, allow_download: bool = False, **options: Any) -> bytes:
    """Decompress an archive; loads the model the header names when ``model`` is None."""
    from . import codec
    from .container import read_header

    if model is None:
        model = read_header(blob)[0].model_id
    return codec.decompress(bytes(blob), _resolve(model, allow_download), **options)


def read_info(blob: bytes) -> Any:
    """The archive's header (a :class:`llmzip.container.Header`), validated, without decoding."""
    from .container import read_header

    return read_header(blob)[0]
