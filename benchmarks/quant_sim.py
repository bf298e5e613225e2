#!/usr/bin/env python3
"""What would lower-precision arithmetic cost in ratio? Simulate it on the float model first.

    python benchmarks/quant_sim.py [--kb 16] [--model DIR]

Evaluates the model (float64, Hugging Face) on the first ``--kb`` KiB of two corpus files with
fake quantisation: linear-layer weights per output column and inputs per row (``--linear``), and
every query, key and value vector of every head (``--attn``), each rounded to the given bits with
an absmax scale. Prints bits per byte per setting. Used to choose engine arithmetic before
building it (engine 2's int8 linear layers; an int8 KV cache for a later engine).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"
FILES = ("treasure_island.txt", "difflib.py")
_EAGER: dict[str, object] = {}


def fake_quant(x: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Round ``x`` to ``bits``-bit integers with one absmax scale per slice along ``dim``."""
    top = 2 ** (bits - 1) - 1
    scale = x.abs().amax(dim, keepdim=True).clamp(min=1e-12) / top
    return torch.round(x / scale).clamp(-top, top) * scale


def build(model_dir: str, linear_bits: int, attn_bits: int) -> torch.nn.Module:
    import transformers.models.gpt2.modeling_gpt2 as gpt2
    from transformers import GPT2LMHeadModel
    from transformers.pytorch_utils import Conv1D

    model = GPT2LMHeadModel.from_pretrained(model_dir, attn_implementation="eager").double().eval()
    if linear_bits:
        for mod in [m for m in model.modules() if isinstance(m, Conv1D)]:
            mod.weight.data = fake_quant(mod.weight.data, linear_bits, 0)
            mod.register_forward_pre_hook(lambda _m, inp: (fake_quant(inp[0], linear_bits, -1),))
        head = fake_quant(model.lm_head.weight.data.clone(), linear_bits, 1)   # per vocab row
        model.lm_head.weight = torch.nn.Parameter(head)
        model.lm_head.register_forward_pre_hook(lambda _m, inp: (fake_quant(inp[0], linear_bits, -1),))
    original = _EAGER.setdefault("fn", gpt2.eager_attention_forward)   # unpatched, whatever ran before

    def attention(module, query, key, value, *args, **kwargs):  # type: ignore[no-untyped-def]
        if attn_bits:
            query, key, value = (fake_quant(t, attn_bits, -1) for t in (query, key, value))
        return original(module, query, key, value, *args, **kwargs)

    gpt2.eager_attention_forward = attention
    return model


def bits_per_byte(model: torch.nn.Module, tokenizer, bos: int, data: bytes, context: int) -> float:  # type: ignore[no-untyped-def]
    ids = tokenizer.encode(data).astype(np.int64)
    bits = 0.0
    for i in range(0, len(ids), context - 1):
        chunk = torch.tensor([[bos] + ids[i : i + context - 1].tolist()])
        with torch.no_grad():
            logp = torch.log_softmax(model(chunk).logits[0, :-1], -1)
        bits -= logp[torch.arange(chunk.shape[1] - 1), chunk[0, 1:]].sum().item() / math.log(2)
    return bits / len(data)


def main() -> None:
    from llmzip.model import EMBEDDED_NAME, MODELS_DIR, load_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(MODELS_DIR / EMBEDDED_NAME))
    p.add_argument("--kb", type=int, default=16)
    args = p.parse_args()
    loaded = load_model(args.model)
    for linear_bits, attn_bits in ((0, 0), (8, 0), (0, 8), (8, 8), (0, 6)):
        model = build(args.model, linear_bits, attn_bits)
        result = {f: round(bits_per_byte(model, loaded.tokenizer, loaded.bos_id,
                                         (CORPUS / f).read_bytes()[: args.kb * 1024], loaded.max_context), 5)
                  for f in FILES}
        print(f"linear {linear_bits or 'float'} bits, attention q/k/v {attn_bits or 'float'} bits: {result}", flush=True)


if __name__ == "__main__":
    main()
