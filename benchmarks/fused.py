#!/usr/bin/env python3
"""Compress and decompress speed with the engine's numpy passes against the fused kernels
(:mod:`llmzip.fused`), and what building the kernels costs a fresh process.

    python benchmarks/fused.py [--model embedded] [--kb 64] [--file FILE] [--repeats 2] [--out FILE]

Codes the first ``--kb`` KB of ``--file`` (default: ``treasure_island.txt`` of the corpus) with
``LLMZIP_FUSED=0`` and ``LLMZIP_FUSED=always`` in turn (default codec settings: two workers),
``--repeats`` rounds, and prints the best wall seconds of each. Both must give the same archive
and decode it (checked). The kernels are built and the model warmed up before timing; the
first-use cost is timed separately, in a new Python process (torch's on-disk cache as it is).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from workers import timed

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
MODES = {"numpy": "0", "fused": "always"}


def measure(model: Any, data: bytes, repeats: int) -> dict[tuple[str, str], tuple[float, float, float]]:
    """Best (wall, cpu, children cpu) per (mode, op), the modes interleaved."""
    from llmzip import codec, fused

    best: dict[tuple[str, str], tuple[float, float, float]] = {}
    archives = set()
    for _ in range(repeats):
        for name, value in MODES.items():
            os.environ["LLMZIP_FUSED"] = value
            before = fused.kernel_calls()
            blob, *compress_times = timed(lambda: codec.compress(data, model))
            if (fused.kernel_calls() > before) != (name == "fused"):
                raise SystemExit(f"{name}: the kernels were {'not ' if name == 'fused' else ''}used")
            back, *decompress_times = timed(lambda: codec.decompress(blob, model))
            if back != data:
                raise SystemExit(f"{name}: round trip failed")
            archives.add(blob)
            for op, times in (("compress", compress_times), ("decompress", decompress_times)):
                best[name, op] = min(best.get((name, op), (float("inf"), 0.0, 0.0)), tuple(times))
    if len(archives) != 1:
        raise SystemExit("the kernels changed the archive")
    return best


def first_use_seconds() -> float:
    """Seconds a new process spends in ``fused.available()`` after importing torch."""
    code = ("import time, torch; t = time.perf_counter(); from llmzip import fused; "
            "ok = fused.available(); print(ok, time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    ok, seconds = out.stdout.split()[-2:]
    if ok != "True":
        raise SystemExit("the kernels do not build here")
    return float(seconds)


def report(best: dict[tuple[str, str], tuple[float, float, float]], first_use: float, title: str) -> str:
    lines = [title, "", "| op | numpy s | fused s | speed-up |", "|---|---:|---:|---:|"]
    for op in ("compress", "decompress"):
        plain, fast = best["numpy", op][0], best["fused", op][0]
        lines.append(f"| {op} | {plain:.2f} | {fast:.2f} | {plain / fast:.2f}x |")
    lines.append(f"\nBuilding the kernels in a new process (torch imported, on-disk cache warm): {first_use:.1f} s")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded", help="'embedded', a package model id or a model directory")
    p.add_argument("--kb", type=int, default=64, help="first N KB (1024 bytes) of the file [default: 64]")
    p.add_argument("--file", type=Path, default=CORPUS / "treasure_island.txt")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, help="also append the table here (Markdown)")
    args = p.parse_args()
    from llmzip.runtime import single_openmp_thread, tune_allocator

    single_openmp_thread()
    tune_allocator()
    import torch  # noqa: F401  (loaded, so every input size uses the int8 GEMMs: linear8.select_backend)
    from llmzip import codec, fused
    from llmzip.model import load_model

    if not fused.available():
        raise SystemExit(f"the fused kernels are not available here: {fused.unavailable_reason()}")
    model = load_model(None if args.model == "embedded" else args.model)
    data = args.file.read_bytes()[: args.kb * 1024]
    for value in MODES.values():                                        # warm-up, both paths
        os.environ["LLMZIP_FUSED"] = value
        codec.decompress(codec.compress(data[:4096], model), model)
    best = measure(model, data, args.repeats)
    title = (f"`python benchmarks/fused.py --model {args.model} --kb {args.kb} --file {args.file.name} "
             f"--repeats {args.repeats}` ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, best of "
             f"{args.repeats}, modes interleaved)")
    text = report(best, first_use_seconds(), title)
    print(text)
    if args.out:
        with args.out.open("a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
