#!/usr/bin/env python3
"""Peak memory of the CLI as the input grows: does llmzip stay bounded?

    python benchmarks/memory.py [--model tests/data/golden-tiny] [--sizes-mb 1 10] [--method lm]
                                [--frame-size 1M]

For each size, builds a text file of that size (the corpus files repeated), then runs
``llmzip compress`` and ``llmzip decompress`` in child processes and reports each child's peak
RSS (``ru_maxrss``: the largest of the child and its worker processes) and wall time; and, where
``/proc`` has it, the peak of the summed PSS (proportional set size: a page shared by the forked
decoder workers counted once) of the child and its workers, sampled every 20 ms. The decoded file is compared with the input. ``--method lm``
(the default here) makes every frame a model frame, whatever the model's ratio: the tiny
model loses to the fallbacks, and the point is the model's memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"


def make_input(path: Path, size: int) -> None:
    sources = [p.read_bytes() for p in sorted(CORPUS.iterdir()) if p.name != "README.md"]
    blob = b"".join(sources)
    path.write_bytes((blob * (size // len(blob) + 1))[:size])


def run_child(args: list[str]) -> tuple[float, float | None, float]:
    """Run ``python -m llmzip.cli ARGS``; return (peak RSS in MB, peak PSS of its process tree in
    MB or None without /proc, seconds)."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "llmzip.cli", *args], cwd=REPO)
    peak_pss: float | None = None
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        pss = tree_pss_kb(child.pid)
        peak_pss = pss if peak_pss is None else max(peak_pss, pss or 0)
        time.sleep(0.02)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"llmzip {args[0]} failed with status {child.returncode}")
    return usage.ru_maxrss / 1024, None if peak_pss is None else peak_pss / 1024, time.perf_counter() - start


def tree_pss_kb(pid: int) -> float | None:
    """Summed PSS (kB) of ``pid`` and its descendants now; None where /proc does not say."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    own = next((float(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")), None)
    if own is None:
        return None
    return own + sum(tree_pss_kb(int(c)) or 0 for c in children)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(REPO / "tests" / "data" / "golden-tiny"))
    p.add_argument("--sizes-mb", type=float, nargs="+", default=[1, 10])
    p.add_argument("--method", default="lm", choices=["auto", "lm", "ppmd", "lzma", "bz2", "stored"])
    p.add_argument("--frame-size", default="1M", help="llmzip --frame-size (default: %(default)s)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for mb in sorted(args.sizes_mb):
            src = Path(tmp) / f"in{mb}"
            make_input(src, int(mb * 2**20))
            rss_c, pss_c, t_c = run_child(["compress", "-q", "--model", args.model, "--method", args.method,
                                    "--frame-size", args.frame_size, str(src), "-o", f"{src}.llz"])
            rss_d, pss_d, t_d = run_child(["decompress", "-q", "--model", args.model, f"{src}.llz", "-o", f"{src}.out"])
            same = Path(f"{src}.out").read_bytes() == src.read_bytes()
            print(json.dumps({"input_mb": mb, "method": args.method, "frame_size": args.frame_size,
                              "archive_bytes": Path(f"{src}.llz").stat().st_size,
                              "compress_peak_rss_mb": round(rss_c, 1), "compress_peak_pss_mb": _mb(pss_c),
                              "compress_s": round(t_c, 1), "decompress_peak_rss_mb": round(rss_d, 1),
                              "decompress_peak_pss_mb": _mb(pss_d), "decompress_s": round(t_d, 1),
                              "round_trip": same}), flush=True)


def _mb(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


if __name__ == "__main__":
    main()
