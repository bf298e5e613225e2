"""Decoding steps over KV caches held as int8 (llmzip.attention8_steps): the float32 cache's integers,
through the fused kernels attend_step8 and quantize_heads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmzip import attention8, codec, fused
from llmzip.attention8_steps import StepCache8
from llmzip.engine.common import SCORE_SHIFT
from llmzip.errors import CorruptArchiveError
from llmzip.lockstep import Settings
from llmzip.model import load_model

pytest.importorskip("torch")

needs_kernels = pytest.mark.usefixtures("built_kernels")


def _steps_against_float32(k: np.ndarray, v: np.ndarray, q: np.ndarray, bounds: list[int], capacity: int,
                           scale: int = 9459) -> None:
    """Store and attend block by block in a float32 cache (numpy) and an int8 one (its kernel for single
    steps, numpy for blocks); every output equal, and every step on the compiled kernel."""
    rows, kv, _, hd = k.shape
    want = attention8.KVCache8(1, rows, kv, capacity, hd)
    fused.force_steps(True)
    got = StepCache8(1, rows, kv, capacity, hd)       # made for the kernel, it keeps it
    fused.force_steps(False)
    assert got.kernel_steps
    calls, eager = fused.kernel_calls(), fused.eager_calls()
    for start, end in zip(bounds, bounds[1:]):
        outs = [cache.attend_new(q[:, :, start:end], k[:, :, start:end], v[:, :, start:end], 0, start, scale,
                                 SCORE_SHIFT) for cache in (want, got)]
        np.testing.assert_array_equal(outs[0], outs[1])
    assert fused.kernel_calls() - calls == 2 * sum(b - a == 1 for a, b in zip(bounds, bounds[1:]))
    assert fused.eager_calls() == eager


@needs_kernels
@pytest.mark.parametrize("group, first", [(1, 1), (3, 30)])
def test_decoding_steps_over_an_int8_cache_match(group: int, first: int) -> None:
    """A prefill block, then single steps; the int8 cache grows past its first capacity."""
    rng = np.random.default_rng(group)
    rows, kv, hd, length = 3, 2, 32, 70
    k = rng.integers(-2**20, 2**20, size=(rows, kv, length, hd)) >> rng.integers(0, 16, size=(rows, kv, length, 1))
    v = rng.integers(-2**20, 2**20, size=(rows, kv, length, hd)) >> rng.integers(0, 16, size=(rows, kv, length, 1))
    q = rng.integers(-2**20, 2**20, size=(rows, kv * group, length, hd)) >> rng.integers(0, 20, size=(rows, 1, length, 1))
    _steps_against_float32(k, v, q, [0, *range(first, length + 1)], 128)


@needs_kernels
def test_decoding_step_at_the_int32_bound_matches() -> None:
    """SPAN positions of equal scores (every weight 2**15) and values at +-127 with equal exponents:
    the kernel's int32 value sums at the top of their range."""
    rows, kv, hd, end = 1, 1, 8, attention8.SPAN
    k = np.full((rows, kv, end, hd), 1 << 20, dtype=np.int64)
    v = np.where(np.arange(hd) % 2, 127, -127).astype(np.int64) * np.ones((rows, kv, end, 1), dtype=np.int64) << 13
    q = np.full((rows, kv, end, hd), 1 << 14, dtype=np.int64)
    _steps_against_float32(k, v, q, [0, end - 1, end], end, scale=1 << 16)


def _decodes_through_the_step_kernel(model: object, data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """A decompression in this process with the kernels: every decoding step's attention goes through
    attend_step8 over int8 caches, and the archive decodes; the flags are off afterwards."""
    monkeypatch.setenv("LLMZIP_FUSED", "0")
    blob = codec.compress(data, model)
    steps: list[int] = []
    kernel = StepCache8._kernel
    monkeypatch.setattr(StepCache8, "_kernel", lambda self, *a: steps.append(a[-1]) or kernel(self, *a))
    monkeypatch.setenv("LLMZIP_FUSED", "always")
    eager = fused.eager_calls()
    assert codec.decompress(blob, model, Settings(threads=1, processes=False)) == data
    assert len(steps) >= 10 * model.engine.spec.n_layer and fused.eager_calls() == eager
    assert not fused.active() and not fused.steps_active()


@needs_kernels
def test_embedded_decompressions_attend_through_the_step_kernel(prose_file: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    _decodes_through_the_step_kernel(load_model(None), prose_file.read_bytes()[:3000], monkeypatch)


@needs_kernels
def test_llama_family_decompressions_attend_through_the_step_kernel(llama_family_dir: Path, prose_file: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Grouped key/value heads (the tiny Llama), biases (Qwen2)."""
    _decodes_through_the_step_kernel(load_model(str(llama_family_dir)), prose_file.read_bytes()[:2000], monkeypatch)


@needs_kernels
def test_decoding_calls_hold_int8_caches_with_the_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """select() turns the int8 caches on for decoding calls only, and never without the kernels."""
    try:
        monkeypatch.setenv("LLMZIP_FUSED", "always")
        assert fused.select(1 << 30, True) is fused.available() and not fused.steps_active()   # compression
        assert fused.select(1 << 30, True, decoding=True) is fused.steps_active() is fused.available()
        monkeypatch.setenv("LLMZIP_FUSED", "0")
        assert fused.select(1 << 30, True, decoding=True) is fused.steps_active() is False
    finally:
        fused.deactivate()


@needs_kernels
def test_new_caches_follow_the_call_and_the_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """Int8 caches for decoding steps with the kernels, up to SPAN positions; float32 ones otherwise;
    the float64 engines keep theirs."""
    from llmzip.engine.legacy import KVCache64
    from llmzip.engine.versions import ENGINES

    attention = ENGINES[3].attention
    assert type(attention.new_cache(1, 2, 2, 64, 16)) is attention8.KVCache8
    fused.force_steps(True)
    try:
        assert type(attention.new_cache(1, 2, 2, attention8.SPAN, 16)) is StepCache8
        assert type(attention.new_cache(1, 2, 2, attention8.SPAN + 1, 16)) is attention8.KVCache8
        assert type(ENGINES[2].attention.new_cache(1, 2, 2, 64, 16)) is KVCache64
    finally:
        fused.force_steps(False)


@needs_kernels
def test_the_flags_are_off_after_a_failed_decompression(prose_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = load_model(None)
    blob = codec.compress(prose_file.read_bytes()[:2000], model)
    seen: list[bool] = []

    def failing(*_: object) -> None:
        seen.append(fused.steps_active())
        raise CorruptArchiveError("a segment that does not decode")

    monkeypatch.setattr(codec, "decode_group", failing)
    monkeypatch.setenv("LLMZIP_FUSED", "always")
    with pytest.raises(CorruptArchiveError):
        codec.decompress(blob, model, Settings(threads=1, processes=False))
    assert seen == [True] and not fused.active() and not fused.steps_active()


def test_kernel_bit_length_equals_the_reference_everywhere() -> None:
    """Every power of two and its neighbours up to 2**63 - 1, as the float64 conversion rounds them."""
    import torch

    from llmzip import fixedpoint, fused_torch

    x = sorted({max(0, min((1 << k) + d, 2**63 - 1)) for k in range(64) for d in (-1, 0, 1)})
    x = np.array(x, dtype=np.int64)
    np.testing.assert_array_equal(fused_torch._bit_length(torch.from_numpy(x)).numpy(), fixedpoint.bit_length(x))
