"""Smoke tests of the benchmark suite: every script starts, and benchmarks/run.py runs on a tiny
corpus and the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
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


# How each script in benchmarks/ starts in CI: "--help" (a command-line script: parses its
# options and exits), or "import" (a module of run.py, or a script without options, which would
# run in full: importing it checks what breaks first, its imports).
STARTS = {
    "compare.py": "--help", "dynamic_eval.py": "--help", "engine_bench.py": "--help", "latency.py": "--help",
    "memory.py": "--help", "mix_study.py": "--help", "quant_sim.py": "--help", "run.py": "--help",
    "compressors.py": "import", "llmzip_bench.py": "import", "report.py": "import", "shapes.py": "--help",
    "roofline.py": "--help", "stage_timer.py": "import", "fallbacks.py": "--help", "frame_choice.py": "--help",
    "frame_size.py": "--help", "mixed_set.py": "--help", "levels.py": "--help", "workers.py": "--help", "cputime.py": "import",
    "fused.py": "--help", "abtest.py": "import", "roofline_report.py": "import",
}
_START_ALL = textwrap.dedent("""
    import contextlib, io, json, os, runpy, sys
    failed = {}
    for path, how in json.loads(sys.argv[1]).items():
        sys.path.insert(0, os.path.dirname(path))        # as `python benchmarks/x.py` does
        sys.argv, out = [path, "--help"], io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                runpy.run_path(path, run_name="__main__" if how == "--help" else "benchmark_start_check")
            if how == "--help":
                failed[path] = "--help did not exit"
        except SystemExit as exc:
            if how != "--help" or exc.code not in (0, None) or "usage" not in out.getvalue():
                failed[path] = f"exit {exc.code}: {out.getvalue()[-300:]}"
        except BaseException as exc:
            failed[path] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(failed))
""")


def test_every_benchmark_script_starts() -> None:
    """One process starts them all (torch is imported once): a broken import or option parser fails here."""
    assert set(STARTS) == {p.name for p in BENCH.glob("*.py")}, "say in STARTS how a new script starts"
    spec = json.dumps({str(BENCH / name): how for name, how in STARTS.items()})
    proc = subprocess.run([sys.executable, "-c", _START_ALL, spec], cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {}


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="needs a git checkout")
def test_compare_against_head_on_a_tiny_run(tmp_path: Path) -> None:
    """benchmarks/compare.py checks HEAD out beside this tree, times both, finds the same archive
    and leaves no worktree behind."""
    sample = tmp_path / "sample.txt"
    sample.write_bytes(TEXT)
    def baselines() -> set[str]:
        listing = subprocess.run(["git", "worktree", "list"], cwd=REPO, capture_output=True, text=True).stdout
        return {line.split()[0] for line in listing.splitlines() if "llmzip-baseline-" in line}

    before = baselines()
    proc = subprocess.run(
        [sys.executable, str(BENCH / "compare.py"), "--baseline", "HEAD", "--files", str(sample), "--limit", "300",
         "--repeats", "1", "--model", str(REPO / "tests" / "data" / "golden-tiny")],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| sample.txt |")]
    assert len(rows) == 2 and all(row.endswith("| identical |") for row in rows)
    assert baselines() <= before


def test_roofline_quick(tmp_path: Path) -> None:
    """benchmarks/roofline.py --quick on the golden tiny model and a tiny random Llama: every
    stage is reported, shares add up, percentages of the peak are sane."""
    from stage_timer import STAGES

    sample = tmp_path / "sample.txt"
    sample.write_bytes(TEXT + CODE)
    tiny = REPO / "tests" / "data" / "golden-tiny"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "roofline.py"), "--quick", "--models", str(tiny), "--shapes", "llama-tiny",
         "--tokenizer", str(tiny / "tokenizer.json"), "--files", str(sample), "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "roofline.json").read_text())
    assert all(result["peaks"][d]["peak_gops"] > 0 for d in ("int8", "fp32", "bf16"))
    rows = result["rows"]
    assert {(r["model"], r["mode"], r["op"]) for r in rows} == {
        (m, mode, op) for m in ("golden-tiny", "llama-tiny") for mode in ("lm", "mix") for op in ("compress", "decompress")}
    for r in rows:
        assert set(r["stage_pct"]) == set(STAGES)
        assert 95 <= sum(r["stage_pct"].values()) <= 105 and min(r["stage_pct"].values()) >= 0
        assert r["tokens"] > 0 and 0 < r["pct_int8_peak"] < 100
        assert r["stage_pct"]["linear_gemm"] > 0 and r["stage_pct"]["coder"] > 0
        assert (r["stage_pct"]["mixer"] > 0) == (r["mode"] == "mix")
    md = (tmp_path / "roofline.md").read_text()
    assert "## Where the time goes" in md and "| llama-tiny | lm | decompress |" in md


def test_workers_benchmark_measures_every_setting(golden):
    import abtest
    import workers

    best = abtest.measure(golden, b"The quick brown fox jumps over the lazy dog. " * 20, 1, workers.variants())
    assert set(best) == {(name, op) for name in workers.variants() for op in ("compress", "decompress")}
    assert "| two processes | decompress |" in workers.report(best, "title")


def test_abtest_refuses_a_variant_that_fails_its_check(golden):
    import abtest
    from llmzip import codec

    def fail() -> None:
        raise SystemExit("kernels not used")
    variants = {"plain": abtest.Variant(codec.Settings), "checked": abtest.Variant(codec.Settings, fail)}
    with pytest.raises(SystemExit, match="kernels not used"):
        abtest.measure(golden, b"abc " * 50, 1, variants)
