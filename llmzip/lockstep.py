"""One group of chunks, arithmetic-coded in lockstep: the codec's inner loop.

Step ``t`` codes token ``t`` of every row (chunk) of the group, in row order. The encoder
knows every token, so the predictor evaluates whole blocks of steps at once (teacher forcing);
the decoder advances one step at a time with an incremental state (KV cache). Rows are split
into batches that worker threads advance concurrently; neither the batch layout nor the
thread count changes a table (see :class:`Predictor`), so neither changes the archive.
"""

from __future__ import annotations

import contextlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np

from .coder import ArithmeticDecoder, ArithmeticEncoder
from .errors import CorruptArchiveError
from .mix import Mixer
from .runtime import torch_threads

Progress = Callable[[int], None]   # called with the number of tokens just finished
PARALLEL_MIN_FLOPS = 1 << 20       # worker threads only for models of >= ~1 MFLOP per token (measured)
PREFILL_BLOCK = 64                 # encoder: at most this many tokens per row per forward call...
TABLE_BUDGET = 1 << 23             # ...and at most this many table entries (32 MiB of int32) per call
# Decoder: a group of fewer rows per core decodes on one thread. A decoding step is hundreds of
# small numpy calls that hold the GIL, so a second thread gains little, and less for a small
# model (quiet, CLI settings, one thread vs two, wall / CPU seconds): embedded model (4.2 MOP per
# token) 77 rows 3.55 / 3.54 vs 3.68 / 5.47, 157 rows (groups of 128 and 29) 7.08 / 7.08 vs
# 6.20 / 8.76; a 6x384 Llama (25 MOP per token) 74 rows 8.05 / 8.04 vs 7.44 / 11.76.
DECODE_ROWS_PER_THREAD = 64
DECODE_ROWS_PER_THREAD_LARGE = 24     # for models of at least LARGE_MODEL_FLOPS per token
LARGE_MODEL_FLOPS = 16 << 20
# Decoder: tables wider than this are searched by blocks of SEARCH_BLOCK entries instead of through
# a cumulative table (128 rows per step, one core: 4096 entries 0.40 vs 0.63 ms, 8192 0.75 vs
# 0.72, 32768 6.2 vs 1.6, 65536 10.9 vs 2.9 ms per step; the symbols are the same).
BLOCKED_SEARCH_VOCAB = 8192
SEARCH_BLOCK = 256


class Predictor(Protocol):
    """Integer next-token tables for rows that advance in lockstep.

    Invariant: the table returned for a row at a position is a pure function of that row's
    tokens up to that position. It does not depend on the other rows, on how the tokens
    were split across ``advance`` calls, or on the machine.
    """

    vocab_size: int
    max_context: int
    bos_id: int            # the first input of every row
    table_dtype: type      # integer dtype of the tables advance() allocates (np.int64 when unsure)
    flops_per_token: int   # below PARALLEL_MIN_FLOPS a codec call runs on one thread

    def start(self, rows: int) -> Any:
        """A fresh state for ``rows`` empty rows."""

    def advance(self, state: Any, tokens: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Append ``tokens`` (rows, T); return integer tables (rows, T, V) of ``table_dtype``, each
        entry >= 1, written into ``out`` (a C-contiguous integer array of that shape) when it is given."""

    def keep(self, state: Any, rows: np.ndarray) -> None:
        """Keep only the listed rows of ``state``, in that order."""

    def prepare(self, tokens: int) -> None:
        """Called once per codec call of ``tokens`` tokens, before any worker thread starts (e.g. to
        choose a GEMM backend); never changes a table. May do nothing."""


@dataclass
class CodingStats:
    """Filled in by :func:`compress` when passed in :class:`Settings`: what an ideal coder would pay."""

    tokens: int = 0
    ideal_bits: float = 0.0   # sum of -log2(freq / total) over the coded tokens


@dataclass(frozen=True)
class Settings:
    """Knobs that change speed or memory but never the archive."""

    batch_size: int | None = None   # rows per forward call (None: the group split evenly among threads)
    threads: int | None = None      # CPU threads (None: every core this process may use; the decoder
                                    # uses fewer for groups of few chunks, see DECODE_ROWS_PER_THREAD)
    progress: Progress | None = None
    stats: CodingStats | None = None


def prefill_block(rows: int, vocab_size: int) -> int:
    """Tokens per row per encoder forward call: the tables it returns stay within TABLE_BUDGET."""
    return max(1, min(PREFILL_BLOCK, TABLE_BUDGET // max(1, rows * vocab_size)))


def _batches(rows: int, settings: Settings, model: Predictor) -> list[slice]:
    size = settings.batch_size or -(-rows // cpu_threads(settings, model))
    return [slice(i, min(i + size, rows)) for i in range(0, rows, size)]


def cpu_threads(settings: Settings, model: Predictor | None = None) -> int:
    """Threads a codec call uses: ``settings.threads`` or every usable core, but one for a model
    too small to keep several threads busy (per-step overhead then outweighs the gain)."""
    if model is not None and model.flops_per_token < PARALLEL_MIN_FLOPS:
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
    process-wide BLAS thread count is limited to 1, and each worker limits its own OpenMP team
    (:func:`_one_torch_thread`).
    """
    from threadpoolctl import threadpool_limits

    threads = cpu_threads(settings, model)
    with threadpool_limits(limits=1, user_api="blas"), torch_threads(1):
        if threads <= 1:
            yield None
            return
        with ThreadPoolExecutor(threads, thread_name_prefix="llmzip", initializer=_one_torch_thread) as pool:
            yield pool


def _one_torch_thread() -> None:
    """A worker's torch ops on one OpenMP thread. ``torch.set_num_threads`` sets the OpenMP team
    size of the calling thread only, so the limit :func:`_pool` sets in the calling thread does
    not reach the workers: unless ``OMP_NUM_THREADS=1`` was set before torch loaded (the CLI
    does, a library caller may not), each worker's int8 GEMMs forked a team of one thread per
    core, whose threads spin between GEMMs. Measured (embedded model, decoder steps of 77 rows
    as 2 workers of 39 against one thread of 77, busy 2-core machine, CPU time per step): 18.3
    vs 12.9 ms without this, 14.8 vs 14.0 ms with it; the process held 7 threads, then 5."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def _advance(pool: ThreadPoolExecutor | None, model: Predictor, batches: list[slice], states: list[Any],
             tokens: np.ndarray) -> Callable[[], np.ndarray]:
    """Start advancing every batch by ``tokens`` (rows, T); the result gives all rows' tables.

    Each worker writes its batch's tables into one shared array, so the coding thread never
    has to concatenate them (that copy cost the main thread ~10% of a compression run).
    """
    if len(batches) == 1:
        return _advance_batch(None, model, states[0], tokens[batches[0]])
    out = np.empty(tokens.shape + (model.vocab_size,), dtype=model.table_dtype)
    results = [_advance_batch(pool, model, st, tokens[s], out[s]) for s, st in zip(batches, states)]

    def result() -> np.ndarray:
        for r in results:
            r()
        return out
    return result


def teacher_forcing(rows: Sequence[np.ndarray], bos: int) -> tuple[np.ndarray, np.ndarray]:
    """The predictor's inputs (BOS, then each row but its last token) and the targets (each row),
    both (rows, longest row) int64; past a row's end, inputs are BOS and targets -1."""
    length = max(len(r) for r in rows)
    inputs = np.full((len(rows), length), bos, dtype=np.int64)
    targets = np.full((len(rows), length), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        inputs[i, 1 : len(row)] = row[:-1]
        targets[i, : len(row)] = row
    return inputs, targets


def encode_group(
    model: Predictor, rows: Sequence[np.ndarray], settings: Settings, mixer: Mixer | None = None
) -> bytes:
    """Arithmetic-code one group of chunks in lockstep; returns its segment.

    Rows must be in non-increasing length order (only the last chunk of a file is short).
    """
    inputs, targets = teacher_forcing(rows, model.bos_id)
    length = inputs.shape[1]
    encoder = ArithmeticEncoder()
    if mixer is not None:
        mixer.begin_group(len(rows))
    batches = _batches(len(rows), settings, model)
    states = [model.start(s.stop - s.start) for s in batches]
    span = prefill_block(len(rows), model.vocab_size)
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
    cum, freq, total = table_terms(tables.reshape(-1, tables.shape[-1]), np.where(live, targets, 0).ravel())
    # Transpose so that the loop walks time outermost and chunks innermost.
    shape = targets.shape
    _encode_terms(encoder, cum.reshape(shape).T, freq.reshape(shape).T, total.reshape(shape).T, live.T, stats)


def table_terms(tables: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(cum, freq, total)`` (N,) int64 of tokens ``x`` (N,) in integer tables (N, V): one
    summing pass over the tables, no cumulative table (which would be 8 bytes per entry)."""
    n, vocab = tables.shape
    starts = np.arange(0, n * vocab, vocab)
    seg = np.add.reduceat(tables.reshape(-1), np.stack([starts, starts + x], 1).reshape(-1),
                          dtype=np.int64).reshape(n, 2)
    cum = np.where(x > 0, seg[:, 0], 0)                 # reduceat gives table[start] for an empty prefix
    return cum, tables.reshape(-1)[starts + x].astype(np.int64), cum + seg[:, 1]


def _encode_terms(encoder: ArithmeticEncoder, cum: np.ndarray, freq: np.ndarray, total: np.ndarray,
                  live: np.ndarray, stats: CodingStats | None) -> None:
    """Code the symbols ``[cum, cum + freq)`` of ``total`` where ``live``, in C order."""
    if stats is not None:
        stats.tokens += int(live.sum())
        stats.ideal_bits += float(np.log2(total[live] / freq[live]).sum())
    if live.all():
        encoder.encode_all(cum, freq, total)
    else:
        encoder.encode_all(cum[live], freq[live], total[live])


def _encode_mixed(
    encoder: ArithmeticEncoder, mixer: Mixer, tables: np.ndarray, targets: np.ndarray, stats: CodingStats | None
) -> None:
    """Like :func:`_encode_block`, one step at a time: mix the live rows' tables, code, learn."""
    for t in range(targets.shape[1]):
        live = int((targets[:, t] >= 0).sum())      # rows end only at the tail of the group
        if not live:
            break
        x = targets[:live, t]
        cum, freq, total = mixer.coding_terms(tables[:live, t], x)
        _encode_terms(encoder, cum, freq, total, np.ones(live, dtype=bool), stats)
        mixer.update(x)


def decode_threads(settings: Settings, model: Predictor, rows: int) -> int:
    """Threads to decode a group of ``rows`` chunks: fewer than the cores when the group has few
    rows per core, since a step of few rows costs less than handing it to threads (see
    DECODE_ROWS_PER_THREAD)."""
    large = model.flops_per_token >= LARGE_MODEL_FLOPS
    per_thread = DECODE_ROWS_PER_THREAD_LARGE if large else DECODE_ROWS_PER_THREAD
    return max(1, min(cpu_threads(settings, model), rows // per_thread))


def decode_group(
    model: Predictor, segment: bytes, lengths: Sequence[int], settings: Settings, mixer: Mixer | None = None
) -> list[np.ndarray]:
    """Decode one segment holding chunks of the given lengths (non-increasing); returns their tokens."""
    if list(lengths) != sorted(lengths, reverse=True):
        raise CorruptArchiveError("chunk lengths out of order")
    if settings.threads is None:
        settings = replace(settings, threads=decode_threads(settings, model, len(lengths)))
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
    """The decoder's lockstep loop: one token of every live row per step; returns (rows, T) tokens.

    Batches are pipelined: as soon as a batch's tokens of step ``t`` are decoded, its forward
    pass for step ``t + 1`` starts, while this thread mixes and decodes the next batch of step
    ``t``. Rows are still decoded in row order and the mixer still sees whole steps (it mixes a
    step in row ranges before learning it), so the archive is the same as with one batch.
    """
    steps = max(lengths)
    live = [sum(1 for n in lengths if n > t) for t in range(steps)]   # a prefix of the rows
    out = np.zeros((len(lengths), steps), dtype=np.int64)
    prev = np.full(len(lengths), model.bos_id, dtype=np.int64)
    sizes = [s.stop - s.start for s in batches]       # rows each batch's state holds

    def launch(b: int, t: int) -> Callable[[], np.ndarray] | None:
        """Start batch ``b``'s forward pass for step ``t`` (None if none of its rows is live)."""
        n = min(max(live[t] - batches[b].start, 0), sizes[b]) if t < steps else 0
        if n == 0:
            return None
        if n < sizes[b]:                                # rows end only at the tail of the group
            model.keep(states[b], np.arange(n))
            sizes[b] = n
        return _advance_batch(pool, model, states[b], prev[batches[b].start : batches[b].start + n, None].copy())

    if mixer is not None:
        mixer.begin_group(len(lengths))
    pending = [launch(b, 0) for b in range(len(batches))]
    for t in range(steps):
        if mixer is not None:                          # overlaps the workers' forward passes
            if t:
                mixer.update(out[: live[t - 1], t - 1])
            mixer.prepare(live[t])
        for b, result in enumerate(pending):
            if result is not None:
                _decode_rows(decoder, mixer, result()[:, 0], batches[b].start, t, out, prev)
                pending[b] = launch(b, t + 1)
        if settings.progress:
            settings.progress(live[t])
    if mixer is not None:
        mixer.update(out[: live[-1], -1])
    return out


def _advance_batch(pool: ThreadPoolExecutor | None, model: Predictor, state: Any, tokens: np.ndarray,
                   out: np.ndarray | None = None) -> Callable[[], np.ndarray]:
    """Start advancing one batch by ``tokens`` (rows, T), in a worker if there is a pool, else
    now; the result gives its tables (written into ``out`` if given)."""
    kw = {} if out is None else {"out": out}
    if pool is None:
        tables = model.advance(state, tokens, **kw)
        return lambda: tables
    return pool.submit(model.advance, state, tokens, **kw).result


def _decode_rows(decoder: ArithmeticDecoder, mixer: Mixer | None, tables: np.ndarray, first: int,
                 t: int, out: np.ndarray, prev: np.ndarray) -> None:
    """Decode step ``t`` of rows ``first``... from their LM tables (R, V)."""
    if mixer is not None:
        tables = mixer.tables(tables, first)
    if tables.shape[-1] > BLOCKED_SEARCH_VOCAB:
        symbols = decoder.decode_rows_blocked(tables, SEARCH_BLOCK)
    else:
        cdf = np.empty((len(tables), tables.shape[-1] + 1), dtype=np.int64)
        cdf[:, 0] = 0
        np.cumsum(tables, axis=-1, out=cdf[:, 1:])
        symbols = decoder.decode_rows(cdf)
    out[first : first + len(tables), t] = prev[first : first + len(tables)] = symbols
    decoder.check_overread()   # a truncated or forged segment stops here, not at the end

