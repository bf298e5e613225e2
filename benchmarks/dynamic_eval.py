#!/usr/bin/env python3
"""What would adapting the LM's weights to the file (dynamic evaluation) be worth? A float estimate.

    python benchmarks/dynamic_eval.py [--files treasure_island.txt] [--lr 3e-4] [--epochs 3] [--group 128]

The float32 Hugging Face form of the embedded model codes the file in the codec's chunks
(each from BOS), ``--group`` chunks at a time, as a lockstep decoder could: group ``g`` is
scored with the weights trained (Adam, ``--epochs`` passes) on groups ``0 .. g-1``; the
decoder knows those groups' tokens by then. The float logits are quantised as the engine's
are (1/256 nat, the codec's tables), and the tables are also fed to the codec's default mixer
(see mix_study.py): ideal bits per byte, LM alone and mixed, without and with adaptation. This is an estimate of the possible gain only: llmzip cannot
ship it as is, because float training is not reproducible across machines (a decoder would
need an exact integer backward pass and optimizer, like the exact forward engine).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llmzip.mix import DEFAULT_MIX  # noqa: E402
from llmzip.model import EMBEDDED_NAME, MODELS_DIR, load_model  # noqa: E402
from llmzip.quantize import freqs_from_logits  # noqa: E402
from mix_study import replay  # noqa: E402

CORPUS = REPO.parent / "shared" / "corpus"


def batch(chunks: list[np.ndarray], bos: int):
    """Inputs (BOS + chunk[:-1]) and targets (chunk) of a list of chunks, padded with -100."""
    import torch

    length = max(len(c) for c in chunks)
    inputs = torch.full((len(chunks), length), bos)
    targets = torch.full((len(chunks), length), -100)
    for i, c in enumerate(chunks):
        inputs[i, 1:len(c)] = torch.from_numpy(c[:-1])
        targets[i, :len(c)] = torch.from_numpy(c)
    return inputs, targets


def tables(model, chunks: list[np.ndarray], bos: int, freq_bits: int) -> np.ndarray:
    """Coding tables (tokens, V) of the chunks: the float logits at 1/256 nat, quantised like the engine's."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(chunks), 32):
            inputs, _ = batch(chunks[i:i + 32], bos)
            logits = model(inputs).logits.double().numpy()
            out += [freqs_from_logits(np.round(logits[j, :len(c)] * 256), freq_bits, np.empty(
                (len(c), logits.shape[-1]), dtype=np.int32)) for j, c in enumerate(chunks[i:i + 32])]
    return np.concatenate(out)


def adapt(model, optimizer, chunks: list[np.ndarray], bos: int, epochs: int) -> None:
    """Train on the chunks, 16 per step, ``epochs`` passes."""
    import torch

    model.train()
    for _ in range(epochs):
        for i in range(0, len(chunks), 16):
            inputs, targets = batch(chunks[i:i + 16], bos)
            loss = torch.nn.functional.cross_entropy(
                model(inputs).logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def run(path: Path, args: argparse.Namespace) -> dict[str, float]:
    """Bits of the file: LM alone and mixed (the codec's default mixing), without and with adaptation."""
    import torch
    from transformers import GPT2LMHeadModel

    loaded = load_model(EMBEDDED_NAME)
    tokens = np.asarray(loaded.tokenizer.encode(path.read_bytes()), dtype=np.int64)
    chunk = loaded.max_context - 1
    chunks = [tokens[i:i + chunk] for i in range(0, len(tokens), chunk)]
    groups = [chunks[i:i + args.group] for i in range(0, len(chunks), args.group)]
    bits = {}
    for adaptive in (False, True):
        torch.manual_seed(0)
        model = GPT2LMHeadModel.from_pretrained(MODELS_DIR / EMBEDDED_NAME, dtype=torch.float32)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        parts = []
        for group in groups:
            parts.append(tables(model, group, loaded.bos_id, loaded.freq_bits))
            if adaptive:
                adapt(model, optimizer, group, loaded.bos_id, args.epochs)
        table = np.concatenate(parts)
        kind = "adapted" if adaptive else "static"
        bits[kind] = float(np.log2(table.sum(1, dtype=np.int64) / table[np.arange(len(tokens)), tokens]).sum())
        bits[kind + " + mixing"] = float(replay(table, tokens, chunk, args.group, DEFAULT_MIX).sum())
    return bits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", nargs="*", default=["treasure_island.txt"])
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--group", type=int, default=128, help="chunks per group (the codec's: 128)")
    args = parser.parse_args()
    for name in args.files:
        size, t0 = (CORPUS / name).stat().st_size, time.perf_counter()
        bits = run(CORPUS / name, args)
        print(f"{name} (lr {args.lr}, {args.epochs} epochs, groups of {args.group}; "
              f"{time.perf_counter() - t0:.0f} s), bits/byte and vs static:", flush=True)
        for kind, value in bits.items():
            print(f"  {kind:<18} {value / size:.4f}  {value / bits['static'] - 1:+.2%}", flush=True)


if __name__ == "__main__":
    main()
