"""The command line on archives: test, list, damaged archives and wrong models, with the exact messages."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

import llmzip
from llmzip import frames
from llmzip.frames import lm
from llmzip.engine import ENGINES
from llmzip.model import load_model
from clitools import SAMPLES, archive, err, llz, lm_frames  # noqa: F401  (fixtures and helpers)
from conftest import PROSE

REPO = Path(__file__).resolve().parents[1]
MIXED = (REPO / "README.md").read_bytes()[:20_000] + np.random.default_rng(1).bytes(20_000)  # -> ppmd, stored


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
