#!/usr/bin/env python3
"""Which classic coders earn a place as llmzip's fallbacks? Each candidate on each file.

    python benchmarks/fallbacks.py DIR_OR_FILE...

Candidates, all raw streams (no container): LZMA2 at presets 9e and 6, bzip2 -9, PPMd7 orders
6 and 10, brotli at qualities 11 and 9, zstandard -19. Prints a Markdown table of bits per byte
(the best of each row starred) and each candidate's total compress time (one run, wall clock:
contended on a shared machine, compare within the run only).
"""

from __future__ import annotations

import argparse
import bz2
import lzma
import sys
import time
from pathlib import Path
from typing import Callable

from compressors import files_of

Codec = Callable[[bytes], bytes]


def _ppmd(order: int, mem_mb: int) -> Codec:
    import pyppmd

    def code(data: bytes) -> bytes:
        enc = pyppmd.Ppmd7Encoder(order, mem_mb << 20)
        return enc.encode(data) + enc.flush()
    return code


def _lzma(preset: int) -> Codec:
    filters = [{"id": lzma.FILTER_LZMA2, "preset": preset}]
    return lambda data: lzma.compress(data, format=lzma.FORMAT_RAW, filters=filters)


def candidates() -> dict[str, Codec]:
    import brotli
    import zstandard

    return {
        "lzma 9e": _lzma(9 | lzma.PRESET_EXTREME), "lzma 6": _lzma(6), "bzip2 9": lambda d: bz2.compress(d, 9),
        "ppmd o6": _ppmd(6, 16), "ppmd o10": _ppmd(10, 64),
        "brotli 11": lambda d: brotli.compress(d, quality=11, lgwin=24),
        "brotli 9": lambda d: brotli.compress(d, quality=9, lgwin=24),
        "zstd 19": zstandard.ZstdCompressor(level=19).compress,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", type=Path)
    args = p.parse_args()
    coders = candidates()
    seconds = dict.fromkeys(coders, 0.0)
    print("| file | " + " | ".join(coders) + " |")
    print("|---|" + "---:|" * len(coders))
    for path in files_of(args.paths):
        data = path.read_bytes()
        sizes = {}
        for name, code in coders.items():
            start = time.perf_counter()
            sizes[name] = len(code(data))
            seconds[name] += time.perf_counter() - start
        best = min(sizes.values())
        cells = [f"{8 * n / len(data):.3f}" + ("*" if n == best else "") for n in sizes.values()]
        print(f"| {path.name} | " + " | ".join(cells) + " |")
    print("| *compress s, all files* | " + " | ".join(f"{s:.2f}" for s in seconds.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
