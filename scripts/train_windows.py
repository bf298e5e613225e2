"""Training windows for llmzip's embedded models: the sampler of training batches, the held-out
windows and their score in bits per byte, and the loss both use (torch; the documents, streams
and tokenizer they read are :mod:`train_data`'s).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from train_data import BOS, group_of, source_weights


def lm_loss(model: torch.nn.Module, ids: torch.Tensor, device: str) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy (nats) of predicting ids[:, 1:] and the number of predictions."""
    with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
        logits = model(input_ids=ids).logits
    targets = ids[:, 1:]
    loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)), targets.reshape(-1))
    return loss, targets.numel()


class Sampler:
    """Fixed-length windows; batch k is a pure function of (seed, k)."""

    def __init__(self, work: Path, seed: int, ctx: int, bos: int,
                 group_weights: dict[str, float] | None = None) -> None:
        meta = json.loads((work / "streams.json").read_text())
        sizes = {n[: -len(".train")]: m["bytes"] for n, m in meta.items() if n.endswith(".train")}
        weights = source_weights(sizes, group_weights)
        self.sources = list(weights)
        self.p = np.array([weights[s] for s in self.sources])
        self.streams = [np.load(work / f"{s}.train.npy", mmap_mode="r") for s in self.sources]
        self.seed, self.ctx, self.bos = seed, ctx, bos

    def batch(self, k: int, size: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, k])
        rows = []
        for i in rng.choice(len(self.sources), size=size, p=self.p):
            stream = self.streams[i]
            start = int(rng.integers(0, len(stream) - self.ctx))
            # Every row starts with BOS, like every chunk llmzip codes.
            rows.append(np.concatenate([[self.bos], stream[start : start + self.ctx - 1]]))
        return torch.from_numpy(np.stack(rows).astype(np.int64))


class HeldOut:
    """Fixed windows of every source's held-out stream, scored as bits per byte per source and group."""

    WINDOWS = 4

    def __init__(self, work: Path, ctx: int, bos: int, byte_len: np.ndarray) -> None:
        self.rows: dict[str, np.ndarray] = {}
        for path in sorted(work.glob("*.val.npy")):
            val = np.load(path)
            n = max(1, min(self.WINDOWS, (len(val) - 1) // (ctx - 1)))
            starts = np.linspace(0, max(0, len(val) - ctx), n).astype(np.int64)
            rows = [np.concatenate([[bos], val[s : s + ctx - 1]]) for s in starts]
            self.rows[path.name[: -len(".val.npy")]] = np.stack([r for r in rows if len(r) == ctx])
        self.byte_len = byte_len

    @torch.no_grad()
    def score(self, model: torch.nn.Module, device: str) -> dict[str, float]:
        model.eval()
        bits: dict[str, float] = {}
        nbytes: dict[str, int] = {}
        for source, rows in self.rows.items():
            ids = torch.from_numpy(rows.astype(np.int64)).to(device)
            loss, count = lm_loss(model, ids, device)
            for key in (source, group_of(source), "all"):
                bits[key] = bits.get(key, 0.0) + loss.item() * count / math.log(2)
                nbytes[key] = nbytes.get(key, 0) + int(self.byte_len[rows[:, 1:]].sum())
        model.train()
        return {k: round(bits[k] / nbytes[k], 4) for k in bits}


def token_byte_lengths(tok_path: Path) -> np.ndarray:
    """Bytes each token stands for (ByteLevel: one character per byte; BOS none)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_path))
    lengths = np.zeros(tok.get_vocab_size(), dtype=np.int64)
    for piece, idx in tok.get_vocab().items():
        lengths[idx] = 0 if piece == BOS else len(piece)
    return lengths
