#!/usr/bin/env python3
"""Exact engine vs float model: quantisation loss (bits/byte) and speed on this machine.

    python benchmarks/engine_bench.py [--models embedded DIR ...] [--kb 64] [--shape-124m] [--out FILE]

Any model llmzip runs works, GPT-2 or Llama family (a directory in Hugging Face layout).

For every model and corpus file (first ``--kb`` KB of each):

* ``float_bpb``: cross-entropy of the float32 Hugging Face model on exactly the chunks the
  codec codes (each chunk starts from BOS), in bits per byte;
* ``exact_bpb``: the same for the exact integer engine's quantised tables (what an ideal
  coder would pay), and ``archive_bpb``: the real archive size;
* compress / decompress KB/s and tokens/s, and the fraction of this machine's float64 GEMM
  throughput that the model's matmul FLOPs per token represent at that speed.

``--shape-124m`` adds a random-weight model with GPT-2-124M's shape (12 x 768, 50257 vocab,
1024 context) using the embedded tokenizer, for speed only.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llmzip import codec  # noqa: E402
from llmzip.model import MODELS_DIR, EMBEDDED_NAME, load_model  # noqa: E402

CORPUS = REPO.parent / "shared" / "corpus"


def gemm_gflops(seconds: float = 2.0) -> float:
    """float64 GEMM throughput of this machine (numpy's BLAS, current thread setting)."""
    a, b = np.random.rand(2048, 768), np.random.rand(768, 3072)
    a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return 2 * 2048 * 768 * 3072 * n / (time.perf_counter() - t0) / 1e9


def flops_per_token(model) -> float:
    """Matmul FLOPs per token: linear layers, LM head, and attention at half the context."""
    s = model.engine.spec
    attention = 2 * s.n_layer * s.n_head * s.head_dim * s.n_ctx / 2   # q.k and weights.v, multiply-adds
    return model.flops_per_token + 2.0 * attention


def float_bits(model_dir: str, model, data: bytes) -> float:
    """Cross-entropy in bits of the float32 HF model on the codec's chunks."""
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokens = model.tokenizer.encode(data)
    chunk = codec.default_chunk(model)
    bits = 0.0
    with torch.no_grad():
        for i in range(0, len(tokens), chunk):
            ids = torch.tensor([[model.bos_id, *tokens[i : i + chunk].tolist()]])
            logp = torch.log_softmax(hf(input_ids=ids).logits[0, :-1].double(), -1)
            bits -= logp[torch.arange(ids.shape[1] - 1), ids[0, 1:]].sum().item() / math.log(2)
    return bits


def measure(model, data: bytes) -> dict:
    stats = codec.CodingStats()
    t0 = time.perf_counter()
    blob = codec.compress(data, model, settings=codec.Settings(stats=stats), mixing=None)  # the LM alone
    t1 = time.perf_counter()
    assert codec.decompress(blob, model) == data
    t2 = time.perf_counter()
    return {
        "bytes": len(data), "tokens": stats.tokens, "archive_bytes": len(blob),
        "exact_bpb": stats.ideal_bits / len(data), "archive_bpb": 8 * len(blob) / len(data),
        "compress_kBps": len(data) / (t1 - t0) / 1e3, "decompress_kBps": len(data) / (t2 - t1) / 1e3,
        "compress_tok_s": stats.tokens / (t1 - t0), "decompress_tok_s": stats.tokens / (t2 - t1),
    }


def shape_124m_dir(tmp: Path) -> str:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(tmp)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp / name).write_bytes((MODELS_DIR / EMBEDDED_NAME / name).read_bytes())
    return str(tmp)


def run_model(name: str, files: list[Path], kb: int, gflops: float, with_float: bool) -> list[dict]:
    model = load_model(name)
    rows = []
    for f in files:
        data = f.read_bytes()[: kb * 1024]
        row = {"model": model.model_id, "file": f.name, **measure(model, data)}
        if with_float:
            row["float_bpb"] = float_bits(name if Path(name).is_dir() else str(MODELS_DIR / EMBEDDED_NAME), model, data) / len(data)
            row["loss_pct"] = 100 * (row["exact_bpb"] / row["float_bpb"] - 1)
        fpt = flops_per_token(model)
        row["compress_gemm_fraction"] = row["compress_tok_s"] * fpt / (gflops * 1e9)
        row["decompress_gemm_fraction"] = row["decompress_tok_s"] * fpt / (gflops * 1e9)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["embedded"])
    p.add_argument("--corpus", type=Path, default=CORPUS)
    p.add_argument("--kb", type=int, default=64)
    p.add_argument("--shape-124m", action="store_true")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    files = sorted(args.corpus.iterdir())
    files = [f for f in files if f.name != "README.md"]
    gflops = gemm_gflops()
    print(json.dumps({"float64_gemm_gflops": round(gflops, 1)}), flush=True)
    rows = [r for name in args.models for r in run_model(name, files, args.kb, gflops, True)]
    if args.shape_124m:
        with tempfile.TemporaryDirectory() as tmp:
            rows += run_model(shape_124m_dir(Path(tmp)), files[:1], min(args.kb, 8), gflops, False)
    if args.out:
        args.out.write_text(json.dumps({"float64_gemm_gflops": gflops, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
