"""Exact integer inference for Llama-architecture models: Llama 2/3, Mistral, Qwen2, SmolLM, TinyLlama.

Per block: RMSNorm, fused q/k/v projection (optional biases, as in Qwen2), rotary position
embeddings, causal attention with ``n_kv_head`` key/value heads (grouped-query attention),
output projection, residual; RMSNorm, SwiGLU MLP (``silu(gate) * up`` then ``down``, SiLU from
an exact table), residual. Final RMSNorm and a tied or untied head. Engine 4 (:mod:`.versions`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, cast

import numpy as np

from .. import fused
from ..fixedpoint import clip_inplace, silu, silu_table
from ..linear8 import Linear8, output_bound
from ..quantize import LOGIT_FRAC_BITS
from .common import ACT_CLIP, ACT_FRAC, RESID_CLIP, RESID_FRAC, RMSNorm, fingerprint, inverse_sqrt, to_fixed
from .rope import ROPE_FRAC, inverse_frequencies, rope_table, rotate
from .versions import EngineVersion, LinearLayer, engine_version, newest_engine

ARCHITECTURE = "llama"
MODEL_TYPES = ("llama", "mistral", "qwen2")   # config.json model_type values computed by this module
MAX_CONTEXT = 2048    # positions the engine runs (KV cache and rotary table are sized for it)
GATE_CLIP = 2**24 - 1  # SwiGLU inputs (4096 real units): silu(g) * u < 2**48, then >> ACT_FRAC
SWIGLU_BOUND = 2**36   # |silu(g) * u| >> ACT_FRAC (the input of `down`): |silu(g)| <= GATE_CLIP + 1, |u| <= GATE_CLIP
OUTPUT_LIMIT = 2**62   # every linear output, proven at load (ExactLlama._check_output_bounds)


@dataclass(frozen=True)
class LlamaSpec:
    """The shape and hyper-parameters the engine needs; all of it is fingerprinted."""

    n_layer: int
    n_head: int
    n_kv_head: int
    head_dim: int
    n_embd: int
    n_inner: int
    n_ctx: int
    vocab_size: int
    eps: float
    rope_theta: str                              # canonical decimal string (_canonical), exact in Decimal
    rope_scaling: tuple[tuple[str, str], ...]    # sorted (key, decimal string) pairs; () for none

    @classmethod
    def from_config(cls, config: Any) -> "LlamaSpec":
        """Build from a Hugging Face Llama, Mistral or Qwen2 config (``transformers`` 4 or 5 layout).

        Raises:
            ValueError: a variant this engine does not compute (activation, rope scaling kind,
                partial rotary, a sliding window shorter than the engine's context).
        """
        get = lambda key, default=None: getattr(config, key, default)   # noqa: E731
        if get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act {get('hidden_act')!r} is not supported (only silu)")
        if float(get("partial_rotary_factor", 1.0) or 1.0) != 1.0:
            raise ValueError("partial rotary embeddings are not supported by the exact engine")
        n_head = int(get("num_attention_heads"))
        n_embd = int(get("hidden_size"))
        theta, scaling = _rope_parameters(config)
        n_ctx = min(int(get("max_position_embeddings")), MAX_CONTEXT)
        window = get("sliding_window")
        if window and get("use_sliding_window", True) and int(window) < n_ctx:
            raise ValueError(f"a sliding window of {window} positions is not supported by the exact engine")
        spec = cls(
            n_layer=int(get("num_hidden_layers")), n_head=n_head,
            n_kv_head=int(get("num_key_value_heads") or n_head), head_dim=int(get("head_dim") or n_embd // n_head),
            n_embd=n_embd, n_inner=int(get("intermediate_size")), n_ctx=n_ctx,
            vocab_size=int(get("vocab_size")), eps=float(get("rms_norm_eps")), rope_theta=theta, rope_scaling=scaling,
        )
        if spec.n_head % spec.n_kv_head or spec.head_dim % 2:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads, head_dim even")
        inverse_frequencies(spec.rope_theta, spec.head_dim, spec.rope_scaling)   # refuses unknown scalings
        return spec

    def flops_per_token(self) -> int:
        """Multiply-adds x 2 of the linear layers and the head for one token (attention excluded)."""
        qkvo = self.n_embd * self.head_dim * (2 * self.n_head + 2 * self.n_kv_head)
        return 2 * (self.n_layer * (qkvo + 3 * self.n_embd * self.n_inner) + self.n_embd * self.vocab_size)


def _rope_parameters(config: Any) -> tuple[str, tuple[tuple[str, str], ...]]:
    """(theta, scaling) from ``rope_parameters`` (transformers 5) or ``rope_theta`` + ``rope_scaling``,
    each number in its canonical spelling (:func:`_canonical`), so the fingerprint depends on the
    numbers and not on how config.json writes them."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    legacy = getattr(config, "rope_scaling", None) or {}
    params = {**legacy, **params}
    theta = params.pop("rope_theta", getattr(config, "rope_theta", 10000.0))
    kind = params.pop("rope_type", params.pop("type", "default"))
    keep = {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
    scaling = {} if kind == "default" else {k: _canonical(k, v) for k, v in params.items() if k in keep}
    if kind != "default":
        scaling["rope_type"] = str(kind)
    return _canonical("rope_theta", theta), tuple(sorted(scaling.items()))


def _canonical(key: str, value: Any) -> str:
    """A rope number as one decimal string whatever its JSON spelling (10000, 10000.0 and 1e4 all
    give "10000.0"): a position count as an integer, any other number as the shortest ``repr`` of
    the float the float model computes with (exact in ``Decimal``).

    Raises:
        ValueError: not a finite number, or a position count that is not an integer.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise ValueError(f"{key} {value!r} is not a finite number")
    if key != "original_max_position_embeddings":
        return repr(number)
    if not number.is_integer():
        raise ValueError(f"{key} {value!r} is not an integer")
    return str(int(number))


def swiglu(gate_up: np.ndarray) -> np.ndarray:
    """silu(gate) * up for ``gate_up`` (..., 2 * inner), gate then up, ACT_FRAC bits: both clipped to
    GATE_CLIP (in place), so the int64 product < 2**48."""
    if fused.active():
        table, limit = silu_table(ACT_FRAC)
        return fused.kernel("swiglu")(gate_up, table, limit, GATE_CLIP, ACT_FRAC)
    clip_inplace(gate_up, GATE_CLIP)
    inner = gate_up.shape[-1] // 2
    y = silu(gate_up[..., :inner], ACT_FRAC)
    y *= gate_up[..., inner:]
    y += 1 << (ACT_FRAC - 1)          # rounding half up, in place
    y >>= ACT_FRAC
    return y


@dataclass(frozen=True)
class LlamaBlock:
    attn_norm: RMSNorm
    qkv: LinearLayer       # q_proj, k_proj, v_proj side by side: d -> (H + 2 KV) * hd, outputs ACT_FRAC
    o_proj: LinearLayer    # H * hd -> d, outputs RESID_FRAC
    mlp_norm: RMSNorm
    gate_up: LinearLayer   # gate_proj, up_proj side by side: d -> 2 * inner, outputs ACT_FRAC
    down: LinearLayer      # inner -> d, outputs RESID_FRAC


class ExactLlama:
    """A Llama-family model whose every output is an exact integer function of weights and tokens."""

    architecture = ARCHITECTURE

    def __init__(self, spec: LlamaSpec, state: Mapping[str, np.ndarray], engine_id: int | None = None) -> None:
        """Quantise a Hugging Face ``LlamaForCausalLM``-layout state dict (``model.`` keys, Linear
        weights as (out, in); ``lm_head.weight`` absent or equal to the embeddings when tied).

        Raises:
            UnsupportedFormatError: the engine does not exist or does not run Llama models.
            ValueError: the model is not computable exactly (bounds).
            KeyError: a weight is missing.
        """
        self.engine_id = newest_engine(ARCHITECTURE) if engine_id is None else engine_id
        self.version: EngineVersion = engine_version(self.engine_id, ARCHITECTURE)
        self.spec = spec
        self.head_dim = spec.head_dim
        self.embed = to_fixed(state["model.embed_tokens.weight"], RESID_FRAC)
        self.blocks = [self._block(state, f"model.layers.{i}.") for i in range(spec.n_layer)]
        self.norm = RMSNorm.quantize(state["model.norm.weight"])
        head = state.get("lm_head.weight", state["model.embed_tokens.weight"])
        self.head = self.version.quantize_linear(np.asarray(head).T, None, ACT_FRAC, LOGIT_FRAC_BITS)
        self.att_scale = inverse_sqrt(spec.head_dim)
        self.attention = self.version.attention
        self.version.check_linear(max(spec.n_embd, spec.n_inner, spec.n_head * spec.head_dim))
        self.attention.check_bounds(spec.head_dim, spec.n_ctx)
        self._check_shapes()
        self._check_output_bounds()
        self.rope = rope_table(spec.rope_theta, spec.head_dim, spec.rope_scaling, spec.n_ctx)
        self.fingerprint = fingerprint(f"llmzip-exact-llama/{self.engine_id}", spec, self._integer_arrays())

    def _block(self, state: Mapping[str, np.ndarray], p: str) -> LlamaBlock:
        def linear(names: tuple[str, ...], out_frac: int) -> LinearLayer:
            w = np.concatenate([np.asarray(state[p + n + ".weight"]).T for n in names], axis=1)
            biases = [state.get(p + n + ".bias") for n in names]
            b = None if all(x is None for x in biases) else np.concatenate(
                [np.zeros(np.asarray(state[p + n + ".weight"]).shape[0]) if x is None else np.asarray(x)
                 for n, x in zip(names, biases)])
            return self.version.quantize_linear(w, b, ACT_FRAC, out_frac)

        return LlamaBlock(
            attn_norm=RMSNorm.quantize(state[p + "input_layernorm.weight"]),
            qkv=linear(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ACT_FRAC),
            o_proj=linear(("self_attn.o_proj",), RESID_FRAC),
            mlp_norm=RMSNorm.quantize(state[p + "post_attention_layernorm.weight"]),
            gate_up=linear(("mlp.gate_proj", "mlp.up_proj"), ACT_FRAC),
            down=linear(("mlp.down_proj",), RESID_FRAC),
        )

    def _check_shapes(self) -> None:
        """Raise ValueError unless the weights have the shapes the config announces (the forward
        pass splits fused outputs by the config's sizes)."""
        s = self.spec
        expect = {"embed_tokens": ((s.vocab_size, s.n_embd), self.embed.shape),
                  "lm_head": ((s.n_embd, s.vocab_size), self.head.w.shape)}
        for i, blk in enumerate(self.blocks):
            expect[f"layer {i} q/k/v"] = ((s.n_embd, (s.n_head + 2 * s.n_kv_head) * s.head_dim), blk.qkv.w.shape)
            expect[f"layer {i} o_proj"] = ((s.n_head * s.head_dim, s.n_embd), blk.o_proj.w.shape)
            expect[f"layer {i} gate/up"] = ((s.n_embd, 2 * s.n_inner), blk.gate_up.w.shape)
            expect[f"layer {i} down_proj"] = ((s.n_inner, s.n_embd), blk.down.w.shape)
        for name, (want, got) in expect.items():
            if tuple(got) != want:
                raise ValueError(f"{name} weights have shape {tuple(got)}, the config implies {want}")

    def _check_output_bounds(self) -> None:
        """Raise ValueError unless every linear layer's output provably stays below OUTPUT_LIMIT.

        :class:`~llmzip.linear8.Linear8` converts a float64 floor to int64, and values of 2**63 or
        more convert differently on x86 and ARM: the bound comes from the weights and the bound of
        each layer's input (ACT_CLIP after a norm, and out of attention, which averages values
        clipped to ACT_CLIP; SWIGLU_BOUND into ``down``). Below 2**53 every float64 step is exact;
        from 2**53 to 2**62 the bias addition may round (correctly rounded: the same everywhere),
        but such a value saturates the clip that follows every layer (RESID_CLIP, ACT_CLIP and
        GATE_CLIP are below 2**31; logits are clipped to 2**30) either way. The residual sum
        ``h + y`` stays below 2**63.
        """
        layers = {"lm_head": (self.head, ACT_CLIP)}
        for i, blk in enumerate(self.blocks):
            layers |= {f"layer {i} q/k/v": (blk.qkv, ACT_CLIP), f"layer {i} o_proj": (blk.o_proj, ACT_CLIP),
                       f"layer {i} gate/up": (blk.gate_up, ACT_CLIP), f"layer {i} down_proj": (blk.down, SWIGLU_BOUND)}
        for name, (layer, input_bound) in layers.items():
            bound = output_bound(cast(Linear8, layer), input_bound)   # engine 4's layers are Linear8
            if bound >= OUTPUT_LIMIT:
                raise ValueError(f"{name}: outputs up to {bound} (2**{bound.bit_length() - 1} or more) "
                                 "could overflow int64; the weights are too large for the exact engine")

    def _integer_arrays(self) -> list[np.ndarray]:
        arrays = [self.embed]
        for blk in self.blocks:
            for lin in (blk.qkv, blk.o_proj, blk.gate_up, blk.down):
                arrays += lin.integer_arrays()
            arrays += [blk.attn_norm.gamma, blk.mlp_norm.gamma]
        return arrays + [self.norm.gamma, *self.head.integer_arrays()]

    # ------------------------------------------------------------------ inference

    def new_cache(self, rows: int, capacity: int | None = None) -> Any:
        s = self.spec
        return self.attention.new_cache(s.n_layer, rows, s.n_kv_head, capacity or s.n_ctx, s.head_dim)

    def kv_bytes_per_row(self) -> int:
        """KV-cache bytes one row of a full context needs."""
        s = self.spec
        return self.attention.cache.bytes_per_row(s.n_layer, s.n_kv_head, s.n_ctx, s.head_dim)

    def forward(self, tokens: np.ndarray, cache: Any) -> np.ndarray:
        """Append ``tokens`` (rows, T) to every row of ``cache``; return the final RMSNorm's output,
        int64 (rows, T, n_embd) with ``ACT_FRAC`` fraction bits. Position ``i`` depends only on
        the row's tokens up to ``i``."""
        rows, t_new = tokens.shape
        start = cache.length
        if start + t_new > self.spec.n_ctx:
            raise ValueError(f"sequence of {start + t_new} tokens exceeds the context of {self.spec.n_ctx}")
        eps = self.spec.eps
        h = self.embed[tokens]
        for layer, blk in enumerate(self.blocks):
            a = self._attention(blk.qkv(blk.attn_norm(h, eps)), cache, layer, start)
            h = blk.o_proj.added(a, h, RESID_CLIP)
            h = blk.down.added(swiglu(blk.gate_up(blk.mlp_norm(h, eps))), h, RESID_CLIP)
        cache.length = start + t_new
        return self.norm(h, eps)

    def _attention(self, qkv: np.ndarray, cache: Any, layer: int, start: int) -> np.ndarray:
        """Rotary positions, then causal grouped-query attention; returns (rows, T, H * hd)."""
        s = self.spec
        rows, t_new, _ = qkv.shape
        qkv = clip_inplace(qkv, ACT_CLIP).reshape(rows, t_new, s.n_head + 2 * s.n_kv_head, s.head_dim)
        cos, sin = (table[start : start + t_new] for table in self.rope)
        if fused.active():
            qk = fused.kernel("rotate")(qkv, cos, sin, s.n_head + s.n_kv_head, ROPE_FRAC, ACT_CLIP)
        else:   # rotation: |.| <= 2**20.5
            qk = clip_inplace(rotate(qkv[:, :, : s.n_head + s.n_kv_head], cos, sin), ACT_CLIP)
        q, k = qk[:, :, : s.n_head], qk[:, :, s.n_head :]
        v = qkv[:, :, s.n_head + s.n_kv_head :]
        q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))   # (rows, heads, T, hd)
        out = self.attention(q, k, v, cache, layer, start, self.att_scale)
        return out.transpose(0, 2, 1, 3).reshape(rows, t_new, s.n_head * s.head_dim)

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        """int64 logits with ``LOGIT_FRAC_BITS`` fraction bits for hidden states (..., n_embd)."""
        return self.head(hidden)
