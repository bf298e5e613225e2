"""The torch side of :mod:`llmzip.fused`: each kernel is the numpy reference's chain of passes
written as torch operations, compiled ahead of time into one loop nest per chain by Inductor
(:mod:`llmzip.fused_aot`). Every argument is a tensor (numbers travel as 0-d tensors), so one
compiled kernel serves every value. Imports torch: only :mod:`llmzip.fused_aot` loads it.

Each function's docstring names the numpy code it must equal; :mod:`llmzip.fused_check` holds the
inputs that prove it in every process that loads the kernels.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch

# The engine's tables and masks are read-only numpy arrays; the kernels only read them.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)

Q_MAX = 127
# One OpenMP thread per kernel, fixed at compile time (the codec's workers are the parallelism).
# No unsafe-math and no floating-point contraction, whatever the environment says (Inductor's
# defaults; the kernels' float steps are exact, so neither could change a bit anyway). Constants
# inside the shared library, which is all fused_aot keeps of a build.
COMPILE_OPTIONS: dict[str, Any] = {"cpp.threads": 1, "cpp.enable_unsafe_math_opt_flag": False,
                                   "cpp.enable_floating_point_contract_flag": "off",
                                   "aot_inductor.package_constants_in_so": True}
Scalar = Any    # an int or float, or the 0-d tensor that carries it into a compiled kernel


def _bit_length(peak: torch.Tensor) -> torch.Tensor:
    """Bit length of non-negative int64 values, read from the exponent field of their float64
    conversion: ``fixedpoint.bit_length`` (frexp of the same conversion, rounded to nearest) for
    every value, exact below 2**53 (the only range the engine passes: its largest inputs are 2**36
    into ``down`` and the attention queries). 0 gives 0 (its field is 0)."""
    field = (peak.to(torch.float64).view(torch.int64) >> 52) & 2047
    return torch.clamp(field - 1022, min=0)


def _quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``linear8.quantize_rows`` over the last axis: int8 values, int64 shifts (one per row)."""
    peak = torch.maximum(x.amax(-1), -x.amin(-1))
    e = torch.clamp(_bit_length(peak) - 7, min=0)              # 0 <= e <= 57: defined shifts
    q = (x + ((torch.ones_like(e) << e) >> 1).unsqueeze(-1)) >> e.unsqueeze(-1)
    return torch.clamp(q, -Q_MAX, Q_MAX).to(torch.int8), e


def _pow2_float32(e: torch.Tensor) -> torch.Tensor:
    """2**e as float32 for integers -126 <= e <= 127, built from its bits (no libm)."""
    return ((e.to(torch.int32) + 127) << 23).view(torch.float32)


def _pow2_float64(e: torch.Tensor) -> torch.Tensor:
    """2**e as float64 for integers -1022 <= e <= 1023, built from its bits (no libm)."""
    return ((e.to(torch.int64) + 1023) << 52).view(torch.float64)


def linear8(x: torch.Tensor, w: torch.Tensor, factor: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``Linear8.float_out``: ``floor(q(x) @ W * factor * 2**e + bias)`` as float64 (n, out).

    The int32 product is exact; ``acc * factor`` has at most 46 significant bits and the scaling by
    ``2**e`` is exact, so the only rounding is the bias addition, as in numpy's order."""
    q, e = _quantize_rows(x)
    acc = torch._int_mm(q, w)
    out = acc.to(torch.float64) * factor * _pow2_float64(e).unsqueeze(-1) + bias
    return torch.floor(out)


def linear8_int(x: torch.Tensor, w: torch.Tensor, factor: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``Linear8.__call__``: :func:`linear8` as int64 (every value below 2**62 by the load-time bound)."""
    return linear8(x, w, factor, bias).to(torch.int64)


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, value_exp: torch.Tensor,
           top: torch.Tensor, add: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``attention8._attend_rows`` for queries (R, KV, G*T, hd) int64 (``quantize_vectors`` included).

    ``keys``/``values`` float32 (R, KV, capacity, hd) and ``value_exp`` int64 (R, KV, capacity) are
    the cache's rows (whole arrays: one layout whatever the position), read up to position ``end``,
    the length of ``add``; ``top`` int64 (R, KV, G*T) the running maximum of value exponents at each
    query's position (already tiled over the G heads); ``add`` float64 (G*T, end),
    ``_round_or_mask``: the rounding half or the mask, or (end,) halves for a decoding step, where
    every key is visible; ``table`` the int32 weight table. Returns int64 (R, KV, G*T, hd).
    """
    end = add.shape[-1]
    keys, values, value_exp = keys[:, :, :end], values[:, :, :end], value_exp[:, :, :end]
    q8, eq = _quantize_rows(q)
    queries = q8.to(torch.float32) * _pow2_float32(eq).unsqueeze(-1)          # exact: |q8| <= 127
    scores = torch.matmul(queries, keys.transpose(-1, -2)).to(torch.float64)   # exact (module doc of attention8)
    scores = torch.floor(scores + add)
    gaps = scores.amax(-1, keepdim=True) - scores
    last = table.shape[0] - 1
    weights = table[torch.clamp(gaps, 0.0, float(last)).to(torch.int64)]       # masked gaps -> last entry, 0
    den = weights.sum(-1, keepdim=True, dtype=torch.int64)
    # numpy's w >> (E - e_s) gives 0 for counts < 0 (only at masked positions, where w == 0) and for
    # counts >= 32 (w <= 2**15); clamping to [0, 31] gives the same 0 without C++'s undefined shifts.
    count = torch.clamp(top.to(torch.int32).unsqueeze(-1) - value_exp.to(torch.int32).unsqueeze(-2), 0, 31)
    weights = weights >> count
    # The weights (<= 2**15) in bytes, each byte's product with the int8 values a float32 GEMM on the
    # cache as it is held: every sum is below 255 * 127 * SPAN < 2**24, exact (the caller keeps
    # end <= attention8.SPAN), and a float32 GEMM runs ~3x as fast here as one float64 GEMM.
    high = torch.matmul((weights >> 8).to(torch.float32), values).to(torch.int64)
    low = torch.matmul((weights & 255).to(torch.float32), values).to(torch.int64)
    num = ((high << 8) + low) << top.unsqueeze(-1)
    return torch.div(2 * num + den, 2 * den, rounding_mode="floor")


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, frac: Scalar, clip: Scalar) -> torch.Tensor:
    """``rope.rotate`` of every head of ``x`` (rows, T, heads, hd), then the clip
    ``ExactLlama._attention`` applies: int64 (rows, T, heads, hd)."""
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    r = 1 << (frac - 1)
    out = torch.cat([(a * c - b * s + r) >> frac, (b * c + a * s + r) >> frac], dim=-1)
    return torch.clamp(out, -clip, clip)


KERNELS: dict[str, Callable[..., Any]] = {
    "linear8": linear8, "linear8_int": linear8_int, "attend": attend, "rotate": rotate,
}
