"""8-bit attention for the exact engine, engines 3 and later.

Decoding is bound by reading the KV cache: at every step each row reads all its earlier keys
and values. This arithmetic quantises them to int8 with a power-of-two exponent per vector and
computes both attention products as float32 GEMMs on small integers, which are exact in any
summation order. The cache holds them as those float32 numbers (converted once, when stored,
rather than at every step):

* query (already multiplied by ``round(2**16 / sqrt(head_dim))``), key and value vectors are
  quantised per (row, head, position) by :func:`llmzip.linear8.quantize_rows`: ``x ~ q * 2**e``
  with ``|q| <= 127``;
* scores: ``dot = q_q . q_k`` is an integer with ``|dot| <= head_dim * 127**2 < 2**24``, so a
  float32 GEMM computes it exactly; ``round(dot * 2**(e_q + e_k - 32))`` (1/256 nat) is exact
  in float64 (a power-of-two multiple of a 21-bit integer, plus 1/2);
* weights ``w = round(2**15 * exp(score - max))`` from an exact table;
* values of a position ``s`` enter with ``w_s >> (E - e_s)``, where ``E`` is the largest value
  exponent among the positions the query sees (a running maximum, so a full pass and an
  incremental pass agree). Those weights are split into bytes, ``w = 256 * hi + lo``, and
  ``hi @ q_v`` and ``lo @ q_v`` are float32 GEMMs over at most :data:`SPAN` positions each,
  every sum below ``255 * 127 * 512 < 2**24``: exact;
* the output is ``round(2**E * (256 * HI + LO) / sum(w))`` in int64.

Masked positions get weight exactly 0, so every query's result depends only on its prefix.
Grouped-query attention (fewer key/value heads than query heads) runs the query heads that share
a key/value head as extra query rows of that head: every number is the same as with one key/value
head per query head holding copies.
"""

from __future__ import annotations

import functools

import numpy as np

from . import fused
from .fixedpoint import exp_table
from .linear8 import Q_MAX, quantize_rows

ATT_FRAC = 8             # attention scores: 1/256 nat
ATT_WEIGHT_BITS = 15     # attention weights: exp(0) == 2**15 (high byte <= 128)
FIRST_CAPACITY = 64      # positions a new KV cache has room for before it grows (memory only)
SPAN = 512               # positions per value GEMM: 255 * 127 * 512 < 2**24 keeps float32 exact
# Query rows per key/value head from which the value product is one float64 GEMM rather than two
# float32 ones on the weights' bytes (one core: 3 rows 259 vs 126 us, 12 rows 183 vs 204 us,
# 192 rows 300 vs 489 us; same integers either way).
FLOAT64_VALUE_ROWS = 12
ATTEND_BUDGET = 1 << 22  # entries of the largest (rows, heads, T, S) temporary (speed/memory only)
# The same for one call of the fused kernel, whose temporaries then stay in a core's cache: 2-4 rows
# of an encoder's block (6 heads, 35 positions, 235 keys) ran 9-13 % faster than 11 at once.
FUSED_ATTEND_BUDGET = 1 << 18
# Score of a masked (future) position: far below every real score (|score| < 2**37: quantised
# queries below 2**37, keys below 2**21, at most 2**11 terms, over 2**32), and its gap to the
# row's maximum still fits an int64.
MASKED = -float(2**62)


def check_bounds(head_dim: int) -> None:
    """Raise ValueError unless the float32 score GEMM is exact for this head size."""
    if head_dim * Q_MAX * Q_MAX >= 2**24:
        raise ValueError(f"attention scores: head_dim {head_dim} too large for exact float32 sums")


class KVCache8:
    """Keys and values of every layer, quantised to int8 vectors with one exponent each, held as
    the float32 numbers the attention GEMMs read (every int8 value times a power of two is exact
    in float32), so a decoding step never converts the prefix again.

    ``keys[l]``: float32 (rows, heads, capacity, head_dim), ``q_k * 2**(e_k - score_shift)``.
    ``values[l]``: float32 (rows, heads, capacity, head_dim), ``q_v``. ``value_exp[l]``: int64
    (rows, heads, capacity), ``e_v``, and ``value_max[l]`` its running maximum along positions.

    The arrays start with room for :data:`FIRST_CAPACITY` positions and double as positions are
    stored, up to ``capacity``: a chunk shorter than the model's context holds no more than it needs.
    """

    def __init__(self, n_layer: int, rows: int, n_head: int, capacity: int, head_dim: int) -> None:
        self.limit = capacity
        shape = (rows, n_head, min(capacity, FIRST_CAPACITY))
        self.keys = [np.zeros(shape + (head_dim,), dtype=np.float32) for _ in range(n_layer)]
        self.values = [np.zeros(shape + (head_dim,), dtype=np.float32) for _ in range(n_layer)]
        self.value_exp = [np.zeros(shape, dtype=np.int64) for _ in range(n_layer)]
        self.value_max = [np.zeros(shape, dtype=np.int64) for _ in range(n_layer)]
        self.length = 0

    def reserve(self, end: int) -> None:
        """Make room for positions up to ``end`` (at most the capacity given at construction)."""
        held = self.keys[0].shape[2]
        size = grown_capacity(held, end, self.limit)
        if size == held:
            return
        for arrays in (self.keys, self.values, self.value_exp, self.value_max):
            for i, a in enumerate(arrays):
                grown = np.zeros(a.shape[:2] + (size,) + a.shape[3:], dtype=a.dtype)
                grown[:, :, :held] = a
                arrays[i] = grown

    @staticmethod
    def bytes_per_row(n_layer: int, n_head: int, capacity: int, head_dim: int) -> int:
        """The cache size by which the codec sizes its groups (``codec.default_group``), so part of
        the archive format: int8 keys and values and three 8-byte numbers per (head, position).
        Never change it. The arrays held are larger (:meth:`held_bytes_per_row`)."""
        return n_layer * n_head * capacity * (2 * head_dim + 24)

    @staticmethod
    def held_bytes_per_row(n_layer: int, n_head: int, capacity: int, head_dim: int) -> int:
        """Bytes one row of this cache really holds: float32 keys and values, two int64 numbers per
        (head, position)."""
        return n_layer * n_head * capacity * (8 * head_dim + 16)

    @property
    def rows(self) -> int:
        return self.keys[0].shape[0]

    def keep(self, rows: np.ndarray) -> None:
        """Drop every row not listed in ``rows`` (e.g. chunks that have ended)."""
        for arrays in (self.keys, self.values, self.value_exp, self.value_max):
            arrays[:] = [a[rows] for a in arrays]

    def store(self, layer: int, k: np.ndarray, v: np.ndarray, start: int, score_shift: int) -> None:
        """:func:`store` into this cache."""
        store(self, layer, k, v, start, score_shift)

    def attend(self, q: np.ndarray, layer: int, start: int) -> np.ndarray:
        """:func:`attend` over this cache."""
        return attend(q, self, layer, start)

    def attend_new(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, layer: int, start: int, scale: int,
                   score_shift: int) -> np.ndarray:
        """Store keys and values (rows, kv_heads, T, hd) at ``start``..., then attend with ``q * scale``."""
        store(self, layer, k, v, start, score_shift)
        return attend(q * scale, self, layer, start)


def grown_capacity(held: int, end: int, limit: int) -> int:
    """Positions a KV cache holding ``held`` should hold to store up to ``end``: ``held`` if that is
    enough, else double (at least ``end``, at most ``limit``); ValueError past ``limit``."""
    if end <= held:
        return held
    if end > limit:
        raise ValueError(f"KV cache: position {end} beyond its capacity of {limit}")
    return min(limit, max(end, 2 * held))


def quantize_vectors(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 vectors and exponents for int64 ``x`` (..., n): ``x ~ q * 2**e`` per vector."""
    q, e = quantize_rows(x.reshape(-1, x.shape[-1]))
    return q.reshape(x.shape), e.reshape(x.shape[:-1])


def store(cache: KVCache8, layer: int, k: np.ndarray, v: np.ndarray, start: int, score_shift: int) -> None:
    """Quantise keys and values (rows, H, T, hd) and append them at positions ``start``...

    Keys are stored times ``2**(e_k - score_shift)``, a power of two from 2**-score_shift up to
    2**(e_k - score_shift) < 2**31 (``e_k`` < 63): exact in float32 (see :func:`_attention_weights`).
    """
    end = start + k.shape[2]
    cache.reserve(end)
    k8, ek = quantize_vectors(k)
    v8, ev = quantize_vectors(v)
    keys = cache.keys[layer][:, :, start:end]
    keys[...] = k8
    np.ldexp(keys, (ek - score_shift).astype(np.int32)[..., None], out=keys)
    cache.values[layer][:, :, start:end] = v8
    cache.value_exp[layer][:, :, start:end] = ev
    running = np.maximum.accumulate(ev, axis=-1)
    if start:
        np.maximum(running, cache.value_max[layer][:, :, start - 1 : start], out=running)
    cache.value_max[layer][:, :, start:end] = running


def attend(q: np.ndarray, cache: KVCache8, layer: int, start: int) -> np.ndarray:
    """Causal attention of queries (rows, H, T, hd) at positions ``start``...; int64 (rows, H, T, hd).

    ``q`` must already carry the 1/sqrt(head_dim) factor (see module docstring). ``H`` is a
    multiple of the cache's key/value heads; query head ``h`` reads key/value head
    ``h // (H / kv_heads)`` (the Hugging Face layout of grouped-query attention).
    """
    rows, heads, t_new, head_dim = q.shape
    kv_heads = cache.keys[layer].shape[1]
    end = start + t_new
    grouped = q.reshape(rows, kv_heads, heads // kv_heads * t_new, head_dim)
    out = np.empty(grouped.shape, dtype=np.int64)
    if fused.active() and end <= SPAN:   # the kernel's float32 value GEMMs are exact up to SPAN positions
        step = max(1, FUSED_ATTEND_BUDGET // (heads * t_new * end))
        for r in range(0, rows, step):
            part = slice(r, r + step)
            out[part] = _attend_rows_fused(grouped[part], cache, layer, part, start, end)
        return out.reshape(q.shape)
    q8, eq = quantize_vectors(grouped)
    step = max(1, ATTEND_BUDGET // (heads * t_new * end))
    for r in range(0, rows, step):
        part = slice(r, r + step)
        out[part] = _attend_rows(q8[part], eq[part], cache, layer, part, start, end)
    return out.reshape(q.shape)


def _attend_rows_fused(q: np.ndarray, cache: KVCache8, layer: int, part: slice, start: int,
                       end: int) -> np.ndarray:
    """:func:`_attend_rows` (quantisation of ``q`` included) by the fused kernel: same integers."""
    group = q.shape[2] // (end - start)
    top = cache.value_max[layer][part, :, start:end]
    top = np.tile(top, (1, 1, group)) if group > 1 else np.ascontiguousarray(top)
    q = np.ascontiguousarray(q)
    arrays = (q, cache.keys[layer][part], cache.values[layer][part], cache.value_exp[layer][part], end, top)
    if start + 1 == end:
        return fused.kernel("attend_step")(*arrays, _weight_table())
    return fused.kernel("attend")(*arrays, _round_or_mask(group, start, end), _weight_table())


def _attend_rows(q8: np.ndarray, eq: np.ndarray, cache: KVCache8, layer: int, part: slice,
                 start: int, end: int) -> np.ndarray:
    """Queries (R, kv_heads, G * T, hd), G query heads of T positions each per key/value head."""
    weights = _attention_weights(q8, eq, cache, layer, part, start, end)
    den = weights.sum(-1, dtype=np.int64)[..., None]
    group = q8.shape[2] // (end - start)
    top = cache.value_max[layer][part, :, start:end]                               # E per query
    top = (np.tile(top, (1, 1, group)) if group > 1 else top)[..., None]
    # w >> (E - e_s). The shift is < 0 only where the weight is 0 (future positions), and numpy's
    # shifts are defined for any count (a count < 0 or >= 32 gives 0 for w >= 0), so no clipping.
    weights >>= top.astype(np.int32) - cache.value_exp[layer][part, :, None, :end].astype(np.int32)
    num = _weighted_values(weights, cache.values[layer][part, :, :end])
    num <<= top
    return (2 * num + den) // (2 * den)


def _attention_weights(q8: np.ndarray, eq: np.ndarray, cache: KVCache8, layer: int, part: slice,
                       start: int, end: int) -> np.ndarray:
    """int32 weights ``round(2**15 * exp(score - max))`` (R, kv_heads, G * T, end), 0 where masked.

    ``2**eq`` is folded into the float32 queries and ``2**(e_k - SHIFT)`` into the stored keys:
    every term of a dot product carries the same power of two, so each float32 sum is an integer
    below 2**24 times ``2**(eq + e_k - SHIFT)`` (``e_q, e_k < 63``: between 2**-SHIFT and 2**117, inside
    float32's normal range), exact whatever the summation order, and equal to ``dot * 2**(eq + e_k - SHIFT)``
    taken in float64.
    """
    queries = np.ldexp(q8.astype(np.float32), eq[..., None].astype(np.int32))
    scores = np.matmul(queries, cache.keys[layer][part, :, :end].swapaxes(-1, -2)).astype(np.float64)
    scores += _round_or_mask(q8.shape[2] // (end - start), start, end)
    np.floor(scores, out=scores)
    np.subtract(scores.max(-1, keepdims=True), scores, out=scores)   # the gaps to each row's maximum
    # Gaps past the table (masked positions among them) take its last entry, 0.
    return np.take(_weight_table(), scores.astype(np.intp), mode="clip")


@functools.lru_cache(maxsize=16)
def _round_or_mask(group: int, start: int, end: int) -> np.ndarray | float:
    """What to add to the scores of query rows (G heads x positions ``start``...``end - 1``) over
    keys ``0..end - 1`` before the floor: 1/2 (rounding) where a key is visible, ``MASKED`` where
    it is in the query's future. ``MASKED + score`` stays below ``-2**61``: still masked.
    Cached (read-only): every layer of a forward call adds the same one."""
    t_new = end - start
    if t_new == 1:                                  # a single new token sees every key
        return 0.5
    position = start + np.arange(group * t_new) % t_new
    mask = np.where(np.arange(end)[None, :] > position[:, None], MASKED, 0.5)
    mask.setflags(write=False)
    return mask


def _weighted_values(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Exact ``weights @ values`` (int32 <= 2**15 by int8 values held as float32) as int64.

    Every sum is below ``2**15 * 127 * positions``: a float64 GEMM is exact for any context, and for
    many query rows per key/value head (the encoder's blocks) the fastest. For a few rows (decoding) two
    float32 GEMMs on the weights' bytes are faster; each of their sums stays below 2**24.
    """
    if weights.shape[-2] >= FLOAT64_VALUE_ROWS:
        return np.matmul(weights.astype(np.float64), values.astype(np.float64)).astype(np.int64)
    t_new = weights.shape[-2]
    total = np.zeros(weights.shape[:-1] + (values.shape[-1],), dtype=np.int64)
    for s0 in range(0, values.shape[-2], SPAN):
        w = weights[..., s0 : s0 + SPAN]
        both = np.empty(w.shape[:-2] + (2 * t_new, w.shape[-1]), dtype=np.float32)
        np.right_shift(w, 8, out=both[..., :t_new, :], casting="unsafe")     # high bytes, then low bytes
        np.bitwise_and(w, 255, out=both[..., t_new:, :], casting="unsafe")
        prod = np.matmul(both, values[..., s0 : s0 + SPAN, :]).astype(np.int64)
        total += prod[..., :t_new, :] << 8
        total += prod[..., t_new:, :]
    return total


@functools.lru_cache(maxsize=None)
def _weight_table() -> np.ndarray:
    return exp_table(ATT_FRAC, ATT_WEIGHT_BITS, 12.0).astype(np.int32)

