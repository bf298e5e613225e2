#!/usr/bin/env python3
"""Speed of the exact engine on random-weight GPT-2 shapes: the speed side of the model-shape trade-off.

    python benchmarks/shapes.py

Per shape, on one thread (what one codec worker gets): prefill tokens/s (32 rows, 16-token
blocks over the whole context) and decode ms per step (32 rows at half the context), output
tables included. Ratio is not measured here (that needs a trained model of each shape).
"""
import time
import numpy as np, torch
from threadpoolctl import threadpool_limits
from transformers import GPT2Config, GPT2LMHeadModel
from llmzip.engine import ExactGPT2, GPT2Spec
from llmzip.model import LoadedModel
torch.manual_seed(0)
shapes = [(4, 256, 8192, 512), (4, 256, 4096, 512), (4, 192, 8192, 512), (3, 256, 8192, 512),
          (4, 256, 8192, 256), (6, 192, 8192, 512), (2, 384, 8192, 512)]
with threadpool_limits(1, user_api="blas"):
    torch.set_num_threads(1)
    for L, d, V, ctx in shapes:
        cfg = GPT2Config(n_layer=L, n_embd=d, n_head=4, vocab_size=V, n_positions=ctx, bos_token_id=0, eos_token_id=0)
        hf = GPT2LMHeadModel(cfg).eval()
        state = {k: v.detach().float().numpy() for k, v in hf.state_dict().items()}
        eng = ExactGPT2(GPT2Spec.from_config(cfg), state)
        m = LoadedModel("x", eng, None, 0, b"")
        R = 32; rng = np.random.default_rng(0); toks = rng.integers(0, V, (R, ctx))
        cache = m.start(R)
        t = time.perf_counter()
        for t0 in range(0, ctx - 16, 16): m.advance(cache, toks[:, t0:t0 + 16])
        pre = R * (ctx - 16) / (time.perf_counter() - t)
        cache.length = ctx // 2
        t = time.perf_counter()
        for i in range(32): m.advance(cache, toks[:, i:i + 1])
        dec = (time.perf_counter() - t) / 32 * 1e3
        print(f"L{L} d{d} V{V} ctx{ctx}: prefill {pre:.0f} tok/s/worker, decode {dec:.1f} ms/step (32 rows, pos {ctx//2}) = {R/dec*1e3:.0f} tok/s/worker", flush=True)
