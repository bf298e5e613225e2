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


def test_int8_backend_is_chosen_when_the_model_loads():
    """Not lazily inside a codec worker thread (where two workers would race to import torch)."""
    code = ("from llmzip import linear8; from llmzip.model import load_model; "
            f"load_model({str(REPO / 'tests' / 'data' / 'golden-tiny')!r}); "
            "print(linear8._int_mm_backend.cache_info().currsize)")
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(REPO)),
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
