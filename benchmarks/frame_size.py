#!/usr/bin/env python3
"""Choosing the default frame size: archive size against frame size on real text, and the CLI's
peak memory against frame size.

    python benchmarks/frame_size.py ratio [--model embedded] [--sizes-kb 64 256 1024] [--fixed] FILE...
    python benchmarks/frame_size.py memory [--model tests/data/golden-tiny] [--sizes-kb 256 1024 4096]
                                           [--input-mb 8] [--method lm]

``ratio`` prints, per file and frame size, the archive's bytes (deterministic: no timing);
with ``--fixed`` also those of fixed-size frames (no cut where the content changes).
``memory`` runs ``llmzip compress`` and ``llmzip decompress`` on a text input built from the
corpus, one child process per (frame size, direction), and prints each one's peak RSS.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from memory import make_input, run_child  # noqa: E402


def ratio(args: argparse.Namespace) -> None:
    from llmzip import frames
    from llmzip.model import load_model

    model = load_model(args.model)
    for path in args.files:
        data = path.read_bytes()
        for kb in args.sizes_kb:
            for content_aware in (True, False) if args.fixed else (True,):
                blob = frames.compress(data, model, frames.Options(frame_size=kb << 10, content_aware=content_aware))
                info = frames.read_index(io.BytesIO(blob), len(blob))
                mix = ",".join(sorted({frames.METHOD_NAMES[f.method] for f in info}))
                print(json.dumps({"file": path.name, "frame_kb": kb, "split": "content" if content_aware else "fixed",
                                  "frames": len(info), "methods": mix, "bytes": len(blob),
                                  "bits_per_byte": round(8 * len(blob) / len(data), 4)}), flush=True)


def memory(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "input"
        make_input(src, int(args.input_mb * 2**20))
        for kb in args.sizes_kb:
            size = ["--frame-size", f"{kb}K"]
            rss_c, t_c = run_child(["compress", "-q", "--model", args.model, "--method", args.method, *size,
                                    str(src), "-o", f"{src}.llz", "-f"])
            rss_d, t_d = run_child(["decompress", "-q", "--model", args.model, f"{src}.llz", "-o", f"{src}.out", "-f"])
            same = Path(f"{src}.out").read_bytes() == src.read_bytes()
            print(json.dumps({"frame_kb": kb, "input_mb": args.input_mb, "method": args.method,
                              "archive_bytes": Path(f"{src}.llz").stat().st_size,
                              "compress_peak_rss_mb": round(rss_c, 1), "compress_s": round(t_c, 1),
                              "decompress_peak_rss_mb": round(rss_d, 1), "decompress_s": round(t_d, 1),
                              "round_trip": same}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("ratio")
    r.add_argument("files", nargs="+", type=Path)
    r.add_argument("--model", default="embedded")
    r.add_argument("--sizes-kb", type=int, nargs="+", default=[64, 256, 1024])
    r.add_argument("--fixed", action="store_true", help="also fixed-size frames")
    m = sub.add_parser("memory")
    m.add_argument("--model", default=str(HERE.parent / "tests" / "data" / "golden-tiny"))
    m.add_argument("--sizes-kb", type=int, nargs="+", default=[256, 1024, 4096])
    m.add_argument("--input-mb", type=float, default=8)
    m.add_argument("--method", default="lm", choices=["auto", "lm", "ppmd", "lzma", "bz2", "stored"])
    args = p.parse_args()
    ratio(args) if args.what == "ratio" else memory(args)


if __name__ == "__main__":
    main()
