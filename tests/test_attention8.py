"""Engine 3's int8 attention: exact integer products, prefix-only results, bounded sizes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import attention8_reference
from llmzip import attention8
from llmzip.attention8 import KVCache8, store

SHIFT = 32   # the engine's SCORE_SHIFT: 2 * ACT_FRAC + QUERY_SCALE_BITS - ATT_FRAC


def _qkv(rows: int, heads: int, length: int, head_dim: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    scale = rng.integers(6, 20, size=(rows, heads, length, 1))      # vectors of very different sizes
    return tuple(rng.integers(-(2**19), 2**19, size=(rows, heads, length, head_dim)) >> scale for _ in range(3))


def _run(q: np.ndarray, k: np.ndarray, v: np.ndarray, step: int, module: Any = attention8) -> np.ndarray:
    """Attention over the whole sequence, feeding ``step`` positions per call."""
    rows, heads, length, head_dim = q.shape
    cache = module.KVCache8(1, rows, k.shape[1], length, head_dim)
    parts = []
    for t0 in range(0, length, step):
        sl = slice(t0, t0 + step)
        module.store(cache, 0, k[:, :, sl], v[:, :, sl], t0, SHIFT)
        parts.append(module.attend(q[:, :, sl] * 8192, cache, 0, t0))   # 8192: 2**16 / sqrt(64)
    return np.concatenate(parts, axis=2)


@pytest.mark.parametrize("seed", range(12))
def test_same_numbers_as_the_reference_implementation(seed):
    """The cache of float32 numbers gives exactly the results of the frozen first version (int8
    cache converted at every step), for grouped heads, any step size and activations of any
    size the engines produce (queries times the scale below 2**37, keys and values below 2**31)."""
    rng = np.random.default_rng(seed)
    rows, kv_heads, group = (int(x) for x in rng.integers(1, 4, size=3))
    head_dim, length = int(rng.choice([2, 8, 64, 128])), int(rng.integers(1, 70))
    bits = int(rng.choice([8, 20, 31]))
    sizes = rng.integers(0, bits, size=(rows, 1, length, 1))       # vectors of very different sizes
    q = (rng.integers(-(2**bits), 2**bits, size=(rows, kv_heads * group, length, head_dim)) >> sizes) >> 14
    k, v = (rng.integers(-(2**bits), 2**bits, size=(rows, kv_heads, length, head_dim)) >> sizes for _ in "kv")
    step = int(rng.integers(1, length + 1))
    assert np.array_equal(_run(q, k, v, step), _run(q, k, v, step, attention8_reference))


@pytest.mark.parametrize("rows", [5, attention8.FLOAT64_VALUE_ROWS])
def test_weighted_values_is_exact_beyond_one_span(monkeypatch, rows):
    """Both ways (byte-split float32 GEMMs, also over several spans; one float64 GEMM) give
    exactly the int64 product."""
    monkeypatch.setattr(attention8, "SPAN", 40)
    rng = np.random.default_rng(0)
    weights = rng.integers(0, 2**15 + 1, size=(2, 3, rows, 130)).astype(np.int32)
    weights[..., :7] = 2**15                                         # the extremes
    values = rng.choice(np.array([-127, 127, 0, 1, -1], dtype=np.int8), size=(2, 3, 130, 16))
    ref = weights.astype(np.int64) @ values.astype(np.int64)
    assert np.array_equal(attention8._weighted_values(weights, values.astype(np.float32)), ref)


def test_full_pass_equals_incremental_and_blocked():
    q, k, v = _qkv(3, 2, 40, 64, seed=1)
    full = _run(q, k, v, 40)
    assert np.array_equal(full, _run(q, k, v, 1))
    assert np.array_equal(full, _run(q, k, v, 7))


def test_a_position_depends_only_on_its_prefix():
    q, k, v = _qkv(2, 2, 30, 64, seed=2)
    before = _run(q, k, v, 30)
    k[:, :, 20:] = -k[:, :, 20:] * 3                                  # change the future only
    v[:, :, 20:] = v[:, :, 20:] * 5
    after = _run(q, k, v, 30)
    assert np.array_equal(before[:, :, :20], after[:, :, :20])
    assert not np.array_equal(before[:, :, 20:], after[:, :, 20:])


def test_close_to_float_attention():
    q, k, v = _qkv(2, 2, 24, 64, seed=3)
    out = _run(q, k, v, 24) / 2**12
    qf, kf, vf = (a / 2**12 for a in (q, k, v))
    scores = qf @ kf.swapaxes(-1, -2) / 8.0
    scores = np.where(np.tril(np.ones((24, 24), dtype=bool)), scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    ref = (p / p.sum(-1, keepdims=True)) @ vf
    assert np.abs(out - ref).max() < 0.02 * np.abs(vf).max()


def test_keep_drops_rows_of_every_array():
    q, k, v = _qkv(4, 2, 10, 64, seed=4)
    cache = KVCache8(1, 4, 2, 10, 64)
    store(cache, 0, k, v, 0, SHIFT)
    cache.keep(np.array([2, 0]))
    assert cache.rows == 2
    single = KVCache8(1, 1, 2, 10, 64)
    store(single, 0, k[2:3], v[2:3], 0, SHIFT)
    for name in ("keys", "values", "value_exp", "value_max"):
        assert np.array_equal(getattr(cache, name)[0][0], getattr(single, name)[0][0]), name


def test_head_size_that_would_overflow_float32_is_refused():
    attention8.check_bounds(1024)
    with pytest.raises(ValueError, match="head_dim"):
        attention8.check_bounds(1041)


def test_held_bytes_per_row_counts_every_array_of_the_cache():
    cache = KVCache8(3, 2, 4, 16, 8)
    held = sum(a.nbytes for arrays in (cache.keys, cache.values, cache.value_exp, cache.value_max) for a in arrays)
    assert KVCache8.held_bytes_per_row(3, 4, 16, 8) * 2 == held


def test_bytes_per_row_is_the_frozen_group_sizing_formula():
    """codec.default_group sizes groups by it, and groups shape archives: its value never changes."""
    assert KVCache8.bytes_per_row(3, 4, 16, 8) == 3 * 4 * 16 * (2 * 8 + 24)


def test_masking_and_value_shifts_rely_on_zero_weights():
    """Gaps past the weight table (masked positions among them) are clipped to its last entry,
    which must be 0; weights are shifted by counts that can be negative (only where the weight is
    0: future positions) or >= 32, which numpy defines as 0 for non-negative weights."""
    assert attention8._weight_table()[-1] == 0
    weights = np.array([0, 0, 5, 2**15, 2**15], dtype=np.int32)
    counts = np.array([-7, -40, 40, 31, 15], dtype=np.int32)
    assert (weights >> counts).tolist() == [0, 0, 0, 0, 1]


def test_masked_positions_get_no_weight():
    """A block of new positions: each query's weights over its future keys are exactly 0."""
    q, k, v = _qkv(2, 2, 12, 64, seed=4)
    cache = KVCache8(1, 2, 2, 12, 64)
    store(cache, 0, k, v, 0, SHIFT)
    q8, eq = attention8.quantize_vectors(q * 8192)
    weights = attention8._attention_weights(q8, eq, cache, 0, slice(0, 2), 0, 12)
    future = np.triu(np.ones((12, 12), dtype=bool), 1)
    assert not weights[..., future].any() and weights[..., ~future].max() == 2**15


def test_cache_grows_as_positions_are_stored_and_refuses_past_its_capacity():
    q, k, v = _qkv(2, 2, 150, 8, seed=6)
    cache = KVCache8(2, 2, 2, 150, 8)
    assert cache.keys[0].shape[2] == attention8.FIRST_CAPACITY
    store(cache, 1, k[:, :, :100], v[:, :, :100], 0, SHIFT)
    assert cache.keys[0].shape[2] == cache.values[1].shape[2] == 128
    store(cache, 1, k[:, :, 100:], v[:, :, 100:], 100, SHIFT)
    assert cache.value_max[0].shape[2] == 150
    with pytest.raises(ValueError, match="capacity"):
        cache.reserve(151)


def _run_steps_cache(q: np.ndarray, k: np.ndarray, v: np.ndarray, step: int, rows: np.ndarray | None = None) -> np.ndarray:
    """:func:`_run` over an Int8KVCache (its numpy path: no kernels), dropping to ``rows`` halfway."""
    from llmzip.attention8_int8 import Int8KVCache

    n, heads, length, head_dim = q.shape
    cache = Int8KVCache(1, n, k.shape[1], length, head_dim)
    parts = []
    for t0 in range(0, length, step):
        if rows is not None and t0 >= length // 2:
            cache.keep(rows)
            q, k, v, parts, rows = q[rows], k[rows], v[rows], [p[rows] for p in parts], None
        sl = slice(t0, t0 + step)
        cache.store(0, k[:, :, sl], v[:, :, sl], t0, SHIFT)
        parts.append(cache.attend(q[:, :, sl] * 8192, 0, t0))
    return np.concatenate(parts, axis=2)


@pytest.mark.parametrize("step", [1, 7, 60])
def test_int8_cache_holds_the_same_numbers(step: int) -> None:
    """The int8 cache, read by numpy, gives the float32 cache's integers, through growth
    past its first capacity and rows dropped."""
    q, k, v = _qkv(3, 2, 150, 16, seed=8)
    want = _run(q, k, v, 150)
    np.testing.assert_array_equal(_run_steps_cache(q, k, v, step), want)
    np.testing.assert_array_equal(_run_steps_cache(q, k, v, step, np.array([2, 0])), want[[2, 0]])
