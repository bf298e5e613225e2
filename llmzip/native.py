"""Hand-written C kernels of the exact engine, built once per machine beside the fused kernels.

Inductor's loops (:mod:`llmzip.fused_aot`) serve elementwise chains well, but not the largest
parts of the engine: its table lookups become scalar loops, its integers run in 64-bit lanes, its
reductions are separate passes, and a call through its model container costs ~30 us, more than a
decoding step's norm or small GEMM. So, by hand (``csrc/``):

* ``attend8.c``: the whole of a layer's attention in one call. It quantises and stores the
  block's keys and values into an :class:`~llmzip.attention8_int8.Int8KVCache` and attends its
  queries, with int8 products summed in SIMD registers: the integers of
  :func:`llmzip.attention8.store` and :func:`llmzip.attention8.attend`.
* ``linear8.c``: a whole int8 linear layer in one call (the input's quantiser, the int32
  product by AVX-512 VNNI, the rescale): :class:`llmzip.linear8.Linear8` for the small row counts
  of decoding steps, where it is ~1.5x as fast as torch's ``_int_mm`` with Inductor's loops.
* ``layers8.c``: LayerNorm and RMSNorm with their clip, the activation tables and SwiGLU: the
  integers of :mod:`llmzip.fixedpoint` and :func:`llmzip.engine.llama.swiglu`.
* ``head8.c``: the output head's coding tables from the int32 products of its GEMM (which
  torch's ``_int_mm`` computes), one pass per row: the integers of
  :func:`llmzip.quantize.freqs_from_logits` of :meth:`llmzip.linear8.Linear8.float_out`; and the
  int8 quantiser of :func:`llmzip.linear8.quantize_rows`.
* ``mix8.c``: the dense part of the context mixer's tables (:mod:`llmzip.mixing.mixture`): the
  coded token's interval for an encoder, the tables for a decoder, one pass per row instead of
  numpy's five; and the n-gram table's lookups and counting (:mod:`llmzip.mixing.ngram`), one
  record at a time instead of sorted and grouped numpy passes. All in the codec's main thread,
  which mixes while the model computes.

Each file's header argues its steps; :mod:`llmzip.fused_check` proves them in every process that
loads the library.

The library is compiled by the system's C compiler for this machine (``-march=native``), with
``-fwrapv`` (signed integers wrap as numpy's do) and without floating-point contraction or unsafe
math; it is built and loaded with the fused kernels, into the same cache directory, whose name
hashes :func:`identity`. Called through ``ctypes``, which releases the GIL for the call
(:mod:`llmzip.native_engine`, :mod:`llmzip.native_mix`).
"""

from __future__ import annotations

import ctypes
import functools
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

from . import native_engine, native_mix

SOURCE_DIR = Path(__file__).with_name("csrc")
SOURCES = ("attend8.c", "head8.c", "layers8.c", "linear8.c", "mix8.c")
HEADERS = ("common.h",)
FLAGS = ("-O3", "-march=native", "-std=c11", "-fwrapv", "-ffp-contract=off", "-fno-fast-math",
         "-shared", "-fPIC")


class NativeBuildError(RuntimeError):
    """The C compiler is missing or failed."""


def compiler() -> list[str]:
    """The C compiler's command: ``$CC`` (split as a shell would, e.g. ``ccache gcc``), else ``cc`` or
    ``gcc`` on the PATH."""
    found = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not found:
        raise NativeBuildError("no C compiler (cc or gcc) on the PATH; set CC")
    return shlex.split(found)


@functools.lru_cache(maxsize=None)
def identity() -> str:
    """What the library depends on besides the CPU: the compiler's version, the flags, the source."""
    try:
        version = subprocess.run([*compiler(), "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError, NativeBuildError) as e:
        version = f"unavailable: {e}"
    texts = [(SOURCE_DIR / name).read_text() for name in SOURCES + HEADERS]
    return "\n".join([version.splitlines()[0] if version else "", " ".join(FLAGS), *texts])


def compile_library(library: Path, extra_flags: tuple[str, ...] = ()) -> None:
    """Compile the kernels into the shared library ``library`` (``extra_flags``: tests that build the
    code paths of other machines, e.g. ``-mno-avx512f``)."""
    command = [*compiler(), *FLAGS, *extra_flags, *(str(SOURCE_DIR / name) for name in SOURCES), "-o", str(library)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as e:
        raise NativeBuildError(f"{command[0]} could not run: {e}") from e
    if done.returncode:
        raise NativeBuildError(f"{' '.join(command)} failed: {done.stderr.strip()[:2000]}")


def kernels(library: Path) -> dict[str, Any]:
    """The kernels of a built library, by the names the engine calls them (:func:`llmzip.fused.kernel`)."""
    lib = ctypes.CDLL(str(library))
    engine = {"attend8": native_engine.Attend8, "linear8_native": native_engine.Linear8Native,
              "epilogue": native_engine.Epilogue,
              "norm": native_engine.Norm, "activation": native_engine.Activation, "swiglu": native_engine.Swiglu,
              "head_tables": native_engine.HeadTables, "quantize_rows": native_engine.QuantizeRows,
              "divide_rows": native_engine.DivideRows}
    mixing = {"mix_terms": native_mix.MixTerms, "mix_tables": native_mix.MixTables,
              "ngram_lookup": native_mix.NgramLookup, "ngram_learn": native_mix.NgramLearn}
    return {name: bind(lib) for name, bind in (engine | mixing).items()}
