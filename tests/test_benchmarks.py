"""Smoke test of the benchmark suite (benchmarks/run.py) on a tiny corpus and the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
sys.path.append(str(BENCH))
for _module in ("zstandard", "brotli", "pyppmd", "matplotlib"):  # the [bench] extra
    pytest.importorskip(_module, reason="benchmark dependencies missing: pip install '.[bench]'")

from compressors import Compressor, classic_compressors, measure_classic  # noqa: E402

TEXT = b"The quick brown fox jumps over the lazy dog. " * 40
CODE = b"def f(x):\n    return [i * x for i in range(10)]\n\n" * 30


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, Path]:
    """Run the whole suite once (--quick) as a user would; return (out dir, model dir)."""
    root = tmp_path_factory.mktemp("bench")
    corpus, out = root / "corpus", root / "out"
    corpus.mkdir()
    (corpus / "prose.txt").write_bytes(TEXT)
    (corpus / "code.py").write_bytes(CODE)
    (corpus / "README.md").write_text("describes the corpus; not benchmarked\n")
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--corpus", str(corpus), "--models", str(tiny_model_dir),
         "--quick", "--out", str(out), "--threads", "1", "--llmzip-runs", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, tiny_model_dir


def test_every_compressor_on_every_file(bench_run: tuple[Path, Path]) -> None:
    out, model_dir = bench_run
    report = json.loads((out / "results.json").read_text())
    entries = report["results"]
    expected = {c.name for c in classic_compressors()} | {f"llmzip:{model_dir.resolve().name}"}
    got = {(e["file"], e["compressor"]) for e in entries}
    assert got == {(f, c) for f in ("code.py", "prose.txt") for c in expected}
    for e in entries:
        assert e["verified"] is True
        assert e["original_bytes"] == len(TEXT if e["file"] == "prose.txt" else CODE)
        assert e["bits_per_byte"] == pytest.approx(8 * e["compressed_bytes"] / e["original_bytes"])
        assert e["compress_kbps"] > 0 and e["decompress_kbps"] > 0


def test_llmzip_entries(bench_run: tuple[Path, Path]) -> None:
    out, _ = bench_run
    llm = [e for e in json.loads((out / "results.json").read_text())["results"] if "fingerprint" in e]
    assert len(llm) == 2
    for e in llm:
        assert sum(m["original"] for m in e["methods"].values()) == e["original_bytes"]
        assert sum(m["frames"] for m in e["methods"].values()) == e["frames"] >= 1
        if "lm" in e["methods"]:
            assert 0 < e["ideal_bits_per_byte"] and e["tokens"] > 0 and e["compress_tokens_per_s"] > 0
        if set(e["methods"]) == {"lm"}:
            assert e["ideal_bits_per_byte"] <= e["bits_per_byte"] and e["overhead_pct"] >= 0
        assert e["peak_rss_mb"] > 0 and e["load_s"] >= 0
        assert len(e["fingerprint"]) == 64 and e["params"]["threads"] == 1


def test_reports_written(bench_run: tuple[Path, Path]) -> None:
    out, _ = bench_run
    machine = json.loads((out / "results.json").read_text())["machine"]
    assert machine["quick"] is True and machine["cores"] >= 1 and machine["python"]
    assert machine["repeats"]["llmzip"] == 2
    md = (out / "results.md").read_text()
    assert "best of 2 for llmzip" in md
    assert "| prose.txt |" in md and "| code.py |" in md and "README" not in md
    assert "**" in md  # the best of each row is bold
    assert "## llmzip frames: methods and the best shipped fallback" in md
    for png in ("bpb_by_file.png", "bpb_vs_speed.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("comp", classic_compressors(), ids=lambda c: c.name)
def test_classic_round_trip(comp: Compressor) -> None:
    entry = measure_classic(comp, "x", TEXT + bytes(range(256)), repeats=1)
    assert entry["verified"] and entry["compressed_bytes"] < entry["original_bytes"]


def test_mismatch_is_reported() -> None:
    broken = Compressor("broken", {}, lambda d: d, lambda d: d[:-1])
    assert measure_classic(broken, "x", TEXT, repeats=1)["verified"] is False
