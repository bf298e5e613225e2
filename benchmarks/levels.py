"""Ratio and speed of every compression level (``llmzip compress -1`` .. ``-9``), or of the
candidate configurations the levels were chosen from (``--candidates``).

For each configuration, every file (default: ``../shared/corpus``; ``--kb N``: its first N KB)
is compressed as ``llmzip compress`` does at that level (frames, the level's fallbacks, its model
where it wins the sample) and decompressed with the plain ``llmzip.decompress``, which knows
nothing of levels; the round trip is checked. Models are loaded and warmed up before timing.
Reports bits/byte per file and overall, compress and decompress kB/s (1000 bytes of input per
second) and the frames' method mix, in ``OUT/levels.md`` and ``OUT/levels.json`` with the date,
the CPU and the command.

    python benchmarks/levels.py --kb 32                  # levels 1..9
    python benchmarks/levels.py --candidates --kb 16     # the configurations levels choose from
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llmzip import levels  # noqa: E402

CORPUS = REPO.parent / "shared" / "corpus"
V1, V2, LLAMA = "llmzip-gpt2-small-v1", "llmzip-gpt2-small-v2", levels.LLAMA
ALL = levels.ALL_FALLBACKS
# name -> (model, mixing, chunk tokens, fallbacks): what a level's row can be.
CANDIDATES: dict[str, tuple[str | None, bool, int | None, tuple[str, ...]]] = {
    "lzma": (None, False, None, ("stored", "lzma")),
    "ppmd": (None, False, None, ("stored", "ppmd")),
    "fallbacks": (None, False, None, ALL),
    "v2-c127": (V2, False, 127, ALL),
    "v2": (V2, False, 255, ALL),
    "v2-mix-c127": (V2, True, 127, ALL),
    "v2-mix": (V2, True, 255, ALL),
    "v1": (V1, False, 255, ALL),
    "v1-mix": (V1, True, 255, ALL),
    "v1-mix-c511": (V1, True, 511, ALL),
    "llama-c255": (LLAMA, False, 255, ALL),
    "llama-c511": (LLAMA, False, 511, ALL),
    "llama-mix-c255": (LLAMA, True, 255, ALL),
    "llama-mix-c511": (LLAMA, True, 511, ALL),
}


def configurations(args: argparse.Namespace) -> list[tuple[str, levels.Choice]]:
    """(label, choice) of every configuration to measure; ``--model`` replaces the model of
    those that use one (as LLMZIP_MODEL does for levels). Levels with equal rows are measured
    once, under one label (``-6/-7``)."""
    if args.candidates:
        names = args.only or list(CANDIDATES)
        out = []
        for name in names:
            model, mixing, chunk, fallbacks = CANDIDATES[name]
            out.append((name, levels.Choice(0, model and (args.model or model), mixing, chunk, False, "auto",
                                            fallbacks)))
        return out
    numbers = [int(n) for n in args.only] if args.only else [row.number for row in levels.LEVELS]
    same: dict[levels.Choice, list[int]] = {}     # levels whose rows are equal are measured once
    for n in numbers:
        same.setdefault(dataclasses.replace(levels.resolve(n, default_model=args.model), level=0), []).append(n)
    return [("/".join(f"-{n}" for n in group), dataclasses.replace(choice, level=group[0]))
            for choice, group in same.items()]


def cpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return "unknown"


class Models:
    """Each model loaded once, warmed up (lookup tables, torch's int8 GEMM) before any timing."""

    def __init__(self) -> None:
        self.loaded: dict[str, Any] = {}
        self.load_s: dict[str, float] = {}

    def get(self, name: str) -> Any:
        if name not in self.loaded:
            from llmzip import codec, linear8
            from llmzip.model import load_model

            started = time.perf_counter()
            model = load_model(name)
            linear8.select_backend(linear8.INT8_GEMM_MIN_OPS)
            codec.decompress(codec.compress(b"a warm-up text, coded before the timed runs.\n", model), model)
            self.loaded[name], self.load_s[name] = model, time.perf_counter() - started
        return self.loaded[name]


def measure_file(choice: levels.Choice, data: bytes, models: Models, threads: int | None) -> dict[str, Any]:
    """Compress as the level does, decompress with the plain API; sizes, times, methods."""
    import io

    import llmzip
    from llmzip import codec, frames

    model = models.get(choice.model) if choice.model else None
    options = levels.frame_options(choice, settings=codec.Settings(threads=threads))
    out = io.BytesIO()
    started = time.perf_counter()
    frames.compress_stream(io.BytesIO(data), out, None if model is None else (lambda: model), options)
    c_s = time.perf_counter() - started
    blob = out.getvalue()
    started = time.perf_counter()
    back = llmzip.decompress(blob, model, settings=codec.Settings(threads=threads))
    d_s = time.perf_counter() - started
    if back != data:
        raise SystemExit("round trip failed")
    mix = llmzip.read_info(blob).method_mix()
    return {"original": len(data), "archive": len(blob), "bits_per_byte": 8 * len(blob) / len(data),
            "compress_s": c_s, "decompress_s": d_s,
            "methods": {m: round(v["original"] / len(data), 3) for m, v in mix.items()}}


def measure(label: str, choice: levels.Choice, files: list[Path], args: argparse.Namespace,
            models: Models) -> dict[str, Any]:
    per_file = {}
    for path in files:
        data = path.read_bytes()[: args.kb * 1000] if args.kb else path.read_bytes()
        per_file[path.name] = measure_file(choice, data, models, args.threads)
        print(f"{label:>12} {path.name:<22} {per_file[path.name]['bits_per_byte']:.3f}", file=sys.stderr)
    total = {k: sum(f[k] for f in per_file.values()) for k in ("original", "archive", "compress_s", "decompress_s")}
    return {"label": label, "choice": choice.__dict__, "files": per_file,
            "bits_per_byte": 8 * total["archive"] / total["original"],
            "compress_kbps": total["original"] / 1000 / total["compress_s"],
            "decompress_kbps": total["original"] / 1000 / total["decompress_s"],
            "model_load_s": models.load_s.get(choice.model or "", 0.0)}


def describe(choice: levels.Choice) -> str:
    if choice.model is None:
        return "no model; " + "/".join(f for f in choice.fallbacks if f != "stored")
    chunk = choice.chunk_tokens or "default"
    return f"{Path(choice.model).name}, chunk {chunk}, {'mix' if choice.mixing else 'no mix'}"


def markdown(report: dict[str, Any]) -> str:
    rows = report["rows"]
    names = list(rows[0]["files"])
    head = ["configuration", "what", *names, "all", "compress kB/s", "decompress kB/s"]
    lines = [f"# Compression levels ({'candidates' if report['candidates'] else 'levels'})", "",
             f"{report['date']}, {report['cpu']}, `{report['command']}`.",
             f"Inputs: the first {report['kb']} KB of each file." if report["kb"] else "Inputs: whole files.",
             "Bits per byte of the archive; speeds are kB (1000 bytes) of input per second over all files, "
             "models loaded and warmed up before timing; one run each.",
             *([f"**Note**: {report['note']}"] if report["note"] else []), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for r in rows:
        cells = [r["label"], describe(levels.Choice(**r["choice"]))]
        cells += [f"{r['files'][n]['bits_per_byte']:.3f}" for n in names]
        cells += [f"**{r['bits_per_byte']:.3f}**", f"{r['compress_kbps']:.1f}", f"{r['decompress_kbps']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Methods (share of the input) per file:", ""]
    for r in rows:
        mixes = "; ".join(f"{n}: " + ", ".join(f"{m} {v:.0%}" for m, v in r["files"][n]["methods"].items())
                          for n in names)
        lines.append(f"- {r['label']}: {mixes}")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", action="store_true", help="measure the candidate configurations, not levels")
    parser.add_argument("--only", nargs="+", metavar="X", help="only these levels (numbers) or candidates (names)")
    parser.add_argument("--kb", type=int, default=None, help="use the first N KB (1000 bytes) of each file")
    parser.add_argument("--files", nargs="+", type=Path, help=f"files [default: the files of {CORPUS}]")
    parser.add_argument("--model", help="replace the model of every configuration that has one (e.g. a test model)")
    parser.add_argument("--threads", type=int, default=None, help="codec threads [default: all cores]")
    parser.add_argument("--note", default="", help="a line for the report (e.g. how contended the machine was)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="output directory")
    args = parser.parse_args(argv)
    if args.only and args.candidates and not set(args.only) <= set(CANDIDATES):
        parser.error(f"unknown candidates {sorted(set(args.only) - set(CANDIDATES))}")
    if args.only and not args.candidates and not all(n.isdigit() and levels.MIN_LEVEL <= int(n) <= levels.MAX_LEVEL
                                                     for n in args.only):
        parser.error(f"levels are {levels.MIN_LEVEL}..{levels.MAX_LEVEL}")
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    files = args.files or sorted(p for p in CORPUS.iterdir() if p.is_file() and not p.name.startswith("README"))
    models = Models()
    rows = [measure(label, choice, files, args, models) for label, choice in configurations(args)]
    report = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "cpu": cpu_model(),
              "command": shlex.join(["python", "benchmarks/levels.py", *argv]), "kb": args.kb,
              "candidates": args.candidates, "note": args.note, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "levels-candidates" if args.candidates else "levels"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (args.out / f"{stem}.md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))


if __name__ == "__main__":
    main(sys.argv[1:])
