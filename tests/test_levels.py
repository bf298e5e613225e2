"""Compression levels: the table, the -1 .. -9 / --fast / --best / --level options, overrides,
and that no level is needed to decode."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import llmzip
from llmzip import cli, codec, frames, levels
from llmzip.cli import jobs
from llmzip.model import EMBEDDED_NAME, shipped_models
from conftest import PROSE

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli.main, list(args), env=env, catch_exceptions=False)


def lm_fields(blob: bytes) -> list:
    return list(llmzip.read_info(blob).lm_fields.values())


def methods(blob: bytes) -> set[str]:
    return set(llmzip.read_info(blob).method_mix())


@pytest.fixture
def no_model_load(monkeypatch):
    """Any attempt to load a model fails the test (the CLI's cache is emptied first)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a level without a model loaded one")

    jobs.load.cache_clear()
    monkeypatch.setattr("llmzip.model.load_model", refuse)
    yield
    jobs.load.cache_clear()


# --- the table -----------------------------------------------------------------------------------

def test_one_row_per_level_and_every_model_is_shipped():
    assert [row.number for row in levels.LEVELS] == list(range(1, 10))
    assert levels.MIN_LEVEL <= levels.DEFAULT_LEVEL <= levels.MAX_LEVEL
    assert {row.model for row in levels.LEVELS} - {None} <= set(shipped_models())
    for row in levels.LEVELS:
        assert set(row.fallbacks) <= set(levels.ALL_FALLBACKS) and "stored" in row.fallbacks
        assert row.chunk_tokens is None or row.chunk_tokens >= 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        levels.LEVELS[0].model = "x"


def test_the_top_levels_code_with_the_llama_model():
    """-7 .. -9 name the shipped Llama in their archives, with their own chunking and mixing, and
    decode with the plain API (the model found from the archive)."""
    assert [levels.get(n).model for n in (7, 8, 9)] == [levels.LLAMA] * 3 and levels.LLAMA in shipped_models()
    sample = PROSE[:300]
    blob = levels.compress(sample, 9, method="lm")
    assert [(f.model_id, f.chunk_tokens, bool(f.mix_params)) for f in lm_fields(blob)] == [(levels.LLAMA, 511, True)]
    assert llmzip.decompress(blob) == sample


def test_the_default_level_is_the_frame_coder_default():
    """The default level does exactly what llmzip.compress did before levels existed (its
    archives are the golden ones): same model, mixing, chunking, fallbacks, model on text."""
    row = levels.get(levels.DEFAULT_LEVEL)
    assert row.model == EMBEDDED_NAME
    options = levels.frame_options(levels.resolve())
    assert options == frames.Options()
    assert options.mixing == codec.DEFAULT_MIX and options.try_model


def test_invalid_levels_are_refused_by_the_library():
    for bad in (0, 10, -1):
        with pytest.raises(ValueError, match="level must be in 1..9"):
            levels.get(bad)


def test_resolve_explicit_choices_win():
    base = levels.get(levels.DEFAULT_LEVEL)
    assert levels.resolve(mixing=False).mixing is False
    assert levels.resolve(chunk_tokens=10).chunk_tokens == 10
    assert levels.resolve(method="ppmd").method == "ppmd"
    assert levels.resolve(model="dir").model == "dir"
    assert levels.resolve(default_model="env").model == "env"      # LLMZIP_MODEL replaces a level's model...
    assert levels.resolve(1, default_model="env").model is None     # ...but never turns one on
    assert levels.resolve(1, model="dir").model == "dir"            # an explicit model does
    assert levels.resolve(1, method="lm").model == levels.EMBEDDED
    chosen = levels.resolve()
    assert (chosen.model, chosen.mixing, chosen.chunk_from_level) == (base.model, base.mixing, True)


# --- options -------------------------------------------------------------------------------------

def parsed_level(*args: str) -> int | None:
    ctx = cli.main.commands["compress"].make_context("compress", list(args))
    return ctx.params["level"]


@pytest.mark.parametrize("args, level", [
    ([], None), (["-1"], 1), (["--fast"], 1), (["-9"], 9), (["--best"], 9), (["-5"], 5), (["--level", "3"], 3),
    (["-9", "-c", "f"], 9), (["-9c", "f"], 9), (["-c9", "f"], 9), (["-1", "-9"], 9), (["-9", "-1"], 1),
    (["--level", "3", "-7"], 7), (["-7", "--level", "3"], 3), (["-k9", "--no-mix", "f"], 9),
])
def test_level_flags_parse_like_gzip(args, level):
    assert parsed_level(*args) == level


@pytest.mark.parametrize("args, message", [
    (["-0"], "No such option '-0'"), (["--level", "10"], "10 is not in the range 1<=x<=9"),
    (["--level", "0"], "0 is not in the range 1<=x<=9"), (["--level", "x"], "'x' is not a valid integer"),
])
def test_invalid_levels_are_usage_errors(args, message):
    result = run("compress", *args)
    assert result.exit_code == 1 and message in result.stderr and result.stderr.startswith("llmzip: ")


def test_help_lists_every_level():
    text = run("compress", "--help").stdout
    for row in levels.LEVELS:
        assert f"-{row.number}  {row.summary}" in text
    assert "--fast" in text and "--best" in text and "--level N" in text


# --- round trips ---------------------------------------------------------------------------------

@pytest.mark.parametrize("level", [row.number for row in levels.LEVELS])
def test_every_level_round_trips_through_the_cli_and_the_library(level, prose_file):
    """Archives of every level decode with the plain decompress and with `llmzip decompress`
    (neither is told the level)."""
    blob = run("compress", f"-{level}", "-c", str(prose_file)).stdout_bytes
    assert llmzip.decompress(blob) == PROSE
    decoded = CliRunner().invoke(cli.main, ["decompress", "-c"], input=blob, catch_exceptions=False)
    assert (decoded.exit_code, decoded.stdout_bytes) == (0, PROSE)
    assert levels.compress(PROSE, level) == blob
    assert run("compress", "--level", str(level), "-c", str(prose_file)).stdout_bytes == blob
    row = levels.get(level)
    if row.model is None:
        assert "lm" not in methods(blob)
    else:
        assert [(f.model_id, bool(f.mix_params)) for f in lm_fields(blob)] == [(row.model, row.mixing)]


def test_default_level_writes_the_archive_llmzip_compress_wrote(prose_file):
    plain = run("compress", "-c", str(prose_file)).stdout_bytes
    assert plain == llmzip.compress(PROSE) == run("compress", f"-{levels.DEFAULT_LEVEL}", "-c",
                                                  str(prose_file)).stdout_bytes


@pytest.mark.parametrize("level", [row.number for row in levels.LEVELS if row.model is None])
def test_a_level_without_a_model_never_loads_one(level, prose_file, no_model_load, tiny_model_dir):
    blob = run("compress", f"-{level}", "-c", str(prose_file)).stdout_bytes
    assert methods(blob) <= {"stored", *levels.get(level).fallbacks} and llmzip.decompress(blob) == PROSE
    env = run("compress", f"-{level}", "-c", str(prose_file), env={"LLMZIP_MODEL": str(tiny_model_dir)})
    assert env.exit_code == 0 and env.stdout_bytes == blob
    assert levels.compress(PROSE, level) == blob


def test_level_1_tries_lzma_only(prose_file, no_model_load):
    blob = run("compress", "-1", "-c", str(prose_file)).stdout_bytes
    assert methods(blob) == {"lzma"}
    assert methods(run("compress", "-2", "-c", str(prose_file)).stdout_bytes) == {"ppmd"}


# --- explicit options win over the level ---------------------------------------------------------

def test_explicit_options_win_over_the_level(prose_file, tiny_model_dir):
    tiny = ["--model", str(tiny_model_dir)]
    forced = run("compress", "-1", *tiny, "--method", "lm", "-c", str(prose_file)).stdout_bytes
    assert [f.model_id for f in lm_fields(forced)] == [tiny_model_dir.name]       # -1 had no model
    assert not lm_fields(forced)[0].mix_params                                      # -1's mixing: off
    mixed = run("compress", "-1", *tiny, "--method", "lm", "--mix", "-c", str(prose_file)).stdout_bytes
    assert lm_fields(mixed)[0].mix_params == codec.DEFAULT_MIX.to_bytes()
    unmixed = run("compress", "-6", *tiny, "--method", "lm", "--no-mix", "-c", str(prose_file)).stdout_bytes
    assert not lm_fields(unmixed)[0].mix_params
    chunked = run("compress", "-9", *tiny, "--method", "lm", "--chunk-tokens", "10", "-c", str(prose_file))
    assert [f.chunk_tokens for f in lm_fields(chunked.stdout_bytes)] == [10]
    assert methods(run("compress", "-9", "--method", "bz2", "-c", str(prose_file)).stdout_bytes) == {"bz2"}
    for blob in (forced, mixed, unmixed, chunked.stdout_bytes):
        assert llmzip.decompress(blob, str(tiny_model_dir)) == PROSE
    assert levels.compress(PROSE, 1, model=str(tiny_model_dir), method="lm") == forced


def test_environment_model_replaces_the_level_model(prose_file, tiny_model_dir):
    result = run("compress", "-9", "--method", "lm", "--chunk-tokens", "32", "-c", str(prose_file),
                 env={"LLMZIP_MODEL": str(tiny_model_dir)})
    assert [f.model_id for f in lm_fields(result.stdout_bytes)] == [tiny_model_dir.name]


@pytest.mark.parametrize("level", [row.number for row in levels.LEVELS if (row.chunk_tokens or 0) > 63])
def test_a_level_chunk_too_long_for_the_model_is_named(level, prose_file, tiny_model_dir):
    chunk = levels.get(level).chunk_tokens
    result = run("compress", f"-{level}", "--model", str(tiny_model_dir), "--method", "lm", str(prose_file))
    assert (result.exit_code, result.stderr) == (
        1, f"llmzip: {prose_file}: level {level} codes chunks of {chunk} tokens, this model at most 63: "
           "give --chunk-tokens\n")


# --- the benchmark -------------------------------------------------------------------------------

def test_levels_benchmark_tiny_run(tmp_path, tiny_model_dir):
    sample = tmp_path / "sample.txt"
    sample.write_bytes(PROSE * 3)
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "levels.py"), "--only", "1", "6", "--model", str(tiny_model_dir),
         "--files", str(sample), "--threads", "1", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "levels.json").read_text())
    assert [r["label"] for r in report["rows"]] == ["-1", "-6"] and report["cpu"]
    for r in report["rows"]:
        entry = r["files"]["sample.txt"]
        assert entry["original"] == len(PROSE) * 3 and entry["bits_per_byte"] == pytest.approx(
            8 * entry["archive"] / entry["original"])
        assert r["compress_kbps"] > 0 and r["decompress_kbps"] > 0
    assert "| -6 |" in (tmp_path / "levels.md").read_text()
