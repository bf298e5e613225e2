"""Who runs a lockstep group's forward passes: the calling thread, worker threads, or forked
worker processes.

A group's rows are split into batches; each batch has its own predictor state (its KV cache)
and advances by one ``Predictor.advance`` call per block of steps. Rows are independent (the
invariant of :class:`llmzip.lockstep.Predictor`), so who advances a batch never changes a table.

Threads share one GIL. A decoding step is hundreds of small numpy calls that hold it, so two
threads decode little faster than one. Forked processes do not share it: each holds its batch's
state, reads its tokens from and writes its tables into memory shared with the parent, and the
parent (mixing and arithmetic coding) only exchanges a few bytes per step with it. Measured on
2 cores: two forked processes decoding concurrently reach 1.85x the throughput of one.

A forked child runs only the predictor and ends with ``os._exit``: it never flushes or closes
the parent's open files (a flush of a buffered output inherited from the parent would write its
pending bytes twice), and never runs the parent's exit handlers.
"""

from __future__ import annotations

import mmap
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection, Pipe
from typing import Any, Callable, Protocol

import numpy as np

Result = Callable[[], np.ndarray]   # waits for an advance; gives its tables


class WorkerError(RuntimeError):
    """A worker process died or could not report its failure."""


class Runner(Protocol):
    """Advances the batches of one group; ``batches[b]`` is the slice of rows batch ``b`` holds."""

    batches: list[slice]

    def advance(self, b: int, tokens: np.ndarray) -> Result:
        """Start appending ``tokens`` (n, T) to the first ``n`` rows of batch ``b``."""

    def advance_all(self, tokens: np.ndarray) -> Result:
        """Start appending ``tokens`` (rows, T) to every batch; the result gives all rows' tables."""

    def keep(self, b: int, n: int) -> None:
        """Keep only the first ``n`` rows of batch ``b`` (rows end only at a group's tail)."""

    def close(self) -> None:
        """Release the workers."""


def one_torch_thread() -> None:
    """A worker's torch ops on one OpenMP thread. ``torch.set_num_threads`` sets the OpenMP team
    size of the calling thread only, so the limit the codec sets in the calling thread does not
    reach worker threads: unless ``OMP_NUM_THREADS=1`` was set before torch loaded (the CLI does,
    a library caller may not), each worker's int8 GEMMs forked a team of one thread per core,
    whose threads spin between GEMMs. Measured (embedded model, decoder steps of 77 rows as 2
    workers of 39 against one thread of 77, busy 2-core machine, CPU time per step): 18.3 vs
    12.9 ms without this, 14.8 vs 14.0 ms with it; the process held 7 threads, then 5."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


class ThreadRunner:
    """Batches advanced by ``threads`` worker threads, or by the calling thread for one."""

    def __init__(self, model: Any, batches: list[slice], threads: int = 1) -> None:
        self.model, self.batches = model, batches
        self.pool = (ThreadPoolExecutor(threads, thread_name_prefix="llmzip", initializer=one_torch_thread)
                     if threads > 1 else None)
        self.states = [model.start(s.stop - s.start) for s in batches]

    def advance(self, b: int, tokens: np.ndarray, out: np.ndarray | None = None) -> Result:
        kw = {} if out is None else {"out": out}
        if self.pool is None:
            tables = self.model.advance(self.states[b], tokens, **kw)
            return lambda: tables
        return self.pool.submit(self.model.advance, self.states[b], tokens, **kw).result

    def advance_all(self, tokens: np.ndarray) -> Result:
        """Each worker writes its batch's tables into one array, so the coding thread never has
        to concatenate them (that copy cost the main thread ~10% of a compression run)."""
        if len(self.batches) == 1:
            return self.advance(0, tokens)
        out = np.empty(tokens.shape + (self.model.vocab_size,), dtype=self.model.table_dtype)
        results = [self.advance(b, tokens[s], out[s]) for b, s in enumerate(self.batches)]

        def result() -> np.ndarray:
            for r in results:
                r()
            return out
        return result

    def keep(self, b: int, n: int) -> None:
        self.model.keep(self.states[b], np.arange(n))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def fork_available() -> bool:
    """Forked workers are used on Linux only: elsewhere fork is unavailable (Windows) or unsafe
    with the system's libraries (macOS)."""
    return sys.platform.startswith("linux") and hasattr(os, "fork")


def _shared(entries: int, dtype: Any) -> np.ndarray:
    """A flat array in anonymous shared memory: a child forked later writes where the parent reads."""
    dtype = np.dtype(dtype)
    return np.frombuffer(mmap.mmap(-1, max(1, entries) * dtype.itemsize), dtype=dtype)[:entries]


class ProcessRunner:
    """Batches advanced by forked worker processes, one per batch, each holding its batch's state.

    Shared memory holds every row's tokens and, twice over, every row's tables, laid out for the
    call's step count ``T`` as (rows, T) and (rows, T, V): batch ``b``'s rows are a contiguous
    region of each. A batch writes its two table buffers in turn, so the tables of one call stay
    valid while the batch computes the next one.
    """

    def __init__(self, model: Any, batches: list[slice], max_steps: int) -> None:
        self.model, self.batches, self.max_steps = model, batches, max_steps
        rows, vocab = batches[-1].stop, model.vocab_size
        self.tokens = _shared(rows * max_steps, np.int64)
        self.tables = [_shared(rows * max_steps * vocab, model.table_dtype) for _ in range(2)]
        self.parity = [0] * len(batches)
        self.conns: list[Connection] = []
        self.pids: list[int] = []
        warm_up(model)
        try:
            for s in batches:
                self._fork(s.stop - s.start)
        except BaseException:
            self.close()
            raise

    def _fork(self, size: int) -> None:
        mine, theirs = Pipe()
        pid = os.fork()
        if pid == 0:                                      # the child never returns from here
            code = 1
            try:
                mine.close()
                for c in self.conns:                      # other workers' ends: theirs to close
                    c.close()
                code = _serve(self, size, theirs)
            finally:
                os._exit(code)
        theirs.close()
        self.conns.append(mine)
        self.pids.append(pid)

    def _region(self, b: int, n: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``b``'s tokens (n, T) and its next table buffer (n, T, V)."""
        first, vocab = self.batches[b].start, self.model.vocab_size
        tokens = self.tokens[first * steps : (first + n) * steps].reshape(n, steps)
        table = self.tables[self.parity[b]][first * steps * vocab : (first + n) * steps * vocab]
        return tokens, table.reshape(n, steps, vocab)

    def advance(self, b: int, tokens: np.ndarray) -> Result:
        n, steps = tokens.shape
        if steps > self.max_steps or n > self.batches[b].stop - self.batches[b].start:
            raise ValueError(f"advance of {tokens.shape} beyond batch {b}'s buffers")
        shared, tables = self._region(b, n, steps)
        shared[...] = tokens
        self.conns[b].send(("advance", n, steps, self.parity[b]))
        self.parity[b] ^= 1

        def result() -> np.ndarray:
            self._reply(b)
            return tables
        return result

    def advance_all(self, tokens: np.ndarray) -> Result:
        rows, steps = tokens.shape
        if len(set(self.parity)) != 1:
            raise ValueError("advance_all() after advance() of single batches")
        full = self.tables[self.parity[0]][: rows * steps * self.model.vocab_size]
        results = [self.advance(b, tokens[s]) for b, s in enumerate(self.batches)]

        def result() -> np.ndarray:
            for r in results:
                r()
            return full.reshape(rows, steps, self.model.vocab_size)
        return result

    def keep(self, b: int, n: int) -> None:
        self.conns[b].send(("keep", n, 0, 0))

    def _reply(self, b: int) -> None:
        try:
            reply = self.conns[b].recv()
        except (EOFError, OSError) as e:
            raise WorkerError(f"worker process {self.pids[b]} ended unexpectedly") from e
        if isinstance(reply, BaseException):
            raise reply

    def close(self) -> None:
        """Stop every worker (each ends after its current call) and reap it."""
        for conn in self.conns:
            try:
                conn.send(("stop", 0, 0, 0))
            except OSError:
                pass
            conn.close()
        for pid in self.pids:
            os.waitpid(pid, 0)
        self.conns, self.pids = [], []


def warm_up(model: Any) -> None:
    """One forward step in the parent, so that the tables a model builds at first use (40-55 ms
    measured for the shipped model and a 6x384 Llama) are inherited by every worker forked later
    instead of being rebuilt by each, for every group."""
    model.advance(model.start(1), np.full((1, 1), model.bos_id, dtype=np.int64))


def _serve(runner: ProcessRunner, size: int, conn: Connection) -> int:
    """A worker's loop: advance or trim its batch's state on request; exit code when told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)          # the parent handles ^C and then stops us
    one_torch_thread()
    b = len(runner.pids)                                  # this worker's batch: the one being forked
    model, state = runner.model, None
    while True:
        try:
            op, n, steps, parity = conn.recv()
        except EOFError:                                  # the parent is gone
            return 0
        if op == "stop":
            return 0
        try:
            state = model.start(size) if state is None else state
            if op == "keep":
                model.keep(state, np.arange(n))
                continue
            runner.parity[b] = parity
            tokens, out = runner._region(b, n, steps)
            model.advance(state, tokens.copy(), out=out)
            conn.send(None)
        except Exception as e:                            # reported to the parent, which raises it
            conn.send(_picklable(e))


def _picklable(e: Exception) -> Exception:
    import pickle

    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return WorkerError(f"in a worker process: {type(e).__name__}: {e}")
