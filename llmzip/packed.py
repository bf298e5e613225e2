"""Llama-family weights stored as the int8 integers the exact engine computes with.

The engine quantises every linear layer per output row to ``round(w / s)`` with ``s = peak / 127``
(:func:`llmzip.linear8.quantize_linear8`); everything else it reads from the floats. So a model's
projection weights can be shipped as those int8 rows plus each row's float peak, and the floats
rebuilt from them quantise to the same integers: the model fingerprint, and with it every table
and archive, is unchanged, while the file is about 40% smaller than float16 (a 6 x 384 Llama:
15.8 MB instead of 25.2). Embeddings, norms and biases keep their stored floats: the embedding
feeds the engine unquantised (and the tied head quantises it per vocabulary row).

Why the rebuilt floats give the same integers: an entry quantised to +-127 is rebuilt as exactly
+-peak, so the row's peak, hence ``s``, the multiplier and shift derived from it, are the same
numbers; every other entry is rebuilt as ``q * s`` with ``|q| <= 126``, which divides back to
``q`` within a few ulps and rounds to it. The file also records the fingerprint the packed model
must have; loading checks it, so a packing that failed to round-trip can never code.
(Only engine 4 runs Llama-family models today; an engine with another quantiser would compute
with a quantisation of the rebuilt floats, and its own fingerprint, while the recorded one is
still checked under engine 4.)

A model trained on from another shipped model can be stored as its difference from that base
(:data:`DELTA_FILE`, :func:`delta_state`): its packed tensors, each minus (int8, modulo 256) or
XOR (float bits) the base's tensor of the same name, xz-compressed. Fine-tuning moves most int8
entries by a few steps, so the differences compress well (the 6 x 384 Llama v1 against v2:
15.8 -> 10.1 MB). Applying the difference gives the packed tensors bit for bit, and the load
checks the recorded fingerprint as for any packed file. A base may itself be a difference (a
fine-tune of a fine-tune is stored against its parent, the smallest difference), up to
:data:`MAX_DEPTH` models deep. A base is part of every model stored against it: the packed
tensors it rebuilds must never change (the recorded ``base_fingerprint`` is checked at every
load), or those models and their archives stop loading; tests/test_packed_delta.py checks the
shipped ones.

File: ``model.int8.safetensors`` with ``__metadata__`` ``{"format": FORMAT, "engine": id,
"fingerprint": hex}`` (the model's fingerprint under that engine, the one it was packed for);
a packed weight ``K`` is stored as ``K`` (int8, the Hugging Face (out, in) layout) and
``K + PEAK_SUFFIX`` (float32 (out,), exact for float16/bfloat16/float32 sources). This layout is
llmzip's, not Hugging Face's: ``scripts/pack_model.py --unpack`` writes plain float weights.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .linear8 import Q_MAX

FORMAT = "llmzip-int8/1"
PACKED_FILE = "model.int8.safetensors"
# The difference from a base: a safetensors file, xz-compressed, with __metadata__ {"format":
# DELTA_FORMAT, "engine", "fingerprint" (as a packed file's, for the rebuilt model), "base" (the
# base's directory name, a sibling of this model's directory), "base_fingerprint" (the fingerprint
# the base's packed file records)}; tensors as the packed file's, each a difference (delta_state).
DELTA_FORMAT = "llmzip-int8-delta/1"
DELTA_FILE = "model.int8-delta.safetensors.xz"
MAX_DEPTH = 4    # a model, its base, the base's base...: each level costs one more file read at load
PEAK_SUFFIX = ".row_peak"
PACKED_SUFFIXES = ("_proj.weight",)   # Llama-family projections (q, k, v, o, gate, up, down)


class PackingError(ValueError):
    """Weights that cannot be packed, or a packed file that is malformed."""


def is_packable(key: str, array: np.ndarray) -> bool:
    return key.endswith(PACKED_SUFFIXES) and array.ndim == 2


def pack_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 rows, float32 row peaks) of a (out, in) float weight, quantised as the engine does."""
    w = np.asarray(w, dtype=np.float64)
    peak = np.abs(w).max(1)
    if not np.array_equal(peak.astype(np.float32).astype(np.float64), peak):
        raise PackingError("row peaks are not float32 numbers: pack float16, bfloat16 or float32 weights")
    scale = np.where(peak > 0, peak / Q_MAX, 1.0)
    q = np.clip(np.round(w / scale[:, None]), -Q_MAX, Q_MAX).astype(np.int8)
    return q, peak.astype(np.float32)


def unpack_weight(q: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """Float32 weights that :func:`pack_weight` (and the engine) quantise back to ``q``.

    Float32 (half the memory of float64, and a model keeps its weights for rebuilding engines):
    ``q * s`` rounded to float32 is within 2**-23 relative of ``q * s``, which still divides back
    to within 126 * 2**-22 of ``q``; the +-peak entries are float32 numbers exactly."""
    if q.ndim != 2 or peak.shape != (q.shape[0],):
        raise PackingError(f"int8 weight of shape {q.shape} with peaks of shape {peak.shape}")
    peak64 = peak.astype(np.float64)[:, None]
    w = q.astype(np.float64) * np.where(peak64 > 0, peak64 / Q_MAX, 1.0)
    at_peak = np.abs(q.astype(np.int16)) == Q_MAX
    return np.where(at_peak, np.sign(q) * peak64, w).astype(np.float32)


def pack_state(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every packable weight as int8 + peaks; the other tensors as they are."""
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if is_packable(key, value):
            out[key], out[key + PEAK_SUFFIX] = pack_weight(value)
        else:
            out[key] = np.asarray(value)
    return out


def unpack_state(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The float state dict of a packed file's tensors (int8 ones rebuilt from their peaks)."""
    out: dict[str, np.ndarray] = {}
    for key, value in tensors.items():
        if key.endswith(PEAK_SUFFIX):
            if key[: -len(PEAK_SUFFIX)] not in tensors:
                raise PackingError(f"row peaks {key} without their weight")
        elif value.dtype == np.int8:
            if key + PEAK_SUFFIX not in tensors:
                raise PackingError(f"int8 weight {key} without its row peaks")
            out[key] = unpack_weight(value, tensors[key + PEAK_SUFFIX])
        else:
            out[key] = value
    return out


def delta_state(target: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``target``'s packed tensors as differences from ``base``'s (same names, shapes and dtypes):
    int8 ones minus the base's, modulo 256 (small numbers where fine-tuning moved an entry a
    few steps), the others their bits XOR the base's bits."""
    _check_same_layout(target, base)
    return {key: _combine(value, base[key], subtract=True) for key, value in target.items()}


def apply_delta(delta: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The packed tensors :func:`delta_state` took the difference of, bit for bit."""
    _check_same_layout(delta, base)
    return {key: _combine(value, base[key], subtract=False) for key, value in delta.items()}


def _combine(x: np.ndarray, base: np.ndarray, subtract: bool) -> np.ndarray:
    """``x -/+ base`` modulo 256 for int8, ``x ^ base`` on the bits of any other dtype."""
    bits = np.dtype(f"u{x.dtype.itemsize}")
    a, b = np.ascontiguousarray(x).view(bits), np.ascontiguousarray(base).view(bits)
    if x.dtype != np.int8:
        return (a ^ b).view(x.dtype)
    return (a - b if subtract else a + b).view(np.int8)   # uint8 arithmetic wraps: exact inverse


def _check_same_layout(x: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray]) -> None:
    if set(x) != set(base):
        diff = sorted(set(x) ^ set(base))
        raise PackingError(f"the model and its base hold different tensors ({', '.join(diff[:3])}...)")
    for key, value in x.items():
        if value.shape != base[key].shape or value.dtype != base[key].dtype:
            raise PackingError(f"{key}: {value.dtype} {value.shape} against the base's "
                               f"{base[key].dtype} {base[key].shape}")
