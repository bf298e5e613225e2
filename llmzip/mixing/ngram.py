"""Token n-gram statistics of the file, in one hashed table shared by every order.

The context of order ``o`` of a row is its last ``o`` tokens, hashed to a slot of
``2**hash_bits``; each slot remembers a check value (0: empty) and up to ``slot_width``
tokens seen after that context, with counts. Slots are shared by all rows and all orders:
a slot met by several rows at one step is updated in row order.
"""

from __future__ import annotations

import numpy as np

from .. import fused
from ..mixparams import MixParams

U64 = np.uint64
MUL = U64(0x9E3779B97F4A7C15)   # hashing: multiply-xorshift over uint64 (wraps mod 2**64)
_MUL2 = U64(0xBF58476D1CE4E5B9)
TOKEN_BITS = 21                 # a table entry packs a token (< 2**21) and its count (< 2**10)
TOKEN_MASK = (1 << TOKEN_BITS) - 1
MAX_VOCAB = 1 << TOKEN_BITS


def finish_hash(h: np.ndarray) -> np.ndarray:
    """Avalanche a uint64 hash so that its low and high bits both depend on every input."""
    h = h ^ (h >> U64(29))
    h = h * _MUL2
    return h ^ (h >> U64(32))


def _counted(tok: list[int], cnt: list[int]) -> dict[int, int]:
    """Token -> index of its entry with a nonzero count (the first such entry)."""
    return {t: i for i, t, n in zip(range(len(tok) - 1, -1, -1), reversed(tok), reversed(cnt)) if n}


class NgramTable:
    """Hashed n-gram counts: contexts -> (slot, check), lookups, and learning.

    The table is one int32 record per slot: its check value (0: empty), then ``slot_width``
    entries ``token | count << TOKEN_BITS`` (counts <= count_limit < 2**10). One record is
    68 bytes for the default width: a lookup misses cache on one or two lines, not three
    arrays', and the table takes 71 MB instead of 100 (first touches of its pages are a
    large part of the cost of coding a small file). ``chk``, ``tok`` and ``cnt`` unpack it.
    A slot's entries only count while its check matches.
    """

    def __init__(self, params: MixParams) -> None:
        self.orders, self.limit = params.orders, params.count_limit
        self.mask = U64((1 << params.hash_bits) - 1)
        self.table = np.zeros((1 << params.hash_bits, 1 + params.slot_width), dtype=np.int32)
        self._salt = [U64(j) for j in range(self.orders[-1] + 1)]
        self._min_t = np.array(self.orders, dtype=np.int64)

    @property
    def chk(self) -> np.ndarray:
        """Check value (slots,) of every slot (0: empty)."""
        return self.table[:, 0]

    @property
    def tok(self) -> np.ndarray:
        """Tokens (slots, slot_width) of every slot's entries (a copy)."""
        return self.table[:, 1:] & TOKEN_MASK

    @property
    def cnt(self) -> np.ndarray:
        """Counts (slots, slot_width) of every slot's entries (a copy)."""
        return self.table[:, 1:] >> TOKEN_BITS

    def contexts(self, history: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Slot and check value (R, O) int64 of each order's context; check 0 while ``t < order``.

        ``history`` (H, R) uint64 holds each row's last tokens, newest first (all ones: none).
        """
        rows = history.shape[1]
        h = np.zeros(rows, dtype=U64)
        hashes = np.empty((len(self.orders), rows), dtype=U64)
        for j in range(self.orders[-1] + 1):
            if j:
                h ^= history[j - 1]
                h *= MUL
                h += self._salt[j]
            if j in self.orders:
                hashes[self.orders.index(j)] = h
        f = finish_hash(hashes.T)
        slot = (f & self.mask).astype(np.int64)
        chk = ((f >> U64(40)) | U64(1)).astype(np.int64) * (t >= self._min_t)
        return slot, chk

    def lookup(self, slot: np.ndarray, chk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and counts (R, O, slot_width) int64 of the contexts; count 0 where the slot
        holds another context (or nothing). By the native kernel while the kernels are active."""
        if fused.active():
            return fused.kernel("ngram_lookup")(self.table, slot, chk)
        return self.lookup_numpy(slot, chk)

    def lookup_numpy(self, slot: np.ndarray, chk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`lookup` by numpy (the reference the native kernel is proven against)."""
        rec = self.table[slot]
        tok = (rec[..., 1:] & TOKEN_MASK).astype(np.int64)
        cnt = (rec[..., 1:] >> TOKEN_BITS).astype(np.int64)
        cnt *= (rec[..., 0] == chk)[..., None]
        return tok, cnt

    def learn(self, slot: np.ndarray, chk: np.ndarray, x: np.ndarray) -> None:
        """Count ``x`` (R,) after each live context (R, O) (check > 0), in row order. By the native
        kernel while the kernels are active: the same updates, one by one in that order."""
        if fused.active():
            fused.kernel("ngram_learn")(self.table, self.limit, slot, chk, x)
        else:
            self.learn_numpy(slot, chk, x)

    def learn_numpy(self, slot: np.ndarray, chk: np.ndarray, x: np.ndarray) -> None:
        """:meth:`learn` by numpy (the reference the native kernel is proven against): the distinct
        slots at once, then the repeated ones slot by slot."""
        live = chk > 0
        slots, chks = slot[live], chk[live]
        toks = np.broadcast_to(x[:, None], slot.shape)[live]
        order = np.argsort(slots, kind="stable")           # grouped by slot, row order within
        head = np.ones(len(order), dtype=bool)
        np.not_equal(slots[order[1:]], slots[order[:-1]], out=head[1:])
        first = order[head]                                 # distinct slots: any order will do
        self.count(slots[first], chks[first], toks[first])
        if not head.all():                                  # repeated slots: the rest, in row order
            rest = order[~head]
            self._count_grouped(slots[rest], chks[rest], toks[rest])

    def count(self, slot: np.ndarray, chk: np.ndarray, x: np.ndarray) -> None:
        """Add x to distinct slots: bump its count, else replace the first least counted token."""
        ar = np.arange(len(slot))
        rec = self.table[slot]
        tok, cnt = rec[:, 1:] & TOKEN_MASK, rec[:, 1:] >> TOKEN_BITS
        cnt[rec[:, 0] != chk] = 0
        hit = (tok == x.astype(np.int32)[:, None]) & (cnt > 0)
        first = hit.argmax(1)                               # (argmax of bool is fast; any() is not)
        has = hit[ar, first]
        k = np.where(has, first, cnt.argmin(1))
        tok[ar, k] = x
        bumped = cnt[ar, k] = np.where(has, cnt[ar, k] + 1, 1)
        cnt[bumped > self.limit] >>= 1                      # stored counts are <= limit: only the
                                                            # bumped entry can exceed it
        rec[:, 0] = chk
        np.bitwise_or(tok, cnt << TOKEN_BITS, out=rec[:, 1:])
        self.table[slot] = rec

    def count_runs(self, slot: np.ndarray, chk: np.ndarray, x: np.ndarray) -> None:
        """:meth:`count` for updates (in order) whose slots may repeat: each slot's updates are
        applied one by one, slots independently; every touched slot is read and written once."""
        order = np.argsort(slot, kind="stable")             # each slot's updates, still in order
        self._count_grouped(slot[order], chk[order], x[order])

    def _count_grouped(self, slot: np.ndarray, chk: np.ndarray, x: np.ndarray) -> None:
        """:meth:`count_runs` for updates already grouped by slot (in order within a slot)."""
        starts = np.flatnonzero(np.concatenate([[True], slot[1:] != slot[:-1]]))
        slots = slot[starts]
        rec = self.table[slots]
        chks, toks, cnts = rec[:, 0].tolist(), (rec[:, 1:] & TOKEN_MASK).tolist(), (rec[:, 1:] >> TOKEN_BITS).tolist()
        bounds, chk_list, x_list = starts.tolist() + [len(slot)], chk.tolist(), x.tolist()
        for i in range(len(slots)):
            a, b = bounds[i], bounds[i + 1]
            chks[i] = self._count_run(chks[i], toks[i], cnts[i], chk_list[a:b], x_list[a:b])
        rec[:, 0] = chks
        rec[:, 1:] = np.array(toks, dtype=np.int32) | (np.array(cnts, dtype=np.int32) << TOKEN_BITS)
        self.table[slots] = rec

    def _count_run(self, current: int, tok: list[int], cnt: list[int], chks: list[int], xs: list[int]) -> int:
        """Apply the updates ``(chks[i], xs[i])`` in order to one slot given as lists (changed in
        place); returns its final check. Same rule, same result as one :meth:`count` per update.

        ``where`` maps each counted token to its entry: a token has at most one entry with a
        count (a new entry is only made when it has none), which is the one :meth:`count` finds.
        """
        limit = self.limit
        where = _counted(tok, cnt)
        for chk, x in zip(chks, xs):
            if current != chk:
                cnt[:], current, where = [0] * len(cnt), chk, {}
            k = where.get(x)
            if k is None:                                   # replace the first least counted entry
                low = min(cnt)
                k = cnt.index(low)
                if low:
                    del where[tok[k]]
                tok[k] = x
                cnt[k] = 1                                  # 1 <= limit: no halving
                where[x] = k
            else:
                n = cnt[k] = cnt[k] + 1
                if n > limit:                               # only the bumped entry can exceed it
                    cnt[:] = [n >> 1 for n in cnt]
                    where = _counted(tok, cnt)
        return current

# Confidence class of an n-gram context from its total count (cap 63) and determinism.
_COUNT_CLASS = np.array([0, 0, 1, 2, 3, 3, 4, 4, 4] + [5] * 6 + [6] * 16 + [7] * 33)


def confidence(cnt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Total count (R, O) of each context's candidates ``cnt`` (R, O, slot_width), and its
    confidence class (-1: never seen): ``2 * class of the total + (one token only)``."""
    total = np.einsum("rok->ro", cnt)                 # (sum(-1) is slow on a short last axis)
    det = np.einsum("rok->ro", (cnt > 0).view(np.int8)) == 1
    return total, np.where(total > 0, _COUNT_CLASS[np.minimum(total, 63)] * 2 + det, -1)
