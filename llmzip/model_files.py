"""The files of a model directory, as llmzip reads them without torch: safetensors weights
(memory-mapped; bfloat16 widened exactly), the packed int8 weights of :mod:`llmzip.packed` and
their differences from a base, the byte planes of :mod:`llmzip.planes`, and the tokenizer's JSON,
plain or xz-compressed.

Every malformed or unreadable file surfaces as :class:`llmzip.errors.ModelLoadError`,
``ValueError`` or ``OSError`` (the last two the loader turns into ModelLoadError), never as a
stray TypeError or IndexError.
"""

from __future__ import annotations

import lzma
from pathlib import Path
from typing import Any

import numpy as np

from . import packed, planes
from .errors import ModelLoadError

TOKENIZER_FILE = "tokenizer.json"


def weight_files(path: Path) -> list[Path]:
    """The files of a model directory that hold its weights: ``*.safetensors``, and those llmzip
    stores in less space (:data:`llmzip.packed.DELTA_FILE`, :data:`llmzip.planes.PLANES_FILE`)."""
    stored = [path / name for name in (packed.DELTA_FILE, planes.PLANES_FILE)]
    return sorted(path.glob("*.safetensors")) + [f for f in stored if f.is_file()]


def tokenizer_file(path: Path) -> Path | None:
    """A model directory's ``tokenizer.json``, or the ``tokenizer.json.xz`` llmzip ships instead
    (the JSON of a byte-level BPE compresses ~8x: 540 kB to 70 kB); None when it has neither."""
    return next((f for f in (path / TOKENIZER_FILE, path / (TOKENIZER_FILE + ".xz")) if f.is_file()), None)


def read_tokenizer_json(path: Path) -> str:
    """The text of a model directory's tokenizer (:func:`tokenizer_file`).

    Raises:
        ValueError: neither file, or a damaged one.
    """
    f = tokenizer_file(path)
    if f is None:
        raise ValueError(f"{path}: no {TOKENIZER_FILE}")
    try:
        raw = lzma.decompress(f.read_bytes()) if f.suffix == ".xz" else f.read_bytes()
        return raw.decode("utf-8")
    except (lzma.LZMAError, UnicodeDecodeError) as exc:
        raise ValueError(f"{f}: damaged ({exc})") from exc


def read_weights(path: Path) -> tuple[dict[str, np.ndarray], tuple[int, str] | None]:
    """The float state dict of a model directory and, for a packed one (:mod:`llmzip.packed`:
    int8, or the difference from a base), the engine and fingerprint its file records (None for
    plain safetensors, in files of their own or in byte planes: :mod:`llmzip.planes`)."""
    stored, delta = weight_files(path), path / packed.DELTA_FILE
    if not stored or tokenizer_file(path) is None:
        raise ModelLoadError(f"{path}: needs *.safetensors and tokenizer.json (Hugging Face layout)")
    special = {path / packed.PACKED_FILE, delta, path / planes.PLANES_FILE}
    if special.isdisjoint(stored):
        return _read_safetensors(stored), None
    if len(stored) > 1:
        raise ModelLoadError(f"{path}: holds {', '.join(f.name for f in stored)}; keep one of them")
    if stored[0].name == planes.PLANES_FILE:
        raw = np.frombuffer(planes.decode(stored[0].read_bytes()), dtype=np.uint8)
        return parse_safetensors(raw, str(stored[0]), _SAFETENSORS_DTYPES)[0], None
    tensors, meta = read_packed(path)
    return packed.unpack_state(tensors), (int(meta["engine"]), str(meta["fingerprint"]))


def read_packed(path: Path, depth: int = 0) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The packed tensors (int8 rows and peaks, other tensors as stored) and metadata of a packed
    model directory, from its packed file or rebuilt from its difference from a base (``depth``:
    how many differences deep this directory is read, to bound a chain of bases)."""
    delta, whole = path / packed.DELTA_FILE, path / packed.PACKED_FILE
    if delta.is_file() and whole.is_file():
        raise ModelLoadError(f"{path}: holds {delta.name} and {whole.name}; keep one of them")
    return _read_delta(delta, depth) if delta.is_file() else read_packed_file(whole)


# Packed files are llmzip's own: read as stored (no widening), and any other dtype is damage.
_PACKED_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I8": "i1"}


def read_packed_file(f: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The tensors and metadata of a packed file, its format checked."""
    tensors, meta = parse_safetensors(np.memmap(f, dtype=np.uint8, mode="r"), str(f), _PACKED_DTYPES, strict=True)
    if meta.get("format") != packed.FORMAT or not {"engine", "fingerprint"} <= set(meta):
        raise ModelLoadError(f"{f}: not in the {packed.FORMAT} format this llmzip reads "
                             f"(format {meta.get('format')!r}: a newer llmzip may read it; upgrade), or damaged")
    return tensors, meta


def _read_delta(f: Path, depth: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The packed tensors a difference file rebuilds from its base, and its metadata."""
    try:
        raw = lzma.decompress(f.read_bytes())
    except lzma.LZMAError as exc:
        raise ModelLoadError(f"{f}: not an xz file ({exc})") from exc
    delta, meta = parse_safetensors(np.frombuffer(raw, dtype=np.uint8), str(f), _PACKED_DTYPES, strict=True)
    keys = {"engine", "fingerprint", "base", "base_fingerprint"}
    if meta.get("format") != packed.DELTA_FORMAT or not keys <= set(meta):
        raise ModelLoadError(f"{f}: not in the {packed.DELTA_FORMAT} format this llmzip reads "
                             f"(format {meta.get('format')!r}: a newer llmzip may read it; upgrade), or damaged")
    try:
        return packed.apply_delta(delta, _delta_base(f, meta, depth)), meta
    except packed.PackingError as exc:
        raise ModelLoadError(f"{f}: {exc}") from exc


def _delta_base(f: Path, meta: dict[str, Any], depth: int) -> dict[str, np.ndarray]:
    """The packed tensors of a difference file's base: the model directory named ``meta["base"]``
    beside the difference's own directory, packed or itself a difference (a chain of at most
    :data:`llmzip.packed.MAX_DEPTH` models, the one loaded at ``depth`` 0), and recording the
    fingerprint ``meta["base_fingerprint"]``."""
    name = str(meta["base"])
    if name in ("", ".", "..") or Path(name).name != name:
        raise ModelLoadError(f"{f}: base {name!r} is not a model directory name")
    base = f.parent.parent / name
    if not ((base / packed.PACKED_FILE).is_file() or (base / packed.DELTA_FILE).is_file()):
        raise ModelLoadError(f"{f}: stored as the difference from model {name!r}, which is not beside it as a "
                             f"packed model directory ({base})")
    if depth + 1 >= packed.MAX_DEPTH:
        raise ModelLoadError(f"{f}: its base {name!r} would make a chain of more than {packed.MAX_DEPTH} models "
                             "(a loop of bases?)")
    try:
        tensors, base_meta = read_packed(base, depth + 1)
    except (ValueError, ModelLoadError) as exc:   # the chain named from the model loaded down
        raise ModelLoadError(f"{f}: its base {base}: {exc}") from exc
    if base_meta["fingerprint"] != meta["base_fingerprint"]:
        raise ModelLoadError(f"{f}: its base {base} is not the model it was stored against "
                             f"(fingerprint {str(base_meta['fingerprint'])[:16]}... against "
                             f"{str(meta['base_fingerprint'])[:16]}...)")
    return tensors


_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2"}   # BF16: high half of a float32


def _read_safetensors(files: list[Path]) -> dict[str, np.ndarray]:
    """Every float tensor of ``files`` (safetensors layout: u64 header length, JSON header, data),
    memory-mapped; bfloat16 (which numpy lacks) widened exactly to float32. Integer and boolean
    tensors (buffers such as attention masks) are skipped: the engine reads only float weights.

    Raises:
        ValueError: a malformed file.
    """
    state: dict[str, np.ndarray] = {}
    for f in files:
        state.update(_read_safetensors_file(f, _SAFETENSORS_DTYPES)[0])
    return state


def _read_safetensors_file(f: Path, dtypes: dict[str, str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The tensors of one file whose dtype is in ``dtypes`` (memory-mapped), and its metadata."""
    return parse_safetensors(np.memmap(f, dtype=np.uint8, mode="r"), f.name, dtypes)


def parse_safetensors(buffer: np.ndarray, name: str, dtypes: dict[str, str],
                      strict: bool = False) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The tensors (views of the uint8 ``buffer``) whose dtype is in ``dtypes`` and the metadata of
    a safetensors file's bytes (u64 header length, JSON header, data). ``strict``: a tensor of any
    other dtype is an error rather than skipped (Hugging Face files may hold integer buffers).

    Raises:
        ValueError: a malformed file.
    """
    header, start = planes.read_header(buffer, name)
    data = buffer[start:]
    state: dict[str, np.ndarray] = {}
    for key, info in header.items():
        dtype = info.get("dtype")
        if key == "__metadata__" or (not (isinstance(dtype, str) and dtype in dtypes) and not strict):
            continue
        if not (isinstance(dtype, str) and dtype in dtypes):
            raise ValueError(f"{name}: tensor {key} has dtype {dtype!r}, not one of {sorted(dtypes)}")
        begin, end = _ints(info.get("data_offsets"), 2, f"{name}: tensor {key}: data_offsets")
        if not 0 <= begin <= end <= len(data):
            raise ValueError(f"{name}: tensor {key} lies outside the file")
        shape = _ints(info.get("shape"), None, f"{name}: tensor {key}: shape")
        array = data[begin:end].view(dtypes[dtype]).reshape(shape)
        state[key] = (array.astype(np.uint32) << 16).view(np.float32) if dtype == "BF16" else array
    return state, dict(header.get("__metadata__") or {})


def _ints(value: Any, count: int | None, what: str) -> list[int]:
    """``value`` if it is a list of (``count``) non-negative ints, else ValueError naming ``what``."""
    if not (isinstance(value, list) and (count is None or len(value) == count)
            and all(type(v) is int and v >= 0 for v in value)):
        raise ValueError(f"{what} is {value!r}, not a list of {count or 'some'} non-negative integers")
    return value
