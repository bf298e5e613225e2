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

import contextlib
import mmap
import os
import pickle
import signal
import sys
import threading
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection, Pipe
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

import numpy as np

from .errors import WorkerError

if TYPE_CHECKING:
    from .lockstep import Predictor

Result = Callable[[], np.ndarray]   # waits for an advance; gives its tables


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

    def __init__(self, model: Predictor, batches: list[slice], threads: int = 1) -> None:
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


def fork_safe() -> bool:
    """Fork without being asked only from a process running no other Python thread: a thread of
    the caller's could hold a lock the child would wait on forever. tqdm's monitor threads are the
    exception (progress bars start them: llmzip's own, transformers' when it saves a model): one
    writes to stderr only while holding its bars' lock, which the fork holds
    (:func:`_tqdm_monitors_held`), so no worker starts with stderr locked mid-write."""
    here = threading.current_thread()
    return fork_available() and all(t is here or _tqdm_monitor(t) for t in threading.enumerate())


@contextlib.contextmanager
def _tqdm_monitors_held() -> Iterator[None]:
    """Hold the lock of every live tqdm monitor's bars (released in the parent only)."""
    locks = {id(lock): lock for lock in (t.tqdm_cls.get_lock() for t in threading.enumerate() if _tqdm_monitor(t))}
    for lock in locks.values():
        lock.acquire()
    try:
        yield
    finally:
        for lock in locks.values():
            lock.release()


def _tqdm_monitor(thread: threading.Thread) -> bool:
    """A monitor thread of tqdm or of one of its subclasses (``tqdm.auto``'s, transformers')."""
    monitors = getattr(sys.modules.get("tqdm._monitor"), "TMonitor", None)
    return monitors is not None and isinstance(thread, monitors)


def _shared(entries: int, dtype: Any) -> np.ndarray:
    """A flat array in anonymous shared memory: a child forked later writes where the parent reads."""
    dtype = np.dtype(dtype)
    return np.frombuffer(mmap.mmap(-1, max(1, entries) * dtype.itemsize), dtype=dtype)[:entries]


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, as text: the cause of the one re-raised here."""

    def __str__(self) -> str:
        return "in a worker process:\n" + str(self.args[0])


class ProcessRunner:
    """Batches advanced by forked worker processes, one per batch, each holding its batch's state.

    Shared memory holds every row's tokens and, twice over, every row's tables, laid out for the
    call's step count ``T`` as (rows, T) and (rows, T, V): batch ``b``'s rows are a contiguous
    region of each. A batch writes its two table buffers in turn, so the tables one call returns
    stay valid while the batch computes its next call, as long as every call in flight has the
    same ``T`` (the encoder advances all batches by the same block, the decoder by one step).
    """

    def __init__(self, model: Predictor, batches: list[slice], max_steps: int) -> None:
        self.model, self.batches, self.max_steps = model, batches, max_steps
        rows, vocab = batches[-1].stop, model.vocab_size
        self.tokens = _shared(rows * max_steps, np.int64)
        self.tables = [_shared(rows * max_steps * vocab, model.table_dtype) for _ in range(2)]
        self.parity = [0] * len(batches)
        self.conns: list[Connection] = []
        self.pids: list[int] = []
        warm_up(model)
        try:
            for b in range(len(batches)):
                self._fork(b)
        except BaseException:
            self.close()
            raise

    def _fork(self, b: int) -> None:
        mine, theirs = Pipe()
        with _no_interrupts(), _fork_warning_silenced(), _tqdm_monitors_held():
            pid = os.fork()
            if pid == 0:                                  # the child never returns from here
                code = 1
                try:
                    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent handles ^C, then stops us
                    mine.close()
                    for c in self.conns:                  # the other workers' pipes are not ours
                        c.close()
                    code = _serve(self, b, theirs)
                finally:
                    os._exit(code)
        theirs.close()
        self.conns.append(mine)
        self.pids.append(pid)

    def region(self, b: int, n: int, steps: int, parity: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``b``'s tokens (n, T) and its table buffer ``parity`` (n, T, V)."""
        first, vocab = self.batches[b].start, self.model.vocab_size
        tokens = self.tokens[first * steps : (first + n) * steps].reshape(n, steps)
        table = self.tables[parity][first * steps * vocab : (first + n) * steps * vocab]
        return tokens, table.reshape(n, steps, vocab)

    def advance(self, b: int, tokens: np.ndarray) -> Result:
        n, steps = tokens.shape
        if steps > self.max_steps or n > self.batches[b].stop - self.batches[b].start:
            raise ValueError(f"advance of {tokens.shape} beyond batch {b}'s buffers")
        shared, tables = self.region(b, n, steps, self.parity[b])
        shared[...] = tokens
        self._send(b, ("advance", n, steps, self.parity[b]))
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
        """Sent without a reply: a failure is the reply to the batch's next advance."""
        self._send(b, ("keep", n, 0, 0))

    def _send(self, b: int, message: tuple[str, int, int, int]) -> None:
        try:
            self.conns[b].send(message)
        except OSError as e:
            raise WorkerError(self._death(b)) from e

    def _reply(self, b: int) -> None:
        try:
            reply = self.conns[b].recv()
        except (EOFError, OSError) as e:
            raise WorkerError(self._death(b)) from e
        if reply is not None:
            exc, remote = reply
            raise exc from RemoteTraceback(remote)

    def _death(self, b: int) -> str:
        """What became of worker ``b``, which stopped answering."""
        pid = self.pids[b]
        with contextlib.suppress(ChildProcessError):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done and os.WIFSIGNALED(status):
                name = signal.Signals(os.WTERMSIG(status)).name
                hint = " (out of memory?)" if name == "SIGKILL" else ""
                return f"worker process {pid} was killed by {name}{hint}"
            if done:
                return f"worker process {pid} exited with status {os.WEXITSTATUS(status)}"
        return f"worker process {pid} ended unexpectedly"

    def close(self) -> None:
        """Stop every worker (each ends after its current call) and reap it."""
        conns, pids, self.conns, self.pids = self.conns, self.pids, [], []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.send(("stop", 0, 0, 0))
            conn.close()
        for pid in pids:
            with contextlib.suppress(ChildProcessError):   # reaped already, or SIGCHLD ignored by the host
                os.waitpid(pid, 0)


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """^C held back around a fork, so a child never runs the parent's handler before ignoring it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@contextlib.contextmanager
def _fork_warning_silenced() -> Iterator[None]:
    """Python 3.12+ warns about fork in a process with several threads. Ours are native pools
    (BLAS, OpenMP) the child never uses with more than one thread, and Python threads of the
    caller's keep us off fork unless the caller asked for it (:func:`fork_safe`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*multi-threaded.*fork", category=DeprecationWarning)
        yield


def warm_up(model: Predictor) -> None:
    """One forward step in the parent, so that the tables a model builds at first use (40-55 ms
    measured for the shipped model and a 6x384 Llama) are inherited by every worker forked later
    instead of being rebuilt by each, for every group."""
    model.advance(model.start(1), np.full((1, 1), model.bos_id, dtype=np.int64))


def _serve(runner: ProcessRunner, b: int, conn: Connection) -> int:
    """Worker ``b``'s loop: advance or trim its batch's state on request, report each advance's
    outcome (None, or the first failure since the last report); exit code when told to stop."""
    one_torch_thread()
    model, failed = runner.model, None
    try:
        state = model.start(runner.batches[b].stop - runner.batches[b].start)
    except Exception as e:                                # reported with the first advance
        failed = _report(e)
    while True:
        try:
            op, n, steps, parity = conn.recv()
        except EOFError:                                  # the parent is gone
            return 0
        if op == "stop":
            return 0
        try:
            if failed is None:
                if op == "keep":
                    model.keep(state, np.arange(n))
                else:
                    tokens, out = runner.region(b, n, steps, parity)
                    model.advance(state, tokens.copy(), out=out)
        except Exception as e:                            # reported to the parent, which raises it
            failed = _report(e)
        if op == "advance":
            conn.send(failed)


def _report(e: Exception) -> tuple[Exception, str]:
    """``e`` (or a WorkerError naming it, if it cannot be pickled) and its traceback as text."""
    remote = "".join(traceback.format_exception(e))
    try:
        pickle.loads(pickle.dumps(e))
    except Exception:
        e = WorkerError(f"in a worker process: {type(e).__name__}: {e}")
    return e, remote
