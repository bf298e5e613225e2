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
  the rest costs O(orders * slot_width) per row, in numpy calls over all the rows of a step.

The parts live in :mod:`llmzip.mixing`, each usable and testable alone:
:class:`~llmzip.mixing.ngram.NgramTable` (hashed n-gram counts),
:class:`~llmzip.mixing.match.MatchModel`, :class:`~llmzip.mixing.gates.GateWeights` (log-weights,
gates and their learning) and :mod:`llmzip.mixing.mixture` (the integer mixture of one step).
:class:`Mixer` here is the step protocol that drives them in the codec's order.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import fused
from .mixing import mixture
from .mixing.gates import CLASSES, GateWeights
from .mixing.match import MatchModel
from .mixing.ngram import MAX_VOCAB, NgramTable, confidence
from .mixparams import DEFAULT_MIX, PRESETS, MixParams

__all__ = ["Mixer", "Prediction", "MixParams", "DEFAULT_MIX", "PRESETS", "CLASSES"]

_NONE = np.uint64(2**64 - 1)     # history before a row's first token (as -1 was, wrapped)


class Prediction(NamedTuple):
    """The sparse side of one step's mixture (R rows), from :meth:`Mixer.prepare`.

    Columns ``S`` of the candidates: block ``i`` of ``slot_width`` columns holds the slot of
    order ``orders[i]``, the last column the match prediction (absent: count 0, token 0).
    Models ``M``: the LM, the orders, the match.
    """

    tok: np.ndarray          # (R, S) candidate tokens
    cnt: np.ndarray          # (R, S) their counts in their model
    totals: np.ndarray       # (R, M) each model's total count (0 for the LM)
    share: np.ndarray        # (R, S) the candidates' mass in the table
    cls: np.ndarray          # (R, M) confidence classes (-1: no prediction)
    mass: np.ndarray         # (R, M) gates
    slot: np.ndarray         # (R, O) n-gram slots of the contexts
    chk: np.ndarray          # (R, O) and their check values


class Mixer:
    """Mixes adaptive in-file models into LM tables; one instance codes one whole file.

    Usage, identical in the encoder and the decoder: ``begin_group(rows)`` for every group in
    order; then for every step ``t``: ``tables(lm)`` with the LM tables of the live rows (a
    prefix of the group's rows, all at step ``t``), code with the result, ``update(tokens)``
    with the tokens coded at that step. Rows are chunks of ``chunk_tokens`` tokens laid out in
    file order, so a match may run from one chunk into the next. Same tables, other shapes:
    ``prepare(rows)``, then ``tables(lm, first)`` per row range; ``coding_terms(lm, tokens)``.
    Studies read a step's sparse predictions (:attr:`prediction`) and may code with tables of
    their own, then :meth:`learn`.
    """

    def __init__(self, vocab_size: int, params: MixParams, chunk_tokens: int, token_count: int = 0) -> None:
        """``token_count`` (the file's, if known) sizes the position buffer once instead of doubling it."""
        if not 1 <= vocab_size <= MAX_VOCAB:
            raise ValueError(f"the mixer's n-gram table holds tokens below {MAX_VOCAB}, "
                             f"not a vocabulary of {vocab_size}")
        p = self.params = params
        self.vocab_size, self.chunk = vocab_size, chunk_tokens
        self.model_count = 2 + len(p.orders)                            # LM, orders..., match
        self.ngrams = NgramTable(p)
        self.matches = MatchModel(p, -(-token_count // chunk_tokens) * chunk_tokens + 1)
        self.weights = GateWeights(p.orders, p.init_gap, p.lr)
        self.entry_model = np.repeat(np.arange(1, self.model_count), [p.slot_width] * len(p.orders) + [1])
        self._hist_len = max(p.orders[-1], p.match_min, 1)
        self._base, self._rows = 0, 0
        self._step: Prediction | None = None   # this step's sparse predictions (prepare())
        self._mixed = 0                        # rows mixed so far at this step
        self._coded: list[tuple[np.ndarray | None, np.ndarray | None]] = []   # (tables, or entries)
        self.begin_group(0)

    def begin_group(self, rows: int) -> None:
        """Start a group of ``rows`` chunks, each at BOS; they follow the previous group's."""
        self._base += self._rows * self.chunk
        self._rows, self._t = rows, 0
        self._step, self._mixed, self._coded = None, 0, []
        self.matches.begin_group(self._base + rows * self.chunk + 1, rows)   # + 1: a match may point one past the end
        self._hist = np.full((self._hist_len, rows), _NONE, dtype=np.uint64)   # [0] is the newest

    @property
    def prediction(self) -> Prediction:
        """This step's sparse predictions (after :meth:`prepare`, or mixing its first rows)."""
        if self._step is None:
            raise ValueError("no step prepared")
        return self._step

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
        mass, tok, share = self._step_parts(lm, first)
        if _native(lm):
            out = fused.kernel("mix_tables")(lm, mass, tok, share)
        else:
            out = mixture.tables(mixture.scaled_lm(lm, mass), tok, share)
        self._coded.append((out, None))                     # learning reads the coded entries
        return out

    def coding_terms(self, lm: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What an encoder needs of ``tables(lm)`` to code tokens ``x`` (R,), without building
        the tables: ``(cum, freq, total)``, each (R,) int64, equal to ``cdf[x]``, ``table[x]``
        and the row sums of :meth:`tables` (tested). Learning then proceeds as after ``tables``.
        """
        mass, tok, share = self._step_parts(lm, 0)
        if _native(lm):
            cum, freq, total = fused.kernel("mix_terms")(lm, mass, tok, share, x)
        else:
            cum, freq, total = mixture.coding_terms(mixture.scaled_lm(lm, mass), tok, share, x)
        self._coded.append((None, freq))
        return cum, freq, total

    def prepare(self, rows: int) -> None:
        """Compute this step's sparse predictions and gates for its first ``rows`` rows (the rows
        the step will mix). Optional: mixing row 0 does it otherwise; a decoder calls it while
        it waits for the LM tables, and a step mixed in several row ranges must call it first."""
        slot, chk = self.ngrams.contexts(self._hist[:, :rows], self._t)   # (R, O)
        tok, cnt = self.ngrams.lookup(slot, chk)                          # (R, O, K)
        total, ngram_cls = confidence(cnt)
        mtok, match_cls = self.matches.predict(rows)
        known = (mtok >= 0)[:, None]
        cls = np.concatenate([np.zeros((rows, 1), np.int64), ngram_cls, match_cls[:, None]], axis=1)
        totals = np.concatenate([np.zeros((rows, 1), np.int64), total, known], axis=1)
        toks = np.concatenate([tok.reshape(rows, -1), np.maximum(mtok, 0)[:, None]], axis=1)
        cnts = np.concatenate([cnt.reshape(rows, -1), known], axis=1)
        mass = self.weights.masses(cls)                                   # (R, M), sums to <= 2**28
        share = mixture.shares(cnts, mass, totals, self.entry_model)
        self._step = Prediction(toks, cnts, totals, share, cls, mass, slot, chk)

    def _step_parts(self, lm: np.ndarray, first: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The mixture's parts for rows ``first``... of ``lm``: the LM's gates (R,) and the sparse
        candidates' tokens and shares (R, S)."""
        stop = first + lm.shape[0]
        if first != self._mixed:
            raise ValueError(f"rows must be mixed in order: expected row {self._mixed}, got {first}")
        if first == 0 and self._step is None:
            self.prepare(stop)
        if self._step is None or stop > len(self._step.tok):
            raise ValueError("prepare() the step for all the rows it mixes")
        step = self._step
        self._mixed = stop
        return step.mass[first:stop, 0], step.tok[first:stop], step.share[first:stop]

    # ------------------------------------------------------------------ learning

    def update(self, tokens: np.ndarray) -> None:
        """Learn from the tokens (R,) of rows 0...R-1 just coded with this step's :meth:`tables`
        or :meth:`coding_terms` (which must have covered exactly those rows)."""
        x = np.asarray(tokens, dtype=np.int64)
        self.learn(x, self._coded_entries(x))

    def learn(self, tokens: np.ndarray, freq: np.ndarray) -> None:
        """Learn from the tokens (R,) of the prepared step's rows, coded with table entries
        ``freq`` (R,) (:meth:`update` passes this mixer's own), and move to the next step."""
        x = np.asarray(tokens, dtype=np.int64)
        step, rows = self.prediction, len(x)
        if len(step.tok) != rows:
            raise ValueError(f"the step was prepared for {len(step.tok)} rows, got {rows} tokens")
        self._step, self._mixed, self._coded = None, 0, []
        p = self.params
        self.weights.learn(step.cls, step.mass, mixture.parts(step.tok, step.share, x, len(p.orders), p.slot_width),
                           np.asarray(freq, dtype=np.int64))
        self.ngrams.learn(step.slot, step.chk, x)
        pos = self._base + np.arange(rows) * self.chunk + self._t
        self.matches.buffer[pos] = x
        self._hist[1:, :rows] = self._hist[:-1, :rows]
        self._hist[0, :rows] = x
        self._t += 1
        if p.match_min:
            self.matches.learn(x, pos, self._hist, self._t)

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


def _native(lm: np.ndarray) -> bool:
    """Whether the dense mixing of ``lm`` runs in the native kernels: while the kernels are active
    (:mod:`llmzip.fused`), for the int32 tables the predictor makes."""
    return fused.active() and lm.dtype == np.int32 and lm.ndim == 2
