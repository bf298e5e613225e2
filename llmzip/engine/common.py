"""Fixed-point formats and the pieces every architecture shares: norms, scaling, fingerprints.

The formats (fraction bits and clip bounds of int64 activations) are part of every engine's
arithmetic: changing one changes archives (add an engine version, see :mod:`.versions`).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass
from decimal import Decimal, localcontext
from typing import Any, Iterable

import numpy as np

from .. import attention8, fused
from ..fixedpoint import clip_inplace, layer_norm, norm_square_bits, rms_norm

RESID_FRAC = 16          # residual stream fraction bits
RESID_CLIP = 2**30 - 1   # residual magnitude bound (2**14 in real units)
ACT_FRAC = 12            # fraction bits of every GEMM input
ACT_CLIP = 2**20 - 1     # GEMM input magnitude bound (256 in real units)
GAMMA_FRAC = 14          # norm gain fraction bits
ATT_FRAC = attention8.ATT_FRAC   # attention scores: 1/256 nat (one constant for every engine)
QUERY_SCALE_BITS = 16    # 1/sqrt(head_dim) as an integer over 2**16
SCORE_SHIFT = 2 * ACT_FRAC + QUERY_SCALE_BITS - ATT_FRAC   # q.k * scale -> ATT_FRAC bits


def to_fixed(a: Any, frac: int) -> np.ndarray:
    """Round a float array to int64 with ``frac`` fraction bits (deterministic IEEE ops)."""
    return np.round(np.ldexp(np.asarray(a, dtype=np.float64), frac)).astype(np.int64)


@dataclass(frozen=True)
class LayerNorm:
    """LayerNorm of the residual stream (RESID_FRAC) into a GEMM input (ACT_FRAC, clipped)."""

    gamma: np.ndarray  # int64, GAMMA_FRAC fraction bits
    beta: np.ndarray   # int64, ACT_FRAC fraction bits

    @classmethod
    def quantize(cls, gamma: Any, beta: Any) -> "LayerNorm":
        return cls(to_fixed(gamma, GAMMA_FRAC), to_fixed(beta, ACT_FRAC))

    def __call__(self, h: np.ndarray, eps: float) -> np.ndarray:
        y = _fused_norm(h, self.gamma, self.beta, eps, centre=True) if fused.active() else None
        if y is not None:
            return y
        y = layer_norm(h, self.gamma, self.beta, eps, RESID_FRAC, ACT_FRAC, GAMMA_FRAC)
        return clip_inplace(y, ACT_CLIP)


@dataclass(frozen=True)
class RMSNorm:
    """RMSNorm (no mean, no bias) of the residual stream into a GEMM input (ACT_FRAC, clipped)."""

    gamma: np.ndarray  # int64, GAMMA_FRAC fraction bits

    @classmethod
    def quantize(cls, gamma: Any) -> "RMSNorm":
        return cls(to_fixed(gamma, GAMMA_FRAC))

    @functools.cached_property
    def _no_bias(self) -> np.ndarray:
        """Zeros as the fused LayerNorm kernel's bias: one array, whose address the kernel keeps."""
        return np.zeros_like(self.gamma)

    def __call__(self, h: np.ndarray, eps: float) -> np.ndarray:
        y = _fused_norm(h, self.gamma, self._no_bias, eps, centre=False) if fused.active() else None
        if y is not None:
            return y
        y = rms_norm(h, self.gamma, eps, RESID_FRAC, ACT_FRAC, GAMMA_FRAC)
        return clip_inplace(y, ACT_CLIP)


def _fused_norm(h: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, centre: bool) -> np.ndarray | None:
    """LayerNorm (``centre``) or RMSNorm then the clip, by one native kernel: the numpy integers, the
    rows' scales by the same IEEE operations as :func:`~llmzip.fixedpoint.norm_scale`. None (use
    numpy) if a row's final shift is outside 1..62, which the kernel's shifts do not define (never
    seen: it needs a row of zeros and eps below 2**-56)."""
    d = h.shape[-1]
    flat = h.reshape(-1, d)
    y = fused.kernel("norm")(flat, centre, norm_square_bits(d), eps, RESID_FRAC, ACT_FRAC, gamma, GAMMA_FRAC, beta,
                             ACT_CLIP)
    return None if y is None else y.reshape(h.shape)


def inverse_sqrt(n: int) -> int:
    """round(2**QUERY_SCALE_BITS / sqrt(n)) in exact decimal arithmetic."""
    with localcontext() as ctx:
        ctx.prec = 40
        return int((Decimal(2**QUERY_SCALE_BITS) / Decimal(n).sqrt()).to_integral_value())


def fingerprint(tag: str, spec: Any, arrays: Iterable[np.ndarray]) -> bytes:
    """SHA-256 of ``tag`` (architecture and engine version), the spec (as sorted JSON) and the
    integers the engine computes with, each as little-endian int64."""
    digest = hashlib.sha256(tag.encode())
    digest.update(json.dumps(asdict(spec), sort_keys=True).encode())
    for array in arrays:
        digest.update(np.ascontiguousarray(array.astype("<i8")).tobytes())
    return digest.digest()
