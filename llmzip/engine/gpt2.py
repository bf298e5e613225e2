"""Exact integer inference for GPT-2-architecture models (engines 1, 2 and 3).

Per block: LayerNorm, fused QKV projection, causal attention, output projection, residual;
LayerNorm, MLP with a GELU table, residual. Learned position embeddings, tied or untied head.
The arithmetic of each layer comes from the engine's entry in :mod:`.versions`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ..fixedpoint import GELU_KINDS, clip_inplace
from ..quantize import LOGIT_FRAC_BITS
from .common import ACT_CLIP, ACT_FRAC, RESID_CLIP, RESID_FRAC, LayerNorm, fingerprint, inverse_sqrt, to_fixed
from .versions import EngineVersion, LinearLayer, engine_version, newest_engine

ARCHITECTURE = "gpt2"


@dataclass(frozen=True)
class GPT2Spec:
    """The shape and hyper-parameters the engine needs; all of it is fingerprinted.

    The fields and their names are part of every GPT-2 fingerprint: never add or rename one.
    """

    n_layer: int
    n_head: int
    n_embd: int
    n_ctx: int
    vocab_size: int
    eps: float
    activation: str

    @classmethod
    def from_config(cls, config: Any) -> "GPT2Spec":
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

    @property
    def n_kv_head(self) -> int:
        return self.n_head

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def flops_per_token(self) -> int:
        """Multiply-adds x 2 of the linear layers and the head for one token (attention excluded)."""
        return 2 * (self.n_layer * 12 * self.n_embd**2 + self.n_embd * self.vocab_size)


@dataclass(frozen=True)
class GPT2Block:
    ln_1: LayerNorm
    qkv: LinearLayer       # attn.c_attn: d -> 3d (q, k, v), outputs ACT_FRAC
    proj: LinearLayer      # attn.c_proj: d -> d, outputs RESID_FRAC
    ln_2: LayerNorm
    fc: LinearLayer        # mlp.c_fc: d -> inner, outputs ACT_FRAC
    fc_proj: LinearLayer   # mlp.c_proj: inner -> d, outputs RESID_FRAC


class ExactGPT2:
    """A GPT-2 whose every output is an exact integer function of weights and tokens."""

    architecture = ARCHITECTURE

    def __init__(self, spec: GPT2Spec, state: Mapping[str, np.ndarray], engine_id: int | None = None) -> None:
        """Quantise a Hugging Face ``GPT2LMHeadModel`` state dict (float arrays, Conv1D layout,
        keys under ``transformer.`` and ``lm_head.``) with the arithmetic of ``engine_id``
        (default: the newest engine that runs GPT-2).

        Raises:
            UnsupportedFormatError: the engine does not exist or does not run GPT-2.
            ValueError: the model is not computable exactly (activation, shape, bounds).
            KeyError: a weight is missing.
        """
        self.engine_id = newest_engine(ARCHITECTURE) if engine_id is None else engine_id
        self.version: EngineVersion = engine_version(self.engine_id, ARCHITECTURE)
        if spec.activation not in GELU_KINDS:
            raise ValueError(f"unsupported activation {spec.activation!r}")
        if spec.n_embd % spec.n_head:
            raise ValueError("n_embd must be a multiple of n_head")
        self.spec = spec
        self.head_dim = spec.head_dim
        p = "transformer."
        self.wte = to_fixed(state[p + "wte.weight"], RESID_FRAC)
        self.wpe = to_fixed(state[p + "wpe.weight"], RESID_FRAC)
        self.blocks = [self._block(state, f"{p}h.{i}.") for i in range(spec.n_layer)]
        self.ln_f = LayerNorm.quantize(state[p + "ln_f.weight"], state[p + "ln_f.bias"])
        head = state.get("lm_head.weight", state[p + "wte.weight"])
        self.head = self.version.quantize_linear(np.asarray(head).T, None, ACT_FRAC, LOGIT_FRAC_BITS)
        self.att_scale = inverse_sqrt(self.head_dim)
        self.attention = self.version.attention
        inner = max(blk.fc_proj.w.shape[0] for blk in self.blocks)   # 4 * d by default
        self.version.check_linear(max(inner, spec.n_embd))
        self.attention.check_bounds(self.head_dim, spec.n_ctx)
        # Tag and spec JSON are those of the original single-module engine: fingerprints never change.
        self.fingerprint = fingerprint(f"llmzip-exact-gpt2/{self.engine_id}", spec, self._integer_arrays())

    def _block(self, state: Mapping[str, np.ndarray], p: str) -> GPT2Block:
        lin = self.version.quantize_linear
        return GPT2Block(
            ln_1=LayerNorm.quantize(state[p + "ln_1.weight"], state[p + "ln_1.bias"]),
            qkv=lin(state[p + "attn.c_attn.weight"], state[p + "attn.c_attn.bias"], ACT_FRAC, ACT_FRAC),
            proj=lin(state[p + "attn.c_proj.weight"], state[p + "attn.c_proj.bias"], ACT_FRAC, RESID_FRAC),
            ln_2=LayerNorm.quantize(state[p + "ln_2.weight"], state[p + "ln_2.bias"]),
            fc=lin(state[p + "mlp.c_fc.weight"], state[p + "mlp.c_fc.bias"], ACT_FRAC, ACT_FRAC),
            fc_proj=lin(state[p + "mlp.c_proj.weight"], state[p + "mlp.c_proj.bias"], ACT_FRAC, RESID_FRAC),
        )

    def _integer_arrays(self) -> list[np.ndarray]:
        arrays = [self.wte, self.wpe]
        for blk in self.blocks:
            for lin in (blk.qkv, blk.proj, blk.fc, blk.fc_proj):
                arrays += lin.integer_arrays()
            arrays += [blk.ln_1.gamma, blk.ln_1.beta, blk.ln_2.gamma, blk.ln_2.beta]
        head = self.head.integer_arrays()[:-1]   # the head has no bias (engine 1 hashed w, shift)
        return arrays + [self.ln_f.gamma, self.ln_f.beta, *head]

    # ------------------------------------------------------------------ inference

    def new_cache(self, rows: int, capacity: int | None = None) -> Any:
        s = self.spec
        return self.attention.new_cache(s.n_layer, rows, s.n_head, capacity or s.n_ctx, self.head_dim)

    def kv_bytes_per_row(self) -> int:
        """KV-cache bytes one row of a full context needs."""
        s = self.spec
        return self.attention.cache.bytes_per_row(s.n_layer, s.n_head, s.n_ctx, self.head_dim)

    def forward(self, tokens: np.ndarray, cache: Any) -> np.ndarray:
        """Append ``tokens`` (rows, T) to every row of ``cache``; return final hidden states.

        Returns int64 (rows, T, n_embd) with ``ACT_FRAC`` fraction bits: the output of the
        final LayerNorm, ready for :meth:`logits`. Position ``i`` of the result depends only
        on the row's tokens up to ``i`` (and the earlier ones held in the cache).
        """
        rows, t_new = tokens.shape
        start = cache.length
        if start + t_new > self.spec.n_ctx:
            raise ValueError(f"sequence of {start + t_new} tokens exceeds the context of {self.spec.n_ctx}")
        eps = self.spec.eps
        h = self.wte[tokens] + self.wpe[start : start + t_new][None]
        for layer, blk in enumerate(self.blocks):
            a = self._attention(blk.qkv(blk.ln_1(h, eps)), cache, layer, start)
            h = blk.proj.added(a, h, RESID_CLIP)
            u = blk.fc.activated(blk.ln_2(h, eps), ACT_CLIP, self.spec.activation, ACT_FRAC)
            h = blk.fc_proj.added(u, h, RESID_CLIP)
        cache.length = start + t_new
        return self.ln_f(h, eps)

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        """int64 logits with ``LOGIT_FRAC_BITS`` fraction bits for hidden states (..., n_embd)."""
        return self.head(hidden)

    def _attention(self, qkv: np.ndarray, cache: Any, layer: int, start: int) -> np.ndarray:
        """Causal multi-head attention of the new positions over cache + new; returns (rows, T, d)."""
        rows, t_new, _ = qkv.shape
        qkv = clip_inplace(qkv, ACT_CLIP).reshape(rows, t_new, 3, self.spec.n_head, self.head_dim)
        q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))   # (rows, H, T, hd)
        out = self.attention(q, k, v, cache, layer, start, self.att_scale)
        return out.transpose(0, 2, 1, 3).reshape(rows, t_new, self.spec.n_embd)
