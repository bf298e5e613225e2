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
