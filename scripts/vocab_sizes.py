#!/usr/bin/env python3
"""Bytes per token of byte-level BPEs of several vocabulary sizes, per data group and corpus file.

Each tokenizer is trained exactly as ``train_embedded.py`` trains one (``train_data.train_tokenizer``,
on a smaller sample by default), then scored on the held-out documents of each group (first 200 KB
of each) and on the files of ``../shared/corpus``. More bytes per token means fewer model steps
per byte; a larger vocabulary costs a larger head and quantiser per step::

    python scripts/vocab_sizes.py 4096 8192 16384
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tokenizers import Tokenizer

from train_data import group_of, is_held_out, read_documents, train_tokenizer

ROOT = Path(__file__).resolve().parents[2] / "shared"


def held_out_texts(data: Path) -> tuple[list, dict[str, list[str]]]:
    docs = read_documents(data)
    texts: dict[str, list[str]] = {}
    for d in docs:
        if is_held_out(d):
            texts.setdefault(group_of(d.source), []).append(d.raw[:200_000].decode("utf-8", "replace"))
    return docs, texts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("vocab", type=int, nargs="+")
    p.add_argument("--data", type=Path, default=ROOT / "train")
    p.add_argument("--corpus", type=Path, default=ROOT / "corpus")
    p.add_argument("--sample-mb", type=float, default=16.0, help="tokenizer training sample")
    args = p.parse_args()
    docs, texts = held_out_texts(args.data)
    for path in sorted(args.corpus.glob("*.*")):
        if path.name != "README.md":
            texts[path.name] = [path.read_bytes().decode("utf-8", "replace")]
    with tempfile.TemporaryDirectory() as tmp:
        for vocab in args.vocab:
            out, t = Path(tmp) / f"tok{vocab}.json", time.time()
            train_tokenizer(docs, vocab, out, budget_bytes=int(args.sample_mb * 1e6))
            tok = Tokenizer.from_file(str(out))
            row: dict[str, object] = {"vocab": vocab, "train_s": round(time.time() - t, 1)}
            for name, group in texts.items():
                n_tokens = sum(len(e.ids) for e in tok.encode_batch(group))
                row[name] = round(sum(len(x.encode()) for x in group) / n_tokens, 3)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
