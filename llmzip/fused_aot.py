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
(torch's version, the kernels' source, the compile options, the CPU's features; the native kernels'
compiler, flags and source, :func:`llmzip.native.identity`), so a change of
any of them builds afresh rather than loading a stale or foreign library.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from . import attention8, fused_calls, fused_torch, native, runtime
from .fused_calls import Signature, signature, tensor

CACHE_ENV = "LLMZIP_CACHE_DIR"
MANIFEST = "manifest.json"    # written last: a directory without it is not a finished build
NATIVE = "native"             # the manifest's name for the library of hand-written kernels (llmzip.native)


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


SPECS: tuple[Spec, ...] = (
    Spec("linear8", _linear), Spec("linear8_int", _linear),
    Spec("attend", _attend(2), static=(6,)), Spec("attend", _attend(1), static=(6,)),
    Spec("rotate", lambda: (_ints(3, 7, 5, 16), _ints(7, 8), _ints(7, 8), tensor(15), tensor(1000))),
)


def _signature_text(sig: Signature) -> str:
    return "_".join(f"{dtype}{rank}" for dtype, rank in sig)


# ---------------------------------------------------------------- where the libraries live

def cache_root() -> Path:
    """llmzip's cache: ``$LLMZIP_CACHE_DIR``, else ``$XDG_CACHE_HOME/llmzip``, else ``~/.cache/llmzip``
    (a relative ``XDG_CACHE_HOME`` is ignored, as the XDG specification says)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).absolute()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "llmzip"


def _cpu_features() -> str:
    """What decides the instructions Inductor emits: torch's CPU capability, and the CPU's feature
    flags where Linux lists them (a library built for other instructions would crash, not fail)."""
    flags = platform.processor()
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith(("flags", "Features"))), flags)
    except OSError:
        pass
    return f"{torch.backends.cpu.get_cpu_capability()} {flags}"


def build_dir(specs: Sequence[Spec] = SPECS) -> Path:
    """The directory of this machine's build of ``specs``: named by a hash of torch's version, the
    kernels' source, the compile options, the CPU's features, the specs' signatures and their fixed
    tables (whose lengths are compiled in), and the native kernels' compiler, flags and source."""
    h = hashlib.sha256()
    for part in (torch.__version__, sys.version.split()[0], platform.machine(), _cpu_features(),
                 json.dumps(fused_torch.COMPILE_OPTIONS, sort_keys=True), *(s.file for s in specs), native.identity()):
        h.update(part.encode() + b"\0")
    for module in (fused_torch, sys.modules[__name__]):
        h.update(Path(module.__file__ or "").read_bytes())
    for spec in specs:
        example = spec.example()
        for i in spec.static:
            h.update(example[i].numpy().tobytes())
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
    _remove_stale_builds(directory.parent)
    work = Path(tempfile.mkdtemp(dir=directory.parent, prefix=".build-"))
    try:
        # Each build names its libraries afresh: a process that loaded a discarded build's libraries
        # would otherwise get those back from the dynamic loader for a rebuild's files of the same path.
        tag = work.name.removeprefix(".build-")
        files = {spec.file: f"{tag}-{spec.file}" for spec in specs}
        for spec in specs:
            _compile(spec, work / files[spec.file])
        files[NATIVE] = f"{tag}-native.so"
        native.compile_library(work / files[NATIVE])
        manifest = {"torch": torch.__version__, "files": files}
        (work / MANIFEST).write_text(json.dumps(manifest, indent=1))
        work.chmod(0o755)                       # mkdtemp's 0700 would hide a shared cache from others
        if directory.exists() and not built(directory):
            shutil.rmtree(directory, ignore_errors=True)   # without a manifest, no build (maybe being removed)
        try:
            os.replace(work, directory)
        except OSError:
            if not built(directory):            # not another process's finished build: a real failure
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return directory


def remove_other_builds(keep: Path) -> list[Path]:
    """Remove every build in ``keep``'s cache directory but ``keep`` (other torch, Python or llmzip
    versions, other CPUs sharing the cache: ~18 MB each), and leftovers of builds killed a day or
    more ago; returns the builds removed. Builds in progress (``.build-*`` of today) stay."""
    if not keep.parent.is_dir():
        return []
    others = [d for d in keep.parent.iterdir() if d.is_dir() and not d.name.startswith(".") and d != keep]
    for directory in others:
        shutil.rmtree(directory, ignore_errors=True)
    _remove_stale_builds(keep.parent)
    return [d for d in others if not d.exists()]


def discard(directory: Path) -> None:
    """Remove a build that does not load or fails its probe (so that it can be built again): renamed
    out of the way first, so that no other process loads it half-removed."""
    doomed = directory.with_name(f".discard-{directory.name}-{os.getpid()}")
    with contextlib.suppress(OSError):
        os.replace(directory, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


STALE_SECONDS = 86400    # a build directory this old is no longer being written


def _remove_stale_builds(kernels: Path) -> None:
    """Remove the temporary directories of builds (and discards) killed a day or more ago."""
    now = time.time()
    for work in [*kernels.glob(".build-*"), *kernels.glob(".discard-*")]:
        with contextlib.suppress(OSError):
            if now - work.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(work, ignore_errors=True)


def _compile(spec: Spec, library: Path) -> None:
    """Export ``spec`` with every size dynamic (but its static arguments'), compile it with
    AOTInductor, and keep the shared library (``library``) out of the package AOTInductor writes."""
    from torch.export import Dim

    args = spec.example()
    shapes = tuple(None if a.dim() == 0 or i in spec.static else {d: Dim.DYNAMIC for d in range(a.dim())}
                   for i, a in enumerate(args))
    program = torch.export.export(_Kernel(fused_torch.KERNELS[spec.name]), args, dynamic_shapes=(shapes,))
    package = library.with_suffix(".pt2")
    torch._inductor.aoti_compile_and_package(program, package_path=str(package),
                                             inductor_configs=dict(fused_torch.COMPILE_OPTIONS))   # it adds keys
    with zipfile.ZipFile(package) as archive:
        (inner,) = [n for n in archive.namelist() if n.endswith(".so")]
        library.write_bytes(archive.read(inner))
    package.unlink()


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
        self._outputs, self.name = outputs.value, path.name

    def __call__(self, args: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        # New references to the inputs, which the run takes over; the outputs' references are ours.
        handles = torch._C._aoti.unsafe_alloc_void_ptrs_from_tensors(list(args))
        inputs = (_VP * len(handles))(*[_capsule_pointer(h, None) for h in handles])
        outputs = (_VP * self._outputs)()
        if self._run(self._handle, inputs, len(handles), outputs, self._outputs, None, None):
            raise RuntimeError(f"the compiled kernel {self.name} failed")
        return torch._C._aoti.alloc_tensors_by_stealing_from_void_ptrs([_capsule(p, None, None) for p in outputs])


def load(directory: Path, specs: Sequence[Spec] = SPECS) -> tuple[fused_calls.Dispatcher, dict[str, Callable[..., Any]]]:
    """A finished build, loaded: a dispatcher of its compiled kernels, each fixed table at its example's
    size, and its native kernels by name."""
    instances = max(2, runtime.usable_cores())   # one model per thread that may call a kernel at once
    kernels: dict[tuple[str, Signature], fused_calls.Compiled] = {}
    fixed: dict[tuple[str, Signature], dict[int, tuple[int, ...]]] = {}
    files = json.loads((directory / MANIFEST).read_text())["files"]
    for spec in specs:
        example = spec.example()
        key = (spec.name, signature(example))
        kernels[key] = CompiledKernel(directory / files[spec.file], instances)
        fixed[key] = {i: tuple(example[i].shape) for i in spec.static}
    return fused_calls.Dispatcher(kernels, fixed), native.kernels(directory / files[NATIVE])
