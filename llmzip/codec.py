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
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np

from .coder import ArithmeticDecoder, ArithmeticEncoder
from .container import Header, content_checksum, read_archive, write_archive
from .errors import CorruptArchiveError, UnsupportedFormatError
from .mix import DEFAULT_MIX, Mixer, MixParams
from .runtime import torch_threads

Progress = Callable[[int], None]   # called with the number of tokens just finished
DEFAULT_CHUNK = 255                # tokens per chunk (corpus benchmark vs 511: +0.9% bits, +52% decode speed)
MAX_GROUP = 128                    # more rows per step amortise the per-step work...
KV_BUDGET = 640 << 20              # ...but every row of a group holds a KV cache: bound their sum
KV_LIMIT = 4 * KV_BUDGET           # the most decoder cache an archive may ask for (explicit groups)
PARALLEL_MIN_FLOPS = 1 << 20       # worker threads only for models of >= ~1 MFLOP per token (measured)
PREFILL_BLOCK = 64                 # encoder: at most this many tokens per row per forward call...
TABLE_BUDGET = 1 << 23             # ...and at most this many table entries (64 MiB) per call


class Predictor(Protocol):
    """Integer next-token tables for rows that advance in lockstep.

    Invariant: the table returned for a row at a position is a pure function of that row's
    tokens up to that position. It does not depend on the other rows, on how the tokens
    were split across ``advance`` calls, or on the machine.
    """

    vocab_size: int
    max_context: int

    def start(self, rows: int) -> Any:
        """A fresh state for ``rows`` empty rows."""

    def advance(self, state: Any, tokens: np.ndarray) -> np.ndarray:
        """Append ``tokens`` (rows, T); return int64 tables (rows, T, V), each entry >= 1."""

    def keep(self, state: Any, rows: np.ndarray) -> None:
        """Keep only the listed rows of ``state``, in that order."""


class Model(Predictor, Protocol):
    """A predictor with the tokenizer and identity an archive records."""

    model_id: str
    fingerprint: bytes
    bos_id: int
    engine_id: int
    freq_bits: int
    tokenizer: Any  # llmzip.tokens.ByteTokenizer

    def check_archive(self, fingerprint: bytes, model_id: str) -> None: ...


@dataclass
class CodingStats:
    """Filled in by :func:`compress` when passed in :class:`Settings`: what an ideal coder would pay."""

    tokens: int = 0
    ideal_bits: float = 0.0   # sum of -log2(freq / total) over the coded tokens


@dataclass(frozen=True)
class Settings:
    """Knobs that change speed or memory but never the archive."""

    batch_size: int | None = None   # rows per forward call (None: the group split evenly among threads)
    threads: int | None = None      # CPU threads (None: every core this process may use)
    progress: Progress | None = None
    stats: CodingStats | None = None


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
    if group_chunks * getattr(model, "kv_bytes_per_row", 0) > KV_LIMIT:
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
    segments = [
        encode_group(model, rows, settings, mixer)
        for rows in _groups(tokens, chunk, group_chunks)
    ]
    return write_archive(header, segments)


def decompress(blob: bytes, model: Model, settings: Settings = Settings()) -> bytes:
    """Decode an archive made by :func:`compress` with the same model (checked by fingerprint)."""
    header, segments = read_archive(blob)
    if hasattr(model, "with_engine"):   # archives of an older engine decode with its arithmetic
        model = model.with_engine(header.engine)
    mixing = check_compatible(header, model)
    mixer = Mixer(model.vocab_size, mixing, header.chunk_tokens) if mixing else None   # grows as decoded
    parts: list[bytes] = []
    for j, segment in enumerate(segments):
        rows = [header.chunk_length(i) for i in header.segment_chunks(j)]
        for ids in decode_group(model, bytes(segment), rows, settings, mixer):
            parts.append(model.tokenizer.decode(ids))
    data = b"".join(parts)
    if len(data) != header.original_size or content_checksum(data) != header.checksum:
        raise CorruptArchiveError("checksum mismatch: the decoded data is not the original")
    return data


def default_chunk(model: Predictor) -> int:
    """Tokens per chunk when the caller does not choose: DEFAULT_CHUNK, or less for a short context."""
    return min(DEFAULT_CHUNK, model.max_context - 1)


def default_group(model: Predictor) -> int:
    per_row = getattr(model, "kv_bytes_per_row", 0)
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
    cache = min(header.group_chunks, header.chunk_count) * getattr(model, "kv_bytes_per_row", 0)
    if cache > KV_LIMIT:   # compress() never writes such an archive: refuse before allocating it
        raise CorruptArchiveError(f"groups of {header.group_chunks} chunks would need {cache >> 20} MiB "
                                  f"of decoder cache (limit {KV_LIMIT >> 20} MiB)")
    return mixing


def _groups(tokens: np.ndarray, chunk: int, group: int) -> Iterator[list[np.ndarray]]:
    """The chunks of ``tokens``, ``group`` at a time (views, made lazily)."""
    for j in range(0, len(tokens), chunk * group):
        yield [tokens[i : i + chunk] for i in range(j, min(j + chunk * group, len(tokens)), chunk)]


def prefill_block(rows: int, vocab_size: int) -> int:
    """Tokens per row per encoder forward call: the tables it returns stay within TABLE_BUDGET."""
    return max(1, min(PREFILL_BLOCK, TABLE_BUDGET // max(1, rows * vocab_size)))


def _batches(rows: int, settings: Settings, model: Predictor) -> list[slice]:
    size = settings.batch_size or -(-rows // cpu_threads(settings, model))
    return [slice(i, min(i + size, rows)) for i in range(0, rows, size)]


def cpu_threads(settings: Settings, model: Predictor | None = None) -> int:
    """Threads a codec call uses: ``settings.threads`` or every usable core, but one for a model
    too small to keep several threads busy (per-step overhead then outweighs the gain)."""
    if model is not None and getattr(model, "flops_per_token", PARALLEL_MIN_FLOPS) < PARALLEL_MIN_FLOPS:
        return 1
    if settings.threads:
        return settings.threads
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


@contextlib.contextmanager
def _pool(settings: Settings, model: Predictor) -> Iterator[ThreadPoolExecutor | None]:
    """Worker threads for the batches of a step (None: run them in the calling thread).

    Rows are independent, so running batches concurrently never changes a table. numpy and
    BLAS release the GIL; each GEMM runs single-threaded (one BLAS thread per worker), which
    measured faster here than threaded GEMMs with serial glue. While a codec call runs, the
    process-wide BLAS thread count is limited to 1.
    """
    from threadpoolctl import threadpool_limits

    threads = cpu_threads(settings, model)
    with threadpool_limits(limits=1, user_api="blas"), torch_threads(1):
        if threads <= 1:
            yield None
            return
        with ThreadPoolExecutor(threads, thread_name_prefix="llmzip") as pool:
            yield pool


def _advance(pool: ThreadPoolExecutor | None, model: Predictor, batches: list[slice], states: list[Any],
             tokens: np.ndarray) -> Callable[[], np.ndarray]:
    """Start advancing every batch by ``tokens`` (rows, T); the result gives all rows' tables.

    Each worker copies its batch's tables into one shared array, so the coding thread never
    has to concatenate them (that copy cost the main thread ~10% of a compression run).
    """
    if len(batches) == 1:
        tables = model.advance(states[0], tokens[batches[0]])
        return lambda: tables
    out = np.empty(tokens.shape + (model.vocab_size,), dtype=np.int64)

    def run(rows: slice, state: Any) -> None:
        out[rows] = model.advance(state, tokens[rows])

    if pool is None:
        for s, st in zip(batches, states):
            run(s, st)
        return lambda: out
    futures = [pool.submit(run, s, st) for s, st in zip(batches, states)]

    def result() -> np.ndarray:
        for f in futures:
            f.result()
        return out
    return result


def encode_group(
    model: Predictor, rows: Sequence[np.ndarray], settings: Settings, mixer: Mixer | None = None
) -> bytes:
    """Arithmetic-code one group of chunks in lockstep; returns its segment.

    Rows must be in non-increasing length order (only the last chunk of a file is short).
    """
    bos = getattr(model, "bos_id", 0)
    length = max(len(r) for r in rows)
    inputs = np.full((len(rows), length), bos, dtype=np.int64)
    targets = np.full((len(rows), length), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        inputs[i, 1 : len(row)] = row[:-1]
        targets[i, : len(row)] = row
    encoder = ArithmeticEncoder()
    if mixer is not None:
        mixer.begin_group(len(rows))
    batches = _batches(len(rows), settings, model)
    states = [model.start(s.stop - s.start) for s in batches]
    span = prefill_block(len(rows), getattr(model, "vocab_size", 1))
    blocks = [slice(t0, min(t0 + span, length)) for t0 in range(0, length, span)]
    with _pool(settings, model) as pool:
        pending = _advance(pool, model, batches, states, inputs[:, blocks[0]])
        for k, block in enumerate(blocks):
            tables = pending()
            if k + 1 < len(blocks):   # the workers compute the next block while this one is coded
                pending = _advance(pool, model, batches, states, inputs[:, blocks[k + 1]])
            _encode_tables(encoder, mixer, tables, targets[:, block], settings)
    return encoder.finish()


def _encode_tables(
    encoder: ArithmeticEncoder, mixer: Mixer | None, tables: np.ndarray, targets: np.ndarray, settings: Settings
) -> None:
    if mixer is None:
        _encode_block(encoder, tables, targets, settings.stats)
    else:
        _encode_mixed(encoder, mixer, tables, targets, settings.stats)
    if settings.progress:
        settings.progress(int((targets >= 0).sum()))


def _encode_block(
    encoder: ArithmeticEncoder, tables: np.ndarray, targets: np.ndarray, stats: CodingStats | None
) -> None:
    """Code targets (rows, T) (-1 = past the end of a row) with tables (rows, T, V), step-major."""
    live = targets >= 0
    safe = np.where(live, targets, 0)
    cdf = np.cumsum(tables, axis=-1)
    freq = np.take_along_axis(tables, safe[..., None], -1)[..., 0]
    cum = np.take_along_axis(cdf, safe[..., None], -1)[..., 0] - freq
    total = cdf[..., -1]
    if stats is not None:
        stats.tokens += int(live.sum())
        stats.ideal_bits += float(np.log2(total[live] / freq[live]).sum())
    # Transpose so that the loop walks time outermost and chunks innermost.
    for c, f, tot, ok in zip(cum.T.ravel().tolist(), freq.T.ravel().tolist(),
                             total.T.ravel().tolist(), live.T.ravel().tolist()):
        if ok:
            encoder.encode(c, f, tot)


def _encode_mixed(
    encoder: ArithmeticEncoder, mixer: Mixer, tables: np.ndarray, targets: np.ndarray, stats: CodingStats | None
) -> None:
    """Like :func:`_encode_block`, one step at a time: mix the live rows' tables, code, learn."""
    for t in range(targets.shape[1]):
        live = int((targets[:, t] >= 0).sum())      # rows end only at the tail of the group
        if not live:
            break
        x = targets[:live, t]
        _encode_block(encoder, mixer.tables(tables[:live, t])[:, None], x[:, None], stats)
        mixer.update(x)


def decode_group(
    model: Predictor, segment: bytes, lengths: Sequence[int], settings: Settings, mixer: Mixer | None = None
) -> list[np.ndarray]:
    """Decode one segment holding chunks of the given lengths (non-increasing); returns their tokens."""
    if list(lengths) != sorted(lengths, reverse=True):
        raise CorruptArchiveError("chunk lengths out of order")
    decoder = ArithmeticDecoder(segment)
    batches = _batches(len(lengths), settings, model)
    states = [model.start(s.stop - s.start) for s in batches]
    with _pool(settings, model) as pool:
        out = _decode_steps(model, decoder, lengths, batches, states, pool, settings, mixer)
    decoder.check_end()
    return [out[i, :n] for i, n in enumerate(lengths)]


def _decode_steps(
    model: Predictor, decoder: ArithmeticDecoder, lengths: Sequence[int], batches: list[slice],
    states: list[Any], pool: ThreadPoolExecutor | None, settings: Settings, mixer: Mixer | None,
) -> np.ndarray:
    """The decoder's lockstep loop: one token of every live row per step; returns (rows, T) tokens."""
    bos = getattr(model, "bos_id", 0)
    out = np.zeros((len(lengths), max(lengths)), dtype=np.int64)
    prev = np.full(len(lengths), bos, dtype=np.int64)
    if mixer is not None:
        mixer.begin_group(len(lengths))
    learn = None   # the tokens of the previous step, not yet learnt by the mixer
    for t in range(max(lengths)):
        live = sum(1 for n in lengths if n > t)    # lengths are non-increasing: a prefix is live
        batches, states = _shrink(model, batches, states, live)
        pending = _advance(pool, model, batches, states, prev[:live, None])
        if mixer is not None and learn is not None:
            mixer.update(learn)                    # overlaps the workers' forward pass
        tables = pending()[:, 0]
        if mixer is not None:
            tables = mixer.tables(tables)
        cdf = np.zeros((live, tables.shape[-1] + 1), dtype=np.int64)
        np.cumsum(tables, axis=-1, out=cdf[:, 1:])
        for i in range(live):
            out[i, t] = prev[i] = decoder.decode(cdf[i])
        decoder.check_overread()   # a truncated or forged segment stops here, not at the end
        learn = out[:live, t]
        if settings.progress:
            settings.progress(live)
    if mixer is not None and learn is not None:
        mixer.update(learn)
    return out


def _shrink(model: Predictor, batches: list[slice], states: list[Any], live: int) -> tuple[list[slice], list[Any]]:
    """Drop rows >= live from the batch layout (rows end only at the tail of the group)."""
    kept_b, kept_s = [], []
    for s, st in zip(batches, states):
        if s.start >= live:
            continue
        if s.stop > live:
            model.keep(st, np.arange(live - s.start))
            s = slice(s.start, live)
        kept_b.append(s)
        kept_s.append(st)
    return kept_b, kept_s
