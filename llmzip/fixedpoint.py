"""Platform-exact fixed-point primitives for the integer inference engine.

Everything here is a pure function of its integer inputs on every IEEE-754 machine:

* integer arithmetic is done in ``int64`` numpy arrays (sums of integers are exact in
  any order, so reductions cannot vary with SIMD width or thread count);
* matrix products are integer-valued ``float64`` GEMMs, exact because every partial sum
  stays below 2**53 (callers check the bound with :func:`check_gemm_bound`);
* lookup tables for ``exp``, GELU and SiLU are computed with Python's ``decimal`` module
  (libmpdec, deterministic everywhere), never with libm;
* the only float operations on data are conversions, division and ``sqrt``, which
  IEEE-754 requires to be correctly rounded.
"""

from __future__ import annotations

import functools
from decimal import ROUND_HALF_EVEN, Decimal, localcontext

import numpy as np

from . import fused

_PI = Decimal("3.14159265358979323846264338327950288419716939937510582097494459")
EXACT_LIMIT = 2**53  # integers below this are exact in float64


def rshift_round(a: np.ndarray, shift: int | np.ndarray) -> np.ndarray:
    """Divide int64 ``a`` by ``2**shift`` rounding half up; ``shift`` >= 1 (scalar or broadcastable)."""
    return (a + (np.int64(1) << (np.asarray(shift, dtype=np.int64) - 1))) >> shift


def exact_matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x @ w`` for integer-valued float64 operands; returns int64. Exact while partial sums < 2**53."""
    return np.matmul(x.astype(np.float64, copy=False), w).astype(np.int64)


def clip_inplace(a: np.ndarray, bound: int) -> np.ndarray:
    """Clip ``a`` to ``[-bound, bound]`` in place and return it (one pass over ``a``)."""
    return a.clip(np.int64(-bound), np.int64(bound), out=a)   # int64 bounds: no per-call iinfo check


def check_gemm_bound(k: int, max_x: int, max_w: int, what: str) -> None:
    """Raise ValueError unless a K-term dot product of such integers stays exact in float64."""
    if k * max_x * max_w >= EXACT_LIMIT:
        raise ValueError(f"{what}: {k}*{max_x}*{max_w} >= 2**53, float64 GEMM would not be exact")


def _to_int(d: Decimal) -> int:
    return int(d.to_integral_value(rounding=ROUND_HALF_EVEN))


@functools.lru_cache(maxsize=None)
def exp_table(frac_bits: int, out_bits: int, limit: float) -> np.ndarray:
    """``T[i] = round(2**out_bits * exp(-i / 2**frac_bits))`` for i < limit * 2**frac_bits, then a final 0.

    Callers index it with ``min(x, len(T) - 1)`` so that anything beyond the range maps to 0.
    Built by repeated multiplication in 60-digit decimal arithmetic (error far below 2**-out_bits).
    """
    n = int(limit * (1 << frac_bits))
    with localcontext() as ctx:
        ctx.prec = 60
        step = (Decimal(-1) / Decimal(1 << frac_bits)).exp()
        scale, value, out = Decimal(1 << out_bits), Decimal(1), []
        for _ in range(n):
            out.append(_to_int(value * scale))
            value *= step
    out.append(0)
    return np.array(out, dtype=np.int64)


def _gelu_tanh(x: Decimal) -> Decimal:
    """GPT-2's ``gelu_new``: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    y = (2 / _PI).sqrt() * (x + Decimal("0.044715") * x * x * x)
    e = (2 * y).exp()
    return x * (1 - 1 / (e + 1))  # == 0.5 x (1 + tanh y), written to avoid cancellation


def _gelu_erf(x: Decimal) -> Decimal:
    """Exact GELU: x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)), erf by its Taylor series."""
    z = x / Decimal(2).sqrt()
    term, total, n = z, z, 0
    while abs(term) > Decimal(10) ** -40:
        n += 1
        term *= -z * z / n
        total += term / (2 * n + 1)
    return x * (1 + 2 / _PI.sqrt() * total) / 2


def _silu(x: Decimal) -> Decimal:
    """SiLU (swish): x * sigmoid(x)."""
    return x / (1 + (-x).exp())


GELU_KINDS = {"gelu_new": _gelu_tanh, "gelu_pytorch_tanh": _gelu_tanh, "gelu_fast": _gelu_tanh, "gelu": _gelu_erf}
ACTIVATIONS = {**GELU_KINDS, "silu": _silu}
SILU_HALF_RANGE = 16   # |x| >= 16: SiLU(x) is x or 0 within 16 * exp(-16) < 2**-20


@functools.lru_cache(maxsize=None)
def activation_table(kind: str, step_bits: int, half_range: int, out_bits: int) -> np.ndarray:
    """GELU sampled at ``i / 2**step_bits`` for i in [-half_range*2**step_bits, +...], as round(y * 2**out_bits)."""
    fn = ACTIVATIONS[kind]
    n = half_range << step_bits
    with localcontext() as ctx:
        ctx.prec = 70
        return np.array(
            [_to_int(fn(Decimal(i) / Decimal(1 << step_bits)) * (1 << out_bits)) for i in range(-n, n + 1)],
            dtype=np.int64,
        )


def gelu(u: np.ndarray, kind: str, frac_bits: int, step_bits: int = 6, half_range: int = 8) -> np.ndarray:
    """GELU of int64 fixed-point ``u`` (``frac_bits`` fraction bits) by exact linear interpolation.

    Inside [-half_range, half_range) the result interpolates the table between its two
    neighbouring samples; above it GELU(x) = x and below it GELU(x) = 0 (both to far below
    one unit in the last place).
    """
    table = activation_table(kind, step_bits, half_range, frac_bits)
    sub = frac_bits - step_bits
    n = half_range << step_bits
    cell = (u >> sub) + n
    inside = (cell >= 0) & (cell < 2 * n)
    i = np.clip(cell, 0, 2 * n - 1)
    frac = u & ((1 << sub) - 1)
    y = table[i] + rshift_round((table[i + 1] - table[i]) * frac, sub)
    return np.where(inside, y, np.where(cell >= 2 * n, u, 0))


@functools.lru_cache(maxsize=None)
def _gelu_cells(kind: str, frac_bits: int, clip: int, step_bits: int,
                half_range: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-cell (base, slope) of :func:`gelu` over every cell of [-clip, clip], and the first cell."""
    table = activation_table(kind, step_bits, half_range, frac_bits)
    sub, n = frac_bits - step_bits, half_range << step_bits
    cells = np.arange((-clip >> sub) + n, (clip >> sub) + n + 1)
    i = np.clip(cells, 0, 2 * n - 1)
    above, below = cells >= 2 * n, cells < 0
    base = np.where(below, 0, np.where(above, (cells - n) << sub, table[i]))     # GELU(x) = x above
    slope = np.where(below, 0, np.where(above, 1 << sub, table[i + 1] - table[i]))
    return base, slope, int(cells[0] - n)


def gelu_clipped(u: np.ndarray, kind: str, frac_bits: int, clip: int, step_bits: int = 6,
                 half_range: int = 8) -> np.ndarray:
    """:func:`gelu` for ``|u| <= clip``, bit-identical and about 3x faster.

    Every cell of ``2**-step_bits`` gets a (base, slope) pair, including the cells outside the
    table (slope 0 below, identity above), so one lookup replaces the range tests.
    """
    base, slope, first = _gelu_cells(kind, frac_bits, clip, step_bits, half_range)
    sub = frac_bits - step_bits
    idx = u >> sub
    idx -= first
    y = np.take(slope, idx)
    y *= u & ((1 << sub) - 1)
    y += 1 << (sub - 1)
    y >>= sub
    y += np.take(base, idx)
    return y


def silu(u: np.ndarray, frac_bits: int) -> np.ndarray:
    """SiLU of int64 fixed-point ``u`` (``frac_bits`` fraction bits, |u| < 2**62): the table's
    linear interpolation (cells of 2**-6) inside [-16, 16], ``u`` above and 0 below."""
    return activation_lookup(u, "silu", frac_bits, half_range=SILU_HALF_RANGE)


def silu_table(frac_bits: int) -> tuple[np.ndarray, int]:
    """The table :func:`silu` reads (index ``u + limit``) and its ``limit``, for the fused kernels."""
    return activation_values("silu", frac_bits, half_range=SILU_HALF_RANGE)


def activation_values(kind: str, frac_bits: int, step_bits: int = 6, half_range: int = 8) -> tuple[np.ndarray, int]:
    """The table :func:`activation_lookup` reads (index ``u + limit``) and its ``limit``."""
    return _activation_values(kind, frac_bits, step_bits, half_range), half_range << frac_bits


def activation_lookup(u: np.ndarray, kind: str, frac_bits: int, step_bits: int = 6, half_range: int = 8) -> np.ndarray:
    """:func:`gelu_clipped` of int64 ``u`` for any clip (|u| < 2**62), bit-identical: one read of
    a table holding its value at every input of the table's range, ``u`` above it, 0 below it.

    Inside the range the interpolation takes ~10 passes over ``u``; the full table (2**17 + 1
    entries for SiLU at 12 fraction bits, 1 MiB) takes one.
    """
    limit = half_range << frac_bits
    if fused.active():
        return fused.kernel("activation")(u, _activation_values(kind, frac_bits, step_bits, half_range), limit)
    idx = np.clip(u, np.int64(-limit), np.int64(limit))
    idx += limit
    y = np.take(_activation_values(kind, frac_bits, step_bits, half_range), idx)
    np.copyto(y, u, where=u > limit)      # the identity above the range
    return y


@functools.lru_cache(maxsize=None)
def _activation_values(kind: str, frac_bits: int, step_bits: int, half_range: int) -> np.ndarray:
    """:func:`gelu_clipped` at every input ``-limit..limit`` (read-only). Its first entry is the
    value below the range too, so it must be 0 (it is for GELU and SiLU: below 2**-20)."""
    limit = half_range << frac_bits
    table = gelu_clipped(np.arange(-limit, limit + 1, dtype=np.int64), kind, frac_bits, limit, step_bits, half_range)
    if table[0] != 0:
        raise ValueError(f"{kind}: the table's value at -{half_range} is not 0")
    table.setflags(write=False)
    return table


def bit_length(a: np.ndarray) -> np.ndarray:
    """Bit length of non-negative int64 values below 2**53 (exact via frexp)."""
    return np.frexp(a.astype(np.float64))[1].astype(np.int64)


def layer_norm(
    h: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, in_frac: int, out_frac: int, gamma_frac: int
) -> np.ndarray:
    """LayerNorm over the last axis of int64 ``h`` (``in_frac`` fraction bits) -> ``out_frac`` bits.

    The mean is an exact integer sum, rounded half up; the centred row goes through
    :func:`_normalise`. ``gamma`` has ``gamma_frac`` and ``beta`` ``out_frac`` fraction bits.
    """
    z = _normalise(h - row_mean(h), eps, in_frac, out_frac)
    _scale_round(z, gamma, gamma_frac)
    z += beta
    return z


def row_mean(h: np.ndarray) -> np.ndarray:
    """LayerNorm's mean of each row, an integer rounded half up: (..., 1)."""
    d = h.shape[-1]
    return (2 * h.sum(-1, keepdims=True) + d) // (2 * d)


def rms_norm(h: np.ndarray, gamma: np.ndarray, eps: float, in_frac: int, out_frac: int, gamma_frac: int) -> np.ndarray:
    """RMSNorm over the last axis of int64 ``h`` (``in_frac`` fraction bits) -> ``out_frac`` bits:
    :func:`layer_norm` without the mean and the bias. ``gamma`` has ``gamma_frac`` fraction bits."""
    return _scale_round(_normalise(h, eps, in_frac, out_frac), gamma, gamma_frac)


def _scale_round(z: np.ndarray, factor: np.ndarray, shift: int | np.ndarray) -> np.ndarray:
    """``z = rshift_round(z * factor, shift)`` in place (``shift`` >= 1); returns ``z``."""
    z *= factor
    z += np.int64(1) << (np.asarray(shift, dtype=np.int64) - 1)
    z >>= shift
    return z


def norm_square_bits(d: int) -> int:
    """Bits a row of ``d`` entries keeps before squaring, so that its sum of squares stays below 2**62."""
    return (62 - int(d - 1).bit_length()) // 2 - 1


def _normalise(x: np.ndarray, eps: float, in_frac: int, out_frac: int) -> np.ndarray:
    """``x / sqrt(mean(x**2) + eps)`` over the last axis, ``in_frac`` -> ``out_frac`` fraction bits.

    The shared integer core of both norms. Each row is shifted right just enough that its sum
    of squares stays below 2**62 (a deterministic function of the row) and summed exactly; the
    row's scale comes from :func:`norm_scale`, and the product
    ``|xs| < 2**sq_bits <= 2**30`` times ``inv <= 2**25`` stays below 2**55.
    Returns a new array (``x`` is not modified).
    """
    peak = np.maximum(x.max(-1, keepdims=True), -x.min(-1, keepdims=True))    # max |x|, no |x| array
    shift = np.maximum(bit_length(peak) - norm_square_bits(x.shape[-1]), 0)
    xs = x >> shift
    ss = np.einsum("...i,...i->...", xs, xs)[..., None]                      # exact int64 sums of squares
    inv, out_shift = norm_scale(ss, shift, x.shape[-1], eps, in_frac, out_frac)
    return _scale_round(xs, inv, out_shift)


def norm_scale(ss: np.ndarray, shift: np.ndarray, d: int, eps: float, in_frac: int,
               out_frac: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the integer ``inv`` and shift ``s`` with ``x / rms ~ (x >> shift) * inv >> s``, from
    the row's exact sum of squares ``ss`` of ``x >> shift``.

    ``rms = sqrt(ss / d + eps)`` is a correctly rounded float64 (IEEE-754 rounds division and
    ``sqrt`` correctly); ``2**g / rms`` is floored to an integer of 25 bits whatever the row's
    scale (``g`` follows rms's exponent), so the result keeps ~24 significant bits.
    """
    eps_scaled = np.ldexp(np.float64(eps), 2 * (in_frac - shift))  # exact power-of-two scaling
    rms = np.sqrt(ss.astype(np.float64) / d + eps_scaled)
    g = 24 + np.frexp(rms)[1].astype(np.int64)                      # rms < 2**(g - 24)
    inv = np.floor(np.ldexp(1.0, g) / rms).astype(np.int64)         # in (2**24, 2**25]
    return inv, g - out_frac
