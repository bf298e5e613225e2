"""Float weights stored losslessly in less space: a safetensors file with each tensor's bytes
split into byte planes, xz-compressed.

The bytes of float weights compress poorly as they lie (an exponent byte between mantissa bytes),
but well plane by plane: all the tensor's first bytes, then all its second bytes, and so on (the
float32 GPT-2 ``llmzip-gpt2-small-v1``: 21.6 MB, xz 19.8 MB, planes then xz 18.2 MB). Any
safetensors file round-trips bit for bit: the header stays as it is (same dtypes, shapes and
offsets), only the order of the bytes inside each tensor changes, so a loader undoes it and reads
the original file. For model weights that llmzip does not pack into the engine's integers (GPT-2
models quantised by engine 1 to int16 columns, whose archives of engines 1-3 all need the floats).
"""

from __future__ import annotations

import json
import lzma

import numpy as np

PLANES_FILE = "model.planes.safetensors.xz"
# Bytes per element of the safetensors dtypes; any other dtype is left in place (one plane).
ITEM_SIZES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2}


def encode(raw: bytes) -> bytes:
    """The planes file of a safetensors file's bytes."""
    return lzma.compress(_reorder(raw, split=True), preset=9 | lzma.PRESET_EXTREME)


def decode(blob: bytes) -> bytes:
    """The safetensors file's bytes that :func:`encode` stored.

    Raises:
        ValueError: not a whole xz stream, or no safetensors header inside.
    """
    try:
        raw = lzma.decompress(blob, format=lzma.FORMAT_XZ)   # the .xz container: CRC-checked
    except lzma.LZMAError as exc:
        raise ValueError(f"{PLANES_FILE}: not a whole xz stream ({exc})") from exc
    return _reorder(raw, split=False)


def _reorder(raw: bytes, split: bool) -> bytes:
    """Each tensor's bytes as planes (``split``) or back as elements; the header unchanged. Tensors
    are taken in header order to split and in reverse order to join, so joining undoes splitting
    even for a (malformed) file whose tensors overlap."""
    header, start = read_header(raw, PLANES_FILE)
    out = np.frombuffer(raw, dtype=np.uint8).copy()
    data = out[start:]
    spans = _spans(header)
    for begin, end, k in spans if split else spans[::-1]:
        if 0 <= begin <= end <= len(data) and (end - begin) % k == 0:
            block = data[begin:end]
            block[:] = block.reshape((-1, k) if split else (k, -1)).T.ravel()
    return out.tobytes()


def read_header(raw: bytes | np.ndarray, name: str) -> tuple[dict, int]:
    """The JSON header of a safetensors file's bytes (u64 length, header, data) and where its data
    starts; also :mod:`llmzip.model`'s reader of every weight file.

    Raises:
        ValueError: truncated, or the header is not a JSON object of objects.
    """
    size = int.from_bytes(bytes(raw[:8]), "little")
    try:
        header = json.loads(bytes(raw[8 : 8 + size])) if len(raw) >= 8 + size else None
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{name}: not a safetensors file ({exc})") from exc
    if not isinstance(header, dict) or not all(isinstance(v, dict) for v in header.values()):
        raise ValueError(f"{name}: not a safetensors file (truncated or malformed header)")
    return header, 8 + size


def _spans(header: dict) -> list[tuple[int, int, int]]:
    """(begin, end, bytes per element) of every tensor with elements of more than one byte."""
    spans = []
    for key, info in header.items():
        dtype = info.get("dtype") if key != "__metadata__" and isinstance(info, dict) else None
        k = ITEM_SIZES.get(dtype, 1) if isinstance(dtype, str) else 1
        offsets = info.get("data_offsets") if k > 1 else None
        if k > 1 and not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise ValueError(f"not a safetensors file (tensor {key}: data_offsets {offsets!r})")
        if k > 1:
            spans.append((offsets[0], offsets[1], k))
    return spans
