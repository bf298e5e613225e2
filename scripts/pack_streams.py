#!/usr/bin/env python3
"""Pack a training run's tokenised streams into a few tens of MB, and unpack them elsewhere.

A lent accelerator (see the README's training section) receives only this repository's working
tree, at most 64 MiB of it with what a call carries, and cannot read ``../shared``. The token
streams that ``train_embedded.py`` builds (uint16, 145 MB for ``../shared/train``) fit there only
compressed, and only in part::

    python scripts/pack_streams.py pack --work /work/llmzip-train-llama --out .devdata --budget-mb 50
    python scripts/pack_streams.py unpack --packed .devdata --work /tmp/w      # on the other machine

``pack`` keeps every held-out stream whole (the held-out report stays comparable) and the first
``f`` of every training stream, one fraction ``f`` for all, the largest that fits the budget
(each stream's compressed size is estimated from compressing its first tokens). ``streams.json``
is copied unchanged, so the sampler keeps the run's source weights (they follow the full byte
counts; its token counts then describe the full streams, not the packed ones). Streams are
xz-compressed (Python's ``lzma``: on every machine without extra packages).
``unpack`` restores ``<source>.<split>.npy``, ``streams.json`` and ``tokenizer.json`` into a work
directory that ``train_embedded.py --work`` then uses as if it had tokenised the data itself.
"""

from __future__ import annotations

import argparse
import io
import lzma
import shutil
from pathlib import Path

import numpy as np

SAMPLE_TOKENS = 1 << 20     # tokens compressed to estimate a stream's ratio
MIN_TOKENS = 1 << 13        # tokens kept of any training stream: room for the sampler's windows
PRESET = 6                  # xz level: 9 gains ~1 % here at several times the time
META_FILES = ("tokenizer.json", "streams.json")   # streams.json last: it marks a finished pack


def _xz(tokens: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(tokens))
    return lzma.compress(buf.getvalue(), preset=PRESET)


def _bytes_per_token(tokens: np.ndarray) -> float:
    sample = tokens[:SAMPLE_TOKENS]
    return len(_xz(sample)) / max(1, len(sample))


def keep_fraction(train: dict[str, np.ndarray], fixed_bytes: int, budget: int) -> float:
    """The share of every training stream that fits ``budget`` bytes beside ``fixed_bytes`` (the
    held-out streams and the metadata), 0 to 1."""
    estimate = sum(_bytes_per_token(t) * len(t) for t in train.values())
    room = budget - fixed_bytes
    if room <= 0:
        raise SystemExit(f"the held-out streams and metadata alone take {fixed_bytes / 1e6:.1f} MB: "
                         "raise --budget-mb")
    return min(1.0, room / estimate)


def pack(work: Path, out: Path, budget_mb: float) -> None:
    streams = {p.name[: -len(".npy")]: np.load(p, mmap_mode="r") for p in sorted(work.glob("*.npy"))}
    if not streams:
        raise SystemExit(f"no token streams (*.npy) in {work}")
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty: pack into a new folder (unpack restores every stream it finds)")
    out.mkdir(parents=True, exist_ok=True)
    val = {n: _xz(s) for n, s in streams.items() if n.endswith(".val")}
    train = {n: s for n, s in streams.items() if n.endswith(".train")}
    fixed = sum(map(len, val.values())) + sum((work / m).stat().st_size for m in META_FILES)
    budget = int(budget_mb * 1e6)
    fraction = keep_fraction(train, fixed, budget)
    for name, blob in val.items():
        (out / f"{name}.npy.xz").write_bytes(blob)
    for name, tokens in train.items():
        (out / f"{name}.npy.xz").write_bytes(_xz(tokens[: max(MIN_TOKENS, int(len(tokens) * fraction))]))
    for meta in META_FILES:
        shutil.copyfile(work / meta, out / meta)
    total = sum(f.stat().st_size for f in out.iterdir())
    if total > budget:   # the ratio estimate from each stream's first tokens was optimistic
        raise SystemExit(f"packed {total / 1e6:.1f} MB, over the budget of {budget_mb} MB: delete {out} and "
                         "pack again with a smaller --budget-mb")
    print(f"packed {len(streams)} streams into {out}: {total / 1e6:.1f} MB, {fraction:.1%} of each training stream")


def unpack(packed: Path, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    for path in sorted(packed.glob("*.npy.xz")):
        (work / path.name[: -len(".xz")]).write_bytes(lzma.decompress(path.read_bytes()))
    for meta in META_FILES:
        shutil.copyfile(packed / meta, work / meta)
    print(f"unpacked {packed} into {work}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack", help="compress a work directory's streams into --out, within --budget-mb")
    a.add_argument("--work", type=Path, required=True)
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--budget-mb", type=float, required=True,
                   help="size of the packed folder in MB: what the device call leaves beside the working tree")
    b = sub.add_parser("unpack", help="restore packed streams into a work directory")
    b.add_argument("--packed", type=Path, required=True)
    b.add_argument("--work", type=Path, required=True)
    args = p.parse_args(argv)
    if args.command == "pack":
        pack(args.work, args.out, args.budget_mb)
    else:
        unpack(args.packed, args.work)


if __name__ == "__main__":
    main()
