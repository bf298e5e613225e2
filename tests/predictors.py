"""Torch-free predictors for codec tests: the codec only needs the Predictor protocol."""

from __future__ import annotations

import numpy as np


class CountingPredictor:
    """Token counts of the row so far, ``1 + weight * count``: a pure function of the prefix."""

    table_dtype = np.int64
    flops_per_token = 1 << 20   # counts as big enough for worker threads: exercises the threaded path

    def __init__(self, vocab_size: int, max_context: int, bos_id: int, weight: int) -> None:
        self.vocab_size, self.max_context, self.bos_id, self.weight = vocab_size, max_context, bos_id, weight

    def start(self, rows: int) -> np.ndarray:
        return np.zeros((rows, self.vocab_size), dtype=np.int64)

    def advance(self, counts: np.ndarray, tokens: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            out = np.empty(tokens.shape + (self.vocab_size,), dtype=np.int64)
        for t in range(tokens.shape[1]):
            counts[np.arange(len(tokens)), tokens[:, t]] += 1
            out[:, t] = 1 + self.weight * counts
        return out

    def keep(self, counts: np.ndarray, rows: np.ndarray) -> None:
        raise NotImplementedError  # the tests give equal-length rows

    def prepare(self, tokens: int, encoding: bool = False) -> None:
        pass   # nothing to choose
