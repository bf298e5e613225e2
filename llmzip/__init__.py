"""llmzip: lossless compression driven by a causal language model.

>>> import llmzip
>>> blob = llmzip.compress(b"hello, world\\n")          # the embedded model
>>> llmzip.decompress(blob)
b'hello, world\\n'

Archives are format 2 (:mod:`llmzip.frames`): independent frames, each coded by the language
model or by the fallback (stored, LZMA, bzip2, PPMd) that codes it smallest; format-1
archives (one language-model stream) still decode.

``model`` may be a name (``"embedded"``, a local directory, a Hugging Face id) or a model
object from :func:`llmzip.model.load_model`. Decompression loads the model the archive names
unless one is given; either way its fingerprint must match the archive's.
"""

from __future__ import annotations

import io
from typing import Any

from .errors import (
    CorruptArchiveError,
    FrameError,
    LlmzipError,
    ModelLoadError,
    ModelMismatchError,
    NotAnArchiveError,
    TokenizerError,
    UnsupportedFormatError,
    WorkerError,
)

__version__ = "0.1.0"
__all__ = [
    "compress", "decompress", "read_info", "LlmzipError", "CorruptArchiveError", "FrameError", "NotAnArchiveError",
    "UnsupportedFormatError", "ModelMismatchError", "ModelLoadError", "TokenizerError", "WorkerError",
]


def _resolve(model: Any, allow_download: bool = False) -> Any:
    from .model import load_model

    if model is None or isinstance(model, str):
        return load_model(model, allow_download=allow_download)
    return model


def compress(data: bytes, model: Any = None, *, allow_download: bool = False, **options: Any) -> bytes:
    """Compress ``data`` to a format-2 archive; ``options`` are the fields of
    :class:`llmzip.frames.Options` (``frame_size``, ``method``, ``mixing``, ``chunk_tokens``, ...).

    The model is loaded only if a frame is worth coding with it; a hub model is only
    downloaded when ``allow_download`` is true.
    """
    from . import frames

    out = io.BytesIO()
    frames.compress_stream(io.BytesIO(bytes(data)), out, lambda: _resolve(model, allow_download),
                           frames.Options(**options))
    return out.getvalue()


def decompress(blob: bytes, model: Any = None, *, allow_download: bool = False, settings: Any = None) -> bytes:
    """Decompress an archive of either format; loads the model an LM frame names when ``model``
    is None. ``settings``: a :class:`llmzip.codec.Settings` (workers, batch size: speed only)."""
    from . import codec, frames
    from .container import read_header

    blob = bytes(blob)
    if frames.format_version(blob[:5]) == 1:
        if model is None:
            model = read_header(blob)[0].model_id
        return codec.decompress(blob, _resolve(model, allow_download), settings or codec.Settings())
    models: dict[str, Any] = {}

    def model_for(model_id: str) -> Any:
        if model_id not in models:
            models[model_id] = _resolve(model if model is not None else model_id, allow_download)
        return models[model_id]

    return frames.decompress(blob, model_for, settings)


def read_info(blob: bytes) -> Any:
    """What an archive holds, validated, without decoding: a :class:`llmzip.container.Header`
    for format 1, a :class:`llmzip.frames.info.StreamInfo` (frames, methods, LM fields) for 2."""
    from .container import read_header
    from .frames import format_version
    from .frames.info import stream_info

    blob = bytes(blob)
    if format_version(blob[:5]) == 1:
        return read_header(blob)[0]
    return stream_info(io.BytesIO(blob), len(blob))
