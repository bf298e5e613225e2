#!/usr/bin/env python3
"""Speed of the exact engine on random-weight GPT-2 and Llama shapes: the speed side of the
model-shape trade-off.

    python benchmarks/shapes.py [--arch gpt2 llama] [--shapes N]

Per shape, on one thread (what one codec worker gets), with the codec's default schedule
(255-token chunks, groups of 128 rows split between two workers, so 64 rows per worker):
prefill tokens/s over the first 256 positions in the encoder's block length, and decode tokens/s
at position 128 (mid-chunk), output tables included. Ratio is not measured here (that needs a
trained model of each shape). Llama shapes (engine 4: RMSNorm, rotary positions, SwiGLU with
inner width ~2.7 d, so about as many weights per layer as GPT-2's 4 d MLP; grouped-query
attention with half as many key/value heads) sit next to the GPT-2 shape of the same layers,
width and vocabulary.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llmzip.engine import GPT2Spec, LlamaSpec, build_engine  # noqa: E402
from llmzip.lockstep import TABLE_BUDGET  # noqa: E402
from llmzip.predictor import LoadedModel  # noqa: E402
from llmzip.runtime import tune_allocator  # noqa: E402

SHAPES = [(4, 256, 8192, 512), (4, 256, 4096, 512), (4, 192, 8192, 512), (3, 256, 8192, 512),
          (3, 192, 4096, 512), (2, 256, 4096, 512), (6, 192, 8192, 512), (2, 384, 8192, 512)]
ROWS, POSITIONS, DECODE_AT = 64, 256, 128


def random_engine(arch: str, layers: int, width: int, vocab: int, ctx: int):  # type: ignore[no-untyped-def]
    """The exact engine (newest arithmetic) of a randomly initialised Hugging Face model of this shape."""
    if arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(n_layer=layers, n_embd=width, n_head=4, vocab_size=vocab, n_positions=ctx,
                         bos_token_id=0, eos_token_id=0)
        state = {k: v.detach().float().numpy() for k, v in GPT2LMHeadModel(cfg).eval().state_dict().items()}
        return build_engine(GPT2Spec.from_config(cfg), state)
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(num_hidden_layers=layers, hidden_size=width, intermediate_size=(width * 8 // 3 + 15) // 16 * 16,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=ctx,
                      tie_word_embeddings=True, bos_token_id=0, eos_token_id=0)
    state = {k: v.detach().float().numpy() for k, v in LlamaForCausalLM(cfg).eval().state_dict().items()}
    return build_engine(LlamaSpec.from_config(cfg), state)


def measure(arch: str, layers: int, width: int, vocab: int, ctx: int) -> tuple[float, float]:
    model = LoadedModel("x", random_engine(arch, layers, width, vocab, ctx), None, 0, b"")   # type: ignore[arg-type]
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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", choices=["gpt2", "llama"], default=["gpt2", "llama"])
    p.add_argument("--shapes", type=int, default=len(SHAPES), help="measure the first N shapes only")
    args = p.parse_args()
    tune_allocator()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    with threadpool_limits(1, user_api="blas"):
        for arch in args.arch:
            measure(arch, 1, 64, 512, 512)   # warm-up: builds the lookup tables every shape shares
        for shape in SHAPES[: args.shapes]:
            for arch in args.arch:
                prefill, decode = max(measure(arch, *shape), measure(arch, *shape))   # best of two (noisy machine)
                print("{:5} L{} d{} V{} ctx{}: prefill {:.0f} tok/s, decode {:.0f} tok/s per worker".format(
                    arch, *shape, prefill, decode), flush=True)


if __name__ == "__main__":
    main()
