"""Fused kernels for the exact engine: the numpy reference's integers, in one pass where it takes ten.

The engine's arithmetic is defined by its numpy code (:mod:`llmzip.linear8`,
:mod:`llmzip.attention8`, :mod:`llmzip.fixedpoint`). Most of its time goes to chains of small
elementwise passes around the matrix products (quantising a GEMM's input, rescaling its output,
attention scores to weights, activation tables). Here the same chains are written with torch
operations and compiled by ``torch.compile`` (Inductor: one C++ loop per chain), which needs
torch and a C++ compiler. Nothing here is a new arithmetic:

* every step is an integer operation, or a float operation whose exact result is representable
  (products of small integers by powers of two, sums of integers below 2**53, ``floor``), so
  fusing, vectorising or reordering them cannot change a bit; Inductor's C++ is built without
  unsafe-math and without floating-point contraction (set in ``fused_torch.COMPILE_OPTIONS``);
* the one rounding step, the quantiser's ``e * (2**28 / sum)``, is kept as two single IEEE
  operations (one division per row, one product per entry);
* shift counts are clamped where numpy defines shifts past the width and C++ does not (every such
  clamp is argued at its line);
* at first use each kernel is run on inputs chosen to hit its edge cases and compared with the
  numpy reference (:func:`_probe`), in every shape class the engine calls it with (those calls
  build the compiled graphs); any difference, compiler error or missing torch feature leaves the
  engine on numpy, which gives the same integers. After the probe the kernels never compile
  again: a call no graph fits runs the same torch operations eagerly.

Compiling costs seconds (cached on disk by torch afterwards), so :func:`select` turns the kernels
on only for codec calls long enough to repay it, as :func:`llmzip.linear8.select_backend` does
for torch itself. The kernels hold no state: the numpy arrays are passed as zero-copy tensors.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any, Callable

from . import runtime


# A process's first use of the kernels costs ~22 s even with torch's on-disk cache warm (tracing and
# loading 36 graphs; 2-core AMD EPYC) and then saves 15-16 % of a compression's time (benchmarks/
# fused.py): a codec call from this many tokens turns them on by itself, smaller ones once they are built.
FUSED_MIN_TOKENS = 1 << 19
_active = False
_lock = threading.Lock()


def active() -> bool:
    """Whether the engine's hot paths run the fused kernels (chosen by :func:`select`)."""
    return _active


def select(tokens: int, wanted: bool) -> bool:
    """Choose for a codec call of ``tokens`` tokens, before its worker threads start: the fused
    kernels if ``wanted`` (the caller runs its int8 GEMMs on torch and encodes), they compile and
    pass their probe, the call has :data:`FUSED_MIN_TOKENS` tokens or they are already built, and
    torch's GEMMs run on one OpenMP thread per caller (:func:`llmzip.runtime.one_openmp_thread`).
    ``LLMZIP_FUSED=0`` keeps numpy; ``LLMZIP_FUSED=always`` takes the kernels at any size and
    thread setting. Returns the choice."""
    global _active
    mode = os.environ.get("LLMZIP_FUSED", "auto")
    big = tokens >= FUSED_MIN_TOKENS or _kernels.cache_info().currsize > 0
    # Without OMP_NUM_THREADS=1 (the CLI sets it before torch loads) the GEMMs inside the kernels
    # fork an OpenMP team per codec worker and the kernels lose to numpy: the 6x384 Llama compressed
    # 32 KB at 2,528 tokens/s fused against 3,919 with numpy, and at 5,406 against 4,139 with the
    # variable set (2-core AMD EPYC, two worker threads, one run each).
    automatic = wanted and big and runtime.one_openmp_thread()
    _active = mode != "0" and (mode == "always" or automatic) and available() and _exact_matmul()
    return _active


def _exact_matmul() -> bool:
    """Whether torch's float32 GEMMs run in full float32 (the attention scores' exactness needs it;
    an application may have switched torch to bf16/tf32 products)."""
    import torch

    return bool(torch.get_float32_matmul_precision() == "highest")


def force(on: bool) -> None:
    """Turn the kernels on or off regardless of size (tests and benchmarks); on needs :func:`available`."""
    global _active
    _active = on and available()


def available() -> bool:
    """Whether torch.compile builds every kernel here and each matches the numpy reference."""
    with _lock:
        return _kernels() is not None


_why = ["not built yet"]    # why _kernels() gave None (one mutable cell, set once)


def unavailable_reason() -> str | None:
    """Why the kernels are not available here (None if they are): for diagnostics and tests."""
    return None if available() else _why[0]


@functools.lru_cache(maxsize=None)
def _kernels() -> dict[str, Callable[..., Any]] | None:
    try:
        from . import fused_torch
        compiled, frozen = fused_torch.compile_all()
        _probe(compiled)
        kernels = frozen
    except Exception as e:   # no torch, no compiler, an unsupported op, a probe mismatch: stay on numpy
        _why[0] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return None
    return kernels


def kernel(name: str) -> Callable[..., Any]:
    """The compiled kernel ``name`` (only while :func:`active`)."""
    global _calls
    kernels = _kernels()
    assert kernels is not None
    _calls += 1
    return kernels[name]


_calls = 0


def kernel_calls() -> int:
    """How many kernel calls this process has made (approximate under threads: tests, benchmarks)."""
    return _calls


def deactivate() -> None:
    """Back to numpy (the end of a codec call)."""
    global _active
    _active = False


def _probe(kernels: dict[str, Callable[..., Any]]) -> None:
    """Raise AssertionError unless every kernel gives the numpy reference's integers on its edge cases
    (:mod:`llmzip.fused_check`); the references run while the kernels are off."""
    from . import fused_check
    assert not _active
    for case in fused_check.CASES:
        case(kernels)
