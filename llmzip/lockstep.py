"""One group of chunks, arithmetic-coded in lockstep: the codec's inner loop.

Step ``t`` codes token ``t`` of every row (chunk) of the group, in row order. The encoder
knows every token, so the predictor evaluates whole blocks of steps at once (teacher forcing);
the decoder advances one step at a time with an incremental state (KV cache). Rows are split
into batches that workers (forked processes or threads, :mod:`llmzip.workers`) advance
concurrently; neither the batch layout nor the workers change a table (see :class:`Predictor`),
so neither changes the archive.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np

from .coder import ArithmeticDecoder, ArithmeticEncoder
from .errors import CorruptArchiveError
from .mix import Mixer
from .runtime import torch_threads, usable_cores
from .workers import ProcessRunner, Runner, ThreadRunner, fork_available, fork_safe

Progress = Callable[[int], None]   # called with the number of tokens just finished
PARALLEL_MIN_FLOPS = 1 << 20       # worker threads only for models of >= ~1 MFLOP per token (measured)
PREFILL_BLOCK = 64                 # encoder: at most this many tokens per row per forward call...
TABLE_BUDGET = 1 << 23             # ...and at most this many table entries (32 MiB of int32) per call
# Decoder: a group of fewer rows per worker process decodes in the calling process (quiet, embedded
# model, one thread vs two processes, seconds: 2.6 rows 0.62 vs 0.74, 5.0 rows 0.72 vs 0.70, 9.4 rows
# 0.87 vs 0.86; a 6x384 Llama: 2.5 rows 1.59 vs 1.60, 4.8 rows 1.83 vs 1.72).
DECODE_ROWS_PER_PROCESS = 4
# Decoder with threads: a group of fewer rows per core decodes on one thread. A decoding step is hundreds of
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

    def prepare(self, tokens: int, encoding: bool = False) -> None:
        """Called once per codec call of ``tokens`` tokens (``encoding``: a compression), before any
        worker thread starts (e.g. to choose a GEMM backend); never changes a table. May do nothing."""


@dataclass
class CodingStats:
    """Filled in by :func:`compress` when passed in :class:`Settings`: what an ideal coder would pay."""

    tokens: int = 0
    ideal_bits: float = 0.0   # sum of -log2(freq / total) over the coded tokens


@dataclass(frozen=True)
class Settings:
    """Knobs that change speed or memory but never the archive."""

    batch_size: int | None = None   # rows per forward call (None: the group split evenly among threads)
    threads: int | None = None      # workers (None: every core this process may use; the decoder
                                    # uses fewer for groups of few chunks, see decode_workers)
    processes: bool | None = None   # workers are forked processes (None: the decoder's, where fork is safe)
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
    return usable_cores()


@contextlib.contextmanager
def open_runner(settings: Settings, model: Predictor, rows: int, workers: int, steps: int,
                processes: bool = False) -> Iterator[Runner]:
    """What advances the group's batches, ``steps`` at most per call: ``workers`` forked
    processes (if ``processes``), as many threads, or the calling thread alone.

    Rows are independent, so running batches concurrently never changes a table. Each GEMM runs
    single-threaded (one BLAS thread per worker), which measured faster here than threaded GEMMs
    with serial glue: while a codec call runs, the process-wide BLAS thread count is limited to 1,
    and each worker limits its own OpenMP team (:func:`llmzip.workers.one_torch_thread`).
    """
    from threadpoolctl import threadpool_limits

    batches = _batches(rows, replace(settings, threads=workers), model)
    with threadpool_limits(limits=1, user_api="blas"), torch_threads(1):
        runner = _start_runner(model, batches, steps, workers, processes)
        try:
            yield runner
        finally:
            runner.close()


def _start_runner(model: Predictor, batches: list[slice], steps: int, workers: int, processes: bool) -> Runner:
    """Processes take one batch each, so only as many batches as workers go to processes (more,
    from a small ``batch_size``, run on threads); ``workers`` threads at most."""
    if 1 < len(batches) <= workers and processes:
        try:
            return ProcessRunner(model, batches, steps)
        except OSError:      # fork refused (process limit, memory): threads compute the same tables
            pass
    return ThreadRunner(model, batches, threads=min(workers, len(batches)))


def use_processes(settings: Settings, decoding: bool) -> bool:
    """Forked worker processes rather than threads: ``settings.processes`` where fork exists; by
    default for the decoder only, and only from a process without other Python threads. A
    decoding step is many small numpy calls that hold the GIL; the encoder's calls are larger,
    and its threads already keep both cores busy (`python benchmarks/workers.py`, quiet, first
    64 KB of treasure_island.txt, compress / decompress seconds: one thread 2.53 / 3.63, two
    threads 1.41 / 3.47, two processes 1.56 / 2.58 with the embedded model; a 6x384 Llama, 32 KB:
    3.35 / 4.58, 1.97 / 5.36, 2.08 / 3.32)."""
    if settings.processes is None:
        return decoding and fork_safe()
    return settings.processes and fork_available()


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
    span = prefill_block(len(rows), model.vocab_size)
    blocks = [slice(t0, min(t0 + span, length)) for t0 in range(0, length, span)]
    workers = cpu_threads(settings, model)
    with open_runner(settings, model, len(rows), workers, span, use_processes(settings, False)) as runner:
        pending = runner.advance_all(inputs[:, blocks[0]])
        for k, block in enumerate(blocks):
            tables = pending()
            if k + 1 < len(blocks):   # the workers compute the next block while this one is coded
                pending = runner.advance_all(inputs[:, blocks[k + 1]])
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


def decode_workers(settings: Settings, model: Predictor, rows: int) -> int:
    """Workers to decode a group of ``rows`` chunks: ``settings.threads``, else fewer than the
    cores when the group has few rows per worker, since a step of few rows costs less than
    handing it to a worker (see DECODE_ROWS_PER_PROCESS and DECODE_ROWS_PER_THREAD)."""
    if settings.threads:
        return cpu_threads(settings, model)
    if use_processes(settings, True):
        per_worker = DECODE_ROWS_PER_PROCESS
    elif model.flops_per_token >= LARGE_MODEL_FLOPS:
        per_worker = DECODE_ROWS_PER_THREAD_LARGE
    else:
        per_worker = DECODE_ROWS_PER_THREAD
    return max(1, min(cpu_threads(settings, model), rows // per_worker))


def decode_group(
    model: Predictor, segment: bytes, lengths: Sequence[int], settings: Settings, mixer: Mixer | None = None
) -> list[np.ndarray]:
    """Decode one segment holding chunks of the given lengths (non-increasing); returns their tokens."""
    if list(lengths) != sorted(lengths, reverse=True):
        raise CorruptArchiveError("chunk lengths out of order")
    workers = decode_workers(settings, model, len(lengths))
    decoder = ArithmeticDecoder(segment)
    with open_runner(settings, model, len(lengths), workers, 1, use_processes(settings, True)) as runner:
        out = _decode_steps(model, decoder, lengths, runner, settings, mixer)
    decoder.check_end()
    return [out[i, :n] for i, n in enumerate(lengths)]


class _Launcher:
    """Starts a batch's forward pass for a decoding step on the tokens of the previous one, first
    dropping the batch's rows that have ended (rows end only at the tail of a group)."""

    def __init__(self, runner: Runner, live: list[int], prev: np.ndarray) -> None:
        self.runner, self.live, self.prev = runner, live, prev
        self.sizes = [s.stop - s.start for s in runner.batches]     # rows each batch's state holds

    def __call__(self, b: int, t: int) -> Callable[[], np.ndarray] | None:
        """Batch ``b``'s pass for step ``t`` (None if none of its rows is live then)."""
        start = self.runner.batches[b].start
        n = min(max(self.live[t] - start, 0), self.sizes[b]) if t < len(self.live) else 0
        if n == 0:
            return None
        if n < self.sizes[b]:
            self.runner.keep(b, n)
            self.sizes[b] = n
        return self.runner.advance(b, self.prev[start : start + n, None].copy())


def _decode_steps(
    model: Predictor, decoder: ArithmeticDecoder, lengths: Sequence[int], runner: Runner,
    settings: Settings, mixer: Mixer | None,
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
    batches = runner.batches
    launch = _Launcher(runner, live, prev)

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

