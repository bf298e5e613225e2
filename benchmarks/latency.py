#!/usr/bin/env python3
"""Wall time of the ``llmzip`` CLI, start-up included, as the input grows.

    python benchmarks/latency.py [--sizes-kb 3 20 100 361] [--runs 3] [--file PATH] [--torch-always]

For each size, the first N KB of ``--file`` (default: Treasure Island from the corpus) is
compressed with ``llmzip compress -c`` and the archive decompressed with ``llmzip decompress
-c``, each as a fresh process (Python start-up, imports, model loading and coding: what a
user waits for), best of ``--runs``. The round trip is checked. ``--torch-always`` sets
``llmzip.linear8.INT8_GEMM_MIN_OPS`` to 0 in the CLI process, so every input imports torch for
its int8 GEMMs instead of using the float64 GEMM below that many operations: the check of that
threshold (run once with it and once without).
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
CLI_TORCH_ALWAYS = [sys.executable, "-c", "import sys; import llmzip.linear8 as l; l.INT8_GEMM_MIN_OPS = 0; "
                    "sys.argv[0] = 'llmzip'; from llmzip.cli import main; main()"]


def wall(args: list[str], stdin: bytes, cli: list[str] = CLI) -> tuple[bytes, float]:
    """Run the CLI once; its stdout and wall time."""
    t0 = time.perf_counter()
    out = subprocess.run(cli + args, input=stdin, capture_output=True, check=True).stdout
    return out, time.perf_counter() - t0


def best(args: list[str], stdin: bytes, runs: int, cli: list[str] = CLI) -> tuple[bytes, float]:
    results = [wall(args, stdin, cli) for _ in range(runs)]
    return results[0][0], min(seconds for _, seconds in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", type=Path, default=CORPUS / "treasure_island.txt")
    parser.add_argument("--sizes-kb", nargs="*", type=int, default=[3, 20, 100, 361])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--torch-always", action="store_true", help="int8 GEMMs through torch at every size")
    args = parser.parse_args()
    cli = CLI_TORCH_ALWAYS if args.torch_always else CLI
    text = args.file.read_bytes()
    print(f"| input | compress s | decompress s |  ({args.file.name}, best of {args.runs}, "
          f"{time.strftime('%Y-%m-%d')}{', torch always' if args.torch_always else ''})\n|---:|---:|---:|")
    for kb in args.sizes_kb:
        data = text[: kb * 1000]
        blob, c_s = best(["compress", "-c", "-q"], data, args.runs, cli)
        back, d_s = best(["decompress", "-c", "-q"], blob, args.runs, cli)
        if back != data:
            raise SystemExit(f"round trip failed at {kb} KB")
        print(f"| {len(data):,} B | {c_s:.2f} | {d_s:.2f} |", flush=True)


if __name__ == "__main__":
    main()
