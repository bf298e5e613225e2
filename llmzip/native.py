"""Hand-written C kernels of the exact engine, built once per machine beside the fused kernels.

Inductor's loops (:mod:`llmzip.fused_aot`) serve elementwise chains well, but not the two largest
parts of the engine: its table lookups become scalar loops, its integers run in 64-bit lanes, and
its reductions are separate passes. So, by hand (``csrc/``):

* ``attend8.c``: the whole of a layer's attention in one call. It quantises and stores the
  block's keys and values into an :class:`~llmzip.attention8_int8.Int8KVCache` and attends its
  queries, with int8 products summed in SIMD registers: the integers of
  :func:`llmzip.attention8.store` and :func:`llmzip.attention8.attend`.
* ``head8.c``: the output head's coding tables from the int32 products of its GEMM (which
  torch's ``_int_mm`` computes), one pass per row: the integers of
  :func:`llmzip.quantize.freqs_from_logits` of :meth:`llmzip.linear8.Linear8.float_out`; and the
  int8 quantiser of :func:`llmzip.linear8.quantize_rows`.
* ``mix8.c``: the dense part of the context mixer's tables (:mod:`llmzip.mixing.mixture`): the
  coded token's interval for an encoder, the tables for a decoder, one pass per row instead of
  numpy's five; and the n-gram table's lookups and counting (:mod:`llmzip.mixing.ngram`), one
  record at a time instead of sorted and grouped numpy passes. All in the codec's main thread,
  which mixes while the model computes.

Each file's header argues its steps; :mod:`llmzip.fused_check` proves them in every process that
loads the library.

The library is compiled by the system's C compiler for this machine (``-march=native``), with
``-fwrapv`` (signed integers wrap as numpy's do) and without floating-point contraction or unsafe
math; it is built and loaded with the fused kernels, into the same cache directory, whose name
hashes :func:`identity`. Called through ``ctypes``, which releases the GIL for the call.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

SOURCE_DIR = Path(__file__).with_name("csrc")
SOURCES = ("attend8.c", "head8.c", "mix8.c")
HEADERS = ("common.h",)
FLAGS = ("-O3", "-march=native", "-std=c11", "-fwrapv", "-ffp-contract=off", "-fno-fast-math",
         "-shared", "-fPIC")


class NativeBuildError(RuntimeError):
    """The C compiler is missing or failed."""


def compiler() -> list[str]:
    """The C compiler's command: ``$CC`` (split as a shell would, e.g. ``ccache gcc``), else ``cc`` or
    ``gcc`` on the PATH."""
    found = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not found:
        raise NativeBuildError("no C compiler (cc or gcc) on the PATH; set CC")
    return shlex.split(found)


@functools.lru_cache(maxsize=None)
def identity() -> str:
    """What the library depends on besides the CPU: the compiler's version, the flags, the source."""
    try:
        version = subprocess.run([*compiler(), "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError, NativeBuildError) as e:
        version = f"unavailable: {e}"
    texts = [(SOURCE_DIR / name).read_text() for name in SOURCES + HEADERS]
    return "\n".join([version.splitlines()[0] if version else "", " ".join(FLAGS), *texts])


def compile_library(library: Path, extra_flags: tuple[str, ...] = ()) -> None:
    """Compile the kernels into the shared library ``library`` (``extra_flags``: tests that build the
    code paths of other machines, e.g. ``-mno-avx512f``)."""
    command = [*compiler(), *FLAGS, *extra_flags, *(str(SOURCE_DIR / name) for name in SOURCES), "-o", str(library)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as e:
        raise NativeBuildError(f"{command[0]} could not run: {e}") from e
    if done.returncode:
        raise NativeBuildError(f"{' '.join(command)} failed: {done.stderr.strip()[:2000]}")


_I64, _PTR, _F64 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_double


class _Bound:
    """One C function of the library, bound with its result and argument types (class attributes)."""

    symbol: str
    restype: Any = _I64
    argtypes: tuple[Any, ...]

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._fn = getattr(lib, self.symbol)
        self._fn.restype, self._fn.argtypes = self.restype, list(self.argtypes)


def kernels(library: Path) -> dict[str, Any]:
    """The kernels of a built library, by the names the engine calls them (:func:`llmzip.fused.kernel`)."""
    lib = ctypes.CDLL(str(library))
    return {"attend8": Attend8(lib), "head_tables": HeadTables(lib), "quantize_rows": QuantizeRows(lib),
            "mix_terms": MixTerms(lib), "mix_tables": MixTables(lib), "ngram_lookup": NgramLookup(lib),
            "ngram_learn": NgramLearn(lib), "divide_rows": DivideRows(lib)}


class Attend8(_Bound):
    """``llmzip_attend8`` of a loaded library, called with numpy arrays."""

    symbol = "llmzip_attend8"
    argtypes = (_I64,) * 4 + (_PTR, _I64, _PTR, _PTR, _I64) + (_PTR,) * 5 + (_I64,) * 3 + (_PTR, _I64, _PTR)

    def __call__(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: int, score_shift: int, start: int,
                 cache: Any, layer: int, table: np.ndarray) -> np.ndarray:
        """Store keys and values (rows, kv_heads, T, hd) into layer ``layer`` of ``cache`` (an
        :class:`~llmzip.attention8_int8.Int8KVCache` with room for ``start + T`` positions) at ``start``...,
        then attend with ``q * scale`` (rows, H, T, hd); int64 (rows, H, T, hd)."""
        q, k, v = (np.ascontiguousarray(a, dtype=np.int64) for a in (q, k, v))
        rows, heads, t, hd = q.shape
        arrays = (cache.keys_t[layer], cache.key_exp[layer], cache.values[layer], cache.value_exp[layer],
                  cache.value_max[layer])
        _check_layout(q, k, v, arrays, table)
        out = np.empty(q.shape, dtype=np.int64)
        table = np.ascontiguousarray(table)
        code = self._fn(rows, heads, t, start, q.ctypes.data, scale, k.ctypes.data, v.ctypes.data, score_shift,
                        *(a.ctypes.data for a in arrays), k.shape[1], hd, arrays[2].shape[2],
                        table.ctypes.data, len(table), out.ctypes.data)
        if code:
            raise MemoryError("attend8: out of memory") if code == -1 else ValueError("attend8: sizes out of range")
        return out


_CACHE_DTYPES = (np.int8, np.int32, np.int8, np.int32, np.int32)


def _check_layout(q: np.ndarray, k: np.ndarray, v: np.ndarray, cache: tuple[np.ndarray, ...], table: np.ndarray) -> None:
    """ValueError unless the arrays have the shapes, dtypes and layouts the C code assumes (it checks
    the sizes it is given, not the arrays' own)."""
    rows, _, t, hd = q.shape
    keys_t, key_exp, values, value_exp, value_max = cache
    kv, capacity = k.shape[1], values.shape[2]
    fits = (k.shape == v.shape == (rows, kv, t, hd) and keys_t.shape == (rows, kv, hd, capacity)
            and values.shape == (rows, kv, capacity, hd) and key_exp.shape == value_exp.shape == value_max.shape
            == (rows, kv, capacity)
            and all(a.dtype == d and a.flags.c_contiguous and a.flags.writeable for a, d in zip(cache, _CACHE_DTYPES))
            and table.dtype == np.int32 and table.ndim == 1)
    if not fits:
        raise ValueError("attend8: arrays of unexpected shapes, dtypes or layouts")


class QuantizeRows(_Bound):
    """``llmzip_quantize_rows``: :func:`llmzip.linear8.quantize_rows` of int64 rows (n, k)."""

    symbol = "llmzip_quantize_rows"
    restype = None
    argtypes = (_I64, _I64, _PTR, _PTR, _PTR)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.int64)
        if x.ndim != 2:
            raise ValueError("quantize_rows: rows (n, k) expected")
        q, e = np.empty(x.shape, dtype=np.int8), np.empty(len(x), dtype=np.int64)
        self._fn(x.shape[0], x.shape[1], x.ctypes.data, q.ctypes.data, e.ctypes.data)
        return q, e


class HeadTables(_Bound):
    """``llmzip_head_tables``: coding tables (rows, V) into ``out`` from the head's int32 products."""

    symbol = "llmzip_head_tables"
    argtypes = (_I64, _I64, _PTR, _PTR, _PTR, _PTR, _PTR, _I64, _F64, _F64, _PTR, _PTR)

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


class MixTerms(_Bound):
    """``llmzip_mix_terms``: :func:`llmzip.mixing.mixture.coding_terms` of
    :func:`~llmzip.mixing.mixture.scaled_lm`, for int32 LM tables."""

    symbol = "llmzip_mix_terms"
    argtypes = (_I64, _I64, _PTR, _I64, _PTR, _I64, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR)

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


class MixTables(_Bound):
    """``llmzip_mix_tables``: :func:`llmzip.mixing.mixture.tables` of
    :func:`~llmzip.mixing.mixture.scaled_lm`, for int32 LM tables; int64 (R, V)."""

    symbol = "llmzip_mix_tables"
    argtypes = (_I64, _I64, _PTR, _I64, _PTR, _I64, _PTR, _PTR, _PTR)

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


class NgramLookup(_Bound):
    """``llmzip_ngram_lookup``: :meth:`llmzip.mixing.ngram.NgramTable.lookup` of slots and checks (R, O)."""

    symbol = "llmzip_ngram_lookup"
    argtypes = (_PTR, _I64, _I64, _I64, _PTR, _PTR, _PTR, _PTR)

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


class NgramLearn(_Bound):
    """``llmzip_ngram_learn``: :meth:`llmzip.mixing.ngram.NgramTable.learn` of tokens ``x`` (R,) after
    the contexts (R, O), into ``table`` in place."""

    symbol = "llmzip_ngram_learn"
    argtypes = (_PTR, _I64, _I64, _I64, _I64, _I64, _PTR, _PTR, _PTR)

    def __call__(self, table: np.ndarray, limit: int, slot: np.ndarray, chk: np.ndarray, x: np.ndarray) -> None:
        table = _table(table)
        slot, chk, x = (np.ascontiguousarray(a, dtype=np.int64) for a in (slot, chk, x))
        if slot.shape != chk.shape or slot.ndim != 2 or x.shape != slot.shape[:1]:
            raise ValueError("ngram_learn: slots and checks (R, O) and tokens (R,) expected")
        if self._fn(table.ctypes.data, len(table), table.shape[1] - 1, limit, slot.shape[0], slot.shape[1],
                    slot.ctypes.data, chk.ctypes.data, x.ctypes.data):
            raise ValueError("ngram_learn: a slot, check, token or limit out of range")


class DivideRows(_Bound):
    """``llmzip_divide_rows``: the attention kernel's last step alone, for the probe: ``floor((2 * (num
    << top) + den) / (2 * den))`` of int32 ``num`` (R, hd) with int32 ``top`` and int64 ``den`` (R,)."""

    symbol = "llmzip_divide_rows"
    restype = None
    argtypes = (_I64, _I64, _PTR, _PTR, _PTR, _PTR)

    def __call__(self, num: np.ndarray, top: np.ndarray, den: np.ndarray) -> np.ndarray:
        num = np.ascontiguousarray(num, dtype=np.int32)
        top, den = np.ascontiguousarray(top, dtype=np.int32), np.ascontiguousarray(den, dtype=np.int64)
        if num.ndim != 2 or not top.shape == den.shape == (len(num),) or (den < 1).any() or (top < 0).any() or (top > 62).any():
            raise ValueError("divide_rows: rows (R, hd), tops in [0, 62] and positive denominators (R,) expected")
        out = np.empty(num.shape, dtype=np.int64)
        self._fn(num.shape[0], num.shape[1], num.ctypes.data, top.ctypes.data, den.ctypes.data, out.ctypes.data)
        return out
