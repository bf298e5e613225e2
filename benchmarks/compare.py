#!/usr/bin/env python3
"""Speed of this tree against an earlier git revision, measured side by side in one run.

    python benchmarks/compare.py --baseline REF [--files FILE ...] [--repeats 3] [--limit BYTES]

The baseline is checked out into a temporary worktree (``git worktree add --detach``, removed
afterwards). One worker process per tree loads the model once; the parent then times compress
and decompress of every file in both trees in turn (new, old, new, old, ...), never both at
once, keeping the best of ``--repeats`` for each: a slow spell of a shared machine hits both
trees alike, so the ratio new/old is fair even when the absolute speeds are not.

Archives must be byte-identical (the format is unchanged) unless ``--format-changed``; every
decompression is checked against the input. Prints tokens/s and kB/s of each tree, the speed
ratio new/old (> 1: this tree is faster) and the same ratio of the CPU time used (all threads
and worker processes: steadier than wall time on a contended machine); exits 1 if an archive
differs or a round trip fails.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"
WORKER_FLAG = "--_worker"


def worker_main(root: str, model_name: str, threads: int | None) -> None:
    """Serve timing requests (JSON lines on stdin) with the llmzip of ``root``."""
    sys.path.insert(0, root)
    from llmzip import codec
    from llmzip.model import load_model

    model = load_model(model_name)
    settings = codec.Settings(threads=threads) if threads else codec.Settings()
    codec.decompress(codec.compress(b"warm-up text, coded once before timing. " * 8, model, settings=settings),
                     model, settings)
    blobs: dict[str, bytes] = {}
    for line in sys.stdin:
        print(json.dumps(_serve(json.loads(line), codec, model, settings, blobs)), flush=True)


def _serve(req: dict[str, Any], codec: Any, model: Any, settings: Any, blobs: dict[str, bytes]) -> dict[str, Any]:
    """Time one compress or decompress (the archive is kept for the decompression)."""
    data = Path(req["file"]).read_bytes()[: req["limit"]]
    from cputime import cpu_seconds

    start, cpu = time.perf_counter(), cpu_seconds()
    if req["op"] == "compress":
        blob = codec.compress(data, model, settings=settings)
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
        blobs[req["file"]] = blob
        return {"seconds": seconds, "cpu": cpu, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob),
                "tokens": len(model.tokenizer.encode(data))}
    ok = codec.decompress(blobs[req["file"]], model, settings) == data
    return {"seconds": time.perf_counter() - start, "cpu": cpu_seconds() - cpu, "ok": ok}


class Worker:
    """A worker process holding one tree's llmzip and a loaded model."""

    def __init__(self, root: Path, model: str, threads: int | None) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), WORKER_FLAG, str(root), model, str(threads or 0)]
        env = {**os.environ, "PYTHONPATH": str(root)}
        self.proc = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, **req: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited with status {self.proc.wait()}")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


@contextlib.contextmanager
def baseline_tree(ref: str) -> Iterator[Path]:
    """A temporary detached worktree of ``ref``, removed on exit."""
    with tempfile.TemporaryDirectory(prefix="llmzip-baseline-") as tmp:
        path = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), ref],
                       check=True, capture_output=True, text=True)
        try:
            yield path
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)],
                           check=False, capture_output=True)


def measure(workers: dict[str, Worker], files: list[Path], repeats: int, limit: int | None) -> dict[str, Any]:
    """Best wall and CPU times of every (tree, file, op), interleaving the trees; and what they produced."""
    best: dict[tuple[str, str, str], float] = {}
    cpu: dict[tuple[str, str, str], float] = {}
    info: dict[tuple[str, str], dict[str, Any]] = {}
    for _ in range(repeats):
        for path in files:
            for op in ("compress", "decompress"):
                for side, worker in workers.items():
                    reply = worker.ask(op=op, file=str(path), limit=limit)
                    key = (side, path.name, op)
                    best[key] = min(best.get(key, float("inf")), reply["seconds"])
                    cpu[key] = min(cpu.get(key, float("inf")), reply["cpu"])
                    info.setdefault((side, path.name), {}).update(
                        {k: v for k, v in reply.items() if k not in ("seconds", "cpu")})
    return {"best": best, "cpu": cpu, "info": info}


def report(files: list[Path], result: dict[str, Any], limit: int | None, format_changed: bool) -> bool:
    """Print the side-by-side table; True if every archive and round trip is as expected."""
    best, cpu, info, good = result["best"], result["cpu"], result["info"], True
    print("| file | kB | tokens | op | new tok/s | old tok/s | new kB/s | old kB/s | new/old | CPU new/old | archive |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for path in files:
        size = min(path.stat().st_size, limit or path.stat().st_size)
        new, old = info[("new", path.name)], info[("old", path.name)]
        same = new["sha256"] == old["sha256"]
        ok = new.get("ok", False) and old.get("ok", False)
        good &= ok and (same or format_changed)
        verdict = ("identical" if same else f"DIFFERENT ({new['bytes']} vs {old['bytes']} B)") + ("" if ok else ", ROUND TRIP FAILED")
        for op in ("compress", "decompress"):
            t_new, t_old = best[("new", path.name, op)], best[("old", path.name, op)]
            c_new, c_old = cpu[("new", path.name, op)], cpu[("old", path.name, op)]
            print(f"| {path.name} | {size / 1e3:.1f} | {new['tokens']} | {op} | {new['tokens'] / t_new:,.0f} | "
                  f"{new['tokens'] / t_old:,.0f} | {size / 1e3 / t_new:.1f} | {size / 1e3 / t_old:.1f} | "
                  f"{t_old / t_new:.2f}x | {c_old / c_new:.2f}x | {verdict} |")
    return good


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="git revision to compare against (e.g. a commit or tag)")
    parser.add_argument("--files", nargs="*", type=Path, default=None, help=f"files to code [default: {CORPUS}]")
    parser.add_argument("--model", default="embedded", help="model name or directory [default: embedded]")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timings [default: 3]")
    parser.add_argument("--limit", type=int, default=None, help="code only the first BYTES of each file")
    parser.add_argument("--threads", type=int, default=None, help="codec threads [default: the codec's choice]")
    parser.add_argument("--format-changed", action="store_true", help="the archives may differ (a format change)")
    args = parser.parse_args()
    files = args.files or sorted(p for p in CORPUS.iterdir() if p.is_file() and p.name != "README.md")
    files = [f.resolve() for f in files]
    with baseline_tree(args.baseline) as old_root:
        workers = {"new": Worker(REPO, args.model, args.threads), "old": Worker(old_root, args.model, args.threads)}
        try:
            result = measure(workers, files, args.repeats, args.limit)
        finally:
            for w in workers.values():
                w.close()
    print(f"`python benchmarks/compare.py {' '.join(sys.argv[1:])}` ({time.strftime('%Y-%m-%d %H:%M')}, "
          f"{os.cpu_count()} CPUs, best of {args.repeats}, trees interleaved); new = {REPO.name} working tree, "
          f"old = {args.baseline}\n")
    sys.exit(0 if report(files, result, args.limit, args.format_changed) else 1)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == WORKER_FLAG:
        worker_main(sys.argv[2], sys.argv[3], int(sys.argv[4]) or None)
    else:
        main()
