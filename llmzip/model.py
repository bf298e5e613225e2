"""Find, load and fingerprint the language model that drives the codec (the codec-facing
adapter is :class:`llmzip.predictor.LoadedModel`).

A model is named by a string:

* ``embedded``: the default model shipped inside this package (``EMBEDDED_NAME``);
* the id of any model shipped inside this package (``llmzip-gpt2-small-v1``, ...): archives record
  it, so older embedded models stay loadable by the archives made with them;
* a local directory in Hugging Face layout (``config.json``, ``*.safetensors``, ``tokenizer.json``);
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
import lzma
from pathlib import Path
from typing import Any

import numpy as np

from . import packed, planes
from .engine import MODEL_TYPES, ExactEngine, GPT2Spec, LlamaSpec, Spec, build_engine
from .errors import ModelLoadError
from .predictor import LoadedModel
from .tokens import ByteTokenizer

MODELS_DIR = Path(__file__).resolve().parent / "models"
EMBEDDED_NAME = "llmzip-gpt2-small-v2"   # the default model; older shipped models stay for their archives
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
    from tokenizers import Tokenizer

    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        state, recorded = _read_weights(path)
        backend = Tokenizer.from_file(str(path / "tokenizer.json"))
        tokenizer = ByteTokenizer(backend)
        bos = _bos_from_files(path, config, backend)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load model from {path}: {exc}") from exc
    loaded = _assemble(model_id, _Config(config), state, tokenizer, bos)
    if recorded is not None:
        _check_packed(loaded, path, *recorded)
    return loaded


def weight_files(path: Path) -> list[Path]:
    """The files of a model directory that hold its weights: ``*.safetensors``, and those llmzip
    stores in less space (:data:`llmzip.packed.DELTA_FILE`, :data:`llmzip.planes.PLANES_FILE`)."""
    stored = [path / name for name in (packed.DELTA_FILE, planes.PLANES_FILE)]
    return sorted(path.glob("*.safetensors")) + [f for f in stored if f.is_file()]


def _read_weights(path: Path) -> tuple[dict[str, np.ndarray], tuple[int, str] | None]:
    """The float state dict of a model directory and, for a packed one (:mod:`llmzip.packed`:
    int8, or the difference from a base), the engine and fingerprint its file records (None for
    plain safetensors, in files of their own or in byte planes: :mod:`llmzip.planes`)."""
    stored, delta = weight_files(path), path / packed.DELTA_FILE
    if not stored or not (path / "tokenizer.json").exists():
        raise ModelLoadError(f"{path}: needs *.safetensors and tokenizer.json (Hugging Face layout)")
    special = {path / packed.PACKED_FILE, delta, path / planes.PLANES_FILE}
    if special.isdisjoint(stored):
        return _read_safetensors(stored), None
    if len(stored) > 1:
        raise ModelLoadError(f"{path}: holds {', '.join(f.name for f in stored)}; keep one of them")
    if stored[0].name == planes.PLANES_FILE:
        raw = np.frombuffer(planes.decode(stored[0].read_bytes()), dtype=np.uint8)
        return _parse_safetensors(raw, str(stored[0]), _SAFETENSORS_DTYPES)[0], None
    tensors, meta = read_packed(path)
    return packed.unpack_state(tensors), (int(meta["engine"]), str(meta["fingerprint"]))


def read_packed(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The packed tensors (int8 rows and peaks, other tensors as stored) and metadata of a packed
    model directory, from its packed file or rebuilt from its difference from a base."""
    delta = path / packed.DELTA_FILE
    return _read_delta(delta) if delta.is_file() else _read_packed(path / packed.PACKED_FILE)


# Packed files are llmzip's own: read as stored (no widening), and any other dtype is damage.
_PACKED_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I8": "i1"}


def _read_packed(f: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The tensors and metadata of a packed file, its format checked."""
    tensors, meta = _parse_safetensors(np.memmap(f, dtype=np.uint8, mode="r"), str(f), _PACKED_DTYPES, strict=True)
    if meta.get("format") != packed.FORMAT or not {"engine", "fingerprint"} <= set(meta):
        raise ModelLoadError(f"{f}: not in the {packed.FORMAT} format this llmzip reads "
                             f"(format {meta.get('format')!r}: a newer llmzip may read it; upgrade), or damaged")
    return tensors, meta


def _read_delta(f: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The packed tensors a difference file rebuilds from its base, and its metadata."""
    try:
        raw = lzma.decompress(f.read_bytes())
    except lzma.LZMAError as exc:
        raise ModelLoadError(f"{f}: not an xz file ({exc})") from exc
    delta, meta = _parse_safetensors(np.frombuffer(raw, dtype=np.uint8), str(f), _PACKED_DTYPES, strict=True)
    keys = {"engine", "fingerprint", "base", "base_fingerprint"}
    if meta.get("format") != packed.DELTA_FORMAT or not keys <= set(meta):
        raise ModelLoadError(f"{f}: not in the {packed.DELTA_FORMAT} format this llmzip reads "
                             f"(format {meta.get('format')!r}: a newer llmzip may read it; upgrade), or damaged")
    try:
        return packed.apply_delta(delta, _delta_base(f, meta)), meta
    except packed.PackingError as exc:
        raise ModelLoadError(f"{f}: {exc}") from exc


def _delta_base(f: Path, meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """The packed tensors of a difference file's base: the model directory named ``meta["base"]``
    beside the difference's own directory, packed (a difference of a difference is not supported)
    and recording the fingerprint ``meta["base_fingerprint"]``."""
    name = str(meta["base"])
    if name in ("", ".", "..") or Path(name).name != name:
        raise ModelLoadError(f"{f}: base {name!r} is not a model directory name")
    base = f.parent.parent / name
    if not (base / packed.PACKED_FILE).is_file():
        raise ModelLoadError(f"{f}: stored as the difference from model {name!r}, which is not beside it as a "
                             f"packed model directory ({base / packed.PACKED_FILE}; a base stored as a "
                             "difference itself is not supported)")
    try:
        tensors, base_meta = _read_packed(base / packed.PACKED_FILE)
    except ValueError as exc:
        raise ModelLoadError(f"{f}: its base {base}: {exc}") from exc
    if base_meta["fingerprint"] != meta["base_fingerprint"]:
        raise ModelLoadError(f"{f}: its base {base} is not the model it was stored against "
                             f"(fingerprint {str(base_meta['fingerprint'])[:16]}... against "
                             f"{str(meta['base_fingerprint'])[:16]}...)")
    return tensors


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


_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2"}   # BF16: high half of a float32


def _read_safetensors(files: list[Path]) -> dict[str, np.ndarray]:
    """Every float tensor of ``files`` (safetensors layout: u64 header length, JSON header, data),
    memory-mapped; bfloat16 (which numpy lacks) widened exactly to float32. Integer and boolean
    tensors (buffers such as attention masks) are skipped: the engine reads only float weights.

    Raises:
        ValueError: a malformed file.
    """
    state: dict[str, np.ndarray] = {}
    for f in files:
        state.update(_read_safetensors_file(f, _SAFETENSORS_DTYPES)[0])
    return state


def _read_safetensors_file(f: Path, dtypes: dict[str, str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The tensors of one file whose dtype is in ``dtypes`` (memory-mapped), and its metadata."""
    return _parse_safetensors(np.memmap(f, dtype=np.uint8, mode="r"), f.name, dtypes)


def _parse_safetensors(buffer: np.ndarray, name: str, dtypes: dict[str, str],
                       strict: bool = False) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The tensors (views of the uint8 ``buffer``) whose dtype is in ``dtypes`` and the metadata of
    a safetensors file's bytes (u64 header length, JSON header, data). ``strict``: a tensor of any
    other dtype is an error rather than skipped (Hugging Face files may hold integer buffers).

    Raises:
        ValueError: a malformed file.
    """
    header, start = planes.read_header(buffer, name)
    data = buffer[start:]
    state: dict[str, np.ndarray] = {}
    for key, info in header.items():
        dtype = info.get("dtype")
        if key == "__metadata__" or (not (isinstance(dtype, str) and dtype in dtypes) and not strict):
            continue
        if not (isinstance(dtype, str) and dtype in dtypes):
            raise ValueError(f"{name}: tensor {key} has dtype {dtype!r}, not one of {sorted(dtypes)}")
        begin, end = _ints(info.get("data_offsets"), 2, f"{name}: tensor {key}: data_offsets")
        if not 0 <= begin <= end <= len(data):
            raise ValueError(f"{name}: tensor {key} lies outside the file")
        shape = _ints(info.get("shape"), None, f"{name}: tensor {key}: shape")
        array = data[begin:end].view(dtypes[dtype]).reshape(shape)
        state[key] = (array.astype(np.uint32) << 16).view(np.float32) if dtype == "BF16" else array
    return state, dict(header.get("__metadata__") or {})


def _ints(value: Any, count: int | None, what: str) -> list[int]:
    """``value`` if it is a list of (``count``) non-negative ints, else ValueError naming ``what``."""
    if not (isinstance(value, list) and (count is None or len(value) == count)
            and all(type(v) is int and v >= 0 for v in value)):
        raise ValueError(f"{what} is {value!r}, not a list of {count or 'some'} non-negative integers")
    return value


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
