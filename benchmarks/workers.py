#!/usr/bin/env python3
"""Compress and decompress speed with each kind of codec worker: one thread, two threads, two
forked processes.

    python benchmarks/workers.py [--model embedded] [--kb 64] [--file FILE] [--repeats 2]

Codes the first ``--kb`` KB of ``--file`` (default: ``treasure_island.txt`` of the corpus) with
``Settings(threads=1)``, ``Settings(threads=2, processes=False)`` and ``Settings(threads=2,
processes=True)`` in turn, ``--repeats`` rounds, and prints the best wall seconds of each with
the CPU seconds of the process and of its reaped worker processes. Every setting must give the
same archive and decode it (checked): workers change speed only. torch and the model are loaded
and warmed up before timing. ``--out FILE`` also writes the table as Markdown.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from cputime import cpu_seconds

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def settings_by_name() -> dict[str, Any]:
    from llmzip import codec

    return {"one thread": codec.Settings(threads=1),
            "two threads": codec.Settings(threads=2, processes=False),
            "two processes": codec.Settings(threads=2, processes=True)}


def timed(call: Any) -> tuple[Any, float, float, float]:
    """``call()``'s result, wall seconds, own CPU seconds, reaped children's CPU seconds."""
    own, w, total = time.process_time(), time.perf_counter(), cpu_seconds()
    result = call()
    own, w, total = time.process_time() - own, time.perf_counter() - w, cpu_seconds() - total
    return result, w, own, total - own


def measure(model: Any, data: bytes, repeats: int) -> dict[tuple[str, str], tuple[float, float, float]]:
    """Best (wall, cpu, children cpu) per (setting, op), the settings interleaved."""
    from llmzip import codec

    best: dict[tuple[str, str], tuple[float, float, float]] = {}
    archives = set()
    for _ in range(repeats):
        for name, settings in settings_by_name().items():
            blob, *compress_times = timed(lambda: codec.compress(data, model, settings=settings))
            back, *decompress_times = timed(lambda: codec.decompress(blob, model, settings))
            if back != data:
                raise SystemExit(f"{name}: round trip failed")
            archives.add(blob)
            for op, times in (("compress", compress_times), ("decompress", decompress_times)):
                best[name, op] = min(best.get((name, op), (float("inf"), 0.0, 0.0)), tuple(times))
    if len(archives) != 1:
        raise SystemExit("the settings gave different archives")
    return best


def report(best: dict[tuple[str, str], tuple[float, float, float]], title: str) -> str:
    lines = [title, "", "| workers | op | wall s | CPU s (process) | CPU s (worker processes) |", "|---|---|---:|---:|---:|"]
    for (name, op), (wall, cpu, children) in best.items():
        lines.append(f"| {name} | {op} | {wall:.2f} | {cpu:.2f} | {children:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded", help="'embedded', a package model id or a model directory")
    p.add_argument("--kb", type=int, default=64, help="first N KB (1024 bytes) of the file [default: 64]")
    p.add_argument("--file", type=Path, default=CORPUS / "treasure_island.txt")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, help="also write the table here (Markdown)")
    args = p.parse_args()
    from llmzip.runtime import single_openmp_thread, tune_allocator

    single_openmp_thread()
    tune_allocator()
    import torch  # noqa: F401  (loaded, so every input size uses the int8 GEMMs: linear8.select_backend)
    from llmzip import codec
    from llmzip.model import load_model

    model = load_model(None if args.model == "embedded" else args.model)
    data = args.file.read_bytes()[: args.kb * 1024]
    codec.decompress(codec.compress(data[:4096], model), model)        # warm-up
    title = (f"`python benchmarks/workers.py --model {args.model} --kb {args.kb} --file {args.file.name} "
             f"--repeats {args.repeats}` ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, best of "
             f"{args.repeats}, settings interleaved)")
    text = report(measure(model, data, args.repeats), title)
    print(text)
    if args.out:
        with args.out.open("a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
