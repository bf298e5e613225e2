"""Process-wide tuning: thread limits a codec call applies while it runs, and settings that
only a process owner (the CLI, the benchmark's worker) applies.

glibc returns large temporaries (above 128 KiB by default, growing adaptively) to the
kernel with munmap, and every later temporary of that size page-faults its memory back in.
The engine allocates many multi-MiB temporaries per step. Measured here: converting a
decoder's int8 value cache to float32 took 8.9 ms per step with the defaults and 2.5 ms with
these settings; a 128 KiB prose compression went 16.6 -> 18.7 kB/s (single runs; this
machine's timings vary by +-15%). Raising the thresholds keeps freed memory in the process for
reuse, at the cost of a higher resident size between peaks.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import sys
from typing import Iterator

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one, else every core)."""
    affinity = getattr(os, "sched_getaffinity", None)   # Linux only
    return len(affinity(0)) if affinity else os.cpu_count() or 1


@functools.lru_cache(maxsize=None)
def tune_allocator() -> bool:
    """Keep large freed blocks for reuse (glibc only; elsewhere a no-op). Returns whether it applied."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, 32 << 20)     # the largest value glibc accepts on 64-bit
    ok &= mallopt(_M_TRIM_THRESHOLD, 512 << 20)
    ok &= mallopt(_M_TOP_PAD, 64 << 20)
    return bool(ok)


def single_openmp_thread() -> bool:
    """One OpenMP thread per calling thread: the codec's workers are the parallelism.

    Must run before torch is imported (libgomp reads ``OMP_NUM_THREADS`` once, at load); a value
    the user set is kept. Without it each worker's int8 GEMMs fork a two-thread OpenMP team
    even though ``torch.set_num_threads(1)`` is in effect (oneDNN's s8 GEMM does not follow
    it), and on a busy 2-core machine every fork waits for a core: measured here, decoding
    100 kB of prose spent 3.0 s per worker in int8 GEMMs with the default and 0.9 s with one
    thread (with a training job running beside it). Returns whether the limit is in effect.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    return one_openmp_thread()


def one_openmp_thread() -> bool:
    """Whether ``OMP_NUM_THREADS=1`` is set (by :func:`single_openmp_thread` or the user); nothing
    is changed."""
    return os.environ.get("OMP_NUM_THREADS") == "1"


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Limit torch's own intra-op threads (the int8 GEMMs) while a codec call runs, if torch is
    loaded: its default pool oversubscribes the cores the workers already use (measured here:
    13.5 -> 16.6 kB/s compress with two workers, single runs of 128 KiB of prose)."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
