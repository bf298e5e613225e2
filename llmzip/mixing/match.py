"""The match model: the last ``match_min`` tokens of a row, hashed to the file position that
last followed them; while the following tokens keep agreeing, it predicts the next one of that
earlier copy. Rows are chunks laid out in file order, so a match may run from one chunk into
the next.
"""

from __future__ import annotations

import numpy as np

from ..mixparams import MixParams
from .ngram import MUL, U64, finish_hash

MATCH_VERIFY = 32                # a new match is verified (and measured) over at most this many tokens
# Confidence class of a match from its verified length (cap 63).
_LENGTH_CLASS = np.array(list(range(12)) + [12] * 4 + [13] * 8 + [14] * 8 + [15] * 32)


class MatchModel:
    """Tokens by file position, the match table, and each row's current match.

    ``buffer`` holds the token at every file position coded so far (-1: unknown); a row's
    match is a pointer to the position it predicts (-1: none) and a verified length.
    """

    def __init__(self, params: MixParams, positions: int) -> None:
        """``positions``: the buffer's initial size (it doubles when a group needs more)."""
        self.min_len = params.match_min
        self.mask = U64((1 << params.match_bits) - 1)
        self.table = np.zeros(1 << params.match_bits, dtype=np.int64)   # next position; 0: none
        self.buffer = np.full(positions, -1, dtype=np.int32)
        self._salt = [U64(j + 101) for j in range(self.min_len)]
        self.begin_group(0, 0)

    def begin_group(self, end: int, rows: int) -> None:
        """Rows start without a match; the buffer grows to hold ``end`` positions."""
        if end > len(self.buffer):
            grown = np.full(max(end, 2 * len(self.buffer)), -1, dtype=np.int32)
            grown[: len(self.buffer)] = self.buffer
            self.buffer = grown
        self.ptr = np.full(rows, -1, dtype=np.int64)      # file position the match predicts
        self.length = np.zeros(rows, dtype=np.int64)      # verified length of the match

    def predict(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Predicted token (R,) int64 of the first R rows (-1: none) and its class (R,) (-1: none)."""
        ptr = self.ptr[:rows]
        tok = np.where(ptr >= 0, self.buffer[np.maximum(ptr, 0)], -1).astype(np.int64)
        return tok, np.where(tok >= 0, _LENGTH_CLASS[np.minimum(self.length[:rows], 63)], -1)

    def learn(self, x: np.ndarray, pos: np.ndarray, history: np.ndarray, t: int) -> None:
        """After x (R,) was coded at file positions ``pos`` (already in the buffer, and newest
        in ``history`` (H, R) uint64, ``t`` tokens into the rows): follow or drop each row's
        match, look up a new one, then record this context."""
        rows, k = len(x), self.min_len
        ptr, length = self.ptr[:rows], self.length[:rows]
        ok = (ptr >= 0) & (self.buffer[np.maximum(ptr, 0)] == x)
        ptr[:] = np.where(ok, ptr + 1, -1)
        length[:] = np.where(ok, length + 1, 0)
        if t < k:
            return
        h = np.zeros(rows, dtype=U64)
        for j in range(k):
            h ^= history[j, :rows]
            h *= MUL
            h += self._salt[j]
        key = (finish_hash(h) & self.mask).astype(np.int64)
        seek = np.flatnonzero(ptr < 0)
        found = self.table[key[seek]]
        seek, found = seek[found > 0], found[found > 0]
        verified = self._verify(found, pos[seek])
        good = verified >= k
        ptr[seek[good]], length[seek[good]] = found[good], verified[good]
        last = rows - 1 - np.unique(key[::-1], return_index=True)[1]   # the last row wins
        self.table[key[last]] = pos[last] + 1

    def _verify(self, found: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """How many tokens before ``found`` equal those ending at ``pos`` (at most MATCH_VERIFY)."""
        back = np.arange(MATCH_VERIFY)
        a = found[:, None] - 1 - back
        b = pos[:, None] - back
        ta = self.buffer[np.maximum(a, 0)]
        same = (a >= 0) & (b >= 0) & (ta == self.buffer[np.maximum(b, 0)]) & (ta >= 0)
        return np.where(same.all(1), MATCH_VERIFY, same.argmin(1))
