"""The command line: naming, refusals, exit statuses and the exact one-line messages."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import llmzip
from llmzip import __version__, cli, frames
from llmzip.frames import lm
from llmzip.errors import (CorruptArchiveError, ModelLoadError, ModelMismatchError, NotAnArchiveError,
                           TokenizerError, UnsupportedFormatError)
from llmzip.engine import ENGINES
from llmzip.model import load_model
from conftest import PROSE

REPO = Path(__file__).resolve().parents[1]
SAMPLES = {
    "empty": b"",
    "one": b"x",
    "prose": b"It was the best of times, it was the worst of times.\r\n" * 12,
    "c": b"#include <stdio.h>\nint main(void) {\n  printf(\"hi\\n\");\n  return 0;\n}\n",
    "binary": bytes(range(256)) + b"\x00" * 100 + bytes(range(255, -1, -1)),
    "random": np.random.default_rng(7).bytes(3000),
    "invalid_utf8": b"caf\xc3 \xff\xfe\xed\xa0\x80 \xe2\x82 end\r",
}
MIXED = (REPO / "README.md").read_bytes()[:20_000] + np.random.default_rng(1).bytes(20_000)  # -> ppmd, stored


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


# --- test and list -------------------------------------------------------------------------------

def test_test_command(llz, archive, tmp_path):
    result = llz("test", "-v", str(archive))
    assert result.exit_code == 0 and result.stdout_bytes == b""
    size = archive.stat().st_size
    assert re.fullmatch(rf"  frame 0 at offset 5: lm, {len(PROSE)} -> \d+ bytes \(\d+\.\d\d bits/byte\)\n"
                        rf"{re.escape(str(archive))}: {size} -> {len(PROSE)} bytes "
                        r"\(\d+\.\d\d bits/byte\) in \d+\.\d s OK\n", err(result))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prose.txt", "prose.txt.llz"]
    bad = tmp_path / "bad.llz"
    bad.write_bytes(archive.read_bytes()[:-1])
    result = llz("test", str(archive), str(bad))
    assert re.fullmatch(rf"llmzip: {re.escape(str(bad))}: corrupt archive: trailer at offset \d+: truncated archive\n",
                        err(result))
    assert result.exit_code == 1


def test_decompress_and_test_accept_and_ignore_a_level(llz, prose_file, archive):
    """As gzip -d -9 and zstd -d -19 do: a script that passes its level to every call still works."""
    plain = llz("decompress", "-c", str(archive))
    assert (plain.exit_code, plain.stdout_bytes, err(plain)) == (0, PROSE, "")
    for level in (["-9"], ["--best"], ["--fast"], ["-3"], ["--level", "3"], ["-1", "--level", "9"]):
        again = llz("decompress", *level, "-c", str(archive))
        assert (again.exit_code, again.stdout_bytes, err(again)) == (0, PROSE, "")
    assert llz("decompress", "-9c", str(archive)).stdout_bytes == PROSE
    prose_file.unlink()
    assert llz("decompress", "-9", str(archive)).exit_code == 0 and prose_file.read_bytes() == PROSE
    checked = [llz("test", *level, str(archive)) for level in ([], ["--best"], ["-9"], ["--level", "5"])]
    assert {(r.exit_code, r.stdout_bytes, err(r)) for r in checked} == {(0, b"", "")}
    refused = llz("test", "--level", "10", str(archive))       # still checked as compress checks it
    assert refused.exit_code == 1 and "10 is not in the range 1<=x<=9" in err(refused)


@pytest.mark.parametrize("command", ["decompress", "test"])
def test_help_says_the_level_is_ignored(llz, command):
    text = " ".join(llz(command, "--help").stdout.split())
    assert "--level N Accepted and ignored, as are -1 .. -9, --fast and --best: an archive records all its " \
           "decoder needs." in text
    assert "Level 9" not in text and "Compression level" not in text


def test_test_verbose_lists_the_frames(llz, tmp_path):
    src = tmp_path / "mixed"
    src.write_bytes(MIXED)
    assert llz("compress", "--frame-size", "8K", str(src)).exit_code == 0
    result = llz("test", "-v", f"{src}.llz")
    lines = err(result).splitlines()
    assert result.exit_code == 0 and len(lines) >= 3
    info = llmzip.read_info(Path(f"{src}.llz").read_bytes())
    assert lines[:-1] == [f"  frame {f.index} at offset {f.offset}: {frames.METHOD_NAMES[f.method]}, "
                          f"{f.raw_size} -> {f.payload_size} bytes ({8 * f.payload_size / f.raw_size:.2f} bits/byte)"
                          for f in info.frames]
    assert {"ppmd", "stored"} <= {frames.METHOD_NAMES[f.method] for f in info.frames}
    assert lines[-1].endswith(" OK")


def test_frame_size_never_changes_what_decodes(llz, tmp_path):
    src = tmp_path / "mixed"
    src.write_bytes(PROSE * 4 + SAMPLES["random"] + SAMPLES["binary"] * 4)
    for size in ("500", "2000", "4K", "1M"):
        blob = llz("compress", "-c", "--frame-size", size, str(src)).stdout_bytes
        assert llz("decompress", "-c", input=blob).stdout_bytes == src.read_bytes()
    small = llmzip.read_info(llz("compress", "-c", "--frame-size", "500", str(src)).stdout_bytes)
    assert len(small.frames) >= len(src.read_bytes()) // 500
    bad = llz("compress", "-c", "--frame-size", "2G", str(src))
    assert bad.exit_code == 1 and "is not in 1 byte .. 1G" in err(bad)


def test_format_1_archives_still_decode(llz, tmp_path):
    from goldens import golden_input

    out = tmp_path / "golden"
    golden = REPO / "tests" / "data" / "golden-tiny-e3.llz"
    assert llz("decompress", str(golden), "-o", str(out), model=REPO / "tests" / "data" / "golden-tiny").exit_code == 0
    assert out.read_bytes() == golden_input()
    listed = json.loads(llz("list", "--json", str(golden)).stdout)[0]
    assert (listed["format_version"], listed["frames"], listed["model_id"]) == (1, 1, "golden-tiny")


def test_verbose_line(llz, prose_file):
    result = llz("compress", "-v", "-c", str(prose_file))
    size = len(result.stdout_bytes)
    bpb = 8 * size / len(PROSE)
    assert re.fullmatch(rf"{re.escape(str(prose_file))}: {len(PROSE)} -> {size} bytes "
                        rf"\({bpb:.2f} bits/byte\) in \d+\.\d s\n", err(result))


def test_list_json(llz, archive, tiny_model_dir):
    result = llz("list", "--json", str(archive))
    assert result.exit_code == 0
    [info] = json.loads(result.stdout)
    blob = archive.read_bytes()
    [fields] = lm_frames(blob)
    size, payload = len(blob), llmzip.read_info(blob).frames[0].payload_size
    fingerprint = load_model(str(tiny_model_dir)).fingerprint.hex()
    mixing = {"preset": 1, "orders": [0, 1, 2, 3, 4, 6], "hash_bits": 20, "slot_width": 16, "count_limit": 30,
              "match_min": 5, "match_bits": 20, "lr": 3, "init_gap": 0}
    assert info == {
        "file": str(archive), "format_version": 2, "original_size": len(PROSE), "archive_size": size,
        "ratio": round(size / len(PROSE), 4), "bits_per_byte": round(8 * size / len(PROSE), 4), "frames": 1,
        "methods": {"lm": {"frames": 1, "original": len(PROSE), "payload": payload}},
        "models": [{"model_id": tiny_model_dir.resolve().name, "fingerprint": fingerprint, "engine": 3}],
        "frame_list": [{"index": 0, "offset": 5, "input_offset": 0, "method": "lm", "original": len(PROSE),
                        "payload": payload, "model_id": tiny_model_dir.resolve().name, "fingerprint": fingerprint,
                        "engine": 3, "token_count": fields.token_count, "chunk_tokens": 63,
                        "group_chunks": fields.group_chunks, "mixing": mixing}],
    }


def test_list_names_the_mixing(llz, prose_file, tmp_path):
    out = tmp_path / "plain.llz"
    assert llz("compress", "--method", "lm", "--no-mix", "-o", str(out), str(prose_file)).exit_code == 0
    assert json.loads(llz("list", "--json", str(out)).stdout)[0]["frame_list"][0]["mixing"] is None


def test_list_text(llz, archive, tiny_model_dir, tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello")
    result = llz("list", str(archive), str(junk))
    assert (result.exit_code, err(result)) == (1, f"llmzip: {junk}: not an llmzip archive\n")
    head, line = result.stdout.splitlines()
    assert head.split() == ["archive", "original", "ratio", "bits/B", "frames", "methods", "model", "file"]
    size = archive.stat().st_size
    assert line.split() == [str(size), str(len(PROSE)), f"{size / len(PROSE):.3f}", f"{8 * size / len(PROSE):.2f}",
                            "1", "lm", "100%", tiny_model_dir.resolve().name, str(archive)]


def test_list_reads_a_pipe_too(llz, archive):
    from_file = json.loads(llz("list", "--json", str(archive)).stdout)[0]
    from_pipe = json.loads(llz("list", "--json", input=archive.read_bytes()).stdout)[0]
    assert from_pipe == {**from_file, "file": "-"}


def test_list_shows_the_method_mix(llz, tmp_path):
    src = tmp_path / "mixed"
    src.write_bytes(MIXED)
    assert llz("compress", "--frame-size", "8K", str(src)).exit_code == 0
    [info] = json.loads(llz("list", "--json", f"{src}.llz").stdout)
    assert {"ppmd", "stored"} <= set(info["methods"])
    assert sum(m["original"] for m in info["methods"].values()) == len(src.read_bytes())
    assert sum(m["frames"] for m in info["methods"].values()) == info["frames"] == len(info["frame_list"])
    line = llz("list", f"{src}.llz").stdout.splitlines()[1]
    stored = info["methods"]["stored"]
    assert stored["payload"] == stored["original"] >= 8192 and stored["frames"] >= 2   # random: stored, 8K frames
    shares = ",".join(f"{m} {100 * v['original'] / len(MIXED):.0f}%" for m, v in info["methods"].items())
    assert line.split()[5:-2] == shares.split()


# --- damaged archives and wrong models -----------------------------------------------------------

def _rewrite_first_frame(blob: bytes, **change) -> bytes:
    """The archive with its first (LM) frame's fields changed, every checksum made valid again."""
    coded = [f for _, f in frames.read_frames(io.BytesIO(blob))]
    first = coded[0]
    header, segments = lm.read_header(first.payload, first.raw_size, first.checksum)
    coded[0] = frames.Frame(first.method, first.raw_size, first.checksum,
                            lm.pack(dataclasses.replace(header, **change), segments))
    return frames.join(coded)


def _damaged(archive: Path, how: str) -> bytes:
    blob = bytearray(archive.read_bytes())
    if how == "flip":
        blob[40] ^= 0x10              # a payload byte (the LM frame's fingerprint)
    elif how == "truncate":
        del blob[60:]
    elif how == "version":
        blob[4] = 3
    elif how in ("preset", "engine"):  # a newer llmzip's setting, checksums intact
        change = {"mix_params": b"\x01\x85"} if how == "preset" else {"engine": max(ENGINES) + 1}
        blob = _rewrite_first_frame(bytes(blob), **change)
    elif how == "method":
        coded = [f for _, f in frames.read_frames(io.BytesIO(bytes(blob)))]
        blob = frames.join([dataclasses.replace(coded[0], method=99)])
    else:
        blob[:4] = b"GZIP"
    return bytes(blob)


@pytest.mark.parametrize("how, reason", [
    ("flip", r"corrupt archive: frame 0 at offset 5: payload checksum mismatch"),
    ("truncate", "corrupt archive: frame 0 at offset 5: truncated archive"),
    ("version", "unsupported format version 3"),
    ("preset", "frame 0 at offset 5: mixing preset 5 is newer than this llmzip \\(it knows 0-1\\): upgrade llmzip"),
    ("engine", f"frame 0 at offset 5: inference engine {max(ENGINES) + 1} is newer than this llmzip "
               f"\\(it knows 1-{max(ENGINES)}\\): upgrade llmzip"),
    ("method", "frame 0 at offset 5: unknown frame method 99: this archive needs a newer llmzip, upgrade llmzip"),
    ("magic", "not an llmzip archive"),
])
def test_damaged_archive(llz, archive, how, reason):
    archive.write_bytes(_damaged(archive, how))
    Path(str(archive)[:-4]).unlink()
    before = sorted(os.listdir(archive.parent))
    result = llz("decompress", str(archive))
    assert result.exit_code == 1
    assert re.fullmatch(rf"llmzip: {re.escape(str(archive))}: {reason}\n", err(result))
    assert "Traceback" not in result.output
    assert sorted(os.listdir(archive.parent)) == before      # no output, no temp file


def test_damaged_last_frame_leaves_no_partial_output(llz, tmp_path):
    """Earlier frames were decoded and written to the temp file when the last one fails."""
    src = tmp_path / "mixed"
    src.write_bytes(MIXED)
    assert llz("compress", "--frame-size", "8K", str(src)).exit_code == 0
    archive = Path(f"{src}.llz")
    blob = bytearray(archive.read_bytes())
    last = llmzip.read_info(bytes(blob)).frames[-1]
    blob[last.offset + last.payload_size // 2 + 30] ^= 0x40
    archive.write_bytes(bytes(blob))
    src.unlink()
    result = llz("decompress", str(archive))
    assert (result.exit_code, err(result)) == (
        1, f"llmzip: {archive}: corrupt archive: frame {last.index} at offset {last.offset}: payload checksum mismatch\n")
    assert sorted(os.listdir(tmp_path)) == ["mixed.llz"]


def test_debug_prints_a_traceback(llz, archive):
    archive.write_bytes(_damaged(archive, "truncate"))
    result = llz("test", "--debug", str(archive))
    assert result.exit_code == 1
    assert "Traceback" in err(result) and err(result).endswith(": truncated archive\n")


def test_model_mismatch(llz, archive, tiny_model_dir, other_model_dir, tmp_path):
    out = tmp_path / "out"
    result = llz("decompress", str(archive), "-o", str(out), model=other_model_dir)
    ours, theirs = (load_model(str(d)).fingerprint.hex()[:16] for d in (tiny_model_dir, other_model_dir))
    assert ours != theirs
    assert (result.exit_code, err(result)) == (1, (
        f"llmzip: {archive}: archive needs model '{tiny_model_dir.resolve().name}' with fingerprint {ours}, "
        f"but '{other_model_dir.resolve().name}' has fingerprint {theirs}\n"))
    assert not out.exists()


def test_missing_model(llz, prose_file, tmp_path):
    result = llz("compress", str(prose_file), model=tmp_path / "no-such-model")
    assert result.exit_code == 1
    assert err(result).startswith(f"llmzip: {prose_file}: cannot load model ")
    assert err(result).count("\n") == 1 and not Path(f"{prose_file}.llz").exists()


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
