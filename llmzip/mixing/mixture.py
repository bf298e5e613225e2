"""The integer linear mixture of one step: LM tables scaled to the LM's gate, plus the sparse
models' candidates, each with its share of its model's gate.

A row's table is ``floor(lm * scale / 2**28) + 1`` (``scale = floor(mass_LM * 2**28 / sum(lm))``)
plus, for every sparse candidate ``j`` (token ``tok_j``), ``share_j = floor(cnt_j * mass_m /
total_m)`` added at ``tok_j``. The encoder only needs the coded token's interval
(:func:`coding_terms`), the decoder the whole table (:func:`tables`); both give the same numbers.
"""

from __future__ import annotations

import numpy as np

from .gates import MASS_BITS


def shares(cnt: np.ndarray, mass: np.ndarray, totals: np.ndarray, entry_model: np.ndarray) -> np.ndarray:
    """Mass (R, S) of each candidate: its count's part of its model's gate. ``cnt`` (R, S),
    ``mass`` and ``totals`` (R, M) (each model's gate and total count), ``entry_model`` (S,)."""
    return cnt * mass[:, entry_model] // np.maximum(totals[:, entry_model], 1)


def scaled_lm(lm: np.ndarray, mass_lm: np.ndarray) -> np.ndarray:
    """``floor(lm * scale / 2**28)`` (R, V) int64, the LM's part of the tables without the floor
    of 1. ``lm`` (R, V): entries >= 1, totals <= 2**30; ``mass_lm`` (R,) <= 2**28."""
    dense = lm.astype(np.int64)                         # (a copy: lm may be int32)
    scale = (mass_lm << MASS_BITS) // dense.sum(1)      # lm * scale <= mass * 2**28 <= 2**56
    dense *= scale[:, None]
    dense >>= MASS_BITS
    return dense


def tables(dense: np.ndarray, tok: np.ndarray, share: np.ndarray) -> np.ndarray:
    """The mixed tables (R, V) int64, made in ``dense`` (from :func:`scaled_lm`)."""
    rows, vocab = dense.shape
    dense += 1
    flat = (np.arange(0, rows * vocab, vocab)[:, None] + tok).ravel()
    np.add.at(dense.reshape(-1), flat, share.ravel())   # repeated tokens add up
    return dense


def coding_terms(dense: np.ndarray, tok: np.ndarray, share: np.ndarray,
                 x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(cum, freq, total)`` (R,) int64 of tokens ``x`` in :func:`tables` of the same
    arguments, without building them (one pass over ``dense``)."""
    rows, vocab = dense.shape
    starts = np.arange(0, rows * vocab, vocab)
    seg = np.add.reduceat(dense.reshape(-1), np.stack([starts, starts + x], 1).reshape(-1)).reshape(rows, 2)
    below = np.where(x > 0, seg[:, 0], 0)               # reduceat gives dense[start] for an empty prefix
    hit = tok == x[:, None]
    freq = dense.reshape(-1)[starts + x] + 1 + np.where(hit, share, 0).sum(1)
    cum = below + x + np.where(tok < x[:, None], share, 0).sum(1)
    total = below + seg[:, 1] + vocab + share.sum(1)
    return cum, freq, total


def parts(tok: np.ndarray, share: np.ndarray, x: np.ndarray, orders: int, width: int) -> np.ndarray:
    """Each sparse model's part (R, orders + 1) of the table entries of tokens ``x``: the
    shares of its candidates equal to x (n-gram blocks of ``width`` columns, then the match)."""
    rows = len(x)
    hit = np.where(tok == x[:, None], share, 0)
    part = np.empty((rows, orders + 1), dtype=np.int64)
    part[:, :-1] = np.einsum("row->ro", hit[:, :-1].reshape(rows, orders, width))   # (sum(-1): slow)
    part[:, -1] = hit[:, -1]
    return part
