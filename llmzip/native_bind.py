"""Binding the hand-written C kernels (:mod:`llmzip.native`) with ``ctypes``: one class per C
function, and the addresses of the arrays they read at every call taken once.

A ``ctypes`` call costs ~2 us, and numpy's ``.ctypes.data`` ~2 us per array: a small kernel (a
linear layer of a decoding step, ~15 us of C) would spend half its time on its arguments. So the
arrays a kernel reads again and again (weights, tables, KV caches) are checked and have their
address taken once (:class:`Pinned`), and only the per-call inputs and outputs pay for theirs
(measured, one core: 17 rows of a 192 -> 576 layer took 18 us in C, 36 us through ``ctypes``
with six ``.ctypes.data``, 41 us with the binding's checks besides).
"""

from __future__ import annotations

import ctypes
import weakref
from typing import Any, Callable

import numpy as np

I64, PTR, F64 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_double


def function(lib: ctypes.CDLL, symbol: str, restype: Any, argtypes: tuple[Any, ...]) -> Any:
    """The C function ``symbol`` of ``lib`` with its result and argument types."""
    fn = getattr(lib, symbol)
    fn.restype, fn.argtypes = restype, list(argtypes)
    return fn


class Bound:
    """One C function of the library, bound with its result and argument types (class attributes)."""

    symbol: str
    restype: Any = I64
    argtypes: tuple[Any, ...]

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._fn = function(lib, self.symbol, self.restype, self.argtypes)


class Pinned:
    """What a kernel derives once from an array it reads at every call (its address, a packed copy),
    by the array's identity, shape and dtype. An entry lives as long as its array (a weak reference
    drops it when the array goes), so a dropped KV cache or an unloaded model's weights are freed as
    before. The arrays must not be written while pinned where the derived value copies them."""

    def __init__(self, derive: Callable[[np.ndarray], Any]) -> None:
        self._derive = derive
        self._held: dict[int, tuple[weakref.ref[np.ndarray], tuple[int, ...], np.dtype[Any], Any]] = {}

    def __call__(self, a: np.ndarray) -> Any:
        hit = self._held.get(id(a))
        if hit is None or hit[0]() is not a or hit[1] != a.shape or hit[2] != a.dtype:
            key, held = id(a), self._held
            hit = (weakref.ref(a, lambda _: held.pop(key, None)), a.shape, a.dtype, self._derive(a))
            held[key] = hit
        return hit[3]


def address_of(dtype: type, writeable: bool = False) -> Callable[[np.ndarray], int]:
    """The address of a C-contiguous array of ``dtype`` (ValueError for any other: the C code reads
    it as such), for :class:`Pinned`."""
    def address(a: np.ndarray) -> int:
        if a.dtype != dtype or not a.flags.c_contiguous or (writeable and not a.flags.writeable):
            raise ValueError(f"an array of unexpected dtype or layout (a C-contiguous{' writeable' if writeable else ''} "
                             f"{np.dtype(dtype).name} array expected)")
        return int(a.ctypes.data)
    return address
