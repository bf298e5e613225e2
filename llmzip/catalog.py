"""Which models llmzip can run here: the ones shipped in the package and the ones in the local
Hugging Face cache whose architecture the exact engine computes.

Only ``config.json`` and file names are read (no weights, no torch), so listing is instant.
A cached model is listed as runnable when its ``model_type`` is one the engine knows and it has
safetensors weights and a ``tokenizer.json`` (shipped models may hold ``tokenizer.json.xz``);
whether its tokenizer is exact is checked when it loads (``llmzip compress --model ID``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from .model import EMBEDDED_NAME, MODELS_DIR, SUPPORTED_TYPES, shipped_models
from .model_files import TOKENIZER_FILE, tokenizer_file, weight_files


@dataclass(frozen=True)
class ModelEntry:
    """One model llmzip can be pointed at with ``--model``."""

    name: str             # what --model takes
    source: str           # "shipped" or "cache"
    model_type: str
    layers: int
    width: int
    vocab_size: int
    context: int
    weight_bytes: int
    default: bool
    path: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _entry(name: str, source: str, path: Path) -> ModelEntry | None:
    """The entry of a model directory, or None when llmzip cannot run it."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    model_type = config.get("model_type", "")
    weights = weight_files(path)
    # Hub models load through transformers' AutoTokenizer, which reads only a plain tokenizer.json
    has_tokenizer = tokenizer_file(path) is not None if source == "shipped" else (path / TOKENIZER_FILE).is_file()
    if model_type not in SUPPORTED_TYPES or not weights or not has_tokenizer:
        return None
    get = lambda *keys: next((int(config[k]) for k in keys if k in config), 0)   # noqa: E731
    return ModelEntry(
        name=name, source=source, model_type=model_type,
        layers=get("num_hidden_layers", "n_layer"), width=get("hidden_size", "n_embd"),
        vocab_size=get("vocab_size"), context=get("max_position_embeddings", "n_positions"),
        weight_bytes=sum(w.stat().st_size for w in weights), default=name == EMBEDDED_NAME, path=str(path))


def _cached_snapshots(cache_dir: Path | None) -> Iterator[tuple[str, Path]]:
    """(repo id, newest snapshot directory) of every model in the Hugging Face cache (default: the
    user's, as ``HF_HUB_CACHE``/``HF_HOME`` say)."""
    try:
        from huggingface_hub import scan_cache_dir
        from huggingface_hub.errors import CacheNotFound
    except ImportError:
        return
    try:
        cache = scan_cache_dir(cache_dir)
    except (CacheNotFound, OSError):
        return
    for repo in sorted(cache.repos, key=lambda r: r.repo_id):
        if repo.repo_type == "model" and repo.revisions:
            newest = max(repo.revisions, key=lambda r: r.last_modified)
            yield repo.repo_id, Path(newest.snapshot_path)


def available_models(include_cache: bool = True, cache_dir: Path | None = None) -> list[ModelEntry]:
    """Shipped models first (oldest first), then runnable models of the local Hugging Face cache."""
    entries = [_entry(name, "shipped", MODELS_DIR / name) for name in shipped_models()]
    if include_cache:
        entries += [_entry(repo_id, "cache", path) for repo_id, path in _cached_snapshots(cache_dir)]
    return [e for e in entries if e is not None]


def describe(entry: ModelEntry) -> str:
    """One line for ``llmzip models``."""
    mark = " (default)" if entry.default else ""
    shape = f"{entry.model_type} {entry.layers}x{entry.width}, vocab {entry.vocab_size}, context {entry.context}"
    return f"{entry.name}{mark}  [{entry.source}]  {shape}, {entry.weight_bytes / 1e6:.1f} MB"
