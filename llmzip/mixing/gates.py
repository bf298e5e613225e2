"""Gate weights: one log-weight per (model, confidence class), softmax gates, online learning.

Model 0 is the LM (its weight stays 0: softmax gates are shift-invariant, so it is the
reference); models 1... are the sparse ones, each with ``CLASSES`` confidence classes.
"""

from __future__ import annotations

import functools

import numpy as np

from ..fixedpoint import exp_table

MASS_BITS = 28                   # a mixed table spreads 2**28 of mass, plus a floor of 1 per entry
PROB_BITS = 16                   # gates and responsibilities: 2**16 is probability 1
THETA_FRAC = 16                  # weights are log-domain, in units of 2**-16 nat
THETA_LIMIT = 16 << THETA_FRAC   # log-weights are clipped to [-16, +8] nats
THETA_TOP = 8 << THETA_FRAC
GATE_FRAC = 8                    # gates read exp() at 1/256 nat resolution
CLASSES = 16                     # confidence classes per model
# Initial log-weights relative to the LM, in 1/16 nat (see prior).
_PRIOR = {"order 0": -48, "seen once": -24, "deterministic": 8, "mixed": -24,
          "short match": -16, "match": 8, "long match": 40}


@functools.lru_cache(maxsize=None)
def _gate_table() -> np.ndarray:
    """``round(2**30 * exp(-i / 256))`` for i < 24 * 256, then 0 (exact, see exp_table)."""
    return exp_table(GATE_FRAC, 30, 24.0)


def gate(theta: np.ndarray) -> np.ndarray:
    """``round(2**30 * exp(theta - 8 nats))`` for log-weights in [-16, 8] nats (2**-16 nat units)."""
    table = _gate_table()
    return table[np.minimum((THETA_TOP - theta) >> (THETA_FRAC - GATE_FRAC), len(table) - 1)]


def prior(orders: tuple[int, ...], gap: int) -> np.ndarray:
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


class GateWeights:
    """Log-weights ``theta`` (M, CLASSES) int64 and what they give: gates, and their update."""

    def __init__(self, orders: tuple[int, ...], gap: int, lr: int) -> None:
        self.theta = prior(orders, gap)
        self.lr = lr
        self._models = np.arange(len(self.theta))[None, :]

    def masses(self, cls: np.ndarray) -> np.ndarray:
        """Mass (R, M) int64 of each model, in 2**-28: softmax of its log-weight over the models
        with a prediction (class >= 0; the LM's class is 0)."""
        g = gate(self.theta[self._models, np.maximum(cls, 0)])
        g[cls < 0] = 0
        return (g << MASS_BITS) // g.sum(1, keepdims=True)

    def learn(self, cls: np.ndarray, mass: np.ndarray, part: np.ndarray, freq: np.ndarray) -> None:
        """One gradient step on -log P(x): ``theta_m += lr * (responsibility_m - mass_m)``.

        ``part`` (R, M - 1): each sparse model's part of the coded token's table entry ``freq``
        (R,); ``cls`` and ``mass`` (R, M) as given to and by :meth:`masses`.
        """
        resp = (part << PROB_BITS) // freq[:, None]
        grad = ((resp - (mass[:, 1:] >> (MASS_BITS - PROB_BITS))) * self.lr) >> 4
        active = cls[:, 1:] >= 0
        models = np.broadcast_to(self._models[:, 1:], active.shape)
        np.add.at(self.theta, (models[active], cls[:, 1:][active]), grad[active])
        np.clip(self.theta, -THETA_LIMIT, THETA_TOP, out=self.theta)
