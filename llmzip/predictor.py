"""The codec's view of a loaded model: an exact engine and a tokenizer as a :class:`~llmzip.codec.Model`.

Loading (names, files, configs, fingerprints) is :mod:`llmzip.model`; this module only turns
engine outputs into coding tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from .engine import ENGINES, ExactEngine, engine_version
from .errors import ModelMismatchError
from . import fused
from .linear8 import select_backend
from .quantize import FREQ_BITS, head_freqs
from .tokens import ByteTokenizer

HEAD_ROWS = 128   # positions per output-head block (speed only)


@dataclass
class LoadedModel:
    """Everything the codec needs from a model; implements :class:`llmzip.codec.Model`."""

    model_id: str
    engine: ExactEngine
    tokenizer: ByteTokenizer
    bos_id: int
    fingerprint: bytes
    freq_bits: int = FREQ_BITS
    table_dtype: type = np.int32   # advance() tables: entries <= 2**freq_bits + 1 (see lockstep.Predictor)
    build: Callable[[int], ExactEngine] | None = field(default=None, repr=False, compare=False)
    fingerprint_of: Callable[[ExactEngine], bytes] | None = field(default=None, repr=False, compare=False)
    variants: dict[int, LoadedModel] = field(default_factory=dict, repr=False, compare=False)

    def with_engine(self, engine_id: int) -> LoadedModel:
        """The same weights and tokenizer under another engine arithmetic (to decode old archives).

        Raises:
            UnsupportedFormatError: this build does not know ``engine_id``.
            ModelMismatchError: that engine does not run this model's architecture (the archive
                needs another model).
        """
        if engine_id == self.engine.engine_id:
            return self
        if engine_id in ENGINES and self.engine.architecture not in ENGINES[engine_id].architectures:
            runs = ", ".join(sorted(ENGINES[engine_id].architectures))
            raise ModelMismatchError(f"the archive was made by inference engine {engine_id}, which runs {runs} "
                                     f"models, but {self.model_id!r} is a {self.engine.architecture} model")
        engine_version(engine_id, self.engine.architecture)
        if self.build is None or self.fingerprint_of is None:
            raise ValueError(f"{self.model_id}: this model cannot be rebuilt under another engine")
        self.variants.setdefault(self.engine.engine_id, self)
        if engine_id not in self.variants:   # quantising the weights again costs ~0.3 s: once per model
            engine = self.build(engine_id)
            self.variants[engine_id] = replace(self, engine=engine, fingerprint=self.fingerprint_of(engine))
        return self.variants[engine_id]

    @property
    def vocab_size(self) -> int:
        return self.engine.spec.vocab_size

    @property
    def max_context(self) -> int:
        return self.engine.spec.n_ctx

    @property
    def kv_bytes_per_row(self) -> int:
        """Decoder KV-cache bytes for one row of a full context."""
        return self.engine.kv_bytes_per_row()

    @property
    def flops_per_token(self) -> int:
        """Multiply-adds x 2 of the linear layers and the head for one token (attention excluded)."""
        return self.engine.spec.flops_per_token()

    @property
    def engine_id(self) -> int:
        return self.engine.engine_id

    def start(self, rows: int) -> Any:
        return self.engine.new_cache(rows)

    def prepare(self, tokens: int, encoding: bool = False) -> None:
        """Get ready for a codec call of ``tokens`` tokens, before its worker threads start: the
        int8 GEMM backend (:func:`llmzip.linear8.select_backend`) and the fused kernels
        (:func:`llmzip.fused.select`). Never changes a table."""
        per_token = self.flops_per_token
        torch_gemm = self.engine.version.int8_gemm and select_backend(tokens * per_token, 0 if encoding else per_token)
        fused.select(tokens, torch_gemm)

    def advance(self, state: Any, tokens: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Append tokens (rows, T); return tables (rows, T, V) for the token after each, int32
        (entries <= 2**freq_bits + 1: half the memory traffic of int64) unless ``out`` is given."""
        hidden = self.engine.forward(tokens, state)
        flat = hidden.reshape(-1, hidden.shape[-1])
        if out is None:
            out = np.empty((*hidden.shape[:-1], self.vocab_size), dtype=self.table_dtype)
        dest = out.view()
        dest.shape = (len(flat), self.vocab_size)   # raises rather than copy if out is not contiguous
        for i in range(0, len(flat), HEAD_ROWS):   # head + quantiser in cache-sized blocks
            rows = slice(i, i + HEAD_ROWS)
            head_freqs(self.engine.head, flat[rows], self.freq_bits, dest[rows])
        return out

    def keep(self, state: Any, rows: np.ndarray) -> None:
        state.keep(rows)

    def check_archive(self, fingerprint: bytes, model_id: str) -> None:
        """Raise ModelMismatchError unless ``fingerprint`` is this model's."""
        if fingerprint != self.fingerprint:
            raise ModelMismatchError(
                f"archive needs model {model_id!r} with fingerprint {fingerprint.hex()[:16]}, "
                f"but {self.model_id!r} has fingerprint {self.fingerprint.hex()[:16]}"
            )
