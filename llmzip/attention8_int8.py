"""The KV cache of :mod:`llmzip.attention8` held as int8, for the native attention kernel: the same
integers from a quarter of the memory, at several times the speed.

:class:`~llmzip.attention8.KVCache8` holds the quantised keys and values as float32, the layout
numpy's float32 GEMMs need; a decoding step then reads 4 bytes per number (64 rows of the embedded
model, 4 heads of 48, at 128 positions are 12.6 MB per layer and step). :class:`Int8KVCache` holds
them as int8 with their exponents beside them, and the hand-written kernel ``attend8``
(:mod:`llmzip.native`) stores a block's keys and values and attends its queries in one call per
layer, prefill blocks and decoding steps alike. Nothing here is a new arithmetic: every score,
weight and output is the integer :func:`llmzip.attention8.attend` gives (the kernel's probe,
:mod:`llmzip.fused_check`, and the tests compare them). Keys are stored transposed, (head_dim,
positions) per row and head, so the kernel's score loop runs along positions.

Made only while :func:`llmzip.fused.active` (a codec call that runs the kernels) and for contexts of
at most :data:`~llmzip.attention8.SPAN` positions, where the kernel's int32 sums are exact. A cache
made without the kernel (tests) attends by :func:`llmzip.attention8.attend` on a float32 copy of the
positions read: exact, and slow.
"""

from __future__ import annotations

import numpy as np

from . import attention8, fused
from .attention8 import KVCache8, grown_capacity, quantize_vectors


class Int8KVCache:
    """Keys and values of every layer as int8 vectors with one exponent each.

    ``keys_t[l]``: int8 (rows, heads, head_dim, capacity), ``q_k`` transposed; ``key_exp[l]``: int32
    (rows, heads, capacity), ``e_k - score_shift``. ``values[l]``: int8 (rows, heads, capacity,
    head_dim), ``q_v``; ``value_exp[l]``: int32 ``e_v``, and ``value_max[l]`` its running maximum
    along positions. Capacity grows by doubling as in :class:`~llmzip.attention8.KVCache8`.
    """

    def __init__(self, n_layer: int, rows: int, n_head: int, capacity: int, head_dim: int) -> None:
        self.limit = capacity
        held = min(capacity, attention8.FIRST_CAPACITY)
        self.keys_t = [np.zeros((rows, n_head, head_dim, held), np.int8) for _ in range(n_layer)]
        self.values = [np.zeros((rows, n_head, held, head_dim), np.int8) for _ in range(n_layer)]
        self.key_exp = [np.zeros((rows, n_head, held), np.int32) for _ in range(n_layer)]
        self.value_exp = [np.zeros((rows, n_head, held), np.int32) for _ in range(n_layer)]
        self.value_max = [np.zeros((rows, n_head, held), np.int32) for _ in range(n_layer)]
        self.length = 0
        # Chosen once: a cache made for the kernel keeps it even if a later call turns the flag off.
        self.native = fused.active()

    @property
    def rows(self) -> int:
        return self.values[0].shape[0]

    @property
    def held(self) -> int:
        return self.values[0].shape[2]

    def reserve(self, end: int) -> None:
        """Make room for positions up to ``end`` (at most the capacity given at construction)."""
        size = grown_capacity(self.held, end, self.limit)
        if size == self.held:
            return
        self.keys_t = [_grown(a, -1, size) for a in self.keys_t]
        self.values = [_grown(a, 2, size) for a in self.values]
        for arrays in (self.key_exp, self.value_exp, self.value_max):
            arrays[:] = [_grown(a, 2, size) for a in arrays]

    def keep(self, rows: np.ndarray) -> None:
        """Drop every row not listed in ``rows`` (e.g. chunks that have ended)."""
        for arrays in (self.keys_t, self.values, self.key_exp, self.value_exp, self.value_max):
            arrays[:] = [a[rows] for a in arrays]

    def store(self, layer: int, k: np.ndarray, v: np.ndarray, start: int, score_shift: int) -> None:
        """:func:`llmzip.attention8.store`'s numbers for keys and values (rows, kv_heads, T, hd) at
        positions ``start``..., kept as int8 and exponents, with the running maximum of the value
        exponents."""
        k8, ek = quantize_vectors(k)
        v8, ev = quantize_vectors(v)
        end = start + k8.shape[2]
        self.reserve(end)
        self.keys_t[layer][..., start:end] = k8.swapaxes(-1, -2)
        self.key_exp[layer][..., start:end] = ek - score_shift
        self.values[layer][:, :, start:end] = v8
        self.value_exp[layer][..., start:end] = ev
        running = np.maximum.accumulate(ev, axis=-1)
        if start:
            np.maximum(running, self.value_max[layer][..., start - 1 : start], out=running)
        self.value_max[layer][..., start:end] = running

    def attend_new(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, layer: int, start: int, scale: int,
                   score_shift: int) -> np.ndarray:
        """Store keys and values (rows, kv_heads, T, hd) at ``start``..., then attend with ``q * scale``
        (rows, H, T, hd): by the native kernel in one call, else by :meth:`store` and :meth:`attend`."""
        end = start + k.shape[2]
        if not self.native or end > attention8.SPAN:
            self.store(layer, k, v, start, score_shift)
            return self.attend(q * scale, layer, start)
        self.reserve(end)
        return fused.kernel("attend8")(q, k, v, scale, score_shift, start, self, layer, attention8._weight_table())

    def attend(self, q: np.ndarray, layer: int, start: int) -> np.ndarray:
        """:func:`llmzip.attention8.attend` of queries (rows, H, T, hd) at positions ``start``..., over a
        float32 copy of the positions read (the reference's path)."""
        return attention8.attend(q, self.as_float32(layer, start + q.shape[2]), 0, start)

    def as_float32(self, layer: int, end: int) -> KVCache8:
        """Positions ``0..end - 1`` of one layer as the one-layer float32 cache numpy's attention reads."""
        rows, heads, head_dim, _ = self.keys_t[layer].shape
        cache = KVCache8(1, rows, heads, self.limit, head_dim)
        cache.reserve(end)
        keys = self.keys_t[layer][..., :end].swapaxes(-1, -2).astype(np.float32)
        cache.keys[0][:, :, :end] = np.ldexp(keys, self.key_exp[layer][..., :end, None])
        cache.values[0][:, :, :end] = self.values[layer][:, :, :end]
        cache.value_exp[0][:, :, :end] = self.value_exp[layer][..., :end]
        cache.value_max[0][:, :, :end] = self.value_max[layer][..., :end]
        cache.length = end
        return cache


def _grown(a: np.ndarray, axis: int, size: int) -> np.ndarray:
    """``a`` zero-padded along ``axis`` to ``size``."""
    shape = list(a.shape)
    shape[axis] = size
    grown = np.zeros(shape, dtype=a.dtype)
    index = [slice(None)] * a.ndim
    index[axis] = slice(0, a.shape[axis])
    grown[tuple(index)] = a
    return grown
