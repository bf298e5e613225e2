"""Engine 4's tables and constants, pinned by value: they are archive arithmetic (engine/versions.py).

The golden archives cover them only on tiny shapes (a few positions, head_dim 8); these digests
cover the shapes real models use. A failure here means engine 4's arithmetic changed: restore it,
and put the new arithmetic in a new engine entry instead.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from llmzip.engine import llama, rope
from llmzip.engine.common import ACT_FRAC, GAMMA_FRAC, RESID_FRAC
from llmzip.fixedpoint import SILU_HALF_RANGE, activation_table, rms_norm, silu

LLAMA3_SCALING = (("factor", "8.0"), ("high_freq_factor", "4.0"), ("low_freq_factor", "1.0"),
                  ("original_max_position_embeddings", "8192"), ("rope_type", "llama3"))


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(np.asarray(a).astype("<i8")).tobytes())
    return h.hexdigest()


def test_engine4_constants():
    assert (llama.MAX_CONTEXT, llama.GATE_CLIP, rope.ROPE_FRAC, SILU_HALF_RANGE) == (2048, 2**24 - 1, 16, 16)
    assert (RESID_FRAC, ACT_FRAC, GAMMA_FRAC) == (16, 12, 14)


@pytest.mark.parametrize("head_dim, theta, scaling, pinned", [
    (64, "10000.0", (), "a3f175357fa0658e39b071e494133747a7ea026c1db939189c2a0168497d439d"),
    (64, "500000.0", LLAMA3_SCALING, "29b20fc14ef9f856f791b4fc0658b4f821942f301e2c20e1b90b3a5ec7bbd5c4"),
    (128, "10000.0", (), "17c0664c13d8372e1bd761c21c83b0835ad5e8ec97716935dfeefb8a489a31fe"),
    (128, "500000.0", LLAMA3_SCALING, "e2ca46b92e4b460590a8d501173065337fa533520fbfa3a16e2f714cddf01e8e"),
])
def test_rope_table(head_dim, theta, scaling, pinned):
    assert _digest(*rope.rope_table(theta, head_dim, scaling, llama.MAX_CONTEXT)) == pinned


def test_silu_table_and_interpolation():
    table = activation_table("silu", 6, SILU_HALF_RANGE, ACT_FRAC)
    assert _digest(table) == "44e38b047f0761782550a65fdb417ad234d269ce4a0c34c06fc76931a641be68"
    u = np.arange(-20 << ACT_FRAC, 20 << ACT_FRAC, 7, dtype=np.int64)   # beyond the table on both sides
    assert _digest(silu(u, ACT_FRAC)) == "484c9aa9e7236df6ea80c92ad4a19858b93c7dbe33aa4391d592d11f0c15c8b2"


def test_rms_norm_on_wide_rows():
    """Width 4096: rows near RESID_CLIP take the row-shift branch, a tiny row makes eps matter."""
    x = np.arange(4 * 4096, dtype=np.int64).reshape(4, 4096)
    h = (x * 2654435761) % 2**31 - 2**30                  # a fixed spread over +-2**30, no RNG
    h[1] >>= 8                                            # below the shift threshold (2**24)
    h[2] >>= 27                                           # |h| <= 8: eps dominates
    h[3] >>= 20
    h[3, 5] = 2**30 - 1                                   # one outlier forces a shift
    gamma = (np.arange(4096) * 7919) % 2**15
    out = rms_norm(h, gamma, 1e-5, RESID_FRAC, ACT_FRAC, GAMMA_FRAC)
    assert _digest(out) == "4fcf1201dc3498d317e2b58947d75117d20bb68ded0a3a7402d1971692ef4f1b"
