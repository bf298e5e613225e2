"""The command line: naming, refusals, exit statuses and the exact one-line messages."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import llmzip
from llmzip import __version__, cli
from llmzip.errors import (CorruptArchiveError, ModelLoadError, ModelMismatchError, NotAnArchiveError,
                           TokenizerError, UnsupportedFormatError)
from clitools import SAMPLES, archive, err, llz, lm_frames  # noqa: F401  (fixtures and helpers)
from conftest import PROSE

REPO = Path(__file__).resolve().parents[1]


# --- round trips ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(SAMPLES))
def test_round_trip_through_files(llz, tmp_path, name):
    src, arc, out = tmp_path / name, tmp_path / f"{name}.archive", tmp_path / f"{name}.out"
    src.write_bytes(SAMPLES[name])
    assert llz("compress", str(src), "-o", str(arc)).exit_code == 0
    assert llmzip.read_info(arc.read_bytes()).original_size == len(SAMPLES[name])
    result = llz("decompress", str(arc), "-o", str(out))
    assert (result.exit_code, result.stdout_bytes, err(result)) == (0, b"", "")
    assert out.read_bytes() == SAMPLES[name]
    assert src.read_bytes() == SAMPLES[name]      # the input is never touched


def test_round_trip_through_stdin_and_stdout(llz):
    blob = llz("compress", input=PROSE).stdout_bytes
    assert blob.startswith(b"LLMZ")
    assert llz("decompress", "-", input=blob).stdout_bytes == PROSE


def _python_llmzip() -> str:
    return f"{sys.executable} -m llmzip.cli"


def test_real_shell_pipeline(tiny_model_dir, tmp_path):
    src = tmp_path / "random.bin"
    src.write_bytes(SAMPLES["random"] + SAMPLES["invalid_utf8"])
    llmzip = _python_llmzip()
    pipeline = (f"cat {src} | {llmzip} compress -c --model {tiny_model_dir} "
                f"| {llmzip} decompress -c --model {tiny_model_dir} | cmp - {src}")
    done = subprocess.run(["sh", "-c", pipeline], cwd=REPO, capture_output=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")


def test_real_pipeline_streams_frames(tmp_path):
    """A scaled-down `head -c N /dev/urandom | llmzip compress -c | llmzip decompress -c | cmp`:
    3 MB through pipes in 256 KiB frames (no model is loaded: random data is never text)."""
    src = tmp_path / "random"
    src.write_bytes(np.random.default_rng(11).bytes(3_000_000))
    command = _python_llmzip()
    pipeline = (f"cat {src} | {command} compress -c --frame-size 256K | tee {tmp_path}/a.llz "
                f"| {command} decompress -c | cmp - {src}")
    done = subprocess.run(["sh", "-c", pipeline], cwd=REPO, capture_output=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    info = llmzip.read_info((tmp_path / "a.llz").read_bytes())
    assert len(info.frames) == 12 and set(info.method_mix()) == {"stored"}


def test_real_process_exit_statuses(tiny_model_dir, tmp_path):
    usage = subprocess.run([sys.executable, "-m", "llmzip.cli", "compress", "--bogus"],
                           cwd=REPO, capture_output=True, timeout=60)
    assert usage.returncode == 1
    assert usage.stderr.startswith(b"llmzip: No such option")
    junk = tmp_path / "junk.llz"
    junk.write_bytes(b"not an archive at all")
    bad = subprocess.run([sys.executable, "-m", "llmzip.cli", "test", str(junk)],
                         cwd=REPO, capture_output=True, timeout=60)
    assert (bad.returncode, bad.stdout, bad.stderr) == (1, b"", f"llmzip: {junk}: not an llmzip archive\n".encode())


def test_model_from_environment(tiny_model_dir, prose_file, monkeypatch):
    monkeypatch.setenv("LLMZIP_MODEL", str(tiny_model_dir))
    result = CliRunner().invoke(cli.main, ["compress", "-c", str(prose_file)])
    assert result.exit_code == 0 and result.stdout_bytes.startswith(b"LLMZ")


def test_threads_and_batch_size_do_not_change_the_archive(llz, prose_file):
    plain = llz("compress", "-c", str(prose_file)).stdout_bytes
    tuned = llz("compress", "-c", "-T", "1", "--batch-size", "2", str(prose_file)).stdout_bytes
    assert plain == tuned


def test_chunk_tokens(llz, prose_file, tmp_path):
    small = llz("compress", "-c", "--method", "lm", "--chunk-tokens", "10", str(prose_file)).stdout_bytes
    assert [f.chunk_tokens for f in lm_frames(small)] == [10]
    assert llz("decompress", "-c", input=small).stdout_bytes == PROSE
    result = llz("compress", "-c", "--method", "lm", "--chunk-tokens", "64", str(prose_file))
    assert (result.exit_code, err(result)) == (
        1, f"llmzip: {prose_file}: --chunk-tokens must be at most 63 for this model\n")


# --- naming, overwriting, removing ---------------------------------------------------------------

def test_default_names_and_overwrite_refusal(llz, prose_file, archive):
    assert archive.exists() and prose_file.exists()          # inputs are kept by default
    result = llz("decompress", str(archive))
    assert (result.exit_code, err(result)) == (
        1, f"llmzip: {archive}: output {prose_file} already exists; use -f to overwrite\n")
    prose_file.write_bytes(b"stale")
    assert llz("decompress", "-f", str(archive)).exit_code == 0
    assert prose_file.read_bytes() == PROSE
    prose_file.unlink()
    assert llz("decompress", str(archive)).exit_code == 0
    assert prose_file.read_bytes() == PROSE


def test_output_gets_the_input_mode_and_mtime(llz, prose_file):
    prose_file.chmod(0o640)
    os.utime(prose_file, ns=(1_000_000_000, 1_234_567_890_000_000_000))
    assert llz("compress", str(prose_file)).exit_code == 0
    made = os.stat(f"{prose_file}.llz")
    assert (made.st_mode & 0o777, made.st_mtime_ns) == (0o640, 1_234_567_890_000_000_000)


def test_never_writes_onto_the_input(llz, prose_file):
    result = llz("compress", "-f", str(prose_file), "-o", str(prose_file))
    assert (result.exit_code, err(result)) == (1, f"llmzip: {prose_file}: output {prose_file} is the input file\n")
    assert prose_file.read_bytes() == PROSE


def test_rm_removes_the_input_only_after_success(llz, prose_file, archive):
    archive.unlink()
    assert llz("compress", "--rm", str(prose_file)).exit_code == 0
    assert not prose_file.exists() and archive.exists()
    assert llz("decompress", "--rm", str(archive)).exit_code == 0
    assert prose_file.read_bytes() == PROSE and not archive.exists()
    assert llz("compress", "--rm", "-k", str(prose_file)).exit_code == 0     # the last one wins
    assert prose_file.exists() and archive.exists()


def test_rm_keeps_a_bad_archive(llz, tmp_path):
    bad = tmp_path / "bad.llz"
    bad.write_bytes(b"junk")
    assert llz("decompress", "--rm", str(bad)).exit_code == 1
    assert bad.exists() and not (tmp_path / "bad").exists()


def test_rm_never_applies_to_stdout(llz, prose_file):
    assert llz("compress", "--rm", "-c", str(prose_file)).exit_code == 0
    assert prose_file.exists()


def test_several_files_one_bad(llz, tmp_path):
    a, b, missing = tmp_path / "a", tmp_path / "b", tmp_path / "missing"
    a.write_bytes(b"first file\n")
    b.write_bytes(b"second file\n")
    result = llz("compress", str(a), str(missing), str(b))
    assert (result.exit_code, err(result)) == (1, f"llmzip: {missing}: No such file or directory\n")
    assert (tmp_path / "a.llz").exists() and (tmp_path / "b.llz").exists()


def test_suffix_warning_and_status_order(llz, prose_file, archive):
    result = llz("compress", str(archive))
    assert (result.exit_code, err(result)) == (2, f"llmzip: {archive}: already has .llz suffix -- unchanged\n")
    quiet = llz("compress", "-q", str(archive))
    assert (quiet.exit_code, err(quiet)) == (2, "")
    worst = llz("compress", str(archive), str(prose_file) + ".nope")
    assert worst.exit_code == 1                                  # an error outranks a warning
    assert llz("compress", "-f", str(archive)).exit_code == 0
    assert Path(f"{archive}.llz").exists()


def test_custom_suffix_and_unknown_suffix(llz, prose_file, tmp_path):
    assert llz("compress", "-S", ".zz", str(prose_file)).exit_code == 0
    zz = Path(f"{prose_file}.zz")
    result = llz("decompress", str(zz))
    assert (result.exit_code, err(result)) == (1, f"llmzip: {zz}: unknown suffix (not .llz); use -o or -c\n")
    out = tmp_path / "out"
    assert llz("decompress", str(zz), "-o", str(out)).exit_code == 0 and out.read_bytes() == PROSE
    prose_file.unlink()
    assert llz("decompress", "-S", ".zz", str(zz)).exit_code == 0 and prose_file.read_bytes() == PROSE


# --- usage, devices, terminals, interrupts -------------------------------------------------------

def test_usage_errors_exit_1(llz, prose_file):
    two = llz("compress", str(prose_file), str(prose_file), "-o", "x")
    assert (two.exit_code, err(two)) == (
        1, "llmzip: -o/--output takes a single input file (try 'llmzip compress --help')\n")
    both = llz("decompress", "-c", "-o", "x")
    assert both.exit_code == 1
    unknown = llz("compress", "--bogus")
    assert unknown.exit_code == 1 and err(unknown).startswith("llmzip: No such option '--bogus'")
    assert llz("frobnicate").exit_code == 1
    assert llz("compress", "-S", "").exit_code == 1
    assert llz().exit_code == 1


def test_version_and_help(llz):
    assert llz("--version").stdout == f"llmzip {__version__}\n"
    for args in (["--help"], ["compress", "--help"], ["decompress", "-h"], ["test", "--help"], ["list", "--help"]):
        result = llz(*args)
        assert result.exit_code == 0 and "Exit status: 0 success; 1 error" in result.stdout


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_dev_full(llz, prose_file):
    result = llz("compress", str(prose_file), "-o", "/dev/full")
    assert (result.exit_code, err(result)) == (1, f"llmzip: {prose_file}: No space left on device\n")


def test_missing_output_directory(llz, prose_file, tmp_path):
    out = tmp_path / "no-such-dir" / "x.llz"
    result = llz("compress", str(prose_file), "-o", str(out))
    assert (result.exit_code, err(result)) == (1, f"llmzip: {prose_file}: {out}: No such file or directory\n")


def test_dev_null_needs_no_force_and_rm_keeps_input(llz, prose_file):
    assert llz("compress", "--rm", str(prose_file), "-o", os.devnull).exit_code == 0
    assert prose_file.exists()


class FakeStream(io.BytesIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_refuse_terminal():
    assert cli.refuse_terminal(FakeStream(True), force=False)
    assert not cli.refuse_terminal(FakeStream(True), force=True)
    assert not cli.refuse_terminal(FakeStream(False), force=False)
    assert not cli.refuse_terminal(object(), force=False)      # no isatty at all


def test_terminal_refusals(llz, archive, monkeypatch):
    monkeypatch.setattr(cli.files, "is_terminal", lambda stream: True)
    out = llz("compress", input=PROSE)
    assert (out.exit_code, out.stdout_bytes, err(out)) == (
        1, b"", "llmzip: -: compressed data not written to a terminal; use -f to force\n")
    assert llz("compress", "-f", input=PROSE).stdout_bytes.startswith(b"LLMZ")
    inp = llz("decompress", input=archive.read_bytes())
    assert (inp.exit_code, err(inp)) == (1, "llmzip: -: compressed data not read from a terminal; use -f to force\n")
    assert llz("decompress", "-f", input=archive.read_bytes()).stdout_bytes == PROSE
    assert llz("decompress", str(archive), "-c").stdout_bytes == PROSE   # a named file is fine


def test_progress_goes_to_stderr_only(llz, prose_file, archive):
    result = llz("compress", "--progress", "--method", "lm", "-c", str(prose_file))
    assert result.exit_code == 0
    assert result.stdout_bytes == archive.read_bytes()
    assert "prose.txt" in err(result) and "B" in err(result)
    silent = llz("compress", "--no-progress", "-c", str(prose_file))
    assert err(silent) == ""


def test_interrupt_leaves_no_partial_output(llz, prose_file, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli.os, "replace", interrupted)
    other = prose_file.with_name("other.txt")
    other.write_bytes(b"never reached")
    result = llz("compress", str(prose_file), str(other))
    assert (result.exit_code, err(result)) == (1, f"llmzip: {prose_file}: interrupted\n")
    assert sorted(os.listdir(prose_file.parent)) == ["other.txt", "prose.txt"]   # stopped, cleaned up


@pytest.mark.parametrize("exc, expected", [
    (cli.SkipWarning("skipped"), (2, "skipped")),
    (cli.Refused("no"), (1, "no")),
    (NotAnArchiveError("whatever"), (1, "not an llmzip archive")),
    (CorruptArchiveError("bad crc"), (1, "corrupt archive: bad crc")),
    (UnsupportedFormatError("unsupported format version 9"), (1, "unsupported format version 9")),
    (ModelMismatchError("needs model x"), (1, "needs model x")),
    (ModelLoadError("cannot load"), (1, "cannot load")),
    (TokenizerError("not lossless"), (1, "not lossless")),
    (FileNotFoundError(2, "No such file or directory", "f"), (1, "No such file or directory")),
    (PermissionError(13, "Permission denied", "out"), (1, "out: Permission denied")),
    (KeyboardInterrupt(), (1, "interrupted")),
    (RuntimeError("boom"), (1, "internal error: RuntimeError: boom")),
])
def test_classify(exc, expected):
    assert cli.classify(exc, "f") == expected


def test_threads_and_batch_size_never_change_the_archive(tiny_model_dir, tmp_path):
    """`-T 2 --batch-size 16` and `-T 1 --batch-size 3`: same bytes, each decodes under the other."""
    src = tmp_path / "text"
    src.write_bytes(PROSE * 3 + SAMPLES["random"][:400])
    settings = {"a": ["-T", "2", "--batch-size", "16"], "b": ["-T", "1", "--batch-size", "3"]}
    base = [sys.executable, "-m", "llmzip.cli"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for name, opts in settings.items():
        subprocess.run(base + ["compress", "--model", str(tiny_model_dir), *opts, str(src), "-o",
                               str(tmp_path / f"{name}.llz")], check=True, env=env)
    assert (tmp_path / "a.llz").read_bytes() == (tmp_path / "b.llz").read_bytes()
    for name, opts in (("a", settings["b"]), ("b", settings["a"])):
        out = subprocess.run(base + ["decompress", "--model", str(tiny_model_dir), *opts, "-c",
                                     str(tmp_path / f"{name}.llz")], check=True, env=env, capture_output=True)
        assert out.stdout == src.read_bytes()
