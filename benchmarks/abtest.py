"""Side-by-side speed of codec variants on one input, for the benchmarks that compare two or three
ways of running the same codec (workers.py, fused.py): the shared command line, the interleaved
best-of loop with its archive and round-trip checks, and the Markdown output.

A variant is a name and a function that makes the process ready for it (an environment switch,
say) and returns the codec settings to run with; an optional check receives the compression's
result so a benchmark can assert the variant really ran as named. Every variant must give the
same archive and decode it: variants change speed only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cputime import cpu_seconds

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

Times = tuple[float, float, float]     # wall, own CPU, reaped worker processes' CPU (seconds)


@dataclass(frozen=True)
class Variant:
    """One way to run the codec: ``enter()`` prepares the process and returns the ``codec.Settings``
    to run with; ``after_compress()``, if given, runs right after each compression."""

    enter: Callable[[], Any]
    after_compress: Callable[[], None] | None = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="embedded", help="'embedded', a package model id or a model directory")
    p.add_argument("--kb", type=int, default=64, help="first N KB (1024 bytes) of the file [default: 64]")
    p.add_argument("--file", type=Path, default=CORPUS / "treasure_island.txt")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, help="also append the table here (Markdown)")


def load(args: argparse.Namespace) -> tuple[Any, bytes]:
    """The model and the input of the command line, with this process tuned as the CLI tunes it and
    torch loaded (so every input size uses the int8 GEMMs: ``linear8.select_backend``)."""
    from llmzip.runtime import single_openmp_thread, tune_allocator

    single_openmp_thread()
    tune_allocator()
    import torch  # noqa: F401
    from llmzip.model import load_model

    model = load_model(None if args.model == "embedded" else args.model)
    return model, args.file.read_bytes()[: args.kb * 1024]


def title(script: str, args: argparse.Namespace, compared: str) -> str:
    return (f"`python benchmarks/{script} --model {args.model} --kb {args.kb} --file {args.file.name} "
            f"--repeats {args.repeats}` ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, best of "
            f"{args.repeats}, {compared} interleaved)")


def timed(call: Callable[[], Any]) -> tuple[Any, float, float, float]:
    """``call()``'s result, wall seconds, own CPU seconds, reaped children's CPU seconds."""
    own, w, total = time.process_time(), time.perf_counter(), cpu_seconds()
    result = call()
    own, w, total = time.process_time() - own, time.perf_counter() - w, cpu_seconds() - total
    return result, w, own, total - own


def warm_up(model: Any, data: bytes, variants: dict[str, Variant]) -> None:
    """One small round trip in every variant, so no timed run pays a first use."""
    from llmzip import codec

    for variant in variants.values():
        settings = variant.enter()
        codec.decompress(codec.compress(data[:4096], model, settings=settings), model, settings)


def measure(model: Any, data: bytes, repeats: int, variants: dict[str, Variant]) -> dict[tuple[str, str], Times]:
    """Best times per (variant, op) over ``repeats`` rounds, the variants interleaved in each round."""
    from llmzip import codec

    best: dict[tuple[str, str], Times] = {}
    archives = set()
    for _ in range(repeats):
        for name, variant in variants.items():
            settings = variant.enter()
            blob, *compress_times = timed(lambda: codec.compress(data, model, settings=settings))
            if variant.after_compress is not None:
                variant.after_compress()
            back, *decompress_times = timed(lambda: codec.decompress(blob, model, settings))
            if back != data:
                raise SystemExit(f"{name}: round trip failed")
            archives.add(blob)
            for op, times in (("compress", compress_times), ("decompress", decompress_times)):
                best[name, op] = min(best.get((name, op), (float("inf"), 0.0, 0.0)), tuple(times))
    if len(archives) != 1:
        raise SystemExit("the variants gave different archives")
    return best


def emit(text: str, out: Path | None) -> None:
    print(text)
    if out:
        with out.open("a") as f:
            f.write(text + "\n")


Report = Callable[[dict[tuple[str, str], Times], str], str]


def main(doc: str, script: str, compared: str, variants: Callable[[], dict[str, Variant]], report: Report) -> None:
    """A benchmark's whole run: its command line (``doc`` as help), the model and input, the variants
    (made after the model is loaded) warmed up and measured, the table printed and appended to --out."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    args = p.parse_args()
    model, data = load(args)
    chosen = variants()
    warm_up(model, data, chosen)
    best = measure(model, data, args.repeats, chosen)
    emit(report(best, title(script, args, compared)), args.out)
