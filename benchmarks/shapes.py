#!/usr/bin/env python3
"""Speed of the exact engine on random-weight GPT-2 and Llama shapes: the speed side of the
model-shape trade-off.

    python benchmarks/shapes.py [--arch gpt2 llama] [--shapes N] [--published]

Per shape, on one thread (what one codec worker gets), with the codec's default schedule
(255-token chunks, groups of 128 rows split between two workers, so 64 rows per worker):
prefill tokens/s over the first 256 positions in the encoder's block length, and decode tokens/s
at position 128 (mid-chunk), output tables included. Ratio is not measured here (that needs a
trained model of each shape). Llama shapes (engine 4: RMSNorm, rotary positions, SwiGLU with
inner width ~2.7 d, so about as many weights per layer as GPT-2's 4 d MLP; grouped-query
attention with half as many key/value heads) sit next to the GPT-2 shape of the same layers,
width and vocabulary. ``--published`` measures the shape of a published Llama-family model
(SmolLM2-135M: 30 x 576, 9 query / 3 key-value heads, 49,152 tokens) with 16 rows per worker, 64
prefill positions and 8 decode steps (its random weights take ~1 s per token-row otherwise).
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
ROWS, POSITIONS, DECODE_AT, DECODE_STEPS = 64, 256, 128, 16
PUBLISHED = {"SmolLM2-135M": dict(num_hidden_layers=30, hidden_size=576, intermediate_size=1536, num_attention_heads=9,
                                  num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048)}


def random_engine(arch: str, layers: int, width: int, vocab: int, ctx: int):  # type: ignore[no-untyped-def]
    """The exact engine (newest arithmetic) of a randomly initialised Hugging Face model of this shape."""
    if arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(n_layer=layers, n_embd=width, n_head=4, vocab_size=vocab, n_positions=ctx,
                         bos_token_id=0, eos_token_id=0)
        state = {k: v.detach().float().numpy() for k, v in GPT2LMHeadModel(cfg).eval().state_dict().items()}
        return build_engine(GPT2Spec.from_config(cfg), state)
    return random_llama(num_hidden_layers=layers, hidden_size=width, intermediate_size=(width * 8 // 3 + 15) // 16 * 16,
                        num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=ctx)


def random_llama(**shape: int):  # type: ignore[no-untyped-def]
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**shape, tie_word_embeddings=True, bos_token_id=0, eos_token_id=0)
    state = {k: v.detach().float().numpy() for k, v in LlamaForCausalLM(cfg).eval().state_dict().items()}
    return build_engine(LlamaSpec.from_config(cfg), state)


def measure(engine, rows: int = ROWS, positions: int = POSITIONS, steps: int = DECODE_STEPS) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(prefill, decode) tokens/s of ``engine`` on ``rows`` rows: ``positions`` positions in the
    encoder's block length, then ``steps`` single-token steps from position ``DECODE_AT``."""
    model = LoadedModel("x", engine, None, 0, b"")   # type: ignore[arg-type]
    vocab = model.vocab_size
    tokens = np.random.default_rng(0).integers(0, vocab, (rows, max(positions, DECODE_AT + steps)))
    block = max(1, TABLE_BUDGET // (2 * ROWS * vocab))   # the encoder's block for 128-row groups
    cache = model.start(rows)
    t = time.perf_counter()
    for t0 in range(0, positions, block):
        model.advance(cache, tokens[:, t0:min(t0 + block, positions)])
    prefill = rows * positions / (time.perf_counter() - t)
    cache = model.start(rows)
    model.advance(cache, tokens[:, :DECODE_AT])
    t = time.perf_counter()
    for i in range(steps):
        model.advance(cache, tokens[:, DECODE_AT + i:DECODE_AT + i + 1])
    decode = rows * steps / (time.perf_counter() - t)
    return prefill, decode


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", choices=["gpt2", "llama"], default=["gpt2", "llama"])
    p.add_argument("--shapes", type=int, default=len(SHAPES), help="measure the first N shapes only")
    p.add_argument("--published", action="store_true", help="also measure published model shapes (slow)")
    args = p.parse_args()
    tune_allocator()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    with threadpool_limits(1, user_api="blas"):
        for arch in args.arch:
            measure(random_engine(arch, 1, 64, 512, 512))   # warm-up: builds the lookup tables every shape shares
        for shape in SHAPES[: args.shapes]:
            for arch in args.arch:
                engine = random_engine(arch, *shape)
                prefill, decode = max(measure(engine), measure(engine))   # best of two (noisy machine)
                print("{:5} L{} d{} V{} ctx{}: prefill {:.0f} tok/s, decode {:.0f} tok/s per worker".format(
                    arch, *shape, prefill, decode), flush=True)
        for name, shape in PUBLISHED.items() if args.published else ():
            prefill, decode = measure(random_llama(**shape), rows=16, positions=64, steps=8)
            print(f"llama {name}: prefill {prefill:.0f} tok/s, decode {decode:.0f} tok/s per worker (16 rows)", flush=True)


if __name__ == "__main__":
    main()
