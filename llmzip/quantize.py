"""Turn a model's next-token distribution into integer frequency tables for the coder.

Invariants of every table this module returns (one row per prediction):

* every entry is >= 1, so any token can be coded, whatever the model believed;
* the row total is at most ``2**freq_bits + vocab_size`` (below :data:`llmzip.coder.MAX_TOTAL_BITS`);
* the rows are a pure function of the integer input (no float reduction whose order can vary),
  so the encoder and the decoder rebuild identical tables on any machine.

With ``freq_bits = 28`` the floor of 1 costs at most ``V / 2**28`` of the probability mass:
below 0.0003 bits per token for a 50k vocabulary.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from . import fused, linear8
from .fixedpoint import exp_table
from .linear8 import Linear8

if TYPE_CHECKING:
    from .engine.versions import LinearLayer

FREQ_BITS = 28          # probability resolution of the tables written by this version
LOGIT_FRAC_BITS = 8     # fixed-point logits carry 8 fraction bits (1/256 nat)
EXP_OUT_BITS = 30       # exp() table scale: exp(0) == 2**30
EXP_LIMIT = 20.0        # exp(-20) < 2**-28: beyond that every token sits at the floor anyway
QUANT_ROWS = 32         # rows per pass: keeps the (rows, V) temporaries in cache (speed only)
_CLIP = 1 << 30         # logits are clipped to +-2**30
_BIAS = float(1 << 52)  # see _scaled_block
_BIAS_BITS = int(np.float64(_BIAS).view(np.int64))


def freqs_from_logits(logits: np.ndarray, freq_bits: int = FREQ_BITS, out: np.ndarray | None = None) -> np.ndarray:
    """Integer frequencies from fixed-point logits (``LOGIT_FRAC_BITS`` fraction bits).

    ``f = 1 + floor(e * (2**freq_bits / sum(e)))`` with ``e = exp(logit - max)`` read from
    an exact lookup table: softmax, quantised, with a floor of one.

    Exactness: ``e`` are integers <= 2**30, so their float64 sum (< 2**53 for any vocabulary
    below 2**22) is exact in any summation order; the division and the product are single
    correctly rounded IEEE operations, identical on every machine.

    Args:
        logits: integer-valued array ``(..., V)``, int64 or float64 (|x| < 2**53); values are
            clipped to +-2**30 first.
        freq_bits: log2 of the probability resolution (<= 28 keeps totals below 2**30).
        out: where to write the tables (an integer array of the logits' shape, e.g. int32:
            entries are at most ``2**freq_bits + 1``); a new int64 array if None.

    Returns:
        ``out``: an integer array of the same shape, each row a valid coding table.
    """
    logits = np.asarray(logits)
    flat = logits.reshape(-1, logits.shape[-1])
    result = np.empty(logits.shape, dtype=np.int64) if out is None else out
    dest = result.view()
    dest.shape = flat.shape   # raises rather than copy (and lose the writes) if out is not contiguous
    for i in range(0, len(flat), QUANT_ROWS):
        block = dest[i : i + QUANT_ROWS]
        block[...] = _scaled_block(flat[i : i + QUANT_ROWS], freq_bits)   # the cast truncates: floor (>= 0)
        block += 1
    return result


def head_freqs(head: LinearLayer, hidden: np.ndarray, freq_bits: int, out: np.ndarray) -> None:
    """:func:`freqs_from_logits` of the output head's logits (``head.float_out(hidden)``, rows of
    ``hidden``) written into ``out`` (rows, V). While the kernels are active (:mod:`llmzip.fused`), an
    int8 head with int32 tables goes through :func:`native_head_freqs`: the same integers."""
    if fused.active() and isinstance(head, Linear8) and len(hidden) and out.dtype == np.int32:
        native_head_freqs(fused.kernel, head, hidden, freq_bits, out)
        return
    freqs_from_logits(head.float_out(hidden), freq_bits, out)


def native_head_freqs(kernel: Callable[[str], Callable[..., Any]], head: Linear8, hidden: np.ndarray, freq_bits: int,
                      out: np.ndarray) -> None:
    """:func:`head_freqs` by the native kernels (``kernel(name)``, :mod:`llmzip.native`): the rows
    quantised, the int8 GEMM (torch's where selected), and its int32 products turned into int32 tables
    ``out`` in one pass per row (the logits, sums, division and products of :func:`freqs_from_logits`)."""
    q, shift = kernel("quantize_rows")(hidden)
    acc = linear8.int8_matmul(q, head.w).astype(np.int32, copy=False)   # int32 from torch; exact either way
    _, factor, bias = head.kernel_args()
    kernel("head_tables")(acc, shift, factor, bias, _exp_table_i32(), float(_CLIP), float(1 << freq_bits), out)


def _scaled_block(logits: np.ndarray, freq_bits: int) -> np.ndarray:
    """``e * (2**freq_bits / sum(e))`` (float64, >= 0) for a (rows, V) block small enough to stay
    in cache: :func:`freqs_from_logits` is its floor plus one, taken by the integer cast (one
    pass over the output instead of two over float64).

    The table index ``min(max - x, last)`` is made without a float -> int conversion pass:
    ``2**52 + g`` holds an integer ``0 <= g < 2**52`` in the low bits of its float64 mantissa,
    so ``(2**52 + max) - x``, capped at ``2**52 + last`` and read as int64 minus the bits of
    ``2**52``, is the index (exact below the cap; rounding is monotone, so a larger gap still
    lands on the cap). Skipping the clip
    to +-2**30 gives the same index when every row's maximum lies in [last - 2**30, 2**30]
    (an ``x`` below -2**30 then has a gap of at least ``last`` either way); other blocks take
    :func:`_scaled_block_clipped`, the clipping original.
    """
    table = _exp_table_f64()
    last = len(table) - 1
    x = logits if logits.dtype == np.float64 else np.clip(logits, -_CLIP, _CLIP).astype(np.float64)
    top = x.max(-1, keepdims=True)
    if not (np.all(top <= _CLIP) and np.all(top >= last - _CLIP)):
        return _scaled_block_clipped(x, freq_bits)
    gap = np.subtract(top + _BIAS, x)                   # 2**52 + (max - x)
    np.minimum(gap, _BIAS + last, out=gap)
    index = gap.view(np.int64)
    index -= _BIAS_BITS
    e = np.take(table, index)
    e *= float(1 << freq_bits) / e.sum(-1, keepdims=True)
    return e


def _scaled_block_clipped(logits: np.ndarray, freq_bits: int) -> np.ndarray:
    """:func:`_scaled_block` for any integer-valued input: logits clipped to +-2**30 first."""
    table = _exp_table_f64()
    x = np.clip(logits, -_CLIP, _CLIP).astype(np.float64, copy=False)   # exact: integers < 2**31
    np.subtract(x.max(-1, keepdims=True), x, out=x)                 # gap to the row's maximum
    gap = np.empty(x.shape, dtype=np.intp)
    np.minimum(x, len(table) - 1, out=gap, casting="unsafe")        # integers: the cast is exact
    e = np.take(table, gap)
    e *= float(1 << freq_bits) / e.sum(-1, keepdims=True)
    return e


@functools.lru_cache(maxsize=None)
def _exp_table_f64() -> np.ndarray:
    return exp_table(LOGIT_FRAC_BITS, EXP_OUT_BITS, EXP_LIMIT).astype(np.float64)


@functools.lru_cache(maxsize=None)
def _exp_table_i32() -> np.ndarray:
    """The same table as int32 (entries <= 2**30), as the native kernel reads it."""
    table = exp_table(LOGIT_FRAC_BITS, EXP_OUT_BITS, EXP_LIMIT).astype(np.int32)
    table.setflags(write=False)
    return table


def freqs_from_probs(probs: np.ndarray, freq_bits: int = FREQ_BITS) -> np.ndarray:
    """Integer frequencies from float probabilities (for float predictors and tests).

    Deterministic for a given input array; not portable across machines if the
    probabilities themselves were computed with non-reproducible float arithmetic.
    """
    p = np.asarray(probs, dtype=np.float64)
    p = np.clip(p, 0.0, None)
    p = p / p.sum(-1, keepdims=True)
    return 1 + np.floor(p * float(1 << freq_bits)).astype(np.int64)


def ideal_bits(freqs: np.ndarray, symbols: np.ndarray) -> float:
    """Sum of -log2(freq[symbol] / total) over rows: the cost an ideal coder would pay."""
    rows = np.arange(len(symbols))
    f = freqs[rows, symbols].astype(np.float64)
    return float(-np.log2(f / freqs.sum(-1).astype(np.float64)).sum())
