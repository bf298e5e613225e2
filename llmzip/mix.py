"""Context mixing: adaptive in-file models mixed into the language model's tables.

A small LM knows the language but not the file. :class:`Mixer` learns the file as it is coded
and mixes three kinds of predictions into every coding table:

* the LM table (dense, one entry per token);
* token n-gram counts of several orders: the last ``o`` tokens of a row, hashed into one shared
  table of slots, each holding up to ``slot_width`` tokens seen after that context with counts;
* a match model: the last ``match_min`` tokens, hashed to the last file position that followed
  them; while the following tokens keep agreeing, it predicts the next one of that earlier copy.

The mixture is linear, ``P = sum_m pi_m P_m``, with softmax gates ``pi_m ~ exp(theta[m, c_m])``
over the models that have a prediction. Each sparse model has a confidence class ``c_m`` (how
often its context was seen and whether it was deterministic; how long the match is), and the
weights ``theta`` take one online gradient step on the coding loss after every token:
``theta_m += lr * (responsibility_m - pi_m)``. Statistics and weights are shared by all rows
(chunks) and all groups: at step ``t`` the decoder knows every row's first ``t`` tokens.

Invariants:

* Every number that shapes a table is an integer (numpy int64/uint64, wrapping hashes); the
  only transcendental is :func:`llmzip.fixedpoint.exp_table`, exact on every machine. So the
  decoder rebuilds bit-identical tables whatever the batch size or machine.
* Every output table entry is >= 1 and every total is at most ``2**28 + 2 * V`` (< 2**30).
* The dense work per row per step is a sum and a multiply-shift-add pass over the vocabulary;
  the rest costs O(orders * slot_width) per row.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from .fixedpoint import exp_table
from .mixparams import DEFAULT_MIX, PRESETS, MixParams

__all__ = ["Mixer", "MixParams", "DEFAULT_MIX", "PRESETS"]

MASS_BITS = 28                   # a mixed table spreads 2**28 of mass, plus a floor of 1 per entry
PROB_BITS = 16                   # gates and responsibilities: 2**16 is probability 1
THETA_FRAC = 16                  # weights are log-domain, in units of 2**-16 nat
THETA_LIMIT = 16 << THETA_FRAC   # log-weights are clipped to [-16, +8] nats
THETA_TOP = 8 << THETA_FRAC
GATE_FRAC = 8                    # gates read exp() at 1/256 nat resolution
CLASSES = 16                     # confidence classes per model
MATCH_VERIFY = 32                # a new match is verified (and measured) over at most this many tokens
_U64 = np.uint64
_MUL = _U64(0x9E3779B97F4A7C15)  # hashing: multiply-xorshift over uint64 (wraps mod 2**64)
_MUL2 = _U64(0xBF58476D1CE4E5B9)
# Confidence class of an n-gram context from its total count (cap 63) and determinism.
_COUNT_CLASS = np.array([0, 0, 1, 2, 3, 3, 4, 4, 4] + [5] * 6 + [6] * 16 + [7] * 33)
# Initial log-weights relative to the LM, in 1/16 nat (see _prior).
_PRIOR = {"order 0": -48, "seen once": -24, "deterministic": 8, "mixed": -24,
          "short match": -16, "match": 8, "long match": 40}
# Confidence class of a match from its verified length (cap 63).
_LENGTH_CLASS = np.array(list(range(12)) + [12] * 4 + [13] * 8 + [14] * 8 + [15] * 32)


@functools.lru_cache(maxsize=None)
def _gate_table() -> np.ndarray:
    """``round(2**30 * exp(-i / 256))`` for i < 24 * 256, then 0 (exact, see exp_table)."""
    return exp_table(GATE_FRAC, 30, 24.0)


def _gate(theta: np.ndarray) -> np.ndarray:
    """``round(2**30 * exp(theta - 8 nats))`` for log-weights in [-16, 8] nats (2**-16 nat units)."""
    table = _gate_table()
    return table[np.minimum((THETA_TOP - theta) >> (THETA_FRAC - GATE_FRAC), len(table) - 1)]


def _prior(orders: tuple[int, ...], gap: int) -> np.ndarray:
    """Initial log-weights (M, CLASSES) in 2**-16 nat: 0 for the LM, and for the other models
    about where they settle on typical files, lowered by ``gap`` / 16 nat."""
    cls = np.arange(CLASSES)
    count, det = cls // 2, cls % 2
    ngram = np.where(det == 1, np.where(count == 0, _PRIOR["seen once"], _PRIOR["deterministic"]),
                     _PRIOR["mixed"])
    rows = [np.full(CLASSES, _PRIOR["order 0"]) if o == 0 else ngram for o in orders]
    rows.append(np.where(cls < 8, _PRIOR["short match"],
                         np.where(cls < 12, _PRIOR["match"], _PRIOR["long match"])))
    theta = np.stack([np.zeros(CLASSES, dtype=np.int64)] + [r - gap for r in rows])
    return theta.astype(np.int64) << (THETA_FRAC - 4)


class _Step(NamedTuple):
    """The sparse side of one step's mixture (R rows), from :meth:`Mixer.prepare`."""

    tok: np.ndarray          # (R, S) candidate tokens
    share: np.ndarray        # (R, S) their mass in the table
    cls: np.ndarray          # (R, M) confidence classes (-1: no prediction)
    mass: np.ndarray         # (R, M) gates
    slot: np.ndarray         # (R, O) n-gram slots of the contexts
    chk: np.ndarray          # (R, O) and their check values


def _counted(tok: list[int], cnt: list[int]) -> dict[int, int]:
    """Token -> index of its entry with a nonzero count (the first such entry)."""
    return {t: i for i, (t, n) in reversed(list(enumerate(zip(tok, cnt)))) if n}


def _finish_hash(h: np.ndarray) -> np.ndarray:
    """Avalanche a uint64 hash so that its low and high bits both depend on every input."""
    h = h ^ (h >> _U64(29))
    h = h * _MUL2
    return h ^ (h >> _U64(32))


class Mixer:
    """Mixes adaptive in-file models into LM tables; one instance codes one whole file.

    Usage, identical in the encoder and the decoder: ``begin_group(rows)`` for every group in
    order; then for every step ``t``: ``tables(lm)`` with the LM tables of the live rows (a
    prefix of the group's rows, all at step ``t``), code with the result, ``update(tokens)``
    with the tokens coded at that step. Rows are chunks of ``chunk_tokens`` tokens laid out in
    file order, so a match may run from one chunk into the next. Same tables, other shapes:
    ``prepare(rows)``, then ``tables(lm, first)`` per row range; ``coding_terms(lm, tokens)``.

    Sparse candidates of a row are laid out in ``S = len(orders) * slot_width + 1`` columns:
    block ``i`` holds the slot of order ``orders[i]``, the last column the match prediction.
    """

    def __init__(self, vocab_size: int, params: MixParams, chunk_tokens: int, token_count: int = 0) -> None:
        """``token_count`` (the file's, if known) sizes the position buffer once instead of doubling it."""
        p = self.params = params
        self.vocab_size, self.chunk = vocab_size, chunk_tokens
        self._models = 2 + len(p.orders)                                # LM, orders..., match
        self._slot_chk = np.zeros(1 << p.hash_bits, dtype=np.int32)     # 0: empty slot
        self._slot_tok = np.zeros((1 << p.hash_bits, p.slot_width), dtype=np.int32)
        self._slot_cnt = np.zeros((1 << p.hash_bits, p.slot_width), dtype=np.uint16)
        self._match_pos = np.zeros(1 << p.match_bits, dtype=np.int64)  # next position; 0: none
        chunks = -(-token_count // chunk_tokens)
        self._buf = np.full(chunks * chunk_tokens + 1, -1, dtype=np.int32)   # token by file position; -1: unknown
        self._theta = _prior(p.orders, p.init_gap)
        self._entry_model = np.repeat(np.arange(1, self._models), [p.slot_width] * len(p.orders) + [1])
        self._hist_len = max(p.orders[-1], p.match_min, 1)
        self._base, self._rows = 0, 0
        self._step: _Step | None = None     # this step's sparse predictions (prepare())
        self._mixed = 0                     # rows mixed so far at this step
        self._coded: list[tuple[np.ndarray | None, np.ndarray | None]] = []   # (tables, or entries)
        self.begin_group(0)

    def begin_group(self, rows: int) -> None:
        """Start a group of ``rows`` chunks, each at BOS; they follow the previous group's."""
        self._base += self._rows * self.chunk
        self._rows, self._t = rows, 0
        self._step, self._mixed, self._coded = None, 0, []
        need = self._base + rows * self.chunk + 1         # + 1: a match may point one past the end
        if need > len(self._buf):
            grown = np.full(max(need, 2 * len(self._buf)), -1, dtype=np.int32)
            grown[: len(self._buf)] = self._buf
            self._buf = grown
        self._hist = np.full((rows, self._hist_len), -1, dtype=np.int64)   # [:, 0] is the newest
        self._mptr = np.full(rows, -1, dtype=np.int64)    # file position the match predicts
        self._mlen = np.zeros(rows, dtype=np.int64)       # verified length of the match

    # ------------------------------------------------------------------ prediction

    def tables(self, lm: np.ndarray, first: int = 0) -> np.ndarray:
        """Mixed int64 tables (R, V) for rows ``first``... ``first + R - 1`` of the group at the
        current step. A step may be mixed in several calls over consecutive row ranges (from
        row 0, in order; :meth:`prepare` first) before its :meth:`update`: the tables are the
        same either way.

        Args:
            lm: (R, V) integer LM tables, entries >= 1, totals <= 2**30.
            first: the group row of ``lm[0]``.

        Returns:
            int64 (R, V), entries >= 1, totals <= 2**28 + 2 * V.
        """
        out, tok, share = self._mix(lm, first)
        out += 1                                            # LM part: floor(lm * mass / total) + 1
        np.add.at(out, (np.repeat(np.arange(len(out)), tok.shape[1]), tok.ravel()), share.ravel())
        self._coded.append((out, None))                     # learning reads the coded entries
        return out

    def coding_terms(self, lm: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What an encoder needs of ``tables(lm)`` to code tokens ``x`` (R,), without building
        the tables: ``(cum, freq, total)``, each (R,) int64, equal to ``cdf[x]``, ``table[x]``
        and the row sums of :meth:`tables` (tested). Learning then proceeds as after ``tables``.
        """
        dense, tok, share = self._mix(lm, 0)                # tables(lm) == dense + 1 + scattered shares
        rows, vocab = dense.shape
        starts = np.arange(rows) * vocab
        seg = np.add.reduceat(dense.ravel(), np.stack([starts, starts + x], 1).ravel()).reshape(rows, 2)
        below = np.where(x > 0, seg[:, 0], 0)               # reduceat gives dense[start] for an empty prefix
        freq = dense[np.arange(rows), x] + 1 + np.where(tok == x[:, None], share, 0).sum(1)
        cum = below + x + np.where(tok < x[:, None], share, 0).sum(1)
        total = below + seg[:, 1] + vocab + share.sum(1)
        self._coded.append((None, freq))
        return cum, freq, total

    def prepare(self, rows: int) -> None:
        """Compute this step's sparse predictions and gates for its first ``rows`` rows (the rows
        the step will mix). Optional: mixing row 0 does it otherwise; a decoder calls it while
        it waits for the LM tables, and a step mixed in several row ranges must call it first."""
        slot, chk = self._context_hashes(rows)              # (R, O)
        tok, cnt, cls, totals = self._sparse(slot, chk, rows)
        mass = self._gates(cls)                             # (R, M), sums to <= 2**28
        em = self._entry_model
        share = cnt * mass[:, em] // np.maximum(totals[:, em], 1)
        self._step = _Step(tok, share, cls, mass, slot, chk)

    def _mix(self, lm: np.ndarray, first: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The mixture's parts for rows ``first``...: ``floor(lm * mass_LM / total)`` (R, V)
        int64, and the sparse candidates' tokens and shares (R, S)."""
        stop = first + lm.shape[0]
        if first != self._mixed:
            raise ValueError(f"rows must be mixed in order: expected row {self._mixed}, got {first}")
        if first == 0 and self._step is None:
            self.prepare(stop)
        if self._step is None or stop > len(self._step.tok):
            raise ValueError("prepare() the step for all the rows it mixes")
        mass = self._step.mass[first:stop]
        dense = lm.astype(np.int64)                         # (a copy: lm may be int32)
        scale = (mass[:, 0] << MASS_BITS) // dense.sum(1)   # lm * scale <= mass * 2**28 <= 2**56
        dense *= scale[:, None]
        dense >>= MASS_BITS
        self._mixed = stop
        return dense, self._step.tok[first:stop], self._step.share[first:stop]

    def _sparse(self, slot: np.ndarray, chk: np.ndarray,
                rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Candidates of the sparse models for the first R rows: tokens and counts (R, S),
        classes (R, M), and each model's total count (R, M).

        Absent candidates have count 0 (and token 0); class -1 marks a model without a prediction.
        """
        tok = self._slot_tok[slot].astype(np.int64)         # (R, O, K)
        cnt = self._slot_cnt[slot].astype(np.int64) * (self._slot_chk[slot] == chk)[..., None]
        total = cnt.sum(-1)
        det = (cnt > 0).sum(-1) == 1
        cls = np.full((rows, self._models), -1, dtype=np.int64)
        cls[:, 0] = 0
        cls[:, 1:-1] = np.where(total > 0, _COUNT_CLASS[np.minimum(total, 63)] * 2 + det, -1)
        ptr = self._mptr[:rows]
        mtok = np.where(ptr >= 0, self._buf[np.maximum(ptr, 0)], -1).astype(np.int64)
        known = mtok >= 0
        cls[:, -1] = np.where(known, _LENGTH_CLASS[np.minimum(self._mlen[:rows], 63)], -1)
        totals = np.concatenate([np.zeros((rows, 1), np.int64), total, known[:, None]], axis=1)
        toks = np.concatenate([tok.reshape(rows, -1), np.maximum(mtok, 0)[:, None]], axis=1)
        cnts = np.concatenate([cnt.reshape(rows, -1), known[:, None]], axis=1)
        return toks, cnts, cls, totals

    def _context_hashes(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Slot index and check value (R, O) of each order's context; check 0 while t < order."""
        p = self.params
        h = np.zeros(rows, dtype=_U64)
        slots, chks = [], []
        for j in range(p.orders[-1] + 1):
            if j:
                h = (h ^ self._hist[:rows, j - 1].astype(_U64)) * _MUL + _U64(j)
            if j in p.orders:
                f = _finish_hash(h)
                slots.append((f & _U64((1 << p.hash_bits) - 1)).astype(np.int64))
                chks.append(((f >> _U64(40)) | _U64(1)).astype(np.int64) * (self._t >= j))
        return np.stack(slots, 1), np.stack(chks, 1)

    def _gates(self, cls: np.ndarray) -> np.ndarray:
        """Mass (R, M) of each model, in 2**-28: softmax of its log-weight over the predicting models."""
        g = _gate(self._theta[np.arange(self._models), np.maximum(cls, 0)])
        g[cls < 0] = 0
        return (g << MASS_BITS) // g.sum(1, keepdims=True)

    # ------------------------------------------------------------------ learning

    def update(self, tokens: np.ndarray) -> None:
        """Learn from the tokens (R,) of rows 0...R-1 just coded with this step's :meth:`tables`
        or :meth:`coding_terms` (which must have covered exactly those rows)."""
        x = np.asarray(tokens, dtype=np.int64)
        rows = len(x)
        step, freq = self._step, self._coded_entries(x)
        self._step, self._mixed, self._coded = None, 0, []
        self._learn_weights(x, step, freq)
        self._learn_ngrams(x, step.slot, step.chk)
        pos = self._base + np.arange(rows) * self.chunk + self._t
        self._buf[pos] = x
        self._hist[:rows, 1:] = self._hist[:rows, :-1]
        self._hist[:rows, 0] = x
        self._t += 1
        if self.params.match_min:
            self._learn_match(x, pos)

    def _coded_entries(self, x: np.ndarray) -> np.ndarray:
        """The table entries (R,) of the tokens coded at this step, from the mixed row ranges."""
        if self._step is None or self._mixed != len(x) or len(self._step.tok) != len(x):
            raise ValueError("update() needs the tokens of exactly the rows mixed at this step")
        coded, first = [], 0
        for table, freq in self._coded:
            n = len(freq if table is None else table)
            coded.append(freq if table is None else table[np.arange(n), x[first:first + n]])
            first += n
        return coded[0] if len(coded) == 1 else np.concatenate(coded)

    def _learn_weights(self, x: np.ndarray, step: _Step, freq: np.ndarray) -> None:
        """One gradient step on -log P(x): ``theta_m += lr * (responsibility_m - mass_m)``.

        The responsibility of a sparse model is its part of the coded token's table entry; the
        LM's weight stays 0 (softmax gates are shift-invariant, so it is the reference).
        """
        tok, share, cls, mass = step.tok, step.share, step.cls, step.mass
        rows, orders, width = len(x), len(self.params.orders), self.params.slot_width
        hit = np.where(tok == x[:, None], share, 0)
        part = np.concatenate([hit[:, :-1].reshape(rows, orders, width).sum(-1), hit[:, -1:]], axis=1)
        resp = (part << PROB_BITS) // freq[:, None]
        grad = ((resp - (mass[:, 1:] >> (MASS_BITS - PROB_BITS))) * self.params.lr) >> 4
        active = cls[:, 1:] >= 0
        models = np.broadcast_to(np.arange(1, self._models), active.shape)
        np.add.at(self._theta, (models[active], cls[:, 1:][active]), grad[active])
        np.clip(self._theta, -THETA_LIMIT, THETA_TOP, out=self._theta)

    def _learn_ngrams(self, x: np.ndarray, slot: np.ndarray, chk: np.ndarray) -> None:
        """Count x after each order's context; a slot met by several rows updates in row order."""
        live = chk > 0
        slots, chks = slot[live], chk[live]
        toks = np.broadcast_to(x[:, None], slot.shape)[live]
        _, first = np.unique(slots, return_index=True)
        first.sort()
        self._count(slots[first], chks[first], toks[first])
        if len(first) < len(slots):                         # repeated slots: the rest, in row order
            rest = np.delete(np.arange(len(slots)), first)
            runs: dict[int, list[tuple[int, int]]] = {}
            for s, c, t in zip(slots[rest].tolist(), chks[rest].tolist(), toks[rest].tolist()):
                runs.setdefault(s, []).append((c, t))
            for s, items in runs.items():                   # slots are independent of each other
                self._count_run(s, items)

    def _count(self, slot: np.ndarray, chk: np.ndarray, x: np.ndarray) -> None:
        """Add x to distinct slots: bump its count, else replace the least counted token."""
        ar = np.arange(len(slot))
        tok, cnt = self._slot_tok[slot], self._slot_cnt[slot]
        cnt[self._slot_chk[slot] != chk] = 0
        hit = (tok == x[:, None]) & (cnt > 0)
        has = hit.any(1)
        k = np.where(has, hit.argmax(1), cnt.argmin(1))
        tok[ar, k] = x
        cnt[ar, k] = np.where(has, cnt[ar, k] + 1, 1)
        cnt[cnt.max(1) > self.params.count_limit] >>= 1
        self._slot_chk[slot], self._slot_tok[slot], self._slot_cnt[slot] = chk, tok, cnt

    def _count_run(self, slot: int, items: list[tuple[int, int]]) -> None:
        """:meth:`_count` for one slot and a run of (check, token) updates applied in order, in
        plain Python (same rule, same result as one call per update; the slot is read and
        written once, which matters for order 0: every row of a step shares its slot).

        ``where`` maps each counted token to its entry: a token has at most one entry with a
        count (a new entry is only made when it has none), which is the one :meth:`_count` finds.
        """
        limit = self.params.count_limit
        tok, cnt = self._slot_tok[slot].tolist(), self._slot_cnt[slot].tolist()
        current = int(self._slot_chk[slot])
        where = _counted(tok, cnt)
        for chk, x in items:
            if current != chk:
                cnt, current, where = [0] * len(cnt), chk, {}
            k = where.get(x)
            if k is None:                                   # replace the first least counted entry
                k = cnt.index(min(cnt))
                if cnt[k]:
                    del where[tok[k]]
                tok[k], cnt[k], where[x] = x, 1, k          # 1 <= limit: no halving
            else:
                cnt[k] += 1
                if cnt[k] > limit:                          # only the bumped entry can exceed it
                    cnt = [n >> 1 for n in cnt]
                    where = _counted(tok, cnt)
        self._slot_chk[slot], self._slot_tok[slot], self._slot_cnt[slot] = current, tok, cnt

    def _learn_match(self, x: np.ndarray, pos: np.ndarray) -> None:
        """Follow or drop each row's match, look up a new one, then record this context."""
        rows, k = len(x), self.params.match_min
        ptr, mlen = self._mptr[:rows], self._mlen[:rows]
        ok = (ptr >= 0) & (self._buf[np.maximum(ptr, 0)] == x)
        ptr[:] = np.where(ok, ptr + 1, -1)
        mlen[:] = np.where(ok, mlen + 1, 0)
        if self._t < k:
            return
        h = np.zeros(rows, dtype=_U64)
        for j in range(k):
            h = (h ^ self._hist[:rows, j].astype(_U64)) * _MUL + _U64(j + 101)
        key = (_finish_hash(h) & _U64((1 << self.params.match_bits) - 1)).astype(np.int64)
        seek = np.flatnonzero(ptr < 0)
        found = self._match_pos[key[seek]]
        seek, found = seek[found > 0], found[found > 0]
        length = self._verify(found, pos[seek])
        good = length >= k
        ptr[seek[good]], mlen[seek[good]] = found[good], length[good]
        last = rows - 1 - np.unique(key[::-1], return_index=True)[1]   # the last row wins
        self._match_pos[key[last]] = pos[last] + 1

    def _verify(self, found: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """How many tokens before ``found`` equal those ending at ``pos`` (at most MATCH_VERIFY)."""
        back = np.arange(MATCH_VERIFY)
        a = found[:, None] - 1 - back
        b = pos[:, None] - back
        ta = self._buf[np.maximum(a, 0)]
        same = (a >= 0) & (b >= 0) & (ta == self._buf[np.maximum(b, 0)]) & (ta >= 0)
        return np.where(same.all(1), MATCH_VERIFY, same.argmin(1))
