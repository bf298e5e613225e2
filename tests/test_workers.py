"""Worker threads and forked worker processes advance a group's batches to the same tables."""

from __future__ import annotations

import os
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from llmzip import codec, lockstep
from llmzip.errors import WorkerError
from llmzip.workers import ProcessRunner, ThreadRunner, fork_available

needs_fork = pytest.mark.skipif(not fork_available(), reason="forked workers run on Linux only")


@pytest.fixture
def forks(monkeypatch) -> list[int]:
    """Counts the forks made while a test runs, with workers even for the tiny golden model."""
    monkeypatch.setattr(lockstep, "PARALLEL_MIN_FLOPS", 0)
    made, real = [], os.fork

    def counted() -> int:
        pid = real()
        if pid:
            made.append(pid)
        return pid
    monkeypatch.setattr(os, "fork", counted)
    return made


class HistoryPredictor:
    """Tables that depend on a row's whole prefix (a rolling hash of it), with a working ``keep``.

    Token 13 makes ``advance`` raise, so tests can see a worker's failure reach the parent."""

    table_dtype = np.int32
    flops_per_token = lockstep.PARALLEL_MIN_FLOPS
    vocab_size, max_context, bos_id = 50, 64, 0

    def start(self, rows: int) -> dict[str, np.ndarray]:
        return {"hash": np.zeros(rows, dtype=np.int64)}

    def advance(self, state: dict[str, np.ndarray], tokens: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if (tokens == 13).any():
            raise ValueError("token 13")
        out = np.empty(tokens.shape + (self.vocab_size,), self.table_dtype) if out is None else out
        for t in range(tokens.shape[1]):
            state["hash"] = (state["hash"] * 31 + tokens[:, t] + 1) % 1_000_003
            out[:, t] = 1 + (state["hash"][:, None] * np.arange(1, self.vocab_size + 1)) % 97
        return out

    def keep(self, state: dict[str, np.ndarray], rows: np.ndarray) -> None:
        state["hash"] = state["hash"][rows]

    def prepare(self, tokens: int, encoding: bool = False) -> None:
        pass


def _run(runner: ThreadRunner | ProcessRunner, tokens: np.ndarray) -> list[np.ndarray]:
    """Two blocks for the whole group, then single steps with rows ending at the tail."""
    seen = [runner.advance_all(tokens[:, :3])().copy(), runner.advance_all(tokens[:, 3:5])().copy()]
    for t, live in zip(range(5, 8), (7, 5, 2)):
        parts = []
        for b, s in enumerate(runner.batches):
            n = min(max(live - s.start, 0), s.stop - s.start)
            if n:
                runner.keep(b, n)
                parts.append(runner.advance(b, tokens[s.start : s.start + n, t : t + 1]))
        seen.append(np.concatenate([p() for p in parts]).copy())
    return seen


@needs_fork
def test_processes_give_the_threads_tables():
    model = HistoryPredictor()
    tokens = np.random.default_rng(1).integers(14, 50, size=(8, 8))
    batches = [slice(0, 3), slice(3, 6), slice(6, 8)]
    expected = _run(ThreadRunner(model, batches), tokens)
    runner = ProcessRunner(model, batches, max_steps=3)
    try:
        got = _run(runner, tokens)
    finally:
        runner.close()
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


@needs_fork
def test_a_worker_error_reaches_the_caller_and_workers_are_reaped():
    runner = ProcessRunner(HistoryPredictor(), [slice(0, 2), slice(2, 4)], max_steps=1)
    pids = list(runner.pids)
    try:
        runner.advance(0, np.array([[20], [21]]))()
        with pytest.raises(ValueError, match="token 13"):
            runner.advance(1, np.array([[13], [21]]))()
    finally:
        runner.close()
    for pid in pids:                                  # reaped: no such child any more
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


@needs_fork
def test_a_dead_worker_is_an_error_not_a_hang():
    runner = ProcessRunner(HistoryPredictor(), [slice(0, 1), slice(1, 2)], max_steps=1)
    try:
        os.kill(runner.pids[1], signal.SIGKILL)
        os.waitpid(runner.pids[1], 0)
        with pytest.raises(WorkerError, match=f"worker process {runner.pids[1]} (was killed by SIGKILL|ended)"):
            runner.advance(1, np.array([[20]]))()
    finally:
        runner.close()


@needs_fork
def test_workers_do_not_flush_the_parents_buffered_output(golden, tmp_path: Path, forks):
    """A forked child holds copies of the parent's unflushed buffers; it must never write them."""
    data = b"The quick brown fox jumps over the lazy dog. " * 30
    blob = codec.compress(data, golden, chunk_tokens=40)
    path = tmp_path / "out"
    with open(path, "wb") as out:
        out.write(b"pending bytes, not yet flushed")
        assert codec.decompress(blob, golden, codec.Settings(threads=2, processes=True)) == data
    assert forks
    assert path.read_bytes() == b"pending bytes, not yet flushed"


@needs_fork
@pytest.mark.parametrize("name", ["golden-tiny-e3.llz", "golden-tiny-mix-e3.llz"])
@pytest.mark.parametrize("processes", [True, False])
def test_golden_archive_decodes_with_either_kind_of_worker(golden, name, processes, forks):
    data = Path(__file__).parent.joinpath("data", "golden-input.bin").read_bytes()
    blob = Path(__file__).parent.joinpath("data", name).read_bytes()
    assert codec.decompress(blob, golden, codec.Settings(threads=2, processes=processes)) == data
    assert bool(forks) == processes


@needs_fork
def test_a_refused_fork_falls_back_to_threads(golden, monkeypatch):
    monkeypatch.setattr(lockstep, "PARALLEL_MIN_FLOPS", 0)
    data = b"The quick brown fox jumps over the lazy dog. " * 30
    blob = codec.compress(data, golden, chunk_tokens=40)
    refusals = []

    def refused() -> int:
        refusals.append(1)
        raise BlockingIOError(11, "Resource temporarily unavailable")
    monkeypatch.setattr(os, "fork", refused)
    assert codec.decompress(blob, golden, codec.Settings(threads=2, processes=True)) == data
    assert refusals


@needs_fork
def test_tables_stay_valid_while_the_next_call_runs():
    """The encoder codes block k while the workers compute block k + 1 (two buffers per batch)."""
    model = HistoryPredictor()
    tokens = np.random.default_rng(2).integers(14, 50, size=(4, 6))
    expected = ThreadRunner(model, [slice(0, 4)]).advance_all(tokens[:, :3])().copy()
    runner = ProcessRunner(model, [slice(0, 2), slice(2, 4)], max_steps=3)
    try:
        first = runner.advance_all(tokens[:, :3])()
        runner.advance_all(tokens[:, 3:])()
        np.testing.assert_array_equal(first, expected)
    finally:
        runner.close()


@needs_fork
def test_a_failed_keep_is_the_next_advances_error():
    runner = ProcessRunner(HistoryPredictor(), [slice(0, 2), slice(2, 4)], max_steps=1)
    try:
        runner.keep(0, 5)                               # more rows than the batch holds
        with pytest.raises(IndexError) as info:
            runner.advance(0, np.array([[20]]))()
        assert "in a worker process" in str(info.value.__cause__)
    finally:
        runner.close()


@needs_fork
@pytest.mark.parametrize("mixing", [None, codec.DEFAULT_MIX])
def test_encoder_with_processes_writes_the_same_archive(golden, monkeypatch, forks, mixing):
    monkeypatch.setattr(lockstep, "PREFILL_BLOCK", 7)   # several blocks per group, the last one shorter
    data = b"The quick brown fox jumps over the lazy dog. It barked. " * 20
    settings = codec.Settings(threads=2)               # two batches per group
    threads = codec.compress(data, golden, settings=settings, chunk_tokens=40, mixing=mixing)
    assert not forks
    processes = codec.compress(data, golden, settings=replace(settings, processes=True), chunk_tokens=40,
                               mixing=mixing)
    assert processes == threads and forks
    assert codec.decompress(processes, golden) == data
