"""bytes -> archive -> bytes: the lockstep chunked arithmetic codec.

The token stream is cut into chunks of ``chunk_tokens`` tokens; each chunk is an
independent sequence that starts from the BOS token, so no chunk exceeds the model's
context. Chunks are coded ``group_chunks`` at a time in lockstep: step ``t`` codes token
``t`` of every chunk of the group, in chunk order, into one arithmetic-coded segment per
group. The decoder runs the same schedule with an incremental KV cache.

How the tables are computed (batch size, threads, prefill block length) never changes the
archive: the predictor's tables are a pure function of each row's prefix. Only
``chunk_tokens`` and ``group_chunks`` shape the stream, and both are in the header.

With context mixing (``compress(..., mixing=MixParams)``, recorded in the header) one
:class:`~llmzip.mix.Mixer` lives for the whole file: at every step it turns the LM tables of
the live rows into the coding tables and then learns the tokens coded at that step, in the
same order in the encoder and the decoder (see :mod:`llmzip.mix`).

This module is the archive-level API; :mod:`llmzip.lockstep` codes one group (threads,
batches, the encoder's prefill blocks, the decoder's pipelined steps).
"""

from __future__ import annotations

from typing import Any, Iterator, Protocol

import numpy as np

from . import fused
from .container import Header, content_checksum, read_archive, write_archive
from .errors import CorruptArchiveError, UnsupportedFormatError
from .lockstep import CodingStats, Predictor, Settings, decode_group, encode_group
from .mix import DEFAULT_MIX, Mixer, MixParams

__all__ = ["compress", "decompress", "Settings", "CodingStats", "Predictor", "Model", "MixParams",
           "DEFAULT_MIX", "check_compatible", "default_chunk", "default_group"]

DEFAULT_CHUNK = 255                # tokens per chunk (corpus benchmark vs 511: +0.9% bits, +52% decode speed)
MAX_GROUP = 128                    # more rows per step amortise the per-step work...
KV_BUDGET = 640 << 20              # ...but every row of a group holds a KV cache: bound their sum
KV_LIMIT = 4 * KV_BUDGET           # the most decoder cache an archive may ask for (explicit groups)
MIXER_PREALLOC = 1 << 24           # decoder: mixer buffer sized up front for at most this many tokens (64 MiB)


class Model(Predictor, Protocol):
    """A predictor with the tokenizer and identity an archive records."""

    model_id: str
    fingerprint: bytes
    engine_id: int
    freq_bits: int
    kv_bytes_per_row: int   # decoder cache per row of a full context (0: none worth bounding)
    tokenizer: Any  # llmzip.tokens.ByteTokenizer

    def check_archive(self, fingerprint: bytes, model_id: str) -> None: ...

    def with_engine(self, engine_id: int) -> "Model":
        """This model under the arithmetic of ``engine_id`` (self if it is the same); raises
        UnsupportedFormatError for an engine this build does not know, ModelMismatchError for one
        that runs another architecture."""


def compress(
    data: bytes, model: Model, *, chunk_tokens: int | None = None, group_chunks: int | None = None,
    settings: Settings = Settings(), mixing: MixParams | None = DEFAULT_MIX,
) -> bytes:
    """Compress ``data`` with ``model``; the archive records everything needed to decode it.

    ``group_chunks`` defaults to as many chunks (up to ``MAX_GROUP``) as fit ``KV_BUDGET``
    of decoder cache, so decompression memory stays bounded whatever the model. ``mixing``
    (on by default) sets the context-mixing parameters, stored in the header; ``None`` turns
    mixing off.
    """
    chunk = chunk_tokens or default_chunk(model)
    group_chunks = group_chunks or default_group(model)
    if group_chunks * model.kv_bytes_per_row > KV_LIMIT:
        raise ValueError(f"group_chunks={group_chunks} would need more than {KV_LIMIT >> 20} MiB of decoder cache")
    if not 1 <= chunk <= model.max_context - 1:
        raise ValueError(f"chunk_tokens must be in [1, {model.max_context - 1}] for this model")
    tokens = model.tokenizer.encode(data)
    header = Header(
        model_id=model.model_id, fingerprint=model.fingerprint, engine=model.engine_id,
        vocab_size=model.vocab_size, bos_id=model.bos_id, freq_bits=model.freq_bits,
        chunk_tokens=chunk, group_chunks=group_chunks, original_size=len(data),
        token_count=len(tokens), checksum=content_checksum(data),
        mixing=mixing is not None, mix_params=mixing.to_bytes() if mixing else b"",
    )
    mixer = Mixer(model.vocab_size, mixing, chunk, len(tokens)) if mixing else None
    model.prepare(len(tokens), encoding=True)
    try:
        segments = [encode_group(model, rows, settings, mixer) for rows in _groups(tokens, chunk, group_chunks)]
    finally:
        fused.deactivate()   # the choice was this call's (llmzip.fused.select)
    return write_archive(header, segments)


def decompress(blob: bytes, model: Model, settings: Settings = Settings()) -> bytes:
    """Decode an archive made by :func:`compress` with the same model (checked by fingerprint)."""
    header, segments = read_archive(blob)
    model = model.with_engine(header.engine)   # archives of an older engine decode with its arithmetic
    mixing = check_compatible(header, model)
    # The mixer's token buffer is sized from the header's token count (it grows by doubling
    # otherwise: up to 3x the final size at its last growth), but at most MIXER_PREALLOC tokens
    # up front, so a forged count cannot make us allocate much before decoding fails.
    prealloc = min(header.token_count, MIXER_PREALLOC)
    mixer = Mixer(model.vocab_size, mixing, header.chunk_tokens, prealloc) if mixing else None
    parts: list[bytes] = []
    try:
        model.prepare(header.token_count)
        for j, segment in enumerate(segments):
            rows = [header.chunk_length(i) for i in header.segment_chunks(j)]
            for ids in decode_group(model, bytes(segment), rows, settings, mixer):
                parts.append(model.tokenizer.decode(ids))
    finally:
        fused.deactivate()   # the choice was this call's (llmzip.fused.select)
    data = b"".join(parts)
    if len(data) != header.original_size or content_checksum(data) != header.checksum:
        raise CorruptArchiveError("checksum mismatch: the decoded data is not the original")
    return data


def default_chunk(model: Predictor) -> int:
    """Tokens per chunk when the caller does not choose: DEFAULT_CHUNK, or less for a short context."""
    return min(DEFAULT_CHUNK, model.max_context - 1)


def default_group(model: Model) -> int:
    per_row = model.kv_bytes_per_row
    return max(1, min(MAX_GROUP, KV_BUDGET // per_row)) if per_row else MAX_GROUP


def check_compatible(header: Header, model: Model) -> MixParams | None:
    """Refuse archives this model/build cannot decode, with the reason; return the mixing parameters."""
    mixing = MixParams.from_bytes(header.mix_params) if header.mixing else None
    if header.engine != model.engine_id:
        raise UnsupportedFormatError(f"unknown inference engine {header.engine}")
    model.check_archive(header.fingerprint, header.model_id)
    if header.vocab_size != model.vocab_size or header.bos_id != model.bos_id:
        raise CorruptArchiveError("vocabulary size or BOS id does not match the model")
    if header.freq_bits != model.freq_bits:
        raise UnsupportedFormatError(f"frequency precision {header.freq_bits} bits is not supported")
    if header.chunk_tokens > model.max_context - 1:
        raise CorruptArchiveError(f"chunk of {header.chunk_tokens} tokens exceeds the model's context")
    cache = min(header.group_chunks, header.chunk_count) * model.kv_bytes_per_row
    if cache > KV_LIMIT:   # compress() never writes such an archive: refuse before allocating it
        raise CorruptArchiveError(f"groups of {header.group_chunks} chunks would need {cache >> 20} MiB "
                                  f"of decoder cache (limit {KV_LIMIT >> 20} MiB)")
    return mixing


def _groups(tokens: np.ndarray, chunk: int, group: int) -> Iterator[list[np.ndarray]]:
    """The chunks of ``tokens``, ``group`` at a time (views, made lazily)."""
    for j in range(0, len(tokens), chunk * group):
        yield [tokens[i : i + chunk] for i in range(j, min(j + chunk * group, len(tokens)), chunk)]


