"""KV caches held as int8 (llmzip.attention8_int8) and the native attention kernel that reads them
(llmzip.native): the float32 cache's integers, prefill blocks and decoding steps alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmzip import attention8, codec, fused, native, native_engine
from llmzip.attention8_int8 import Int8KVCache
from llmzip.engine.common import SCORE_SHIFT
from llmzip.errors import CorruptArchiveError
from llmzip.lockstep import Settings
from llmzip.model import load_model

needs_kernels = pytest.mark.usefixtures("built_kernels")


def _blocks_against_float32(attend8: Any, k: np.ndarray, v: np.ndarray, q: np.ndarray, bounds: list[int],
                            capacity: int, scale: int = 9459) -> None:
    """Store and attend block by block in a float32 cache (numpy) and an int8 one (the native kernel):
    every output equal, and the int8 cache's arrays equal to what numpy stores."""
    rows, kv, _, hd = k.shape
    want = attention8.KVCache8(1, rows, kv, capacity, hd)
    got, reference = Int8KVCache(1, rows, kv, capacity, hd), Int8KVCache(1, rows, kv, capacity, hd)
    for start, end in zip(bounds, bounds[1:]):
        block = (slice(None), slice(None), slice(start, end))
        expected = want.attend_new(q[block], k[block], v[block], 0, start, scale, SCORE_SHIFT)
        got.reserve(end)
        np.testing.assert_array_equal(attend8(q[block], k[block], v[block], scale, SCORE_SHIFT, start, got, 0,
                                              attention8._weight_table()), expected)
        reference.store(0, k[block], v[block], start, SCORE_SHIFT)
    for name in ("keys_t", "key_exp", "values", "value_exp", "value_max"):
        np.testing.assert_array_equal(getattr(got, name)[0], getattr(reference, name)[0])


def _random_block(rng: np.random.Generator, rows: int, kv: int, group: int, length: int, hd: int) -> tuple[np.ndarray, ...]:
    shape = (rows, kv, length, hd)
    k = rng.integers(-2**20, 2**20, size=shape) >> rng.integers(0, 16, size=(rows, kv, length, 1))
    v = rng.integers(-2**20, 2**20, size=shape) >> rng.integers(0, 16, size=(rows, kv, length, 1))
    q = rng.integers(-2**20, 2**20, size=(rows, kv * group, length, hd)) >> rng.integers(0, 20, size=(rows, 1, length, 1))
    return k, v, q


@pytest.mark.parametrize("group, hd, first", [(1, 32, 1), (3, 48, 30), (2, 24, 17), (1, 64, 70), (1, 12, 9)])
def test_blocks_and_steps_over_an_int8_cache_match(native_attend8: Any, group: int, hd: int, first: int) -> None:
    """A prefill block, then single steps; the int8 cache grows past its first capacity. Head sizes
    on and off the SIMD width (16 lanes with AVX-512, 8 with AVX2)."""
    rng = np.random.default_rng(group + hd)
    k, v, q = _random_block(rng, 3, 2, group, 70, hd)
    _blocks_against_float32(native_attend8, k, v, q, [0, *range(first, 71)], 128)


@pytest.mark.parametrize("capacity", [37, 50, 64])
def test_blocks_up_to_a_full_cache_of_any_capacity_match(native_attend8: Any, capacity: int) -> None:
    """Blocks of every length up to a full cache whose capacity is not a multiple of the SIMD width
    (the last keys are read through the kernel's bounce buffer)."""
    rng = np.random.default_rng(capacity)
    k, v, q = _random_block(rng, 2, 1, 3, capacity, 16)
    _blocks_against_float32(native_attend8, k, v, q, [0, 5, 6, 19, capacity - 1, capacity], capacity)


@pytest.mark.parametrize("group", [1, 3])
def test_views_of_the_engines_layout_are_read_and_written_in_place(native_attend8: Any, group: int) -> None:
    """Queries, keys and values as the engines hold them (transposed slices of one (rows, T, heads, hd)
    array) give what their contiguous copies give; the output is a view of a (rows, T, H, hd) array,
    so the engine's transpose back needs no copy."""
    rng = np.random.default_rng(group)
    rows, kv, hd, t = 3, 2, 16, 9
    heads = kv * group
    qkv = rng.integers(-2**20, 2**20, size=(rows, t, heads + 2 * kv, hd)) >> rng.integers(0, 16, size=(rows, t, 1, 1))
    q, k, v = (qkv[:, :, s].transpose(0, 2, 1, 3) for s in (slice(heads), slice(heads, heads + kv), slice(heads + kv, None)))
    table = attention8._weight_table()
    outs = []
    for args in ((q, k, v), tuple(np.ascontiguousarray(a) for a in (q, k, v)), (q.astype(np.int32), k, v)):
        cache = Int8KVCache(1, rows, kv, 16, hd)
        cache.reserve(t)
        outs.append(native_attend8(*args, 9459, SCORE_SHIFT, 0, cache, 0, table))
    for out in outs[1:]:
        np.testing.assert_array_equal(outs[0], out)
    assert outs[0].shape == (rows, heads, t, hd) and outs[0].transpose(0, 2, 1, 3).flags.c_contiguous


def test_attention_at_the_int32_bound_matches(native_attend8: Any) -> None:
    """SPAN positions of equal scores (every weight 2**15) and values at +-127 with equal exponents:
    the kernel's int32 value sums at the top of their range, as a prefill block and as a last step."""
    rows, kv, hd, end = 1, 1, 16, attention8.SPAN
    k = np.full((rows, kv, end, hd), 1 << 20, dtype=np.int64)
    v = np.where(np.arange(hd) % 2, 127, -127).astype(np.int64) * np.ones((rows, kv, end, 1), dtype=np.int64) << 13
    q = np.full((rows, kv, end, hd), 1 << 14, dtype=np.int64)
    _blocks_against_float32(native_attend8, k, v, q, [0, end - 1, end], end, scale=1 << 16)
    _blocks_against_float32(native_attend8, k, v, q, [0, end], end, scale=1 << 16)


def test_large_values_take_the_integer_division_and_match(native_attend8: Any) -> None:
    """Values near 2**40: numerators beyond 2**52, where the kernel divides as integers."""
    rng = np.random.default_rng(5)
    k, v, q = _random_block(rng, 2, 2, 1, 40, 16)
    _blocks_against_float32(native_attend8, k, v << 20, q, [0, 20, 21, 40], 64)


def test_the_kernel_refuses_what_it_cannot_compute(native_attend8: Any) -> None:
    """Positions past SPAN or the cache, and arrays of other layouts: ValueError, nothing computed."""
    rng = np.random.default_rng(6)
    k, v, q = _random_block(rng, 1, 1, 1, 4, 16)
    table = attention8._weight_table()
    cache = Int8KVCache(1, 1, 1, 8, 16)
    with pytest.raises(ValueError, match="out of range"):
        native_attend8(q, k, v, 1, SCORE_SHIFT, 6, cache, 0, table)             # 6 + 4 > 8 positions
    with pytest.raises(ValueError, match="unexpected"):
        native_attend8(q, k, v[:, :, :3], 1, SCORE_SHIFT, 0, cache, 0, table)
    with pytest.raises(ValueError, match="unexpected"):
        native_attend8(q, k, v, 1, SCORE_SHIFT, 0, cache, 0, table.astype(np.int64))
    cache.keys_t[0] = np.asfortranarray(cache.keys_t[0])
    with pytest.raises(ValueError, match="unexpected"):
        native_attend8(q, k, v, 1, SCORE_SHIFT, 0, cache, 0, table)


def test_the_package_ships_the_c_sources() -> None:
    """The kernels are compiled on the user's machine: an installed llmzip must carry its C files."""
    for name in native.SOURCES + native.HEADERS:
        assert (native.SOURCE_DIR / name).is_file(), name


def test_a_missing_compiler_is_a_build_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(native.NativeBuildError):
        native.compile_library(tmp_path / "x.so")


def _codes_through_the_native_kernel(model: Any, data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """A compression and a decompression in this process with the kernels: every attention goes
    through the native kernel over int8 caches, the archive is the numpy engine's, and it decodes;
    the flags are off afterwards."""
    monkeypatch.setenv("LLMZIP_FUSED", "0")
    blob = codec.compress(data, model)
    calls: list[int] = []
    native_call = native_engine.Attend8.__call__
    monkeypatch.setattr(native_engine.Attend8, "__call__", lambda self, *a: calls.append(a[0].shape[2]) or native_call(self, *a))
    monkeypatch.setenv("LLMZIP_FUSED", "always")
    eager, settings = fused.eager_calls(), Settings(threads=1, processes=False)
    assert codec.compress(data, model, settings=settings) == blob
    blocks = len(calls)
    assert blocks >= model.engine.spec.n_layer and max(calls) > 1
    assert codec.decompress(blob, model, settings) == data
    assert len(calls) - blocks >= 10 * model.engine.spec.n_layer and fused.eager_calls() == eager
    assert not fused.active()


@needs_kernels
def test_embedded_codec_calls_attend_through_the_native_kernel(prose_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _codes_through_the_native_kernel(load_model(None), prose_file.read_bytes()[:3000], monkeypatch)


@needs_kernels
def test_llama_family_codec_calls_attend_through_the_native_kernel(llama_family_dir: Path, prose_file: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Grouped key/value heads (the tiny Llama), biases (Qwen2)."""
    _codes_through_the_native_kernel(load_model(str(llama_family_dir)), prose_file.read_bytes()[:2000], monkeypatch)


@needs_kernels
def test_new_caches_follow_the_kernels_and_the_context() -> None:
    """Int8 caches while the kernels run, up to SPAN positions; float32 ones otherwise; the float64
    engines keep theirs."""
    from llmzip.engine.legacy import KVCache64
    from llmzip.engine.versions import ENGINES

    attention = ENGINES[3].attention
    assert type(attention.new_cache(1, 2, 2, 64, 16)) is attention8.KVCache8
    fused.force(True)
    try:
        cache = attention.new_cache(1, 2, 2, attention8.SPAN, 16)
        assert type(cache) is Int8KVCache and cache.native
        assert type(attention.new_cache(1, 2, 2, attention8.SPAN + 1, 16)) is attention8.KVCache8
        assert type(ENGINES[2].attention.new_cache(1, 2, 2, 64, 16)) is KVCache64
    finally:
        fused.force(False)
    assert cache.native                                   # a cache keeps the choice it was made with


def test_a_cache_made_without_the_kernel_attends_by_numpy() -> None:
    rng = np.random.default_rng(8)
    k, v, q = _random_block(rng, 2, 2, 3, 12, 16)
    want, got = attention8.KVCache8(1, 2, 2, 64, 16), Int8KVCache(1, 2, 2, 64, 16)
    assert not got.native
    for start, end in ((0, 7), (7, 8), (8, 12)):
        block = (slice(None), slice(None), slice(start, end))
        np.testing.assert_array_equal(got.attend_new(q[block], k[block], v[block], 0, start, 9459, SCORE_SHIFT),
                                      want.attend_new(q[block], k[block], v[block], 0, start, 9459, SCORE_SHIFT))


@needs_kernels
def test_the_flags_are_off_after_a_failed_decompression(prose_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = load_model(None)
    blob = codec.compress(prose_file.read_bytes()[:2000], model)
    seen: list[bool] = []

    def failing(*_: object) -> None:
        seen.append(fused.active())
        raise CorruptArchiveError("a segment that does not decode")

    monkeypatch.setattr(codec, "decode_group", failing)
    monkeypatch.setenv("LLMZIP_FUSED", "always")
    with pytest.raises(CorruptArchiveError):
        codec.decompress(blob, model, Settings(threads=1, processes=False))
    assert seen == [True] and not fused.active()


@pytest.mark.parametrize("flags", [("-mno-avx512f",), ("-mno-avx512f", "-mno-avx2")],
                         ids=["without-avx512", "without-avx2"])
def test_the_code_paths_of_other_machines_match(flags: tuple[str, ...], tmp_path: Path) -> None:
    """The native kernels built as for a machine without AVX-512 (AVX2 where this one has it) and
    without either (scalar loops) pass the same probe as this machine's build."""
    import platform

    from llmzip import fused_check

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86 instruction-set flags")
    library = tmp_path / "native.so"
    try:
        native.compile_library(library, flags)
    except native.NativeBuildError as e:
        pytest.skip(f"no C compiler here: {e}")
    kernels = native.kernels(library)
    for case in fused_check.NATIVE_CASES:
        case(kernels)
