"""The engine versions: one frozen entry per arithmetic, named by the archive's "engine" byte.

Like zstd's legacy decoders, an entry is never edited once archives name it: a change of
arithmetic (a rounding, a table, a fixed-point format) is a new entry beside the old ones,
and each architecture writes the newest entry that lists it. The architectures ask their
entry for its parts (how to quantise a linear layer, which attention) instead of comparing
version numbers, so a new entry inherits nothing by accident.

An entry's arithmetic is more than the parts it lists: it includes the constants and tables its
architecture modules compute with. Engine 4 is also ``llama.MAX_CONTEXT``, ``llama.GATE_CLIP``,
``rope.ROPE_FRAC`` and the decimal rotary tables, the SiLU table (``fixedpoint.SILU_HALF_RANGE``,
cells of 2**-6) and its interpolation, ``fixedpoint.rms_norm`` and the fixed-point formats of
:mod:`.common` (tests/test_engine4_pins.py pins them by value). Those belong to engine 4: changing
any of them is a new entry, with engine 4 keeping the old ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from .. import attention8, fused
from ..attention8_int8 import Int8KVCache
from ..errors import UnsupportedFormatError
from ..linear8 import check_linear8, quantize_linear8
from .common import SCORE_SHIFT
from .legacy import Float64Attention, check_linear16, quantize_linear16


class LinearLayer(Protocol):
    """An exact integer affine map (:class:`~llmzip.linear8.Linear8` or :class:`.legacy.Linear16`)."""

    w: np.ndarray   # (in, out) integer weights

    def __call__(self, x: np.ndarray) -> np.ndarray: ...
    def float_out(self, x: np.ndarray) -> np.ndarray: ...
    def integer_arrays(self) -> list[np.ndarray]: ...

    def added(self, x: np.ndarray, residual: np.ndarray, clip: int) -> np.ndarray:
        """``clip(residual + self(x), +-clip)``: the layer and the residual connection after it."""

    def activated(self, x: np.ndarray, clip: int, kind: str, frac_bits: int) -> np.ndarray:
        """``activation_lookup(clip(self(x), +-clip), kind, frac_bits)``: the layer and its activation."""


class KVCache(Protocol):
    """Keys and values of the positions seen so far, for ``rows`` independent sequences."""

    length: int   # positions held (the next forward pass starts there)

    @property
    def rows(self) -> int: ...
    def reserve(self, end: int) -> None:
        """Make room for positions up to ``end``; ValueError beyond the capacity."""
    def keep(self, rows: np.ndarray) -> None:
        """Keep only the listed rows, in that order."""


class Attention(Protocol):
    """Causal attention arithmetic: its KV cache type, its exactness bounds, and the computation."""

    cache: Any   # the KVCache class whose .bytes_per_row(n_layer, kv_heads, capacity, head_dim) sizes groups

    def new_cache(self, n_layer: int, rows: int, kv_heads: int, capacity: int, head_dim: int) -> Any:
        """An empty KV cache for this arithmetic (its layout may depend on the call: decoding, kernels)."""

    def check_bounds(self, head_dim: int, n_ctx: int) -> None: ...

    def __call__(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, cache: Any, layer: int, start: int,
                 scale: int) -> np.ndarray: ...


class Int8Attention:
    """Engines 3 and later: :mod:`llmzip.attention8` (int8 KV cache, grouped key/value heads)."""

    cache = attention8.KVCache8

    @staticmethod
    def new_cache(n_layer: int, rows: int, kv_heads: int, capacity: int, head_dim: int) -> Any:
        """The float32 cache numpy's GEMMs read, or while the kernels run (:func:`llmzip.fused.active`)
        and for up to SPAN positions the int8 one the native attention reads: the same integers."""
        native = fused.active() and capacity <= attention8.SPAN
        return (Int8KVCache if native else attention8.KVCache8)(n_layer, rows, kv_heads, capacity, head_dim)

    @staticmethod
    def check_bounds(head_dim: int, n_ctx: int) -> None:
        attention8.check_bounds(head_dim)

    @staticmethod
    def __call__(q: np.ndarray, k: np.ndarray, v: np.ndarray, cache: attention8.KVCache8 | Int8KVCache, layer: int,
                 start: int, scale: int) -> np.ndarray:
        """Store k, v (rows, kv_heads, T, hd); attend with ``q * scale`` (rows, H, T, hd); int64 (rows, H, T, hd)."""
        return cache.attend_new(q, k, v, layer, start, scale, SCORE_SHIFT)   # |q * scale| < 2**20 * 2**16


@dataclass(frozen=True)
class EngineVersion:
    """One arithmetic version of the exact engine."""

    engine_id: int
    architectures: frozenset[str]                      # the architecture modules that implement it
    quantize_linear: Callable[[Any, Any, int, int], LinearLayer]
    check_linear: Callable[[int], None]                # raises unless a layer of that fan-in is exact
    attention: Attention
    int8_gemm: bool                                    # its linear layers use llmzip.linear8's GEMM backend
    summary: str


ENGINES: Mapping[int, EngineVersion] = MappingProxyType({e.engine_id: e for e in (
    EngineVersion(1, frozenset({"gpt2"}), quantize_linear16, check_linear16, Float64Attention(), False,
                  "16-bit weights, float64 GEMMs"),
    EngineVersion(2, frozenset({"gpt2"}), quantize_linear8, check_linear8, Float64Attention(), True,
                  "int8 weights and activations, float64 attention"),
    EngineVersion(3, frozenset({"gpt2"}), quantize_linear8, check_linear8, Int8Attention(), True,
                  "int8 weights and activations, int8 attention and KV cache"),
    EngineVersion(4, frozenset({"llama"}), quantize_linear8, check_linear8, Int8Attention(), True,
                  "engine 3's arithmetic with RMSNorm, rotary positions, SiLU and grouped key/value heads"),
)})


def newest_engine(architecture: str) -> int:
    """The engine id a model of ``architecture`` writes: the newest entry that lists it."""
    return max(i for i, e in ENGINES.items() if architecture in e.architectures)


def engine_version(engine_id: int, architecture: str) -> EngineVersion:
    """The entry ``engine_id`` for a model of ``architecture``.

    Raises:
        UnsupportedFormatError: this build does not know ``engine_id`` (an upgrade may), or the
            engine does not run this architecture.
    """
    if engine_id > max(ENGINES):
        raise UnsupportedFormatError(f"inference engine {engine_id} is newer than this llmzip "
                                     f"(it knows {min(ENGINES)}-{max(ENGINES)}): upgrade llmzip")
    entry = ENGINES.get(engine_id)
    if entry is None:
        raise UnsupportedFormatError(f"unknown inference engine {engine_id}")
    if architecture not in entry.architectures:
        raise UnsupportedFormatError(f"inference engine {engine_id} does not run {architecture} models")
    return entry
