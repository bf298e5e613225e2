"""The fused kernels (llmzip.fused) give the numpy engine's integers, and archives do not change."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from llmzip import attention8, codec, fused, fixedpoint
from llmzip.engine.common import ACT_CLIP, ACT_FRAC, SCORE_SHIFT
from llmzip.linear8 import quantize_linear8

pytest.importorskip("torch")
needs_kernels = pytest.mark.skipif(not fused.available(), reason=f"no fused kernels here: {fused.unavailable_reason()}")


def test_the_kernels_build_or_the_reason_is_the_platform() -> None:
    """A probe mismatch must fail the suite; only a missing compiler or torch feature may skip."""
    reason = fused.unavailable_reason()
    assert reason is None or not reason.startswith("AssertionError"), reason


@pytest.fixture
def kernels_on() -> Iterator[None]:
    fused.force(True)
    yield
    fused.force(False)


def test_probe_holds_for_the_uncompiled_kernels() -> None:
    """The same torch operations run eagerly (what a frozen kernel does for a shape no graph fits)."""
    from llmzip import fused_check, fused_torch

    for case in fused_check.CASES:
        case(fused_torch.eager_all())


def test_probe_catches_a_kernel_off_by_one() -> None:
    from llmzip import fused_check, fused_torch

    kernels = fused_torch.eager_all()
    for name, broken in (("linear8_int", lambda *a: kernels["linear8_int"](*a) + 1),
                         ("attend", lambda *a: kernels["attend"](*a) ^ 1),
                         ("freqs_into", lambda *a: np.add(kernels["freqs_into"](*a), 1, out=a[-1]))):
        with pytest.raises(AssertionError, match="differs"):
            for case in fused_check.CASES:
                case({**kernels, name: broken})


@needs_kernels
@pytest.mark.parametrize("seed", range(3))
def test_linear_layer_outputs_match(seed: int) -> None:
    rng = np.random.default_rng(seed)
    layer = quantize_linear8(rng.normal(size=(96, 40)), rng.normal(size=40), ACT_FRAC, 16)
    x = rng.integers(-ACT_CLIP, ACT_CLIP + 1, size=(3, 11, 96)) >> rng.integers(0, 20, size=(3, 11, 1))
    want_int, want_float = layer(x), layer.float_out(x)
    fused.force(True)
    try:
        got_int, got_float = layer(x), layer.float_out(x)
    finally:
        fused.force(False)
    np.testing.assert_array_equal(want_int, got_int)
    np.testing.assert_array_equal(want_float, got_float)
    assert got_int.dtype == np.int64 and got_float.dtype == np.float64


@needs_kernels
@pytest.mark.parametrize("group, steps", [(1, (0, 40, 47)), (3, (0, 30, 47))])
def test_attention_over_a_growing_cache_matches(group: int, steps: tuple[int, ...]) -> None:
    """Prefill blocks then single steps, the cache growing past its first capacity, as the codec runs."""
    rng = np.random.default_rng(group)
    rows, kv, hd, length = 3, 2, 32, 70
    k = rng.integers(-2**20, 2**20, size=(rows, kv, length, hd)) >> rng.integers(0, 16, size=(rows, kv, length, 1))
    v = rng.integers(-2**20, 2**20, size=(rows, kv, length, hd)) >> rng.integers(0, 16, size=(rows, kv, length, 1))
    q = rng.integers(-2**36, 2**36, size=(rows, kv * group, length, hd))
    caches = {on: attention8.KVCache8(1, rows, kv, 128, hd) for on in (False, True)}
    bounds = [*steps, *range(steps[-1] + 1, length + 1)]
    for start, end in zip(bounds, bounds[1:]):
        outs = []
        for on, cache in caches.items():
            fused.force(on)
            try:
                attention8.store(cache, 0, k[:, :, start:end], v[:, :, start:end], start, SCORE_SHIFT)
                outs.append(attention8.attend(q[:, :, start:end], cache, 0, start))
            finally:
                fused.force(False)
        np.testing.assert_array_equal(outs[0], outs[1])


@needs_kernels
def test_activation_tables_match(kernels_on: None) -> None:
    u = np.arange(-ACT_CLIP, ACT_CLIP + 1, 37, dtype=np.int64)[:56672].reshape(-1, 8)
    for kind, half in (("gelu_new", 8), ("silu", fixedpoint.SILU_HALF_RANGE)):
        got = fixedpoint.activation_lookup(u, kind, ACT_FRAC, half_range=half)
        fused.force(False)
        want = fixedpoint.activation_lookup(u, kind, ACT_FRAC, half_range=half)
        fused.force(True)
        np.testing.assert_array_equal(want, got)


def _same_archives(model: Any, data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMZIP_FUSED", "0")
    calls = fused.kernel_calls()
    plain = codec.compress(data, model)
    assert fused.kernel_calls() == calls
    monkeypatch.setenv("LLMZIP_FUSED", "always")
    try:
        assert codec.compress(data, model) == plain
        assert fused.kernel_calls() > calls and not fused.active()   # used, and off after the call
        assert codec.decompress(plain, model) == data      # the kernels in the decoder's workers too
    finally:
        fused.force(False)


@needs_kernels
def test_embedded_archives_are_identical_with_the_kernels(prose_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmzip.model import load_model

    _same_archives(load_model(None), prose_file.read_bytes()[:6000], monkeypatch)


@needs_kernels
def test_llama_family_archives_are_identical_with_the_kernels(llama_family_dir: Path, prose_file: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from llmzip.model import load_model

    _same_archives(load_model(str(llama_family_dir)), prose_file.read_bytes()[:3000], monkeypatch)


def test_select_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMZIP_FUSED", "0")
    assert fused.select(1 << 30, True) is False
    monkeypatch.setenv("LLMZIP_FUSED", "auto")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert fused.select(1 << 30, False) is False            # decoding, or GEMMs not on torch
    if fused.available():
        assert fused.select(10, True) is True                # already built in this process
        assert fused.select(fused.FUSED_MIN_TOKENS, True) is True
        monkeypatch.setenv("OMP_NUM_THREADS", "2")           # GEMMs would fork teams: not by itself...
        assert fused.select(fused.FUSED_MIN_TOKENS, True) is False
        monkeypatch.setenv("LLMZIP_FUSED", "always")         # ...only when asked for
        assert fused.select(10, True) is True
    fused.force(False)


@needs_kernels
def test_building_the_kernels_leaves_no_thread_running() -> None:
    """The decoder forks its workers only from a process without other threads."""
    import threading

    assert fused.available()
    assert "tqdm_monitor" not in {t.name for t in threading.enumerate()}
    assert threading.active_count() == 1, [t.name for t in threading.enumerate()]


def test_kernels_turn_on_by_themselves_only_with_one_openmp_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmzip import runtime

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert runtime.one_openmp_thread()
    for value in ("2", ""):
        monkeypatch.setenv("OMP_NUM_THREADS", value)
        assert not runtime.one_openmp_thread()
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert not runtime.one_openmp_thread()
