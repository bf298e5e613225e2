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


def check_linear_native(kernels: Kernels) -> None:
    """The native layer at the sizes its vector code splits: rows around its tiles of 4, inputs around
    its groups of 4 and blocks of 256, outputs around its vectors of 16 and tiles of 64."""
    native = kernels["linear8_native"]
    if not native.vectorised:     # no linear layer in a library built without VNNI
        return
    rng = np.random.default_rng(6)
    for k, n in ((48, 24), (64, 64), (7, 17), (260, 65), (513, 130)):
        w = rng.normal(size=(k, n)) * np.logspace(-3, 1, n)
        w[:, 3] = 0.0
        layer = quantize_linear8(w, rng.normal(size=n) * 100, 12, 16)
        x = _edge_rows(rng, k, 2**36)
        many = np.concatenate([x] * 9)[:130]     # past the kernel's blocks of 64 rows
        table, limit = fixedpoint.activation_values("gelu_new", 16)
        for rows in (x, x[:1], x[6:8], x[5:8], x[:5], many):
            for dtype in (np.float64, np.int64):
                _equal("linear8_native", _linear_reference(layer, rows, dtype),
                       native(rows, *layer.kernel_args(), dtype is np.float64))
            y, residual = _linear_reference(layer, rows, np.int64), rng.integers(-2**40, 2**40, size=(len(rows), n))
            _equal("linear8_native", fixedpoint.clip_inplace(residual + y, 2**38),
                   native(rows, *layer.kernel_args(), residual=residual, clip=2**38))
            _equal("linear8_native", fixedpoint.activation_lookup(fixedpoint.clip_inplace(y.copy(), 2**20), "gelu_new", 16),
                   native(rows, *layer.kernel_args(), clip=2**20, activation=(table, limit)))


def check_epilogue(kernels: Kernels) -> None:
    """The linear layer's epilogue alone: a residual, the clip, both, the activation after a clip."""
    rng = np.random.default_rng(12)
    table, limit = fixedpoint.activation_values("silu", 12, half_range=fixedpoint.SILU_HALF_RANGE)
    y = rng.integers(-2**40, 2**40, size=(7, 33)) >> rng.integers(0, 40, size=(7, 1))
    residual = rng.integers(-2**40, 2**40, size=y.shape)
    epilogue = kernels["epilogue"]
    _equal("epilogue", residual + y, epilogue(y.copy(), residual=residual))
    _equal("epilogue", fixedpoint.clip_inplace(residual + y, 2**30), epilogue(y.copy(), residual=residual, clip=2**30))
    _equal("epilogue", fixedpoint.clip_inplace(y.copy(), 5), epilogue(y.copy(), clip=5))
    _equal("epilogue", fixedpoint.activation_lookup(fixedpoint.clip_inplace(y.copy(), 2**18), "silu", 12,
                                                    half_range=fixedpoint.SILU_HALF_RANGE),
           epilogue(y.copy(), clip=2**18, activation=(table, limit)))


def _filled_cache(rng: np.random.Generator, rows: int, kv_heads: int, length: int, hd: int,
                  capacity: int = 64) -> attention8.KVCache8:
    """A one-layer float32 cache holding ``length`` random positions."""
    from .engine.common import SCORE_SHIFT

    cache = attention8.KVCache8(1, rows, kv_heads, capacity, hd)
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


def check_attend8(kernels: Kernels) -> None:
    """The native attention (a block's store and attention in one call) against the reference's store and
    attention over a float32 cache: prefill blocks (masked) and single steps; 1 and 3 query heads per
    key/value head, 1 and 2 of those, 1 and 2 rows; head sizes on and off the SIMD width; capacities
    that are not a multiple of it (the last vector of keys read through a bounce buffer), up to a full
    cache; queries and keys of every scale (the score shift on both sides of 0); zero vectors; and
    values large enough to take the kernel's integer division."""
    from .attention8_int8 import Int8KVCache
    from .engine.common import SCORE_SHIFT

    for hd, group, kv, rows, capacity, value_bits in ((16, 1, 2, 2, 64, 20), (48, 3, 1, 1, 21, 20),
                                                      (8, 3, 2, 1, 64, 12), (40, 1, 1, 2, 35, 40),
                                                      (12, 1, 1, 1, 64, 20)):
        rng = np.random.default_rng(hd + capacity)
        want, got = attention8.KVCache8(1, rows, kv, capacity, hd), Int8KVCache(1, rows, kv, capacity, hd)
        bounds = (0, 9, 10, 11, capacity - 3, capacity)
        for start, end in zip(bounds, bounds[1:]):
            shape = (rows, kv, end - start, hd)
            k = (rng.uniform(-1, 1, shape) * 2.0 ** rng.integers(0, 21, size=shape[:3] + (1,))).astype(np.int64)
            v = (rng.uniform(-1, 1, shape) * 2.0 ** rng.integers(0, value_bits + 1, size=shape[:3] + (1,))).astype(np.int64)
            q = (rng.uniform(-1, 1, (rows, kv * group) + shape[2:]) * 2.0 ** rng.integers(0, 21)).astype(np.int64)
            q[0, 0, 0], v[0, 0, 0] = 0, 0
            outs = want.attend_new(q, k, v, 0, start, 9459, SCORE_SHIFT)
            got.reserve(end)
            _equal("attend8", outs, kernels["attend8"](q, k, v, 9459, SCORE_SHIFT, start, got, 0,
                                                       attention8._weight_table()))


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
                    got = kernels["norm"](rows, centre, fixedpoint.norm_square_bits(d), eps, RESID_FRAC, ACT_FRAC,
                                          norm.gamma, GAMMA_FRAC, beta, ACT_CLIP)
                    assert got is not None, "the norm kernel refused rows numpy computes"
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


def check_head_tables(kernels: Kernels) -> None:
    """Tables from output heads by the native kernels: peaked and flat rows, logits past the clip, gaps past the table (a
    zero row's logits are the head's bias, which sets each case), and rows of real products."""
    from . import quantize
    from .engine.common import ACT_CLIP, ACT_FRAC

    rng = np.random.default_rng(7)
    frac = quantize.LOGIT_FRAC_BITS
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
                quantize.native_head_freqs(kernels.__getitem__, head, rows, bits, out)
                _equal("head_tables", want, out)


def check_quantize_rows(kernels: Kernels) -> None:
    """Rows on both sides of every shift boundary, up to 2**62, and rows whose peak is 2**k - 1, 2**k
    or 2**k + 1 for every k, of either sign (the bit length from the float64 exponent field)."""
    x = _edge_rows(np.random.default_rng(4), 40, 2**62 - 1)
    peaks = sorted({min((1 << k) + d, 2**62) for k in range(63) for d in (-1, 0, 1)})
    powers = np.zeros((2 * len(peaks), 40), dtype=np.int64)
    powers[::2, 3], powers[1::2, 5] = peaks, [-p for p in peaks]
    for rows in (x, x[:1], powers):
        for want, got in zip(quantize_rows(rows), kernels["quantize_rows"](rows)):
            _equal("quantize_rows", want, got)


def check_mixing(kernels: Kernels) -> None:
    """The mixer's dense part: LM rows whose totals reach 2**30 and rows of ones, gates from 0 to
    2**28, candidates repeated and at both ends of the vocabulary, tokens at both ends and among
    the candidates, LM rows read in place from a wider array (as the codec passes them)."""
    from .mixing import mixture

    rng = np.random.default_rng(11)
    for vocab, width in ((300, 7), (5, 3)):
        lm3 = rng.integers(1, 2**30 // vocab, size=(6, 2, vocab)).astype(np.int32)
        lm3[1] = 1
        lm3[2, 0, 0] = 2**30 - (int(lm3[2, 0].sum()) - int(lm3[2, 0, 0]))           # a total of 2**30
        lm = lm3[:, 0]
        mass = np.array([0, 1, 2**28, 2**27, 12345, 2**28 - 1], dtype=np.int64)
        tok = rng.integers(0, vocab, size=(6, width))
        tok[0, :2], tok[1, :2], tok[2, :2] = (0, vocab - 1), (3 % vocab, 3 % vocab), (vocab - 1, vocab - 1)
        share = rng.integers(0, 2**26, size=(6, width))
        x = np.array([0, vocab - 1, tok[2, 0], tok[3, 1], 1, vocab // 2], dtype=np.int64)
        dense = mixture.scaled_lm(lm, mass)
        for want, got in zip(mixture.coding_terms(dense.copy(), tok, share, x), kernels["mix_terms"](lm, mass, tok, share, x)):
            _equal("mix_terms", want, got)
        _equal("mix_tables", mixture.tables(dense, tok, share), kernels["mix_tables"](lm, mass, tok, share))


def check_ngrams(kernels: Kernels) -> None:
    """The n-gram table's lookups and counting against numpy's: contexts repeated within a step (a
    slot updated several times, by several orders and rows), mostly steady checks with some that
    replace a slot's context, counts past the limit (halving: hundreds of times), full slots
    (replacing the first least counted entry, one halved to 0 among them), dead contexts, tokens up
    to the table's mask."""
    from .mixing.ngram import NgramTable
    from .mixparams import MixParams

    params = MixParams(hash_bits=10, slot_width=3, count_limit=4)
    want, got = NgramTable(params), NgramTable(params)
    rng = np.random.default_rng(12)
    orders = len(params.orders)
    steps = [(rng.integers(0, 3, size=(rows, orders)),
              np.where(rng.random((rows, orders)) < 0.97, 1, rng.integers(0, 3, size=(rows, orders))) * (t % 17 != 3),
              rng.integers(0, 4, size=rows) + (t % 11 == 5) * (2**21 - 5))
             for t, rows in enumerate(rng.integers(1, 9, size=300))]
    one = np.full((1, orders), 4)                                   # one context: the limit, then a new token
    steps += [(one, np.ones_like(one), np.array([7]))] * (params.count_limit + 2) + [(one, np.ones_like(one), np.array([8]))]
    for slot, chk, x in steps:
        for a, b in zip(want.lookup_numpy(slot, chk), kernels["ngram_lookup"](got.table, slot, chk)):
            _equal("ngram_lookup", a, b)
        want.learn_numpy(slot, chk, x)
        kernels["ngram_learn"](got.table, params.count_limit, slot, chk, x)
        _equal("ngram_learn", want.table, got.table)


def check_divide_rows(kernels: Kernels) -> None:
    """The attention kernel's division alone, against numpy's floor division: exact ties (where the
    float64 estimate falls one short before the correction: dozens of the 640 here), numerators on
    both sides of 2**52 (the integer path), negative ones, and tops from 0 to 62."""
    rng = np.random.default_rng(13)
    den = rng.integers(2**14, 2**23, size=64) * 2
    num = rng.integers(-(2**31), 2**31, size=(64, 16))
    top = rng.integers(0, 21, size=64)
    # Ties: 2 * num = k * den with k odd, top 0, so (2 * num + den) / (2 * den) = (k + 1) / 2 exactly.
    num[:40], top[:40] = (den[:40, None] // 2) * (2 * rng.integers(-(2**6), 2**6, size=(40, 16)) + 1), 0
    top[40:48] = [20, 21, 22, 23, 24, 25, 40, 62]                                    # around 2**52 and past it
    want = (2 * (num.astype(np.int64) << top[:, None]) + den[:, None]) // (2 * den[:, None])
    _equal("divide_rows", want, kernels["divide_rows"](num.astype(np.int32), top.astype(np.int32), den))


# The Inductor kernels (fused_torch), and the hand-written ones (llmzip.native).
INDUCTOR_CASES: tuple[Callable[[Kernels], None], ...] = (check_linear_layer, check_attend, check_rotate)
NATIVE_CASES: tuple[Callable[[Kernels], None], ...] = (check_attend8, check_divide_rows, check_linear_native, check_epilogue,
                                                       check_norms, check_activation, check_swiglu, check_head_tables,
                                                       check_quantize_rows, check_mixing, check_ngrams)
CASES = INDUCTOR_CASES + NATIVE_CASES
