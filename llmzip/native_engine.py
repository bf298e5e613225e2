"""The exact engine's hand-written C kernels (:mod:`llmzip.native`), called with numpy arrays:
attention over int8 caches, linear layers, norms and activations, the output head's tables.

Each class binds one C function; each checks what the C code assumes and cannot check itself
(shapes, dtypes, layouts) and raises ValueError otherwise. The arrays a kernel reads at every call
(weights, tables, caches) are checked once and their addresses kept (:class:`~llmzip.native_bind.Pinned`).
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from .native_bind import F64, I64, PTR, Bound, Pinned, address_of, function

_EPILOGUE_ARGTYPES = (PTR, I64, PTR, I64)   # a layer's epilogue: residual, clip, activation table, its limit


class Attend8(Bound):
    """``llmzip_attend8`` of a loaded library, called with numpy arrays."""

    symbol = "llmzip_attend8"
    argtypes = ((I64,) * 4 + (PTR, I64, PTR, PTR, I64) + (PTR,) * 5 + (I64,) * 3 + (PTR, I64, PTR)
                + (ctypes.POINTER(I64),))

    def __init__(self, lib: ctypes.CDLL) -> None:
        super().__init__(lib)
        self._int8, self._int32 = Pinned(address_of(np.int8, writeable=True)), Pinned(address_of(np.int32, writeable=True))
        self._table = Pinned(address_of(np.int32))

    def __call__(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: int, score_shift: int, start: int,
                 cache: Any, layer: int, table: np.ndarray) -> np.ndarray:
        """Store keys and values (rows, kv_heads, T, hd) into layer ``layer`` of ``cache`` (an
        :class:`~llmzip.attention8_int8.Int8KVCache` with room for ``start + T`` positions) at ``start``...,
        then attend with ``q * scale`` (rows, H, T, hd); int64 (rows, H, T, hd), a transposed view of
        a C-contiguous (rows, T, H, hd) array. The inputs may be views (e.g. transposed slices of
        one (rows, T, 3, H, hd) array): read in place where their last axis is contiguous."""
        (q, qs), (k, ks), (v, vs) = (_strided(a) for a in (q, k, v))
        rows, heads, t, hd = q.shape
        keys_t, key_exp, values = cache.keys_t[layer], cache.key_exp[layer], cache.values[layer]
        value_exp, value_max = cache.value_exp[layer], cache.value_max[layer]
        kv, capacity = k.shape[1], values.shape[2]
        if not (k.shape == v.shape == (rows, kv, t, hd) and keys_t.shape == (rows, kv, hd, capacity)
                and values.shape == (rows, kv, capacity, hd)
                and key_exp.shape == value_exp.shape == value_max.shape == (rows, kv, capacity) and table.ndim == 1):
            raise ValueError("attend8: arrays of unexpected shapes")
        out = np.empty((rows, t, heads, hd), dtype=np.int64).transpose(0, 2, 1, 3)
        strides = (I64 * 12)(*qs, *ks, *vs, *(st // 8 for st in out.strides[:3]))
        code = self._fn(rows, heads, t, start, q.ctypes.data, scale, k.ctypes.data, v.ctypes.data, score_shift,
                        self._int8(keys_t), self._int32(key_exp), self._int8(values), self._int32(value_exp),
                        self._int32(value_max), kv, hd, capacity, self._table(table), len(table), out.ctypes.data,
                        strides)
        if code:
            raise MemoryError("attend8: out of memory") if code == -1 else ValueError("attend8: sizes out of range")
        return out


def _strided(a: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """A 4-D int64 array whose last axis is contiguous (``a`` itself where it is one, else a copy), and
    its first three strides in elements."""
    if (a.dtype != np.int64 or a.ndim != 4 or a.strides[-1] != 8 or not a.flags.aligned
            or any(st < 0 or st % 8 for st in a.strides)):
        a = np.ascontiguousarray(a, dtype=np.int64)
        if a.ndim != 4:
            raise ValueError("attend8: arrays (rows, heads, T, hd) expected")
    return a, tuple(st // 8 for st in a.strides[:3])


class Linear8Native(Bound):
    """``llmzip_linear8``: :meth:`llmzip.linear8.Linear8.__call__` (int64) or ``float_out`` (float64) of
    int64 rows (n, k). Only where ``vectorised`` (a library built with AVX-512 VNNI; elsewhere torch's
    GEMM serves). Each layer's weights are packed for the library once, at their first call."""

    symbol = "llmzip_linear8"
    argtypes = (I64,) * 3 + (PTR,) * 4 + (I64, PTR) + _EPILOGUE_ARGTYPES

    def __init__(self, lib: ctypes.CDLL) -> None:
        super().__init__(lib)
        self.vectorised = bool(function(lib, "llmzip_linear8_packed", I64, ())())
        self._size = function(lib, "llmzip_linear8_packed_size", I64, (I64, I64))
        self._pack = function(lib, "llmzip_linear8_pack", None, (I64, I64, PTR, PTR))
        self._layers = Pinned(self._packed)
        self._floats, self._tables = Pinned(address_of(np.float64)), Pinned(address_of(np.int64))

    def _packed(self, w: np.ndarray) -> tuple[np.ndarray, int]:
        """The int8 weights (k, n) packed as the library reads them, and the address of the copy."""
        if w.dtype != np.int8 or w.ndim != 2 or not w.flags.c_contiguous:
            raise ValueError("linear8: C-contiguous int8 weights (in, out) expected")
        packed = np.empty(self._size(*w.shape), dtype=np.int8)
        self._pack(*w.shape, w.ctypes.data, packed.ctypes.data)
        return packed, int(packed.ctypes.data)

    def __call__(self, x: np.ndarray, w: np.ndarray, factor: np.ndarray, bias: np.ndarray, as_float: bool = False,
                 residual: np.ndarray | None = None, clip: int = -1,
                 activation: tuple[np.ndarray, int] | None = None) -> np.ndarray:
        """The layer of ``x``: ``w`` its int8 weights (k, n), ``factor`` and ``bias`` float64 (n,)
        (:meth:`llmzip.linear8.Linear8.kernel_args`); float64 if ``as_float``, else int64 followed,
        in the same pass, by ``+ residual`` (rows, n), the clip to ``+-clip`` (if >= 0) and the
        ``activation`` table's lookup (its table and limit, :func:`llmzip.fixedpoint.activation_values`)."""
        x = np.ascontiguousarray(x, dtype=np.int64)
        k, n = w.shape
        if x.ndim != 2 or x.shape[1] != k or factor.shape != (n,) or bias.shape != (n,):
            raise ValueError("linear8: arrays of unexpected shapes")
        out = np.empty((len(x), n), dtype=np.float64 if as_float else np.int64)
        residual, after = _epilogue_args("linear8", out, residual, clip, activation, self._tables)
        packed, packed_at = self._layers(w)     # packed: held for the call (the C code reads it)
        code = self._fn(len(x), k, n, x.ctypes.data, packed_at, self._floats(factor), self._floats(bias),
                        int(as_float), out.ctypes.data, *after)
        if code:
            raise MemoryError("linear8: out of memory") if code == -1 else ValueError(
                "linear8: arguments out of range" if code == -2 else "linear8: this library has no linear layer (no VNNI)")
        return out


class Epilogue(Bound):
    """``llmzip_epilogue``: what :class:`Linear8Native` does after a layer, alone, in place over int64
    outputs (rows, n) another kernel computed: ``+ residual``, the clip, the activation table."""

    symbol = "llmzip_epilogue"
    argtypes = (I64, I64, PTR) + _EPILOGUE_ARGTYPES

    def __init__(self, lib: ctypes.CDLL) -> None:
        super().__init__(lib)
        self._tables = Pinned(address_of(np.int64))

    def __call__(self, y: np.ndarray, residual: np.ndarray | None = None, clip: int = -1,
                 activation: tuple[np.ndarray, int] | None = None) -> np.ndarray:
        if y.dtype != np.int64 or y.ndim != 2 or not y.flags.c_contiguous or not y.flags.writeable:
            raise ValueError("epilogue: C-contiguous writeable int64 outputs (rows, n) expected")
        residual, after = _epilogue_args("epilogue", y, residual, clip, activation, self._tables)
        if self._fn(*y.shape, y.ctypes.data, *after):
            raise ValueError("epilogue: arguments out of range")
        return y


def _epilogue_args(name: str, out: np.ndarray, residual: np.ndarray | None, clip: int,
                   activation: tuple[np.ndarray, int] | None, tables: Pinned) -> tuple[np.ndarray | None, tuple[Any, ...]]:
    """The residual as the C code reads it (contiguous int64 of ``out``'s shape, apart from ``out``'s
    memory; held by the caller for the call) and the epilogue's C arguments (_EPILOGUE_ARGTYPES)."""
    if residual is not None:
        residual = np.ascontiguousarray(residual, dtype=np.int64)
        if residual.shape != out.shape:
            raise ValueError(f"{name}: a residual of unexpected shape")
        if np.shares_memory(residual, out):     # the C code reads it as memory apart from the outputs
            residual = residual.copy()
    table, limit = activation if activation is not None else (None, 0)
    if table is not None and table.shape != (2 * limit + 1,):
        raise ValueError(f"{name}: an activation table of 2 * limit + 1 entries expected")
    return residual, (None if residual is None else residual.ctypes.data, clip,
                      None if table is None else tables(table), limit)


class Norm(Bound):
    """``llmzip_norm``: ``engine.common.LayerNorm`` (``centre``) or ``RMSNorm`` (``beta`` zeros) of int64
    rows (n, d), the clip included; None where a row needs numpy (its shifts out of the kernel's range)."""

    symbol = "llmzip_norm"
    argtypes = (I64, I64, PTR, I64, I64, F64, I64, I64, PTR, I64, PTR, I64, PTR)

    def __init__(self, lib: ctypes.CDLL) -> None:
        super().__init__(lib)
        self._ints = Pinned(address_of(np.int64))

    def __call__(self, x: np.ndarray, centre: bool, square_bits: int, eps: float, in_frac: int, out_frac: int,
                 gamma: np.ndarray, gamma_frac: int, beta: np.ndarray, clip: int) -> np.ndarray | None:
        x = np.ascontiguousarray(x, dtype=np.int64)
        if x.ndim != 2 or not gamma.shape == beta.shape == (x.shape[1],):
            raise ValueError("norm: rows (n, d) and gamma, beta (d,) expected")
        out = np.empty(x.shape, dtype=np.int64)
        code = self._fn(*x.shape, x.ctypes.data, int(centre), square_bits, eps, in_frac, out_frac, self._ints(gamma),
                        gamma_frac, self._ints(beta), clip, out.ctypes.data)
        if code < 0:
            raise ValueError("norm: arguments out of range")
        return None if code else out


class Activation(Bound):
    """``llmzip_activation``: :func:`llmzip.fixedpoint.activation_lookup` of int64 ``u`` by its table
    (2 * limit + 1 int64 entries)."""

    symbol = "llmzip_activation"
    restype = None
    argtypes = (I64, PTR, PTR, I64, PTR)

    def __init__(self, lib: ctypes.CDLL) -> None:
        super().__init__(lib)
        self._tables = Pinned(address_of(np.int64))

    def __call__(self, u: np.ndarray, table: np.ndarray, limit: int) -> np.ndarray:
        u = np.ascontiguousarray(u, dtype=np.int64)
        if table.shape != (2 * limit + 1,):
            raise ValueError("activation: a table of 2 * limit + 1 entries expected")
        out = np.empty(u.shape, dtype=np.int64)
        self._fn(u.size, u.ctypes.data, self._tables(table), limit, out.ctypes.data)
        return out


class Swiglu(Bound):
    """``llmzip_swiglu``: ``engine.llama.swiglu`` of int64 ``gate_up`` (..., 2 * inner), SiLU by its table."""

    symbol = "llmzip_swiglu"
    argtypes = (I64, I64, PTR, PTR, I64, I64, I64, PTR)

    def __init__(self, lib: ctypes.CDLL) -> None:
        super().__init__(lib)
        self._tables = Pinned(address_of(np.int64))

    def __call__(self, gate_up: np.ndarray, table: np.ndarray, limit: int, clip: int, frac: int) -> np.ndarray:
        gate_up = np.ascontiguousarray(gate_up, dtype=np.int64)
        if gate_up.shape[-1] % 2 or table.shape != (2 * limit + 1,):
            raise ValueError("swiglu: an even last axis and a table of 2 * limit + 1 entries expected")
        inner = gate_up.shape[-1] // 2
        out = np.empty(gate_up.shape[:-1] + (inner,), dtype=np.int64)
        if self._fn(gate_up.size // (2 * inner), inner, gate_up.ctypes.data, self._tables(table), limit, clip, frac,
                    out.ctypes.data):
            raise ValueError("swiglu: clip or shift out of range")
        return out


class QuantizeRows(Bound):
    """``llmzip_quantize_rows``: :func:`llmzip.linear8.quantize_rows` of int64 rows (n, k)."""

    symbol = "llmzip_quantize_rows"
    restype = None
    argtypes = (I64, I64, PTR, PTR, PTR)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.int64)
        if x.ndim != 2:
            raise ValueError("quantize_rows: rows (n, k) expected")
        q, e = np.empty(x.shape, dtype=np.int8), np.empty(len(x), dtype=np.int64)
        self._fn(x.shape[0], x.shape[1], x.ctypes.data, q.ctypes.data, e.ctypes.data)
        return q, e


class HeadTables(Bound):
    """``llmzip_head_tables``: coding tables (rows, V) into ``out`` from the head's int32 products."""

    symbol = "llmzip_head_tables"
    argtypes = (I64, I64, PTR, PTR, PTR, PTR, PTR, I64, F64, F64, PTR, PTR)

    def __call__(self, acc: np.ndarray, shift: np.ndarray, factor: np.ndarray, bias: np.ndarray,
                 table: np.ndarray, clip: float, scale: float, out: np.ndarray) -> np.ndarray:
        """``acc`` int32 (rows, V) and ``shift`` int64 (rows,): the GEMM's products and each row's
        quantisation shift; ``factor``/``bias`` float64 (V,); ``table`` int32, the exp table;
        ``out`` int32 (rows, V), C-contiguous and writeable."""
        rows, vocab = acc.shape
        acc, shift = np.ascontiguousarray(acc), np.ascontiguousarray(shift, dtype=np.int64)
        factor, bias, table = (np.ascontiguousarray(a) for a in (factor, bias, table))
        fits = (acc.dtype == np.int32 and shift.shape == (rows,) and factor.shape == bias.shape == (vocab,)
                and factor.dtype == bias.dtype == np.float64 and table.dtype == np.int32 and table.ndim == 1
                and out.shape == acc.shape and out.dtype == np.int32 and out.flags.c_contiguous and out.flags.writeable)
        if not fits:
            raise ValueError("head_tables: arrays of unexpected shapes, dtypes or layouts")
        logits = np.empty(vocab, dtype=np.int32)
        if self._fn(rows, vocab, acc.ctypes.data, shift.ctypes.data, factor.ctypes.data, bias.ctypes.data,
                    table.ctypes.data, len(table), clip, scale, logits.ctypes.data, out.ctypes.data):
            raise ValueError("head_tables: shifts or clip out of range")
        return out


class DivideRows(Bound):
    """``llmzip_divide_rows``: the attention kernel's last step alone, for the probe: ``floor((2 * (num
    << top) + den) / (2 * den))`` of int32 ``num`` (R, hd) with int32 ``top`` and int64 ``den`` (R,)."""

    symbol = "llmzip_divide_rows"
    restype = None
    argtypes = (I64, I64, PTR, PTR, PTR, PTR)

    def __call__(self, num: np.ndarray, top: np.ndarray, den: np.ndarray) -> np.ndarray:
        num = np.ascontiguousarray(num, dtype=np.int32)
        top, den = np.ascontiguousarray(top, dtype=np.int32), np.ascontiguousarray(den, dtype=np.int64)
        if num.ndim != 2 or not top.shape == den.shape == (len(num),) or (den < 1).any() or (top < 0).any() or (top > 62).any():
            raise ValueError("divide_rows: rows (R, hd), tops in [0, 62] and positive denominators (R,) expected")
        out = np.empty(num.shape, dtype=np.int64)
        self._fn(num.shape[0], num.shape[1], num.ctypes.data, top.ctypes.data, den.ctypes.data, out.ctypes.data)
        return out
