"""The quantiser's fast path gives exactly the tables of its defining formula."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from llmzip.quantize import EXP_LIMIT, EXP_OUT_BITS, LOGIT_FRAC_BITS, freqs_from_logits
from llmzip.fixedpoint import exp_table


def _reference(logits: np.ndarray, freq_bits: int) -> np.ndarray:
    """``1 + floor(e * (2**freq_bits / sum(e)))``, ``e = exp_table[min(max - x, len - 1)]``, as first written."""
    table = exp_table(LOGIT_FRAC_BITS, EXP_OUT_BITS, EXP_LIMIT).astype(np.float64)
    x = np.clip(logits, -(1 << 30), 1 << 30).astype(np.float64)
    gap = np.minimum(x.max(-1, keepdims=True) - x, len(table) - 1)
    e = table[gap.astype(np.intp)]
    return (np.floor(e * (float(1 << freq_bits) / e.sum(-1, keepdims=True))) + 1).astype(np.int64)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 70), vocab=st.integers(1, 500),
       spread=st.sampled_from([0, 3, 300, 5000, 2**31]), freq_bits=st.sampled_from([16, 24, 28]))
def test_tables_equal_the_defining_formula(seed, rows, vocab, spread, freq_bits):
    rng = np.random.default_rng(seed)
    logits = rng.integers(-spread, spread + 1, size=(rows, vocab))
    logits[rng.random(rows) < 0.2, 0] = 2**31                     # clipped, dominant
    want = _reference(logits, freq_bits)
    assert np.array_equal(freqs_from_logits(logits, freq_bits), want)
    out = np.zeros((rows, vocab), dtype=np.int32)
    assert freqs_from_logits(logits.astype(np.float64), freq_bits, out) is out
    assert np.array_equal(out, want)


def _freqs_as_released(logits: np.ndarray, freq_bits: int) -> np.ndarray:
    """freqs_from_logits as released before its index trick (clip, float gap, cast, take)."""
    table = exp_table(LOGIT_FRAC_BITS, EXP_OUT_BITS, EXP_LIMIT).astype(np.float64)
    x = np.clip(logits, -(1 << 30), 1 << 30).astype(np.float64, copy=False)
    np.subtract(x.max(-1, keepdims=True), x, out=x)
    gap = np.empty(x.shape, dtype=np.intp)
    np.minimum(x, len(table) - 1, out=gap, casting="unsafe")
    e = np.take(table, gap)
    e *= float(1 << freq_bits) / e.sum(-1, keepdims=True)
    return e.astype(np.int64) + 1


_LAST = round(EXP_LIMIT * (1 << LOGIT_FRAC_BITS))   # the exp table's last index
_EDGES = [2**30, 2**30 + 1, 2**30 - 1, _LAST - 2**30, _LAST - 2**30 - 1, _LAST - 2**30 + 1, -2**30, 0, -2**40, 2**52]


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 200), vocab=st.sampled_from([2, 3, 17, 4096, 8192, 65536]),
       spread=st.sampled_from([0, 1, 700, 6000, 2**31, 2**52]), freq_bits=st.sampled_from([16, 28]))
def test_float_logits_equal_the_released_quantiser(seed, rows, vocab, spread, freq_bits):
    """The engine's float64 logits, near every edge of the unclipped path: row maxima at and
    around +-2**30 and ``last - 2**30``, entries far below -2**30, huge spreads."""
    rows = min(rows, max(1, 2**17 // vocab))           # keeps the 64k-vocabulary examples small
    rng = np.random.default_rng(seed)
    logits = rng.integers(-spread, spread + 1, size=(rows, vocab)).astype(np.float64)
    pick = rng.random(rows) < 0.5
    logits[pick] = np.minimum(logits[pick], 0) + rng.choice(_EDGES, size=(int(pick.sum()), 1))
    logits[rng.random((rows, vocab)) < 0.01] = -2.0**52
    out = np.empty((rows, vocab), dtype=np.int32)
    freqs_from_logits(logits, freq_bits, out)
    assert np.array_equal(out, _freqs_as_released(logits, freq_bits))
