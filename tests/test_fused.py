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


needs_kernels = pytest.mark.usefixtures("built_kernels")


def test_the_kernels_build_or_the_reason_is_the_platform() -> None:
    """A probe mismatch must fail the suite; only a missing compiler or torch feature may skip."""
    fused.available(build=True)
    reason = fused.unavailable_reason()
    assert reason is None or not reason.startswith("AssertionError"), reason


@pytest.fixture
def kernels_on(built_kernels: None) -> Iterator[None]:
    fused.force(True)
    yield
    fused.force(False)


def _eager_kernels() -> dict[str, Any]:
    """The Inductor kernels' torch operations run eagerly."""
    from llmzip import fused_calls

    return fused_calls.numpy_kernels(fused_calls.eager)


def test_probe_holds_for_the_uncompiled_kernels() -> None:
    """The same torch operations run eagerly (what a call no compiled kernel fits runs)."""
    from llmzip import fused_check

    for case in fused_check.INDUCTOR_CASES:
        case(_eager_kernels())


def test_probe_holds_for_the_native_kernels(native_kernels: dict[str, Any]) -> None:
    """The hand-written kernels, compiled alone (no Inductor build needed)."""
    from llmzip import fused_check

    for case in fused_check.NATIVE_CASES:
        case(native_kernels)


def test_probe_catches_a_kernel_off_by_one(native_kernels: dict[str, Any]) -> None:
    from llmzip import fused_check

    kernels = _eager_kernels() | native_kernels
    for name, broken in (("linear8_int", lambda *a: kernels["linear8_int"](*a) + 1),
                         ("attend", lambda *a: kernels["attend"](*a) ^ 1),
                         ("attend8", lambda *a: kernels["attend8"](*a) - 1),
                         ("head_tables", lambda *a: np.add(kernels["head_tables"](*a), 1, out=a[-1])),
                         ("quantize_rows", lambda *a: (kernels["quantize_rows"](*a)[0], kernels["quantize_rows"](*a)[1] + 1)),
                         ("mix_terms", lambda *a: tuple(t + (i == 2) for i, t in enumerate(kernels["mix_terms"](*a)))),
                         ("mix_tables", lambda *a: kernels["mix_tables"](*a) + 1),
                         ("ngram_lookup", lambda *a: (kernels["ngram_lookup"](*a)[0], kernels["ngram_lookup"](*a)[1] * 2)),
                         ("ngram_learn", lambda *a: [kernels["ngram_learn"](*a) for _ in range(2)]),
                         ("divide_rows", lambda *a: kernels["divide_rows"](*a) + 1)):
        with pytest.raises(AssertionError, match="differs"):
            for case in fused_check.CASES:
                case({**kernels, name: broken})


@needs_kernels
@pytest.mark.parametrize("seed, rows", [(0, 3), (1, 3), (2, 30)])
def test_linear_layer_outputs_match(seed: int, rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Up to NATIVE_MAX_ROWS rows (33) by the native layer where the CPU has VNNI, more (330) by
    Inductor's kernel: numpy's integers either way."""
    from llmzip.linear8 import NATIVE_MAX_ROWS

    rng = np.random.default_rng(seed)
    layer = quantize_linear8(rng.normal(size=(96, 40)), rng.normal(size=40), ACT_FRAC, 16)
    x = rng.integers(-ACT_CLIP, ACT_CLIP + 1, size=(rows, 11, 96)) >> rng.integers(0, 20, size=(rows, 11, 1))
    want_int, want_float = layer(x), layer.float_out(x)
    names: list[str] = []
    kernel = fused.kernel
    monkeypatch.setattr(fused, "kernel", lambda name: names.append(name) or kernel(name))
    fused.force(True)
    try:
        got_int, got_float = layer(x), layer.float_out(x)
        native = rows * 11 <= NATIVE_MAX_ROWS and fused.native_linear()
    finally:
        fused.force(False)
    assert names == (["linear8_native"] * 2 if native else ["linear8_int", "linear8"])
    np.testing.assert_array_equal(want_int, got_int)
    np.testing.assert_array_equal(want_float, got_float)
    assert got_int.dtype == np.int64 and got_float.dtype == np.float64


@needs_kernels
@pytest.mark.parametrize("rows", [3, 12, 30])
def test_a_layer_with_its_residual_or_activation_matches(rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """``added`` and ``activated``: one native call where the CPU has VNNI (33 and 132 rows: one and
    three of its blocks of rows), else and for more rows (330) Inductor's layer then the native
    epilogue: the same integers as the composition on numpy."""
    from llmzip.linear8 import NATIVE_MAX_ROWS

    rng = np.random.default_rng(rows)
    layer = quantize_linear8(rng.normal(size=(96, 40)), rng.normal(size=40), ACT_FRAC, ACT_FRAC)
    x = rng.integers(-ACT_CLIP, ACT_CLIP + 1, size=(rows, 11, 96)) >> rng.integers(0, 20, size=(rows, 11, 1))
    h = rng.integers(-2**30, 2**30, size=(rows, 11, 40))
    want = (fixedpoint.clip_inplace(h + layer(x), 2**29),
            fixedpoint.activation_lookup(fixedpoint.clip_inplace(layer(x), ACT_CLIP), "gelu_new", ACT_FRAC))
    names: list[str] = []
    kernel = fused.kernel
    monkeypatch.setattr(fused, "kernel", lambda name: names.append(name) or kernel(name))
    fused.force(True)
    try:
        got = (layer.added(x, h, 2**29), layer.activated(x, ACT_CLIP, "gelu_new", ACT_FRAC))
        native = rows * 11 <= NATIVE_MAX_ROWS and fused.native_linear()
    finally:
        fused.force(False)
    assert names == (["linear8_native"] * 2 if native else ["epilogue", "linear8_int"] * 2)   # looked up in that order
    for w, g in zip(want, got):
        np.testing.assert_array_equal(w, g)
        assert g.dtype == np.int64 and g.shape == w.shape


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
@pytest.mark.parametrize("d", [192, 384, 7])
def test_norms_match_on_many_rows(d: int) -> None:
    """The one-kernel norms (their row scale by float64 division and square root) against numpy on
    thousands of rows of every scale: one rounding step off would change some row."""
    from llmzip.engine.common import RESID_CLIP, LayerNorm, RMSNorm

    rng = np.random.default_rng(d)
    h = rng.integers(-RESID_CLIP, RESID_CLIP + 1, size=(3000, d)) >> rng.integers(0, 40, size=(3000, 1))
    gamma = rng.normal(1.0, 0.3, size=d)
    for norm in (LayerNorm.quantize(gamma, rng.normal(0, 1, size=d)), RMSNorm.quantize(gamma)):
        for eps in (1e-5, 1e-6):
            want, calls = norm(h, eps), fused.kernel_calls()
            fused.force(True)
            try:
                got = norm(h, eps)
            finally:
                fused.force(False)
            assert fused.kernel_calls() == calls + 1
            np.testing.assert_array_equal(want, got)


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
    eager = fused.eager_calls()
    try:
        assert codec.compress(data, model) == plain
        assert fused.kernel_calls() > calls and not fused.active()   # used, and off after the call
        assert fused.eager_calls() == eager                          # every call fitted a compiled kernel
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
    try:
        monkeypatch.setenv("LLMZIP_FUSED", "0")
        assert fused.select(1 << 30, True) is False
        monkeypatch.setenv("LLMZIP_FUSED", "auto")
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert fused.select(1 << 30, False) is False            # GEMMs not on torch
        if fused.available():
            assert fused.select(10, True) is True                # loaded in this process: any size
            monkeypatch.setenv("OMP_NUM_THREADS", "2")           # GEMMs would fork teams: not by itself...
            assert fused.select(1 << 30, True) is False
            monkeypatch.setenv("LLMZIP_FUSED", "always")         # ...only when asked for
            assert fused.select(10, True) is True
    finally:
        fused.force(False)


def test_select_loads_by_the_call_size_and_never_builds_by_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the kernels are loaded: small calls stay on numpy without touching the cache, larger
    ones load a build; only LLMZIP_FUSED=always may build one."""
    asked: list[bool] = []
    monkeypatch.setattr(fused, "_kernels", None)
    monkeypatch.setattr(fused, "_load", lambda build: asked.append(build))   # finds nothing
    monkeypatch.setenv("LLMZIP_FUSED", "auto")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert not fused.select(fused.FUSED_LOAD_MIN_TOKENS - 1, True) and asked == []
    assert not fused.select(fused.FUSED_LOAD_MIN_TOKENS, True) and asked == [False]
    assert not fused.select(1 << 30, True) and asked == [False, False]
    monkeypatch.setenv("LLMZIP_FUSED", "always")
    assert not fused.select(1, False) and asked == [False, False, True]


def test_a_failing_build_is_replaced_only_when_building(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A build on disk that fails: without building, numpy (and no retry); a later call that may
    build replaces it once. A build of our own that fails is not built again."""
    from llmzip import fused_aot

    events: list[str] = []
    directory = tmp_path / "kernels" / "x"
    directory.mkdir(parents=True)
    (directory / fused_aot.MANIFEST).write_text("{}")
    fails = [True]
    monkeypatch.setattr(fused_aot, "build_dir", lambda: directory)
    monkeypatch.setattr(fused_aot, "discard", lambda d: events.append("discard"))
    monkeypatch.setattr(fused_aot, "build", lambda directory: events.append("build"))

    def proven(d: Path) -> tuple[Any, dict[str, Any]]:
        events.append("load")
        if fails[0] and "build" not in events:
            raise AssertionError("fused kernel attend differs from the numpy reference")
        return object(), {}

    monkeypatch.setattr(fused, "_proven", proven)
    monkeypatch.setattr(fused, "_kernels", None)
    monkeypatch.setattr(fused, "_failed", "")
    monkeypatch.setattr(fused, "_dispatcher", fused._dispatcher)   # restored after the test
    monkeypatch.setattr(fused, "_why", fused._why)
    assert fused._load(False) is None and events == ["load"] and fused._failed == "load"
    assert fused._load(False) is None and events == ["load"]              # not retried without building
    assert fused._load(True) == {} and events == ["load", "load", "discard", "build", "load"]

    (directory / fused_aot.MANIFEST).unlink()                             # no build yet: ours fails
    fails[0], events[:] = True, []
    monkeypatch.setattr(fused, "_kernels", None)
    monkeypatch.setattr(fused, "_failed", "")
    monkeypatch.setattr(fused_aot, "build", lambda directory: events.append("build"))
    def unloadable(d: Path) -> tuple[Any, dict[str, Any]]:
        events.append("load")
        raise OSError("no")

    monkeypatch.setattr(fused, "_proven", unloadable)
    assert fused._load(True) is None and events == ["build", "load"] and fused._failed == "build"
    assert fused._why == "OSError: no"


def test_kernels_turn_on_by_themselves_only_with_one_openmp_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmzip import runtime

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert runtime.one_openmp_thread()
    for value in ("2", ""):
        monkeypatch.setenv("OMP_NUM_THREADS", value)
        assert not runtime.one_openmp_thread()
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert not runtime.one_openmp_thread()


@needs_kernels
def test_a_strided_input_is_made_contiguous_first(kernels_on: None) -> None:
    """A compiled kernel reads its inputs with the example's layout: others must be copied first."""
    rng = np.random.default_rng(9)
    layer = quantize_linear8(rng.normal(size=(48, 24)), rng.normal(size=24), ACT_FRAC, 16)
    wide = rng.integers(-ACT_CLIP, ACT_CLIP + 1, size=(10, 96))
    eager = fused.eager_calls()
    for x in (wide[:, ::2], wide[:, :48], wide[::2, 48:]):
        got = fused.kernel("linear8_int")(x, *layer.kernel_args())
        assert fused.eager_calls() == eager                      # the compiled kernel, on a copy
        fused.force(False)
        np.testing.assert_array_equal(layer(np.ascontiguousarray(x)), got)
        fused.force(True)


def test_a_build_is_named_by_what_it_depends_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import torch

    from llmzip import fused_aot

    monkeypatch.setenv(fused_aot.CACHE_ENV, str(tmp_path))
    here = fused_aot.build_dir()
    assert here.parent == tmp_path / "kernels" and not fused_aot.built(here)
    assert fused_aot.build_dir(fused_aot.SPECS[:1]) != here
    monkeypatch.setattr(torch, "__version__", torch.__version__ + "+other")
    assert fused_aot.build_dir() != here
    monkeypatch.setattr(fused_aot, "_cpu_features", lambda: "flags : another cpu")
    assert fused_aot.build_dir() != here


@needs_kernels
def test_one_kernel_builds_loads_and_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A build of one spec into an empty cache: finished (manifest last), loaded, run, not rebuilt."""
    import torch

    from llmzip import fused_aot, fused_calls

    monkeypatch.setenv(fused_aot.CACHE_ENV, str(tmp_path))
    specs = [s for s in fused_aot.SPECS if s.name == "rotate"]
    directory = fused_aot.build(specs)
    assert fused_aot.built(directory) and [p.name for p in tmp_path.joinpath("kernels").iterdir()] == [directory.name]
    mtime = (directory / fused_aot.MANIFEST).stat().st_mtime_ns
    assert fused_aot.build(specs) == directory and (directory / fused_aot.MANIFEST).stat().st_mtime_ns == mtime
    compiled, native = fused_aot.load(directory, specs)
    assert sorted(native) == ["activation", "attend8", "divide_rows", "epilogue", "head_tables", "linear8_native",
                              "mix_tables", "mix_terms", "ngram_learn", "ngram_lookup", "norm", "quantize_rows", "swiglu"]
    example = specs[0].example()
    got = compiled.run("rotate", example)[0]
    want = fused_calls.eager("rotate", example)[0]
    assert compiled.eager_calls == 0 and torch.equal(got, want)
    compiled.run("rotate", (example[0].to(torch.int32), *example[1:]))     # no kernel of that dtype: eager
    assert compiled.eager_calls == 1


def test_a_build_replaces_a_directory_without_manifest_and_old_leftovers(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    import os
    import time

    from llmzip import fused_aot

    monkeypatch.setattr(fused_aot, "_compile", lambda spec, library: library.write_bytes(b"lib"))
    kernels = tmp_path / "kernels"
    target, old, live = kernels / "abc", kernels / ".build-old", kernels / ".build-live"
    for d in (target, old, live):
        d.mkdir(parents=True)
    (target / "half-written.so").write_bytes(b"")
    past = time.time() - 2 * fused_aot.STALE_SECONDS
    os.utime(old, (past, past))
    assert fused_aot.build(fused_aot.SPECS[:2], target) == target
    manifest = fused_aot.json.loads((target / fused_aot.MANIFEST).read_text())
    assert sorted(p.name for p in target.iterdir()) == sorted([fused_aot.MANIFEST, *manifest["files"].values()])
    assert sorted(p.name for p in kernels.iterdir()) == [".build-live", "abc"]   # a live build is left alone
    assert target.stat().st_mode & 0o777 == 0o755


@needs_kernels
def test_a_call_unlike_the_kernels_example_runs_eagerly(kernels_on: None) -> None:
    """Same dtypes and ranks, other size relations (torch broadcasts these): not the compiled kernel."""
    rng = np.random.default_rng(10)
    x = rng.integers(-ACT_CLIP, ACT_CLIP + 1, size=(4, 48))
    w = rng.integers(-127, 128, size=(48, 24)).astype(np.int8)
    one = np.ones(1)
    eager = fused.eager_calls()
    got = fused.kernel("linear8_int")(x, w, one * 2.0**-20, one)
    assert fused.eager_calls() == eager + 1
    from llmzip import fused_calls

    want = fused_calls.eager("linear8_int", (x, w, one * 2.0**-20, one))[0].numpy()
    np.testing.assert_array_equal(want, got)


@needs_kernels
def test_the_kernels_command_says_where_the_build_is(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from llmzip.cli import main

    result = CliRunner().invoke(main, ["kernels"])
    assert result.exit_code == 0 and "loaded, and equal to the numpy engine" in result.output
    monkeypatch.setenv("LLMZIP_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(fused, "_kernels", None)
    monkeypatch.setattr(fused, "_failed", "")
    result = CliRunner().invoke(main, ["kernels"])
    assert result.exit_code == 0 and "not built on this machine" in result.output and str(tmp_path) in result.output


@needs_kernels
def test_attention_at_the_float32_bound_matches(kernels_on: None) -> None:
    """SPAN positions of equal scores (every weight 2**15, both bytes' sums at their largest) and
    values at +-127 with equal exponents: the float32 value GEMMs' sums at the top of their range."""
    rows, kv, hd, end = 1, 1, 8, attention8.SPAN
    k = np.full((rows, kv, end, hd), 1 << 20, dtype=np.int64)
    v = np.where(np.arange(hd) % 2, 127, -127).astype(np.int64) * np.ones((rows, kv, end, 1), dtype=np.int64) << 13
    v[:, :, ::3] = (v[:, :, ::3] * 255) >> 8                     # weights below 2**15 once shifted: low bytes
    q = np.full((rows, kv, 1, hd), 1 << 30, dtype=np.int64)
    outs, eager = [], fused.eager_calls()
    for on in (True, False):
        fused.force(on)
        cache = attention8.KVCache8(1, rows, kv, end, hd)
        attention8.store(cache, 0, k[:, :, :-1], v[:, :, :-1], 0, SCORE_SHIFT)
        attention8.store(cache, 0, k[:, :, -1:], v[:, :, -1:], end - 1, SCORE_SHIFT)
        outs.append(attention8.attend(q, cache, 0, end - 1))
    fused.force(False)
    assert fused.eager_calls() == eager                          # compiled kernels throughout
    np.testing.assert_array_equal(outs[0], outs[1])


def test_clean_removes_other_builds_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from llmzip import fused_aot
    from llmzip.cli import main

    monkeypatch.setenv(fused_aot.CACHE_ENV, str(tmp_path))
    here = fused_aot.build_dir()
    for d in (here, here.parent / "0ld", here.parent / ".build-live"):
        d.mkdir(parents=True)
        (d / "x.so").write_bytes(b"")
    monkeypatch.setattr(fused, "_kernels", None)
    monkeypatch.setattr(fused, "_failed", "")
    result = CliRunner().invoke(main, ["kernels", "--clean"])
    assert result.exit_code == 0 and f"removed {here.parent / '0ld'}" in result.stderr
    assert sorted(p.name for p in here.parent.iterdir()) == sorted([".build-live", here.name])


def test_kernel_bit_length_equals_the_reference_everywhere() -> None:
    """Every power of two and its neighbours up to 2**63 - 1, as the float64 conversion rounds them."""
    torch = pytest.importorskip("torch")

    from llmzip import fixedpoint, fused_torch

    x = sorted({max(0, min((1 << k) + d, 2**63 - 1)) for k in range(64) for d in (-1, 0, 1)})
    x = np.array(x, dtype=np.int64)
    np.testing.assert_array_equal(fused_torch._bit_length(torch.from_numpy(x)).numpy(), fixedpoint.bit_length(x))


def test_the_native_layer_checks_its_arrays(native_kernels: dict[str, Any]) -> None:
    """Strided inputs are copied first; inputs and weights of other shapes or types are refused."""
    native = native_kernels["linear8_native"]
    if not native.vectorised:
        pytest.skip("a library built without AVX-512 VNNI has no linear layer")
    rng = np.random.default_rng(11)
    layer = quantize_linear8(rng.normal(size=(48, 24)), rng.normal(size=24), ACT_FRAC, 16)
    wide = rng.integers(-ACT_CLIP, ACT_CLIP + 1, size=(10, 96))
    for x in (wide[:, ::2], wide[::2, 48:]):
        np.testing.assert_array_equal(layer(np.ascontiguousarray(x)), native(x, *layer.kernel_args()))
    with pytest.raises(ValueError, match="shapes"):
        native(wide, *layer.kernel_args())
    w, factor, bias = layer.kernel_args()
    with pytest.raises(ValueError, match="int8 weights"):
        native(wide[:, :48], w.astype(np.int16), factor, bias)
    with pytest.raises(ValueError, match="dtype or layout"):
        native(wide[:, :48], w, factor.astype(np.float32), bias)
