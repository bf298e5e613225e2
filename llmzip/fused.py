"""Fused kernels for the exact engine: the numpy reference's integers, in one pass where it takes ten.

The engine's arithmetic is defined by its numpy code (:mod:`llmzip.linear8`,
:mod:`llmzip.attention8`, :mod:`llmzip.fixedpoint`). Most of its time goes to chains of small
elementwise passes around the matrix products (quantising a GEMM's input, rescaling its output,
attention scores to weights, norms, activation tables). Some chains are written with torch
operations (:mod:`llmzip.fused_torch`: the linear layers of large blocks, the float32 cache's
attention, rotary positions) and compiled ahead of time by AOTInductor into C++ loops, once per
machine, into llmzip's cache (:mod:`llmzip.fused_aot`; it needs torch and a C++ compiler); the
rest are the hand-written C kernels of :mod:`llmzip.native` (attention over int8 caches, the
linear layers of decoding steps, norms, activations, the output head's tables, the mixer; a C
compiler), which are built, loaded and proven with them. Nothing here is a new arithmetic:

* every step is an integer operation, or a float operation whose exact result is representable
  (products of small integers by powers of two, sums of integers below 2**53, ``floor``), so
  fusing, vectorising or reordering them cannot change a bit; Inductor's C++ and the native C are
  built without unsafe-math and without floating-point contraction (``fused_torch.COMPILE_OPTIONS``,
  ``native.FLAGS``);
* the rounding steps are the numpy code's single IEEE operations in its order: the quantiser's
  ``e * (2**28 / sum)`` (one division per row, one product per entry) and a norm's row scale
  (``fixedpoint.norm_scale``: conversion, division, sum, square root, division), each correctly
  rounded;
* shift counts are clamped where numpy defines shifts past the width and C does not, or the
  kernel refuses such inputs and numpy computes them (every such case is argued at its line);
* each process that loads the kernels first runs each on inputs chosen to hit its edge cases and
  compares it with the numpy reference (:func:`_probe`); any difference, build error or missing
  torch feature leaves the engine on numpy, which gives the same integers.

Building takes a minute or two, once per machine (``llmzip kernels --build``, or
``LLMZIP_FUSED=always``); a process then loads and probes the build in about 0.3 s, so once built
the kernels serve every compression and decompression long enough to earn that back. The kernels
hold no state: numpy arrays are passed as zero-copy tensors (copied first where they are not
contiguous).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable

from . import runtime


# Loading and probing a build costs a process ~0.3 s, which a codec call of this many tokens earns
# back (the kernels save ~25 % of a compression's time and of a decompression's; the embedded model
# compresses ~14k tokens/s with numpy on two cores). Building is never automatic: it takes a minute
# or two, more than one compression saves.
FUSED_LOAD_MIN_TOKENS = 1 << 14
_active = False
_lock = threading.Lock()


def active() -> bool:
    """Whether the engine's hot paths run the fused kernels (chosen by :func:`select`)."""
    return _active


def select(tokens: int, wanted: bool) -> bool:
    """Choose for a codec call of ``tokens`` tokens, before its workers start: the fused kernels if
    ``wanted`` (the caller runs its int8 GEMMs on torch), this machine has a build of them that
    passes its probe, they are loaded or the call has :data:`FUSED_LOAD_MIN_TOKENS` tokens, and
    torch's GEMMs run on one OpenMP thread per caller (:func:`llmzip.runtime.one_openmp_thread`).
    With the kernels, the call's KV caches are held as int8 for the native attention
    (:class:`llmzip.attention8_int8.Int8KVCache`).
    ``LLMZIP_FUSED=0`` keeps numpy; ``LLMZIP_FUSED=always`` takes the kernels (building them if
    needed) at any size and thread setting. Returns the choice."""
    global _active
    mode = os.environ.get("LLMZIP_FUSED", "auto")
    # Without OMP_NUM_THREADS=1 (the CLI sets it before torch loads) the GEMMs inside the kernels
    # fork an OpenMP team per codec worker and the kernels lose to numpy: the 6x384 Llama compressed
    # 32 KB at 2,528 tokens/s fused against 3,919 with numpy, and at 5,406 against 4,139 with the
    # variable set (2-core AMD EPYC, two worker threads, one run each).
    automatic = wanted and runtime.one_openmp_thread() and (_kernels is not None or tokens >= FUSED_LOAD_MIN_TOKENS)
    if mode == "0" or not (mode == "always" or automatic):
        _active = False
    else:
        _active = available(build=mode == "always") and _exact_matmul()
    return _active


def _exact_matmul() -> bool:
    """Whether torch's float32 GEMMs run in full float32 (the attention scores' exactness needs it;
    an application may have switched torch to bf16/tf32 products)."""
    import torch

    return bool(torch.get_float32_matmul_precision() == "highest")


def force(on: bool) -> None:
    """Turn the kernels on or off regardless of size (tests and benchmarks); on needs :func:`available`."""
    global _active
    _active = on and available(build=True)


def available(build: bool = False) -> bool:
    """Whether the compiled kernels are loaded and proven here: loads this machine's build (with
    ``build``, builds it first if there is none, and replaces one that fails to load or to pass
    its probe)."""
    with _lock:
        return _load(build) is not None


_kernels: dict[str, Callable[..., Any]] | None = None
_dispatcher: Any = None        # the loaded build (a fused_calls.Dispatcher; torch is imported only with it)
_why = "not built on this machine (llmzip kernels --build)"   # why _kernels is None
_failed = ""                   # "load" or "build": what failed in this process ("": nothing)


def _this_build() -> tuple[Path | None, str]:
    """This machine's build directory (finished or not), or None and why there is none."""
    try:
        from . import fused_aot
        return fused_aot.build_dir(), ""
    except Exception as e:   # no torch, no usable cache directory
        return None, f"{type(e).__name__}: {e}"


def built_here() -> bool:
    """Whether this machine's cache holds a finished build of the kernels (loaded or not)."""
    where, _ = _this_build()
    if where is None:
        return False
    from . import fused_aot
    return fused_aot.built(where)


def remove_old_builds() -> list[str]:
    """Remove every kernel build of this cache but this process's own (other llmzip, torch or
    Python versions, other CPUs sharing the cache); returns their directories (``llmzip kernels
    --clean``). Nothing to remove without torch or a cache."""
    keep, _ = _this_build()
    if keep is None:
        return []
    from . import fused_aot
    return [str(d) for d in fused_aot.remove_other_builds(keep)]


def describe() -> str:
    """One line on the kernels here: where this machine's build is and whether it loads and passes
    its probe (``llmzip kernels``). Imports torch."""
    where, why = _this_build()
    if where is None:
        return f"fused kernels: unavailable ({why})"
    from . import fused_aot
    if not fused_aot.built(where) and not _failed:
        return f"fused kernels: not built on this machine ({where}); llmzip kernels --build builds them"
    if available():
        return f"fused kernels: built in {where}, loaded, and equal to the numpy engine on the probe"
    return f"fused kernels: unavailable ({_why})"


def unavailable_reason() -> str | None:
    """Why the kernels are not available here (None if they are): for diagnostics and tests."""
    return None if available() else _why


def _load(build: bool) -> dict[str, Callable[..., Any]] | None:
    """The kernels of this machine's build, loaded and proven (see :func:`available`); None, with
    the reason in ``_why``, where there are none. A failure to load is retried once by a call that
    may build; a failure to build is final for this process."""
    global _kernels, _dispatcher, _why, _failed
    if _kernels is not None or _failed == "build" or (_failed == "load" and not build):
        return _kernels
    try:
        from . import fused_aot
        directory = fused_aot.build_dir()
        fresh = not fused_aot.built(directory)
        if fresh:
            if not build:
                return None
            fused_aot.build(directory=directory)
        try:
            _dispatcher, _kernels = _proven(directory)
        except Exception:
            if not build or fresh:           # a build of ours that fails would fail again
                raise
            fused_aot.discard(directory)   # a stale, truncated or foreign build: once more, from scratch
            fused_aot.build(directory=directory)
            _dispatcher, _kernels = _proven(directory)
    except Exception as e:   # no torch or cache, no compiler, an unsupported op, a probe mismatch: numpy
        _why = f"{type(e).__name__}: {str(e).splitlines()[0]}" if str(e) else type(e).__name__
        _failed = "build" if build else "load"
    return _kernels


def _proven(directory: Path) -> tuple[Any, dict[str, Callable[..., Any]]]:
    """The build in ``directory``, loaded, and its kernels once they pass the probe."""
    from . import fused_aot, fused_calls

    dispatcher, hand_written = fused_aot.load(directory)
    kernels = fused_calls.numpy_kernels(dispatcher.run) | hand_written
    _probe(kernels)
    return dispatcher, kernels


def kernel(name: str) -> Callable[..., Any]:
    """The compiled kernel ``name`` (only once :func:`available`: while :func:`active`, or for an int8
    cache made while it was)."""
    global _calls
    assert _kernels is not None
    _calls += 1
    return _kernels[name]


_calls = 0


def native_linear() -> bool:
    """Whether the loaded kernels include the native linear layer (a CPU with AVX-512 VNNI)."""
    return _kernels is not None and bool(_kernels["linear8_native"].vectorised)


def kernel_calls() -> int:
    """How many kernel calls this process has made (approximate under threads: tests, benchmarks)."""
    return _calls


def eager_calls() -> int:
    """How many of them no compiled kernel fitted, so that torch ran them op by op (tests, benchmarks)."""
    return _dispatcher.eager_calls if _dispatcher is not None else 0


def deactivate() -> None:
    """Back to numpy (the end of a codec call)."""
    global _active
    _active = False


def _probe(kernels: dict[str, Callable[..., Any]]) -> None:
    """Raise AssertionError unless every kernel gives the numpy reference's integers on its edge cases
    (:mod:`llmzip.fused_check`); the references run while the kernels are off."""
    from . import fused_check
    if _active:       # the references would run the kernels themselves
        raise RuntimeError("the kernels are probed while the engine runs on numpy only")
    for case in fused_check.CASES:
        case(kernels)
