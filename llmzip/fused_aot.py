"""The fused kernels compiled ahead of time: built once per machine, loaded in milliseconds.

Each kernel of :mod:`llmzip.fused_torch` is exported (``torch.export``, every size dynamic) and
compiled by AOTInductor into a shared library of C++ loops, once per machine, into llmzip's cache
(:func:`cache_root`). A later process loads the libraries with ``ctypes`` and calls their C entry
point directly: no tracing, no compiling, and the GIL is released while a kernel runs, so the
codec's worker threads run kernels on every core at once.

A compiled kernel assumes the dtypes, ranks and C-contiguous layout of the example it was built
from (it computes wrong numbers, silently, on other strides): calls are dispatched by dtypes and
ranks, every input is made contiguous first, and a call no kernel fits runs the same torch
operations eagerly. The cache directory is named by a hash of everything the libraries depend on
(torch's version, the kernels' source, the compile options, the CPU's features), so a change of
any of them builds afresh rather than loading a stale or foreign library.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import attention8, fused_torch, quantize

CACHE_ENV = "LLMZIP_CACHE_DIR"
MANIFEST = "manifest.json"    # written last: a directory without it is not a finished build
Signature = tuple[tuple[str, int], ...]   # (dtype, rank) of each argument


@dataclass(frozen=True)
class Spec:
    """One compiled kernel: a :data:`fused_torch.KERNELS` entry at one signature."""

    name: str
    example: Callable[[], tuple[torch.Tensor, ...]]   # inputs of the signature, every size >= 2
    static: tuple[int, ...] = ()   # arguments whose sizes are fixed (the engine's constant tables)

    @property
    def file(self) -> str:
        return f"{self.name}-{_signature_text(signature(self.example()))}.so"


def _ints(*shape: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    return torch.randint(-100, 100, shape).to(dtype)


def _linear() -> tuple[torch.Tensor, ...]:
    return _ints(5, 48), _ints(48, 24, dtype=torch.int8), _ints(24, dtype=torch.float64), _ints(24, dtype=torch.float64)


def _attend(add_rank: int) -> Callable[[], tuple[torch.Tensor, ...]]:
    """Queries (3 rows, 2 key/value heads, 6 query rows, 16); a cache of 40 positions; 11 read."""
    def example() -> tuple[torch.Tensor, ...]:
        cache = _ints(3, 2, 40, 16, dtype=torch.float32)
        add = _ints(6, 11, dtype=torch.float64) if add_rank == 2 else _ints(11, dtype=torch.float64)
        return (_ints(3, 2, 6, 16), cache, cache.clone(), _ints(3, 2, 40).abs() % 5, _ints(3, 2, 6).abs() % 5,
                add, torch.from_numpy(attention8._weight_table()))
    return example


def _logits(out: torch.dtype | None) -> Callable[[], tuple[torch.Tensor, ...]]:
    def example() -> tuple[torch.Tensor, ...]:
        head = (_ints(5, 14, dtype=torch.float64), torch.from_numpy(quantize._exp_table_f64()), _tensor(2.0**30))
        return head if out is None else head + (_ints(5, dtype=torch.float64), _ints(5, 14, dtype=out))
    return example


SPECS: tuple[Spec, ...] = (
    Spec("linear8", _linear), Spec("linear8_int", _linear),
    Spec("attend", _attend(2), static=(6,)), Spec("attend", _attend(1), static=(6,)),
    Spec("swiglu", lambda: (_ints(5, 14), _ints(33), _tensor(16), _tensor(1000), _tensor(12))),
    Spec("activation", lambda: (_ints(5, 14), _ints(33), _tensor(16))),
    Spec("norm_stats", lambda: (_ints(5, 14), _tensor(True), _tensor(20))),
    Spec("norm_apply", lambda: (_ints(5, 14), _ints(5), _ints(5), _ints(5), _ints(5).abs() % 4 + 1, _ints(14), _tensor(14),
                                _ints(14), _tensor(1000))),
    Spec("rotate", lambda: (_ints(3, 7, 5, 16), _ints(7, 8), _ints(7, 8), _tensor(15), _tensor(1000))),
    Spec("exp_sums", _logits(None), static=(1,)),
    Spec("freqs_into", _logits(torch.int32), static=(1,)), Spec("freqs_into", _logits(torch.int64), static=(1,)),
)


def signature(args: Sequence[torch.Tensor]) -> Signature:
    return tuple((str(a.dtype).removeprefix("torch."), a.dim()) for a in args)


def _signature_text(sig: Signature) -> str:
    return "_".join(f"{dtype}{rank}" for dtype, rank in sig)


# ---------------------------------------------------------------- where the libraries live

def cache_root() -> Path:
    """llmzip's cache: ``$LLMZIP_CACHE_DIR``, else ``$XDG_CACHE_HOME/llmzip``, else ``~/.cache/llmzip``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llmzip"


def _cpu_features() -> str:
    """What decides the instructions Inductor emits: the CPU's feature flags where Linux lists them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def build_dir(specs: Sequence[Spec] = SPECS) -> Path:
    """The directory of this machine's build of ``specs``: named by a hash of torch's version, the
    kernels' source, the compile options, the CPU's features and the specs' signatures."""
    h = hashlib.sha256()
    for part in (torch.__version__, sys.version.split()[0], platform.machine(), _cpu_features(),
                 json.dumps(fused_torch.COMPILE_OPTIONS, sort_keys=True), *(s.file for s in specs)):
        h.update(part.encode() + b"\0")
    for module in (fused_torch, sys.modules[__name__]):
        h.update(Path(module.__file__ or "").read_bytes())
    return cache_root() / "kernels" / h.hexdigest()[:20]


def built(directory: Path) -> bool:
    return (directory / MANIFEST).is_file()


# ---------------------------------------------------------------- building

class _Kernel(torch.nn.Module):
    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: torch.Tensor) -> Any:
        return self.fn(*args)


def build(specs: Sequence[Spec] = SPECS, directory: Path | None = None) -> Path:
    """Compile ``specs`` into ``directory`` (default :func:`build_dir`) unless it holds a finished
    build; returns it. Built in a temporary directory beside it and renamed into place, so a
    concurrent build or an interrupted one never leaves a half-built directory to load."""
    directory = directory or build_dir(specs)
    if built(directory):
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    no_tqdm_monitor()
    work = Path(tempfile.mkdtemp(dir=directory.parent, prefix=".build-"))
    try:
        for spec in specs:
            _compile(spec, work)
        manifest = {"torch": torch.__version__, "kernels": [s.file for s in specs]}
        (work / MANIFEST).write_text(json.dumps(manifest, indent=1))
        try:
            os.replace(work, directory)
        except OSError:
            if not built(directory):     # not another process's finished build: a real failure
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return directory


def _compile(spec: Spec, work: Path) -> None:
    """Export ``spec`` with every size dynamic (but its static arguments'), compile it with
    AOTInductor, and keep the shared library out of the package AOTInductor writes."""
    from torch.export import Dim

    args = spec.example()
    shapes = tuple(None if a.dim() == 0 or i in spec.static else {d: Dim.DYNAMIC for d in range(a.dim())}
                   for i, a in enumerate(args))
    program = torch.export.export(_Kernel(fused_torch.KERNELS[spec.name]), args, dynamic_shapes=(shapes,))
    package = work / (spec.file + ".pt2")
    torch._inductor.aoti_compile_and_package(program, package_path=str(package),
                                             inductor_configs=dict(fused_torch.COMPILE_OPTIONS))   # it adds keys
    with zipfile.ZipFile(package) as archive:
        (library,) = [n for n in archive.namelist() if n.endswith(".so")]
        (work / spec.file).write_bytes(archive.read(library))
    package.unlink()


def no_tqdm_monitor() -> None:
    """Keep tqdm from starting its monitor thread (Inductor shows progress bars while it builds, and
    so may the code that uses the kernels): the decoder forks its workers only from a process
    without other threads (``lockstep.use_processes``), and one stray thread would leave it on
    slower threads."""
    try:
        import tqdm
    except ImportError:
        return
    tqdm.tqdm.monitor_interval = 0
    if tqdm.tqdm.monitor is not None:
        tqdm.tqdm.monitor.exit()


# ---------------------------------------------------------------- loading and calling

_VP = ctypes.c_void_p
_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype, _capsule_pointer.argtypes = _VP, [ctypes.py_object, ctypes.c_char_p]
_capsule = ctypes.pythonapi.PyCapsule_New
_capsule.restype, _capsule.argtypes = ctypes.py_object, [_VP, ctypes.c_char_p, _VP]


class CompiledKernel:
    """One kernel's library: its AOTInductor model container, called through the library's C
    interface. ``ctypes`` releases the GIL for the call; the container holds one model instance per
    thread that may call it at once."""

    def __init__(self, path: Path, instances: int) -> None:
        lib = ctypes.CDLL(str(path))
        create = lib.AOTInductorModelContainerCreateWithDevice
        create.argtypes = [ctypes.POINTER(_VP), ctypes.c_size_t, ctypes.c_char_p, ctypes.c_char_p]
        count = lib.AOTInductorModelContainerGetNumOutputs
        count.argtypes = [_VP, ctypes.POINTER(ctypes.c_size_t)]
        self._run = lib.AOTInductorModelContainerRun
        self._run.argtypes = [_VP, ctypes.POINTER(_VP), ctypes.c_size_t, ctypes.POINTER(_VP), ctypes.c_size_t, _VP, _VP]
        self._handle, outputs = _VP(), ctypes.c_size_t()
        if create(ctypes.byref(self._handle), instances, b"cpu", None) or count(self._handle, ctypes.byref(outputs)):
            raise RuntimeError(f"{path.name}: AOTInductor could not create its model")
        self._outputs = outputs.value

    def __call__(self, args: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        # New references to the inputs, which the run takes over; the outputs' references are ours.
        handles = torch._C._aoti.unsafe_alloc_void_ptrs_from_tensors(list(args))
        inputs = (_VP * len(handles))(*[_capsule_pointer(h, None) for h in handles])
        outputs = (_VP * self._outputs)()
        if self._run(self._handle, inputs, len(handles), outputs, self._outputs, None, None):
            raise RuntimeError("a compiled kernel failed")
        return torch._C._aoti.alloc_tensors_by_stealing_from_void_ptrs([_capsule(p, None, None) for p in outputs])


class CompiledKernels:
    """A finished build, loaded: :meth:`run` calls the kernel that fits, else the torch operations."""

    def __init__(self, directory: Path, specs: Sequence[Spec] = SPECS) -> None:
        instances = max(2, os.cpu_count() or 1)
        self._kernels = {(s.name, signature(s.example())): CompiledKernel(directory / s.file, instances)
                         for s in specs}
        self.eager_calls = 0    # calls no compiled kernel fitted (tests and benchmarks watch it)

    def run(self, name: str, args: Sequence[Any]) -> list[torch.Tensor]:
        tensors = [_tensor(a) for a in args]
        kernel = self._kernels.get((name, signature(tensors)))
        if kernel is not None and all(t.numel() for t in tensors):
            return kernel(tensors)
        self.eager_calls += 1
        return eager(name, tensors)


def eager(name: str, args: Sequence[Any]) -> list[torch.Tensor]:
    """Kernel ``name`` as plain torch operations (the same integers, slower)."""
    out = fused_torch.KERNELS[name](*[_tensor(a) for a in args])
    return list(out) if isinstance(out, tuple) else [out]


def _tensor(a: Any) -> torch.Tensor:
    """A C-contiguous tensor of ``a`` (a numpy array shares its memory when it is contiguous; a number
    becomes a 0-d int64, float64 or bool tensor)."""
    if isinstance(a, torch.Tensor):
        return a.contiguous()
    if isinstance(a, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(a))
    a = a.item() if isinstance(a, np.generic) else a
    return _number(type(a), a)


@functools.lru_cache(maxsize=1024)
def _number(kind: type, value: Any) -> torch.Tensor:
    """The 0-d tensor of a number (kept: the engine passes the same few constants at every call, and
    building a tensor costs more than a small kernel; the kernels never write their inputs)."""
    return torch.tensor(value, dtype=torch.bool if kind is bool else torch.int64 if kind is int else torch.float64)


Run = Callable[[str, Sequence[Any]], list[torch.Tensor]]


def numpy_kernels(run: Run) -> dict[str, Callable[..., Any]]:
    """The kernels as the engine calls them (numpy arrays and numbers in, numpy arrays out), each
    a call of ``run`` (:meth:`CompiledKernels.run` or :func:`eager`)."""
    def single(name: str) -> Callable[..., np.ndarray]:
        return lambda *args: run(name, args)[0].numpy()

    def rows(name: str) -> Callable[..., np.ndarray]:   # elementwise: its input as 2-D (rows, last axis)
        def call(x: np.ndarray, *args: Any) -> np.ndarray:
            y = run(name, (x.reshape(-1, x.shape[-1]),) + args)[0].numpy()
            return y.reshape(*x.shape[:-1], y.shape[-1])
        return call

    def attend(q: np.ndarray, keys: np.ndarray, values: np.ndarray, value_exp: np.ndarray, end: int,
               top: np.ndarray, add: np.ndarray, table: np.ndarray) -> np.ndarray:
        assert add.shape[-1] == end, "the mask spans the positions read"
        return run("attend", (q, keys, values, value_exp, top, add, table))[0].numpy()

    def attend_step(q: np.ndarray, keys: np.ndarray, values: np.ndarray, value_exp: np.ndarray, end: int,
                    top: np.ndarray, table: np.ndarray) -> np.ndarray:
        return run("attend", (q, keys, values, value_exp, top, _halves(end), table))[0].numpy()

    def rotate(qkv: np.ndarray, cos: np.ndarray, sin: np.ndarray, heads: int, frac: int, clip: int) -> np.ndarray:
        # Rotates every head (the value heads too, unused): one contiguous input, no copy of a slice.
        return run("rotate", (qkv, cos, sin, frac, clip))[0].numpy()[:, :, :heads]

    def norm_stats(x: np.ndarray, centre: bool, square_bits: int) -> tuple[np.ndarray, ...]:
        return tuple(t.numpy() for t in run("norm_stats", (x, bool(centre), square_bits)))

    def freqs_into(logits: np.ndarray, table: np.ndarray, clip: float, ratio: np.ndarray, out: np.ndarray) -> np.ndarray:
        if not out.flags.c_contiguous:
            raise ValueError("freqs_into writes into a C-contiguous array only")
        run("freqs_into", (logits, table, clip, ratio, out))
        return out

    return {"linear8": single("linear8"), "linear8_int": single("linear8_int"), "attend": attend,
            "attend_step": attend_step, "swiglu": rows("swiglu"), "activation": rows("activation"),
            "norm_stats": norm_stats, "norm_apply": single("norm_apply"), "rotate": rotate,
            "exp_sums": single("exp_sums"), "freqs_into": freqs_into}


_HALVES: dict[int, np.ndarray] = {}


def _halves(end: int) -> np.ndarray:
    """(end,) halves: a decoding step's rounding, every key visible (read-only, kept per length)."""
    if end not in _HALVES:
        halves = np.full(end, 0.5)
        halves.setflags(write=False)
        _HALVES[end] = halves
    return _HALVES[end]
