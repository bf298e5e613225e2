#!/usr/bin/env python3
"""Wall time of the ``llmzip`` CLI, start-up included, as the input grows.

    python benchmarks/latency.py [--sizes-kb 3 20 100 361] [--runs 3] [--file PATH]

For each size, the first N KB of ``--file`` (default: Treasure Island from the corpus) is
compressed with ``llmzip compress -c`` and the archive decompressed with ``llmzip decompress
-c``, each as a fresh process (Python start-up, imports, model loading and coding: what a
user waits for), best of ``--runs``. The round trip is checked.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"
CLI = [sys.executable, "-m", "llmzip.cli"]


def wall(args: list[str], stdin: bytes) -> tuple[bytes, float]:
    """Run the CLI once; its stdout and wall time."""
    t0 = time.perf_counter()
    out = subprocess.run(CLI + args, input=stdin, capture_output=True, check=True).stdout
    return out, time.perf_counter() - t0


def best(args: list[str], stdin: bytes, runs: int) -> tuple[bytes, float]:
    results = [wall(args, stdin) for _ in range(runs)]
    return results[0][0], min(seconds for _, seconds in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", type=Path, default=CORPUS / "treasure_island.txt")
    parser.add_argument("--sizes-kb", nargs="*", type=int, default=[3, 20, 100, 361])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    text = args.file.read_bytes()
    print(f"| input | compress s | decompress s |  ({args.file.name}, best of {args.runs}, "
          f"{time.strftime('%Y-%m-%d')})\n|---:|---:|---:|")
    for kb in args.sizes_kb:
        data = text[: kb * 1000]
        blob, c_s = best(["compress", "-c", "-q"], data, args.runs)
        back, d_s = best(["decompress", "-c", "-q"], blob, args.runs)
        if back != data:
            raise SystemExit(f"round trip failed at {kb} KB")
        print(f"| {len(data):,} B | {c_s:.2f} | {d_s:.2f} |", flush=True)


if __name__ == "__main__":
    main()
