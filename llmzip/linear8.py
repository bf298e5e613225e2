"""8-bit integer linear layers for the exact engine, engines 2 and later.

``y = round(q(x) @ W * M * 2**(e - D)) + b`` where

* ``W`` is int8 (in, out), quantised once per output column with ``|W| <= 127``;
* ``M`` (per column, 15-bit) and ``D`` (per column shift) dequantise the weights;
* ``q(x)`` quantises each row of the int64 input to int8: ``x`` is shifted right by ``e``
  (rounding half up), the smallest shift that brings the row's largest magnitude to at most 127;
* the int32 product ``q(x) @ W`` is exact (``|sum| <= 127 * 127 * K < 2**31``) whichever
  backend computes it: ``torch._int_mm`` (int8 GEMM) when present, verified at first use and
  worth importing torch for (see :func:`select_backend`), else a float64 GEMM on the same
  integers (exact: sums < 2**53); with the fused kernels, the whole layer in one call of
  :mod:`llmzip.native` (AVX-512 VNNI) or of Inductor's kernel around ``torch._int_mm``;
* every later step is a float64 operation on dyadic rationals with at most 53 significant bits
  (multiplications by powers of two, by a 15-bit integer, adding 1/2, ``floor``), so exact.

The result is a pure function of the integers, on every machine and backend.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import fused
from .fixedpoint import activation_lookup, activation_values, bit_length, clip_inplace

Q_MAX = 127          # int8 range used on both sides (never -128: the product bound stays symmetric)
MULT_BITS = 15       # per-column dequantisation multiplier: 2**14 <= M < 2**15
# With the fused kernels, a layer of at most this many rows (a decoding step's) runs as one native
# call (linear8.c, where the CPU has AVX-512 VNNI), more rows (an encoder's blocks) by Inductor's
# kernel around torch._int_mm. Measured (AMD EPYC, one thread, us per call, native vs Inductor):
# 17 x 192 -> 576 28 vs 40, 34 x 768 -> 192 59 vs 80, 128 x 384 -> 1152 609 vs 682; 4096 rows and
# the default model's encoder about equal (0.93 vs 0.89 s of linear layers compressing 128 KB). On
# a CPU with AMX, torch's GEMM runs on its tiles, far beyond VNNI, for the large blocks.
NATIVE_MAX_ROWS = 256


@dataclass(frozen=True)
class Linear8:
    """Integer affine map with int8 weights and per-row int8 activations (see module docstring)."""

    w: np.ndarray        # int8 (in, out)
    mult: np.ndarray     # int64 (out,), M in [2**14, 2**15) (0 for an all-zero column)
    shift: np.ndarray    # int64 (out,), D
    b: np.ndarray        # int64 (out,), in the output format
    _factor: np.ndarray = field(init=False, repr=False, compare=False)   # float64 M * 2**-D
    _bias: np.ndarray = field(init=False, repr=False, compare=False)     # float64 b + 1/2

    def __post_init__(self) -> None:
        object.__setattr__(self, "_factor", np.ldexp(self.mult.astype(np.float64), -self.shift))
        object.__setattr__(self, "_bias", self.b.astype(np.float64) + 0.5)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The layer's outputs, int64 (..., out); ``x`` int64 with |x| < 2**62."""
        return self._outputs(x, np.int64)

    def float_out(self, x: np.ndarray) -> np.ndarray:
        """The layer's integer outputs as float64 (..., out); ``x`` int64 with |x| < 2**62."""
        return self._outputs(x, np.float64)

    def _outputs(self, x: np.ndarray, dtype: type) -> np.ndarray:
        flat = x.reshape(-1, x.shape[-1])
        if self._native(len(flat)):
            y = fused.kernel("linear8_native")(flat, *self.kernel_args(), dtype is np.float64)
            return y.reshape(*x.shape[:-1], self.w.shape[1])
        if fused.active() and len(flat):
            y = fused.kernel("linear8_int" if dtype is np.int64 else "linear8")(flat, *self.kernel_args())
            return y.reshape(*x.shape[:-1], self.w.shape[1])
        q, e = quantize_rows(flat)
        acc = int8_matmul(q, self.w)                    # exact integers: int32 from torch, else float64
        return _rescale(acc, self._factor, np.ldexp(1.0, e)[:, None], self._bias, dtype).reshape(
            *x.shape[:-1], self.w.shape[1])

    def added(self, x: np.ndarray, residual: np.ndarray, clip: int) -> np.ndarray:
        """``clip(residual + self(x), +-clip)``: the layer and the residual connection after it, in
        one pass over the outputs with the kernels (the native layer's, or after Inductor's)."""
        flat = x.reshape(-1, x.shape[-1])
        y = self._then(flat, residual=residual.reshape(len(flat), residual.shape[-1]), clip=clip)
        return clip_inplace(residual + self(x), clip) if y is None else y.reshape(residual.shape)

    def activated(self, x: np.ndarray, clip: int, kind: str, frac_bits: int) -> np.ndarray:
        """``activation_lookup(clip(self(x), +-clip), kind, frac_bits)``: the layer and its activation,
        in one pass over the outputs with the kernels (the native layer's, or after Inductor's)."""
        flat = x.reshape(-1, x.shape[-1])
        y = self._then(flat, clip=clip, activation=activation_values(kind, frac_bits))
        if y is None:
            return activation_lookup(clip_inplace(self(x), clip), kind, frac_bits)
        return y.reshape(*x.shape[:-1], self.w.shape[1])

    def _then(self, flat: np.ndarray, **after: Any) -> np.ndarray | None:
        """The layer of rows ``flat`` and its epilogue (``after``: the native kernels' residual, clip,
        activation) by the kernels: in the native layer's pass, or after Inductor's layer; None
        without the kernels (numpy composes them)."""
        if self._native(len(flat)):
            return fused.kernel("linear8_native")(flat, *self.kernel_args(), **after)
        if fused.active() and len(flat):
            return fused.kernel("epilogue")(self(flat), **after)
        return None

    def integer_arrays(self) -> list[np.ndarray]:
        return [self.w.astype(np.int64), self.mult, self.shift, self.b]

    def _native(self, rows: int) -> bool:
        """Whether a block of ``rows`` rows runs as one native call (see NATIVE_MAX_ROWS)."""
        return fused.active() and 0 < rows <= NATIVE_MAX_ROWS and fused.native_linear()

    def kernel_args(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The layer as the fused kernels take it: int8 weights, float64 ``M * 2**-D`` and ``b + 1/2``."""
        return self.w, self._factor, self._bias


def _rescale(acc: np.ndarray, factor: np.ndarray, scale: np.ndarray, bias: np.ndarray, dtype: type) -> np.ndarray:
    """``floor(acc * factor * scale + bias)`` as ``dtype``: every step exact (module docstring)."""
    out = acc.astype(np.float64)                    # a new array even when acc is float64
    out *= factor                                   # acc * M * 2**-D: <= 40 significant bits
    out *= scale                                    # * 2**e: exact
    out += bias
    np.floor(out, out=out)
    return out if dtype is np.float64 else out.astype(dtype)


def check_linear8(fan_in: int) -> None:
    """Raise ValueError unless int8 x int8 products summed over ``fan_in`` terms fit int32."""
    if fan_in * Q_MAX * Q_MAX >= 2**31:
        raise ValueError("linear layers: int8 products could overflow int32")


def output_bound(layer: Linear8, input_bound: int) -> int:
    """An upper bound (exact integer arithmetic) on ``|layer(x)|`` for every row with ``|x| <= input_bound``.

    :func:`quantize_rows` shifts such a row by ``e <= max(bit_length(input_bound) - 7, 0)``, so
    output ``j`` is at most ``127 * sum|W[:, j]| * M_j * 2**(e - D_j) + |b_j| + 1``.
    """
    e = max(int(input_bound).bit_length() - 7, 0)
    gains = (Q_MAX * np.abs(layer.w).sum(0, dtype=np.int64) * layer.mult).tolist()   # < 2**46; |w| <= 127
    return max((g << (e - d) if e >= d else -(-g >> (d - e))) + abs(b) + 1
               for g, d, b in zip(gains, layer.shift.tolist(), layer.b.tolist()))


def quantize_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 rows ``q`` and shifts ``e`` (rows,) with ``q = clip(round_half_up(x / 2**e), +-127)``.

    ``e`` is the smallest shift with ``max|x| >> e <= 127``; rounding half up may still reach
    128, which is clipped. ``|x| < 2**62``.
    """
    peak = np.maximum(x.max(-1), -x.min(-1))      # max |x| per row, without an |x| array
    e = np.maximum(bit_length(peak) - 7, 0)         # peak < 2**(e + 7): peak >> e <= 127
    q = x + (((np.int64(1) << e) >> 1)[:, None])
    q >>= e[:, None]
    np.clip(q, np.int64(-Q_MAX), np.int64(Q_MAX), out=q)   # rounding can reach +-128
    return q.astype(np.int8), e


def quantize_linear8(w: np.ndarray, b: np.ndarray | None, in_frac: int, out_frac: int) -> Linear8:
    """Quantise float weights ``w`` (in, out) to int8 per output column, with a 15-bit dequantiser."""
    w = np.asarray(w, dtype=np.float64)
    peak = np.abs(w).max(0)
    scale = np.where(peak > 0, peak / Q_MAX, 1.0)                   # real value of one int8 step
    w8 = np.clip(np.round(w / scale), -Q_MAX, Q_MAX).astype(np.int8)
    mant, expo = np.frexp(scale)                                    # scale = mant * 2**expo
    mult = np.round(np.ldexp(mant, MULT_BITS)).astype(np.int64)    # in [2**14, 2**15]
    expo = expo.astype(np.int64) - MULT_BITS
    carry = mult == 1 << MULT_BITS                                  # rounded up to 2**15: renormalise
    mult, expo = np.where(carry, mult >> 1, mult), np.where(carry, expo + 1, expo)
    mult = np.where(peak > 0, mult, 0)
    shift = in_frac - out_frac - expo                               # y = acc * mult * 2**(e - shift)
    bias = np.zeros(w.shape[1]) if b is None else np.asarray(b, dtype=np.float64)
    b_int = np.round(np.ldexp(bias, out_frac)).astype(np.int64)
    return Linear8(np.ascontiguousarray(w8), mult, shift.astype(np.int64), b_int)


# Importing torch costs ~1.1 s and ~200 MB here, so below some amount of GEMM work a codec call
# finishes sooner on the float64 GEMM. The work is tokens x the model's operations per token
# (``flops_per_token``): the 12.6 M-parameter Llama does 6x the default model's per token, and its
# float64 GEMMs are memory-bound on its head. Through the CLI (2026-12-01, AMD EPYC, 2 cores;
# float64 vs torch, best of 2): default model at 64 KB of prose (19k tokens, 82 GOP) compress 3.1
# vs 4.0 s, decompress 4.2 vs 4.4 s; at 160 KB (49k tokens, 207 GOP) 7.0 vs 6.5 s and 8.9 vs 8.3 s.
# Llama at -9, 4 KB (1.2k tokens, 31 GOP): 1.9 vs 2.8 s and 8.0 vs 5.2 s; 16 KB (4.8k tokens, 121
# GOP): 4.9 vs 4.6 s and 10.0 vs 7.2 s; 48 KB: 9.2 vs 6.8 s and 14.4 vs 9.0 s.
# Decoding a model that large is sequential steps each reading every weight: its float64 GEMMs
# are memory-bound at any size, so decoding with it earns torch back sooner (Llama at -9: 1 KB,
# 300 tokens, 7.5 GOP: 3.6 s on float64 vs 3.9 s with torch; 4 KB, 31 GOP: 8.0 vs 5.2 s).
INT8_GEMM_MIN_OPS = 1 << 37     # 137 G operations: 32k tokens of the default model, 5.5k of the Llama
LARGE_MODEL_OPS = 1 << 24       # operations per token (the default model 4.2 M, the Llama 25.2 M)
LARGE_DECODE_MIN_OPS = 1 << 34  # 17 G operations: 680 tokens of the Llama
_use_torch: bool | None = None     # None: not chosen by a codec call (then torch if it is usable)


def select_backend(ops: int, decoding_per_token: int = 0) -> bool:
    """Choose the int8 GEMM backend for a codec call of ``ops`` operations in its linear layers
    (tokens x ``flops_per_token``), before its worker threads start (so they never race to import
    torch): ``torch._int_mm`` if torch is already loaded or the call is large enough to earn its
    import back, else the float64 GEMM. ``decoding_per_token``: the model's operations per token
    when the call decodes (0 when it encodes). Both give the same integers. Returns whether torch
    is used."""
    global _use_torch
    least = LARGE_DECODE_MIN_OPS if decoding_per_token >= LARGE_MODEL_OPS else INT8_GEMM_MIN_OPS
    wanted = "torch" in sys.modules or ops >= least
    _use_torch = wanted and _int_mm_backend() is not None
    return _use_torch


def int8_matmul(q: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Exact ``q @ w`` for int8 operands (rows, out): int32 from ``torch._int_mm``, else float64."""
    mm = None if _use_torch is False else _int_mm_backend()
    if mm is not None and q.shape[0] > 0:
        try:
            return mm(q, w)
        except RuntimeError:   # a shape this torch build refuses: the fallback gives the same integers
            pass
    return _float64_matmul(q, w)


def _float64_matmul(q: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The portable backend: a float64 GEMM on the int8 values (exact: every sum < 2**53)."""
    return np.matmul(q.astype(np.float64), w.astype(np.float64))


@functools.lru_cache(maxsize=None)
def _int_mm_backend():  # type: ignore[no-untyped-def]
    """``torch._int_mm`` wrapped for numpy, if torch has it and it passes an exactness probe."""
    try:
        import torch
    except ImportError:
        return None
    if not hasattr(torch, "_int_mm"):
        return None

    def mm(q: np.ndarray, w: np.ndarray) -> np.ndarray:
        return torch._int_mm(torch.from_numpy(np.ascontiguousarray(q)), torch.from_numpy(w)).numpy()

    rng = np.random.default_rng(0)
    for rows, k, n in ((1, 8, 8), (5, 60, 24), (33, 1024, 40)):   # odd shapes and extreme values
        q = rng.choice(np.array([-127, 127, -1, 0, 1], dtype=np.int8), size=(rows, k))
        w = rng.choice(np.array([-127, 127, 5, -3], dtype=np.int8), size=(k, n))
        try:
            if not np.array_equal(mm(q, w), _float64_matmul(q, w)):
                return None
        except RuntimeError:
            return None
    return mm
