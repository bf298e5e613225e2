#!/usr/bin/env python3
"""Speed of the exact engine on random-weight GPT-2 shapes: the speed side of the model-shape trade-off.

    python benchmarks/shapes.py

Per shape, on one thread (what one codec worker gets), with the codec's default schedule
(255-token chunks, groups of 128 rows split between two workers, so 64 rows per worker):
prefill tokens/s over the first 256 positions in the encoder's block length, and decode tokens/s
at position 128 (mid-chunk), output tables included. Ratio is not measured here (that needs a
trained model of each shape).
"""
import sys
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from transformers import GPT2Config, GPT2LMHeadModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llmzip.lockstep import TABLE_BUDGET  # noqa: E402
from llmzip.engine import ExactGPT2, GPT2Spec  # noqa: E402
from llmzip.model import LoadedModel  # noqa: E402
from llmzip.runtime import tune_allocator  # noqa: E402

SHAPES = [(4, 256, 8192, 512), (4, 256, 4096, 512), (4, 192, 8192, 512), (3, 256, 8192, 512),
          (3, 192, 4096, 512), (2, 256, 4096, 512), (6, 192, 8192, 512), (2, 384, 8192, 512)]
ROWS, POSITIONS, DECODE_AT = 64, 256, 128


def measure(layers: int, width: int, vocab: int, ctx: int) -> tuple[float, float]:
    cfg = GPT2Config(n_layer=layers, n_embd=width, n_head=4, vocab_size=vocab, n_positions=ctx,
                     bos_token_id=0, eos_token_id=0)
    state = {k: v.detach().float().numpy() for k, v in GPT2LMHeadModel(cfg).eval().state_dict().items()}
    model = LoadedModel("x", ExactGPT2(GPT2Spec.from_config(cfg), state), None, 0, b"")
    tokens = np.random.default_rng(0).integers(0, vocab, (ROWS, POSITIONS + 32))
    block = max(1, TABLE_BUDGET // (2 * ROWS * vocab))   # the encoder's block for 128-row groups
    cache = model.start(ROWS)
    t = time.perf_counter()
    for t0 in range(0, POSITIONS, block):
        model.advance(cache, tokens[:, t0:t0 + block])
    prefill = ROWS * POSITIONS / (time.perf_counter() - t)
    cache = model.start(ROWS)
    model.advance(cache, tokens[:, :DECODE_AT])
    t = time.perf_counter()
    for i in range(16):
        model.advance(cache, tokens[:, DECODE_AT + i:DECODE_AT + i + 1])
    decode = ROWS * 16 / (time.perf_counter() - t)
    return prefill, decode


def main() -> None:
    tune_allocator()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    with threadpool_limits(1, user_api="blas"):
        measure(1, 64, 512, 512)   # warm-up: builds the lookup tables every shape shares
        for shape in SHAPES:
            prefill, decode = max(measure(*shape), measure(*shape))   # best of two (noisy machine)
            print("L{} d{} V{} ctx{}: prefill {:.0f} tok/s, decode {:.0f} tok/s per worker".format(*shape, prefill, decode),
                  flush=True)


if __name__ == "__main__":
    main()
