"""Compression levels 1..9: speed against ratio, as gzip, xz and zstd offer it.

A level is one frozen row of :data:`LEVELS`: which model codes text frames (``None``: no
language model at all, only the classic fallbacks, and the model is never loaded), whether
context mixing is on, the tokens per chunk, and which fallbacks the frame coder tries. A level
changes only what the *compressor* tries: every archive records everything its decoder needs
(method per frame, model id and fingerprint, chunking, mixing parameters), so decoding never
depends on, nor needs to know, the level an archive was made with.

The rows were chosen by measurement (``python benchmarks/levels.py --candidates``,
``benchmarks/results/levels-candidates.md`` and ``levels.md``; README, "Levels"): no model
(LZMA alone, then the smallest of all fallbacks), then the embedded model without and with
mixing, each with 127- and 255-token chunks (shorter chunks: 1-3 % larger, faster to decode).
The older shipped model (``llmzip-gpt2-small-v1``) lost to the embedded one in every
configuration, at lower speed, so no level uses it.

Levels 7-9 use the larger shipped model, ``llmzip-llama-6x384-v4`` (a 12.6 M-parameter Llama
with a 512-token context; README, "The shipped models"), with mixing: 7 in 255-token chunks, 8 and 9 in
511-token chunks (smaller on every corpus file; 9 equals 8 until a stronger configuration ships:
with v4 on the whole novel, groups of 32 chunks instead of 128 made the archive 0.09 % smaller
and decoding 1.6x slower, ``codec.compress(..., chunk_tokens=511, group_chunks=32)``, 2026-12-01).
Its predecessors ``llmzip-llama-6x384-v1``, ``-v2`` and ``-v3``, the same shape trained on fewer
tokens, coded these levels before it and stay shipped for their archives.
Without mixing the Llama lost to the default on four of five corpus files (the HTML then goes to
PPMd), so no level uses it that way. The default stays 6: the Llama codes about 2-2.6x slower
(README, "Levels").

Explicit choices win over the level (:func:`resolve`): a model, mixing on/off, a forced method
or a chunk length given by the caller replace that field of the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .frames import Options

ALL_FALLBACKS = ("stored", "lzma", "bz2", "ppmd")
EMBEDDED = "embedded"          # load_model's name for the default shipped model


@dataclass(frozen=True)
class Level:
    """What the compressor tries at one level (never what the decoder needs)."""

    number: int
    model: str | None                  # a shipped model's id; None: no language model, never loaded
    mixing: bool                       # context mixing (llmzip.codec.DEFAULT_MIX) on model frames
    chunk_tokens: int | None           # tokens per chunk; None: the codec's default (255, or context - 1)
    fallbacks: tuple[str, ...]         # classic coders tried on every frame (stored is always tried)
    summary: str                       # one line for --help and the README


V2 = "llmzip-gpt2-small-v2"
LLAMA = "llmzip-llama-6x384-v4"

LEVELS: tuple[Level, ...] = (    # number, model, mixing, chunk tokens, fallbacks, summary
    Level(1, None, False, None, ("stored", "lzma"), "no model; LZMA only"),
    Level(2, None, False, None, ALL_FALLBACKS, "no model; the smallest of PPMd, LZMA, bzip2"),
    Level(3, V2, False, 127, ALL_FALLBACKS, "embedded model, 127-token chunks, no mixing"),
    Level(4, V2, False, None, ALL_FALLBACKS, "embedded model, no mixing"),
    Level(5, V2, True, 127, ALL_FALLBACKS, "embedded model, 127-token chunks, mixing"),
    Level(6, V2, True, None, ALL_FALLBACKS, "embedded model, mixing (the default)"),
    Level(7, LLAMA, True, 255, ALL_FALLBACKS, "Llama model, 255-token chunks, mixing"),
    Level(8, LLAMA, True, 511, ALL_FALLBACKS, "Llama model, 511-token chunks, mixing"),
    Level(9, LLAMA, True, 511, ALL_FALLBACKS, "as 8 (the smallest archives)"),
)
DEFAULT_LEVEL = 6
MIN_LEVEL, MAX_LEVEL = LEVELS[0].number, LEVELS[-1].number


def get(number: int) -> Level:
    """The row of level ``number`` (ValueError outside MIN_LEVEL..MAX_LEVEL)."""
    if not MIN_LEVEL <= number <= MAX_LEVEL:
        raise ValueError(f"level must be in {MIN_LEVEL}..{MAX_LEVEL}, not {number}")
    return LEVELS[number - MIN_LEVEL]


@dataclass(frozen=True)
class Choice:
    """A level with the caller's explicit choices applied: what one compression run does."""

    level: int
    model: str | None                  # None: no language model
    mixing: bool
    chunk_tokens: int | None
    chunk_from_level: bool             # chunk_tokens is the level's (not the caller's)
    method: str                        # "auto" or a method forced on every frame
    fallbacks: tuple[str, ...]


def resolve(number: int = DEFAULT_LEVEL, *, model: str | None = None, mixing: bool | None = None,
            method: str | None = None, chunk_tokens: int | None = None,
            default_model: str | None = None) -> Choice:
    """Level ``number`` with the explicit ``model``, ``mixing``, ``method`` and ``chunk_tokens``
    (None: the level's) applied. ``default_model`` (the CLI's LLMZIP_MODEL) replaces the model of
    levels that use one, never turns a model on. Forcing ``method="lm"`` on a level without a
    model uses the embedded model."""
    row = get(number)
    chosen = model or (row.model and (default_model or row.model))
    method = method or "auto"
    if chosen is None and method == "lm":
        chosen = EMBEDDED
    return Choice(number, chosen, row.mixing if mixing is None else mixing,
                  row.chunk_tokens if chunk_tokens is None else chunk_tokens, chunk_tokens is None,
                  method, row.fallbacks)


def frame_options(choice: Choice, **fields: Any) -> Options:
    """The :class:`llmzip.frames.Options` of ``choice``; ``fields``: the others (frame_size,
    settings, verify)."""
    from . import codec, frames

    return frames.Options(method=choice.method, mixing=codec.DEFAULT_MIX if choice.mixing else None,
                          chunk_tokens=choice.chunk_tokens, fallbacks=choice.fallbacks,
                          try_model=choice.model is not None, **fields)


def compress(data: bytes, level: int = DEFAULT_LEVEL, *, model: Any = None, **overrides: Any) -> bytes:
    """A format-2 archive of ``data`` at ``level``; ``model`` (a name or a loaded model) and
    ``overrides`` (``mixing``, ``method``, ``chunk_tokens``) win over the level's fields. A level
    without a model never loads one. Any archive decodes with :func:`llmzip.decompress`."""
    import io

    from . import frames
    from .model import load_model

    name = model if model is None or isinstance(model, str) else model.model_id
    choice = resolve(level, model=name, **overrides)
    loaded = (lambda: model) if model is not None and not isinstance(model, str) else (
        lambda: load_model(choice.model))
    out = io.BytesIO()
    frames.compress_stream(io.BytesIO(bytes(data)), out, loaded, frame_options(choice))
    return out.getvalue()
