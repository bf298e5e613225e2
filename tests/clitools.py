"""Fixtures and helpers of the command-line tests (test_cli.py, test_cli_archives.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import llmzip
from llmzip import cli
from llmzip.frames import lm

SAMPLES = {
    "empty": b"",
    "one": b"x",
    "prose": b"It was the best of times, it was the worst of times.\r\n" * 12,
    "c": b"#include <stdio.h>\nint main(void) {\n  printf(\"hi\\n\");\n  return 0;\n}\n",
    "binary": bytes(range(256)) + b"\x00" * 100 + bytes(range(255, -1, -1)),
    "random": np.random.default_rng(7).bytes(3000),
    "invalid_utf8": b"caf\xc3 \xff\xfe\xed\xa0\x80 \xe2\x82 end\r",
}


@pytest.fixture
def llz(tiny_model_dir):
    """Run ``llmzip ARGS`` in-process with the tiny model (``--model`` is added after the subcommand)."""
    def run(*args: str, input: bytes | None = None, model: Path | None = tiny_model_dir):
        argv = list(args)
        if model is not None and argv and argv[0] in ("compress", "decompress", "test"):
            argv[1:1] = ["--model", str(model)]
        return CliRunner().invoke(cli.main, argv, input=input, catch_exceptions=False)
    return run


@pytest.fixture
def archive(llz, prose_file):
    """``prose.txt.llz`` next to ``prose.txt``: one language-model frame (the tiny model, whose
    random weights lose to every fallback, is forced)."""
    assert llz("compress", "--method", "lm", str(prose_file)).exit_code == 0
    return Path(f"{prose_file}.llz")


def lm_frames(blob: bytes) -> list[lm.LMFields]:
    return list(llmzip.read_info(blob).lm_fields.values())


def err(result) -> str:
    return result.stderr
