"""Process-level tuning: the allocator setting and the thread limits a codec call applies."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from llmzip import codec
from llmzip.runtime import tune_allocator

REPO = Path(__file__).resolve().parents[1]


def test_tune_allocator_applies_on_glibc_only():
    assert tune_allocator() is (platform.libc_ver()[0] == "glibc")


def test_torch_runs_single_threaded_inside_a_codec_call_and_is_restored(golden, monkeypatch):
    torch = pytest.importorskip("torch")
    seen: list[int] = []
    advance = type(golden).advance

    def spy(self, state, tokens):
        seen.append(torch.get_num_threads())
        return advance(self, state, tokens)

    monkeypatch.setattr(type(golden), "advance", spy)
    before = torch.get_num_threads()
    blob = codec.compress(b"threads " * 50, golden, settings=codec.Settings(threads=2))
    assert codec.decompress(blob, golden, codec.Settings(threads=2)) == b"threads " * 50
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == before


def test_small_codec_calls_do_not_import_torch():
    """Importing torch (~1 s, ~200 MB) pays off only for large inputs. The backend is chosen by
    the codec call before its worker threads start, so they never race to import torch."""
    code = ("import sys; from llmzip import codec, linear8; from llmzip.model import load_model\n"
            f"m = load_model({str(REPO / 'tests' / 'data' / 'golden-tiny')!r})\n"
            "blob = codec.compress(b'small ' * 100, m)\n"
            "assert codec.decompress(blob, m) == b'small ' * 100\n"
            "print('torch' in sys.modules, linear8._use_torch)\n"
            "print(linear8.select_backend(linear8.INT8_GEMM_MIN_OPS), 'torch' in sys.modules)\n"
            "print(linear8.select_backend(10), codec.decompress(blob, m) == b'small ' * 100)")
    # once torch is loaded anyway, even a small call uses it
    assert _run_python(code).split() == ["False", "False", "True", "True", "True", "True"]


def test_the_gemm_backend_is_chosen_by_work_not_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model with 6x the operations per token earns torch's import back on 6x fewer tokens."""
    from llmzip import predictor
    from llmzip.model import load_model

    asked: list[int] = []
    monkeypatch.setattr(predictor, "select_backend", lambda ops, per_token: asked.append((ops, per_token)) or False)
    model = load_model(str(REPO / "tests" / "data" / "golden-tiny"))
    model.prepare(1000, encoding=True)
    model.prepare(1000)
    assert asked == [(1000 * model.flops_per_token, 0), (1000 * model.flops_per_token, model.flops_per_token)]


def test_decoding_a_large_model_earns_torch_back_sooner() -> None:
    code = ("import sys; from llmzip import linear8 as l\n"
            "print(l.select_backend(l.LARGE_DECODE_MIN_OPS, l.LARGE_MODEL_OPS - 1), 'torch' in sys.modules)\n"
            "print(l.select_backend(l.LARGE_DECODE_MIN_OPS, 0), 'torch' in sys.modules)\n"
            "print(l.select_backend(l.LARGE_DECODE_MIN_OPS, l.LARGE_MODEL_OPS), 'torch' in sys.modules)")
    assert _run_python(code).split() == ["False", "False", "False", "False", "True", "True"]


def _run_python(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], env=dict(clean, PYTHONPATH=str(REPO), **env),
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_cli_process_runs_one_openmp_thread_per_worker(tmp_path):
    """The CLI limits OpenMP before torch loads, so libgomp (and oneDNN's GEMMs) see it."""
    code = ("import os; from llmzip import cli\n"
            f"try:\n    cli.main(['list', {str(tmp_path / 'missing.llz')!r}])\nexcept SystemExit:\n    pass\n"
            "import torch; print(os.environ['OMP_NUM_THREADS'], torch.get_num_threads())")
    assert _run_python(code).split() == ["1", "1"]


def test_single_openmp_thread_keeps_a_user_setting_and_never_claims_too_late():
    code = "from llmzip.runtime import single_openmp_thread as s; print(s())"
    assert _run_python(code) == "True"
    assert _run_python(code, OMP_NUM_THREADS="2") == "False"
    assert _run_python("import torch; " + code) == "False"   # torch (libgomp) already loaded


def test_a_progress_bar_does_not_keep_the_decoder_from_forking(monkeypatch) -> None:
    """tqdm's monitor thread (started by llmzip's progress bar, or transformers' when it saves a
    model) is no reason to decode on threads; any other thread is."""
    import threading

    from llmzip import workers
    from llmzip.cli import jobs
    from llmzip.cli.files import Options

    if not workers.fork_available():
        pytest.skip("no fork here")
    if not workers.fork_safe():
        pytest.skip(f"threads left running by other tests: {[t.name for t in threading.enumerate()]}")
    monkeypatch.setattr(jobs, "show_progress", lambda opts: True)
    with jobs._progress(Options(mode="decompress"), 100, "x") as update:
        update(10)
        import tqdm
        assert tqdm.tqdm.monitor is not None and tqdm.tqdm.monitor.is_alive()   # the thread in question
        assert workers.fork_safe()
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert not workers.fork_safe()
    finally:
        stop.set()
        other.join()
