#!/usr/bin/env python3
"""llmzip against the classic compressors: size, speed and memory on a corpus.

    python benchmarks/run.py [--corpus DIR ...] [--models NAME ...] [--quick] [--out DIR]
                             [--threads T] [--batch-size N]

For every corpus file and compressor: compressed bytes, bits per byte, compress and
decompress throughput (kB/s of original data, wall clock; best of 3 for the classic
compressors, one run for llmzip) and a verified round trip. For llmzip also the model's ideal
cross-entropy, the archive's overhead over it, tokens/s, peak RSS and model load time, each
(model, file) measured in a child process of its own; and which methods its frames used, with
llmzip's size against the best of the classic rows that are the fallbacks it ships.

``--quick`` codes only the first 8 KiB of each file (under 2 minutes with the embedded model).
The corpus is every regular file of each ``--corpus`` directory except hidden files and
README*; the default is ``../shared/corpus`` next to the repository. A mixed set of other kinds
of files: ``python benchmarks/mixed_set.py DIR``.

Writes ``results.json``, ``results.md``, ``bpb_by_file.png`` and ``bpb_vs_speed.png`` to ``--out``.
Exit status: 0 success; 1 a round trip did not give the original back (the reports are still
written, with the failure marked) or a measurement failed; 2 usage error.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _p in (str(HERE), str(REPO)):  # sibling modules; llmzip itself when it is not installed
    if _p not in sys.path:
        sys.path.insert(0 if _p == str(HERE) else 1, _p)

from llmzip_bench import WORKER_FLAG, measure_llmzip, model_label, worker_main  # noqa: E402

DEFAULT_CORPUS = REPO.parent / "shared" / "corpus"
QUICK_BYTES = 8192
CLASSIC_REPEATS = 3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, nargs="+", default=[DEFAULT_CORPUS],
                   help="directories of files (default: %(default)s)")
    p.add_argument("--models", nargs="+", default=["embedded"], metavar="NAME",
                   help="llmzip models: 'embedded', a local model directory or a cached hub id (default: embedded)")
    p.add_argument("--quick", action="store_true", help=f"only the first {QUICK_BYTES} bytes of each file")
    p.add_argument("--out", type=Path, default=Path("bench-out"), help="output directory (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for llmzip (default: all cores)")
    p.add_argument("--batch-size", type=int, default=None, help="llmzip rows per forward call (default: whole group)")
    p.add_argument("--chunk-tokens", type=int, default=None,
                   help="llmzip tokens per chunk (default: the codec's, see llmzip.codec.default_chunk)")
    p.add_argument("--no-classic", action="store_true", help="llmzip only")
    p.add_argument("--llmzip-runs", type=int, default=1, metavar="N",
                   help="time llmzip's compress and decompress N times each and keep the best (default: 1)")
    args = p.parse_args(argv)
    for corpus in args.corpus:
        if not corpus.is_dir():
            p.error(f"corpus directory not found: {corpus}")
    for name in ("threads", "batch_size", "chunk_tokens"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def corpus_files(corpus: Path) -> list[Path]:
    """Regular, non-empty files of ``corpus``, sorted; hidden files and README* are not data."""
    files = []
    for path in sorted(corpus.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.name.upper().startswith("README"):
            continue
        if path.stat().st_size == 0:
            print(f"run.py: skipping empty file {path.name}", file=sys.stderr)
            continue
        files.append(path)
    return files


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """The top-level "machine" block of results.json."""
    import numpy

    packages = ("llmzip", "zstandard", "brotli", "pyppmd", "tokenizers", "threadpoolctl")
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "numpy": numpy.__version__, "torch": _version("torch"),
        "packages": {p: _version(p) for p in packages},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *argv]),
        "quick": args.quick, "quick_bytes": QUICK_BYTES if args.quick else None,
        "repeats": {"classic": CLASSIC_REPEATS, "llmzip": args.llmzip_runs},
        "threads": args.threads, "batch_size": args.batch_size, "chunk_tokens": args.chunk_tokens,
    }


def read_data(path: Path, quick: bool) -> bytes:
    data = path.read_bytes()
    return data[:QUICK_BYTES] if quick else data


def llmzip_labels(models: list[str]) -> dict[str, str]:
    """Model name -> column name, unique even when two directories share a base name."""
    labels: dict[str, str] = {}
    for model in models:
        label, n = model_label(model), 2
        while label in labels.values():
            label, n = f"{model_label(model)}#{n}", n + 1
        labels[model] = label
    return labels


def plan(args: argparse.Namespace, files: list[Path]) -> list[tuple[Path, str, Any]]:
    """The (file, compressor label, how to run it) steps, file-major; llmzip first, so that a
    model that cannot load stops the run at once rather than after the classic ones."""
    from compressors import classic_compressors

    classic = [] if args.no_classic else classic_compressors()
    labels = llmzip_labels(list(dict.fromkeys(args.models)))
    steps: list[tuple[Path, str, Any]] = []
    for path in files:
        steps += [(path, label, model) for model, label in labels.items()]
        steps += [(path, c.name, c) for c in classic]
    return steps


def run_step(args: argparse.Namespace, path: Path, label: str, how: Any) -> dict[str, Any]:
    from compressors import measure_classic

    if isinstance(how, str):  # an llmzip model name
        limit = QUICK_BYTES if args.quick else None
        return measure_llmzip(how, label, path, limit, args.threads, args.batch_size, args.chunk_tokens,
                              args.llmzip_runs)
    return measure_classic(how, path.name, read_data(path, args.quick), CLASSIC_REPEATS)


def run_all(args: argparse.Namespace, files: list[Path]) -> list[dict[str, Any]]:
    """Every step, with a progress bar on stderr (one tick per (file, compressor))."""
    from tqdm import tqdm

    steps, entries = plan(args, files), []
    with tqdm(total=len(steps), unit="step", file=sys.stderr, dynamic_ncols=True) as bar:
        for path, label, how in steps:
            bar.set_postfix_str(f"{path.name} · {label}", refresh=True)
            entries.append(run_step(args, path, label, how))
            if not entries[-1]["verified"]:
                tqdm.write(f"run.py: ROUND TRIP FAILED: {label} on {path.name}", file=sys.stderr)
            bar.update(1)
    return entries


def write_results(out: Path, entries: list[dict[str, Any]], machine: dict[str, Any]) -> list[Path]:
    import report

    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps({"machine": machine, "results": entries}, indent=2) + "\n", encoding="utf-8")
    return [path, *report.write_all(out, entries, machine)]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [WORKER_FLAG]:
        return worker_main(argv[1])
    args = parse_args(argv)
    files = [f for corpus in args.corpus for f in corpus_files(corpus)]
    if not files:
        print(f"run.py: no files to benchmark in {' '.join(map(str, args.corpus))}", file=sys.stderr)
        return 2
    if len({f.name for f in files}) != len(files):
        print("run.py: two corpus files have the same name", file=sys.stderr)
        return 2
    machine = machine_info(args, [str(Path(__file__)), *argv])
    try:
        entries = run_all(args, files)
    except RuntimeError as exc:
        print(f"run.py: {exc}", file=sys.stderr)
        return 1
    for path in write_results(args.out, entries, machine):
        print(path)
    failed = [f"{e['compressor']} on {e['file']}" for e in entries if not e["verified"]]
    if failed:
        print("run.py: round trip FAILED for: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
