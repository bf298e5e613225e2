"""Find, load and fingerprint the language model that drives the codec (the codec-facing
adapter is :class:`llmzip.predictor.LoadedModel`).

A model is named by a string:

* ``embedded``: the default model shipped inside this package (``EMBEDDED_NAME``);
* the id of any model shipped inside this package (``llmzip-gpt2-small-v1``, ...): archives record
  it, so older embedded models stay loadable by the archives made with them;
* a local directory in Hugging Face layout (``config.json``, ``*.safetensors``, ``tokenizer.json``),
  or in llmzip's own smaller storage of one (:mod:`llmzip.model_files`);
* a Hugging Face hub id (``gpt2``, ``user/name``), loaded with ``AutoModelForCausalLM`` and
  ``AutoTokenizer`` from the local cache, or downloaded only when ``allow_download`` is set.

Weights are only ever read from safetensors and ``trust_remote_code`` is never enabled.
A config's ``model_type`` picks the engine architecture (:data:`llmzip.engine.MODEL_TYPES`:
GPT-2, and the Llama family: llama, mistral, qwen2); anything else is refused. The fingerprint is
a SHA-256 of what the codec actually computes with: the engine's architecture, spec, integer
weights and arithmetic version, the token->bytes table and the BOS id. Two models with the same
fingerprint produce the same tables, so an archive decodes with either.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from .engine import MODEL_TYPES, ExactEngine, GPT2Spec, LlamaSpec, Spec, build_engine
from .errors import ModelLoadError
from .model_files import read_tokenizer_json, read_weights
from .predictor import LoadedModel
from .tokens import ByteTokenizer

MODELS_DIR = Path(__file__).resolve().parent / "models"
# The default model; older shipped models stay for their archives. Its directory stays in plain
# Hugging Face layout (model.safetensors, tokenizer.json): benchmarks load it with from_pretrained.
EMBEDDED_NAME = "llmzip-gpt2-small-v2"
SHIPPED_PREFIX = "llmzip-"                 # ids reserved for models shipped in this package
SUPPORTED_TYPES = tuple(MODEL_TYPES)


def model_fingerprint(engine: ExactEngine, tokenizer: ByteTokenizer, bos_id: int) -> bytes:
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
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        state, recorded = read_weights(path)
        backend = _parse_tokenizer(read_tokenizer_json(path))
        tokenizer = ByteTokenizer(backend)
        bos = _bos_from_files(path, config, backend)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load model from {path}: {exc}") from exc
    loaded = _assemble(model_id, _Config(config), state, tokenizer, bos)
    if recorded is not None:
        _check_packed(loaded, path, *recorded)
    return loaded


def _parse_tokenizer(text: str) -> Any:
    """A ``tokenizers.Tokenizer`` from its JSON; ValueError for text it cannot parse (the library
    raises a bare Exception)."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(text)
    except Exception as exc:   # noqa: BLE001 - tokenizers' parse errors have no narrower type
        raise ValueError(f"tokenizer.json: {exc}") from exc


def _check_packed(loaded: LoadedModel, path: Path, engine: int, fingerprint: str) -> None:
    """A packed directory must give, under the engine it was packed for, the fingerprint it records
    (checked under that engine, so the check still holds once a newer engine is the default)."""
    got = loaded.with_engine(engine).fingerprint.hex()
    if got != fingerprint:
        raise ModelLoadError(f"{path}: the model does not match the fingerprint its packed weights record "
                             f"({got[:16]}... against {fingerprint[:16]}... under engine {engine}): its weights, "
                             "tokenizer or BOS token changed since it was packed")


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


class _MissingKey(ModelLoadError, AttributeError):
    """A config.json key the engine needs is absent (an AttributeError, so getattr defaults apply)."""


class _Config:
    """Attribute access over a config.json dict, with GPT-2's defaults for GPT-2 models."""

    _gpt2_defaults = {
        "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new", "tie_word_embeddings": True,
        "scale_attn_by_inverse_layer_idx": False, "scale_attn_weights": True,
    }

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getattr__(self, key: str) -> Any:
        if key in self._data:
            return self._data[key]
        if self._data.get("model_type") == "gpt2" and key in self._gpt2_defaults:
            return self._gpt2_defaults[key]
        raise _MissingKey(f"config.json has no {key!r}")


def _check_type(model_type: str, name: str) -> None:
    if model_type not in SUPPORTED_TYPES:
        raise ModelLoadError(
            f"{name}: model type {model_type!r} is not supported by the exact engine "
            f"(supported: {', '.join(SUPPORTED_TYPES)})"
        )


def _spec_and_state(config: Any, state: dict[str, np.ndarray]) -> tuple[Spec, dict[str, np.ndarray]]:
    """The engine spec of ``config`` and ``state`` under the key names its engine reads, with the
    LM head filled in when it is tied to the embeddings. Raises ValueError for an unsupported variant."""
    if MODEL_TYPES[config.model_type] == "gpt2":
        state = {k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k: v for k, v in state.items()}
        if getattr(config, "tie_word_embeddings", True) or "lm_head.weight" not in state:
            state["lm_head.weight"] = state["transformer.wte.weight"]
        return GPT2Spec.from_config(config), state
    if getattr(config, "tie_word_embeddings", False) or "lm_head.weight" not in state:
        state = {**state, "lm_head.weight": state["model.embed_tokens.weight"]}
    return LlamaSpec.from_config(config), state


def _assemble(model_id: str, config: Any, state: dict[str, np.ndarray], tokenizer: ByteTokenizer,
              bos: int) -> LoadedModel:
    _check_type(config.model_type, model_id)
    try:
        spec, state = _spec_and_state(config, state)
    except (KeyError, ValueError) as exc:
        raise ModelLoadError(f"{model_id}: {exc}") from exc
    if tokenizer.vocab_size > spec.vocab_size:
        raise ModelLoadError(f"{model_id}: tokenizer has {tokenizer.vocab_size} tokens, model only {spec.vocab_size}")
    if not 0 <= bos < spec.vocab_size:
        raise ModelLoadError(f"{model_id}: BOS id {bos} outside the vocabulary")
    try:
        engine = build_engine(spec, state)
    except (KeyError, ValueError) as exc:
        raise ModelLoadError(f"{model_id}: cannot build the exact engine: {exc}") from exc
    fingerprint_of = functools.partial(model_fingerprint, tokenizer=tokenizer, bos_id=bos)
    return LoadedModel(model_id, engine, tokenizer, bos, model_fingerprint(engine, tokenizer, bos),
                       build=functools.partial(build_engine, spec, state), fingerprint_of=fingerprint_of)


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
