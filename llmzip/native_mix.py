"""The context mixer's hand-written C kernels (:mod:`llmzip.native`, ``mix8.c``), called with numpy
arrays: the mixed tables and coding terms of :mod:`llmzip.mixing.mixture` and the n-gram table's
lookups and counting (:mod:`llmzip.mixing.ngram`). Each class binds one C function and checks what
the C code assumes (shapes, dtypes, layouts)."""

from __future__ import annotations

import numpy as np

from .native_bind import I64, PTR, Bound


def _lm_rows(lm: np.ndarray) -> tuple[np.ndarray, int]:
    """int32 LM tables (R, V) as the C code reads them: the array (copied only if its rows are not
    each contiguous) and the distance between rows in entries."""
    if lm.dtype != np.int32 or lm.ndim != 2:
        raise ValueError("mixing: int32 LM tables (rows, V) expected")
    if lm.strides[1] != 4 or lm.strides[0] % 4 or lm.strides[0] < 4 * lm.shape[1]:
        lm = np.ascontiguousarray(lm)
    return lm, (lm.strides[0] // 4 if len(lm) > 1 else lm.shape[1])


def _candidates(lm: np.ndarray, mass: np.ndarray, tok: np.ndarray, share: np.ndarray) -> tuple[np.ndarray, ...]:
    """The gates (R,) and the candidates' tokens and shares (R, S) as contiguous int64."""
    mass, tok, share = (np.ascontiguousarray(a, dtype=np.int64) for a in (mass, tok, share))
    if mass.shape != (len(lm),) or tok.shape != share.shape or tok.ndim != 2 or tok.shape[0] != len(lm):
        raise ValueError("mixing: gates (R,) and candidates (R, S) expected")
    return mass, tok, share


class MixTerms(Bound):
    """``llmzip_mix_terms``: :func:`llmzip.mixing.mixture.coding_terms` of
    :func:`~llmzip.mixing.mixture.scaled_lm`, for int32 LM tables."""

    symbol = "llmzip_mix_terms"
    argtypes = (I64, I64, PTR, I64, PTR, I64, PTR, PTR, PTR, PTR, PTR, PTR)

    def __call__(self, lm: np.ndarray, mass: np.ndarray, tok: np.ndarray, share: np.ndarray,
                 x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lm, stride = _lm_rows(lm)
        mass, tok, share = _candidates(lm, mass, tok, share)
        x = np.ascontiguousarray(x, dtype=np.int64)
        if x.shape != mass.shape:
            raise ValueError("mix_terms: one token per row expected")
        cum, freq, total = (np.empty(len(lm), dtype=np.int64) for _ in range(3))
        if self._fn(len(lm), lm.shape[1], lm.ctypes.data, stride, mass.ctypes.data, tok.shape[1], tok.ctypes.data,
                    share.ctypes.data, x.ctypes.data, cum.ctypes.data, freq.ctypes.data, total.ctypes.data):
            raise ValueError("mix_terms: tokens, gates or LM totals out of range")
        return cum, freq, total


class MixTables(Bound):
    """``llmzip_mix_tables``: :func:`llmzip.mixing.mixture.tables` of
    :func:`~llmzip.mixing.mixture.scaled_lm`, for int32 LM tables; int64 (R, V)."""

    symbol = "llmzip_mix_tables"
    argtypes = (I64, I64, PTR, I64, PTR, I64, PTR, PTR, PTR)

    def __call__(self, lm: np.ndarray, mass: np.ndarray, tok: np.ndarray, share: np.ndarray) -> np.ndarray:
        lm, stride = _lm_rows(lm)
        mass, tok, share = _candidates(lm, mass, tok, share)
        out = np.empty(lm.shape, dtype=np.int64)
        if self._fn(len(lm), lm.shape[1], lm.ctypes.data, stride, mass.ctypes.data, tok.shape[1], tok.ctypes.data,
                    share.ctypes.data, out.ctypes.data):
            raise ValueError("mix_tables: tokens, gates or LM totals out of range")
        return out


def _table(table: np.ndarray) -> np.ndarray:
    if table.dtype != np.int32 or table.ndim != 2 or not table.flags.c_contiguous:
        raise ValueError("n-gram table: a C-contiguous int32 (slots, 1 + width) array expected")
    return table


class NgramLookup(Bound):
    """``llmzip_ngram_lookup``: :meth:`llmzip.mixing.ngram.NgramTable.lookup` of slots and checks (R, O)."""

    symbol = "llmzip_ngram_lookup"
    argtypes = (PTR, I64, I64, I64, PTR, PTR, PTR, PTR)

    def __call__(self, table: np.ndarray, slot: np.ndarray, chk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        table = _table(table)
        slot, chk = (np.ascontiguousarray(a, dtype=np.int64) for a in (slot, chk))
        if slot.shape != chk.shape:
            raise ValueError("ngram_lookup: slots and checks of one shape expected")
        width = table.shape[1] - 1
        tok, cnt = (np.empty(slot.shape + (width,), dtype=np.int64) for _ in range(2))
        if self._fn(table.ctypes.data, len(table), width, slot.size, slot.ctypes.data, chk.ctypes.data,
                    tok.ctypes.data, cnt.ctypes.data):
            raise ValueError("ngram_lookup: a slot outside the table")
        return tok, cnt


class NgramLearn(Bound):
    """``llmzip_ngram_learn``: :meth:`llmzip.mixing.ngram.NgramTable.learn` of tokens ``x`` (R,) after
    the contexts (R, O), into ``table`` in place."""

    symbol = "llmzip_ngram_learn"
    argtypes = (PTR, I64, I64, I64, I64, I64, PTR, PTR, PTR)

    def __call__(self, table: np.ndarray, limit: int, slot: np.ndarray, chk: np.ndarray, x: np.ndarray) -> None:
        table = _table(table)
        slot, chk, x = (np.ascontiguousarray(a, dtype=np.int64) for a in (slot, chk, x))
        if slot.shape != chk.shape or slot.ndim != 2 or x.shape != slot.shape[:1]:
            raise ValueError("ngram_learn: slots and checks (R, O) and tokens (R,) expected")
        if self._fn(table.ctypes.data, len(table), table.shape[1] - 1, limit, slot.shape[0], slot.shape[1],
                    slot.ctypes.data, chk.ctypes.data, x.ctypes.data):
            raise ValueError("ngram_learn: a slot, check, token or limit out of range")
