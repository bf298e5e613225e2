"""Exact integer inference for GPT-2-architecture models.

The engine's outputs are a pure function of (integer weights, token prefix): the same
bits whatever the thread count, batch size or composition, BLAS library, and whether a
sequence is evaluated in one forward pass or token by token with a KV cache. That is what
lets an archive written on one machine decode on another.

How (see :mod:`llmzip.fixedpoint` for the primitives; ``engine_id`` picks the arithmetic):

* engine 1 quantises weights once, at load, to 16-bit integers with a power-of-two scale per
  output channel, so rescaling after a GEMM is a rounding right shift; engines 2 and 3 use
  int8 weights and int8 rows (:mod:`llmzip.linear8`); engine 3 also keeps the KV cache in
  int8 and computes attention with exact float32 GEMMs (:mod:`llmzip.attention8`);
* activations are int64 fixed point: the residual stream keeps ``RESID_FRAC`` fraction
  bits, GEMM inputs ``ACT_FRAC`` bits clipped to ``ACT_CLIP``, attention logits and output
  logits ``LOGIT_FRAC`` bits;
* GEMMs run on integer values whose partial sums provably stay exact (below 2**53 in
  float64, 2**31 in int32, 2**24 in float32);
* softmax and GELU read exact lookup tables; LayerNorm uses integer sums;
* masked attention positions get weight exactly 0, so a full causal pass and an
  incremental pass add exactly the same integers.

Changing any constant here changes the archives: bump :data:`ENGINE_ID`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from decimal import Decimal, localcontext
from typing import Mapping

import numpy as np

from . import attention8
from .fixedpoint import check_gemm_bound, clip_inplace, exact_matmul, exp_table, gelu_clipped, GELU_KINDS, layer_norm, rshift_round
from .linear8 import Q_MAX, Linear8, quantize_linear8
from .quantize import LOGIT_FRAC_BITS

ENGINE_ID = 3            # archive field "engine" written by this version (see ENGINES)
ENGINES = (1, 2, 3)      # 1: 16-bit weights, float64 GEMMs; 2: int8 weights and activations (linear8);
                         # 3: as 2, plus int8 attention and KV cache (attention8)
WEIGHT_BITS = 15         # |w| <= 2**15 - 1 after per-channel power-of-two scaling
RESID_FRAC = 16          # residual stream fraction bits
RESID_CLIP = 2**30 - 1   # residual magnitude bound (2**14 in real units)
ACT_FRAC = 12            # fraction bits of every GEMM input
ACT_CLIP = 2**20 - 1     # GEMM input magnitude bound (256 in real units)
GAMMA_FRAC = 14          # LayerNorm gain fraction bits
ATT_FRAC = attention8.ATT_FRAC   # attention logits: 1/256 nat (one constant for every engine)
ATT_EXP_BITS = 16        # attention weights: exp(0) == 2**16
SCALE_BITS = 16          # 1/sqrt(head_dim) as an integer over 2**16
MASKED = -(2**62)        # attention score of a masked key: exp() of it reads as exactly 0
ATTEND_BUDGET = 1 << 22  # entries of the largest attention temporary (speed/memory only)


@dataclass(frozen=True)
class GPT2Spec:
    """The shape and hyper-parameters the engine needs; all of it is fingerprinted."""

    n_layer: int
    n_head: int
    n_embd: int
    n_ctx: int
    vocab_size: int
    eps: float
    activation: str

    @classmethod
    def from_config(cls, config: object) -> "GPT2Spec":
        """Build from a ``transformers.GPT2Config`` (or anything with the same attributes).

        Raises:
            ValueError: the config asks for a GPT-2 variant this engine does not compute
                (attention scaled by layer index, or unscaled attention).
        """
        if getattr(config, "scale_attn_by_inverse_layer_idx", False):
            raise ValueError("scale_attn_by_inverse_layer_idx is not supported by the exact engine")
        if not getattr(config, "scale_attn_weights", True):
            raise ValueError("scale_attn_weights=False is not supported by the exact engine")
        return cls(
            n_layer=int(config.n_layer), n_head=int(config.n_head), n_embd=int(config.n_embd),
            n_ctx=int(config.n_positions), vocab_size=int(config.vocab_size),
            eps=float(config.layer_norm_epsilon), activation=str(config.activation_function),
        )


@dataclass(frozen=True)
class Linear:
    """Integer affine map ``y = round((x @ w) / 2**shift) + b`` with per-output-channel shift."""

    w: np.ndarray      # float64 (in, out), integer-valued, |w| <= 2**WEIGHT_BITS - 1
    shift: np.ndarray  # int64 (out,), each >= 1
    b: np.ndarray      # int64 (out,), in the output format
    _half: np.ndarray = field(init=False, repr=False, compare=False)   # float64 2**(shift-1)
    _inv: np.ndarray = field(init=False, repr=False, compare=False)    # float64 2**-shift
    _bias: np.ndarray = field(init=False, repr=False, compare=False)   # float64 b

    def __post_init__(self) -> None:
        object.__setattr__(self, "_half", np.ldexp(1.0, self.shift - 1))
        object.__setattr__(self, "_inv", np.ldexp(1.0, -self.shift))
        object.__setattr__(self, "_bias", self.b.astype(np.float64))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.float_out(x).astype(np.int64)

    def float_out(self, x: np.ndarray) -> np.ndarray:
        """The same integers as :meth:`__call__`, as float64.

        ``floor((acc + 2**(s-1)) * 2**-s)`` is :func:`rshift_round` in float64: every value is
        an integer below 2**53 and scaling by a power of two is exact.
        """
        flat = x.reshape(-1, x.shape[-1]).astype(np.float64, copy=False)   # one 2-D GEMM, not a batch
        acc = np.matmul(flat, self.w).reshape(*x.shape[:-1], self.w.shape[1])
        acc += self._half
        acc *= self._inv
        np.floor(acc, out=acc)
        acc += self._bias
        return acc

    def integer_arrays(self) -> list[np.ndarray]:
        return [self.w.astype(np.int64), self.shift, self.b]


def quantize_linear(w: np.ndarray, b: np.ndarray | None, in_frac: int, out_frac: int) -> Linear:
    """Quantise float weights ``w`` (in, out) to 16-bit integers with a power-of-two scale per column."""
    w = np.asarray(w, dtype=np.float64)
    peak = np.abs(w).max(0)
    _, exponent = np.frexp(peak)                      # peak = f * 2**exponent, f in [0.5, 1)
    scale_bits = np.where(peak > 0, WEIGHT_BITS - exponent, 0)
    scale_bits = np.clip(scale_bits, out_frac - in_frac + 1, 50)   # keep every shift >= 1
    limit = 2**WEIGHT_BITS - 1
    w_int = np.clip(np.round(np.ldexp(w, scale_bits[None, :])), -limit, limit)
    bias = np.zeros(w.shape[1]) if b is None else np.asarray(b, dtype=np.float64)
    b_int = np.round(np.ldexp(bias, out_frac)).astype(np.int64)
    shift = (scale_bits + in_frac - out_frac).astype(np.int64)
    return Linear(np.ascontiguousarray(w_int), shift, b_int)   # row-major: fastest GEMM layout here


def to_fixed(a: np.ndarray, frac: int) -> np.ndarray:
    """Round float array to int64 with ``frac`` fraction bits (deterministic IEEE ops)."""
    return np.round(np.ldexp(np.asarray(a, dtype=np.float64), frac)).astype(np.int64)


@dataclass(frozen=True)
class Norm:
    gamma: np.ndarray  # int64, GAMMA_FRAC fraction bits
    beta: np.ndarray   # int64, ACT_FRAC fraction bits

    def __call__(self, h: np.ndarray, eps: float) -> np.ndarray:
        y = layer_norm(h, self.gamma, self.beta, eps, RESID_FRAC, ACT_FRAC, GAMMA_FRAC)
        return clip_inplace(y, ACT_CLIP)


def quantize_norm(gamma: np.ndarray, beta: np.ndarray) -> Norm:
    return Norm(to_fixed(gamma, GAMMA_FRAC), to_fixed(beta, ACT_FRAC))


@dataclass(frozen=True)
class Block:
    ln_1: Norm
    attn: Linear | Linear8     # c_attn: d -> 3d (q, k, v), outputs ACT_FRAC
    proj: Linear | Linear8     # attn c_proj: d -> d, outputs RESID_FRAC
    ln_2: Norm
    fc: Linear | Linear8       # mlp c_fc: d -> 4d, outputs ACT_FRAC
    fc_proj: Linear | Linear8  # mlp c_proj: 4d -> d, outputs RESID_FRAC


class KVCache:
    """Keys and values of every layer for a batch of rows that advance in lockstep.

    Keys are stored transposed, (rows, heads, head_dim, capacity), so that scoring a block
    of queries is a plain GEMM over a prefix of the last axis; values are (rows, heads,
    capacity, head_dim). Both hold integer-valued float64, ready for exact GEMMs.
    """

    def __init__(self, n_layer: int, rows: int, n_head: int, capacity: int, head_dim: int) -> None:
        self.keys = [np.zeros((rows, n_head, head_dim, capacity)) for _ in range(n_layer)]
        self.values = [np.zeros((rows, n_head, capacity, head_dim)) for _ in range(n_layer)]
        self.length = 0

    @property
    def rows(self) -> int:
        return self.keys[0].shape[0]

    def keep(self, rows: np.ndarray) -> None:
        """Drop every row not listed in ``rows`` (e.g. chunks that have ended)."""
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]


class ExactGPT2:
    """A GPT-2 whose every output is an exact integer function of weights and tokens."""

    def __init__(self, spec: GPT2Spec, state: Mapping[str, np.ndarray], engine_id: int = ENGINE_ID) -> None:
        """Quantise a Hugging Face ``GPT2LMHeadModel`` state dict (float arrays, Conv1D layout)
        with the arithmetic of ``engine_id`` (one of :data:`ENGINES`)."""
        if engine_id not in ENGINES:
            raise ValueError(f"unknown engine {engine_id}")
        self.engine_id = engine_id
        if spec.activation not in GELU_KINDS:
            raise ValueError(f"unsupported activation {spec.activation!r}")
        if spec.n_embd % spec.n_head:
            raise ValueError("n_embd must be a multiple of n_head")
        self.spec = spec
        self.head_dim = spec.n_embd // spec.n_head
        p = "transformer."
        self.wte = to_fixed(state[p + "wte.weight"], RESID_FRAC)
        self.wpe = to_fixed(state[p + "wpe.weight"], RESID_FRAC)
        self._linear = quantize_linear if engine_id == 1 else quantize_linear8
        self.blocks = [self._block(state, f"{p}h.{i}.") for i in range(spec.n_layer)]
        self.ln_f = quantize_norm(state[p + "ln_f.weight"], state[p + "ln_f.bias"])
        head = state.get("lm_head.weight", state[p + "wte.weight"])
        self.head = self._linear(np.asarray(head).T, None, ACT_FRAC, LOGIT_FRAC_BITS)
        self.att_scale = _inverse_sqrt(self.head_dim)
        self._check_bounds()
        self.fingerprint = self._fingerprint()

    def _block(self, state: Mapping[str, np.ndarray], p: str) -> Block:
        lin = self._linear
        return Block(
            ln_1=quantize_norm(state[p + "ln_1.weight"], state[p + "ln_1.bias"]),
            attn=lin(state[p + "attn.c_attn.weight"], state[p + "attn.c_attn.bias"], ACT_FRAC, ACT_FRAC),
            proj=lin(state[p + "attn.c_proj.weight"], state[p + "attn.c_proj.bias"], ACT_FRAC, RESID_FRAC),
            ln_2=quantize_norm(state[p + "ln_2.weight"], state[p + "ln_2.bias"]),
            fc=lin(state[p + "mlp.c_fc.weight"], state[p + "mlp.c_fc.bias"], ACT_FRAC, ACT_FRAC),
            fc_proj=lin(state[p + "mlp.c_proj.weight"], state[p + "mlp.c_proj.bias"], ACT_FRAC, RESID_FRAC),
        )

    def _check_bounds(self) -> None:
        """Prove at load that every float64 GEMM of this model is exact."""
        d = self.spec.n_embd
        inner = max(blk.fc_proj.w.shape[0] for blk in self.blocks)   # n_inner, 4 * d by default
        if self.engine_id == 1:
            check_gemm_bound(max(inner, d), ACT_CLIP, 2**WEIGHT_BITS - 1, "linear layers")
        elif max(inner, d) * Q_MAX * Q_MAX >= 2**31:
            raise ValueError("linear layers: int8 products could overflow int32")
        if self.engine_id >= 3:
            attention8.check_bounds(self.head_dim)
            return
        check_gemm_bound(self.head_dim, ACT_CLIP, ACT_CLIP, "attention scores")
        check_gemm_bound(self.spec.n_ctx, 2**ATT_EXP_BITS, ACT_CLIP, "attention values")

    def _fingerprint(self) -> bytes:
        """SHA-256 of the engine version, the spec and every integer the engine computes with."""
        digest = hashlib.sha256(f"llmzip-exact-gpt2/{self.engine_id}".encode())
        digest.update(json.dumps(asdict(self.spec), sort_keys=True).encode())
        for array in self._integer_arrays():
            digest.update(np.ascontiguousarray(array.astype("<i8")).tobytes())
        return digest.digest()

    def _integer_arrays(self) -> list[np.ndarray]:
        arrays = [self.wte, self.wpe]
        for blk in self.blocks:
            for lin in (blk.attn, blk.proj, blk.fc, blk.fc_proj):
                arrays += lin.integer_arrays()
            arrays += [blk.ln_1.gamma, blk.ln_1.beta, blk.ln_2.gamma, blk.ln_2.beta]
        head = self.head.integer_arrays()[:-1]   # the head has no bias (version 1 hashed w, shift)
        return arrays + [self.ln_f.gamma, self.ln_f.beta, *head]

    # ------------------------------------------------------------------ inference

    def new_cache(self, rows: int, capacity: int | None = None) -> KVCache | attention8.KVCache8:
        s = self.spec
        kind = attention8.KVCache8 if self.engine_id >= 3 else KVCache
        return kind(s.n_layer, rows, s.n_head, capacity or s.n_ctx, self.head_dim)

    def kv_bytes_per_row(self) -> int:
        """KV-cache bytes one row of a full context needs."""
        s = self.spec
        if self.engine_id >= 3:
            return attention8.KVCache8.bytes_per_row(s.n_layer, s.n_head, s.n_ctx, self.head_dim)
        return s.n_layer * 2 * s.n_ctx * s.n_embd * 8

    def forward(self, tokens: np.ndarray, cache: KVCache) -> np.ndarray:
        """Append ``tokens`` (rows, T) to every row of ``cache``; return final hidden states.

        Returns int64 (rows, T, n_embd) with ``ACT_FRAC`` fraction bits: the output of the
        final LayerNorm, ready for :meth:`logits`. Position ``i`` of the result depends only
        on the row's tokens up to ``i`` (and the earlier ones held in the cache).
        """
        rows, t_new = tokens.shape
        start = cache.length
        if start + t_new > self.spec.n_ctx:
            raise ValueError(f"sequence of {start + t_new} tokens exceeds the context of {self.spec.n_ctx}")
        h = self.wte[tokens] + self.wpe[start : start + t_new][None]
        for layer, blk in enumerate(self.blocks):
            a = self._attention(blk.attn(blk.ln_1(h, self.spec.eps)), cache, layer, start)
            h = clip_inplace(h + blk.proj(a), RESID_CLIP)
            u = clip_inplace(blk.fc(blk.ln_2(h, self.spec.eps)), ACT_CLIP)
            h = clip_inplace(h + blk.fc_proj(gelu_clipped(u, self.spec.activation, ACT_FRAC, ACT_CLIP)), RESID_CLIP)
        cache.length = start + t_new
        return self.ln_f(h, self.spec.eps)

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        """int64 logits with ``LOGIT_FRAC_BITS`` fraction bits for hidden states (..., n_embd)."""
        return self.head(hidden)

    def float_logits(self, hidden: np.ndarray) -> np.ndarray:
        """:meth:`logits` as integer-valued float64 (saves a conversion before quantising)."""
        return self.head.float_out(hidden)

    def _attention(self, qkv: np.ndarray, cache: KVCache, layer: int, start: int) -> np.ndarray:
        """Causal multi-head attention of the new positions over cache + new; returns (rows, T, d)."""
        rows, t_new, _ = qkv.shape
        qkv = clip_inplace(qkv, ACT_CLIP).reshape(rows, t_new, 3, self.spec.n_head, self.head_dim)
        q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))   # (rows, H, T, hd)
        if self.engine_id >= 3:
            attention8.store(cache, layer, k, v, start, 2 * ACT_FRAC + SCALE_BITS - ATT_FRAC)
            out = attention8.attend(q * self.att_scale, cache, layer, start)
            return out.transpose(0, 2, 1, 3).reshape(rows, t_new, self.spec.n_embd)
        end = start + t_new
        cache.keys[layer][..., start:end] = k.swapaxes(-1, -2)
        cache.values[layer][:, :, start:end] = v
        keys, values = cache.keys[layer][..., :end], cache.values[layer][:, :, :end]
        out = np.empty((rows, self.spec.n_head, t_new, self.head_dim), dtype=np.int64)
        # Rows are attended in slices that bound the (rows, H, T, S) temporaries to ~4M entries.
        step = max(1, ATTEND_BUDGET // (self.spec.n_head * t_new * end))
        for r in range(0, rows, step):
            out[r : r + step] = self._attend(q[r : r + step], keys[r : r + step], values[r : r + step], start)
        return out.transpose(0, 2, 1, 3).reshape(rows, t_new, self.spec.n_embd)

    def _attend(self, q: np.ndarray, keys_t: np.ndarray, values: np.ndarray, start: int) -> np.ndarray:
        """Softmax(q k / sqrt(hd)) v for rows of all heads; q (R, H, T, hd), keys_t (R, H, hd, S), values (R, H, S, hd)."""
        t_new, span = q.shape[-2], values.shape[-2]
        dot = exact_matmul(q, keys_t)                                    # (R, H, T, S), 2*ACT_FRAC bits
        scores = rshift_round(dot * self.att_scale, 2 * ACT_FRAC + SCALE_BITS - ATT_FRAC)
        if t_new > 1:                                                    # one new token sees every key
            allowed = np.arange(span)[None, :] <= (start + np.arange(t_new))[:, None]
            scores = np.where(allowed, scores, MASKED)
        table = exp_table(ATT_FRAC, ATT_EXP_BITS, 12.0)
        gap = np.minimum(scores.max(-1, keepdims=True) - scores, len(table) - 1)
        weights = table[gap].astype(np.float64)                          # masked -> exactly 0
        if t_new == 1:   # a batch of vector products: einsum beats per-row GEMM calls here
            num = np.einsum("rhts,rhsd->rhtd", weights, values).astype(np.int64)
        else:
            num = exact_matmul(weights, values)                          # (R, H, T, hd)
        den = weights.sum(-1, keepdims=True).astype(np.int64)            # exact: integers < 2**53
        return (2 * num + den) // (2 * den)


def _inverse_sqrt(n: int) -> int:
    """round(2**SCALE_BITS / sqrt(n)) in exact decimal arithmetic."""
    with localcontext() as ctx:
        ctx.prec = 40
        return int((Decimal(2**SCALE_BITS) / Decimal(n).sqrt()).to_integral_value())
