#!/usr/bin/env python3
"""How much of this machine's matrix throughput the codec uses, and where the rest of its time goes.

    python benchmarks/roofline.py [--kb 16] [--models embedded ...] [--shapes llama-6x384 gpt2-6x384 ...]
                                  [--files F ...] [--threads N] [--out DIR] [--quick]

In one run:

1. **Peaks**: GEMM throughput of ``torch._int_mm`` (int8 x int8 -> int32), fp32 and bf16
   ``torch.mm`` on square shapes and, for int8, on the codec's own shapes for every measured
   model (encoder blocks, decoder steps, head blocks), with one torch thread per worker and
   as many concurrent workers as the codec uses (``cores``), as the codec runs its GEMMs.
   The int8 peak is the best shape's rate.
2. **Throughput** of the public codec API (``llmzip.codec.compress`` / ``decompress``, default
   ``Settings``: workers as the CLI uses them, forked processes on Linux) on the first ``--kb`` KB of each file, with the
   LM alone (``mixing=None``) and with the default mixing, for the shipped models and
   random-weight models of the shapes in ``SHAPES``: tokens/s, KB/s, GOPS and % of the int8
   peak, counting 2 ops (multiply + add) per multiply-accumulate of the linear layers and the
   head (attention excluded; ``LoadedModel.flops_per_token``).
3. **Breakdown**: the same calls again under :class:`stage_timer.StageTimer` (explicit
   per-thread CPU timers wrapped around the engine's, quantiser's, mixer's and coder's
   functions; its docstring lists the stages), as shares of the process's CPU time, with the
   timers' overhead (instrumented vs plain time). The timers see one process, so this run's
   workers are threads (``Settings(processes=False)``).

torch is imported and every model built and warmed up before any timing. Random-weight models
are Hugging Face configs saved to a temporary directory and loaded with
``llmzip.model.load_model``; their tokenizer is ``--tokenizer`` when its vocabulary has the
shape's size, else a byte-level BPE of that size trained on a few MB of ``--train-data``. Their
predictions are near uniform, so the mixer and coder see different statistics than with a
trained model: the breakdown of the shipped model is the realistic one for those stages.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import roofline_report  # noqa: E402
from cputime import cpu_seconds  # noqa: E402
from llmzip.levels import LLAMA  # noqa: E402
from llmzip.runtime import single_openmp_thread, tune_allocator  # noqa: E402

CORPUS = REPO.parent / "shared" / "corpus"
TRAIN = REPO.parent / "shared" / "train"
TOKENIZER = REPO.parent / "llmzip-train-llama" / "tokenizer.json"   # the next model's 8192-token BPE
FILES = ("treasure_island.txt", "nasa_datasets.json")
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {   # name -> (architecture, Hugging Face config)
    "llama-6x384": ("llama", dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=6, num_key_value_heads=2,
                                  intermediate_size=1024, vocab_size=8192, max_position_embeddings=512)),
    "gpt2-6x384": ("gpt2", dict(n_layer=6, n_embd=384, n_head=6, vocab_size=8192, n_positions=512)),
    "llama-tiny": ("llama", dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                 intermediate_size=176, vocab_size=512, max_position_embeddings=128)),
}
SQUARE = ((2048, 2048, 2048), (1024, 1024, 1024), (256, 384, 1152))
MODES = ("lm", "mix")
FUSED_OPS: tuple[str, ...] = ()   # the ops that run the fused kernels: --fused both, --fused-compress "compress"


def gemm_rate(dtype: str, m: int, k: int, n: int, workers: int, seconds: float) -> float | None:
    """GOPS (2 x MACs) of ``workers`` threads each running (m, k) x (k, n) GEMMs on one torch
    thread for ``seconds``; None if torch refuses the shape."""
    import torch

    def operands() -> tuple[Any, Any]:
        if dtype == "int8":
            return (torch.randint(-127, 128, (m, k), dtype=torch.int8), torch.randint(-127, 128, (k, n), dtype=torch.int8))
        dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
        return torch.randn(m, k, dtype=dt), torch.randn(k, n, dtype=dt)

    mm = torch._int_mm if dtype == "int8" else torch.mm
    try:
        mm(*operands())
    except RuntimeError:
        return None
    ready = threading.Barrier(workers)
    spans: list[tuple[float, float, int]] = []

    def loop() -> None:
        a, b = operands()
        ready.wait()
        start, count = time.perf_counter(), 0
        while count == 0 or time.perf_counter() - start < seconds:   # at least one product
            mm(a, b)
            count += 1
        spans.append((start, time.perf_counter(), count))

    threads = [threading.Thread(target=loop) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = max(s[1] for s in spans) - min(s[0] for s in spans)
    return 2 * m * k * n * sum(s[2] for s in spans) / wall / 1e9


def codec_shapes(model: Any, workers: int) -> set[tuple[int, int, int]]:
    """(M, K, N) of the int8 GEMMs the codec runs for ``model`` in a full group of chunks: encoder
    blocks and decoder steps per worker, head blocks."""
    from llmzip.codec import MAX_GROUP
    from llmzip.linear8 import Linear8
    from llmzip.lockstep import prefill_block
    from llmzip.predictor import HEAD_ROWS

    engine, rows = model.engine, MAX_GROUP // workers
    layers = {v.w.shape for blk in engine.blocks for v in vars(blk).values() if isinstance(v, Linear8)}
    encode_m = rows * prefill_block(MAX_GROUP, model.vocab_size)
    shapes = {(m, k, n) for k, n in layers for m in (encode_m, rows)}
    return shapes | {(m, *engine.head.w.shape) for m in (min(HEAD_ROWS, encode_m), rows)}


def measure_peaks(models: dict[str, Any], workers: int, quick: bool) -> dict[str, Any]:
    """Per dtype: GOPS of every shape on one worker and on ``workers``; the best all-worker rate."""
    square = set(SQUARE[-1:] if quick else SQUARE)
    seconds = 0.05 if quick else 0.3
    shapes = {"int8": square.union(*(codec_shapes(m, workers) for m in models.values()))}
    shapes.update(fp32=square, bf16=square)
    out: dict[str, Any] = {}
    for dtype, todo in shapes.items():
        rows = []
        for m, k, n in sorted(todo, reverse=True):
            one = gemm_rate(dtype, m, k, n, 1, seconds)
            if one is not None:
                rows.append({"shape": [m, k, n], "gops_1": one, "gops_all": gemm_rate(dtype, m, k, n, workers, seconds)})
        out[dtype] = {"shapes": rows, "peak_gops": max(r["gops_all"] for r in rows),
                      "peak_gops_1": max(r["gops_1"] for r in rows)}
        print(f"{dtype} peak: {out[dtype]['peak_gops']:.0f} GOPS on {workers} workers, "
              f"{out[dtype]['peak_gops_1']:.0f} on one", flush=True)
    return out


def tokenizer_for(vocab: int, reuse: Path | None, train: Path, work: Path, quick: bool) -> Path:
    """A tokenizer.json of ``vocab`` tokens with ``<|endoftext|>`` as id 0: ``reuse`` if it fits, else trained."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if reuse is not None and reuse.is_file() and Tokenizer.from_file(str(reuse)).get_vocab_size() == vocab:
        return reuse
    path = work / f"bpe-{vocab}.json"
    if path.exists():
        return path
    files = sorted(train.glob("*.txt"))
    if not files:
        raise SystemExit(f"no tokenizer of {vocab} tokens: pass --tokenizer, or --train-data with *.txt files")
    budget = (1 if quick else 4) * 2**20 // len(files)   # a few MB spread over every source
    texts = [f.read_bytes()[:budget].decode("utf-8", "replace") for f in files]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    backend.save(str(path))
    return path


def random_model_dir(name: str, tokenizer: Path, work: Path) -> Path:
    """Save a random-weight model of shape ``SHAPES[name]`` with ``tokenizer`` in Hugging Face layout."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    arch, shape = SHAPES[name]
    torch.manual_seed(0)
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(**shape, bos_token_id=0, eos_token_id=0))
    else:
        model = LlamaForCausalLM(LlamaConfig(**shape, tie_word_embeddings=True, bos_token_id=0, eos_token_id=0))
    path = work / name
    model.eval().save_pretrained(path)
    shutil.copy(tokenizer, path / "tokenizer.json")
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"backend": "tokenizers", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": None}))
    return path


def coded(model: Any, data: bytes, mode: str, settings: Any, timer: Any = None) -> dict[str, Any]:
    """Compress then decompress ``data`` (checked), each timed; under ``timer`` (a StageTimer
    class) also each stage's CPU seconds."""
    from llmzip import codec

    stats = codec.CodingStats()
    mixing = codec.DEFAULT_MIX if mode == "mix" else None
    result: dict[str, Any] = {}
    for op in ("compress", "decompress"):
        # The fused kernels code the ops of --fused (both) or --fused-compress (compressions, as the
        # codec did before decompressions took them); otherwise numpy, even where they are built.
        os.environ["LLMZIP_FUSED"] = "always" if op in FUSED_OPS else "0"
        with timer() if timer else _Plain() as clock:
            if op == "compress":
                blob = codec.compress(data, model, settings=replace(settings, stats=stats), mixing=mixing)
            elif codec.decompress(blob, model, settings) != data:
                raise SystemExit(f"{model.model_id}: round trip failed")
        result[op] = {"wall": clock.wall, "cpu": clock.cpu, **({"stages": clock.seconds()} if timer else {})}
    result.update(tokens=stats.tokens, bytes=len(data), archive_bytes=len(blob))
    return result


class _Plain:
    """Wall and CPU time of a ``with`` block, the CPU time of worker processes included (the
    codec reaps them before it returns, so :func:`cputime.cpu_seconds` counts them)."""

    def __enter__(self) -> _Plain:
        self.cpu, self.wall = cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu, self.wall = cpu_seconds() - self.cpu, time.perf_counter() - self.wall


def run_model(model: Any, name: str, files: dict[str, bytes], settings: Any, repeats: int) -> list[dict[str, Any]]:
    """Throughput rows (best of ``repeats`` plain runs) and the instrumented breakdown, per mode and op."""
    from stage_timer import STAGES, StageTimer

    coded(model, b"warm-up text, coded once before timing. " * 8, "mix", settings)
    rows = []
    for mode in MODES:
        plain = {f: min((coded(model, d, mode, settings) for _ in range(repeats)),
                        key=lambda r: r["compress"]["wall"] + r["decompress"]["wall"]) for f, d in files.items()}
        # The stage timer sees this process's threads only: the instrumented run uses worker threads.
        threads = replace(settings, processes=False)
        staged = {f: coded(model, d, mode, threads, StageTimer) for f, d in files.items()}
        for op in ("compress", "decompress"):
            row = {"model": name, "mode": mode, "op": op, "ops_per_token": model.flops_per_token,
                   "tokens": sum(r["tokens"] for r in plain.values()), "bytes": sum(r["bytes"] for r in plain.values()),
                   "wall": sum(r[op]["wall"] for r in plain.values()), "cpu": sum(r[op]["cpu"] for r in plain.values()),
                   "staged_wall": sum(r[op]["wall"] for r in staged.values()),
                   "staged_cpu": sum(r[op]["cpu"] for r in staged.values()),
                   "stages": {s: sum(r[op]["stages"][s] for r in staged.values()) for s in STAGES},
                   "archive_bytes": sum(r["archive_bytes"] for r in plain.values())}
            rows.append(row)
            print(f"{name} {mode} {op}: {row['tokens'] / row['wall']:,.0f} tok/s, "
                  f"{row['bytes'] / row['wall'] / 1e3:.1f} KB/s", flush=True)
    return rows


def derive(rows: list[dict[str, Any]], peaks: dict[str, Any]) -> None:
    """Add rates, % of peak and stage shares to every row."""
    peak = peaks["int8"]["peak_gops"]
    for r in rows:
        r["tok_s"] = r["tokens"] / r["wall"]
        r["kb_s"] = r["bytes"] / r["wall"] / 1e3
        r["gops"] = r["tok_s"] * r["ops_per_token"] / 1e9
        r["pct_int8_peak"] = 100 * r["gops"] / peak
        r["stage_pct"] = {s: 100 * v / r["staged_cpu"] for s, v in r["stages"].items()}
        r["timer_overhead_pct"] = 100 * (r["staged_cpu"] / r["cpu"] - 1)
        # Only where the timers see every GEMM: inside the fused kernels the linear layers' are not.
        timed = r["stages"]["linear_gemm"] > 0 and r["stages"]["head_gemm"] > 0
        gemm = r["stages"]["linear_gemm"] + r["stages"]["head_gemm"]
        r["gemm_gops_per_core"] = r["tokens"] * r["ops_per_token"] / gemm / 1e9 if timed else 0.0


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
            "tree": _tree()}


def _tree() -> str:
    """The measured tree: its git commit, with "+changes" if the working tree differs ("" outside git)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    return head + ("+changes" if head and git("status", "--porcelain", "--untracked-files=no") else "")


def main() -> None:
    args = parse_args()
    single_openmp_thread()   # as the CLI: one OpenMP thread per worker, set before torch loads
    tune_allocator()
    import torch  # noqa: F401  (loaded before any timing)

    from llmzip import codec
    from llmzip.lockstep import cpu_threads
    from llmzip.model import load_model

    global FUSED_OPS
    FUSED_OPS = ("compress", "decompress") if args.fused else ("compress",) if args.fused_compress else ()
    if FUSED_OPS:
        from llmzip import fused
        if not fused.available(build=True):
            raise SystemExit(f"--fused: the kernels are not available here: {fused.unavailable_reason()}")
    settings = codec.Settings(threads=args.threads)
    files = {p.name: p.read_bytes()[: args.kb * 1024] for p in args.files}
    with tempfile.TemporaryDirectory(prefix="llmzip-roofline-") as tmp:
        names = {load_model(name).model_id: name for name in args.models}   # shipped: labelled by id
        for shape in args.shapes:
            tok = tokenizer_for(SHAPES[shape][1]["vocab_size"], args.tokenizer, args.train_data, Path(tmp), args.quick)
            names[shape] = str(random_model_dir(shape, tok, Path(tmp)))
        models = {label: load_model(path) for label, path in names.items()}
        workers = max(cpu_threads(settings, m) for m in models.values())
        peaks = measure_peaks(models, workers, args.quick)
        rows = [r for label, m in models.items() for r in run_model(m, label, files, settings, args.repeats)]
    derive(rows, peaks)
    result = {"machine": {**machine(), "workers": workers, "contended": args.contended},
              "command": "python benchmarks/roofline.py " + " ".join(sys.argv[1:]),
              "kb": args.kb, "files": list(files), "peaks": peaks, "rows": rows, "fused_ops": list(FUSED_OPS),
              "models": {label: {"path": names[label], "ops_per_token": m.flops_per_token, "vocab": m.vocab_size}
                         for label, m in models.items()}}
    text = roofline_report.write_reports(result, args.out)
    print(text)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kb", type=int, default=None, help="code the first KB of each file [default: 16; --quick: 2]")
    p.add_argument("--models", nargs="*", default=None, help="shipped models or directories [default: embedded and the shipped Llama]")
    p.add_argument("--shapes", nargs="*", choices=sorted(SHAPES), default=None,
                   help="random-weight shapes [default: llama-6x384 gpt2-6x384; --quick: llama-tiny]")
    p.add_argument("--files", nargs="+", type=Path, default=[CORPUS / f for f in FILES])
    p.add_argument("--threads", type=int, default=None, help="codec threads [default: the codec's choice, as the CLI]")
    p.add_argument("--repeats", type=int, default=1, help="plain runs per measurement, best kept [default: 1]")
    p.add_argument("--tokenizer", type=Path, default=TOKENIZER, help="tokenizer.json to reuse when its size fits a shape")
    p.add_argument("--train-data", type=Path, default=TRAIN, help="text to train a tokenizer of a shape's size on")
    p.add_argument("--out", type=Path, default=None,
                   help="write roofline.md and roofline.json here [default: benchmarks/results; --quick: nowhere]")
    p.add_argument("--contended", action="store_true", help="say in the results that the machine was busy")
    p.add_argument("--quick", action="store_true", help="a tiny run (CI): 2 KB, llama-tiny, short GEMM timings")
    p.add_argument("--fused", action="store_true",
                   help="compress and decompress with the fused kernels (llmzip.fused), as the CLI does where they "
                        "are built; write roofline_fused_all.md/.json")
    p.add_argument("--fused-compress", action="store_true",
                   help="the fused kernels for compressions only (what the codec chose before decompressions ran them "
                        "too); write roofline_fused.md/.json")
    args = p.parse_args()
    args.kb = args.kb or (2 if args.quick else 16)
    args.models = args.models if args.models is not None else ([] if args.quick else ["embedded", LLAMA])
    args.shapes = args.shapes if args.shapes is not None else (["llama-tiny"] if args.quick else ["llama-6x384", "gpt2-6x384"])
    if args.out is None and not args.quick:
        args.out = REPO / "benchmarks" / "results"
    return args


if __name__ == "__main__":
    main()
