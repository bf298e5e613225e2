#!/usr/bin/env python3
"""Compress and decompress speed with the engine's numpy passes against the fused kernels
(:mod:`llmzip.fused`), and what loading them costs a fresh process.

    python benchmarks/fused.py [--model embedded] [--kb 64] [--file FILE] [--repeats 2] [--out FILE]

Codes the first ``--kb`` KB of ``--file`` (default: ``treasure_island.txt`` of the corpus) with
``LLMZIP_FUSED=0`` and ``LLMZIP_FUSED=always`` in turn (default codec settings: two workers),
``--repeats`` rounds, and prints the best wall seconds of each. Both must give the same archive
and decode it, and the kernels must run in the fused mode only (checked). The kernels are built
(once per machine, into llmzip's cache) and the model warmed up before timing; loading and probing
the build is timed separately, in a new Python process.
"""

from __future__ import annotations

import os
import subprocess
import sys

import abtest

MODES = {"numpy": "0", "fused": "always"}


def variants() -> dict[str, abtest.Variant]:
    """The two modes; each checks after its compression that the kernels did (not) run."""
    from llmzip import codec, fused

    if not fused.available(build=True):
        raise SystemExit(f"the fused kernels are not available here: {fused.unavailable_reason()}")

    def mode(name: str, value: str) -> abtest.Variant:
        calls = [0]

        def enter() -> codec.Settings:
            os.environ["LLMZIP_FUSED"] = value
            calls[0] = fused.kernel_calls()
            return codec.Settings()

        def check() -> None:
            if (fused.kernel_calls() > calls[0]) != (name == "fused"):
                raise SystemExit(f"{name}: the kernels were {'not ' if name == 'fused' else ''}used")
        return abtest.Variant(enter, check)
    return {name: mode(name, value) for name, value in MODES.items()}


def first_use_seconds() -> float:
    """Seconds a new process spends in ``fused.available()`` (loading and probing this machine's
    build) after importing torch."""
    code = ("import time, torch; t = time.perf_counter(); from llmzip import fused; "
            "ok = fused.available(); print(ok, time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], cwd=abtest.REPO, capture_output=True, text=True, check=True)
    ok, seconds = out.stdout.split()[-2:]
    if ok != "True":
        raise SystemExit("the kernels do not load here")
    return float(seconds)


def report(best: dict[tuple[str, str], abtest.Times], first_use: float, title: str) -> str:
    lines = [title, "", "| op | numpy s | fused s | speed-up |", "|---|---:|---:|---:|"]
    for op in ("compress", "decompress"):
        plain, fast = best["numpy", op][0], best["fused", op][0]
        lines.append(f"| {op} | {plain:.2f} | {fast:.2f} | {plain / fast:.2f}x |")
    lines.append(f"\nLoading and probing the built kernels in a new process (torch imported): {first_use:.2f} s")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    abtest.main(__doc__, "fused.py", "modes", variants, lambda best, title: report(best, first_use_seconds(), title))
