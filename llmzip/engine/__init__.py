"""The exact integer inference engine.

Its outputs are a pure function of (integer weights, token prefix): the same bits whatever the
thread count, batch size or composition, BLAS library, and whether a sequence is evaluated in
one forward pass or token by token with a KV cache. That is what lets an archive written on one
machine decode on another.

Layout:

* :mod:`.versions`: the table of arithmetic versions (the archive's "engine" byte), frozen
  entries that name their parts (linear layers, attention);
* :mod:`.common`: fixed-point formats, LayerNorm and RMSNorm, the 1/sqrt(head_dim) scale, the
  fingerprint; :mod:`.rope`: rotary tables built in decimal; :mod:`.legacy`: engines 1-2 only;
  the shared primitives live in :mod:`llmzip.fixedpoint`, :mod:`llmzip.linear8` (int8 linear
  layers) and :mod:`llmzip.attention8` (int8 attention, any number of key/value heads);
* one module per architecture: :mod:`.gpt2`, :mod:`.llama`.

How exactness is kept: activations are int64 fixed point (residual stream ``RESID_FRAC`` bits,
GEMM inputs ``ACT_FRAC`` bits clipped to ``ACT_CLIP``, logits ``LOGIT_FRAC_BITS``); GEMMs run on
integers whose partial sums provably stay exact (below 2**53 in float64, 2**31 in int32, 2**24 in
float32); softmax, GELU and SiLU read exact lookup tables; norms use integer sums and one
correctly rounded sqrt and division; masked attention positions get weight exactly 0, so a full
causal pass and an incremental pass add exactly the same integers.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Union

import numpy as np

from .gpt2 import ExactGPT2, GPT2Spec
from .llama import MODEL_TYPES as LLAMA_MODEL_TYPES
from .llama import ExactLlama, LlamaSpec
from .versions import ENGINES, EngineVersion, LinearLayer, engine_version, newest_engine

__all__ = ["ENGINES", "EngineVersion", "ExactEngine", "ExactGPT2", "ExactLlama", "GPT2Spec", "LlamaSpec",
           "MODEL_TYPES", "build_engine", "engine_version", "newest_engine", "Spec"]

Spec = Union[GPT2Spec, LlamaSpec]
# Hugging Face model_type -> architecture
MODEL_TYPES: Mapping[str, str] = {"gpt2": "gpt2", **{t: "llama" for t in LLAMA_MODEL_TYPES}}


class ExactEngine(Protocol):
    """What every architecture module's engine class provides."""

    architecture: str
    engine_id: int
    version: EngineVersion
    spec: Any        # GPT2Spec | LlamaSpec: n_ctx, vocab_size, flops_per_token()
    fingerprint: bytes
    head: LinearLayer    # hidden states -> logits (LOGIT_FRAC_BITS), which the predictor quantises

    def new_cache(self, rows: int, capacity: int | None = None) -> Any: ...
    def kv_bytes_per_row(self) -> int: ...
    def forward(self, tokens: np.ndarray, cache: Any) -> np.ndarray: ...
    def logits(self, hidden: np.ndarray) -> np.ndarray: ...


def build_engine(spec: Spec, state: Mapping[str, np.ndarray], engine_id: int | None = None) -> ExactEngine:
    """The engine of ``spec``'s architecture over ``state``, with ``engine_id``'s arithmetic (default: newest)."""
    cls = ExactGPT2 if isinstance(spec, GPT2Spec) else ExactLlama
    return cls(spec, state, engine_id)
