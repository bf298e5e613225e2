"""Tests of llmzip.coder: round trips, compressed size, carries, corruption."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmzip.coder import MAX_TOTAL_BITS, ArithmeticDecoder, ArithmeticEncoder
from llmzip.errors import CorruptArchiveError

MAX_TOTAL = 1 << MAX_TOTAL_BITS


def make_cdf(freqs) -> np.ndarray:
    """Returns the int64 cumulative table [0, f0, f0+f1, ...] of positive freqs."""
    return np.concatenate([[0], np.cumsum(np.asarray(freqs, dtype=np.int64))]).astype(np.int64)


def encode_all(cdfs, symbols) -> bytes:
    enc = ArithmeticEncoder()
    for cdf, s in zip(cdfs, symbols):
        enc.encode(int(cdf[s]), int(cdf[s + 1] - cdf[s]), int(cdf[-1]))
    return enc.finish()


def decode_all(data: bytes, cdfs) -> list[int]:
    """Decodes one symbol per table and runs check_end (may raise CorruptArchiveError)."""
    dec = ArithmeticDecoder(data)
    out = [dec.decode(cdf) for cdf in cdfs]
    dec.check_end()
    return out


def assert_round_trip(cdfs, symbols) -> bytes:
    data = encode_all(cdfs, symbols)
    assert decode_all(data, cdfs) == list(symbols)
    assert not data or data[-1] != 0
    return data


def ideal_bits(cdfs, symbols) -> float:
    return -sum(math.log2((int(c[s + 1]) - int(c[s])) / int(c[-1])) for c, s in zip(cdfs, symbols))


def random_table(rng: np.random.Generator) -> np.ndarray:
    """A table of random size and total, sometimes extreme."""
    kind = rng.integers(6)
    if kind == 0:  # single symbol, total 1
        return make_cdf([1])
    if kind == 1:  # one symbol with p ~ 1 next to freq-1 symbols, total 2**30
        k = int(rng.integers(1, 5))
        return make_cdf([MAX_TOTAL - k] + [1] * k)
    if kind == 2:  # many freq-1 symbols in a table of total 2**30
        k = int(rng.integers(1, 200))
        freqs = [1] * k + [MAX_TOTAL - k]
        rng.shuffle(freqs)
        return make_cdf(freqs)
    size = int(rng.integers(1, 300))
    scale = 2 ** int(rng.integers(0, MAX_TOTAL_BITS - 9))
    return make_cdf(rng.integers(1, scale + 1, size=size))


def random_sequence(seed: int, n: int):
    rng = np.random.default_rng(seed)
    cdfs = [random_table(rng) for _ in range(n)]
    symbols = [int(rng.integers(len(c) - 1)) for c in cdfs]
    return cdfs, symbols


def test_empty_stream():
    assert ArithmeticEncoder().finish() == b""
    ArithmeticDecoder(b"").check_end()


def test_total_one_tables_cost_nothing():
    cdfs = [make_cdf([1])] * 1000
    assert assert_round_trip(cdfs, [0] * 1000) == b""


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip_random_tables(seed):
    cdfs, symbols = random_sequence(seed, 4000)
    assert_round_trip(cdfs, symbols)


def test_round_trip_extreme_tables():
    p_one = make_cdf([1, MAX_TOTAL - 2, 1])
    tiny = make_cdf([1] * 7 + [MAX_TOTAL - 7])
    rng = np.random.default_rng(7)
    cdfs, symbols = [], []
    for _ in range(10_000):
        if rng.random() < 0.5:
            cdfs.append(p_one)
            symbols.append(1 if rng.random() < 0.9 else int(rng.choice([0, 2])))
        else:
            cdfs.append(tiny)
            symbols.append(int(rng.integers(8)))
    data = assert_round_trip(cdfs, symbols)
    assert len(data) * 8 <= ideal_bits(cdfs, symbols) * 1.001 + 64


def test_certain_symbols_cost_almost_nothing():
    cdfs = [make_cdf([MAX_TOTAL - 1, 1])] * 20_000
    assert len(assert_round_trip(cdfs, [0] * 20_000)) <= 1


def test_size_near_ideal_long_random_sequence():
    rng = np.random.default_rng(11)
    freqs = rng.integers(1, 1 << 20, size=256)
    cdf = make_cdf(freqs)
    symbols = rng.choice(256, size=200_000, p=freqs / freqs.sum())
    cum = cdf[:-1].tolist()
    total = int(cdf[-1])
    enc = ArithmeticEncoder()
    for s in symbols.tolist():
        enc.encode(cum[s], int(freqs[s]), total)
    data = enc.finish()
    ideal = -np.log2(freqs[symbols] / total).sum()
    assert len(data) * 8 <= ideal * 1.001 + 64
    dec = ArithmeticDecoder(data)
    assert all(dec.decode(cdf) == s for s in symbols[:20_000].tolist())


def test_size_near_ideal_skewed_source():
    rng = np.random.default_rng(12)
    freqs = np.array([MAX_TOTAL - (1 << 20) - 3, 1 << 20, 2, 1])
    cdf = make_cdf(freqs)
    symbols = rng.choice(4, size=200_000, p=freqs / freqs.sum())
    data = assert_round_trip([cdf] * len(symbols), symbols.tolist())
    ideal = -np.log2(freqs[symbols] / MAX_TOTAL).sum()
    assert len(data) * 8 <= ideal * 1.001 + 64


@pytest.mark.parametrize("run", [10, 300, 3000])
def test_carry_through_long_ff_run(run):
    """Codes the symbols of value 0x80 00*run 01: low stays at 0x7F FF FF ... until
    the interval leaves 1/2, then a carry ripples through `run` pending 0xFF bytes."""
    value = b"\x80" + b"\x00" * run + b"\x01"
    rng = np.random.default_rng(run)
    dec = ArithmeticDecoder(value)
    cdfs, symbols = [], []
    while dec._pos < run + 12:
        cdfs.append(make_cdf(rng.integers(1, 1 << 16, size=int(rng.integers(2, 64)))))
        symbols.append(dec.decode(cdfs[-1]))
    enc = ArithmeticEncoder()
    max_pending, before_carry = 0, None
    for cdf, s in zip(cdfs, symbols):
        enc.encode(int(cdf[s]), int(cdf[s + 1] - cdf[s]), int(cdf[-1]))
        if enc._pending > max_pending:  # shifted out so far: 0x7F FF FF ... FF
            max_pending = enc._pending
            before_carry = bytes(enc._out[1:]), enc._cache
    data = enc.finish()
    assert max_pending >= run - 8 and before_carry == (b"", 0x7F)
    assert data[: run + 1] == value[: run + 1]  # the carry turned them into 0x80 00 ... 00
    assert decode_all(data, cdfs) == symbols


@pytest.mark.parametrize(
    "freqs", [[1, 1], [5, 3, 1], [3, 1], [1, MAX_TOTAL - 1], [MAX_TOTAL - 1, 1], [3] * 255]
)
def test_always_top_symbol(freqs):
    """The top symbol drives low towards 1.0, so every shifted byte is 0xFF when the
    range stays a power of two (otherwise the slack range % total is left at the top)."""
    cdf = make_cdf(freqs)
    n = 5000
    enc = ArithmeticEncoder()
    max_pending = 0
    for _ in range(n):
        enc.encode(int(cdf[-2]), int(cdf[-1] - cdf[-2]), int(cdf[-1]))
        max_pending = max(max_pending, enc._pending)
    data = enc.finish()
    if all(x & (x - 1) == 0 for x in (sum(freqs), freqs[-1])):  # range stays exact
        assert max_pending >= int(ideal_bits([cdf] * n, [len(freqs) - 1] * n) / 8) - 10
    assert decode_all(data, [cdf] * n) == [len(freqs) - 1] * n


def test_all_zero_prefix_keeps_stream_long_enough():
    """Coding the bottom symbol shifts out only zero bytes; the stream must still
    be long enough for check_end to accept it."""
    cdf = make_cdf([1, 1])
    for n in [1, 7, 8, 9, 64, 65, 1000]:
        data = assert_round_trip([cdf] * n, [0] * n)
        assert len(data) >= n // 8 - 8


def shortest_valid_length(enc: ArithmeticEncoder) -> int:
    """Brute force: the shortest stream (>= n bytes shifted out, no trailing zero byte)
    whose value lies in the encoder's final interval, from its private state."""
    n = len(enc._out) + enc._pending  # bytes shifted out, after the virtual byte
    prefix = bytes(enc._out) + bytes([enc._cache]) + b"\xff" * enc._pending
    scale = 8 * (n + 8)  # the interval is [lo, hi) / 2**scale
    lo = (int.from_bytes(prefix, "big") << 64) + enc._low
    hi = lo + enc._range
    if lo == 0 and n == 0:
        return 0
    for length in range(max(n, 1), n + 9):
        shift = scale - 8 * length  # k / 2**(8 length) in [lo, hi) / 2**scale
        first, last = -(-lo >> shift), ((hi - 1) >> shift)
        if first < last or (first == last and first % 256):
            return length
    raise AssertionError("no valid stream")


@pytest.mark.parametrize("seed", range(6))
def test_finish_is_shortest_valid_stream(seed):
    rng = np.random.default_rng(seed)
    tables = [make_cdf([1, 1]), make_cdf([MAX_TOTAL - 5, 5]), make_cdf([1, MAX_TOTAL - 1])]
    enc = ArithmeticEncoder()
    for step in range(300):
        if seed % 2:
            cdf = random_table(rng)
        else:
            cdf = tables[int(rng.integers(3))]
        s = int(rng.integers(len(cdf) - 1)) if rng.random() < 0.3 else 0
        enc.encode(int(cdf[s]), int(cdf[s + 1] - cdf[s]), int(cdf[-1]))
        assert len(enc.finish()) == shortest_valid_length(enc), step


def test_finish_is_a_snapshot():
    cdfs, symbols = random_sequence(3, 400)
    enc = ArithmeticEncoder()
    for i, (cdf, s) in enumerate(zip(cdfs, symbols)):
        enc.encode(int(cdf[s]), int(cdf[s + 1] - cdf[s]), int(cdf[-1]))
        if i == 200:
            half = enc.finish()
            assert half == enc.finish()
    assert decode_all(half, cdfs[:201]) == symbols[:201]
    assert decode_all(enc.finish(), cdfs) == symbols


def test_numpy_scalars_and_target_consume_api():
    cdfs, symbols = random_sequence(4, 500)
    enc = ArithmeticEncoder()
    for cdf, s in zip(cdfs, symbols):
        enc.encode(cdf[s], cdf[s + 1] - cdf[s], cdf[-1])
    data = enc.finish()
    assert data == encode_all(cdfs, symbols)
    dec = ArithmeticDecoder(data)
    for cdf, s in zip(cdfs, symbols):
        v = dec.target(cdf[-1])
        assert cdf[s] <= v < cdf[s + 1]
        dec.consume(cdf[s], cdf[s + 1] - cdf[s], cdf[-1])
    dec.check_end()


@pytest.mark.parametrize(
    "args", [(0, 0, 4), (-1, 1, 4), (3, 2, 4), (0, 1, 0), (0, 1, MAX_TOTAL + 1), (0, 1.0, 4)]
)
def test_encode_rejects_bad_intervals(args):
    with pytest.raises((ValueError, TypeError)):
        ArithmeticEncoder().encode(*args)


def test_decoder_rejects_misuse():
    data = encode_all([make_cdf([1, 1, 1])], [1])
    dec = ArithmeticDecoder(data)
    with pytest.raises(ValueError):
        dec.target(0)
    with pytest.raises(ValueError):
        dec.target(MAX_TOTAL + 1)
    assert dec.target(3) == 1
    with pytest.raises(ValueError):
        dec.consume(0, 1, 3)  # does not contain the target
    for bad in [(1, 1, 0), (1, 0, 3), (1, 3, 3), (-1, 3, 3)]:
        with pytest.raises(ValueError):
            dec.consume(*bad)
    dec.consume(1, 1, 3)
    dec.check_end()


def test_target_outside_table_is_corrupt():
    dec = ArithmeticDecoder(b"\xff" * 8)  # code lies in the unused slack of total 3
    with pytest.raises(CorruptArchiveError):
        dec.target(3)


def test_truncation_is_detected():
    for seed in range(4):
        cdfs, symbols = random_sequence(100 + seed, 200)
        data = encode_all(cdfs, symbols)
        for length in range(len(data)):
            try:
                decoded = decode_all(data[:length], cdfs)
            except CorruptArchiveError:
                continue
            assert decoded != symbols


def test_trailing_bytes_are_detected():
    cdfs, symbols = random_sequence(5, 300)
    data = encode_all(cdfs, symbols)
    for junk in [b"\x00", b"\x01\x00", b"\x07" * 9, bytes(range(1, 40))]:
        with pytest.raises(CorruptArchiveError):
            decode_all(data + junk, cdfs)


def test_reading_far_past_the_end_is_detected():
    cdfs, symbols = random_sequence(6, 300)
    data = encode_all(cdfs, symbols)
    dec = ArithmeticDecoder(data[: len(data) // 2])
    try:
        for cdf in cdfs:
            dec.decode(cdf)
    except CorruptArchiveError:
        return
    with pytest.raises(CorruptArchiveError):
        dec.check_end()


tables = st.one_of(
    st.lists(st.integers(1, 1 << 24), min_size=1, max_size=40),
    st.lists(st.integers(1, 3), min_size=1, max_size=5).map(lambda f: f + [MAX_TOTAL - sum(f)]),
    st.just([1]),
)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(tables, st.integers(0, 1 << 20)), max_size=200))
def test_round_trip_property(steps):
    cdfs = [make_cdf(freqs) for freqs, _ in steps]
    symbols = [pick % len(freqs) for freqs, pick in steps]
    data = assert_round_trip(cdfs, symbols)
    assert len(data) * 8 <= ideal_bits(cdfs, symbols) * 1.001 + 64


def test_size_compared_with_constriction():
    """Informative: constriction's range coder (24-bit probabilities, 32-bit words)."""
    constriction = pytest.importorskip("constriction")
    rng = np.random.default_rng(13)
    probs = rng.dirichlet(np.full(64, 0.3))
    symbols = rng.choice(64, size=20_000, p=probs).astype(np.int32)
    cdf = make_cdf(np.maximum(1, np.round(probs * (1 << 24))).astype(np.int64))
    ours = len(assert_round_trip([cdf] * len(symbols), symbols.tolist()))
    theirs_enc = constriction.stream.queue.RangeEncoder()
    model = constriction.stream.model.Categorical(probs.astype(np.float64), perfect=False)
    theirs_enc.encode(symbols, model)
    theirs = theirs_enc.get_compressed().nbytes
    print(f"llmzip.coder: {ours} bytes, constriction: {theirs} bytes")
    assert ours <= theirs * 1.01 + 16


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 300))
def test_batched_calls_equal_one_call_per_symbol(seed, n):
    """encode_all / decode_rows (the codec's per-step loops) give the same stream, symbols and
    decoder state as encode / decode one symbol at a time."""
    rng = np.random.default_rng(seed)
    vocab = int(rng.integers(1, 60))
    freqs = rng.integers(1, 2 ** int(rng.integers(1, 23)), size=(n, vocab))
    cdfs = np.zeros((n, vocab + 1), dtype=np.int64)
    np.cumsum(freqs, axis=1, out=cdfs[:, 1:])
    symbols = rng.integers(0, vocab, n)
    ar = np.arange(n)
    one = encode_all([c for c in cdfs], symbols)
    batched = ArithmeticEncoder()
    split = int(rng.integers(0, n + 1))                       # two calls: the state carries over
    for part in (slice(0, split), slice(split, n)):
        batched.encode_all(cdfs[ar, symbols][part], freqs[ar, symbols][part], cdfs[:, -1][part])
    assert batched.finish() == one
    dec, single = ArithmeticDecoder(one), ArithmeticDecoder(one)
    got = dec.decode_rows(cdfs[:split]) + dec.decode_rows(cdfs[split:])
    assert got == [single.decode(c) for c in cdfs] == symbols.tolist()
    assert (dec._code, dec._range, dec._pos) == (single._code, single._range, single._pos)
    dec.check_end()


def test_batched_calls_reject_what_single_calls_reject():
    enc = ArithmeticEncoder()
    with pytest.raises(ValueError):
        enc.encode_all(np.array([0, 5]), np.array([1, 1]), np.array([4, 4]))   # cum + freq > total
    with pytest.raises(TypeError):
        enc.encode_all(np.array([0.0]), np.array([1]), np.array([4]))
    with pytest.raises(CorruptArchiveError):
        ArithmeticDecoder(b"\xff" * 8).decode_rows(np.array([[0, 1, 2, 3]]) * np.array([[1, 1, 1, 2**20]]))
    with pytest.raises(ValueError):
        ArithmeticDecoder(b"").decode_rows(np.array([[0, 2**31]]))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40), vocab=st.integers(1, 300))
def test_table_terms_equal_the_cumulative_table(seed, n, vocab):
    """The encoder's terms of the coded tokens, without a cumulative table, equal what one gives."""
    from llmzip.lockstep import table_terms

    rng = np.random.default_rng(seed)
    tables = rng.integers(1, 2 ** int(rng.integers(1, 29)), size=(n, vocab)).astype(np.int32)
    x = rng.integers(0, vocab, n)
    cum, freq, total = table_terms(tables, x)
    cdf = np.cumsum(tables, axis=1, dtype=np.int64)
    ar = np.arange(n)
    assert np.array_equal(freq, tables[ar, x]) and np.array_equal(total, cdf[:, -1])
    assert np.array_equal(cum, cdf[ar, x] - freq) and cum.dtype == freq.dtype == total.dtype == np.int64


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 30), vocab=st.integers(1, 700), block=st.integers(1, 300))
def test_search_by_blocks_equals_the_cumulative_search(seed, rows, vocab, block):
    """decode_rows_blocked (no cumulative table) decodes what decode_rows does, to the same state,
    whether or not the block size divides the table and from flat to very skewed tables."""
    rng = np.random.default_rng(seed)
    tables = rng.integers(1, 2 ** int(rng.integers(1, 30 - max(vocab, 2).bit_length())), size=(rows, vocab))
    tables[rng.random(rows) < 0.3, int(rng.integers(0, vocab))] += 2**20   # a dominant symbol
    cdfs = np.zeros((rows, vocab + 1), dtype=np.int64)
    np.cumsum(tables, axis=1, out=cdfs[:, 1:])
    symbols = rng.integers(0, vocab, rows)
    blob = encode_all(list(cdfs), symbols)
    blocked, full = ArithmeticDecoder(blob), ArithmeticDecoder(blob)
    assert blocked.decode_rows_blocked(tables, block) == full.decode_rows(cdfs) == symbols.tolist()
    assert (blocked._code, blocked._range, blocked._pos) == (full._code, full._range, full._pos)
