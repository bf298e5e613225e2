"""Rotary position embeddings with tables built in exact decimal arithmetic (never libm).

Frequencies follow Hugging Face: ``inv_freq[i] = theta ** (-2i / head_dim)``, optionally rescaled
the Llama-3 way or linearly (``rope_scaling``). The table holds ``round(2**ROPE_FRAC * cos(p f))``
and the sine for every position ``p`` below the engine's context: each angle's rotation is
``z_p = z_(p-1) * exp(i f)`` in 50-digit decimal arithmetic (libmpdec, correctly rounded and the
same on every machine), so the table is a pure function of the spec. Rotation (the "rotate half"
layout: dimension ``i`` pairs with ``i + head_dim / 2``) is then integer arithmetic.
"""

from __future__ import annotations

import functools
from decimal import ROUND_HALF_EVEN, Decimal, localcontext

import numpy as np

from ..fixedpoint import _PI, rshift_round

ROPE_FRAC = 16   # cos and sin as integers over 2**16: |x * cos - y * sin| < 2**21 * 2**17 fits int64


def _cos_sin(x: Decimal) -> tuple[Decimal, Decimal]:
    """cos and sin of |x| <= 4 by their Taylor series (terms below 1e-55)."""
    cos, sin, term, n = Decimal(0), Decimal(0), Decimal(1), 0
    while n < 4 or abs(term) > Decimal(10) ** -55:
        if n % 2 == 0:
            cos += term if n % 4 == 0 else -term
        else:
            sin += term if n % 4 == 1 else -term
        n += 1
        term = term * x / n
    return cos, sin


def inverse_frequencies(theta: str, head_dim: int, scaling: tuple[tuple[str, str], ...]) -> list[Decimal]:
    """``inv_freq`` as in transformers' rope initialisation, in decimal (``theta`` and scaling values
    are decimal strings, so the spec's JSON reproduces them exactly)."""
    params = dict(scaling)
    kind = params.get("rope_type", "default")
    freqs = [(-(Decimal(2 * i) / head_dim) * Decimal(theta).ln()).exp() for i in range(head_dim // 2)]
    if kind == "default":
        return freqs
    factor = Decimal(params["factor"])
    if kind == "linear":
        return [f / factor for f in freqs]
    if kind != "llama3":
        raise ValueError(f"rope scaling {kind!r} is not supported by the exact engine")
    low, high = Decimal(params["low_freq_factor"]), Decimal(params["high_freq_factor"])
    old = Decimal(params["original_max_position_embeddings"])
    out = []
    for f in freqs:
        wavelen = 2 * _PI / f
        if wavelen < old / high:
            out.append(f)
        elif wavelen > old / low:
            out.append(f / factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append((1 - smooth) * f / factor + smooth * f)
    return out


@functools.lru_cache(maxsize=8)
def rope_table(theta: str, head_dim: int, scaling: tuple[tuple[str, str], ...],
               positions: int) -> tuple[np.ndarray, np.ndarray]:
    """int64 (positions, head_dim / 2) cosines and sines with ROPE_FRAC fraction bits."""
    half = head_dim // 2
    cos = np.empty((positions, half), dtype=np.int64)
    sin = np.empty((positions, half), dtype=np.int64)
    scale = Decimal(1 << ROPE_FRAC)
    with localcontext() as ctx:
        ctx.prec = 50
        for i, f in enumerate(inverse_frequencies(theta, head_dim, scaling)):
            wc, ws = _cos_sin(f)                     # f <= 1: one step of the rotation
            zc, zs = Decimal(1), Decimal(0)
            for p in range(positions):
                cos[p, i] = int((zc * scale).to_integral_value(rounding=ROUND_HALF_EVEN))
                sin[p, i] = int((zs * scale).to_integral_value(rounding=ROUND_HALF_EVEN))
                zc, zs = zc * wc - zs * ws, zc * ws + zs * wc
    cos.setflags(write=False)
    sin.setflags(write=False)
    return cos, sin


def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate int64 ``x`` (rows, T, heads, head_dim) by the table rows (T, head_dim / 2) of its
    positions; same fraction bits out as in. Integer products: ``|x| < 2**21``, ``|cos| <= 2**16``."""
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return np.concatenate([rshift_round(a * c - b * s, ROPE_FRAC), rshift_round(b * c + a * s, ROPE_FRAC)], axis=-1)
