"""Find, load and fingerprint the language model that drives the codec.

A model is named by a string:

* ``embedded``: the default model shipped inside this package (``EMBEDDED_NAME``);
* the id of any model shipped inside this package (``llmzip-gpt2-small-v1``, ...): archives record
  it, so older embedded models stay loadable by the archives made with them;
* a local directory in Hugging Face layout (``config.json``, ``*.safetensors``, ``tokenizer.json``);
* a Hugging Face hub id (``gpt2``, ``user/name``), loaded with ``AutoModelForCausalLM`` and
  ``AutoTokenizer`` from the local cache, or downloaded only when ``allow_download`` is set.

Weights are only ever read from safetensors and ``trust_remote_code`` is never enabled.
The fingerprint is a SHA-256 of what the codec actually computes with: the engine's integer
weights and arithmetic version, the token->bytes table and the BOS id. Two models with the same
fingerprint produce the same tables, so an archive decodes with either.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .engine import ENGINES, ExactGPT2, GPT2Spec
from .errors import ModelLoadError, ModelMismatchError, UnsupportedFormatError
from .linear8 import select_backend
from .quantize import FREQ_BITS, freqs_from_logits
from .tokens import ByteTokenizer

MODELS_DIR = Path(__file__).resolve().parent / "models"
EMBEDDED_NAME = "llmzip-gpt2-small-v2"   # the default model; older shipped models stay for their archives
SHIPPED_PREFIX = "llmzip-"                 # ids reserved for models shipped in this package
SUPPORTED_TYPES = ("gpt2",)
HEAD_ROWS = 128   # positions per output-head block (speed only)


@dataclass
class LoadedModel:
    """Everything the codec needs from a model. Implements the codec's ``Predictor`` protocol."""

    model_id: str
    engine: ExactGPT2
    tokenizer: ByteTokenizer
    bos_id: int
    fingerprint: bytes
    freq_bits: int = FREQ_BITS
    table_dtype: type = np.int32   # advance() tables: entries <= 2**freq_bits + 1 (see lockstep.Predictor)
    build: Callable[[int], ExactGPT2] | None = field(default=None, repr=False, compare=False)
    variants: dict[int, LoadedModel] = field(default_factory=dict, repr=False, compare=False)

    def with_engine(self, engine_id: int) -> LoadedModel:
        """The same weights and tokenizer under another engine arithmetic (to decode old archives).

        Raises:
            UnsupportedFormatError: this build does not know ``engine_id``.
        """
        if engine_id == self.engine.engine_id:
            return self
        if engine_id > max(ENGINES):
            raise UnsupportedFormatError(f"inference engine {engine_id} is newer than this llmzip "
                                         f"(it knows {min(ENGINES)}-{max(ENGINES)}): upgrade llmzip")
        if engine_id not in ENGINES or self.build is None:
            raise UnsupportedFormatError(f"unknown inference engine {engine_id}")
        self.variants.setdefault(self.engine.engine_id, self)
        if engine_id not in self.variants:   # quantising the weights again costs ~0.3 s: once per model
            engine = self.build(engine_id)
            self.variants[engine_id] = replace(self, engine=engine,
                                               fingerprint=model_fingerprint(engine, self.tokenizer, self.bos_id))
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
        s = self.engine.spec
        return 2 * (s.n_layer * 12 * s.n_embd**2 + s.n_embd * s.vocab_size)

    @property
    def engine_id(self) -> int:
        return self.engine.engine_id

    def start(self, rows: int) -> Any:
        return self.engine.new_cache(rows)

    def prepare(self, tokens: int) -> None:
        """Get ready for a codec call of ``tokens`` tokens, before its worker threads start:
        the int8 GEMM backend (:func:`llmzip.linear8.select_backend`). Never changes a table."""
        if self.engine_id >= 2:
            select_backend(tokens)

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
            freqs_from_logits(self.engine.float_logits(flat[i : i + HEAD_ROWS]), self.freq_bits, dest[i : i + HEAD_ROWS])
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


def model_fingerprint(engine: ExactGPT2, tokenizer: ByteTokenizer, bos_id: int) -> bytes:
    digest = hashlib.sha256(b"llmzip-model/1")
    digest.update(engine.fingerprint)
    digest.update(tokenizer.table_digest())
    digest.update(bos_id.to_bytes(4, "little"))
    return digest.digest()


def load_model(name: str | None = None, *, allow_download: bool = False) -> LoadedModel:
    """Load a model by name (see module docstring); ``None`` means the embedded model."""
    name = EMBEDDED_NAME if name in (None, "", "embedded") else name
    if name in shipped_models():
        return _cached_dir(str(MODELS_DIR / name), name)
    path = Path(name).expanduser()
    if path.is_dir():
        # Archives record only the directory's name: the same input and model give the same
        # archive wherever the model lives. Decompression finds it again through --model
        # (and the fingerprint proves it is the right one).
        return _cached_dir(str(path.resolve()), path.resolve().name[:255] or "model")
    if name.startswith(SHIPPED_PREFIX):
        raise ModelLoadError(
            f"model {name!r} is not shipped with this version of llmzip (it ships: "
            f"{', '.join(shipped_models()) or 'none'}); to decode an archive made with it, use an llmzip "
            "that ships it, or pass --model with the model's directory")
    return _load_hub(name, allow_download)


def shipped_models() -> list[str]:
    """Ids of the models shipped in this package, oldest first."""
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / "config.json").is_file())


@functools.lru_cache(maxsize=4)
def _cached_dir(path: str, model_id: str) -> LoadedModel:
    return _load_dir(Path(path), model_id)


def _load_dir(path: Path, model_id: str) -> LoadedModel:
    """Fast path: a directory in HF layout, read with json + safetensors + tokenizers (no torch)."""
    from tokenizers import Tokenizer

    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        weight_files = sorted(path.glob("*.safetensors"))
        if not weight_files or not (path / "tokenizer.json").exists():
            raise ModelLoadError(f"{path}: needs *.safetensors and tokenizer.json (Hugging Face layout)")
        state = _read_safetensors(weight_files)
        backend = Tokenizer.from_file(str(path / "tokenizer.json"))
        tokenizer = ByteTokenizer(backend)
        bos = _bos_from_files(path, config, backend)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load model from {path}: {exc}") from exc
    return _assemble(model_id, _Config(config), state, tokenizer, bos)


def _load_hub(name: str, allow_download: bool) -> LoadedModel:
    """A hub id, through transformers: from the local cache unless downloads are allowed."""
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        kw: dict[str, Any] = {"local_files_only": not allow_download, "trust_remote_code": False}
        config = AutoConfig.from_pretrained(name, **kw)
        _check_type(config.model_type, name)
        hf_tok = AutoTokenizer.from_pretrained(name, **kw)
        model = AutoModelForCausalLM.from_pretrained(name, use_safetensors=True, dtype=torch.float32, **kw)
    except ModelLoadError:
        raise
    except Exception as exc:  # transformers raises OSError/ValueError/EnvironmentError variants
        hint = "" if allow_download else (
            " (not a local directory and not in the Hugging Face cache: point --model at the model's"
            " directory, or pass --allow-download to fetch it from the hub)")
        raise ModelLoadError(f"cannot load model {name!r}{hint}: {exc}") from exc
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    tokenizer = ByteTokenizer.from_hf(hf_tok)
    bos = hf_tok.bos_token_id if hf_tok.bos_token_id is not None else hf_tok.eos_token_id
    if bos is None:
        raise ModelLoadError(f"{name}: the tokenizer has neither a BOS nor an EOS token")
    return _assemble(name, config, state, tokenizer, int(bos))


class _Config:
    """Attribute access over a config.json dict, with GPT-2's defaults."""

    _defaults = {
        "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new", "tie_word_embeddings": True,
        "scale_attn_by_inverse_layer_idx": False, "scale_attn_weights": True,
    }

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getattr__(self, key: str) -> Any:
        if key in self._data:
            return self._data[key]
        if key in self._defaults:
            return self._defaults[key]
        raise ModelLoadError(f"config.json has no {key!r}")


def _check_type(model_type: str, name: str) -> None:
    if model_type not in SUPPORTED_TYPES:
        raise ModelLoadError(
            f"{name}: model type {model_type!r} is not supported by the exact engine (supported: {', '.join(SUPPORTED_TYPES)})"
        )


def _assemble(model_id: str, config: Any, state: dict[str, np.ndarray], tokenizer: ByteTokenizer, bos: int) -> LoadedModel:
    _check_type(config.model_type, model_id)
    state = {k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k: v for k, v in state.items()}
    if getattr(config, "tie_word_embeddings", True) or "lm_head.weight" not in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    try:
        spec = GPT2Spec.from_config(config)
    except ValueError as exc:
        raise ModelLoadError(f"{model_id}: {exc}") from exc
    if tokenizer.vocab_size > spec.vocab_size:
        raise ModelLoadError(f"{model_id}: tokenizer has {tokenizer.vocab_size} tokens, model only {spec.vocab_size}")
    if not 0 <= bos < spec.vocab_size:
        raise ModelLoadError(f"{model_id}: BOS id {bos} outside the vocabulary")
    try:
        engine = ExactGPT2(spec, state)
    except (KeyError, ValueError) as exc:
        raise ModelLoadError(f"{model_id}: cannot build the exact engine: {exc}") from exc
    return LoadedModel(model_id, engine, tokenizer, bos, model_fingerprint(engine, tokenizer, bos),
                       build=functools.partial(ExactGPT2, spec, state))


def _read_safetensors(files: list[Path]) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    state: dict[str, np.ndarray] = {}
    for f in files:
        with safe_open(str(f), framework="numpy") as handle:
            for key in handle.keys():
                state[key] = handle.get_tensor(key)
    return state


def _bos_from_files(path: Path, config: dict[str, Any], backend: Any) -> int:
    """BOS id: the tokenizer_config's bos (or eos) token, else config.json's bos/eos id."""
    tok_cfg_path = path / "tokenizer_config.json"
    if tok_cfg_path.exists():
        tok_cfg = json.loads(tok_cfg_path.read_text(encoding="utf-8"))
        for key in ("bos_token", "eos_token"):
            token = tok_cfg.get(key)
            token = token.get("content") if isinstance(token, dict) else token
            if isinstance(token, str) and backend.token_to_id(token) is not None:
                return int(backend.token_to_id(token))
    for key in ("bos_token_id", "eos_token_id"):
        if isinstance(config.get(key), int):
            return int(config[key])
    raise ModelLoadError(f"{path}: cannot tell the BOS token (no bos/eos in tokenizer_config.json or config.json)")
