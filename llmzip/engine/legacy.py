"""The arithmetic of engines 1 and 2 only: 16-bit linear layers (engine 1) and float64 attention
over a float64 KV cache (engines 1 and 2).

Frozen: archives of those engines decode with exactly this code. Newer engines use
:mod:`llmzip.linear8` and :mod:`llmzip.attention8` instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..attention8 import ATTEND_BUDGET
from ..fixedpoint import activation_lookup, check_gemm_bound, clip_inplace, exact_matmul, exp_table, rshift_round
from .common import ACT_CLIP, ATT_FRAC, SCORE_SHIFT

LINEAR16_WEIGHT_BITS = 15  # engine 1: |w| <= 2**15 - 1 after per-channel power-of-two scaling
FLOAT_ATT_WEIGHT_BITS = 16  # engines 1-2 (float64 attention): weights with exp(0) == 2**16
MASKED = -(2**62)         # attention score of a masked key: exp() of it reads as exactly 0


@dataclass(frozen=True)
class Linear16:
    """Engine 1's integer affine map ``y = round((x @ w) / 2**shift) + b`` with per-output-channel shift."""

    w: np.ndarray      # float64 (in, out), integer-valued, |w| <= 2**LINEAR16_WEIGHT_BITS - 1
    shift: np.ndarray  # int64 (out,), each >= 1
    b: np.ndarray      # int64 (out,), in the output format
    _half: np.ndarray = field(init=False, repr=False, compare=False)   # float64 2**(shift-1)
    _inv: np.ndarray = field(init=False, repr=False, compare=False)    # float64 2**-shift
    _bias: np.ndarray = field(init=False, repr=False, compare=False)   # float64 b

    def __post_init__(self) -> None:
        object.__setattr__(self, "_half", np.ldexp(1.0, self.shift - 1))
        object.__setattr__(self, "_inv", np.ldexp(1.0, -self.shift))
        object.__setattr__(self, "_bias", self.b.astype(np.float64))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.float_out(x).astype(np.int64)

    def float_out(self, x: np.ndarray) -> np.ndarray:
        """The same integers as :meth:`__call__`, as float64.

        ``floor((acc + 2**(s-1)) * 2**-s)`` is :func:`rshift_round` in float64: every value is
        an integer below 2**53 (:func:`check_linear16`) and scaling by a power of two is exact.
        """
        flat = x.reshape(-1, x.shape[-1]).astype(np.float64, copy=False)   # one 2-D GEMM, not a batch
        acc = np.matmul(flat, self.w).reshape(*x.shape[:-1], self.w.shape[1])
        acc += self._half
        acc *= self._inv
        np.floor(acc, out=acc)
        acc += self._bias
        return acc

    def integer_arrays(self) -> list[np.ndarray]:
        return [self.w.astype(np.int64), self.shift, self.b]

    def added(self, x: np.ndarray, residual: np.ndarray, clip: int) -> np.ndarray:
        return clip_inplace(residual + self(x), clip)

    def activated(self, x: np.ndarray, clip: int, kind: str, frac_bits: int) -> np.ndarray:
        return activation_lookup(clip_inplace(self(x), clip), kind, frac_bits)


def quantize_linear16(w: np.ndarray, b: np.ndarray | None, in_frac: int, out_frac: int) -> Linear16:
    """Quantise float weights ``w`` (in, out) to 16-bit integers with a power-of-two scale per column."""
    w = np.asarray(w, dtype=np.float64)
    peak = np.abs(w).max(0)
    _, exponent = np.frexp(peak)                      # peak = f * 2**exponent, f in [0.5, 1)
    scale_bits = np.where(peak > 0, LINEAR16_WEIGHT_BITS - exponent, 0)
    scale_bits = np.clip(scale_bits, out_frac - in_frac + 1, 50)   # keep every shift >= 1
    limit = 2**LINEAR16_WEIGHT_BITS - 1
    w_int = np.clip(np.round(np.ldexp(w, scale_bits[None, :])), -limit, limit)
    bias = np.zeros(w.shape[1]) if b is None else np.asarray(b, dtype=np.float64)
    b_int = np.round(np.ldexp(bias, out_frac)).astype(np.int64)
    shift = (scale_bits + in_frac - out_frac).astype(np.int64)
    return Linear16(np.ascontiguousarray(w_int), shift, b_int)   # row-major: fastest GEMM layout here


def check_linear16(fan_in: int) -> None:
    """Raise ValueError unless a ``fan_in``-term product of clipped inputs and 16-bit weights is exact."""
    check_gemm_bound(fan_in, ACT_CLIP, 2**LINEAR16_WEIGHT_BITS - 1, "linear layers")


class KVCache64:
    """Engines 1-2: keys and values of every layer for a batch of rows that advance in lockstep.

    Keys are stored transposed, (rows, heads, head_dim, capacity), so that scoring a block
    of queries is a plain GEMM over a prefix of the last axis; values are (rows, heads,
    capacity, head_dim). Both hold integer-valued float64, ready for exact GEMMs.
    """

    def __init__(self, n_layer: int, rows: int, n_head: int, capacity: int, head_dim: int) -> None:
        self.keys = [np.zeros((rows, n_head, head_dim, capacity)) for _ in range(n_layer)]
        self.values = [np.zeros((rows, n_head, capacity, head_dim)) for _ in range(n_layer)]
        self.length = 0

    @staticmethod
    def bytes_per_row(n_layer: int, n_head: int, capacity: int, head_dim: int) -> int:
        return n_layer * 2 * capacity * n_head * head_dim * 8

    @property
    def rows(self) -> int:
        return self.keys[0].shape[0]

    def reserve(self, end: int) -> None:
        """Room for positions up to ``end``: this cache is allocated at its full capacity."""
        if end > self.keys[0].shape[-1]:
            raise ValueError(f"KV cache: position {end} beyond its capacity of {self.keys[0].shape[-1]}")

    def keep(self, rows: np.ndarray) -> None:
        """Drop every row not listed in ``rows`` (e.g. chunks that have ended)."""
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]


class Float64Attention:
    """Engines 1-2: causal attention with float64 GEMMs on integers (one key/value head per query head)."""

    cache = KVCache64

    @staticmethod
    def new_cache(n_layer: int, rows: int, heads: int, capacity: int, head_dim: int) -> KVCache64:
        return KVCache64(n_layer, rows, heads, capacity, head_dim)

    @staticmethod
    def check_bounds(head_dim: int, n_ctx: int) -> None:
        check_gemm_bound(head_dim, ACT_CLIP, ACT_CLIP, "attention scores")
        check_gemm_bound(n_ctx, 2**FLOAT_ATT_WEIGHT_BITS, ACT_CLIP, "attention values")

    @staticmethod
    def __call__(q: np.ndarray, k: np.ndarray, v: np.ndarray, cache: KVCache64, layer: int, start: int,
                 scale: int) -> np.ndarray:
        """Store k, v (rows, H, T, hd) at ``start``...; attend with q (rows, H, T, hd); int64 (rows, H, T, hd)."""
        rows, heads, t_new, head_dim = q.shape
        end = start + t_new
        cache.keys[layer][..., start:end] = k.swapaxes(-1, -2)
        cache.values[layer][:, :, start:end] = v
        keys, values = cache.keys[layer][..., :end], cache.values[layer][:, :, :end]
        out = np.empty((rows, heads, t_new, head_dim), dtype=np.int64)
        step = max(1, ATTEND_BUDGET // (heads * t_new * end))   # bounds the (rows, H, T, S) temporaries
        for r in range(0, rows, step):
            out[r : r + step] = _attend64(q[r : r + step], keys[r : r + step], values[r : r + step], start, scale)
        return out


def _attend64(q: np.ndarray, keys_t: np.ndarray, values: np.ndarray, start: int, scale: int) -> np.ndarray:
    """Softmax(q k / sqrt(hd)) v for rows of all heads; q (R, H, T, hd), keys_t (R, H, hd, S), values (R, H, S, hd)."""
    t_new, span = q.shape[-2], values.shape[-2]
    dot = exact_matmul(q, keys_t)                                    # (R, H, T, S), 2*ACT_FRAC bits
    scores = rshift_round(dot * scale, SCORE_SHIFT)
    if t_new > 1:                                                    # one new token sees every key
        allowed = np.arange(span)[None, :] <= (start + np.arange(t_new))[:, None]
        scores = np.where(allowed, scores, MASKED)
    table = exp_table(ATT_FRAC, FLOAT_ATT_WEIGHT_BITS, 12.0)
    gap = np.minimum(scores.max(-1, keepdims=True) - scores, len(table) - 1)
    weights = table[gap].astype(np.float64)                          # masked -> exactly 0
    if t_new == 1:   # a batch of vector products: einsum beats per-row GEMM calls here
        num = np.einsum("rhts,rhsd->rhtd", weights, values).astype(np.int64)
    else:
        num = exact_matmul(weights, values)                          # (R, H, T, hd)
    den = weights.sum(-1, keepdims=True).astype(np.int64)            # exact: integers < 2**53
    return (2 * num + den) // (2 * den)
