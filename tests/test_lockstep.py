"""The lockstep loop's thread handling (the archives themselves are pinned by test_codec and test_mix)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from llmzip import lockstep
from llmzip.lockstep import Settings


def _process_threads() -> int:
    return int(next(line for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("Threads:")).split()[1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="counts the process's threads in /proc")
def test_workers_fork_no_openmp_team():
    """torch.set_num_threads(1) in the calling thread does not reach the pool's threads: without
    their own limit each worker's int8 GEMM forked an OpenMP team (one more thread per core)."""
    torch = pytest.importorskip("torch")
    a = torch.ones((64, 192), dtype=torch.int8)
    b = torch.ones((192, 576), dtype=torch.int8)
    model = SimpleNamespace(flops_per_token=lockstep.PARALLEL_MIN_FLOPS, start=lambda rows: None)
    before = _process_threads()
    with lockstep.open_runner(Settings(threads=2, processes=False), model, 2, 2, 1) as runner:
        for done in [runner.pool.submit(torch._int_mm, a, b) for _ in range(8)]:
            done.result()
        assert _process_threads() - before <= 2           # the two workers, nothing else
