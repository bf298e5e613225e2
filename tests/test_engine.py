"""The exact engine: close to the float model, and bit-identical however it is scheduled."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from llmzip import fixedpoint
from llmzip.quantize import freqs_from_logits
from conftest import table_digests_by_thread_count

GOLDEN_DIR = Path(__file__).parent / "data" / "golden-tiny"


def _rows(model, n: int, length: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, model.vocab_size, size=(n, length))
    rows[:, 0] = model.bos_id
    return rows


def _tables(model, rows: np.ndarray, step: int | None = None) -> np.ndarray:
    """Tables for every position, feeding ``step`` tokens per call (None: all at once)."""
    state = model.start(len(rows))
    step = step or rows.shape[1]
    return np.concatenate([model.advance(state, rows[:, i : i + step]) for i in range(0, rows.shape[1], step)], 1)


@pytest.fixture(params=[1, 2, 3], ids=["engine1", "engine2", "engine3"])
def model(golden, request):
    """The golden tiny model under each engine arithmetic this build knows."""
    return golden.with_engine(request.param)


LOGIT_TOLERANCE = {1: 2.5 / 256, 2: 0.2, 3: 0.2}   # engines 2 and 3 round weights and activations to 8 bits


def test_exact_logits_are_close_to_the_float_model(model):
    torch = pytest.importorskip("torch")
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(str(GOLDEN_DIR)).eval()
    rows = _rows(model, 3, 40)
    exact = model.engine.logits(model.engine.forward(rows, model.engine.new_cache(3))) / 256.0
    with torch.no_grad():
        ref = hf(torch.tensor(rows)).logits.double().numpy()
    # Logits carry 8 fraction bits; engine 1 adds well under one more unit.
    assert np.abs(exact - ref).max() < LOGIT_TOLERANCE[model.engine_id]


def test_full_pass_equals_incremental_and_blocked(model):
    rows = _rows(model, 3, model.max_context)
    full = _tables(model, rows)
    assert np.array_equal(full, _tables(model, rows, step=1))
    assert np.array_equal(full, _tables(model, rows, step=7))


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_tables_do_not_depend_on_batch_composition(model, batch):
    rows = _rows(model, 8, 30, seed=1)
    alone = _tables(model, rows[5:6])
    others = _rows(model, batch, 30, seed=batch + 10)
    others[batch // 2] = rows[5]                       # same row, different position and company
    assert np.array_equal(_tables(model, others)[batch // 2], alone[0])


def test_tables_are_valid_coding_tables(model):
    tables = _tables(model, _rows(model, 2, 20))
    assert tables.min() >= 1
    assert tables.sum(-1).max() <= 2**model.freq_bits + model.vocab_size


@pytest.mark.parametrize("engine", [1, 2, 3])
def test_thread_count_does_not_change_tables(engine):
    """OpenBLAS (and torch) with 1 and 2 threads, in separate processes, give the same bits."""
    assert len(table_digests_by_thread_count(GOLDEN_DIR, engine)) == 1


def test_exp_table_matches_exp():
    table = fixedpoint.exp_table(8, 30, 20.0)
    x = np.arange(len(table) - 1) / 256.0
    assert np.abs(table[:-1] - np.exp(-x) * 2**30).max() <= 1.0
    assert table[-1] == 0


@pytest.mark.parametrize("kind", ["gelu_new", "gelu"])
def test_gelu_is_close_to_float_gelu(kind):
    torch = pytest.importorskip("torch")
    u = np.arange(-12 * 4096, 12 * 4096, 7, dtype=np.int64)
    approximate = "tanh" if kind == "gelu_new" else "none"
    ref = torch.nn.functional.gelu(torch.tensor(u / 4096.0), approximate=approximate).numpy()
    assert np.abs(fixedpoint.gelu(u, kind, 12) / 4096.0 - ref).max() < 3e-4


@pytest.mark.parametrize("kind", ["gelu_new", "gelu"])
def test_gelu_clipped_equals_gelu_on_every_input(kind):
    clip = 2**20 - 1                                   # the engine's ACT_CLIP: every input it can see
    u = np.arange(-clip, clip + 1, dtype=np.int64)
    assert np.array_equal(fixedpoint.gelu_clipped(u, kind, 12, clip), fixedpoint.gelu(u, kind, 12))


@pytest.mark.parametrize("kind", ["gelu_new", "gelu"])
def test_activation_lookup_equals_gelu_clipped_on_every_input(kind):
    clip = 2**20 - 1                                   # the engine's ACT_CLIP: every input it can see
    u = np.arange(-clip, clip + 1, dtype=np.int64)
    assert np.array_equal(fixedpoint.activation_lookup(u, kind, 12), fixedpoint.gelu_clipped(u, kind, 12, clip))


def test_silu_lookup_equals_the_interpolation_on_every_input_near_the_table():
    """silu is a lookup now: the same numbers as the interpolation it replaced, on every input of
    +-24 real units and on far-away ones (GATE_CLIP = 2**24 - 1 and beyond)."""
    limit = 24 << 12
    u = np.concatenate([np.arange(-limit, limit + 1), [-(2**24 - 1), 2**24 - 1, -(2**40), 2**40]]).astype(np.int64)
    table_range = fixedpoint.SILU_HALF_RANGE << 12
    inside = fixedpoint.gelu_clipped(np.clip(u, -table_range, table_range), "silu", 12, table_range, half_range=16)
    expect = np.where(u > table_range, u, np.where(u < -table_range, 0, inside))
    assert np.array_equal(fixedpoint.silu(u, 12), expect)


def test_linear_float_out_equals_integer_rounding(golden):
    lin = golden.with_engine(1).engine.blocks[0].fc
    x = np.random.default_rng(1).integers(-2**20, 2**20, size=(2, 3, lin.w.shape[0]))
    ref = fixedpoint.rshift_round(fixedpoint.exact_matmul(x, lin.w), lin.shift) + lin.b
    assert np.array_equal(lin(x), ref)
    assert np.array_equal(lin.float_out(x), ref.astype(np.float64))


def test_layer_norm_is_close_to_float_layer_norm():
    rng = np.random.default_rng(0)
    h = rng.normal(0, 3, size=(5, 64))
    h[0] *= 1e-3                                       # tiny variance: eps matters
    h[1] *= 2000                                       # huge values: the row shift kicks in
    gamma, beta = rng.normal(1, 0.2, 64), rng.normal(0, 0.2, 64)
    h_fixed = np.round(h * 2**16).astype(np.int64)
    h = h_fixed / 2**16                                # compare on the same (quantised) input
    out = fixedpoint.layer_norm(
        h_fixed, np.round(gamma * 2**14).astype(np.int64),
        np.round(beta * 2**12).astype(np.int64), 1e-5, 16, 12, 14,
    )
    ref = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5) * gamma + beta
    assert np.abs(out / 2**12 - ref).max() < 2e-3


def test_rshift_round_rounds_half_up():
    a = np.array([-3, -2, -1, 0, 1, 2, 3], dtype=np.int64)
    assert fixedpoint.rshift_round(a, 1).tolist() == [-1, -1, 0, 0, 1, 1, 2]


def test_gemm_bound_is_enforced():
    with pytest.raises(ValueError, match="2\\*\\*53"):
        fixedpoint.check_gemm_bound(2**13, 2**20, 2**20, "test")


def test_freqs_from_logits_floor_and_total():
    logits = np.array([[0, -100000, 5000, 5000], [0, 0, 0, 0]], dtype=np.int64)
    f = freqs_from_logits(logits)
    assert f.min() == 1 and f[0, 1] == 1
    assert f[0, 2] == f[0, 3] and f[1].tolist() == [f[1, 0]] * 4
    assert (f.sum(-1) <= 2**28 + 4).all()


def test_freqs_from_logits_same_for_float_input_and_any_block_split():
    logits = np.random.default_rng(2).integers(-40000, 40000, size=(3, 45, 300))
    f = freqs_from_logits(logits)
    assert np.array_equal(freqs_from_logits(logits.astype(np.float64)), f)
    rows = [freqs_from_logits(logits[i, j]) for i in range(3) for j in range(45)]
    assert np.array_equal(np.stack(rows).reshape(f.shape), f)


def test_fingerprint_is_stable(model):
    # Pins the weight quantisation and the engine's arithmetic version: if this changes,
    # every archive made with the golden model changes too (bump ENGINE_ID and the format).
    fingerprint = hashlib.sha256(model.engine.fingerprint).hexdigest()[:16]
    assert fingerprint == GOLDEN_ENGINE_FINGERPRINT[model.engine_id]


GOLDEN_ENGINE_FINGERPRINT = {1: "3b6ab6a8ac2765ad", 2: "111095431cf3221d", 3: "74ee5357282518ff"}


def test_int8_backends_agree(golden, monkeypatch):
    """torch._int_mm (when present) and the float64 fallback give the same tables."""
    from llmzip import linear8

    model = golden.with_engine(2)
    rows = _rows(model, 3, 30, seed=4)
    if not linear8.select_backend(linear8.INT8_GEMM_MIN_OPS):
        pytest.skip("torch._int_mm is not usable here")
    fast = _tables(model, rows)
    monkeypatch.setattr(linear8, "_use_torch", False)
    assert np.array_equal(_tables(model, rows), fast)


def test_linear8_equals_exact_rational_arithmetic(golden):
    """Engine 2's float64 pipeline gives exactly round_half_up(acc * M * 2**(e - D)) + b."""
    from fractions import Fraction
    from math import floor

    from llmzip.linear8 import quantize_rows

    lin = golden.with_engine(2).engine.blocks[0].fc_proj
    rng = np.random.default_rng(5)
    x = rng.integers(-2**20, 2**20, size=(6, lin.w.shape[0])) >> rng.integers(0, 20, size=(6, 1))
    q, e = quantize_rows(x)
    acc = q.astype(np.int64) @ lin.w.astype(np.int64)
    ref = [[floor(Fraction(int(acc[r, c]) * int(lin.mult[c])) * Fraction(2) ** (int(e[r]) - int(lin.shift[c]))
                  + Fraction(1, 2)) + int(lin.b[c]) for c in range(acc.shape[1])] for r in range(len(x))]
    assert lin(x).tolist() == ref


def test_quantize_rows_bounds():
    from llmzip.linear8 import quantize_rows

    x = np.array([[0, 0, 0], [127, -127, 3], [128, -1, 0], [2**20 - 1, -(2**20), 5], [255, 254, -255]], dtype=np.int64)
    q, e = quantize_rows(x)
    assert q.dtype == np.int8 and np.abs(q.astype(int)).max() <= 127
    assert e.tolist() == [0, 0, 1, 14, 1]
    assert (np.abs(x).max(-1) >> e).max() <= 127


@pytest.mark.parametrize("seed", range(4))
def test_quantize_rows_equals_its_definition(seed):
    """Against the definition computed the plain way (|x|, round half up by a Python-int shift)."""
    from llmzip.linear8 import quantize_rows

    rng = np.random.default_rng(seed)
    x = rng.integers(-2**61, 2**61, size=(40, 9)) >> rng.integers(0, 62, size=(40, 1))
    x[0], x[1, :3], x[2] = 0, [-(2**8 - 1), 2**7 + 63, 1], -(2**9 - 1)      # exact half-way and -128 cases
    q, e = quantize_rows(x)
    for row, qr, er in zip(x.tolist(), q.tolist(), e.tolist()):
        peak = max(abs(v) for v in row)
        shift = max(peak.bit_length() - 7, 0)
        assert er == shift
        assert qr == [max(-127, min(127, (v + ((1 << shift) >> 1)) >> shift)) for v in row]


@pytest.mark.parametrize("flag", [{"scale_attn_by_inverse_layer_idx": True}, {"scale_attn_weights": False}])
def test_unsupported_gpt2_variants_are_refused(flag):
    from types import SimpleNamespace

    from llmzip.engine import GPT2Spec

    base = dict(n_layer=1, n_head=1, n_embd=8, n_positions=8, vocab_size=300,
                layer_norm_epsilon=1e-5, activation_function="gelu_new")
    with pytest.raises(ValueError, match="not supported"):
        GPT2Spec.from_config(SimpleNamespace(**base, **flag))
