"""The proof :mod:`llmzip.fused` runs in every process that loads the kernels: every kernel against
the numpy reference, on inputs chosen to reach the edges of its arithmetic (quantisation shifts at
their boundaries, clips, table ends, masked and unmasked attention, grouped heads, one row and one
position), in the shapes the engine calls them with.

Each case takes the compiled kernels and raises AssertionError on the first difference. The numpy
side always runs the reference code itself (never a copy of it).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from . import attention8, fixedpoint
from .linear8 import Linear8, _float64_matmul, _rescale, quantize_linear8, quantize_rows

Kernels = dict[str, Callable[..., Any]]


def _equal(name: str, want: np.ndarray, got: np.ndarray) -> None:
    if want.dtype != got.dtype or want.shape != got.shape or not np.array_equal(want, got):
        raise AssertionError(f"fused kernel {name} differs from the numpy reference")


def _edge_rows(rng: np.random.Generator, k: int, big: int) -> np.ndarray:
    """Rows whose peaks sit on every side of the int8 quantiser's shift boundaries, up to ``big``."""
    peaks = [0, 1, 126, 127, 128, 129, 254, 255, 256, 257, 383, 384, 2**20 - 1, 2**20, big]
    rows = []
    for peak in peaks:
        row = rng.integers(-peak, peak + 1, size=k)
        row[rng.integers(k)] = peak if peak % 2 else -peak
        rows.append(row)
    rows.append(rng.integers(-big, big + 1, size=k))
    return np.array(rows, dtype=np.int64)


def _linear_reference(layer: Linear8, x: np.ndarray, dtype: type) -> np.ndarray:
    q, e = quantize_rows(x)
    return _rescale(_float64_matmul(q, layer.w), layer._factor, np.ldexp(1.0, e)[:, None], layer._bias, dtype)


def check_linear_layer(kernels: Kernels) -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(size=(48, 24)) * np.logspace(-3, 1, 24)
    w[:, 3] = 0.0                                                      # an all-zero column: mult 0
    layer = quantize_linear8(w, rng.normal(size=24) * 100, 12, 16)
    x = _edge_rows(rng, 48, 2**36)
    for rows in (x, x[:1], x[5:6]):
        _equal("linear8", _linear_reference(layer, rows, np.float64),
               kernels["linear8"](rows, *layer.kernel_args()))
        _equal("linear8_int", _linear_reference(layer, rows, np.int64),
               kernels["linear8_int"](rows, *layer.kernel_args()))


def _filled_cache(rng: np.random.Generator, rows: int, kv_heads: int, length: int, hd: int,
                  capacity: int = 64, kind: Any = attention8.KVCache8) -> Any:
    """A one-layer cache of ``kind`` (:class:`~llmzip.attention8.KVCache8` or
    :class:`~llmzip.attention8_steps.StepCache8`) holding ``length`` random positions."""
    from .engine.common import SCORE_SHIFT

    cache = kind(1, rows, kv_heads, capacity, hd)
    scale = 2.0 ** rng.integers(0, 20, size=(rows, kv_heads, length, 1))   # exponents that vary by position
    k = (rng.uniform(-1, 1, size=(rows, kv_heads, length, hd)) * scale).astype(np.int64)
    v = (rng.uniform(-1, 1, size=(rows, kv_heads, length, hd)) * scale[:, :, ::-1]).astype(np.int64)
    v[0, 0, 2] = 0                                                       # a zero vector: exponent 0
    cache.store(0, k, v, 0, SCORE_SHIFT)
    cache.length = length
    return cache


def check_attend(kernels: Kernels) -> None:
    """Prefill blocks (masked) and single decoding steps (the first position among them), with 1 and 3
    query heads per key/value head, 1 and 2 key/value heads, 1 and 2 rows, and a full cache."""
    rng = np.random.default_rng(2)
    hd = 16
    for group, rows, kv, capacity in ((1, 2, 2, 64), (3, 2, 2, 64), (3, 1, 2, 64), (1, 1, 2, 64), (1, 2, 1, 64),
                                      (3, 1, 1, 64), (3, 2, 2, 9)):    # the last: a full cache, end == capacity
        cache = _filled_cache(rng, rows, kv, 9, hd, capacity)
        for start, end in ((0, 9), (4, 9), (8, 9), (0, 1)):
            t_new = end - start
            q = (rng.uniform(-1, 1, size=(rows, kv, group * t_new, hd)) * 2.0 ** 36).astype(np.int64)
            q[0, 0, 0] = 0
            part = slice(0, rows)
            q8, eq = attention8.quantize_vectors(q)
            want = attention8._attend_rows(q8, eq, cache, 0, part, start, end)
            top = cache.value_max[0][part, :, start:end]
            top = np.tile(top, (1, 1, group)) if group > 1 else np.ascontiguousarray(top)
            arrays = (q, cache.keys[0][part], cache.values[0][part], cache.value_exp[0][part], end, top)
            if t_new == 1:
                got = kernels["attend_step"](*arrays, attention8._weight_table())
            else:
                mask = attention8._round_or_mask(group, start, end)
                got = kernels["attend"](*arrays, mask, attention8._weight_table())
            _equal("attend", want, got)


def check_attend_step8(kernels: Kernels) -> None:
    """Decoding steps over an int8 cache against the reference over the float32 cache of the same
    numbers: 1 and 3 query heads per key/value head, 1 and 2 of those, one row, the first position,
    a full cache, and queries whose scales put the score shift on both sides of 0."""
    from .attention8_steps import StepCache8

    hd = 16
    for group, rows, kv, capacity in ((1, 2, 2, 64), (3, 2, 2, 64), (3, 1, 1, 64), (1, 2, 1, 9), (3, 2, 2, 9)):
        seed = 7 * group + 3 * rows + kv + capacity
        want_cache = _filled_cache(np.random.default_rng(seed), rows, kv, 9, hd, capacity)
        got_cache = _filled_cache(np.random.default_rng(seed), rows, kv, 9, hd, capacity, StepCache8)
        rng = np.random.default_rng(seed)
        for end, scale in ((9, 36), (9, 12), (5, 24), (1, 36), (1, 0)):
            q = (rng.uniform(-1, 1, size=(rows, kv, group, hd)) * 2.0 ** scale).astype(np.int64)
            q[0, 0, 0] = 0
            q8, eq = attention8.quantize_vectors(q)
            want = attention8._attend_rows(q8, eq, want_cache, 0, slice(0, rows), end - 1, end)
            top = np.repeat(got_cache.value_max[0][:, :, end - 1 : end], group, axis=2)
            got = kernels["attend_step8"](q8.astype(np.int32), eq.astype(np.int32), got_cache.keys_t[0],
                                          got_cache.key_exp[0], got_cache.values[0], got_cache.value_exp[0],
                                          top, end, attention8._weight_table())
            _equal("attend_step8", want, got)


def check_quantize_heads(kernels: Kernels) -> None:
    """A step's queries (times a scale), keys and values: rows on both sides of every shift boundary."""
    rng = np.random.default_rng(4)
    x = _edge_rows(rng, 16, 2**36)[:15].reshape(3, 5, 16)
    mult = np.array([9459, 8192, 1, 1, 1], dtype=np.int64)
    for rows in (x, x[:1]):
        want = attention8.quantize_vectors(rows * mult[:, None])
        got = kernels["quantize_heads"](rows, mult)
        for w, g in zip(want, got):
            _equal("quantize_heads", w, g)


def _around(limit: int, clip: int, rng: np.random.Generator, n: int) -> np.ndarray:
    """Values at and around the table's ends, the clip, zero, and random ones, shape (2, n)."""
    edges = [0, 1, -1, limit - 1, limit, limit + 1, -limit + 1, -limit, -limit - 1, clip, -clip, clip + 5, -clip - 5]
    values = np.concatenate([np.array(edges), rng.integers(-2 * limit, 2 * limit, size=2 * n - len(edges))])
    return values.astype(np.int64).reshape(2, n)


def check_swiglu(kernels: Kernels) -> None:
    from .engine.common import ACT_FRAC
    from .engine.llama import GATE_CLIP, swiglu

    rng = np.random.default_rng(3)
    table, limit = fixedpoint.silu_table(ACT_FRAC)
    for inner in (40, 7):
        halves = (_around(limit, GATE_CLIP, rng, inner), _around(limit, GATE_CLIP, rng, inner)[::-1])
        gate_up = np.concatenate(halves, -1)
        for rows in (gate_up, gate_up[:1]):
            want = swiglu(rows.copy())
            _equal("swiglu", want, kernels["swiglu"](rows[None], table, limit, GATE_CLIP, ACT_FRAC)[0])


def check_activation(kernels: Kernels) -> None:
    from .engine.common import ACT_CLIP, ACT_FRAC

    rng = np.random.default_rng(4)
    for kind in ("gelu_new", "gelu", "silu"):
        half = fixedpoint.SILU_HALF_RANGE if kind == "silu" else 8
        table, limit = fixedpoint.activation_values(kind, ACT_FRAC, half_range=half)
        u = _around(limit, ACT_CLIP, rng, 30)
        for rows in (u, u[:1]):
            want = fixedpoint.activation_lookup(rows, kind, ACT_FRAC, half_range=half)
            _equal("activation", want, kernels["activation"](rows, table, limit))


def check_norms(kernels: Kernels) -> None:
    """LayerNorm and RMSNorm on rows of zeros, constant rows, rows at the residual clip, mixed scales."""
    from .engine.common import ACT_CLIP, ACT_FRAC, GAMMA_FRAC, RESID_CLIP, RESID_FRAC, LayerNorm, RMSNorm

    rng = np.random.default_rng(5)
    for d in (48, 7):
        h = _edge_rows(rng, d, RESID_CLIP)
        h[1] = 5
        h[2] = -RESID_CLIP
        mixed = rng.integers(-RESID_CLIP, RESID_CLIP + 1, size=(3, d)) >> rng.integers(0, 30, size=(3, 1))
        h = np.concatenate([h, mixed])
        gamma = rng.normal(1.0, 0.5, size=d)
        norms = ((LayerNorm.quantize(gamma, rng.normal(0, 2, size=d)), True), (RMSNorm.quantize(gamma), False))
        for norm, centre in norms:
            beta = norm.beta if centre else np.zeros_like(norm.gamma)   # type: ignore[attr-defined]
            for rows in (h, h[:1]):
                for eps in (1e-5, 1e-6):
                    want = norm(rows, eps)
                    got, _ = kernels["norm"](rows, centre, fixedpoint.norm_square_bits(d), eps, RESID_FRAC, ACT_FRAC,
                                             norm.gamma, GAMMA_FRAC, beta, ACT_CLIP)
                    _equal("norm", want, got)


def check_rotate(kernels: Kernels) -> None:
    from .engine.common import ACT_CLIP
    from .engine.rope import ROPE_FRAC, rope_table, rotate

    rng = np.random.default_rng(6)
    cos, sin = rope_table("10000.0", 16, (), 40)
    for rows, start, t_new in ((2, 0, 40), (1, 7, 1), (3, 39, 1)):
        qkv = rng.integers(-ACT_CLIP, ACT_CLIP + 1, size=(rows, t_new, 7, 16))
        qkv[0, 0, 0] = ACT_CLIP
        c, s = cos[start : start + t_new], sin[start : start + t_new]
        want = fixedpoint.clip_inplace(rotate(qkv[:, :, :5], c, s), ACT_CLIP)
        _equal("rotate", want, kernels["rotate"](qkv, c, s, 5, ROPE_FRAC, ACT_CLIP))


def check_head_freqs(kernels: Kernels) -> None:
    """Tables from output heads: peaked and flat rows, logits past the clip, gaps past the table (a
    zero row's logits are the head's bias, which sets each case), and rows of real products."""
    from . import quantize
    from .engine.common import ACT_CLIP, ACT_FRAC

    rng = np.random.default_rng(7)
    table, frac = quantize._exp_table_f64(), quantize.LOGIT_FRAC_BITS
    for vocab in (300, 5):
        cases = rng.integers(-6000, 6000, size=(5, vocab))
        cases[1] = 0
        cases[2, :2] = (2**40, -(2**40))
        cases[3] = rng.integers(-(2**31), -(2**29), size=vocab)
        cases[4, 0] = 2**30 + 17
        for bias in cases:
            head = quantize_linear8(rng.normal(size=(48, vocab)) * 0.05, np.ldexp(bias.astype(np.float64), -frac),
                                    ACT_FRAC, frac)
            x = np.concatenate([np.zeros((1, 48), dtype=np.int64), _edge_rows(rng, 48, ACT_CLIP)])
            for bits, rows in ((quantize.FREQ_BITS, x), (16, x), (quantize.FREQ_BITS, x[:1])):
                want = quantize.freqs_from_logits(_linear_reference(head, rows, np.float64), bits).astype(np.int32)
                out = np.zeros(want.shape, dtype=np.int32)
                kernels["head_freqs"](rows, *head.kernel_args(), table, float(quantize._CLIP), float(1 << bits), out)
                _equal("head_freqs", want, out)


CASES: tuple[Callable[[Kernels], None], ...] = (check_linear_layer, check_attend, check_attend_step8, check_quantize_heads,
                                                check_swiglu, check_activation, check_norms, check_rotate,
                                                check_head_freqs)
